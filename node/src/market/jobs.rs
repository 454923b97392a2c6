//! Job records: what this node knows about every job submitted to it, persisted so that it
//! survives a restart. Each record has one writer, the task placing that job.
//!
//! A record is a cache of the job's history, not its truth: what a job's contracts became is in
//! the ledger, and after a crash the record is brought up to date from it (a job whose contract
//! settled reads `succeeded` or `failed` with its receipt's outcome, whatever the record said).
//! Intermediate states are written without a barrier; a final state is made durable before
//! anyone is told, so a job reported final never goes back.

use serde::{Deserialize, Serialize};
use suanli_protocol::engine::AttemptEnd;
use suanli_protocol::negotiation::{AttemptFailure, DeclineCode, FailureReason, Outcome, Receipt};
use suanli_protocol::{ContractId, Hash32, JobId, Limits, NodeId, Usage};

use crate::storage::{Blobs, RecordTree, Storage, StorageError};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Negotiating,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// Why a job failed, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// No provider took the job before the placement deadline; the message lists why.
    NoProvider,
    /// The node is shutting down and the job never got a contract (older records: the node
    /// restarted while the job was in flight).
    ShuttingDown,
    Interrupted,
    /// This node could not record the job's contract.
    Ledger,
    Internal,
    /// The job ran and exited with a non-zero code.
    NonzeroExit,
    // How a run failed (a receipt's outcome).
    FuelExhausted,
    Trap,
    Timeout,
    MemoryLimit,
    InvalidModule,
    OutputTooLarge,
    Cancelled,
    ModuleTooComplex,
    /// The replicas of a replicated job returned different results and no strict majority of
    /// them agreed.
    ReplicasDisagree,
    /// A value written by another version of suanli.
    #[serde(other)]
    Unknown,
}

impl From<FailureReason> for JobErrorCode {
    fn from(reason: FailureReason) -> Self {
        match reason {
            FailureReason::FuelExhausted => JobErrorCode::FuelExhausted,
            FailureReason::Trap => JobErrorCode::Trap,
            FailureReason::Timeout => JobErrorCode::Timeout,
            FailureReason::MemoryLimit => JobErrorCode::MemoryLimit,
            FailureReason::InvalidModule => JobErrorCode::InvalidModule,
            FailureReason::OutputTooLarge => JobErrorCode::OutputTooLarge,
            FailureReason::Cancelled => JobErrorCode::Cancelled,
            FailureReason::ModuleTooComplex => JobErrorCode::ModuleTooComplex,
        }
    }
}

/// A machine-readable reason and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: JobErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: message.into(),
        }
    }
}

/// How one try with one provider ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The provider declined (its signed reason is the attempt's `reason`).
    Declined,
    /// The provider could not be reached.
    Unreachable,
    /// The provider answered with a protocol error.
    Error,
    /// The provider's answer was invalid, or it broke the contract.
    Rejected,
    /// The provider went away while running the job.
    Lost,
    /// No delivery before the contract's deadline.
    DeadlineMissed,
    /// The provider did not start the job.
    NotStarted,
    /// The contract was cancelled.
    Cancelled,
    /// This node could not record the contract.
    LedgerFailed,
    /// The job ran and the contract settled (`reason` says how the run ended if not cleanly).
    Succeeded,
    /// The job ran, the contract settled, and the run failed (`reason`).
    Failed,
    /// A value written by another version of suanli.
    #[serde(other)]
    Unknown,
}

/// A decline code or a run's failure reason, as an attempt shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptReason {
    // Decline codes.
    NoCapacity,
    LimitsExceeded,
    ExecutorUnsupported,
    PriceTooLow,
    CreditLimit,
    Busy,
    ShuttingDown,
    Other,
    // Run outcomes.
    NonzeroExit,
    FuelExhausted,
    Trap,
    Timeout,
    MemoryLimit,
    InvalidModule,
    OutputTooLarge,
    Cancelled,
    ModuleTooComplex,
    /// A value written by another version of suanli.
    #[serde(other)]
    Unknown,
}

