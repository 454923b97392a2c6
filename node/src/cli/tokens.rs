//! `suanli models` and `suanli chat`: the mesh's models, and a chat with one of them through the
//! node's OpenAI-compatible API (streamed as it is generated).

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::sse::SseReader;
use crate::openai::ModelList;

/// `suanli chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The model [default: the first the mesh offers].
    #[arg(long)]
    pub model: Option<String>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens of each answer.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// 0 is greedy (reproducible); up to 2.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Seed of the sampler.
    #[arg(long)]
    pub seed: Option<i64>,
    /// One message to answer; without it, a conversation on stdin (one line a message; an
    /// empty line or end of input ends it).
    pub message: Option<String>,
}

pub async fn models(args: ClientArgs) -> anyhow::Result<()> {
    let client = args.client()?;
    let list: ModelList = client.get_json("/v1/models").await?;
    if args.json {
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .data
        .iter()
        .map(|model| {
            let suanli = model.extra.get("suanli").cloned().unwrap_or(Value::Null);
            let number = |key: &str| suanli[key].as_u64().map_or("-".into(), |n| n.to_string());
            let text = |key: &str| suanli[key].as_str().unwrap_or("-").to_owned();
            vec![
                model.id.clone(),
                text("family"),
                number("context"),
                text("quantisation"),
                number("decode_tokens_per_s"),
                format!(
                    "{}/{}",
                    number("price_per_million_prompt"),
                    number("price_per_million_completion")
                ),
                suanli["providers"]
                    .as_array()
                    .map_or(0, Vec::len)
                    .to_string(),
                text("sha256").chars().take(12).collect(),
            ]
        })
        .collect();
    output::table(
        &[
            "MODEL",
            "FAMILY",
            "CONTEXT",
            "QUANT",
            "TOK/S",
            "µcr/M PROMPT/COMPLETION",
            "PROVIDERS",
            "SHA256",
        ],
        &rows,
    )
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let client = args.client.client_with_timeout(Duration::from_secs(600))?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => {
            let list: ModelList = client.get_json("/v1/models").await?;
            list.data
                .first()
                .map(|m| m.id.clone())
                .ok_or_else(|| anyhow!("the mesh offers no model yet (see `suanli models`)"))?
        }
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    if let Some(message) = &args.message {
        messages.push(json!({"role": "user", "content": message}));
        let (answer, usage) = complete(&client, &args, &model, &messages).await?;
        end_answer(&answer, &usage, args.client.json)?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    loop {
        if !args.client.json {
            print_raw("> ")?;
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).context("read stdin")? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            break;
        }
        messages.push(json!({"role": "user", "content": line}));
        let (answer, usage) = complete(&client, &args, &model, &messages).await?;
        end_answer(&answer, &usage, args.client.json)?;
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    Ok(())
}

/// Streams one answer, printing it as it comes (unless `--json`); returns it with its usage.
async fn complete(
    client: &ApiClient,
    args: &ChatArgs,
    model: &str,
    messages: &[Value],
) -> anyhow::Result<(String, Value)> {
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(seed) = args.seed {
        body["seed"] = json!(seed);
    }
    let response = client.post_stream("/v1/chat/completions", &body).await?;
    let mut events = SseReader::new(response);
    let (mut answer, mut usage) = (String::new(), Value::Null);
    while let Some(event) = events.next().await? {
        if event.data == "[DONE]" {
            return Ok((answer, usage));
        }
        let value: Value = serde_json::from_str(&event.data).context("a malformed event")?;
        if let Some(message) = value["error"]["message"].as_str() {
            bail!("the answer failed: {message}");
        }
        if !value["usage"].is_null() {
            usage = value["usage"].clone();
        }
        if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
            answer.push_str(piece);
            if !args.client.json {
                print_raw(piece)?;
            }
        }
    }
    bail!("the answer ended before [DONE]")
}

fn end_answer(answer: &str, usage: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return output::json(&json!({"answer": answer, "usage": usage}));
    }
    print_raw("\n")?;
    if let (Some(prompt), Some(completion)) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
    ) {
        output::line(&format!(
            "[{prompt} prompt + {completion} completion tokens]"
        ))?;
    }
    Ok(())
}

fn print_raw(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
