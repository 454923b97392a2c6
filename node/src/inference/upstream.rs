//! An OpenAI-compatible server the operator already runs (vLLM, SGLang, llama.cpp's server,
//! Ollama, another suanli node), proxied and metered from the `usage` it reports.
//!
//! Owns one HTTP client per upstream model; performs HTTP to that server only, and never
//! answers a client itself (the caller turns a [`Generation`] or an [`InferenceError`] into
//! frames or OpenAI answers).
//!
//! **Naming the model.** The operator writes `NAME=http://host:port/v1` to serve the upstream
//! model whose id is `NAME` under that name, or `NAME=http://host:port/v1#upstream-id` to serve
//! the upstream's model `upstream-id` (a path such as `Qwen/Qwen2.5-7B-Instruct`) as `NAME`.
//! [`connect`] receives `NAME` and the URL with its optional `#upstream-id`. Only `http://`:
//! this build has no TLS, which suits a server on the data center's own network.
//!
//! **Start-up checks** ([`connect`], 60 s in all, 5 s to connect): `GET {base}/models` must list
//! the model (its `context_length`, `max_model_len` or `suanli.context` field gives the context,
//! else [`DEFAULT_CONTEXT`]); then one streamed chat request of [`PROBE_MAX_TOKENS`] tokens
//! (a text completion if the chat route fails, for base models without a chat template) must
//! stream and end with a `usage` chunk, and measures the decode speed: completion tokens after
//! the first, over the time after the first.
//!
//! **Requests** ([`Upstream::generate`]) go to `{base}/chat/completions` or `{base}/completions`
//! with `stream: true` and `stream_options.include_usage: true`. Content deltas are forwarded as
//! they arrive (split at [`MAX_TEXT_FRAME_BYTES`]); the token counts are the upstream's `usage`,
//! and a stream that ends without one fails (nothing is billed).
//!
//! **Cancellation and its metering.** When the receiver of the pieces goes away or the token
//! fires, the HTTP response is dropped — closing the connection is how OpenAI-compatible servers
//! learn to stop — and the generation ends [`Finish::Cancelled`]. The upstream reports no usage
//! for a stream cut short, so the counts are estimates unless its usage had already arrived:
//! completion tokens = the number of non-empty content deltas received (servers send about one
//! token per delta), prompt tokens = ⌈prompt bytes / 4⌉ ([`Prompt::text_bytes`], roles
//! included).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use suanli_protocol::Hash32;
use suanli_protocol::tokens::{
    ChatMessage, Finish, GenerateRequest, MAX_MODEL_NAME_BYTES, MAX_TEXT_FRAME_BYTES, Prompt,
    Sampling,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backend, Generation, InferenceError, STREAM_BUFFER, ServedModel};
use crate::http::{error_chain, read_limited};
use crate::openai::{
    ChatCompletionRequest, CompletionPrompt, CompletionRequest, MessageContent, Options,
    RequestMessage, Stop, StreamOptions, Usage,
};

/// Time to open a connection to the upstream server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for all of [`connect`]'s checks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence of an upstream within one response (a long prompt's prefill included)
/// before the request fails.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Completion tokens of the start-up probe.
pub const PROBE_MAX_TOKENS: u32 = 4;
/// Context assumed when the upstream's model list does not say.
pub const DEFAULT_CONTEXT: u32 = 4096;
/// Longest line (and event) of an upstream stream.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most bytes read of an error answer or of the model list.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
const MAX_MODELS_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of an upstream's message repeated in an error.
const MAX_MESSAGE_BYTES: usize = 1024;
/// The error of an upstream that does not say what it generated.
const NO_USAGE: &str = "the upstream server does not report usage; suanli meters from it \
                        (it must honour stream_options.include_usage)";

/// An upstream server serving one model.
#[derive(Debug)]
pub struct Upstream {
    http: reqwest::Client,
    /// `http://host:port/v1`, without a trailing slash.
    base_url: String,
    /// The model's id at the upstream server.
    model: String,
}

