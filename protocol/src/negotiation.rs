//! The documents of a job negotiation, in the order they are exchanged:
//!
//! ```text
//! requester                                   provider
//!     |-- QuoteRequest ---------------------------->|
//!     |<-------------- Signed<Offer> | Signed<Decline>
//!     |-- Signed<Contract> (requester signs) ------>|
//!     |<------------- CoSigned<Contract> (provider countersigns)
//!     |         both append the contract to their ledgers, durably
//!     |-- Execute (module, stdin) ----------------->|
//!     |<------------------------------- Accepted    |   (at once; the job runs afterwards)
//!     |<-- Deliver: Signed<Receipt>, Signed<Settlement>, output
//!     |-- CoSigned<Settlement> (requester countersigns) ->|
//!     |         both append receipt and settlement
//! ```
//!
//! Every document names its parties, so verifying a signature also checks that the right party
//! signed. [`FailureRecord`] and [`Evidence`] are a node's own signed statements for its ledger.
//!
//! The quote request carries the job spec as raw bytes with the submitter's nonce, so the
//! provider derives the job id and job hash from exactly the bytes the requester hashed. On
//! `Propose` the provider checks the contract against the quote ([`Contract::check_quote`]) and
//! against its own signed offer ([`Contract::check_own_offer`]: by its terms, the signature is
//! its own) before countersigning.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, EncodeError};
use crate::hash::{Hash32, hash_id};
use crate::identity::NodeId;
use crate::job::{self, JobId, JobSpec, Limits, SpecError};
use crate::money::{Credits, PriceTerms};
use crate::signed::{BoundsError, CoSigned, CoSignedDocument, Document, Signed, VerifyError};

hash_id!(
    /// A contract's identifier: the digest of its signed bytes, `tagged("contract", bytes)`.
    ContractId
);

/// Cap on free-text messages in documents (decline and failure explanations).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Cap on the payload kept as misbehaviour evidence.
pub const MAX_EVIDENCE_BYTES: usize = 64 * 1024;
/// Cap on a small signed document (offer, decline, contract, receipt, settlement, failure).
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024;
/// How far a receipt's `usage.wall_time_ms` may exceed the contract's `limits.wall_time_ms`.
///
/// The provider stops a run by wasmtime epoch interruption, which is coarse: the epoch ticks
/// periodically and the guest is interrupted at its next check, so a run can overshoot its wall
/// limit by up to a tick plus scheduling delay. Fuel, memory and output are exact; wall time is
/// not, and is not the basis of the cost.
pub const WALL_TIME_GRACE_MS: u64 = 1_000;

/// A requester asks a provider for a price. It travels over an authenticated connection, so the
/// provider checks `requester` against the connection's peer instead of a signature.
///
/// `spec` holds the job spec's bytes exactly as the requester encoded and hashed them; the
/// provider derives the job id ([`job::job_id_from_bytes`]) and the job hash
/// ([`job::job_hash_from_bytes`]) from these bytes, never from a re-encoding of the decoded spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct QuoteRequest {
    pub requester: NodeId,
    /// `job_id_from_bytes(spec, nonce)`.
    pub job_id: JobId,
    /// The bincode encoding of a [`JobSpec`] (canonical when produced by [`QuoteRequest::new`]),
    /// at most [`job::MAX_SPEC_BYTES`].
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    /// The submitter's nonce, part of the job id.
    pub nonce: u128,
    pub requested_at_ms: u64,
}

/// Why a quote request's spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("spec cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("job_id {claimed} is not the id of the spec bytes and nonce ({derived})")]
    JobId { claimed: JobId, derived: JobId },
}

impl QuoteRequest {
    /// The requester's side: encodes `spec` canonically and derives the job id from those bytes.
    /// Does not validate the spec; call [`JobSpec::validate`] first.
    pub fn new(
        requester: NodeId,
        spec: &JobSpec,
        nonce: u128,
        requested_at_ms: u64,
    ) -> Result<QuoteRequest, EncodeError> {
        let spec = spec.encode()?;
        Ok(QuoteRequest {
            requester,
            job_id: job::job_id_from_bytes(&spec, nonce),
            spec,
            nonce,
            requested_at_ms,
        })
    }

