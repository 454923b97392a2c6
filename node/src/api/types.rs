//! The HTTP API's request and answer types: one Rust type per JSON shape, serialized by the axum
//! handlers and deserialized by every client (the `suanli` CLI, tests, anyone linking
//! `suanli-node`), so the two sides cannot drift apart.
//!
//! | route | request | answer |
//! |---|---|---|
//! | `GET /healthz` | | [`HealthView`] |
//! | `GET /v1/node` | | [`NodeView`] |
//! | `GET /v1/peers` | | `Vec<`[`PeerInfo`]`>` |
//! | `GET /v1/mesh` | | `Vec<`[`MeshNodeView`]`>` |
//! | `POST /v1/jobs` | [`SubmitRequest`] | `202` [`SubmitResponse`] |
//! | `GET /v1/jobs` | [`JobListQuery`] | [`JobPage`] |
//! | `GET /v1/jobs/{id}` | [`JobQuery`] | [`JobView`] |
//! | `GET /v1/jobs/{id}/output` | | raw bytes |
//! | `GET /v1/jobs/{id}/events` | | SSE: `snapshot`/`end` [`JobView`], else [`JobEventView`] |
//! | `GET /v1/evidence` | [`EvidenceQuery`] | [`EvidencePage`] |
//! | `GET /v1/ledger` | [`LedgerQuery`] | [`EntriesPage`], or [`RawEntriesPage`] with `fields=raw` |
//! | `GET /v1/ledger/verify` | | [`VerifyReport`] |
//! | `GET /v1/ledger/entry/{index}` | [`EntryQuery`] | [`EntryView`], or raw bytes with `raw=1` |
//! | `GET /v1/ledger/proof/inclusion` | [`InclusionQuery`] | [`InclusionProof`] |
//! | `GET /v1/ledger/proof/consistency` | [`ConsistencyQuery`] | [`ConsistencyProof`] |
//! | `GET /v1/ledger/checkpoint` | | a C2SP signed note (text) |
//! | `GET /v1/ledger/witnessed` | | `Vec<`[`Witnessed`]`>` |
//! | `GET /v1/ledger/equivocations` | | `Vec<`[`EquivocationRecord`]`>` |
//! | `GET /v1/ledger/audit` | [`AuditQuery`] | [`AuditReport`] |
//! | `GET /v1/balances` | | `Vec<`[`Balance`]`>` |
//! | `GET /v1/tokens` | | `Vec<`[`TokenView`]`>` |
//! | `GET /v1/sessions` | | `Vec<`[`SessionView`]`>` |
//! | `GET /metrics` | | OpenMetrics text |
//! | every error | | [`ErrorBody`] |
//!
//! `GET /v1/openapi.json` describes the same routes with the JSON Schemas of these types
//! ([`super::openapi`]).
//!
//! A view is separate from what the node stores: [`JobView`] is built from the market's
//! [`JobRecord`], so the stored record can change without changing the API (the conversion is
//! where a change must be decided). Ids and hashes are typed and travel as their text form.
//! Where a module's own struct already is the answer's shape (the ledger's [`VerifyReport`], the
//! transparency reports, the network's [`PeerInfo`], protocol proofs), it is re-exported here
//! rather than copied: one type per shape.
//!
//! Enums only the API defines end in an `Unknown` variant (serde `other`), so an older client
//! still reads the answers of a newer node.
//!
//! This module holds data and pure conversions only: it never reads node state or does I/O.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use suanli_protocol::{ClusterInfo, ContractId, Gpu, Hash32, JobId, NodeId, PriceTerms, Resources};

pub use crate::ledger::{Balance, VerifyFailure, VerifyReport};
pub use crate::market::events::{JobEvent, Quote};
use crate::market::{
    Attempt, EvidenceKind, JobError, JobLimits, JobRecord, JobUsage, MismatchRecord,
};
pub use crate::market::{AttemptOutcome, AttemptReason, JobErrorCode, JobState, MarketStats};
pub use crate::network::{GossipStats, PeerInfo};
pub use crate::tokens::{SessionSide, SessionView};
pub use crate::transparency::{
    AuditReport, AuditVerdict, AuditedCheckpoint, ChainProblem, Discrepancy, DiscrepancyIssue,
    DocumentKind, EquivocationRecord, Observation, Witnessed,
};
pub use suanli_protocol::checkpoint::Equivocation;
pub use suanli_protocol::merkle::{ConsistencyProof, InclusionProof};

// ---------------------------------------------------------------------------------------------
// Errors

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    pub code: ApiErrorCode,
    /// For people; clients branch on `code`.
    pub message: String,
}