impl Upstream {
    fn new(base_url: String, model: String) -> Result<Upstream, InferenceError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // An internal server: never through a proxy from the environment.
            .no_proxy()
            .build()
            .map_err(|error| InferenceError::Failed(format!("HTTP client: {error}")))?;
        Ok(Upstream {
            http,
            base_url,
            model,
        })
    }

    /// Generates for `request` at the upstream server, sending text pieces to `pieces` as they
    /// come; stops early (with [`Finish::Cancelled`]) when `pieces` is closed or `cancel` fires.
    pub async fn generate(
        &self,
        request: &GenerateRequest,
        pieces: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<Generation, InferenceError> {
        let (url, body) = self.request_body(request);
        let mut progress = Progress::default();
        let send = self.http.post(&url).json(&body).send();
        let mut response = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(progress.cancelled(request)),
            () = pieces.closed() => return Ok(progress.cancelled(request)),
            sent = send => sent.map_err(|error| {
                InferenceError::Failed(format!("upstream {url}: {}", error_chain(&error)))
            })?,
        };
        if !response.status().is_success() {
            return Err(status_error(&url, response).await);
        }
        let mut events = EventReader::default();
        'read: loop {
            let chunk = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(progress.cancelled(request)),
                () = pieces.closed() => return Ok(progress.cancelled(request)),
                chunk = response.chunk() => chunk.map_err(|error| {
                    InferenceError::Failed(format!(
                        "upstream {url}: the stream broke: {}",
                        error_chain(&error)
                    ))
                })?,
            };
            let (datas, ended) = match chunk {
                Some(bytes) => (events.push(&bytes)?, false),
                // A last event the stream's end cut off before its blank line still counts.
                None => (events.finish().into_iter().collect(), true),
            };
            for data in datas {
                let content = progress.handle(&data)?;
                for piece in split_pieces(&content) {
                    let sent = tokio::select! {
                        biased;
                        () = cancel.cancelled() => false,
                        sent = pieces.send(piece.to_owned()) => sent.is_ok(),
                    };
                    if !sent {
                        return Ok(progress.cancelled(request));
                    }
                    progress.text.push_str(piece);
                }
                if progress.done {
                    break 'read;
                }
            }
            if ended {
                break;
            }
        }
        drop(response);
        progress.finished()
    }

    /// The URL and JSON body of `request` at the upstream.
    fn request_body(&self, request: &GenerateRequest) -> (String, Value) {
        let GenerateRequest {
            max_tokens,
            sampling,
            stop,
            ..
        } = request;
        let options = Options {
            max_tokens: Some(*max_tokens),
            temperature: Some(from_milli(sampling.temperature_milli)),
            top_p: Some(from_milli(sampling.top_p_milli)),
            seed: Some(sampling.seed as i64),
            stop: (!stop.is_empty()).then(|| Stop::Many(stop.clone())),
            stream: Some(true),
            stream_options: Some(StreamOptions {
                include_usage: Some(true),
            }),
            ..Options::default()
        };
        let body = match &request.prompt {
            Prompt::Chat(messages) => serde_json::to_value(ChatCompletionRequest {
                model: self.model.clone(),
                messages: messages.iter().map(upstream_message).collect(),
                options,
            }),
            Prompt::Text(text) => serde_json::to_value(CompletionRequest {
                model: self.model.clone(),
                prompt: CompletionPrompt::Text(text.clone()),
                options,
                echo: None,
            }),
        };
        let path = match request.prompt {
            Prompt::Chat(_) => "chat/completions",
            Prompt::Text(_) => "completions",
        };
        // Serialising these types (string keys, finite numbers) cannot fail.
        (
            format!("{}/{path}", self.base_url),
            body.unwrap_or(Value::Null),
        )
    }

    /// The context the upstream's model list gives the model (or [`DEFAULT_CONTEXT`]).
    async fn find_model(&self) -> Result<u32, InferenceError> {
        let url = format!("{}/models", self.base_url);
        let failed = |detail: String| InferenceError::Failed(format!("GET {url}: {detail}"));
        let mut response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|error| failed(error_chain(&error)))?;
        if !response.status().is_success() {
            // At start-up every refusal is the upstream's problem, none the request's.
            return Err(match status_error(&url, response).await {
                InferenceError::BadRequest(message) => failed(message),
                error => error,
            });
        }
        let body = read_limited(&mut response, MAX_MODELS_BODY_BYTES)
            .await
            .map_err(failed)?;
        let list: ModelListBody = serde_json::from_slice(&body)
            .map_err(|error| failed(format!("not an OpenAI model list: {error}")))?;
        let Some(entry) = list
            .data
            .iter()
            .find(|entry| entry.get("id").and_then(Value::as_str) == Some(&self.model))
        else {
            let served: Vec<&str> = list
                .data
                .iter()
                .filter_map(|entry| entry.get("id").and_then(Value::as_str))
                .take(20)
                .collect();
            return Err(InferenceError::Failed(format!(
                "the upstream server at {} has no model `{}`; it serves: {} \
                 (serve one of them as NAME with NAME=URL#upstream-id)",
                self.base_url,
                self.model,
                if served.is_empty() {
                    "nothing".to_owned()
                } else {
                    served.join(", ")
                }
            )));
        };
        Ok(entry_context(entry).unwrap_or(DEFAULT_CONTEXT))
    }

    /// Runs one short generation and returns the decode speed it showed (tokens per second).
    async fn measure(&self, prompt: Prompt) -> Result<u32, InferenceError> {
        let request = GenerateRequest {
            model: self.model.clone(),
            prompt,
            max_tokens: PROBE_MAX_TOKENS,
            sampling: Sampling::GREEDY,
            stop: Vec::new(),
        };
        let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
        let started = Instant::now();
        let first_piece = async {
            let mut first = None;
            while receiver.recv().await.is_some() {
                first.get_or_insert_with(Instant::now);
            }
            first
        };
        let (generation, first) = tokio::join!(
            self.generate(&request, sender, CancellationToken::new()),
            first_piece
        );
        let ended = Instant::now();
        let generation = generation?;
        let (tokens, since) = match first {
            Some(first) if generation.completion_tokens >= 2 => {
                (generation.completion_tokens - 1, first)
            }
            _ => (generation.completion_tokens, started),
        };
        // A server answering within a millisecond is fast, not infinitely so.
        let seconds = ended.duration_since(since).as_secs_f64().max(1e-3);
        Ok((f64::from(tokens) / seconds).clamp(1.0, f64::from(u32::MAX)) as u32)
    }
}