    /// The provider's side: decodes the spec (at most [`job::MAX_SPEC_BYTES`], no trailing
    /// bytes), validates it ([`JobSpec::validate`]) and checks that `job_id` is the id derived
    /// from the raw spec bytes and the nonce, in that order.
    pub fn decode_spec(&self) -> Result<JobSpec, QuoteError> {
        let spec = JobSpec::decode(&self.spec)?;
        spec.validate()?;
        let derived = job::job_id_from_bytes(&self.spec, self.nonce);
        if self.job_id != derived {
            return Err(QuoteError::JobId {
                claimed: self.job_id,
                derived,
            });
        }
        Ok(spec)
    }

    /// The job hash of the raw spec bytes: what the contract's `job_hash` must be.
    pub fn job_hash(&self) -> Hash32 {
        job::job_hash_from_bytes(&self.spec)
    }
}

/// A provider's signed promise to run a job on these terms until `valid_until_ms`, holding a
/// slot (`reservation`) for it until then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Offer {
    pub provider: NodeId,
    pub requester: NodeId,
    pub job_id: JobId,
    pub price: PriceTerms,
    /// The most the job can cost under `price` and the spec's limits.
    pub max_cost: Credits,
    pub valid_until_ms: u64,
    /// The provider's handle on the slot it holds for this job.
    pub reservation: u64,
}

impl Document for Offer {
    const KIND: &'static str = "offer";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.provider
    }
}

/// Why a provider will not take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum DeclineCode {
    NoCapacity,
    LimitsExceeded,
    ExecutorUnsupported,
    PriceTooLow,
    CreditLimit,
    Busy,
    ShuttingDown,
    Other,
}

impl DeclineCode {
    pub fn name(self) -> &'static str {
        match self {
            DeclineCode::NoCapacity => "no_capacity",
            DeclineCode::LimitsExceeded => "limits_exceeded",
            DeclineCode::ExecutorUnsupported => "executor_unsupported",
            DeclineCode::PriceTooLow => "price_too_low",
            DeclineCode::CreditLimit => "credit_limit",
            DeclineCode::Busy => "busy",
            DeclineCode::ShuttingDown => "shutting_down",
            DeclineCode::Other => "other",
        }
    }
}

/// A provider's signed refusal, with a reason code and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Decline {
    pub provider: NodeId,
    pub requester: NodeId,
    pub job_id: JobId,
    /// The contract declined, when answering a `Propose`; `None` when declining a quote. A
    /// decline of one contract can therefore not be replayed against another of the same job.
    pub contract_id: Option<ContractId>,
    pub code: DeclineCode,
    /// At most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    pub declined_at_ms: u64,
}

impl Document for Decline {
    const KIND: &'static str = "decline";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.provider
    }
    fn check_bounds(&self) -> Result<(), BoundsError> {
        BoundsError::check("message", self.message.len(), MAX_MESSAGE_BYTES)
    }
}

/// The agreement to run one job: signed by the requester, countersigned by the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Contract {
    pub job_id: JobId,
    /// Job hash of the spec being run: `job_hash_from_bytes` of the spec bytes exactly as sent
    /// in the quote request.
    pub job_hash: Hash32,
    /// SHA-256 of the module and of stdin, so the provider can check what it is sent.
    pub module_hash: Hash32,
    pub stdin_hash: Hash32,
    pub requester: NodeId,
    pub provider: NodeId,
    /// Digest of the signed offer this contract accepts.
    pub offer: Hash32,
    pub price: PriceTerms,
    /// The most the requester pays; `price.max_cost(limits)`.
    pub max_cost: Credits,
    pub limits: Limits,
    /// The receipt must arrive before this time (Unix ms) or the contract expires.
    pub deadline_ms: u64,
    /// Chosen by the requester; makes every contract unique.
    pub nonce: u64,
    pub created_at_ms: u64,
}