/// What went wrong, machine-readable; each code has one HTTP status (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 404: no such route or object.
    NotFound,
    /// 400: the request is malformed.
    BadRequest,
    /// 400: the module does not compile.
    InvalidModule,
    /// 400: the module is beyond a complexity cap of the protocol.
    ModuleTooComplex,
    /// 413: the body, module or stdin is too large.
    TooLarge,
    /// 409: the request conflicts with the object's state (the job has ended).
    Conflict,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 500: the node failed to read or write its storage.
    Internal,
    /// 502: a peer the request needed did not answer, or answered out of protocol.
    PeerFailed,
    /// 503: too much work in flight; try again later.
    Busy,
    /// 503: the node is shutting down.
    Unavailable,
    /// 503: a durability barrier failed; no new work until the node is restarted.
    StorageFailed,
    /// 507: the disk is (nearly) full; no new work until space is freed.
    InsufficientStorage,
    /// 401: the route needs an API token (`Authorization: Bearer`), or the token given is
    /// unknown, revoked or expired.
    Unauthorized,
    /// 403: the `Host` header names a host this node does not serve (`api.hosts`).
    ForbiddenHost,
    /// 408: the request's body did not arrive in time (`api.body_timeout_secs`).
    RequestTimeout,
    /// 414: the request's target is longer than the node reads.
    UriTooLong,
    /// 431: the request's headers are larger than the node reads.
    HeadersTooLarge,
    /// 429: the token's request rate is used up; `Retry-After` says when to try again.
    RateLimited,
    /// 429: the token's credit quota is spent or reserved by its unfinished work.
    QuotaExhausted,
    /// A code this client does not know (a newer node).
    #[serde(other)]
    Unknown,
}

// ---------------------------------------------------------------------------------------------
// API tokens

/// `GET /v1/tokens`: one API token (never its text) and what it has spent. The operator sees
/// every token, a token only itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub state: TokenState,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    /// Micro-credits.
    pub quota: Option<u64>,
    /// Requests per second.
    pub rate_per_sec: Option<f64>,
    pub revoked_ms: Option<u64>,
    /// Jobs submitted with it.
    pub jobs: u64,
    /// Micro-credits its ended jobs cost.
    pub jobs_spent: u64,
    /// Micro-credits its unended jobs can still cost.
    pub reserved: u64,
    /// Micro-credits its model requests cost.
    pub model_spent: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
    #[serde(other)]
    Unknown,
}