impl AttemptOutcome {
    /// The name the API shows.
    pub fn name(self) -> &'static str {
        match self {
            AttemptOutcome::Declined => "declined",
            AttemptOutcome::Unreachable => "unreachable",
            AttemptOutcome::Error => "error",
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::DeadlineMissed => "deadline_missed",
            AttemptOutcome::NotStarted => "not_started",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::LedgerFailed => "ledger_failed",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Unknown => "unknown",
        }
    }
}

impl AttemptReason {
    /// The name the API shows.
    pub fn name(self) -> &'static str {
        match self {
            AttemptReason::NoCapacity => "no_capacity",
            AttemptReason::LimitsExceeded => "limits_exceeded",
            AttemptReason::ExecutorUnsupported => "executor_unsupported",
            AttemptReason::PriceTooLow => "price_too_low",
            AttemptReason::CreditLimit => "credit_limit",
            AttemptReason::Busy => "busy",
            AttemptReason::ShuttingDown => "shutting_down",
            AttemptReason::Other => "other",
            AttemptReason::NonzeroExit => "nonzero_exit",
            AttemptReason::FuelExhausted => "fuel_exhausted",
            AttemptReason::Trap => "trap",
            AttemptReason::Timeout => "timeout",
            AttemptReason::MemoryLimit => "memory_limit",
            AttemptReason::InvalidModule => "invalid_module",
            AttemptReason::OutputTooLarge => "output_too_large",
            AttemptReason::Cancelled => "cancelled",
            AttemptReason::ModuleTooComplex => "module_too_complex",
            AttemptReason::Unknown => "unknown",
        }
    }
}

impl From<DeclineCode> for AttemptReason {
    fn from(code: DeclineCode) -> Self {
        match code {
            DeclineCode::NoCapacity => AttemptReason::NoCapacity,
            DeclineCode::LimitsExceeded => AttemptReason::LimitsExceeded,
            DeclineCode::ExecutorUnsupported => AttemptReason::ExecutorUnsupported,
            DeclineCode::PriceTooLow => AttemptReason::PriceTooLow,
            DeclineCode::CreditLimit => AttemptReason::CreditLimit,
            DeclineCode::Busy => AttemptReason::Busy,
            DeclineCode::ShuttingDown => AttemptReason::ShuttingDown,
            DeclineCode::Other => AttemptReason::Other,
        }
    }
}

impl From<FailureReason> for AttemptReason {
    fn from(reason: FailureReason) -> Self {
        match reason {
            FailureReason::FuelExhausted => AttemptReason::FuelExhausted,
            FailureReason::Trap => AttemptReason::Trap,
            FailureReason::Timeout => AttemptReason::Timeout,
            FailureReason::MemoryLimit => AttemptReason::MemoryLimit,
            FailureReason::InvalidModule => AttemptReason::InvalidModule,
            FailureReason::OutputTooLarge => AttemptReason::OutputTooLarge,
            FailureReason::Cancelled => AttemptReason::Cancelled,
            FailureReason::ModuleTooComplex => AttemptReason::ModuleTooComplex,
        }
    }
}

/// One try at placing the job with one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    #[serde(with = "crate::serde_text::display")]
    pub provider: NodeId,
    #[serde(with = "crate::serde_text::display_option", default)]
    pub contract_id: Option<ContractId>,
    pub outcome: AttemptOutcome,
    pub reason: Option<AttemptReason>,
    pub message: String,
    pub at_ms: u64,
}