impl Document for Contract {
    const KIND: &'static str = "contract";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.requester
    }
}

impl CoSignedDocument for Contract {
    fn countersigner(&self) -> NodeId {
        self.provider
    }
}

/// A field of a [`Contract`], as named by [`ContractCheckError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContractField {
    JobId,
    JobHash,
    ModuleHash,
    StdinHash,
    Requester,
    Provider,
    Offer,
    Price,
    MaxCost,
    Limits,
}

impl ContractField {
    pub fn name(self) -> &'static str {
        match self {
            ContractField::JobId => "job_id",
            ContractField::JobHash => "job_hash",
            ContractField::ModuleHash => "module_hash",
            ContractField::StdinHash => "stdin_hash",
            ContractField::Requester => "requester",
            ContractField::Provider => "provider",
            ContractField::Offer => "offer",
            ContractField::Price => "price",
            ContractField::MaxCost => "max_cost",
            ContractField::Limits => "limits",
        }
    }
}

impl fmt::Display for ContractField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a proposed contract does not follow the quote request or the offer it claims to accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractCheckError {
    #[error("quote request: {0}")]
    Quote(#[from] QuoteError),
    #[error("offer: {0}")]
    Offer(#[from] VerifyError),
    #[error("contract does not match the quote request: {0} differs")]
    QuoteMismatch(ContractField),
    #[error("contract does not match the offer: {0} differs")]
    OfferMismatch(ContractField),
    #[error("max_cost {max_cost} is above the spec's max_price {max_price}")]
    AboveMaxPrice {
        max_cost: Credits,
        max_price: Credits,
    },
    #[error("max_cost overflows")]
    Overflow,
}

fn same(
    mismatch: fn(ContractField) -> ContractCheckError,
    field: ContractField,
    equal: bool,
) -> Result<(), ContractCheckError> {
    if equal { Ok(()) } else { Err(mismatch(field)) }
}

impl Contract {
    /// Checks that this contract runs the job of `quote` on its terms: the quote's spec decodes
    /// and is valid and its job id follows from the raw spec bytes ([`QuoteRequest::decode_spec`]);
    /// `job_id` and `requester` are the quote's; `job_hash` is the hash of the quote's raw spec
    /// bytes; `module_hash`, `stdin_hash` and `limits` are the spec's; `max_cost` is
    /// `price.max_cost(limits)` and at most the spec's `max_price`. Checked in that order; returns
    /// the decoded spec.
    pub fn check_quote(&self, quote: &QuoteRequest) -> Result<JobSpec, ContractCheckError> {
        use ContractField as F;
        let spec = quote.decode_spec()?;
        let check = |field, equal| same(ContractCheckError::QuoteMismatch, field, equal);
        check(F::JobId, self.job_id == quote.job_id)?;
        check(F::Requester, self.requester == quote.requester)?;
        check(F::JobHash, self.job_hash == quote.job_hash())?;
        check(F::ModuleHash, self.module_hash == spec.module_hash)?;
        check(F::StdinHash, self.stdin_hash == spec.stdin_hash)?;
        check(F::Limits, self.limits == spec.limits)?;
        let max_cost = self
            .price
            .max_cost(&self.limits)
            .map_err(|_| ContractCheckError::Overflow)?;
        check(F::MaxCost, self.max_cost == max_cost)?;
        if self.max_cost > spec.max_price {
            return Err(ContractCheckError::AboveMaxPrice {
                max_cost: self.max_cost,
                max_price: spec.max_price,
            });
        }
        Ok(spec)
    }

    /// Checks that this contract accepts `offer`, the provider's own signed offer: the offer
    /// verifies; `offer` is its digest; `provider`, `requester`, `job_id`, `price` and `max_cost`
    /// are the offer's. Checked in that order; returns the decoded offer. Whether the offer is
    /// still valid (`valid_until_ms`) is for the caller, which has a clock.
    pub fn check_offer(&self, offer: &Signed<Offer>) -> Result<Offer, ContractCheckError> {
        let document = offer.verify()?;
        self.check_offer_terms(offer, document)
    }

    /// [`check_offer`](Self::check_offer) of an offer this node signed itself and kept (the
    /// provider's offer book): the same checks but the signature, which this node made, and the
    /// signer must be the contract's provider. Never for an offer that came from elsewhere.
    pub fn check_own_offer(&self, offer: &Signed<Offer>) -> Result<Offer, ContractCheckError> {
        let document = offer.decode_unverified()?;
        same(
            ContractCheckError::OfferMismatch,
            ContractField::Provider,
            offer.signer() == self.provider,
        )?;
        self.check_offer_terms(offer, document)
    }

    fn check_offer_terms(
        &self,
        offer: &Signed<Offer>,
        document: Offer,
    ) -> Result<Offer, ContractCheckError> {
        use ContractField as F;
        let check = |field, equal| same(ContractCheckError::OfferMismatch, field, equal);
        check(F::Offer, self.offer == offer.digest())?;
        check(F::Provider, self.provider == document.provider)?;
        check(F::Requester, self.requester == document.requester)?;
        check(F::JobId, self.job_id == document.job_id)?;
        check(F::Price, self.price == document.price)?;
        check(F::MaxCost, self.max_cost == document.max_cost)?;
        Ok(document)
    }
}

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum FailureReason {
    FuelExhausted,
    Trap,
    Timeout,
    MemoryLimit,
    InvalidModule,
    OutputTooLarge,
    Cancelled,
    /// The module breaks the executor's complexity caps (functions, code size, locals).
    ModuleTooComplex,
}

impl FailureReason {
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::FuelExhausted => "fuel_exhausted",
            FailureReason::Trap => "trap",
            FailureReason::Timeout => "timeout",
            FailureReason::MemoryLimit => "memory_limit",
            FailureReason::InvalidModule => "invalid_module",
            FailureReason::OutputTooLarge => "output_too_large",
            FailureReason::Cancelled => "cancelled",
            FailureReason::ModuleTooComplex => "module_too_complex",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Outcome {
    /// The module ran to completion (`exit_code` 0 unless it called `proc_exit` with another).
    Succeeded {
        exit_code: i32,
        /// SHA-256 of stdout.
        output_hash: Hash32,
        output_len: u64,
    },
    Failed {
        reason: FailureReason,
        /// At most [`MAX_MESSAGE_BYTES`].
        message: String,
    },
}

/// Metered resource use of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Usage {
    /// Fuel consumed: deterministic, the basis of the cost.
    pub fuel: u64,
    pub wall_time_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
    /// Tokens of a model session (zero for a WebAssembly run): prompt and completion, summed
    /// over its usage receipts. Their sum is the session's `fuel`.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What the cluster's scheduler accounted for a run on a cluster (executor `slurm`).
    pub cluster: Option<ClusterUsage>,
}

/// A run on a cluster as its scheduler's accounting reports it. Fuel stays the deterministic
/// measure; these are what the cluster spent, and `cpu_ms` may be priced
/// ([`PriceTerms::per_cpu_second`](crate::money::PriceTerms)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ClusterUsage {
    /// The scheduler's job id (of the job array, for many tasks).
    pub job_id: u64,
    /// From the first task's start to the last task's end, milliseconds.
    pub elapsed_ms: u64,
    /// CPUs allocated, over all tasks.
    pub cpus: u32,
    /// CPU time used (user + system), over all tasks, milliseconds.
    pub cpu_ms: u64,
    /// The largest resident memory of any task, bytes.
    pub peak_memory_bytes: u64,
}

/// The provider's signed account of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Receipt {
    pub contract_id: ContractId,
    pub job_id: JobId,
    pub provider: NodeId,
    pub requester: NodeId,
    pub outcome: Outcome,
    pub usage: Usage,
    /// Must equal `contract.price.cost(usage)`.
    pub cost: Credits,
    pub finished_at_ms: u64,
}