impl TokenState {
    /// The state of `record` at `now_ms`.
    pub fn of(record: &crate::auth::TokenRecord, now_ms: u64) -> TokenState {
        if record.revoked_ms.is_some() {
            TokenState::Revoked
        } else if record.refusal(now_ms).is_some() {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }
}

impl TokenView {
    pub fn new(
        record: &crate::auth::TokenRecord,
        spend: crate::auth::SpendView,
        now_ms: u64,
    ) -> TokenView {
        TokenView {
            id: record.id.clone(),
            name: record.name.clone(),
            state: TokenState::of(record, now_ms),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            quota: record.quota_micro,
            rate_per_sec: record.rate_per_sec,
            revoked_ms: record.revoked_ms,
            jobs: spend.jobs,
            jobs_spent: spend.jobs_spent,
            reserved: spend.reserved,
            model_spent: spend.model_spent,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The node and the mesh

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthView {
    pub status: HealthStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The node runs and serves its API.
    Ok,
}

/// `GET /v1/node`: this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub node_id: NodeId,
    pub version: String,
    /// Multiaddrs.
    pub listen_addrs: Vec<String>,
    pub region: String,
    pub capacity: ResourcesView,
    pub executors: Vec<ExecutorName>,
    pub prices: PricesView,
    pub uptime_ms: u64,
    /// Received adverts by verdict.
    pub gossip: GossipStats,
    pub storage: StorageView,
    /// Jobs in flight, contracts being driven, notifications to counterparties pending.
    pub market: MarketStats,
}

/// An amount of compute resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResourcesView {
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<GpuView>,
}

impl From<&Resources> for ResourcesView {
    fn from(resources: &Resources) -> Self {
        ResourcesView {
            cpu_cores: resources.cpu_cores,
            memory_bytes: resources.memory_bytes,
            gpus: resources.gpus.iter().map(GpuView::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GpuView {
    pub model: String,
    pub memory_bytes: u64,
    pub count: u32,
}

impl From<&Gpu> for GpuView {
    fn from(gpu: &Gpu) -> Self {
        GpuView {
            model: gpu.model.clone(),
            memory_bytes: gpu.memory_bytes,
            count: gpu.count,
        }
    }
}

/// A node's prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PricesView {
    /// Micro-credits per job.
    pub base: u64,
    /// Micro-credits per million fuel.
    pub per_million_fuel: u64,
    /// Micro-credits per CPU-second of a cluster's accounting (executor `slurm`).
    #[serde(default)]
    pub per_cpu_second: u64,
}

impl From<PriceTerms> for PricesView {
    fn from(prices: PriceTerms) -> Self {
        PricesView {
            base: prices.base.micro(),
            per_million_fuel: prices.per_million_fuel.micro(),
            per_cpu_second: prices.per_cpu_second.micro(),
        }
    }
}

pub use crate::submission::ExecutorName;

/// The node's database: whether it takes new work, and its free space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StorageView {
    pub state: StorageState,
    /// New work (jobs, contracts) is taken: `state` is `healthy`.
    pub accepting: bool,
    /// Free bytes on the database's filesystem now, when they can be measured.
    pub available_bytes: Option<u64>,
    /// The reserve kept free (`storage.min_free_bytes`).
    pub min_free_bytes: u64,
    /// Free bytes needed to accept work again after the disk was full.
    pub resume_free_bytes: u64,
    /// Why the storage failed (`state` = `failed`).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageState {
    Healthy,
    /// Free space fell below the reserve: no new work until it is back above the resume mark.
    DiskFull,
    /// A durability barrier failed: no new work until the node is restarted.
    Failed,
    /// A state this client does not know (a newer node).
    #[serde(other)]
    Unknown,
}

/// One node of `GET /v1/mesh`: its newest valid advert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MeshNodeView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub node_id: NodeId,
    /// Milliseconds since the advert was issued (by the sender's clock).
    pub age_ms: u64,
    /// Milliseconds until the advert expires.
    pub expires_in_ms: u64,
    pub seq: u64,
    pub region: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<GpuView>,
    pub free: ResourcesView,
    pub executors: Vec<ExecutorName>,
    pub prices: PricesView,
    /// Share of capacity in use, 0.0–1.0.
    pub load: f64,
    pub listen_addrs: Vec<String>,
    pub version: String,
    /// The models the node serves (absent from older nodes' views).
    #[serde(default)]
    pub models: Vec<ModelView>,
    /// The cluster the node fronts (executor `slurm`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
}

/// A cluster behind a node, as its scheduler last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterView {
    /// E.g. `slurm 22.05.8`.
    pub scheduler: String,
    pub nodes: u32,
    pub total: ResourcesView,
    pub free: ResourcesView,
    /// The most one mesh job holds at once.
    pub mesh_limit: ResourcesView,
    pub partitions: Vec<String>,
    pub pending_jobs: u32,
    pub running_jobs: u32,
}

impl From<&ClusterInfo> for ClusterView {
    fn from(info: &ClusterInfo) -> Self {
        ClusterView {
            scheduler: info.scheduler.clone(),
            nodes: info.nodes,
            total: ResourcesView::from(&info.total),
            free: ResourcesView::from(&info.free),
            mesh_limit: ResourcesView::from(&info.mesh_limit),
            partitions: info.partitions.clone(),
            pending_jobs: info.pending_jobs,
            running_jobs: info.running_jobs,
        }
    }
}

/// A model as a node advertises it (`GET /v1/mesh`, and the `suanli` object of `GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelView {
    pub name: String,
    pub family: String,
    /// Tokens of prompt and completion one request may use.
    pub context: u32,
    pub quantisation: String,
    /// SHA-256 of the model file (an upstream server's models have none: `null`).
    pub sha256: Option<String>,
    /// Measured decode speed of one stream.
    pub decode_tokens_per_s: u32,
    /// Micro-credits per million prompt tokens.
    pub price_per_million_prompt: u64,
    /// Micro-credits per million completion tokens.
    pub price_per_million_completion: u64,
}

impl From<&suanli_protocol::tokens::ModelInfo> for ModelView {
    fn from(info: &suanli_protocol::tokens::ModelInfo) -> Self {
        ModelView {
            name: info.name.clone(),
            family: info.family.clone(),
            context: info.context,
            quantisation: info.quantisation.clone(),
            sha256: (info.sha256 != Hash32::ZERO).then(|| info.sha256.to_hex()),
            decode_tokens_per_s: info.decode_tokens_per_s,
            price_per_million_prompt: info.per_million_prompt.micro(),
            price_per_million_completion: info.per_million_completion.micro(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs

pub use crate::submission::{LimitsRequest, PlacementRequest, SubmitRequest};

/// The `202` answer to `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitResponse {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub job_id: JobId,
}

/// `GET /v1/jobs/{id}?wait_ms=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobQuery {
    /// Long-poll: answer as soon as the job is final, or after this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `GET /v1/jobs?after=&limit=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobListQuery {
    /// A job id: list the jobs submitted after it (a page's `next`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/jobs`: one page of jobs, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// The `after` of the following page; `null` on the last one.
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub next: Option<JobId>,
}

/// One step of a job in `GET /v1/jobs/{id}/events`: the job it concerns (the job itself, or one
/// run of a replicated job) and what happened (`event` names it, as the SSE event does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobEventView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub job_id: JobId,
    #[serde(flatten)]
    pub event: JobEvent,
}

/// `GET /v1/jobs/{id}`: everything the node knows about one job it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub job_id: JobId,
    pub state: JobState,
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub module_hash: Hash32,
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub stdin_hash: Hash32,
    /// SHA-256 of the job spec's canonical bytes.
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub spec_hash: Option<Hash32>,
    /// The submitter's nonce, part of the job id (decimal text: it is 128 bits).
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub nonce: Option<u128>,
    pub args: Vec<String>,
    pub limits: LimitsView,
    /// Micro-credits.
    pub max_price: u64,
    /// The provider of the job's contract, once it has one.
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub provider: Option<NodeId>,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub contract_id: Option<ContractId>,
    pub exit_code: Option<i32>,
    pub usage: Option<UsageView>,
    /// Micro-credits paid.
    pub cost: Option<u64>,
    /// SHA-256 of the output (`GET /v1/jobs/{id}/output`).
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub output_hash: Option<Hash32>,
    pub error: Option<JobErrorView>,
    /// Every try at placing the job, oldest first (the newest 64 are kept).
    pub attempts: Vec<AttemptView>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The id of the API token that submitted it (none: the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// A replicated job: its runs and the evidence its verdict recorded (absent for an
    /// ordinary job). Its state, output and error above are the group's verdict; its cost is
    /// every run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasView>,
    /// The replicated job this job is one run of, or the spot check that checks it.
    #[serde(
        with = "crate::serde_text::display_option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub group: Option<JobId>,
}

/// The runs of a replicated job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplicasView {
    /// Replicas asked for (for a spot check: the runs it has needed so far).
    pub count: usize,
    /// A spot check of an ordinary job (its first run), paid by this node, not a job of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot_check: bool,
    /// One per replica, in the order they were created.
    pub runs: Vec<ReplicaView>,
    /// The providers whose signed result differed from the majority's.
    #[serde(with = "crate::serde_text::display_vec")]
    #[schemars(with = "Vec<String>")]
    pub odd: Vec<NodeId>,
    /// The evidence stored against them.
    pub evidence: Vec<EvidenceView>,
}

/// One run of a replicated job (itself a job: `GET /v1/jobs/{job_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplicaView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub job_id: JobId,
    pub state: JobState,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub provider: Option<NodeId>,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub contract_id: Option<ContractId>,
    pub exit_code: Option<i32>,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub output_hash: Option<Hash32>,
    pub error: Option<JobErrorView>,
}