impl Attempt {
    /// The attempt an engine's attempt end describes.
    pub fn from_end(provider: NodeId, end: &AttemptEnd, at_ms: u64) -> Attempt {
        let (outcome, reason, message) = match end {
            AttemptEnd::Settled { receipt, .. } => match &receipt.outcome {
                Outcome::Succeeded { exit_code: 0, .. } => {
                    (AttemptOutcome::Succeeded, None, String::new())
                }
                Outcome::Succeeded { exit_code, .. } => (
                    AttemptOutcome::Succeeded,
                    Some(AttemptReason::NonzeroExit),
                    format!("exited with code {exit_code}"),
                ),
                Outcome::Failed { reason, message } => (
                    AttemptOutcome::Failed,
                    Some(AttemptReason::from(*reason)),
                    message.clone(),
                ),
            },
            AttemptEnd::Failed {
                failure, message, ..
            } => {
                let outcome = match failure {
                    AttemptFailure::PeerLost => AttemptOutcome::Lost,
                    AttemptFailure::DeadlineMissed => AttemptOutcome::DeadlineMissed,
                    AttemptFailure::Misbehaved => AttemptOutcome::Rejected,
                    AttemptFailure::Cancelled => AttemptOutcome::Cancelled,
                    AttemptFailure::NotStarted => AttemptOutcome::NotStarted,
                };
                (outcome, None, message.clone())
            }
            AttemptEnd::Declined { code, message, .. } => (
                AttemptOutcome::Declined,
                Some(AttemptReason::from(*code)),
                message.clone(),
            ),
            AttemptEnd::Rejected { message, .. } => {
                (AttemptOutcome::Rejected, None, message.clone())
            }
            AttemptEnd::Cancelled { .. } => (
                AttemptOutcome::Cancelled,
                None,
                "cancelled by the submitter".to_owned(),
            ),
            AttemptEnd::Unreachable { message, .. } => {
                (AttemptOutcome::Unreachable, None, message.clone())
            }
            AttemptEnd::Refused { code, message, .. } => {
                (AttemptOutcome::Error, None, format!("{code:?}: {message}"))
            }
            AttemptEnd::LedgerFailed { message } => {
                (AttemptOutcome::LedgerFailed, None, message.clone())
            }
        };
        Attempt {
            provider,
            contract_id: end.contract_id(),
            outcome,
            reason,
            // Messages can come from peers: bounded like every other peer text.
            message: suanli_protocol::engine::truncate(&message),
            at_ms,
        }
    }
}

/// Metered usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobUsage {
    pub fuel: u64,
    pub wall_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
    /// Tokens of a model session (absent from older records).
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// What a cluster's scheduler accounted (executor `slurm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<suanli_protocol::negotiation::ClusterUsage>,
}

impl From<Usage> for JobUsage {
    fn from(usage: Usage) -> Self {
        JobUsage {
            fuel: usage.fuel,
            wall_ms: usage.wall_time_ms,
            memory_bytes: usage.memory_bytes,
            output_bytes: usage.output_bytes,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cluster: usage.cluster,
        }
    }
}

/// A job's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    /// Tasks (absent from older records: 1).
    #[serde(default = "one")]
    pub tasks: u32,
}

fn one() -> u32 {
    1
}

impl From<Limits> for JobLimits {
    fn from(limits: Limits) -> Self {
        JobLimits {
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes,
            timeout_ms: limits.wall_time_ms,
            max_output_bytes: limits.output_bytes,
            tasks: limits.tasks,
        }
    }
}