/// Connects to the OpenAI-compatible server at `base_url` (e.g. `http://127.0.0.1:8080/v1`,
/// optionally followed by `#upstream-id`, the model's id there when it is not `name`) to serve
/// `name`, after the start-up checks of the [module docs](self).
pub async fn connect(name: &str, base_url: &str) -> Result<ServedModel, InferenceError> {
    if name.is_empty() || name.len() > MAX_MODEL_NAME_BYTES {
        return Err(InferenceError::Failed(format!(
            "model name {name:?} must be 1 to {MAX_MODEL_NAME_BYTES} bytes"
        )));
    }
    let (base_url, model) = parse_target(name, base_url)?;
    let upstream = Upstream::new(base_url, model)?;
    let checks = async {
        let context = upstream.find_model().await?;
        let chat = Prompt::Chat(vec![ChatMessage {
            role: "user".to_owned(),
            content: "Say hello.".to_owned(),
        }]);
        let decode = match upstream.measure(chat).await {
            Ok(decode) => decode,
            Err(chat_error) => match upstream.measure(Prompt::Text("Hello".to_owned())).await {
                Ok(decode) => {
                    warn!(model = %upstream.model, error = %chat_error,
                        "upstream chat route failed; serving text completions only");
                    decode
                }
                Err(_) => return Err(chat_error),
            },
        };
        Ok((context, decode))
    };
    let (context, decode_tokens_per_s) = tokio::time::timeout(PROBE_TIMEOUT, checks)
        .await
        .map_err(|_| {
            InferenceError::Failed(format!(
                "the upstream server at {} did not pass the start-up checks within {} s",
                upstream.base_url,
                PROBE_TIMEOUT.as_secs()
            ))
        })??;
    info!(%name, upstream = %upstream.base_url, model = %upstream.model, context,
        decode_tokens_per_s, "upstream model connected");
    Ok(ServedModel {
        name: name.to_owned(),
        family: "upstream".to_owned(),
        context,
        quantisation: String::new(),
        sha256: Hash32::ZERO,
        decode_tokens_per_s,
        backend: Backend::Upstream(std::sync::Arc::new(upstream)),
    })
}

/// Splits `URL[#upstream-id]` into the base URL (checked, no trailing slash) and the model id
/// at the upstream (`name` unless given).
fn parse_target(name: &str, target: &str) -> Result<(String, String), InferenceError> {
    let (url, model) = match target.split_once('#') {
        Some((_, "")) => {
            return Err(InferenceError::Failed(format!(
                "upstream {target:?}: nothing after `#` (write URL#upstream-model-id)"
            )));
        }
        Some((url, model)) => (url, model),
        None => (target, name),
    };
    let invalid = |why: &str| InferenceError::Failed(format!("upstream URL {url:?}: {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                "https is not supported (this build has no TLS); use http:// to a server on \
                 a trusted network",
            ));
        }
        _ => return Err(invalid("must start with http://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if parsed.query().is_some() {
        return Err(invalid(
            "no query string allowed (the base URL ends in /v1)",
        ));
    }
    Ok((
        parsed.as_str().trim_end_matches('/').to_owned(),
        model.to_owned(),
    ))
}

/// The context a model list entry states, if any.
fn entry_context(entry: &Value) -> Option<u32> {
    let fields = [
        entry.get("context_length"),
        entry.get("max_model_len"),
        entry.get("suanli").and_then(|suanli| suanli.get("context")),
    ];
    fields
        .into_iter()
        .flatten()
        .find_map(Value::as_u64)
        .filter(|&context| context > 0)
        .map(|context| u32::try_from(context).unwrap_or(u32::MAX))
}

/// A message as the upstream gets it: `developer` (which older servers' chat templates do not
/// know) becomes `system`, as this node treats it.
fn upstream_message(message: &ChatMessage) -> RequestMessage {
    let role = match message.role.as_str() {
        "developer" => "system",
        role => role,
    };
    RequestMessage {
        role: role.to_owned(),
        content: Some(MessageContent::Text(message.content.clone())),
    }
}

fn from_milli(milli: u32) -> f64 {
    f64::from(milli) / 1000.0
}

/// `text` in pieces of at most [`MAX_TEXT_FRAME_BYTES`], cut between characters.
fn split_pieces(mut text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    while !text.is_empty() {
        let mut end = text.floor_char_boundary(MAX_TEXT_FRAME_BYTES.min(text.len()));
        if end == 0 {
            // Unreachable (a character is at most 4 bytes); never loop forever.
            end = text.len();
        }
        let (piece, rest) = text.split_at(end);
        pieces.push(piece);
        text = rest;
    }
    pieces
}

/// At most [`MAX_MESSAGE_BYTES`] of an upstream's message.
fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let end = message.floor_char_boundary(MAX_MESSAGE_BYTES);
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The error of a non-2xx answer: a 400 or 422 is the request's fault (`BadRequest`, with the
/// upstream's message — a context overflow included: its token counts are the upstream's, not
/// known here), anything else the upstream's (`Failed`).
async fn status_error(url: &str, mut response: reqwest::Response) -> InferenceError {
    let status = response.status();
    let body = read_limited(&mut response, MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|json| error_message(&json))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    let message = truncate(message);
    debug!(%url, %status, %message, "upstream refused a request");
    if status == reqwest::StatusCode::BAD_REQUEST
        || status == reqwest::StatusCode::UNPROCESSABLE_ENTITY
    {
        InferenceError::BadRequest(message)
    } else {
        InferenceError::Failed(format!("upstream {url} answered {status}: {message}"))
    }
}

