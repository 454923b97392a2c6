//! The OpenAI API's JSON shapes: request bodies of `/v1/chat/completions` and `/v1/completions`
//! and their conversion to a [`GenerateRequest`], the answers (whole and streamed as server-sent
//! events), the `/v1/models` list, and errors as OpenAI's clients expect them ([`ApiError`]).
//!
//! Pure types and conversions: this module performs no I/O. The HTTP handlers serve these
//! shapes; [`crate::inference::upstream`] sends the same request types to an upstream server.
//!
//! What the official clients rely on (checked against the `openai` Python client):
//!
//! - a chat answer is `{id, object:"chat.completion", created, model, choices:[{index,
//!   message:{role,content}, logprobs:null, finish_reason}], usage}`; a completion answer has
//!   `object:"text_completion"` and `choices[].text`;
//! - a stream is `data: <json>\n\n` events ending with `data: [DONE]\n\n`; chat chunks
//!   (`chat.completion.chunk`) carry `delta: {role, content:""}` first, then `{content}`, and
//!   last `{}` with the `finish_reason`. With `stream_options.include_usage` every chunk has
//!   `"usage": null` and one more chunk with `choices: []` carries the totals ([`ChatChunks`],
//!   [`TextChunks`]);
//! - an error is `{"error":{"message","type","param","code"}}` with an HTTP status the client
//!   maps to an exception (it retries 408, 409, 429 and ≥ 500); in the middle of a stream it is
//!   a `data: {"error":…}` event ([`error_event`]).
//!
//! Requests accept what the client sends and ignore fields they do not use (`user`, `logprobs`,
//! `tools`, …). One choice per request (`n` = 1), text content only.
//!
//! A [`Finish::Cancelled`] generation is reported with `finish_reason: "length"`
//! ([`finish_reason`]): its text is cut short, and `length` is the OpenAI value that tells a
//! client so (`stop` would claim the answer is complete, and typed clients reject values
//! outside OpenAI's list).

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use suanli_protocol::tokens::Finish;

use crate::inference::InferenceError;

/// `owned_by` of the models this node lists.
pub const OWNED_BY: &str = "suanli-mesh";
/// The event that ends every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";
/// The `Content-Type` of a stream.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream";

mod requests;

pub use requests::*;

impl ApiError {
    /// The answer to an [`InferenceError`] for a request whose prompt field is `prompt_param`
    /// (`messages` or `prompt`).
    pub fn from_inference(error: &InferenceError, prompt_param: &str) -> ApiError {
        match error {
            InferenceError::ContextLength {
                max,
                prompt,
                max_tokens,
            } => ApiError::context_length_exceeded(
                prompt_param,
                format!(
                    "This model's maximum context length is {max} tokens. However, you requested \
                     {} tokens ({prompt} in the {prompt_param}, {max_tokens} in the completion). \
                     Please reduce the length of the {prompt_param} or completion.",
                    u64::from(*prompt) + u64::from(*max_tokens)
                ),
            ),
            InferenceError::BadRequest(message) => {
                ApiError::bad_request(Some(prompt_param), message.clone())
            }
            InferenceError::Failed(message) => ApiError::provider_failed(message.clone()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// `usage`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Usage {
        Usage {
            prompt_tokens: prompt_tokens.into(),
            completion_tokens: completion_tokens.into(),
            total_tokens: u64::from(prompt_tokens) + u64::from(completion_tokens),
        }
    }
}

/// OpenAI's `finish_reason` of a generation: `stop` or `length`; a cancelled generation (cut
/// short) reports `length`.
pub fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length | Finish::Cancelled => "length",
    }
}

/// A whole chat answer.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// Always `null`.
    pub logprobs: Option<Value>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

/// The answer to a chat request that was not streamed.
pub fn chat_completion(
    id: &str,
    created: u64,
    model: &str,
    text: String,
    finish: Finish,
    usage: Usage,
) -> ChatCompletion {
    ChatCompletion {
        id: id.to_owned(),
        object: "chat.completion",
        created,
        model: model.to_owned(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: text,
            },
            logprobs: None,
            finish_reason: finish_reason(finish),
        }],
        usage,
    }
}