/// Everything the node knows about one submitted job, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    #[serde(with = "crate::serde_text::display")]
    pub job_id: JobId,
    pub state: JobState,
    #[serde(with = "crate::serde_text::display")]
    pub module_hash: Hash32,
    #[serde(with = "crate::serde_text::display")]
    pub stdin_hash: Hash32,
    /// SHA-256 of the job spec's canonical bytes, stored as a blob (for resuming the job).
    #[serde(with = "crate::serde_text::display_option", default)]
    pub spec_hash: Option<Hash32>,
    /// The submitter's nonce, part of the job id.
    #[serde(with = "crate::serde_text::display_option", default)]
    pub nonce: Option<u128>,
    pub args: Vec<String>,
    pub limits: JobLimits,
    pub max_price: u64,
    /// The provider of the job's contract, once it has one.
    #[serde(with = "crate::serde_text::display_option", default)]
    pub provider: Option<NodeId>,
    #[serde(with = "crate::serde_text::display_option", default)]
    pub contract_id: Option<ContractId>,
    pub exit_code: Option<i32>,
    pub usage: Option<JobUsage>,
    /// Micro-credits paid.
    pub cost: Option<u64>,
    /// SHA-256 of the stored output (stdout; what a failed run wrote).
    #[serde(with = "crate::serde_text::display_option", default)]
    pub output_hash: Option<Hash32>,
    pub error: Option<JobError>,
    pub attempts: Vec<Attempt>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The id of the API token that submitted the job (none: the operator, or an older record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// A replicated job (a group): its runs, one child job each, and its verdict once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaGroup>,
    /// The replicated job this job is one run of (a child of that group).
    #[serde(
        with = "crate::serde_text::display_option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub group: Option<JobId>,
}

/// What a replicated job's record holds besides an ordinary job's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaGroup {
    /// The child jobs, one per replica, each placed on its own provider.
    #[serde(with = "crate::serde_text::display_vec")]
    pub children: Vec<JobId>,
    /// The providers whose result differed from the majority's (evidence is stored against
    /// each: [`JobBook::mismatches`]).
    #[serde(default, with = "crate::serde_text::display_vec")]
    pub odd: Vec<NodeId>,
    /// A spot check of an ordinary job (its first child), not a job of its own: it grows by
    /// one run while its verdict needs one (a check, then a tie-break), is paid by this node,
    /// and leaves the checked job as it ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot_check: bool,
}

/// What a piece of stored evidence is about.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// A replicated WebAssembly job ([`suanli_protocol::replicas::ReplicaMismatch`]).
    #[default]
    Job,
    /// A replicated greedy token request ([`suanli_protocol::replicas::TokenMismatch`]).
    Tokens,
}

/// One stored piece of evidence that a provider's signed result differed from the majority's
/// of a replicated job or token request (the protocol's evidence, encoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MismatchRecord {
    /// The replicated job, or the id of the replicated token request.
    #[serde(with = "crate::serde_text::display")]
    pub group: JobId,
    /// What the evidence is about (records written before token replicas have none: jobs).
    #[serde(default)]
    pub kind: EvidenceKind,
    /// The provider whose result differed.
    #[serde(with = "crate::serde_text::display")]
    pub provider: NodeId,
    /// The odd provider's contract.
    #[serde(with = "crate::serde_text::display")]
    pub contract_id: ContractId,
    /// When the group was decided.
    pub at_ms: u64,
    /// The encoded evidence (hex): a [`suanli_protocol::replicas::ReplicaMismatch`] or a
    /// [`suanli_protocol::replicas::TokenMismatch`], by `kind`.
    #[serde(with = "hex_bytes")]
    pub evidence: Vec<u8>,
}

