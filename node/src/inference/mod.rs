//! Model inference on the provider side: the backends a node serves models with.
//!
//! - [`candle`] — the built-in engine: a GGUF file run by candle on the CPU (quantised llama
//!   family), one thread per stream.
//! - [`upstream`] — an OpenAI-compatible server the operator already runs (vLLM, SGLang,
//!   llama.cpp's server, Ollama, another suanli node), proxied and metered from its `usage`.
//!
//! Both produce the same thing for a [`GenerateRequest`]: text pieces sent, in order, on a
//! bounded channel as they are decoded, and a [`Generation`] with the token counts the usage
//! receipt carries. Generation stops at the next token when the receiving end of the channel
//! is dropped or the cancellation token fires; what was generated until then is reported with
//! [`Finish::Cancelled`](suanli_protocol::tokens::Finish::Cancelled) and billed.

pub mod candle;
pub mod upstream;

use std::sync::Arc;

use suanli_protocol::Hash32;
use suanli_protocol::tokens::{Finish, GenerateRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many text pieces may wait in a stream's channel before the generator waits for its
/// reader (a slow client slows its own generation, nobody else's).
pub const STREAM_BUFFER: usize = 64;

/// What one request generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish: Finish,
    /// The whole text delivered (every piece sent, concatenated).
    pub text: String,
}

/// Why a request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    /// Prompt and `max_tokens` together exceed what the model accepts.
    #[error(
        "this model accepts at most {max} tokens; the request needs {prompt} prompt tokens plus up to {max_tokens} completion tokens"
    )]
    ContextLength {
        max: u32,
        prompt: u32,
        max_tokens: u32,
    },
    /// The request cannot be rendered for this model (e.g. a role the template does not know).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The engine or the upstream server failed.
    #[error("{0}")]
    Failed(String),
}

/// A model as this node serves it: how it is described in adverts, and what runs it.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The name requests use.
    pub name: String,
    /// Architecture family (`llama`), or `upstream`.
    pub family: String,
    /// The most prompt + completion tokens one request may use.
    pub context: u32,
    /// Weights' quantisation as served (`Q8_0`), or empty when unknown.
    pub quantisation: String,
    /// SHA-256 of the model file (zero for an upstream server).
    pub sha256: Hash32,
    /// Measured decode speed of one stream, tokens per second.
    pub decode_tokens_per_s: u32,
    pub backend: Backend,
}

/// What runs a model.
#[derive(Debug, Clone)]
pub enum Backend {
    Candle(Arc<candle::CandleModel>),
    Upstream(Arc<upstream::Upstream>),
}

impl Backend {
    /// Generates for `request`, sending text pieces to `pieces` as they come; stops early (with
    /// [`Finish::Cancelled`]) when `pieces` is closed or `cancel` fires.
    pub async fn generate(
        &self,
        request: &GenerateRequest,
        pieces: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<Generation, InferenceError> {
        match self {
            Backend::Candle(model) => {
                let (model, request) = (Arc::clone(model), request.clone());
                tokio::task::spawn_blocking(move || model.generate(&request, &pieces, &cancel))
                    .await
                    .map_err(|error| InferenceError::Failed(format!("engine task: {error}")))?
            }
            Backend::Upstream(upstream) => upstream.generate(request, pieces, cancel).await,
        }
    }
}