/// The message of an error body: OpenAI's `{"error":{"message"}}`, `{"error":"…"}`, or vLLM's
/// older `{"object":"error","message"}`.
fn error_message(json: &Value) -> Option<String> {
    match json.get("error") {
        Some(Value::String(message)) => Some(message.clone()),
        Some(error) => error
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| Some(error.to_string())),
        None => json
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

#[derive(Deserialize)]
struct ModelListBody {
    data: Vec<Value>,
}

/// One event of an upstream stream, read leniently (servers differ in what else they send).
#[derive(Deserialize)]
struct StreamChunk {
    /// Some servers send `null` rather than `[]` in their usage chunk.
    #[serde(default)]
    choices: Option<Vec<StreamChoice>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<StreamDelta>,
    /// A text completion's piece.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct StreamDelta {
    #[serde(default)]
    content: Option<String>,
}

/// What a stream has delivered so far.
#[derive(Debug, Default)]
struct Progress {
    /// Every piece handed to the receiver.
    text: String,
    /// Non-empty content deltas received.
    deltas: u32,
    usage: Option<Usage>,
    finish: Option<Finish>,
    /// `[DONE]` seen.
    done: bool,
}

impl Progress {
    /// Takes in one event's data; returns the content it adds.
    fn handle(&mut self, data: &str) -> Result<String, InferenceError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(String::new());
        }
        let chunk: StreamChunk = serde_json::from_str(data).map_err(|error| {
            InferenceError::Failed(format!("the upstream sent an unreadable event: {error}"))
        })?;
        if let Some(error) = chunk.error {
            let message = error_message(&serde_json::json!({ "error": error }))
                .unwrap_or_else(|| error.to_string());
            return Err(InferenceError::Failed(format!(
                "the upstream server failed: {}",
                truncate(message)
            )));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let mut content = String::new();
        // One choice was asked for; a server that sends more has them ignored.
        if let Some(choice) = chunk.choices.into_iter().flatten().next() {
            let piece = choice
                .delta
                .and_then(|delta| delta.content)
                .or(choice.text)
                .unwrap_or_default();
            if !piece.is_empty() {
                self.deltas = self.deltas.saturating_add(1);
                content = piece;
            }
            if let Some(reason) = choice.finish_reason {
                // `length` is the only reason that means "cut at max_tokens"; every other
                // (stop, eos, content_filter, …) is an end the model or server chose.
                self.finish = Some(if reason == "length" {
                    Finish::Length
                } else {
                    Finish::Stop
                });
            }
        }
        Ok(content)
    }

    /// The generation of a stream that ended on its own.
    fn finished(self) -> Result<Generation, InferenceError> {
        if !self.done && self.finish.is_none() && self.usage.is_none() {
            return Err(InferenceError::Failed(
                "the upstream stream ended before the generation finished".to_owned(),
            ));
        }
        let Some(usage) = self.usage else {
            return Err(InferenceError::Failed(NO_USAGE.to_owned()));
        };
        Ok(Generation {
            prompt_tokens: clamp(usage.prompt_tokens),
            completion_tokens: clamp(usage.completion_tokens),
            finish: self.finish.unwrap_or(Finish::Stop),
            text: self.text,
        })
    }

    /// The generation of a stream cut short: the upstream's usage if it came, estimates else
    /// (see the module docs).
    fn cancelled(self, request: &GenerateRequest) -> Generation {
        let (prompt_tokens, completion_tokens) = match self.usage {
            Some(usage) => (clamp(usage.prompt_tokens), clamp(usage.completion_tokens)),
            None => (
                clamp(request.prompt.text_bytes().div_ceil(4) as u64),
                self.deltas,
            ),
        };
        Generation {
            prompt_tokens,
            completion_tokens,
            finish: Finish::Cancelled,
            text: self.text,
        }
    }
}

fn clamp(tokens: u64) -> u32 {
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// Reads server-sent events from bytes as they arrive, returning each event's `data`.
#[derive(Debug, Default)]
struct EventReader {
    buffer: Vec<u8>,
    /// How much of `buffer` holds no line end.
    scanned: usize,
    /// The data lines of the event being read.
    data: Option<String>,
}

impl EventReader {
    /// Takes in `bytes`; returns the data of the events they complete.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, InferenceError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(at) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + at;
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            self.scanned = 0;
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = self.line(line)? {
                events.push(data);
            }
        }
        self.scanned = self.buffer.len();
        if self.buffer.len() > MAX_LINE_BYTES {
            return Err(too_long());
        }
        Ok(events)
    }

    /// The data of an event the stream's end cut off before its blank line.
    fn finish(&mut self) -> Option<String> {
        if !self.buffer.is_empty() {
            let line = std::mem::take(&mut self.buffer);
            self.scanned = 0;
            if let Ok(line) = std::str::from_utf8(&line)
                && let Some(value) = line.trim_end_matches('\r').strip_prefix("data:")
            {
                self.append(value);
            }
        }
        self.data.take()
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<String>, InferenceError> {
        if line.is_empty() {
            return Ok(self.data.take());
        }
        let line = std::str::from_utf8(line).map_err(|_| {
            InferenceError::Failed("the upstream stream is not UTF-8 text".to_owned())
        })?;
        // Other fields (event:, id:, retry:) and comments (`: keep-alive`) carry nothing here.
        if let Some(value) = line.strip_prefix("data:") {
            self.append(value);
            if self
                .data
                .as_ref()
                .is_some_and(|data| data.len() > MAX_LINE_BYTES)
            {
                return Err(too_long());
            }
        }
        Ok(None)
    }

    fn append(&mut self, value: &str) {
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut self.data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => self.data = Some(value.to_owned()),
        }
    }
}