impl Document for Receipt {
    const KIND: &'static str = "receipt";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.provider
    }
    fn check_bounds(&self) -> Result<(), BoundsError> {
        match &self.outcome {
            Outcome::Succeeded { .. } => Ok(()),
            Outcome::Failed { message, .. } => {
                BoundsError::check("message", message.len(), MAX_MESSAGE_BYTES)
            }
        }
    }
}

/// Both parties' agreement that a contract is paid: proposed (signed) by the provider with its
/// receipt, countersigned by the requester after checking the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Settlement {
    pub contract_id: ContractId,
    /// Digest of the signed receipt being settled.
    pub receipt: Hash32,
    pub provider: NodeId,
    pub requester: NodeId,
    /// Credits owed by the requester to the provider.
    pub cost: Credits,
    pub settled_at_ms: u64,
}

impl Document for Settlement {
    const KIND: &'static str = "settlement";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.provider
    }
}

impl CoSignedDocument for Settlement {
    fn countersigner(&self) -> NodeId {
        self.requester
    }
}

/// Why a contract ended without settlement, as its recorder saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AttemptFailure {
    /// The counterparty became unreachable.
    PeerLost,
    /// The deadline passed without a receipt.
    DeadlineMissed,
    /// The counterparty sent a document that failed verification or broke the contract.
    Misbehaved,
    /// Cancelled by the requester.
    Cancelled,
    /// The provider could not start the job (module or stdin mismatch, capacity gone).
    NotStarted,
}

