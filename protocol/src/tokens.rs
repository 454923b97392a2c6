//! AI tokens: what a requester asks a model to generate, the per-request usage receipt both
//! parties sign, and the frames of the token-streaming protocol (`/suanli/tokens/1`).
//!
//! A **standing contract** is an ordinary [`Contract`](crate::negotiation::Contract) whose job
//! spec has executor [`ExecutorKind::Llm`](crate::advert::ExecutorKind::Llm) (see
//! [`session_spec`]): its `module_hash` is the model file's SHA-256, its `limits.fuel` the token
//! budget (prompt and completion tokens together) and its `limits.wall_time_ms` how long it
//! stands. It is negotiated, run, settled, resumed and reconciled exactly like a WebAssembly job
//! (RFC 005); its "run" is a session during which the requester streams requests to the
//! provider, one substream each:
//!
//! ```text
//! requester                                            provider
//!   Generate { contract, seq, request } ─────────────▶ checks seq, budget; decodes
//!   ◀──────────────────────────────────────────── Text … Text
//!   (Stop, if the client went away) ──────────────────▶ stops at the next token
//!   ◀──────────────────────── Done(Signed<UsageReceipt>)   (or Error before any text)
//!   check, countersign, append ─ Countersigned ──────────▶ check, append
//!   ◀──────────────────────────────────────────────────── Recorded
//! ```
//!
//! The session ends when the requester sends `Close`, when the budget is spent or the contract's
//! time is up; the provider's receipt for the contract then carries the totals of every
//! countersigned usage receipt and, as output, their digests in `seq` order, and the contract
//! settles once on those totals.

use serde::{Deserialize, Serialize};

use crate::advert::ExecutorKind;
use crate::hash::{self, Hash32};
use crate::identity::NodeId;
use crate::job::{JobSpec, Limits, Placement};
use crate::money::Credits;
use crate::negotiation::{ContractId, MAX_DOCUMENT_BYTES, MAX_MESSAGE_BYTES};
use crate::signed::{BoundsError, CoSigned, CoSignedDocument, Document, Signed};
use crate::wire::{WireError, WireMessage};

/// The libp2p protocol name of token streaming.
pub const TOKENS_PROTOCOL: &str = "/suanli/tokens/1";
/// Cap on one frame of `/suanli/tokens/1` (a request with its prompt is the largest).
pub const MAX_TOKENS_FRAME_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Cap on the text of one generation request (prompt or all messages together), bytes.
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
/// Most chat messages in one request.
pub const MAX_MESSAGES: usize = 1024;
/// Most stop sequences, and the longest one (bytes), as OpenAI's API allows.
pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;
/// Cap on a model name (bytes) and on the other labels of a model advert.
pub const MAX_MODEL_NAME_BYTES: usize = 64;
/// Most models one node advertises.
pub const MAX_MODELS: usize = 16;
/// Cap on a text frame: the provider sends generated text in pieces of at most this many bytes.
pub const MAX_TEXT_FRAME_BYTES: usize = 16 * 1024;

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `developer`, treated as `system`).
    pub role: String,
    pub content: String,
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Prompt {
    /// A chat, rendered with the model's chat template by the provider.
    Chat(Vec<ChatMessage>),
    /// Raw text, continued as it is.
    Text(String),
}

impl Prompt {
    /// Bytes of text the prompt holds (roles included).
    pub fn text_bytes(&self) -> usize {
        match self {
            Prompt::Chat(messages) => messages
                .iter()
                .map(|m| m.role.len().saturating_add(m.content.len()))
                .fold(0usize, usize::saturating_add),
            Prompt::Text(text) => text.len(),
        }
    }
}

/// Sampling parameters. `temperature` and `top_p` are in thousandths (so the request hashes the
/// same on every machine): `temperature = 0` is greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Sampling {
    pub temperature_milli: u32,
    pub top_p_milli: u32,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature_milli: 0,
        top_p_milli: 1000,
        seed: 0,
    };
}

/// One generation request, as the requester sends it and as its hash binds the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct GenerateRequest {
    /// The model's name as advertised.
    pub model: String,
    pub prompt: Prompt,
    /// The most completion tokens to generate.
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation stops before the first of these appears; it is not part of the output.
    pub stop: Vec<String>,
}

/// A generation request that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt holds {0} bytes, at most {MAX_PROMPT_BYTES}")]
    PromptTooLarge(usize),
    #[error("{0} messages, at most {MAX_MESSAGES}")]
    TooManyMessages(usize),
    #[error("unknown role {0:?} (system, developer, user or assistant)")]
    BadRole(String),
    #[error("max_tokens must be at least 1")]
    NoTokens,
    #[error("at most {MAX_STOP_SEQUENCES} stop sequences of 1 to {MAX_STOP_BYTES} bytes")]
    BadStop,
    #[error("temperature must be between 0 and 2, top_p between 0 (exclusive) and 1")]
    BadSampling,
    #[error("model name must be 1 to {MAX_MODEL_NAME_BYTES} bytes")]
    BadModelName,
}