/// A whole completion answer.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    /// Always `null`.
    pub logprobs: Option<Value>,
    pub finish_reason: &'static str,
}

/// The answer to a completion request that was not streamed.
pub fn text_completion(
    id: &str,
    created: u64,
    model: &str,
    text: String,
    finish: Finish,
    usage: Usage,
) -> TextCompletion {
    TextCompletion {
        id: id.to_owned(),
        object: "text_completion",
        created,
        model: model.to_owned(),
        choices: vec![TextChoice {
            index: 0,
            text,
            logprobs: None,
            finish_reason: finish_reason(finish),
        }],
        usage,
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// One event of a streamed chat answer.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Absent unless usage was asked for; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// Always `null`.
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to the message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, schemars::JsonSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Builds the chunks of one streamed chat answer, in this order: [`role`](Self::role),
/// [`content`](Self::content) for each piece, [`finish`](Self::finish), then
/// [`usage`](Self::usage) (`None` unless usage was asked for), then [`SSE_DONE`].
#[derive(Debug, Clone)]
pub struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChatChunks {
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> ChatChunks {
        ChatChunks {
            id: id.to_owned(),
            created,
            model: model.to_owned(),
            include_usage,
        }
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        }
    }

    fn choice(delta: Delta, finish_reason: Option<&'static str>) -> Vec<ChunkChoice> {
        vec![ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }]
    }

    /// The first chunk: `delta: {role: "assistant", content: ""}`.
    pub fn role(&self) -> ChatCompletionChunk {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
        };
        self.chunk(Self::choice(delta, None), None)
    }

    /// A piece of the answer: `delta: {content}`.
    pub fn content(&self, piece: &str) -> ChatCompletionChunk {
        let delta = Delta {
            role: None,
            content: Some(piece.to_owned()),
        };
        self.chunk(Self::choice(delta, None), None)
    }

    /// The end of the answer: `delta: {}` with the `finish_reason`.
    pub fn finish(&self, finish: Finish) -> ChatCompletionChunk {
        self.chunk(
            Self::choice(Delta::default(), Some(finish_reason(finish))),
            None,
        )
    }

    /// The totals, `choices: []`, when usage was asked for.
    pub fn usage(&self, usage: Usage) -> Option<ChatCompletionChunk> {
        self.include_usage
            .then(|| self.chunk(Vec::new(), Some(usage)))
    }
}

/// One event of a streamed completion answer.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TextCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoiceChunk>,
    /// Absent unless usage was asked for; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TextChoiceChunk {
    pub index: u32,
    pub text: String,
    /// Always `null`.
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

/// Builds the chunks of one streamed completion answer: [`text`](Self::text) for each piece,
/// [`finish`](Self::finish) (empty text), [`usage`](Self::usage) when asked for, then
/// [`SSE_DONE`].
#[derive(Debug, Clone)]
pub struct TextChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl TextChunks {
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> TextChunks {
        TextChunks {
            id: id.to_owned(),
            created,
            model: model.to_owned(),
            include_usage,
        }
    }

    fn chunk(&self, choices: Vec<TextChoiceChunk>, usage: Option<Usage>) -> TextCompletionChunk {
        TextCompletionChunk {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        }
    }

    fn choice(text: &str, finish_reason: Option<&'static str>) -> Vec<TextChoiceChunk> {
        vec![TextChoiceChunk {
            index: 0,
            text: text.to_owned(),
            logprobs: None,
            finish_reason,
        }]
    }

    /// A piece of the answer.
    pub fn text(&self, piece: &str) -> TextCompletionChunk {
        self.chunk(Self::choice(piece, None), None)
    }

    /// The end of the answer: empty text with the `finish_reason`.
    pub fn finish(&self, finish: Finish) -> TextCompletionChunk {
        self.chunk(Self::choice("", Some(finish_reason(finish))), None)
    }