/// A node's signed ledger statement that a contract failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FailureRecord {
    pub contract_id: ContractId,
    pub job_id: JobId,
    pub recorder: NodeId,
    pub counterparty: NodeId,
    pub failure: AttemptFailure,
    /// At most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    pub recorded_at_ms: u64,
}

impl Document for FailureRecord {
    const KIND: &'static str = "failure";
    const MAX_BYTES: usize = MAX_DOCUMENT_BYTES;
    fn signer(&self) -> NodeId {
        self.recorder
    }
    fn check_bounds(&self) -> Result<(), BoundsError> {
        BoundsError::check("message", self.message.len(), MAX_MESSAGE_BYTES)
    }
}

/// What a peer did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum MisbehaviourKind {
    BadSignature,
    ContractMismatch,
    UsageBeyondLimits,
    WrongCost,
    Malformed,
    Equivocation,
}

/// A node's signed record of a peer's misbehaviour, holding the offending bytes as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Evidence {
    pub reporter: NodeId,
    pub offender: NodeId,
    pub kind: MisbehaviourKind,
    /// At most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    /// The offending message, at most [`MAX_EVIDENCE_BYTES`].
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub observed_at_ms: u64,
}

impl Document for Evidence {
    const KIND: &'static str = "evidence";
    const MAX_BYTES: usize = MAX_EVIDENCE_BYTES + 2 * MAX_MESSAGE_BYTES;
    fn signer(&self) -> NodeId {
        self.reporter
    }
    fn check_bounds(&self) -> Result<(), BoundsError> {
        BoundsError::check("message", self.message.len(), MAX_MESSAGE_BYTES)?;
        BoundsError::check("payload", self.payload.len(), MAX_EVIDENCE_BYTES)
    }
}

/// Everything one party holds of one contract: the dual-signed contract and, once they exist, the
/// provider's receipt, the dual-signed settlement, and the holder's own failure record. Both
/// parties' ledgers hold exactly these documents for a contract, so this bundle is what they
/// exchange to reconcile (`MarketRequest::Reconcile`) and what a contract machine resumes from.
///
/// A contract is final for its holder when it holds a settlement or its own failure record,
/// never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ContractDocs {
    pub contract: CoSigned<Contract>,
    pub receipt: Option<Signed<Receipt>>,
    pub settlement: Option<CoSigned<Settlement>>,
    /// The holder's own statement that the contract failed.
    pub failure: Option<Signed<FailureRecord>>,
}

impl ContractDocs {
    /// The id of the contract: the digest of its requester-signed bytes.
    pub fn contract_id(&self) -> ContractId {
        ContractId(self.contract.digest())
    }
}

#[cfg(test)]
mod tests;