impl From<&JobRecord> for ReplicaView {
    fn from(record: &JobRecord) -> Self {
        ReplicaView {
            job_id: record.job_id,
            state: record.state,
            provider: record.provider,
            contract_id: record.contract_id,
            exit_code: record.exit_code,
            output_hash: record.output_hash,
            error: record.error.as_ref().map(JobErrorView::from),
        }
    }
}

/// Evidence that a provider of a replicated job or token request signed a result other than
/// the majority's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EvidenceView {
    /// The replicated job, or the id of the replicated token request.
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub group: JobId,
    /// `job` (the evidence is a `ReplicaMismatch`) or `tokens` (a `TokenMismatch`).
    pub kind: EvidenceKind,
    /// The provider whose result differed.
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub provider: NodeId,
    /// Its contract.
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub contract_id: ContractId,
    pub at_ms: u64,
    /// The providers of the majority, as the evidence names them (empty if it does not verify).
    #[serde(with = "crate::serde_text::display_vec")]
    #[schemars(with = "Vec<String>")]
    pub majority: Vec<NodeId>,
    /// Whether the evidence verified when this answer was made
    /// (`suanli_protocol::replicas::ReplicaMismatch::verify` or `TokenMismatch::verify`).
    pub verified: bool,
    /// The evidence, encoded (hex): every document in it exactly as signed, for anyone to
    /// verify again.
    pub evidence: String,
}

impl From<&MismatchRecord> for EvidenceView {
    fn from(record: &MismatchRecord) -> Self {
        let majority = record.verified_majority();
        EvidenceView {
            group: record.group,
            kind: record.kind,
            provider: record.provider,
            contract_id: record.contract_id,
            at_ms: record.at_ms,
            verified: majority.is_some(),
            majority: majority.unwrap_or_default(),
            evidence: hex::encode(&record.evidence),
        }
    }
}

/// `GET /v1/evidence?after=&limit=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EvidenceQuery {
    /// A page's `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/evidence`: one page of the evidence this node stored, by replicated job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EvidencePage {
    pub evidence: Vec<EvidenceView>,
    /// The `after` of the following page; `null` on the last one.
    pub next: Option<String>,
}

impl From<&JobRecord> for JobView {
    fn from(record: &JobRecord) -> Self {
        JobView {
            job_id: record.job_id,
            state: record.state,
            module_hash: record.module_hash,
            stdin_hash: record.stdin_hash,
            spec_hash: record.spec_hash,
            nonce: record.nonce,
            args: record.args.clone(),
            limits: LimitsView::from(record.limits),
            max_price: record.max_price,
            provider: record.provider,
            contract_id: record.contract_id,
            exit_code: record.exit_code,
            usage: record.usage.map(UsageView::from),
            cost: record.cost,
            output_hash: record.output_hash,
            error: record.error.as_ref().map(JobErrorView::from),
            attempts: record.attempts.iter().map(AttemptView::from).collect(),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            api_token: record.api_token.clone(),
            // The runs and evidence are other records: the handler adds them.
            replicas: record.replicas.as_ref().map(|group| ReplicasView {
                count: group.children.len(),
                spot_check: group.spot_check,
                runs: Vec::new(),
                odd: group.odd.clone(),
                evidence: Vec::new(),
            }),
            group: record.group,
        }
    }
}

impl From<JobRecord> for JobView {
    fn from(record: JobRecord) -> Self {
        JobView::from(&record)
    }
}

/// A job's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LimitsView {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    #[serde(default = "one")]
    pub tasks: u32,
}

fn one() -> u32 {
    1
}

impl From<JobLimits> for LimitsView {
    fn from(limits: JobLimits) -> Self {
        LimitsView {
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes,
            timeout_ms: limits.timeout_ms,
            max_output_bytes: limits.max_output_bytes,
            tasks: limits.tasks,
        }
    }
}

