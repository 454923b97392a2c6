//! The request bodies of `/v1/chat/completions` and `/v1/completions`, their checks and
//! conversion to a [`GenerateRequest`] (`to_generate`), and the OpenAI error shape
//! ([`ApiError`]) those checks answer with.
//!
//! Pure, like its parent, and narrower: it names nothing of the node but this file (only
//! `serde`, `serde_json`, `http` and the protocol crate), so the fuzz target `openai_request`
//! compiles this very file alone, without the node's heavy dependencies
//! (fuzz/fuzz_targets/openai_request.rs). It must never grow a `crate::` or `super::` path.

use std::fmt;

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use suanli_protocol::job::MAX_REPLICAS;
use suanli_protocol::tokens::{
    ChatMessage, GenerateRequest, MAX_STOP_SEQUENCES, Prompt, RequestError, Sampling,
};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[serde(flatten)]
    pub options: Options,
}

/// The fields both request kinds share: sampling, limits and streaming.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Options {
    /// The older name of `max_completion_tokens`; both are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// OpenAI's seeds are 64-bit signed; a negative seed is kept as its two's complement
    /// (`-1` → `u64::MAX`) in [`Sampling::seed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// suanli's own: serve the request on this many distinct providers and answer with the
    /// text a majority of them returned (1 to 8; above 1 only for greedy decoding, unstreamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RequestMessage {
    pub role: String,
    /// Absent or `null` (an assistant message that only called tools) reads as empty text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
}

/// A message's content: a string, or an array of parts of which only `text` parts are served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
    /// Anything else: refused by [`ChatCompletionRequest::to_generate`] with a message naming
    /// the field (rather than by the JSON parser with a vague one).
    Other(Value),
}

/// One part of a message's content (`{"type":"text","text":"…"}`); other fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `stop`: one string or an array of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
    /// Anything else, refused by `to_generate` with `param: "stop"`.
    Other(Value),
}

/// `stream_options`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: CompletionPrompt,
    #[serde(flatten)]
    pub options: Options,
    /// Must be false or absent: the prompt is not repeated in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
}

/// A completion's `prompt`: a string, or an array holding exactly one string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum CompletionPrompt {
    Text(String),
    Texts(Vec<String>),
    /// Token ids and anything else, refused by `to_generate` with `param: "prompt"`.
    Other(Value),
}

impl Options {
    /// Checks the fields OpenAI bounds and converts them; `prompt_param` names the prompt's
    /// field in errors.
    fn to_generate(
        &self,
        model: &str,
        prompt: Prompt,
        prompt_param: &str,
        default_max_tokens: u32,
    ) -> Result<GenerateRequest, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(
                Some("n"),
                format!("n must be 1 (one choice per request); got {n}"),
            ));
        }
        self.replica_count()?;
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request(
                Some("temperature"),
                format!("temperature must be between 0 and 2; got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request(
                Some("top_p"),
                format!("top_p must be greater than 0 and at most 1; got {top_p}"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop.clone()],
            Some(Stop::Many(stops)) => stops.clone(),
            Some(Stop::Other(_)) => {
                return Err(ApiError::bad_request(
                    Some("stop"),
                    "stop must be a string or an array of strings",
                ));
            }
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::bad_request(
                Some("stop"),
                format!(
                    "at most {MAX_STOP_SEQUENCES} stop sequences; got {}",
                    stop.len()
                ),
            ));
        }
        let (max_tokens, max_tokens_param) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(max), _) => (max, "max_completion_tokens"),
            (None, Some(max)) => (max, "max_tokens"),
            (None, None) => (default_max_tokens, "max_tokens"),
        };
        let request = GenerateRequest {
            model: model.to_owned(),
            prompt,
            max_tokens,
            sampling: Sampling {
                temperature_milli: to_milli(temperature),
                // A top_p below 0.0005 rounds to 0 thousandths, which the protocol refuses
                // (an empty nucleus); OpenAI accepts any top_p above 0, so it is the smallest
                // nucleus the protocol carries. Refusing it blamed `temperature` (the fuzz
                // target openai_request found the misnamed refusal).
                top_p_milli: to_milli(top_p).max(1),
                // Two's complement keeps every OpenAI seed distinct (and reversible).
                seed: self.seed.unwrap_or(0) as u64,
            },
            stop,
        };
        request
            .validate()
            .map_err(|error| request_error(&error, prompt_param, max_tokens_param))?;
        Ok(request)
    }
}