fn too_long() -> InferenceError {
    InferenceError::Failed(format!(
        "the upstream sent an event longer than {MAX_LINE_BYTES} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use futures::StreamExt;
    use serde_json::json;

    use super::*;

    /// A stand-in for vLLM and the like: streams a few deltas and a usage chunk, or misbehaves
    /// as the requested model's id says.
    #[derive(Default)]
    struct MockState {
        /// Every generation request: path and body.
        requests: Mutex<Vec<(String, Value)>>,
        /// Cancelled when an endless stream's body is dropped (its client went away).
        closed: CancellationToken,
    }

    struct Mock {
        base: String,
        state: Arc<MockState>,
    }

    impl Mock {
        fn requests(&self) -> Vec<(String, Value)> {
            self.state.requests.lock().unwrap().clone()
        }

        fn upstream(&self, model: &str) -> Upstream {
            Upstream::new(self.base.clone(), model.to_owned()).unwrap()
        }
    }

    async fn mock() -> Mock {
        let state = Arc::new(MockState::default());
        let router = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(text))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Mock {
            base: format!("http://{addr}/v1"),
            state,
        }
    }

    async fn models() -> Json<Value> {
        Json(json!({"object": "list", "data": [
            {"id": "org/model-a", "object": "model", "created": 1, "owned_by": "mock",
                "max_model_len": 2048},
            {"id": "plain", "object": "model", "created": 1, "owned_by": "mock"},
            {"id": "no-usage", "object": "model", "created": 1, "owned_by": "mock"},
            {"id": "node", "object": "model", "created": 1, "owned_by": "suanli-mesh",
                "suanli": {"context": 8192}},
        ]}))
    }

    async fn chat(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
        complete(&state, "/v1/chat/completions", body)
    }

    async fn text(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
        complete(&state, "/v1/completions", body)
    }

    const PIECES: [&str; 3] = ["Hel", "lo", " world"];

    fn complete(state: &MockState, path: &str, body: Value) -> Response {
        state
            .requests
            .lock()
            .unwrap()
            .push((path.to_owned(), body.clone()));
        let chat = path.ends_with("chat/completions");
        // The completions route ends its lines with CRLF, as some servers do.
        let end = if chat { "\n\n" } else { "\r\n\r\n" };
        let event = |value: Value| format!("data: {value}{end}");
        let piece = |piece: &str| {
            let choice = if chat {
                json!({"index": 0, "delta": {"content": piece}, "finish_reason": null})
            } else {
                json!({"index": 0, "text": piece, "finish_reason": null})
            };
            event(json!({"id": "x", "created": 1, "model": "m", "choices": [choice]}))
        };
        let finish = |reason: &str| {
            let choice = if chat {
                json!({"index": 0, "delta": {}, "finish_reason": reason})
            } else {
                json!({"index": 0, "text": "", "finish_reason": reason})
            };
            event(json!({"id": "x", "created": 1, "model": "m", "choices": [choice]}))
        };
        let usage = |completion: usize| {
            event(json!({"id": "x", "created": 1, "model": "m", "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": completion,
                    "total_tokens": 7 + completion}}))
        };
        let wants_usage = body["stream_options"]["include_usage"] == true;
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
        let mut events = vec![": keep-alive\n\n".to_owned()];
        if chat {
            events.push(event(
                json!({"id": "x", "created": 1, "model": "m", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": null}]}),
            ));
        }
        match body["model"].as_str().unwrap_or_default() {
            "org/model-a" | "plain" | "node" | "no-usage" => {
                let count = max_tokens.min(PIECES.len());
                events.extend(PIECES[..count].iter().map(|p| piece(p)));
                events.push(finish(if count < PIECES.len() {
                    "length"
                } else {
                    "stop"
                }));
                if wants_usage && body["model"] != "no-usage" {
                    events.push(usage(count));
                }
                events.push(format!("data: [DONE]{end}"));
            }
            "big" => {
                events.push(piece(&"é".repeat(20_000)));
                events.push(finish("stop"));
                events.push(usage(20_000));
                events.push("data: [DONE]\n\n".to_owned());
            }
            "broken" => {
                events.push(piece("Hel"));
                events.push(event(json!({"error": {"message": "CUDA out of memory",
                    "type": "server_error", "param": null, "code": null}})));
            }
            "cut" => events.push(piece("Hel")),
            "endless" => {
                let guard = state.closed.clone().drop_guard();
                let tick = piece("tick");
                let ticks = futures::stream::unfold(guard, move |guard| {
                    let tick = tick.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Some((Ok::<_, Infallible>(Bytes::from(tick)), guard))
                    }
                });
                let head = futures::stream::iter(events).map(|e| Ok(Bytes::from(e)));
                return sse(Body::from_stream(head.chain(ticks)));
            }
            "too-long" => {
                let error = json!({"error": {
                    "message": "This model's maximum context length is 2048 tokens. However, \
                        you requested 5000 tokens.",
                    "type": "invalid_request_error", "param": "messages",
                    "code": "context_length_exceeded"}});
                return (StatusCode::BAD_REQUEST, Json(error)).into_response();
            }
            _ => {
                let error = json!({"error": {"message": "no such model",
                    "type": "invalid_request_error", "param": "model",
                    "code": "model_not_found"}});
                return (StatusCode::NOT_FOUND, Json(error)).into_response();
            }
        }
        let events = futures::stream::iter(events).map(|e| Ok::<_, Infallible>(Bytes::from(e)));
        sse(Body::from_stream(events))
    }

    fn sse(body: Body) -> Response {
        ([("content-type", "text/event-stream")], body).into_response()
    }

    async fn within<T>(test: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("test timed out")
    }

    fn failed(result: Result<impl std::fmt::Debug, InferenceError>) -> String {
        match result {
            Err(InferenceError::Failed(message)) => message,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    fn chat_request(model: &str) -> GenerateRequest {
        GenerateRequest {
            model: model.to_owned(),
            prompt: Prompt::Chat(vec![
                ChatMessage {
                    role: "developer".into(),
                    content: "Be brief.".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                },
            ]),
            max_tokens: 10,
            sampling: Sampling {
                temperature_milli: 700,
                top_p_milli: 950,
                seed: 42,
            },
            stop: vec!["\n".into()],
        }
    }

    /// Runs `request` to the end, collecting the pieces.
    async fn run(
        upstream: &Upstream,
        request: &GenerateRequest,
    ) -> (Result<Generation, InferenceError>, Vec<String>) {
        let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
        let collect = async {
            let mut pieces = Vec::new();
            while let Some(piece) = receiver.recv().await {
                pieces.push(piece);
            }
            pieces
        };
        tokio::join!(
            upstream.generate(request, sender, CancellationToken::new()),
            collect
        )
    }

    #[tokio::test]
    async fn connect_serves_an_upstream_model_under_another_name() {
        within(async {
            let mock = mock().await;
            let served = connect("model-a", &format!("{}#org/model-a", mock.base))
                .await
                .unwrap();
            assert_eq!(served.name, "model-a");
            assert_eq!(served.family, "upstream");
            assert_eq!(served.context, 2048);
            assert_eq!(served.quantisation, "");
            assert_eq!(served.sha256, Hash32::ZERO);
            assert!(served.decode_tokens_per_s >= 1);
            assert!(matches!(served.backend, Backend::Upstream(_)));
            let requests = mock.requests();
            assert_eq!(requests.len(), 1, "{requests:?}");
            let (path, body) = &requests[0];
            assert_eq!(path, "/v1/chat/completions");
            assert_eq!(body["model"], "org/model-a");
            assert_eq!(body["max_tokens"], PROBE_MAX_TOKENS);
            assert_eq!(body["stream"], true);
            assert_eq!(body["stream_options"], json!({"include_usage": true}));
            assert_eq!(body["temperature"], 0.0);
        })
        .await;
    }

    #[tokio::test]
    async fn connect_reads_the_context_or_assumes_the_default() {
        within(async {
            let mock = mock().await;
            // The upstream id is the name; a trailing slash is fine.
            let served = connect("plain", &format!("{}/", mock.base)).await.unwrap();
            assert_eq!(served.context, DEFAULT_CONTEXT);
            assert_eq!(mock.requests()[0].1["model"], "plain");
            let served = connect("node", &mock.base).await.unwrap();
            assert_eq!(served.context, 8192);
        })
        .await;
    }

    #[tokio::test]
    async fn connect_refuses_a_model_the_upstream_does_not_serve() {
        within(async {
            let mock = mock().await;
            let message = failed(connect("missing", &mock.base).await);
            assert!(message.contains("no model `missing`"), "{message}");
            assert!(message.contains("org/model-a, plain"), "{message}");
            let message = failed(connect("x", &format!("{}#other", mock.base)).await);
            assert!(message.contains("no model `other`"), "{message}");
            assert!(mock.requests().is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn connect_refuses_an_upstream_without_usage() {
        within(async {
            let mock = mock().await;
            let message = failed(connect("no-usage", &mock.base).await);
            assert!(
                message
                    .contains("the upstream server does not report usage; suanli meters from it"),
                "{message}"
            );
            // The chat probe, then the text one.
            let paths: Vec<String> = mock.requests().into_iter().map(|(path, _)| path).collect();
            assert_eq!(paths, ["/v1/chat/completions", "/v1/completions"]);
        })
        .await;
    }

    #[tokio::test]
    async fn connect_checks_the_url() {
        within(async {
            let message = failed(connect("m", "https://10.0.0.1/v1").await);
            assert!(message.contains("https is not supported"), "{message}");
            let message = failed(connect("m", "ftp://10.0.0.1/v1").await);
            assert!(message.contains("http://"), "{message}");
            let message = failed(connect("m", "10.0.0.1:8000/v1").await);
            assert!(message.contains("upstream URL"), "{message}");
            let message = failed(connect("m", "http://10.0.0.1/v1#").await);
            assert!(message.contains("nothing after `#`"), "{message}");
            let message = failed(connect("m", "http://10.0.0.1/v1?key=1").await);
            assert!(message.contains("query"), "{message}");
            let message = failed(connect(&"m".repeat(65), "http://10.0.0.1/v1").await);
            assert!(message.contains("1 to 64 bytes"), "{message}");
            // Nobody listening.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            let message = failed(connect("m", &format!("http://{addr}/v1")).await);
            assert!(
                message.contains(&format!("GET http://{addr}/v1/models")),
                "{message}"
            );
        })
        .await;
    }

    #[test]
    fn targets_parse() {
        let target = |name: &str, url: &str| parse_target(name, url).unwrap();
        assert_eq!(
            target("m", "http://h:1/v1/"),
            ("http://h:1/v1".to_owned(), "m".to_owned())
        );
        assert_eq!(
            target("m", "http://h:1/v1#Qwen/Qwen2.5-7B-Instruct"),
            (
                "http://h:1/v1".to_owned(),
                "Qwen/Qwen2.5-7B-Instruct".to_owned()
            )
        );
        // Normalised as the client will use it.
        assert_eq!(target("m", "HTTP://H:1/v1").0, "http://h:1/v1");
        assert!(parse_target("m", "http://").is_err());
    }

    #[test]
    fn contexts_from_model_entries() {
        assert_eq!(
            entry_context(&json!({"context_length": 32768})),
            Some(32768)
        );
        assert_eq!(entry_context(&json!({"max_model_len": 4000})), Some(4000));
        assert_eq!(
            entry_context(&json!({"suanli": {"context": 1 + u64::from(u32::MAX)}})),
            Some(u32::MAX)
        );
        assert_eq!(entry_context(&json!({"max_model_len": 0})), None);
        assert_eq!(entry_context(&json!({"max_model_len": "big"})), None);
        assert_eq!(entry_context(&json!({"id": "x"})), None);
    }

    #[tokio::test]
    async fn chat_generation_is_forwarded_and_metered() {
        within(async {
            let mock = mock().await;
            let upstream = mock.upstream("org/model-a");
            let (generation, pieces) = run(&upstream, &chat_request("model-a")).await;
            assert_eq!(
                generation.unwrap(),
                Generation {
                    prompt_tokens: 7,
                    completion_tokens: 3,
                    finish: Finish::Stop,
                    text: "Hello world".into(),
                }
            );
            assert_eq!(pieces, PIECES);
            let requests = mock.requests();
            let (path, body) = &requests[0];
            assert_eq!(path, "/v1/chat/completions");
            assert_eq!(
                *body,
                json!({"model": "org/model-a",
                    "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "hi"}],
                    "max_tokens": 10, "temperature": 0.7, "top_p": 0.95, "seed": 42,
                    "stop": ["\n"], "stream": true, "stream_options": {"include_usage": true}})
            );
        })
        .await;
    }

    #[tokio::test]
    async fn text_generation_cut_at_max_tokens() {
        within(async {
            let mock = mock().await;
            let upstream = mock.upstream("plain");
            let request = GenerateRequest {
                model: "plain".into(),
                prompt: Prompt::Text("Once".into()),
                max_tokens: 2,
                sampling: Sampling::GREEDY,
                stop: vec![],
            };
            let (generation, pieces) = run(&upstream, &request).await;
            assert_eq!(
                generation.unwrap(),
                Generation {
                    prompt_tokens: 7,
                    completion_tokens: 2,
                    finish: Finish::Length,
                    text: "Hello".into(),
                }
            );
            assert_eq!(pieces, ["Hel", "lo"]);
            let requests = mock.requests();
            let (path, body) = &requests[0];
            assert_eq!(path, "/v1/completions");
            assert_eq!(body["prompt"], "Once");
            assert!(body.get("stop").is_none(), "{body}");
            assert!(body.get("messages").is_none(), "{body}");
        })
        .await;
    }

    #[tokio::test]
    async fn large_deltas_are_split_into_frames() {
        within(async {
            let mock = mock().await;
            let (generation, pieces) = run(&mock.upstream("big"), &chat_request("big")).await;
            let generation = generation.unwrap();
            assert_eq!(generation.text, "é".repeat(20_000));
            assert_eq!(generation.completion_tokens, 20_000);
            assert!(pieces.len() >= 3, "{}", pieces.len());
            assert!(pieces.iter().all(|p| p.len() <= MAX_TEXT_FRAME_BYTES));
            assert_eq!(pieces.concat(), generation.text);
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_the_receiver_cancels_and_closes_the_upstream_connection() {
        within(async {
            let mock = mock().await;
            let upstream = Arc::new(mock.upstream("endless"));
            let request = GenerateRequest {
                prompt: Prompt::Chat(vec![ChatMessage {
                    role: "user".into(),
                    content: "hi there".into(),
                }]),
                ..chat_request("endless")
            };
            let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
            let task = tokio::spawn({
                let (upstream, request) = (Arc::clone(&upstream), request.clone());
                async move {
                    upstream
                        .generate(&request, sender, CancellationToken::new())
                        .await
                }
            });
            assert_eq!(receiver.recv().await.unwrap(), "tick");
            assert_eq!(receiver.recv().await.unwrap(), "tick");
            assert!(!mock.state.closed.is_cancelled());
            drop(receiver);
            let generation = task.await.unwrap().unwrap();
            assert_eq!(generation.finish, Finish::Cancelled);
            assert!(generation.completion_tokens >= 2);
            assert!(generation.text.starts_with("ticktick"));
            assert_eq!(generation.text.len() % 4, 0);
            // "user" + "hi there": 12 bytes, 3 tokens at 4 bytes a token.
            assert_eq!(generation.prompt_tokens, 3);
            tokio::time::timeout(Duration::from_secs(5), mock.state.closed.cancelled())
                .await
                .expect("the upstream connection stays open");
        })
        .await;
    }

    #[tokio::test]
    async fn the_cancellation_token_stops_a_generation() {
        within(async {
            let mock = mock().await;
            let upstream = Arc::new(mock.upstream("endless"));
            let cancel = CancellationToken::new();
            let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
            let task = tokio::spawn({
                let (upstream, cancel) = (Arc::clone(&upstream), cancel.clone());
                async move {
                    upstream
                        .generate(&chat_request("endless"), sender, cancel)
                        .await
                }
            });
            assert_eq!(receiver.recv().await.unwrap(), "tick");
            assert!(!mock.state.closed.is_cancelled());
            cancel.cancel();
            let generation = task.await.unwrap().unwrap();
            assert_eq!(generation.finish, Finish::Cancelled);
            assert!(generation.completion_tokens >= 1);
            // "developer" + "Be brief." + "user" + "hi" = 24 bytes.
            assert_eq!(generation.prompt_tokens, 6);
            // Every piece sent was received, and is in the text.
            let mut received = String::new();
            while let Some(piece) = receiver.recv().await {
                received.push_str(&piece);
            }
            assert_eq!(format!("tick{received}"), generation.text);
            tokio::time::timeout(Duration::from_secs(5), mock.state.closed.cancelled())
                .await
                .expect("the upstream connection stays open");
        })
        .await;
    }

    #[tokio::test]
    async fn an_error_event_fails_the_generation() {
        within(async {
            let mock = mock().await;
            let (generation, pieces) = run(&mock.upstream("broken"), &chat_request("broken")).await;
            let message = failed(generation);
            assert!(message.contains("CUDA out of memory"), "{message}");
            assert_eq!(pieces, ["Hel"]);
        })
        .await;
    }

    #[tokio::test]
    async fn a_broken_stream_fails_the_generation() {
        within(async {
            let mock = mock().await;
            let (generation, _) = run(&mock.upstream("cut"), &chat_request("cut")).await;
            let message = failed(generation);
            assert!(message.contains("ended before"), "{message}");
        })
        .await;
    }

    #[tokio::test]
    async fn upstream_refusals_map_to_errors() {
        within(async {
            let mock = mock().await;
            let (generation, _) = run(&mock.upstream("too-long"), &chat_request("too-long")).await;
            match generation {
                Err(InferenceError::BadRequest(message)) => {
                    assert!(message.contains("maximum context length"), "{message}");
                }
                other => panic!("expected BadRequest, got {other:?}"),
            }
            let (generation, _) = run(&mock.upstream("gone"), &chat_request("gone")).await;
            let message = failed(generation);
            assert!(
                message.contains("404") && message.contains("no such model"),
                "{message}"
            );
        })
        .await;
    }

    #[test]
    fn events_are_read_across_chunks() {
        let mut reader = EventReader::default();
        assert!(reader.push(b"data: {\"a\"").unwrap().is_empty());
        assert_eq!(reader.push(b":1}\n\ndata: x\n").unwrap(), ["{\"a\":1}"]);
        assert_eq!(reader.push(b"\n").unwrap(), ["x"]);
        // CRLF, comments, other fields, several data lines, no space after the colon.
        let events = reader
            .push(b": ping\r\n\r\nevent: m\r\ndata: a\r\ndata:b\r\n\r\nid: 3\n\n")
            .unwrap();
        assert_eq!(events, ["a\nb"]);
        // A last event without its blank line.
        assert!(reader.push(b"data: [DONE]").unwrap().is_empty());
        assert_eq!(reader.finish().as_deref(), Some("[DONE]"));
        assert_eq!(reader.finish(), None);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut reader = EventReader::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(Vec::new());
        for _ in 0..=MAX_LINE_BYTES / chunk.len() {
            result = reader.push(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
        let mut reader = EventReader::default();
        let line = format!("data: {}\n", "y".repeat(MAX_LINE_BYTES / 2));
        assert!(reader.push(line.as_bytes()).is_ok());
        assert!(reader.push(line.as_bytes()).is_err());
    }

    #[test]
    fn pieces_split_between_characters() {
        assert!(split_pieces("").is_empty());
        assert_eq!(split_pieces("abc"), ["abc"]);
        let ascii = "a".repeat(40_000);
        let lengths: Vec<usize> = split_pieces(&ascii).iter().map(|p| p.len()).collect();
        assert_eq!(lengths, [16_384, 16_384, 7_232]);
        let euros = "€".repeat(10_000);
        let pieces = split_pieces(&euros);
        assert!(
            pieces
                .iter()
                .all(|p| p.len() <= MAX_TEXT_FRAME_BYTES && !p.is_empty())
        );
        assert_eq!(pieces.concat(), euros);
    }

    #[test]
    fn servers_chunks_are_read_leniently() {
        let mut progress = Progress::default();
        let content = progress
            .handle(r#"{"choices":[{"index":0,"delta":{"content":null},"finish_reason":"eos"}]}"#)
            .unwrap();
        assert_eq!(content, "");
        let usage = r#"{"choices":null,"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        assert_eq!(progress.handle(usage).unwrap(), "");
        assert_eq!(progress.handle("[DONE]").unwrap(), "");
        assert_eq!(
            progress.finished().unwrap(),
            Generation {
                prompt_tokens: 1,
                completion_tokens: 2,
                finish: Finish::Stop,
                text: String::new(),
            }
        );
        let mut progress = Progress::default();
        assert!(failed(progress.handle("{not json")).contains("unreadable"));
        assert!(failed(progress.handle(r#"{"error":"overloaded"}"#)).contains("overloaded"));
        // A stream ended with [DONE] but no usage is refused (nothing to meter from).
        let mut progress = Progress::default();
        progress.handle("[DONE]").unwrap();
        assert_eq!(failed(progress.finished()), NO_USAGE);
    }

    #[test]
    fn error_bodies_are_read() {
        let message = |json: Value| error_message(&json);
        assert_eq!(
            message(json!({"error": {"message": "m", "code": "c"}})).as_deref(),
            Some("m")
        );
        assert_eq!(message(json!({"error": "plain"})).as_deref(), Some("plain"));
        assert_eq!(
            message(json!({"object": "error", "message": "vllm", "code": 400})).as_deref(),
            Some("vllm")
        );
        assert_eq!(message(json!({"detail": "x"})), None);
        let long = truncate("é".repeat(1000));
        assert!(long.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    }
}