impl GenerateRequest {
    /// Checks the request's bounds (not whether the model's context holds it).
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.model.is_empty() || self.model.len() > MAX_MODEL_NAME_BYTES {
            return Err(RequestError::BadModelName);
        }
        match &self.prompt {
            Prompt::Chat(messages) => {
                if messages.is_empty() {
                    return Err(RequestError::EmptyPrompt);
                }
                if messages.len() > MAX_MESSAGES {
                    return Err(RequestError::TooManyMessages(messages.len()));
                }
                if let Some(bad) = messages.iter().find(|m| {
                    !matches!(
                        m.role.as_str(),
                        "system" | "developer" | "user" | "assistant"
                    )
                }) {
                    return Err(RequestError::BadRole(bad.role.clone()));
                }
            }
            Prompt::Text(text) => {
                if text.is_empty() {
                    return Err(RequestError::EmptyPrompt);
                }
            }
        }
        let bytes = self.prompt.text_bytes();
        if bytes > MAX_PROMPT_BYTES {
            return Err(RequestError::PromptTooLarge(bytes));
        }
        if self.max_tokens == 0 {
            return Err(RequestError::NoTokens);
        }
        if self.stop.len() > MAX_STOP_SEQUENCES
            || self
                .stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(RequestError::BadStop);
        }
        let sampling = self.sampling;
        if sampling.temperature_milli > 2000
            || sampling.top_p_milli == 0
            || sampling.top_p_milli > 1000
        {
            return Err(RequestError::BadSampling);
        }
        Ok(())
    }

    /// `tagged("generate", canonical bytes)`: what a usage receipt binds.
    pub fn hash(&self) -> Result<Hash32, crate::codec::EncodeError> {
        Ok(hash::tagged("generate", &[&crate::codec::encode(self)?]))
    }
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Finish {
    /// The model ended its answer, or a stop sequence appeared.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The requester went away (its client disconnected); what was generated is billed.
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// The provider's account of one request under a standing contract, countersigned by the
/// requester after checking it. Both ledgers hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UsageReceipt {
    pub contract_id: ContractId,
    pub provider: NodeId,
    pub requester: NodeId,
    /// 1, 2, … per contract, chosen by the requester.
    pub seq: u32,
    /// [`GenerateRequest::hash`] of the request served.
    pub request_hash: Hash32,
    /// SHA-256 of the model file that generated (the contract's `module_hash`).
    pub model_sha256: Hash32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish: Finish,
    /// SHA-256 of the UTF-8 text delivered.
    pub output_hash: Hash32,
    /// This request's cost priced alone, [`PriceTerms::cost_of_tokens`]. The contract settles on
    /// the totals of all its receipts, which may round a few micro-credits lower.
    pub cost: Credits,
    pub finished_at_ms: u64,
}

impl Document for UsageReceipt {
    const KIND: &'static str = "usage";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.provider
    }
}

impl CoSignedDocument for UsageReceipt {
    fn countersigner(&self) -> NodeId {
        self.requester
    }
}

/// A requester's message on a `/suanli/tokens/1` substream.
#[allow(clippy::large_enum_variant)] // one per substream
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TokensRequest {
    /// Generate under standing contract `contract_id`, as its request number `seq`.
    Generate {
        contract_id: ContractId,
        seq: u32,
        request: GenerateRequest,
    },
    /// Stop generating this substream's request (the client went away): the provider ends it
    /// with [`Finish::Cancelled`] and its receipt bills what was generated.
    Stop,
    /// The usage receipt of this substream's request (or of an earlier one, sent again),
    /// countersigned and recorded.
    Countersigned(CoSigned<UsageReceipt>),
    /// End the contract's session once the provider holds `receipts` countersigned usage
    /// receipts of it (the requester sends the missing ones again first); the provider then
    /// delivers its receipt for the contract through the market protocol.
    Close {
        contract_id: ContractId,
        receipts: u32,
    },
    /// Ask for the signed receipt of request `seq` (its answer was lost).
    Receipt { contract_id: ContractId, seq: u32 },
}

impl WireMessage for TokensRequest {
    const MAX_BYTES: usize = MAX_TOKENS_FRAME_BYTES;
}

/// A provider's message on a `/suanli/tokens/1` substream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TokensResponse {
    /// Generated text, in order (whole UTF-8 characters, at most [`MAX_TEXT_FRAME_BYTES`]).
    Text(String),
    /// The request is done; its receipt, signed by the provider.
    Done(Signed<UsageReceipt>),
    /// The countersigned receipt (or the `Close`) is recorded.
    Recorded,
    /// The request was refused or failed; nothing is billed for it.
    Error(WireError),
}