/// A value in `0..=2`, in thousandths.
fn to_milli(value: f64) -> u32 {
    (value * 1000.0).round() as u32
}

/// Maps a rule [`GenerateRequest::validate`] found broken to a 400 naming the field.
fn request_error(error: &RequestError, prompt_param: &str, max_tokens_param: &str) -> ApiError {
    let param = match error {
        RequestError::EmptyPrompt | RequestError::PromptTooLarge(_) => prompt_param,
        RequestError::TooManyMessages(_) | RequestError::BadRole(_) => "messages",
        RequestError::NoTokens => max_tokens_param,
        RequestError::BadStop => "stop",
        RequestError::BadSampling => "temperature",
        RequestError::BadModelName => "model",
    };
    ApiError::bad_request(Some(param), error.to_string())
}

impl ChatCompletionRequest {
    /// The generation this request asks for, `default_max_tokens` when it sets no limit;
    /// a 400 naming the field when it breaks a rule.
    pub fn to_generate(&self, default_max_tokens: u32) -> Result<GenerateRequest, ApiError> {
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                Ok(ChatMessage {
                    role: message.role.clone(),
                    content: message_text(index, message.content.as_ref())?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.options.to_generate(
            &self.model,
            Prompt::Chat(messages),
            "messages",
            default_max_tokens,
        )
    }
}

impl Options {
    /// How many providers are to serve the request (`replicas`, 1 when absent): more than one
    /// only with `temperature` 0, the one decoding whose text honest providers of one model
    /// file reproduce, and not streamed, since the answer is the majority's once all ended.
    pub fn replica_count(&self) -> Result<u8, ApiError> {
        let replicas = self.replicas.unwrap_or(1);
        let count = u8::try_from(replicas)
            .ok()
            .filter(|count| (1..=MAX_REPLICAS).contains(count))
            .ok_or_else(|| {
                ApiError::bad_request(
                    Some("replicas"),
                    format!("replicas must be between 1 and {MAX_REPLICAS}; got {replicas}"),
                )
            })?;
        if count > 1 && self.temperature != Some(0.0) {
            return Err(ApiError::bad_request(
                Some("replicas"),
                "replicas above 1 compare the providers' text, which only greedy decoding \
                 reproduces: set temperature to 0",
            ));
        }
        if count > 1 && self.streaming() {
            return Err(ApiError::bad_request(
                Some("replicas"),
                "replicas above 1 answer with the majority's text once every provider ended: \
                 they cannot be streamed",
            ));
        }
        Ok(count)
    }

    /// Whether the answer is to be streamed.
    pub fn streaming(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether a stream ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.streaming()
            && self
                .stream_options
                .as_ref()
                .and_then(|options| options.include_usage)
                == Some(true)
    }
}

/// A message's text: the string, or its text parts joined with newlines (as vLLM joins them).
fn message_text(index: usize, content: Option<&MessageContent>) -> Result<String, ApiError> {
    let param = || format!("messages[{index}].content");
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(text)) => Ok(text.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => texts.push(text.as_str()),
                    ("text", None) => {
                        return Err(ApiError::bad_request(
                            Some(&param()),
                            "a text content part needs a `text` field",
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::bad_request(
                            Some(&param()),
                            format!("only text content parts are served; got a `{other}` part"),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(MessageContent::Other(_)) => Err(ApiError::bad_request(
            Some(&param()),
            "content must be a string or an array of text parts",
        )),
    }
}

impl CompletionRequest {
    /// The generation this request asks for, `default_max_tokens` when it sets no limit;
    /// a 400 naming the field when it breaks a rule.
    pub fn to_generate(&self, default_max_tokens: u32) -> Result<GenerateRequest, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::bad_request(
                Some("echo"),
                "echo is not supported: the answer holds the completion only",
            ));
        }
        let text = match &self.prompt {
            CompletionPrompt::Text(text) => text.clone(),
            CompletionPrompt::Texts(texts) => match texts.as_slice() {
                [text] => text.clone(),
                _ => {
                    return Err(ApiError::bad_request(
                        Some("prompt"),
                        format!("one prompt per request; got an array of {}", texts.len()),
                    ));
                }
            },
            CompletionPrompt::Other(_) => {
                return Err(ApiError::bad_request(
                    Some("prompt"),
                    "prompt must be a string (token-id prompts are not supported)",
                ));
            }
        };
        self.options.to_generate(
            &self.model,
            Prompt::Text(text),
            "prompt",
            default_max_tokens,
        )
    }
}

/// Parses a request body; a 400 `invalid_json` saying where it breaks otherwise.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::invalid_json(&error))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// OpenAI's error `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidRequest,
    NotFound,
    RateLimit,
    Server,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Server => "server_error",
        }
    }
}