/// What a run used, as its provider's signed receipt metered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageView {
    pub fuel: u64,
    pub wall_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
    /// Tokens of a standing contract (0 for a WebAssembly job).
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// What the provider's cluster accounted, for a job run there (executor `slurm`): the
    /// Slurm job id, elapsed time, CPUs allocated, CPU time used and peak memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<suanli_protocol::negotiation::ClusterUsage>,
}

impl From<JobUsage> for UsageView {
    fn from(usage: JobUsage) -> Self {
        UsageView {
            fuel: usage.fuel,
            wall_ms: usage.wall_ms,
            memory_bytes: usage.memory_bytes,
            output_bytes: usage.output_bytes,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cluster: usage.cluster,
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobErrorView {
    pub code: JobErrorCode,
    pub message: String,
}

impl From<&JobError> for JobErrorView {
    fn from(error: &JobError) -> Self {
        JobErrorView {
            code: error.code,
            message: error.message.clone(),
        }
    }
}

/// One try at placing a job with one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub provider: NodeId,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub contract_id: Option<ContractId>,
    pub outcome: AttemptOutcome,
    /// The provider's decline code, or how the run ended.
    pub reason: Option<AttemptReason>,
    pub message: String,
    pub at_ms: u64,
}

impl From<&Attempt> for AttemptView {
    fn from(attempt: &Attempt) -> Self {
        AttemptView {
            provider: attempt.provider,
            contract_id: attempt.contract_id,
            outcome: attempt.outcome,
            reason: attempt.reason,
            message: attempt.message.clone(),
            at_ms: attempt.at_ms,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// `GET /v1/ledger?from=&limit=&fields=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LedgerQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<EntryFields>,
}

/// What `GET /v1/ledger` shows of each entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryFields {
    /// Every field: [`EntryView`].
    #[default]
    All,
    /// Only `index` and `raw_base64` ([`RawEntry`]): what exports and verifiers need, without
    /// the node decoding the documents.
    Raw,
}

/// `GET /v1/ledger`: a range of entries, and the ledger's durable size and head now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "LedgerPageOf{E}")]
pub struct LedgerPage<E> {
    pub size: u64,
    /// The hash of the last durable entry (64 zeros for an empty ledger).
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub head: Hash32,
    pub entries: Vec<E>,
}

/// `GET /v1/ledger` (`fields=all`).
pub type EntriesPage = LedgerPage<EntryView>;
/// `GET /v1/ledger?fields=raw`.
pub type RawEntriesPage = LedgerPage<RawEntry>;

/// One entry of `GET /v1/ledger?fields=raw`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RawEntry {
    pub index: u64,
    /// The exact stored bytes, standard base64.
    pub raw_base64: String,
}

/// One ledger entry: the facts a reader wants, plus the exact stored bytes. Documents are
/// decoded without re-verifying them (that is `GET /v1/ledger/verify`); fields a kind of entry
/// does not have are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EntryView {
    pub index: u64,
    pub timestamp_ms: u64,
    pub kind: EntryKind,
    /// The entry's RFC 6962 leaf hash: what the next entry links to and the Merkle tree holds.
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub hash: Hash32,
    /// The previous entry's hash; empty for an undecodable entry.
    pub prev_hash: String,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub contract_id: Option<ContractId>,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub job_id: Option<JobId>,
    /// The hash of the job spec (contracts).
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub job_hash: Option<Hash32>,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub requester: Option<NodeId>,
    #[serde(with = "crate::serde_text::display_option", default)]
    #[schemars(with = "Option<String>")]
    pub provider: Option<NodeId>,
    /// Micro-credits: a contract's maximum; what a receipt or settlement charged.
    pub cost: Option<u64>,
    /// How a run, a failure or a misbehaviour is described (text for people).
    pub outcome: Option<String>,
    /// Metered usage (receipts).
    pub fuel: Option<u64>,
    pub wall_time_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
    /// Tokens (usage receipts, and the receipts of standing contracts).
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    /// What a cluster's scheduler accounted (receipts of runs on a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<suanli_protocol::negotiation::ClusterUsage>,
    pub detail: Option<String>,
    /// The exact stored bytes, base64: what `hash` covers.
    pub raw_base64: String,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Contract,
    Receipt,
    Settlement,
    Failure,
    Misbehaviour,
    /// One request's usage receipt under a standing contract.
    Usage,
    /// The stored bytes do not decode as an entry (shown, never hidden).
    Undecodable,
    /// A kind this client does not know (a newer node).
    #[serde(other)]
    Unknown,
}

impl EntryKind {
    /// The wire name (CSV exports and tables).
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Contract => "contract",
            EntryKind::Receipt => "receipt",
            EntryKind::Settlement => "settlement",
            EntryKind::Failure => "failure",
            EntryKind::Misbehaviour => "misbehaviour",
            EntryKind::Usage => "usage",
            EntryKind::Undecodable => "undecodable",
            EntryKind::Unknown => "unknown",
        }
    }
}