impl MismatchRecord {
    /// The providers of the majority, if the evidence verifies now (as anyone would verify
    /// it) and names this record's provider as the odd one.
    pub fn verified_majority(&self) -> Option<Vec<NodeId>> {
        use suanli_protocol::replicas::{ReplicaMismatch, TokenMismatch};
        let (offender, majority) = match self.kind {
            EvidenceKind::Job => {
                let verified = ReplicaMismatch::decode(&self.evidence)
                    .ok()?
                    .verify()
                    .ok()?;
                (verified.offender, verified.majority)
            }
            EvidenceKind::Tokens => {
                let verified = TokenMismatch::decode(&self.evidence).ok()?.verify().ok()?;
                (verified.offender, verified.majority)
            }
        };
        (offender == self.provider).then_some(majority)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// One mismatch counted against a provider: what reputation code reads
/// ([`JobBook::mismatches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub provider: NodeId,
    pub group: JobId,
    pub at_ms: u64,
}

/// Most attempts kept in one record (the newest are kept).
pub const MAX_ATTEMPTS_KEPT: usize = 64;

impl JobRecord {
    /// The first record of a job just submitted: queued, nothing run, nothing paid.
    pub fn queued(
        job_id: JobId,
        spec: &suanli_protocol::JobSpec,
        spec_hash: Hash32,
        nonce: u128,
        max_price: u64,
        now_ms: u64,
        api_token: Option<String>,
    ) -> JobRecord {
        JobRecord {
            job_id,
            state: JobState::Queued,
            module_hash: spec.module_hash,
            stdin_hash: spec.stdin_hash,
            spec_hash: Some(spec_hash),
            nonce: Some(nonce),
            args: spec.args.clone(),
            limits: spec.limits.into(),
            max_price,
            provider: None,
            contract_id: None,
            exit_code: None,
            usage: None,
            cost: None,
            output_hash: None,
            error: None,
            attempts: Vec::new(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            api_token,
            replicas: None,
            group: None,
        }
    }

    pub fn push_attempt(&mut self, attempt: Attempt) {
        if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
            self.attempts.remove(0);
        }
        self.attempts.push(attempt);
    }

    /// Ends the record from a settled contract's receipt: succeeded on a clean exit, failed with
    /// the run's reason otherwise. `output_hash` is the stored output's.
    pub fn settle(
        &mut self,
        provider: NodeId,
        contract_id: ContractId,
        receipt: &Receipt,
        output_hash: Hash32,
    ) {
        self.provider = Some(provider);
        self.contract_id = Some(contract_id);
        self.usage = Some(receipt.usage.into());
        self.cost = Some(receipt.cost.micro());
        self.output_hash = Some(output_hash);
        match &receipt.outcome {
            Outcome::Succeeded { exit_code: 0, .. } => {
                self.exit_code = Some(0);
                self.state = JobState::Succeeded;
                self.error = None;
            }
            Outcome::Succeeded { exit_code, .. } => {
                self.exit_code = Some(*exit_code);
                self.state = JobState::Failed;
                self.error = Some(JobError::new(
                    JobErrorCode::NonzeroExit,
                    format!("the job exited with code {exit_code}"),
                ));
            }
            Outcome::Failed { reason, message } => {
                self.state = JobState::Failed;
                self.error = Some(JobError::new(JobErrorCode::from(*reason), message.clone()));
            }
        }
    }
}

/// A job record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt job record: {0}")]
    Corrupt(String),
}

/// Job records, their index by submission time, the blobs they refer to (modules, stdin, spec
/// bytes, outputs), and the output of each contract this node was party to.
#[derive(Debug, Clone)]
pub struct JobBook {
    jobs: RecordTree,
    /// Jobs their submitter cancelled (a marker each; the job's task owns its record).
    cancels: RecordTree,
    index: RecordTree,
    /// The same index per API token: token id, then the submission-time key.
    by_token: RecordTree,
    outputs: RecordTree,
    /// Evidence against providers of replicated jobs: group id then the odd contract's id.
    mismatches: RecordTree,
    blobs: Blobs,
    storage: Storage,
}

/// The prefix of a token's keys in the per-token index (the id's length first, so that one id
/// is never a prefix of another's keys).
fn token_prefix(token: &str) -> Vec<u8> {
    let mut key = vec![u8::try_from(token.len()).unwrap_or(u8::MAX)];
    key.extend_from_slice(token.as_bytes());
    key
}

fn index_key(created_at_ms: u64, job_id: &JobId) -> Vec<u8> {
    let mut key = created_at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(job_id.0.as_bytes());
    key
}

