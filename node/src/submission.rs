//! A job as a developer submits it: the `POST /v1/jobs` body ([`SubmitRequest`]), its checked
//! form ([`Submission`], what the market admits) and the conversion between them
//! ([`Submission::from_request`]), with the defaults of the limits a body leaves out.
//!
//! Pure: serde shapes and checks, no I/O, no node state. It names nothing of the node's other
//! modules (only `serde`, `base64`, `thiserror` and the protocol crate), so the fuzz target
//! `http_job` compiles this very file alone, without the node's heavy dependencies
//! (fuzz/fuzz_targets/http_job.rs). It must never grow a `crate::` path.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use suanli_protocol::hash::Hash32;
use suanli_protocol::job::{MAX_MODULE_BYTES, MAX_STDIN_BYTES};
use suanli_protocol::{Credits, ExecutorKind, JobSpec, Limits, NodeId, Placement};

/// Defaults for limits a submission leaves out.
pub const DEFAULT_FUEL: u64 = 1_000_000_000;
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// Default most a job pays, micro-credits (100 credits).
pub const DEFAULT_MAX_PRICE: u64 = 100_000_000;

/// A sandbox a node runs jobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorName {
    Wasm,
    Llm,
    Slurm,
    Batch,
    /// An executor this client does not know (a newer node).
    #[serde(other)]
    Unknown,
}

impl From<ExecutorKind> for ExecutorName {
    fn from(kind: ExecutorKind) -> Self {
        match kind {
            ExecutorKind::Wasm => ExecutorName::Wasm,
            ExecutorKind::Llm => ExecutorName::Llm,
            ExecutorKind::Slurm => ExecutorName::Slurm,
            ExecutorKind::Batch => ExecutorName::Batch,
        }
    }
}

/// `POST /v1/jobs`: a job. Exactly one of `module_base64` and `module_wat`; everything else is
/// optional (the defaults are in docs/api.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_wat: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    /// Micro-credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_price: Option<u64>,
    #[serde(default)]
    pub placement: PlacementRequest,
    /// `wasm` (the default), `slurm` (on a provider's cluster, through its scheduler, in the
    /// same sandbox) or `batch` (the module is a batch script, run on a provider's cluster as
    /// it is, by providers that list this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorName>,
    /// Run it on this many distinct providers (default 1); with more than one, a strict
    /// majority of their results decides (executor `wasm` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Tasks, each with its index (executor `slurm`: one job array); default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Run only on this node (a node id; checked by the handler, which names the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Never run on the node the job was submitted to.
    #[serde(default)]
    pub remote_only: bool,
    /// Run only on nodes advertising this region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A job as a developer submits it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// `Wasm`, or `Slurm` (on a provider's cluster).
    pub executor: ExecutorKind,
    pub module: Vec<u8>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    pub limits: Limits,
    pub max_price: Credits,
    pub placement: Placement,
    /// The API token the job is attributed to (none: the operator). Set by the handler, never
    /// by the body.
    pub api_token: Option<String>,
    /// How many distinct providers run it (1: an ordinary job). More than one makes a
    /// replicated job, decided by a strict majority of the runs' results (WebAssembly only).
    pub replicas: u8,
}

/// Why a submitted body is not a job; the API answers 400 or 413.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
}

impl Submission {
    /// Checks a submitted body and fills in the defaults: exactly one module field, base64
    /// that decodes, module and stdin within their caps, a provider that is a node id, an
    /// executor that runs a submitted module.
    pub fn from_request(request: SubmitRequest) -> Result<Submission, SubmissionError> {
        let module = match (request.module_base64, request.module_wat) {
            (Some(encoded), None) => BASE64
                .decode(encoded)
                .map_err(|error| SubmissionError::Invalid(format!("module_base64: {error}")))?,
            (None, Some(text)) => text.into_bytes(),
            _ => {
                return Err(SubmissionError::Invalid(
                    "give exactly one of module_base64 and module_wat".into(),
                ));
            }
        };
        if module.len() > MAX_MODULE_BYTES {
            return Err(SubmissionError::TooLarge(format!(
                "module of {} bytes exceeds {MAX_MODULE_BYTES} bytes",
                module.len(),
            )));
        }
        let stdin = match request.stdin_base64 {
            Some(encoded) => BASE64
                .decode(encoded)
                .map_err(|error| SubmissionError::Invalid(format!("stdin_base64: {error}")))?,
            None => Vec::new(),
        };
        if stdin.len() > MAX_STDIN_BYTES {
            return Err(SubmissionError::TooLarge(format!(
                "stdin of {} bytes exceeds {MAX_STDIN_BYTES} bytes",
                stdin.len(),
            )));
        }
        let provider = request
            .placement
            .provider
            .map(|text| {
                text.parse::<NodeId>().map_err(|error| {
                    SubmissionError::Invalid(format!("placement.provider: {error}"))
                })
            })
            .transpose()?;
        let limits = Limits {
            fuel: request.limits.fuel.unwrap_or(DEFAULT_FUEL),
            memory_bytes: request.limits.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES),
            wall_time_ms: request.limits.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            output_bytes: request
                .limits
                .max_output_bytes
                .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
            tasks: request.limits.tasks.unwrap_or(1),
        };
        let executor = match request.executor {
            None | Some(ExecutorName::Wasm) => ExecutorKind::Wasm,
            Some(ExecutorName::Slurm) => ExecutorKind::Slurm,
            Some(ExecutorName::Batch) => ExecutorKind::Batch,
            Some(other) => {
                return Err(SubmissionError::Invalid(format!(
                    "executor: {other:?} runs no submitted module (wasm, slurm or batch)"
                )));
            }
        };
        Ok(Submission {
            executor,
            module,
            args: request.args,
            env: request.env,
            stdin,
            limits,
            max_price: Credits(request.max_price.unwrap_or(DEFAULT_MAX_PRICE)),
            placement: Placement {
                region: request.placement.region,
                provider,
                exclude_self: request.placement.remote_only,
            },
            api_token: None,
            replicas: request.replicas.unwrap_or(1),
        })
    }

    /// The job spec of this submission, one replica: what the market validates
    /// ([`JobSpec::validate`]), stores and quotes.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            executor: self.executor,
            module_hash: Hash32::of(&self.module),
            args: self.args.clone(),
            env: self.env.clone(),
            stdin_hash: Hash32::of(&self.stdin),
            limits: self.limits,
            max_price: self.max_price,
            placement: self.placement.clone(),
            replicas: 1,
        }
    }
}
