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

use serde::{Deserialize, Serialize};

use crate::hash::{Hash32, hash_id};
use crate::identity::NodeId;
use crate::job::{JobId, JobSpec, Limits};
use crate::money::{Credits, PriceTerms};
use crate::signed::{CoSignedDocument, Document};

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

/// A requester asks a provider for a price. It travels over an authenticated connection, so the
/// provider checks `requester` against the connection's peer instead of a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct QuoteRequest {
    pub requester: NodeId,
    pub job_id: JobId,
    pub spec: JobSpec,
    pub requested_at_ms: u64,
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
}

/// The agreement to run one job: signed by the requester, countersigned by the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Contract {
    pub job_id: JobId,
    /// `JobSpec::hash` of the spec being run.
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
}