impl JobBook {
    pub fn new(storage: &Storage) -> JobBook {
        JobBook {
            jobs: storage.records("jobs"),
            cancels: storage.records("job_cancels"),
            index: storage.records("jobs_by_time"),
            by_token: storage.records("jobs_by_token"),
            outputs: storage.records("contract_outputs"),
            mismatches: storage.records("replica_mismatches"),
            blobs: storage.blobs(),
            storage: storage.clone(),
        }
    }

    /// Stores a new job's first record and indexes it by submission time.
    pub fn create(&self, record: &JobRecord) -> Result<(), JobStoreError> {
        let key = index_key(record.created_at_ms, &record.job_id);
        self.index.insert(&key, record.job_id.0.as_bytes())?;
        if let Some(token) = &record.api_token {
            let mut token_key = token_prefix(token);
            token_key.extend_from_slice(&key);
            self.by_token
                .insert(&token_key, record.job_id.0.as_bytes())?;
        }
        self.save(record)
    }

    /// Up to `limit` entries of the token's index after the key `after` (from its start when
    /// `None`): each entry's key and job id, in submission order.
    pub fn token_index(
        &self,
        token: &str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, JobId)>, JobStoreError> {
        let prefix = token_prefix(token);
        let start = match after {
            Some(key) => {
                let mut start = key.to_vec();
                start.push(0); // strictly after
                start
            }
            None => prefix.clone(),
        };
        Ok(self
            .by_token
            .iter_from(&start, limit)?
            .into_iter()
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(key, id)| {
                let id = <[u8; 32]>::try_from(id.as_slice()).ok()?;
                Some((key, JobId(Hash32(id))))
            })
            .collect())
    }

    /// Up to `limit` of the token's records in submission order, after the job `after`.
    pub fn list_for_token(
        &self,
        token: &str,
        after: Option<&JobId>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, JobStoreError> {
        let after_key = match after {
            Some(job_id) => match self.get(job_id)? {
                Some(record) if record.api_token.as_deref() == Some(token) => {
                    let mut key = token_prefix(token);
                    key.extend_from_slice(&index_key(record.created_at_ms, job_id));
                    Some(key)
                }
                _ => return Ok(Vec::new()),
            },
            None => None,
        };
        let mut records = Vec::new();
        for (_, job_id) in self.token_index(token, after_key.as_deref(), limit)? {
            if let Some(record) = self.get(&job_id)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Stores a record that is not listed on its own (a replicated job's child: its group is
    /// listed, and counted against a token's quota, instead).
    pub fn create_unlisted(&self, record: &JobRecord) -> Result<(), JobStoreError> {
        self.save(record)
    }

    /// Stores evidence against a provider of a replicated job (again: the same group and
    /// contract replace it, so deciding a group twice after a crash stores it once).
    pub fn put_mismatch(&self, record: &MismatchRecord) -> Result<(), JobStoreError> {
        let mut key = record.group.0.as_bytes().to_vec();
        key.extend_from_slice(record.contract_id.0.as_bytes());
        let bytes = serde_json::to_vec(record)
            .map_err(|error| JobStoreError::Corrupt(error.to_string()))?;
        Ok(self.mismatches.insert(&key, &bytes)?)
    }

    /// [`Self::put_mismatch`], returning once the record is durable.
    pub async fn put_mismatch_durably(&self, record: &MismatchRecord) -> Result<(), JobStoreError> {
        self.put_mismatch(record)?;
        Ok(self.storage.sync().await?)
    }

    /// Up to `limit` evidence records, by group id, after the key `after` (group id then
    /// contract id, 64 bytes), with the key of each.
    pub fn mismatch_records(
        &self,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, MismatchRecord)>, JobStoreError> {
        let start = match after {
            Some(key) => {
                let mut start = key.to_vec();
                start.push(0); // strictly after
                start
            }
            None => Vec::new(),
        };
        self.mismatches
            .iter_from(&start, limit)?
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice(&bytes)
                    .map(|record| (key, record))
                    .map_err(|error| JobStoreError::Corrupt(error.to_string()))
            })
            .collect()
    }

    /// The evidence stored against providers of one replicated job.
    pub fn mismatches_of(&self, group: &JobId) -> Result<Vec<MismatchRecord>, JobStoreError> {
        let mut records = Vec::new();
        for item in self
            .mismatches
            .scan::<&[u8], _>(group.0.as_bytes().as_slice()..)
        {
            let (key, bytes) = item?;
            if !key.starts_with(group.0.as_bytes()) {
                break;
            }
            records.push(
                serde_json::from_slice(&bytes)
                    .map_err(|error| JobStoreError::Corrupt(error.to_string()))?,
            );
        }
        Ok(records)
    }

    /// Every mismatch this node recorded against a provider, one per replicated job in which
    /// its signed result differed from the majority's: what a reputation score counts. Each
    /// has verifiable evidence behind it ([`JobBook::mismatch_records`]). Unreadable records
    /// are skipped.
    pub fn mismatches(&self) -> Result<Vec<Mismatch>, JobStoreError> {
        let mut found = Vec::new();
        for item in self.mismatches.scan::<&[u8], _>(..) {
            let (_, bytes) = item?;
            if let Ok(record) = serde_json::from_slice::<MismatchRecord>(&bytes) {
                found.push(Mismatch {
                    provider: record.provider,
                    group: record.group,
                    at_ms: record.at_ms,
                });
            }
        }
        Ok(found)
    }

    /// Replaces a job's record (not durable until the next barrier: see [`Self::save_final`]).
    pub fn save(&self, record: &JobRecord) -> Result<(), JobStoreError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|error| JobStoreError::Corrupt(error.to_string()))?;
        Ok(self.jobs.insert(record.job_id.0.as_bytes(), &bytes)?)
    }

    /// Replaces a job's record and returns once it is durable.
    pub async fn save_durably(&self, record: &JobRecord) -> Result<(), JobStoreError> {
        self.save(record)?;
        Ok(self.storage.sync().await?)
    }

    /// Records, durably, that the submitter cancelled the job.
    pub async fn request_cancel(&self, job_id: &JobId) -> Result<(), JobStoreError> {
        self.cancels.insert(job_id.0.as_bytes(), &[])?;
        Ok(self.storage.sync().await?)
    }

    /// Whether the submitter cancelled the job.
    pub fn cancel_requested(&self, job_id: &JobId) -> bool {
        matches!(self.cancels.get(job_id.0.as_bytes()), Ok(Some(_)))
    }

    pub fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>, JobStoreError> {
        match self.jobs.get(job_id.0.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| JobStoreError::Corrupt(error.to_string())),
            None => Ok(None),
        }
    }

    /// Up to `limit` records in submission order, starting after the job `after`.
    pub fn list(&self, after: Option<&JobId>, limit: u32) -> Result<Vec<JobRecord>, JobStoreError> {
        let start = match after {
            Some(job_id) => match self.get(job_id)? {
                Some(record) => {
                    let mut key = index_key(record.created_at_ms, job_id);
                    key.push(0); // strictly after
                    key
                }
                None => return Ok(Vec::new()),
            },
            None => Vec::new(),
        };
        let mut records = Vec::new();
        for (_, id) in self.index.iter_from(&start, limit)? {
            if let Ok(bytes) = <[u8; 32]>::try_from(id.as_slice())
                && let Some(record) = self.get(&JobId(Hash32(bytes)))?
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Every record not in a final state (the jobs a restart resumes). Unreadable records are
    /// skipped with their ids returned, so one bad record does not stop the others.
    pub fn unfinished(&self) -> Result<(Vec<JobRecord>, Vec<Vec<u8>>), JobStoreError> {
        let mut unfinished = Vec::new();
        let mut unreadable = Vec::new();
        for item in self.jobs.scan::<&[u8], _>(..) {
            let (key, bytes) = item?;
            match serde_json::from_slice::<JobRecord>(&bytes) {
                Ok(record) if !record.state.is_final() => unfinished.push(record),
                Ok(_) => {}
                Err(_) => unreadable.push(key.to_vec()),
            }
        }
        Ok((unfinished, unreadable))
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Stores the output of a contract (before the ledger entry that refers to it).
    pub fn put_output(&self, contract_id: &ContractId, output: &[u8]) -> Result<(), JobStoreError> {
        Ok(self.outputs.insert(contract_id.0.as_bytes(), output)?)
    }

    pub fn output(&self, contract_id: &ContractId) -> Result<Option<Vec<u8>>, JobStoreError> {
        Ok(self.outputs.get(contract_id.0.as_bytes())?)
    }

    /// Forgets a contract's output once nothing needs it any more (its contract has ended and,
    /// on the requester's side, the job's record holds it).
    pub fn drop_output(&self, contract_id: &ContractId) {
        if let Err(error) = self.outputs.remove(contract_id.0.as_bytes()) {
            tracing::warn!(%contract_id, %error, "cannot drop a contract's output");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_values() {
        let outcomes = [
            AttemptOutcome::Declined,
            AttemptOutcome::Unreachable,
            AttemptOutcome::Error,
            AttemptOutcome::Rejected,
            AttemptOutcome::Lost,
            AttemptOutcome::DeadlineMissed,
            AttemptOutcome::NotStarted,
            AttemptOutcome::Cancelled,
            AttemptOutcome::LedgerFailed,
            AttemptOutcome::Succeeded,
            AttemptOutcome::Failed,
            AttemptOutcome::Unknown,
        ];
        for outcome in outcomes {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::Value::from(outcome.name())
            );
        }
        let reasons = [
            AttemptReason::NoCapacity,
            AttemptReason::LimitsExceeded,
            AttemptReason::ExecutorUnsupported,
            AttemptReason::PriceTooLow,
            AttemptReason::CreditLimit,
            AttemptReason::Busy,
            AttemptReason::ShuttingDown,
            AttemptReason::Other,
            AttemptReason::NonzeroExit,
            AttemptReason::FuelExhausted,
            AttemptReason::Trap,
            AttemptReason::Timeout,
            AttemptReason::MemoryLimit,
            AttemptReason::InvalidModule,
            AttemptReason::OutputTooLarge,
            AttemptReason::Cancelled,
            AttemptReason::ModuleTooComplex,
            AttemptReason::Unknown,
        ];
        for reason in reasons {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.name())
            );
        }
    }

    #[test]
    fn records_of_other_versions_still_read() {
        // An older record: an attempt reason this version does not know, ids as text.
        let old = r#"{"job_id":"aa00000000000000000000000000000000000000000000000000000000000000",
            "state":"failed","module_hash":"bb00000000000000000000000000000000000000000000000000000000000000",
            "stdin_hash":"cc00000000000000000000000000000000000000000000000000000000000000",
            "args":[],"limits":{"fuel":1,"memory_bytes":2,"timeout_ms":3,"max_output_bytes":4},
            "max_price":5,"provider":null,"contract_id":null,"exit_code":null,"usage":null,
            "cost":null,"output_hash":null,"error":{"code":"interrupted","message":"x"},
            "attempts":[{"provider":"12D3KooWLxVamwfQuSVLa7HtAfAtKpJnyY8JRqzRsQxB9nRBwFzD",
              "contract_id":null,"outcome":"failed","reason":"not_started","message":"","at_ms":1}],
            "created_at_ms":1,"updated_at_ms":2}"#;
        let record: JobRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.attempts[0].reason, Some(AttemptReason::Unknown));
        assert_eq!(record.error.unwrap().code, JobErrorCode::Interrupted);
        assert!(record.nonce.is_none() && record.spec_hash.is_none());
    }
}
