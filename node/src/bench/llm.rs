//! The `llm` scenario: tokens through the mesh against the engine alone.
//!
//! Floor: the built-in engine in this process, the model loaded once, one greedy chat request at
//! a time: time to the first token, and decode speed after it. Measured: the same request, same
//! model file, through node A's OpenAI endpoint (HTTP, streamed) to node B, which serves the model
//! — routing, a standing contract, the token stream over libp2p, the usage receipt signed by both
//! and appended to both ledgers. Floor and mesh requests alternate, so both see the same machine.
//! Also counted: how many standing contracts A negotiated for all its requests (one is the
//! design).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use suanli_protocol::tokens::{ChatMessage, GenerateRequest, Prompt, Sampling};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::nodes::{BenchNode, loopback_config, stop_all, wait_for_mesh};
use super::{BenchError, Context, Figure, Samples, ms};
use crate::config::ModelConfig;
use crate::inference::candle::{self, CandleModel};
use crate::inference::{Backend, STREAM_BUFFER};

const SCENARIO: &str = "llm";
const MODEL: &str = "bench-model";
const PROMPT: &str = "Write a short story about a robot who learns to paint.";

/// Where `scripts/fetch-model.sh` puts the model by default.
pub fn default_model_path() -> Option<PathBuf> {
    let dir = std::env::var_os("SUANLI_MODELS")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|home| home.join(".cache/suanli/models")))?;
    Some(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// One request's timing.
#[derive(Debug, Clone, Copy)]
struct Timing {
    first_token: Duration,
    /// Completion tokens after the first, per second of decoding after it.
    decode_tokens_per_s: f64,
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let path = context
        .options
        .model
        .clone()
        .or_else(default_model_path)
        .filter(|path| path.exists())
        .ok_or_else(|| {
            BenchError::scenario(
                SCENARIO,
                "no model: run scripts/fetch-model.sh (or pass --model PATH.gguf)",
            )
        })?;
    let (runs, max_tokens) = context.options.pick((2, 48), (5, 160));
    let engine = load(&path).await?;
    let nodes = start_pair(context, &path).await?;
    let result = measure(&engine, &nodes, runs, max_tokens).await;
    let negotiations = nodes
        .first()
        .map(|node| node.handle.tokens.negotiations())
        .unwrap_or(0);
    stop_all(nodes).await;
    let (floor, mesh) = result?;
    let p50 = |timings: &[Timing], f: fn(&Timing) -> f64| -> f64 {
        let mut values: Vec<f64> = timings.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let floor_ttft = p50(&floor, |t| ms(t.first_token));
    let mesh_ttft = p50(&mesh, |t| ms(t.first_token));
    let floor_rate = p50(&floor, |t| t.decode_tokens_per_s);
    let mesh_rate = p50(&mesh, |t| t.decode_tokens_per_s);
    let samples = Samples::new(mesh.iter().map(|t| t.first_token).collect());
    Ok(vec![
        Figure::against(
            SCENARIO,
            "decode tokens/s through the mesh, p50",
            mesh_rate,
            "tok/s",
            floor_rate,
            "the engine in-process, p50",
        ),
        Figure::against(
            SCENARIO,
            "time to first token through the mesh, p50",
            mesh_ttft,
            "ms",
            floor_ttft,
            "the engine in-process, p50",
        ),
        Figure::plain(
            SCENARIO,
            "time to first token added by the mesh, p50",
            mesh_ttft - floor_ttft,
            "ms",
        ),
        Figure::plain(
            SCENARIO,
            "time to first token through the mesh, max",
            ms(samples.max()),
            "ms",
        ),
        Figure::plain(
            SCENARIO,
            format!("standing contracts negotiated for {} requests", runs + 1),
            negotiations as f64,
            "contracts",
        ),
    ])
}

async fn load(path: &Path) -> Result<Arc<CandleModel>, BenchError> {
    let path = path.to_owned();
    let served = tokio::task::spawn_blocking(move || candle::load(MODEL, &path))
        .await
        .map_err(|error| BenchError::scenario(SCENARIO, error))?
        .map_err(|error| BenchError::scenario(SCENARIO, error))?;
    match served.backend {
        Backend::Candle(model) => Ok(model),
        Backend::Upstream(_) => Err(BenchError::scenario(SCENARIO, "not a model file")),
    }
}

/// Node B serves the model; node A (first) is the endpoint.
async fn start_pair(context: &Context, path: &Path) -> Result<Vec<BenchNode>, BenchError> {
    let mut provider = loopback_config(&[], 1);
    provider.tokens.models = vec![ModelConfig {
        name: MODEL.into(),
        source: path.display().to_string(),
        price_per_million_prompt: 100_000,
        price_per_million_completion: 200_000,
    }];
    let b = BenchNode::start(context.workspace.subdir("llm-provider")?, provider).await?;
    let a = BenchNode::start(
        context.workspace.subdir("llm-requester")?,
        loopback_config(&[b.tcp_addr()?], 1),
    )
    .await?;
    let nodes = vec![a, b];
    wait_for_mesh(&nodes, 2, Duration::from_secs(60)).await?;
    Ok(nodes)
}

async fn measure(
    engine: &Arc<CandleModel>,
    nodes: &[BenchNode],
    runs: usize,
    max_tokens: u32,
) -> Result<(Vec<Timing>, Vec<Timing>), BenchError> {
    let api = nodes.first().map(BenchNode::api_url).unwrap_or_default();
    let http = reqwest::Client::new();
    // Warm-up: the first mesh request also negotiates the standing contract.
    in_process(engine, max_tokens).await?;
    through_mesh(&http, &api, max_tokens).await?;
    let (mut floor, mut mesh) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        floor.push(in_process(engine, max_tokens).await?);
        mesh.push(through_mesh(&http, &api, max_tokens).await?);
    }
    Ok((floor, mesh))
}

async fn in_process(engine: &Arc<CandleModel>, max_tokens: u32) -> Result<Timing, BenchError> {
    let request = GenerateRequest {
        model: MODEL.into(),
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: PROMPT.into(),
        }]),
        max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    };
    let (pieces_tx, mut pieces) = mpsc::channel(STREAM_BUFFER);
    let model = engine.clone();
    let started = Instant::now();
    let generation = tokio::task::spawn_blocking(move || {
        model.generate(&request, &pieces_tx, &CancellationToken::new())
    });
    let mut first = None;
    while pieces.recv().await.is_some() {
        first.get_or_insert_with(|| started.elapsed());
    }
    let generation = generation
        .await
        .map_err(|error| BenchError::scenario(SCENARIO, error))?
        .map_err(|error| BenchError::scenario(SCENARIO, error))?;
    timing(started, first, generation.completion_tokens)
}