/// The JSON Schema of `type`: one of the names [`ErrorKind::name`] gives.
impl schemars::JsonSchema for ErrorKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenAiErrorType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names = [
            ErrorKind::InvalidRequest,
            ErrorKind::NotFound,
            ErrorKind::RateLimit,
            ErrorKind::Server,
        ]
        .map(ErrorKind::name);
        schemars::json_schema!({"type": "string", "enum": names})
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// An error as the OpenAI API reports it: an HTTP status and
/// `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: ErrorKind,
    /// The request field at fault.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, …).
    pub code: Option<String>,
}

/// Every error of these routes, as OpenAI's clients read it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "OpenAiErrorBody")]
pub struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "OpenAiError")]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: ErrorKind,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    fn with_code(mut self, code: &str) -> ApiError {
        self.code = Some(code.to_owned());
        self
    }

    fn with_param(mut self, param: Option<&str>) -> ApiError {
        self.param = param.map(str::to_owned);
        self
    }

    /// 400: the request breaks a rule; `param` names the field at fault.
    pub fn bad_request(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, message).with_param(param)
    }

    /// 400 `invalid_json`: the body is not the JSON this route takes.
    pub fn invalid_json(error: &dyn fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
            format!("We could not parse the JSON body of your request: {error}"),
        )
        .with_code("invalid_json")
    }

    /// 404 `model_not_found`, worded as OpenAI words it (with OpenAI's type,
    /// `invalid_request_error`).
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::InvalidRequest,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param(Some("model"))
        .with_code("model_not_found")
    }

    /// 404 for a route or object that does not exist.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    /// 400 `context_length_exceeded`; `param` is `messages` or `prompt`.
    pub fn context_length_exceeded(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest, message)
            .with_param(Some(param))
            .with_code("context_length_exceeded")
    }

    /// 503 `no_provider`: nobody serves `model` now; `reasons` says why for each candidate.
    pub fn no_provider(model: &str, reasons: &[String]) -> ApiError {
        let mut message = format!("No provider can serve the model `{model}` now");
        if reasons.is_empty() {
            message.push('.');
        } else {
            message.push_str(": ");
            message.push_str(&reasons.join("; "));
        }
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Server, message)
            .with_code("no_provider")
    }

    /// 503 `not_enough_providers`: fewer distinct providers of one model file than the
    /// replicas asked for.
    pub fn not_enough_providers(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Server, message)
            .with_code("not_enough_providers")
    }

    /// 502 `replicas_disagree`: no majority of the replicas returned the same text.
    pub fn replicas_disagree(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, ErrorKind::Server, message)
            .with_code("replicas_disagree")
    }

    /// 413: the body exceeds `limit` bytes.
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::InvalidRequest,
            format!("The request body is larger than {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// 429: too many requests (the client retries it).
    pub fn rate_limited(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimit, message)
            .with_code("rate_limit_exceeded")
    }

    /// 429 `insufficient_quota` (OpenAI's code for a spent quota; retrying does not help).
    pub fn insufficient_quota(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimit, message)
            .with_code("insufficient_quota")
    }

    /// 408: the body did not arrive within `limit`.
    pub fn request_timeout(limit: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorKind::InvalidRequest,
            format!(
                "The request body did not arrive within {} s.",
                limit.as_secs()
            ),
        )
        .with_code("request_timeout")
    }

    /// 502 `provider_failed`: the engine or upstream server generating failed.
    pub fn provider_failed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, ErrorKind::Server, message)
            .with_code("provider_failed")
    }

    /// 500: this node failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Server,
            message,
        )
    }

    /// The JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> Value {
        serde_json::to_value(ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        })
        .unwrap_or(Value::Null)
    }
}