/// `GET /v1/ledger/entry/{index}?raw=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryQuery {
    /// `1` or `true`: the exact stored bytes instead of JSON (`0`, `false`: JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// `GET /v1/ledger/proof/inclusion?index=&size=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    pub index: u64,
    /// Tree size; the durable head's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `GET /v1/ledger/proof/consistency?from=&to=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    pub from: u64,
    /// The larger size; the durable head's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// `GET /v1/ledger/audit?peer=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditQuery {
    /// The peer's node id (checked by the handler, which names the field).
    pub peer: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};
    use suanli_protocol::checkpoint::PrefixProof;
    use suanli_protocol::merkle::MerkleTree;

    use super::*;
    use crate::fixtures::{provider, requester};

    /// Serializes `value`, reads it back, and requires the same value and the same JSON.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> Value {
        let json = serde_json::to_value(value).expect("serialize");
        let text = serde_json::to_string(value).expect("serialize");
        let back: T = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(&back, value, "{text}");
        assert_eq!(serde_json::to_value(&back).expect("serialize"), json);
        json
    }

    fn hash(byte: u8) -> Hash32 {
        Hash32([byte; 32])
    }

    fn job_record() -> JobRecord {
        JobRecord {
            job_id: JobId(hash(1)),
            state: JobState::Failed,
            module_hash: hash(2),
            stdin_hash: hash(3),
            spec_hash: Some(hash(4)),
            nonce: Some(u128::MAX - 7),
            args: vec!["--n".into(), "10".into()],
            limits: JobLimits {
                fuel: 1_000_000,
                memory_bytes: 64 << 20,
                timeout_ms: 10_000,
                max_output_bytes: 1 << 20,
                tasks: 1,
            },
            max_price: 100_000_000,
            provider: Some(provider().node_id()),
            contract_id: Some(ContractId(hash(5))),
            exit_code: Some(3),
            usage: Some(JobUsage {
                fuel: 3012,
                wall_ms: 1,
                memory_bytes: 65536,
                output_bytes: 18,
                prompt_tokens: 0,
                completion_tokens: 0,
                cluster: None,
            }),
            cost: Some(101),
            output_hash: Some(hash(6)),
            error: Some(JobError::new(
                JobErrorCode::NonzeroExit,
                "the job exited with code 3",
            )),
            attempts: vec![
                Attempt {
                    provider: requester().node_id(),
                    contract_id: None,
                    outcome: AttemptOutcome::Declined,
                    reason: Some(AttemptReason::Busy),
                    message: "all 2 slots are taken".into(),
                    at_ms: 1_795_866_911_308,
                },
                Attempt {
                    provider: provider().node_id(),
                    contract_id: Some(ContractId(hash(5))),
                    outcome: AttemptOutcome::Succeeded,
                    reason: Some(AttemptReason::NonzeroExit),
                    message: "exited with code 3".into(),
                    at_ms: 1_795_866_911_342,
                },
            ],
            created_at_ms: 1_795_866_911_301,
            updated_at_ms: 1_795_866_911_342,
            api_token: Some("0123456789abcdef".into()),
            replicas: None,
            group: None,
        }
    }

    #[test]
    fn the_job_view_shows_the_stored_record_field_for_field() {
        // The API's job answer was the stored record itself: the view must keep every name and
        // value, so a change to the record's serialization shows up here first.
        let record = job_record();
        let view = JobView::from(&record);
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::to_value(&record).unwrap()
        );
        let json = round_trip(&view);
        assert_eq!(json["state"], "failed");
        assert_eq!(json["error"]["code"], "nonzero_exit");
        assert_eq!(json["attempts"][0]["outcome"], "declined");
        assert_eq!(json["attempts"][0]["reason"], "busy");
        assert_eq!(json["provider"], provider().node_id().to_string());
        assert_eq!(json["nonce"], (u128::MAX - 7).to_string());

        let empty = JobRecord {
            spec_hash: None,
            nonce: None,
            provider: None,
            contract_id: None,
            exit_code: None,
            usage: None,
            cost: None,
            output_hash: None,
            error: None,
            attempts: Vec::new(),
            state: JobState::Queued,
            ..record
        };
        let view = JobView::from(empty.clone());
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::to_value(&empty).unwrap()
        );
        round_trip(&view);
    }

    #[test]
    fn job_answers_round_trip() {
        let page = JobPage {
            jobs: vec![JobView::from(job_record())],
            next: Some(JobId(hash(1))),
        };
        // `next` is a job id's text, to be passed back as `after`.
        assert_eq!(round_trip(&page)["next"], JobId(hash(1)).to_string());
        assert_eq!(
            round_trip(&JobPage {
                jobs: Vec::new(),
                next: None
            })["next"],
            Value::Null
        );
        round_trip(&SubmitResponse {
            job_id: JobId(hash(9)),
        });
        round_trip(&JobQuery {
            wait_ms: Some(20_000),
        });
        round_trip(&JobListQuery {
            after: Some(JobId(hash(1)).to_string()),
            limit: Some(50),
        });
        round_trip(&JobListQuery::default());
    }

    #[test]
    fn submit_requests_round_trip_and_leave_absent_fields_out() {
        let full = SubmitRequest {
            module_base64: None,
            module_wat: Some("(module)".into()),
            args: vec!["a".into()],
            env: BTreeMap::from([("MODE".to_owned(), "fast".to_owned())]),
            stdin_base64: Some("aGVsbG8=".into()),
            limits: LimitsRequest {
                fuel: Some(1),
                memory_bytes: Some(2),
                timeout_ms: Some(3),
                max_output_bytes: Some(4),
                tasks: None,
            },
            max_price: Some(5),
            placement: PlacementRequest {
                provider: Some(provider().node_id().to_string()),
                remote_only: true,
                region: Some("eu-west".into()),
            },
            executor: Some(ExecutorName::Slurm),
            replicas: Some(3),
        };
        assert_eq!(round_trip(&full)["replicas"], 3);
        let minimal = SubmitRequest {
            module_base64: Some("AGFzbQ==".into()),
            ..SubmitRequest::default()
        };
        assert_eq!(
            round_trip(&minimal),
            json!({"module_base64": "AGFzbQ==", "args": [], "env": {}, "limits": {},
                   "placement": {"remote_only": false}})
        );
        // What a hand-written client sends: only the module.
        let sent: SubmitRequest = serde_json::from_str(r#"{"module_wat": "(module)"}"#).unwrap();
        assert_eq!(sent.module_wat.as_deref(), Some("(module)"));
        assert!(serde_json::from_str::<SubmitRequest>(r#"{"modul_wat": "x"}"#).is_err());
    }

    #[test]
    fn node_and_mesh_answers_round_trip() {
        let resources = ResourcesView {
            cpu_cores: 64,
            memory_bytes: 256 << 30,
            gpus: vec![GpuView {
                model: "H100".into(),
                memory_bytes: 80 << 30,
                count: 8,
            }],
        };
        let prices = PricesView {
            base: 100,
            per_million_fuel: 10,
            per_cpu_second: 0,
        };
        let node = NodeView {
            node_id: provider().node_id(),
            version: "0.1.0".into(),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/7071".into()],
            region: "eu-west".into(),
            capacity: resources.clone(),
            executors: vec![ExecutorName::Wasm],
            prices,
            uptime_ms: 3012,
            gossip: GossipStats {
                accepted: 12,
                ignored: 3,
                rejected: 1,
                received_bytes: 9000,
                published: 40,
                published_bytes: 30000,
            },
            storage: StorageView {
                state: StorageState::Failed,
                accepting: false,
                available_bytes: Some(45_113_290_752),
                min_free_bytes: 256 << 20,
                resume_free_bytes: 320 << 20,
                reason: Some("fsync failed".into()),
            },
            market: MarketStats {
                jobs_in_flight: 1,
                contracts_driven: 2,
                notifications_pending: 3,
            },
        };
        let json = round_trip(&node);
        assert_eq!(json["executors"], json!(["wasm"]));
        assert_eq!(json["storage"]["state"], "failed");
        let mesh = MeshNodeView {
            node_id: requester().node_id(),
            age_ms: 412,
            expires_in_ms: 29_588,
            seq: 1_795_866_911_308,
            region: "eu-west".into(),
            cpu_cores: 64,
            memory_bytes: 256 << 30,
            gpus: resources.gpus.clone(),
            free: resources,
            executors: vec![ExecutorName::Wasm],
            prices,
            load: 0.25,
            listen_addrs: vec!["/ip4/203.0.113.7/tcp/7071".into()],
            version: "0.1.0".into(),
            models: vec![ModelView {
                name: "smollm2-135m".into(),
                family: "llama".into(),
                context: 4096,
                quantisation: "Q8_0".into(),
                sha256: Some(hash(9).to_hex()),
                decode_tokens_per_s: 30,
                price_per_million_prompt: 100_000,
                price_per_million_completion: 200_000,
            }],
            cluster: None,
        };
        let json = round_trip(&vec![mesh]);
        assert_eq!(json[0]["models"][0]["context"], json!(4096));
        round_trip(&vec![PeerInfo {
            node_id: provider().node_id().to_string(),
            addrs: vec!["/ip4/127.0.0.1/tcp/7102".into()],
            agent_version: Some("suanli/0.1.0".into()),
            connections: 1,
            standing: Some(crate::reputation::Standing::new(Default::default(), false)),
        }]);
        assert_eq!(
            round_trip(&HealthView {
                status: HealthStatus::Ok
            }),
            json!({"status": "ok"})
        );
    }

    #[test]
    fn errors_round_trip_and_unknown_codes_still_read() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: ApiErrorCode::InsufficientStorage,
                message: "the node's disk is full".into(),
            },
        };
        assert_eq!(
            round_trip(&body),
            json!({"error": {"code": "insufficient_storage", "message": "the node's disk is full"}})
        );
        let newer: ErrorBody =
            serde_json::from_str(r#"{"error": {"code": "teapot", "message": "m"}}"#).unwrap();
        assert_eq!(newer.error.code, ApiErrorCode::Unknown);
        let newer: Vec<ExecutorName> = serde_json::from_str(r#"["wasm", "gpu"]"#).unwrap();
        assert_eq!(newer, [ExecutorName::Wasm, ExecutorName::Unknown]);
    }

    fn entry_view(kind: EntryKind) -> EntryView {
        EntryView {
            index: 7,
            timestamp_ms: 1_795_866_911_330,
            kind,
            hash: hash(7),
            prev_hash: hash(6).to_string(),
            contract_id: Some(ContractId(hash(5))),
            job_id: Some(JobId(hash(1))),
            job_hash: Some(hash(4)),
            requester: Some(requester().node_id()),
            provider: Some(provider().node_id()),
            cost: Some(10_100),
            outcome: Some("succeeded (exit 0)".into()),
            fuel: Some(3012),
            wall_time_ms: Some(1),
            memory_bytes: Some(65536),
            output_bytes: Some(18),
            prompt_tokens: None,
            completion_tokens: None,
            detail: Some("max cost 10100, fuel limit 1000000000".into()),
            raw_base64: "AAEC".into(),
            cluster: None,
        }
    }

    #[test]
    fn ledger_answers_round_trip() {
        for kind in [
            EntryKind::Contract,
            EntryKind::Receipt,
            EntryKind::Settlement,
            EntryKind::Failure,
            EntryKind::Misbehaviour,
            EntryKind::Undecodable,
            EntryKind::Unknown,
        ] {
            assert_eq!(round_trip(&kind), json!(kind.name()));
        }
        round_trip(&EntriesPage {
            size: 42,
            head: hash(7),
            entries: vec![entry_view(EntryKind::Receipt)],
        });
        round_trip(&RawEntriesPage {
            size: 42,
            head: Hash32::ZERO,
            entries: vec![RawEntry {
                index: 0,
                raw_base64: "AAEC".into(),
            }],
        });
        let undecodable = EntryView {
            prev_hash: String::new(),
            contract_id: None,
            job_id: None,
            job_hash: None,
            requester: None,
            provider: None,
            cost: None,
            outcome: None,
            fuel: None,
            wall_time_ms: None,
            memory_bytes: None,
            output_bytes: None,
            prompt_tokens: None,
            completion_tokens: None,
            detail: None,
            ..entry_view(EntryKind::Undecodable)
        };
        round_trip(&undecodable);
        round_trip(&LedgerQuery {
            from: Some(1),
            limit: Some(5),
            fields: Some(EntryFields::Raw),
        });
        round_trip(&EntryQuery {
            raw: Some("1".into()),
        });
        round_trip(&InclusionQuery {
            index: 3,
            size: Some(7),
        });
        round_trip(&ConsistencyQuery { from: 3, to: None });

        let tree = MerkleTree::from_leaf_hashes((0..7u8).map(hash));
        round_trip(&InclusionProof::from_tree(&tree, 3, 7).unwrap());
        round_trip(&ConsistencyProof::from_tree(&tree, 3, 7).unwrap());
        round_trip(&VerifyReport {
            ok: false,
            entries: 17,
            head: hash(16).to_string(),
            error: Some(VerifyFailure {
                index: 17,
                message: "previous-hash link broken".into(),
            }),
        });
        round_trip(&vec![Balance {
            node_id: provider().node_id().to_string(),
            net_micro: -20_200,
            settlements: 2,
        }]);
    }

    #[test]
    fn transparency_answers_round_trip() {
        round_trip(&vec![Witnessed {
            node_id: provider().node_id().to_string(),
            size: 342,
            root: hash(3).to_string(),
            note: "the note".into(),
        }]);
        round_trip(&vec![EquivocationRecord {
            node_id: provider().node_id().to_string(),
            proof: Equivocation {
                first: "note one".into(),
                second: "note two".into(),
                fork: Some(PrefixProof {
                    prefix_root: hash(1),
                    proof: vec![hash(2), hash(3)],
                }),
            },
        }]);
        for witness in [
            Observation::First,
            Observation::Extended { from: 300 },
            Observation::Unchanged,
            Observation::Stale { held: 9 },
            Observation::Unproven {
                reason: "no answer".into(),
            },
            Observation::Equivocation,
            Observation::Refused {
                reason: "no room".into(),
            },
        ] {
            round_trip(&witness);
        }
        let report = AuditReport {
            peer: provider().node_id().to_string(),
            verdict: AuditVerdict::Disagree,
            checkpoint: Some(AuditedCheckpoint {
                size: 304,
                root: hash(3).to_string(),
                note: "the note".into(),
                witness: Observation::Extended { from: 300 },
                root_matches: true,
            }),
            entries: 307,
            chain_problems: 1,
            chain_problem_list: vec![ChainProblem {
                index: 41,
                contract_id: Some(ContractId(hash(5)).to_string()),
                error: "document: bad signature".into(),
            }],
            shared_contracts: 100,
            agreements: 299,
            discrepancies: 1,
            discrepancy_list: vec![Discrepancy {
                contract_id: ContractId(hash(5)).to_string(),
                kind: DocumentKind::Settlement,
                issue: DiscrepancyIssue::MissingOnPeer,
                ours: Some(40),
                theirs: None,
            }],
            repairs_requested: 1,
        };
        let json = round_trip(&report);
        assert_eq!(json["verdict"], "disagree");
        assert_eq!(
            json["checkpoint"]["witness"],
            json!({"outcome": "extended", "from": 300})
        );
        assert_eq!(json["discrepancy_list"][0]["kind"], "settlement");
        assert_eq!(json["discrepancy_list"][0]["issue"], "missing_on_peer");
        round_trip(&AuditQuery {
            peer: provider().node_id().to_string(),
        });
    }
}