impl WireMessage for TokensResponse {
    const MAX_BYTES: usize = MAX_TOKENS_FRAME_BYTES;
}

impl TokensResponse {
    /// Checks a text frame's size.
    pub fn check_bounds(&self) -> Result<(), BoundsError> {
        match self {
            TokensResponse::Text(text) => {
                BoundsError::check("text", text.len(), MAX_TEXT_FRAME_BYTES)
            }
            TokensResponse::Error(error) => {
                BoundsError::check("message", error.message.len(), MAX_MESSAGE_BYTES)
            }
            TokensResponse::Done(_) | TokensResponse::Recorded => Ok(()),
        }
    }
}

/// A model a node serves, as its advert carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ModelInfo {
    /// The name requests use (`smollm2-135m`).
    pub name: String,
    /// Architecture family (`llama`), or `upstream` for a proxied server.
    pub family: String,
    /// Context length in tokens this node accepts (prompt + completion).
    pub context: u32,
    /// Weights' quantisation (`Q8_0`), or empty when unknown.
    pub quantisation: String,
    /// SHA-256 of the model file (zero for an upstream server).
    pub sha256: Hash32,
    /// Measured decode speed of one stream, tokens per second.
    pub decode_tokens_per_s: u32,
    /// Prices (µcr per million tokens).
    pub per_million_prompt: Credits,
    pub per_million_completion: Credits,
}

impl ModelInfo {
    pub fn check_bounds(&self) -> Result<(), BoundsError> {
        BoundsError::check("model name", self.name.len(), MAX_MODEL_NAME_BYTES)?;
        BoundsError::check("model family", self.family.len(), MAX_MODEL_NAME_BYTES)?;
        BoundsError::check(
            "model quantisation",
            self.quantisation.len(),
            MAX_MODEL_NAME_BYTES,
        )
    }
}

/// The hash a standing contract for model `name` binds (its `module_hash`): the model file's
/// sha256, or, for a model served from an upstream server (which has no file here, `sha256` =
/// zero), `tagged("upstream-model", name)`.
pub fn model_hash(name: &str, sha256: Hash32) -> Hash32 {
    if sha256 == Hash32::ZERO {
        hash::tagged("upstream-model", &[name.as_bytes()])
    } else {
        sha256
    }
}

/// The job spec of a standing contract for `model` with `budget_tokens` tokens over `secs`
/// seconds, paying at most `max_price`.
pub fn session_spec(
    model: &ModelInfo,
    budget_tokens: u64,
    secs: u64,
    max_price: Credits,
    placement: Placement,
) -> JobSpec {
    JobSpec {
        executor: ExecutorKind::Llm,
        module_hash: model_hash(&model.name, model.sha256),
        args: vec![model.name.clone()],
        env: Default::default(),
        stdin_hash: Hash32::of(b""),
        limits: Limits {
            fuel: budget_tokens,
            memory_bytes: 1,
            wall_time_ms: secs.saturating_mul(1000),
            output_bytes: session_output_bytes(budget_tokens),
            tasks: 1,
        },
        max_price,
        placement,
        replicas: 1,
    }
}

/// A session's output is the digests of its usage receipts (32 bytes each, at most one per
/// token of budget, capped by the job output cap).
pub fn session_output_bytes(budget_tokens: u64) -> u64 {
    budget_tokens
        .saturating_mul(32)
        .clamp(32, crate::job::MAX_OUTPUT_BYTES)
}