async fn through_mesh(
    http: &reqwest::Client,
    api: &str,
    max_tokens: u32,
) -> Result<Timing, BenchError> {
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let started = Instant::now();
    let response = http
        .post(format!("{api}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .map_err(|error| BenchError::scenario(SCENARIO, error))?;
    if !response.status().is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(BenchError::scenario(SCENARIO, text));
    }
    let mut stream = response.bytes_stream();
    let (mut buffer, mut first, mut completion) = (Vec::new(), None, 0u32);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| BenchError::scenario(SCENARIO, error))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(data) = String::from_utf8_lossy(&event)
                .strip_prefix("data: ")
                .map(|d| d.trim().to_owned())
            else {
                continue;
            };
            if data == "[DONE]" {
                return timing(started, first, completion);
            }
            let value: Value = serde_json::from_str(&data)
                .map_err(|error| BenchError::scenario(SCENARIO, error))?;
            if value["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|piece| !piece.is_empty())
            {
                first.get_or_insert_with(|| started.elapsed());
            }
            if let Some(tokens) = value["usage"]["completion_tokens"].as_u64() {
                completion = u32::try_from(tokens).unwrap_or(u32::MAX);
            }
        }
    }
    Err(BenchError::scenario(
        SCENARIO,
        "the stream ended before [DONE]",
    ))
}

fn timing(
    started: Instant,
    first: Option<Duration>,
    completion: u32,
) -> Result<Timing, BenchError> {
    let first = first.ok_or_else(|| BenchError::scenario(SCENARIO, "no token came"))?;
    let decoding = started.elapsed().saturating_sub(first).as_secs_f64();
    Ok(Timing {
        first_token: first,
        decode_tokens_per_s: if decoding > 0.0 {
            f64::from(completion.saturating_sub(1)) / decoding
        } else {
            0.0
        },
    })
}