    /// The totals, `choices: []`, when usage was asked for.
    pub fn usage(&self, usage: Usage) -> Option<TextCompletionChunk> {
        self.include_usage
            .then(|| self.chunk(Vec::new(), Some(usage)))
    }
}

/// `value` as one server-sent event: `data: <json>\n\n`.
pub fn sse_event<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => format!("data: {json}\n\n"),
        // Unreachable for this module's types (string keys only); still an event the client
        // reads as an error rather than a broken stream.
        Err(error) => error_event(&ApiError::internal(format!("encoding a chunk: {error}"))),
    }
}

/// An error in the middle of a stream: `data: {"error":{…}}\n\n`.
pub fn error_event(error: &ApiError) -> String {
    format!("data: {}\n\n", error.body())
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelList {
    #[serde(default)]
    pub object: String,
    pub data: Vec<ModelEntry>,
}

/// One model of the list; `extra` holds fields beyond OpenAI's (e.g. a `suanli` object with
/// providers, prices and `context`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelEntry {
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl ModelEntry {
    /// A model owned by [`OWNED_BY`], first seen at `created` (Unix seconds).
    pub fn new(id: &str, created: u64) -> ModelEntry {
        ModelEntry {
            id: id.to_owned(),
            object: "model".to_owned(),
            created,
            owned_by: OWNED_BY.to_owned(),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds the field `key` (not one of OpenAI's, which it would shadow).
    pub fn with(mut self, key: &str, value: Value) -> ModelEntry {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

/// The `/v1/models` answer.
pub fn model_list(models: Vec<ModelEntry>) -> ModelList {
    ModelList {
        object: "list".to_owned(),
        data: models,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;
    use suanli_protocol::tokens::{ChatMessage, GenerateRequest, Prompt, Sampling};

    use super::*;

    fn chat(body: Value) -> Result<GenerateRequest, ApiError> {
        let request: ChatCompletionRequest = parse_body(body.to_string().as_bytes())?;
        request.to_generate(256)
    }

    fn completion(body: Value) -> Result<GenerateRequest, ApiError> {
        let request: CompletionRequest = parse_body(body.to_string().as_bytes())?;
        request.to_generate(256)
    }

    fn param_of(result: Result<GenerateRequest, ApiError>) -> (StatusCode, Option<String>) {
        let error = result.unwrap_err();
        (error.status, error.param)
    }

    #[test]
    fn replicas_are_for_greedy_unstreamed_requests_only() {
        let body = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            body
        };
        let count = |extra: Value| {
            let request: ChatCompletionRequest =
                parse_body(body(extra).to_string().as_bytes()).unwrap();
            request.options.replica_count()
        };
        assert_eq!(count(json!({})).unwrap(), 1);
        assert_eq!(
            count(json!({"replicas": 1, "temperature": 0.7})).unwrap(),
            1
        );
        assert_eq!(count(json!({"replicas": 3, "temperature": 0})).unwrap(), 3);
        assert_eq!(
            count(json!({"replicas": 8, "temperature": 0.0})).unwrap(),
            8
        );
        for refused in [
            json!({"replicas": 0, "temperature": 0}),
            json!({"replicas": 9, "temperature": 0}),
            json!({"replicas": 4294967295u64, "temperature": 0}),
            // Sampled text differs between honest providers; the default temperature is 1.
            json!({"replicas": 3}),
            json!({"replicas": 3, "temperature": 0.2}),
            json!({"replicas": 3, "temperature": 0, "stream": true}),
        ] {
            assert_eq!(
                param_of(chat(body(refused.clone()))),
                (StatusCode::BAD_REQUEST, Some("replicas".into())),
                "{refused}"
            );
        }
        // A replicas field of another type is not the JSON this route takes.
        assert!(chat(body(json!({"replicas": "3"}))).is_err());
    }

    #[test]
    fn python_client_chat_body_converts() {
        let body = br#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"model":"m","max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true},"user":"u-1","logprobs":false}"#;
        let request: ChatCompletionRequest = parse_body(body).unwrap();
        assert!(request.options.streaming());
        assert!(request.options.include_usage());
        let generate = request.to_generate(256).unwrap();
        assert_eq!(
            generate,
            GenerateRequest {
                model: "m".into(),
                prompt: Prompt::Chat(vec![
                    ChatMessage {
                        role: "system".into(),
                        content: "Be brief.".into()
                    },
                    ChatMessage {
                        role: "user".into(),
                        content: "hi".into()
                    },
                ]),
                max_tokens: 5,
                // OpenAI's defaults: temperature 1, top_p 1.
                sampling: Sampling {
                    temperature_milli: 1000,
                    top_p_milli: 1000,
                    seed: 0
                },
                stop: vec![],
            }
        );
    }

    #[test]
    fn a_tiny_top_p_is_the_smallest_nucleus_not_a_refusal() {
        // Below half a thousandth: it used to round to 0 and be refused as a bad `temperature`.
        for top_p in [0.0001, 1e-12, f64::MIN_POSITIVE] {
            let generate = chat(json!({
                "model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": top_p
            }))
            .unwrap();
            assert_eq!(generate.sampling.top_p_milli, 1);
        }
        let error = chat(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.0
        }))
        .unwrap_err();
        assert_eq!(error.param.as_deref(), Some("top_p"));
    }

    #[test]
    fn sampling_fields_convert_to_thousandths() {
        let generate = chat(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 9, "temperature": 0.7, "top_p": 0.95, "seed": 42,
            "stop": "\n\n", "n": 1, "stream": false
        }))
        .unwrap();
        assert_eq!(generate.max_tokens, 9);
        assert_eq!(
            generate.sampling,
            Sampling {
                temperature_milli: 700,
                top_p_milli: 950,
                seed: 42
            }
        );
        assert_eq!(generate.stop, vec!["\n\n".to_owned()]);
        // max_completion_tokens wins over max_tokens; a negative seed keeps its bits.
        let generate = chat(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 9, "max_completion_tokens": 3, "seed": -1, "stop": ["a", "b"],
            "temperature": 0.0004
        }))
        .unwrap();
        assert_eq!(generate.max_tokens, 3);
        assert_eq!(generate.sampling.seed, u64::MAX);
        assert_eq!(generate.sampling.temperature_milli, 0);
        assert_eq!(generate.stop, vec!["a".to_owned(), "b".to_owned()]);
        // Nothing set: the caller's default.
        let generate = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(generate.unwrap().max_tokens, 256);
    }

    #[test]
    fn streaming_flags() {
        let request: ChatCompletionRequest = parse_body(
            br#"{"model":"m","messages":[],"stream":false,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(!request.options.streaming());
        assert!(!request.options.include_usage());
        let request: CompletionRequest =
            parse_body(br#"{"model":"m","prompt":"x","stream":true,"stream_options":null}"#)
                .unwrap();
        assert!(request.options.streaming());
        assert!(!request.options.include_usage());
        let request: CompletionRequest = parse_body(
            br#"{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(request.options.include_usage());
    }

    #[test]
    fn content_parts_are_joined_and_others_refused() {
        let generate = chat(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": null},
        ]}))
        .unwrap();
        assert_eq!(
            generate.prompt,
            Prompt::Chat(vec![
                ChatMessage {
                    role: "user".into(),
                    content: "one\ntwo".into()
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: String::new()
                },
            ])
        );
        let error = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        )
        .unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.param.as_deref(), Some("messages[1].content"));
        assert!(error.message.contains("image_url"), "{}", error.message);
        let error = chat(json!({"model": "m", "messages": [{"role": "user", "content": 5}]}));
        assert_eq!(
            param_of(error),
            (StatusCode::BAD_REQUEST, Some("messages[0].content".into()))
        );
        let error = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        );
        assert_eq!(
            param_of(error),
            (StatusCode::BAD_REQUEST, Some("messages[0].content".into()))
        );
    }

    #[test]
    fn bounds_are_checked_with_the_field_named() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |key: &str, value: Value| {
            let mut body = base();
            body[key] = value;
            param_of(chat(body)).1
        };
        assert_eq!(with("n", json!(2)), Some("n".into()));
        assert_eq!(with("n", json!(0)), Some("n".into()));
        assert!(
            chat({
                let mut body = base();
                body["n"] = json!(1);
                body
            })
            .is_ok()
        );
        assert_eq!(with("temperature", json!(2.5)), Some("temperature".into()));
        assert_eq!(with("temperature", json!(-0.1)), Some("temperature".into()));
        assert_eq!(with("top_p", json!(0)), Some("top_p".into()));
        assert_eq!(with("top_p", json!(1.5)), Some("top_p".into()));
        assert_eq!(
            with("stop", json!(["a", "b", "c", "d", "e"])),
            Some("stop".into())
        );
        assert_eq!(with("stop", json!([""])), Some("stop".into()));
        assert_eq!(with("stop", json!({"x": 1})), Some("stop".into()));
        assert_eq!(with("max_tokens", json!(0)), Some("max_tokens".into()));
        assert_eq!(
            with("max_completion_tokens", json!(0)),
            Some("max_completion_tokens".into())
        );
        assert_eq!(with("model", json!("")), Some("model".into()));
        assert_eq!(with("messages", json!([])), Some("messages".into()));
        assert_eq!(
            with("messages", json!([{"role": "tool", "content": "x"}])),
            Some("messages".into())
        );
        let big = "x".repeat(suanli_protocol::tokens::MAX_PROMPT_BYTES + 1);
        assert_eq!(
            with("messages", json!([{"role": "user", "content": big}])),
            Some("messages".into())
        );
        // Every one of them is a 400 invalid_request_error.
        let error = chat(json!({"model": "m", "messages": [], "n": 3})).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn completion_prompt_forms() {
        let generate = completion(json!({"model": "m", "prompt": "Once", "max_tokens": 4,
            "temperature": 0, "echo": false}))
        .unwrap();
        assert_eq!(generate.prompt, Prompt::Text("Once".into()));
        assert_eq!(generate.sampling.temperature_milli, 0);
        let generate = completion(json!({"model": "m", "prompt": ["Once"]})).unwrap();
        assert_eq!(generate.prompt, Prompt::Text("Once".into()));
        for prompt in [
            json!(["a", "b"]),
            json!([1, 2, 3]),
            json!([[1, 2]]),
            json!(7),
        ] {
            let error = completion(json!({"model": "m", "prompt": prompt}));
            assert_eq!(
                param_of(error),
                (StatusCode::BAD_REQUEST, Some("prompt".into()))
            );
        }
        let error = completion(json!({"model": "m", "prompt": ""}));
        assert_eq!(
            param_of(error),
            (StatusCode::BAD_REQUEST, Some("prompt".into()))
        );
        let error = completion(json!({"model": "m", "prompt": "x", "echo": true}));
        assert_eq!(
            param_of(error),
            (StatusCode::BAD_REQUEST, Some("echo".into()))
        );
        let error = completion(json!({"model": "m", "prompt": "x", "n": 2}));
        assert_eq!(param_of(error), (StatusCode::BAD_REQUEST, Some("n".into())));
    }

    #[test]
    fn malformed_json_is_a_400_invalid_json() {
        let error = parse_body::<ChatCompletionRequest>(b"{\"model\":").unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code.as_deref(), Some("invalid_json"));
        let error = parse_body::<ChatCompletionRequest>(br#"{"model":"m"}"#).unwrap_err();
        assert!(error.message.contains("messages"), "{}", error.message);
        let error =
            parse_body::<ChatCompletionRequest>(br#"{"model":"m","messages":[],"max_tokens":-1}"#)
                .unwrap_err();
        assert_eq!(error.code.as_deref(), Some("invalid_json"));
    }

    #[test]
    fn request_serialises_without_unset_fields() {
        let request = ChatCompletionRequest {
            model: "m".into(),
            messages: vec![RequestMessage {
                role: "user".into(),
                content: Some(MessageContent::Text("hi".into())),
            }],
            options: Options {
                max_tokens: Some(4),
                temperature: Some(0.5),
                seed: Some(-3),
                stop: Some(Stop::Many(vec!["x".into()])),
                stream: Some(true),
                stream_options: Some(StreamOptions {
                    include_usage: Some(true),
                }),
                ..Options::default()
            },
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "temperature": 0.5, "seed": -3, "stop": ["x"], "stream": true,
                "stream_options": {"include_usage": true}})
        );
    }

    fn error_json(error: &ApiError) -> Value {
        error.body()
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_json(&ApiError::bad_request(Some("n"), "n must be 1")),
            json!({"error": {"message": "n must be 1", "type": "invalid_request_error",
                "param": "n", "code": null}})
        );
        let error = ApiError::model_not_found("gpt-9");
        assert_eq!(error.status, StatusCode::NOT_FOUND);
        assert_eq!(
            error_json(&error),
            json!({"error": {
                "message": "The model `gpt-9` does not exist or you do not have access to it.",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        );
        let error = ApiError::context_length_exceeded("prompt", "too long");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            error_json(&error),
            json!({"error": {"message": "too long", "type": "invalid_request_error",
                "param": "prompt", "code": "context_length_exceeded"}})
        );
        let error = ApiError::no_provider("m", &["node a: busy".into(), "node b: too dear".into()]);
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            error_json(&error),
            json!({"error": {
                "message": "No provider can serve the model `m` now: node a: busy; node b: too dear",
                "type": "server_error", "param": null, "code": "no_provider"}})
        );
        assert_eq!(
            ApiError::no_provider("m", &[]).message,
            "No provider can serve the model `m` now."
        );
        let error = ApiError::body_too_large(1024);
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
        let error = ApiError::rate_limited("slow down");
        assert_eq!(
            (error.status, error.kind.name()),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
        );
        let error = ApiError::not_found("no such route");
        assert_eq!(
            (error.status, error.kind.name()),
            (StatusCode::NOT_FOUND, "not_found_error")
        );
        let error = ApiError::internal("boom");
        assert_eq!(
            (error.status, error.kind.name()),
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        );
        assert_eq!(error.to_string(), "boom");
    }

    #[test]
    fn inference_errors_map() {
        let error = ApiError::from_inference(
            &InferenceError::ContextLength {
                max: 4096,
                prompt: 4000,
                max_tokens: 200,
            },
            "messages",
        );
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(error.param.as_deref(), Some("messages"));
        assert!(
            error.message.contains("4096") && error.message.contains("4200"),
            "{}",
            error.message
        );
        let error =
            ApiError::from_inference(&InferenceError::BadRequest("bad role".into()), "prompt");
        assert_eq!(
            (error.status, error.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("prompt"))
        );
        let error = ApiError::from_inference(&InferenceError::Failed("gone".into()), "prompt");
        assert_eq!(
            (error.status, error.kind, error.code.as_deref()),
            (
                StatusCode::BAD_GATEWAY,
                ErrorKind::Server,
                Some("provider_failed")
            )
        );
    }

    #[tokio::test]
    async fn error_response_has_status_and_body() {
        let response = ApiError::model_not_found("x").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn whole_answers() {
        let usage = Usage::new(7, 3);
        assert_eq!(
            serde_json::to_value(chat_completion(
                "chatcmpl-1",
                1700000000,
                "m",
                "Hello".into(),
                Finish::Stop,
                usage
            ))
            .unwrap(),
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
                "model": "m", "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
        );
        assert_eq!(
            serde_json::to_value(text_completion(
                "cmpl-1",
                5,
                "m",
                " there".into(),
                Finish::Length,
                usage
            ))
            .unwrap(),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                "choices": [{"index": 0, "text": " there", "logprobs": null,
                    "finish_reason": "length"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
        );
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(finish_reason(Finish::Stop), "stop");
        assert_eq!(finish_reason(Finish::Length), "length");
        assert_eq!(finish_reason(Finish::Cancelled), "length");
    }

    #[test]
    fn chat_stream_with_usage() {
        let chunks = ChatChunks::new("c", 9, "m", true);
        let events: Vec<Value> = [
            chunks.role(),
            chunks.content("Hel"),
            chunks.content("lo"),
            chunks.finish(Finish::Stop),
        ]
        .iter()
        .chain(chunks.usage(Usage::new(2, 2)).as_ref())
        .map(|chunk| serde_json::to_value(chunk).unwrap())
        .collect();
        let head = |choices: Value, usage: Value| {
            json!({"id": "c", "object": "chat.completion.chunk", "created": 9, "model": "m",
                "choices": choices, "usage": usage})
        };
        let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        assert_eq!(
            events,
            vec![
                head(
                    choice(json!({"role": "assistant", "content": ""}), Value::Null),
                    Value::Null
                ),
                head(choice(json!({"content": "Hel"}), Value::Null), Value::Null),
                head(choice(json!({"content": "lo"}), Value::Null), Value::Null),
                head(choice(json!({}), json!("stop")), Value::Null),
                head(
                    json!([]),
                    json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})
                ),
            ]
        );
    }

    #[test]
    fn chat_stream_without_usage_has_no_usage_field() {
        let chunks = ChatChunks::new("c", 9, "m", false);
        assert!(chunks.usage(Usage::new(1, 1)).is_none());
        let value = serde_json::to_value(chunks.finish(Finish::Length)).unwrap();
        assert!(value.get("usage").is_none(), "{value}");
        assert_eq!(value["choices"][0]["finish_reason"], "length");
        assert_eq!(value["choices"][0]["delta"], json!({}));
    }

    #[test]
    fn text_stream() {
        let chunks = TextChunks::new("t", 1, "m", true);
        assert_eq!(
            serde_json::to_value(chunks.text("Once")).unwrap(),
            json!({"id": "t", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": "Once", "logprobs": null, "finish_reason": null}],
                "usage": null})
        );
        assert_eq!(
            serde_json::to_value(chunks.finish(Finish::Stop)).unwrap()["choices"],
            json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}])
        );
        let usage = serde_json::to_value(chunks.usage(Usage::new(1, 2)).unwrap()).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3);
        let without = TextChunks::new("t", 1, "m", false);
        assert!(without.usage(Usage::new(1, 2)).is_none());
        assert!(
            serde_json::to_value(without.text("x"))
                .unwrap()
                .get("usage")
                .is_none()
        );
    }

    #[test]
    fn sse_framing() {
        let chunks = TextChunks::new("t", 1, "m", false);
        let event = sse_event(&chunks.text("a\nb"));
        assert!(event.starts_with("data: {"), "{event}");
        assert!(event.ends_with("}\n\n"), "{event}");
        // One line of JSON: newlines in the text are escaped.
        assert_eq!(event.matches('\n').count(), 2);
        let json: Value = serde_json::from_str(&event["data: ".len()..]).unwrap();
        assert_eq!(json["choices"][0]["text"], "a\nb");
        assert_eq!(SSE_DONE, "data: [DONE]\n\n");
        let event = error_event(&ApiError::provider_failed("upstream died"));
        let json: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"error": {"message": "upstream died", "type": "server_error", "param": null,
                "code": "provider_failed"}})
        );
        assert!(event.ends_with("\n\n"));
    }

    #[test]
    fn model_list_shape() {
        let list = model_list(vec![
            ModelEntry::new("smollm2-135m", 1700000000).with(
                "suanli",
                json!({"providers": 2, "context": 4096,
                    "per_million_prompt": 1, "per_million_completion": 2}),
            ),
            ModelEntry::new("other", 1),
        ]);
        let value = serde_json::to_value(&list).unwrap();
        assert_eq!(
            value,
            json!({"object": "list", "data": [
                {"id": "smollm2-135m", "object": "model", "created": 1700000000,
                    "owned_by": "suanli-mesh", "suanli": {"providers": 2, "context": 4096,
                    "per_million_prompt": 1, "per_million_completion": 2}},
                {"id": "other", "object": "model", "created": 1, "owned_by": "suanli-mesh"},
            ]})
        );
        let back: ModelList = serde_json::from_value(value).unwrap();
        assert_eq!(back, list);
    }
}