/// The output of a session: its usage receipts' digests, concatenated in `seq` order.
pub fn session_output(receipts: &[CoSigned<UsageReceipt>]) -> Vec<u8> {
    receipts.iter().flat_map(|r| r.digest().0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::money::PriceTerms;
    use crate::negotiation::Usage;
    use proptest::prelude::*;

    fn request() -> GenerateRequest {
        GenerateRequest {
            model: "smollm2".into(),
            prompt: Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "What is 2+2?".into(),
            }]),
            max_tokens: 16,
            sampling: Sampling::GREEDY,
            stop: vec!["\n\n".into()],
        }
    }

    fn receipt() -> UsageReceipt {
        UsageReceipt {
            contract_id: fixtures::contract_id(),
            provider: fixtures::provider().node_id(),
            requester: fixtures::requester().node_id(),
            seq: 1,
            request_hash: request().hash().unwrap(),
            model_sha256: Hash32::of(b"model"),
            prompt_tokens: 37,
            completion_tokens: 11,
            finish: Finish::Stop,
            output_hash: Hash32::of(b"The answer is 4."),
            cost: Credits(6),
            finished_at_ms: 1_795_866_911_330,
        }
    }

    #[test]
    fn requests_are_checked() {
        assert_eq!(request().validate(), Ok(()));
        type Breaking = (fn(&mut GenerateRequest), RequestError);
        let broken: [Breaking; 8] = [
            (|r| r.model.clear(), RequestError::BadModelName),
            (
                |r| r.prompt = Prompt::Chat(Vec::new()),
                RequestError::EmptyPrompt,
            ),
            (
                |r| r.prompt = Prompt::Text(String::new()),
                RequestError::EmptyPrompt,
            ),
            (|r| r.max_tokens = 0, RequestError::NoTokens),
            (|r| r.stop = vec!["a".into(); 5], RequestError::BadStop),
            (|r| r.stop = vec![String::new()], RequestError::BadStop),
            (
                |r| r.sampling.temperature_milli = 2001,
                RequestError::BadSampling,
            ),
            (|r| r.sampling.top_p_milli = 0, RequestError::BadSampling),
        ];
        for (breaking, error) in broken {
            let mut request = request();
            breaking(&mut request);
            assert_eq!(request.validate(), Err(error));
        }
        let mut request = request();
        request.prompt = Prompt::Chat(vec![ChatMessage {
            role: "tool".into(),
            content: "x".into(),
        }]);
        assert_eq!(
            request.validate(),
            Err(RequestError::BadRole("tool".into()))
        );
        request.prompt = Prompt::Text("x".repeat(MAX_PROMPT_BYTES + 1));
        assert_eq!(
            request.validate(),
            Err(RequestError::PromptTooLarge(MAX_PROMPT_BYTES + 1))
        );
    }

    #[test]
    fn the_request_hash_binds_every_field() {
        let base = request().hash().unwrap();
        assert_eq!(request().hash().unwrap(), base, "deterministic");
        let mut other = request();
        other.sampling.seed = 1;
        assert_ne!(other.hash().unwrap(), base);
        let mut other = request();
        other.max_tokens = 17;
        assert_ne!(other.hash().unwrap(), base);
    }

    #[test]
    fn usage_receipts_need_both_signatures() {
        let signed = Signed::sign(&receipt(), &fixtures::provider()).unwrap();
        // Only the requester can countersign it, and only the provider can sign it.
        assert!(CoSigned::countersign(signed.clone(), &fixtures::stranger()).is_err());
        assert!(Signed::sign(&receipt(), &fixtures::requester()).is_err());
        let (cosigned, decoded) = CoSigned::countersign(signed, &fixtures::requester()).unwrap();
        assert_eq!(decoded, receipt());
        assert_eq!(cosigned.verify(), Ok(receipt()));
        let output = session_output(&[cosigned.clone(), cosigned.clone()]);
        assert_eq!(output.len(), 64);
        assert_eq!(
            output.get(..32),
            Some(cosigned.digest().as_bytes().as_slice())
        );
    }

    #[test]
    fn token_prices() {
        let terms = PriceTerms {
            base: Credits::ZERO,
            per_million_fuel: Credits::ZERO,
            per_million_prompt: Credits(100_000),
            per_million_completion: Credits(200_000),
            per_cpu_second: Credits::ZERO,
        };
        // 37 × 0.1 + 11 × 0.2 = 5.9 µcr, rounded up.
        assert_eq!(terms.cost_of_tokens(37, 11), Ok(Credits(6)));
        let usage = Usage {
            fuel: 48,
            prompt_tokens: 37,
            completion_tokens: 11,
            ..Usage::default()
        };
        assert_eq!(terms.cost(&usage), Ok(Credits(6)));
        // The budget at the dearer rate bounds every split of it.
        let spec = session_spec(
            &ModelInfo {
                name: "m".into(),
                family: "llama".into(),
                context: 4096,
                quantisation: "Q8_0".into(),
                sha256: Hash32::of(b"model"),
                decode_tokens_per_s: 30,
                per_million_prompt: terms.per_million_prompt,
                per_million_completion: terms.per_million_completion,
            },
            1_000_000,
            600,
            Credits(200_000),
            Default::default(),
        );
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(terms.max_cost(&spec.limits), Ok(Credits(200_000)));
        assert_eq!(spec.limits.output_bytes, crate::job::MAX_OUTPUT_BYTES);
        let dear = PriceTerms {
            per_million_completion: Credits(u64::MAX),
            ..terms
        };
        assert_eq!(
            dear.cost_of_tokens(u64::MAX, u64::MAX),
            Err(crate::money::Overflow)
        );
    }

    fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(message: &T) {
        let bytes = message.to_bytes().unwrap();
        assert_eq!(&T::from_bytes(&bytes).unwrap(), message);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn token_frames_round_trip(request in any::<TokensRequest>(), response in any::<TokensResponse>()) {
            round_trip(&request);
            round_trip(&response);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = TokensRequest::from_bytes(&bytes);
            let _ = TokensResponse::from_bytes(&bytes);
        }
    }
}
