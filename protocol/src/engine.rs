//! The contract engine: negotiation and settlement as two pure state machines, one per side,
//! that a node drives and that end every contract exactly once, the same way on both sides,
//! whatever crashes.
//!
//! ```text
//!            requester machine                                 provider machine
//!  start ─▶ Quoting ──Quote──────────────────────────────▶ (node policy: offer or decline)
//!           Proposing ──Propose────────────────────────────▶ checks ─▶ append contract ─┐
//!           ◀─────────────────────────────────Countersigned ◀───────────────────────────┘
//!  append contract ─▶ Starting ──Execute───────────────────▶ Ready ─▶ Running (run)
//!           Running ◀─────────────────────────────Accepted                 │ run ends
//!                                                            append receipt (+ output)
//!  check, countersign, append receipt + settlement ◀──Deliver── Delivering (until answered)
//!           Ended ──Reconciled(settlement)─────────────────▶ append settlement ─▶ Ended
//! ```
//!
//! # Who decides
//! The **requester decides** how a signed contract ends: it settles by countersigning the
//! provider's settlement, or fails the contract with its own signed [`FailureRecord`]
//! (deadline passed, provider lost, misbehaviour). The **provider reports**: it runs the job,
//! records its receipt, and delivers until the requester answers with its decision, which it
//! then records too. A provider ends a contract on its own only when it holds no receipt and the
//! deadline has passed: the requester cannot settle without a receipt, and past the deadline it
//! fails the contract as well, so both still end the same way.
//!
//! # Durable state is the ledger
//! A machine's durable state is exactly the documents its node holds of the contract in its
//! ledger ([`ContractDocs`]): the contract, the receipt, the settlement, its own failure. Every
//! step that must survive a crash is an [`Effect::Append`] of those documents (and, with them,
//! the job's output), after which the driver reports [`Durable`](requester::Input::Durable) or
//! [`AppendFailed`](requester::Input::AppendFailed). Nothing is sent, answered or reported that
//! depends on an append before that append is durable. After a crash a node rebuilds each open
//! contract's machine from its documents (`resume`), and the machine drives it on: a requester
//! asks for the run again or ends it at its deadline, a provider delivers its receipt again or
//! tells the requester it lost the run. Final contracts are rebuilt on demand (`ended`) to answer
//! a counterparty that still asks about them.
//!
//! # Each signature is verified once
//! A machine verifies every signature of the counterparty before it uses the document, and
//! none it made or verified already: a co-signed document whose first half is this node's own
//! (its proposal, its settlement half) has only the countersignature verified; a half it has
//! just verified is countersigned without verifying it again; the provider's own offer and
//! receipt are checked by their terms. What it appends is a [`CheckedBody`]: the ledger takes it
//! without verifying it again. One remote contract costs [`VERIFIES_PER_CONTRACT`]
//! `verify_strict` and [`SIGNS_PER_CONTRACT`] signatures on its two nodes (a test counts them).
//!
//! # Reconciling
//! [`MarketRequest::Reconcile`](crate::wire::MarketRequest::Reconcile) carries what one side
//! holds; the other appends the documents it lacks (after checking them), ends the contract the
//! same way when the sender has ended it, and answers with what it holds. A contract a node never
//! recorded (its proposal's answer was lost) is adopted this way and ended as failed on both
//! sides. A failure decided by one side alone is announced with [`Append::notify`]: the driver
//! keeps a durable note and sends `Reconcile` until the counterparty answers.
//!
//! # Driving a machine
//! A driver feeds one [`requester::Input`] or [`provider::Input`] at a time with the current
//! time and the node's key ([`Context`]), and performs the returned [`Effect`]s in order. An
//! [`Effect::Append`] is always the last effect of a step: the driver makes it durable and feeds
//! the result back at once, before any other input. Inbound requests get exactly one answer, the
//! first [`Effect::Respond`]; a driver that got none answers "unavailable, try again". Timers
//! come from `wake_at()`, polled after every step. The machines never perform I/O, read a clock
//! or spawn anything, so every interleaving of messages, timeouts and crashes can be simulated
//! (see the tests).

pub mod checks;
mod held;
pub mod provider;
pub mod requester;

#[cfg(test)]
mod tests;

pub use held::{Held, Learned, Status};

use crate::identity::{Keypair, NodeId};
use crate::job::{JobId, JobSpec, Limits};
use crate::ledger::{CheckedBody, EntryBody};
use crate::negotiation::{
    AttemptFailure, ContractDocs, ContractId, Decline, DeclineCode, Evidence, FailureRecord,
    MAX_EVIDENCE_BYTES, MAX_MESSAGE_BYTES, MisbehaviourKind, Outcome, Receipt, Usage,
};
use crate::signed::{SignError, Signed};
use crate::wire::{ErrorCode, MarketRequest, MarketResponse, WireError};

/// What a step needs from its node: the key to sign with and the time.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub keypair: &'a Keypair,
    pub now_ms: u64,
}

impl Context<'_> {
    pub fn me(&self) -> NodeId {
        self.keypair.node_id()
    }
}

/// What a machine asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a request to the counterparty; its answer comes back as an `Answer` input.
    Send(Outbound),
    /// Answer the inbound request being handled.
    Respond(MarketResponse),
    /// Make these durable; report `Durable` or `AppendFailed` before anything else.
    Append(Append),
    /// The counterparty sent something that does not verify: a strike at the network level.
    Penalize(String),
    /// Provider: run the job.
    Run(RunOrder),
    /// Provider: stop the run, its result is not wanted any more.
    StopRun,
    /// Requester: this attempt is over.
    Finished(AttemptEnd),
    /// Something that should not happen did (a document this node built does not sign): log it.
    Fault(String),
}

/// A request for the counterparty.
#[allow(clippy::large_enum_variant)] // built once per request; the request moves on as it is
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Request(MarketRequest),
    /// `MarketRequest::Execute` of this contract: the driver attaches the spec bytes, the module
    /// and the stdin, which only the job's owner holds.
    Execute(ContractId),
}

impl Outbound {
    /// Which request this is, to pair its answer.
    pub fn kind(&self) -> RequestKind {
        match self {
            Outbound::Execute(_) => RequestKind::Execute,
            Outbound::Request(request) => RequestKind::of(request),
        }
    }
}

/// The kinds of market requests, to pair answers with what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Quote,
    Propose,
    Execute,
    Deliver,
    Reconcile,
}

impl RequestKind {
    pub fn of(request: &MarketRequest) -> RequestKind {
        match request {
            MarketRequest::Quote(_) => RequestKind::Quote,
            MarketRequest::Propose(_) => RequestKind::Propose,
            MarketRequest::Execute(_) => RequestKind::Execute,
            MarketRequest::Deliver(_) => RequestKind::Deliver,
            MarketRequest::Reconcile(_) => RequestKind::Reconcile,
        }
    }
}

/// Entries to append in one barrier, with what must become durable with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// Every signature in them was verified by this machine before it used the document, or
    /// made by it: the ledger appends them without verifying them again.
    pub entries: Vec<CheckedBody>,
    /// The job's output, stored under the contract id before the entries.
    pub output: Option<Vec<u8>>,
    /// Keep a durable note that the counterparty must hear of this contract's end, and send it
    /// `Reconcile` until it answers.
    pub notify: bool,
}

/// What a provider's driver runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOrder {
    pub contract_id: ContractId,
    pub spec: JobSpec,
    pub module: Vec<u8>,
    pub stdin: Vec<u8>,
    pub limits: Limits,
}

/// How a run ended, as the executor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: Outcome,
    pub usage: Usage,
    pub output: Vec<u8>,
}

/// How one attempt to place a job with one provider ended.
#[allow(clippy::large_enum_variant)] // one per attempt
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Settled: the job ran (its receipt may still report a failed run) and is paid.
    Settled {
        contract_id: ContractId,
        receipt: Receipt,
        output: Vec<u8>,
    },
    /// The contract ended without settlement; this node's failure record says why.
    Failed {
        contract_id: ContractId,
        failure: AttemptFailure,
        message: String,
    },
    /// No contract: the provider declined (a signed decline with its reason).
    Declined {
        contract_id: Option<ContractId>,
        code: DeclineCode,
        message: String,
    },
    /// No contract: the provider's answer was invalid or broke the quote.
    Rejected {
        contract_id: Option<ContractId>,
        message: String,
    },
    /// No contract: the provider was unreachable.
    Unreachable {
        contract_id: Option<ContractId>,
        message: String,
    },
    /// No contract: the provider answered with a protocol error.
    Refused {
        contract_id: Option<ContractId>,
        code: ErrorCode,
        message: String,
    },
    /// This node could not record the contract: its ledger refused the append.
    LedgerFailed { message: String },
    /// The submitter cancelled the job before any contract.
    Cancelled { contract_id: Option<ContractId> },
}

impl AttemptEnd {
    pub fn contract_id(&self) -> Option<ContractId> {
        match self {
            AttemptEnd::Settled { contract_id, .. } | AttemptEnd::Failed { contract_id, .. } => {
                Some(*contract_id)
            }
            AttemptEnd::Declined { contract_id, .. }
            | AttemptEnd::Rejected { contract_id, .. }
            | AttemptEnd::Unreachable { contract_id, .. }
            | AttemptEnd::Refused { contract_id, .. }
            | AttemptEnd::Cancelled { contract_id } => *contract_id,
            AttemptEnd::LedgerFailed { .. } => None,
        }
    }
}

/// `verify_strict` calls one remote contract costs its two parties from quote to settlement,
/// ledger appends included: each checks each of the other's signatures once (requester: the
/// offer, the countersignature, the receipt, the settlement half; provider: the proposal, the
/// settlement's countersignature). Pinned by a test that counts them.
pub const VERIFIES_PER_CONTRACT: u32 = 6;
/// Signatures one remote contract costs its two parties: offer, contract, countersignature,
/// receipt, settlement half, countersignature. Pinned by the same test. (A provider whose
/// contract append fails signs a decline on top.)
pub const SIGNS_PER_CONTRACT: u32 = 6;

/// How long an append that failed waits before it is tried again (a contract's end must be
/// recorded eventually; the ledger refuses while its disk is full).
pub const APPEND_RETRY_MS: u64 = 1_000;

/// Cuts `message` to the protocol's cap on a character boundary.
pub fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.get(..end).unwrap_or_default().to_owned()
}

/// This node's signed statement that contract `held` failed.
fn sign_failure(
    ctx: &Context<'_>,
    held: &Held,
    counterparty: NodeId,
    failure: AttemptFailure,
    message: &str,
) -> Result<Signed<FailureRecord>, SignError> {
    let record = FailureRecord {
        contract_id: held.id(),
        job_id: held.contract().job_id,
        recorder: ctx.me(),
        counterparty,
        failure,
        message: truncate(message),
        recorded_at_ms: ctx.now_ms,
    };
    Signed::sign(&record, ctx.keypair)
}

/// An error answer.
fn wire_error(code: ErrorCode, message: &str) -> MarketResponse {
    MarketResponse::Error(WireError::new(code, message))
}

/// "Try again later": this contract's ledger step is not done.
fn busy() -> Effect {
    Effect::Respond(wire_error(
        ErrorCode::Unavailable,
        "this contract's ledger entry is not durable yet; try again",
    ))
}

/// The answer that says what this node holds.
fn reconciled(held: &Held) -> Effect {
    Effect::Respond(MarketResponse::Reconciled(Box::new(held.docs())))
}

/// Checks an unknown contract a counterparty holds, and what it holds of it, so this node can
/// adopt it: the contract must carry both parties' valid signatures, this node must be one of
/// them and `from` the other. Returns the held contract and what the sender's documents teach.
fn adopt(
    ctx: &Context<'_>,
    from: NodeId,
    theirs: &ContractDocs,
    role: Role,
) -> Result<(Held, Learned), Vec<Effect>> {
    let refused = |error: String| {
        vec![
            Effect::Penalize(format!("reconcile: {error}")),
            Effect::Respond(wire_error(ErrorCode::BadRequest, &error)),
        ]
    };
    let held =
        Held::checked(&theirs.contract).map_err(|error| refused(format!("contract: {error}")))?;
    let contract = held.contract();
    let (me, parties) = (ctx.me(), (contract.requester, contract.provider));
    if parties != (me, from) && parties != (from, me) {
        return Err(refused(
            "the contract is not between this node and the sender".into(),
        ));
    }
    let mine = match role {
        Role::Requester => contract.requester == me,
        Role::Provider => contract.provider == me,
    };
    if !mine {
        let message = format!("this node is not the {} of that contract", role.name());
        return Err(vec![Effect::Respond(wire_error(
            ErrorCode::BadRequest,
            &message,
        ))]);
    }
    let learned = held
        .learn(theirs, from)
        .map_err(|error| refused(format!("documents: {error}")))?;
    Ok((held, learned))
}

/// The side of a contract a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Requester,
    Provider,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Provider => "provider",
        }
    }
}

/// How this node records a contract's end that it learned from its `counterparty` (named
/// "requester" or "provider" in the message): the counterparty's own failure, mirrored, or as
/// never started when the counterparty asked about a contract this node never recorded.
fn mirrored_failure(counterparty: &str, learned: &Learned) -> (AttemptFailure, String) {
    match &learned.their_failure {
        Some(record) => (
            record.failure,
            truncate(&format!("ended by the {counterparty}: {}", record.message)),
        ),
        None => (
            AttemptFailure::NotStarted,
            format!("this node never recorded the contract; the {counterparty} asked about it"),
        ),
    }
}

/// The entries for what was learned from the counterparty: receipt, then settlement.
/// [`Held::learn`] verified both and checked that they name the contract's parties.
fn learned_entries(held: &Held, learned: &Learned) -> Vec<CheckedBody> {
    let mut entries = Vec::new();
    if let Some((receipt, _)) = &learned.receipt {
        entries.push(contract_entry(held, EntryBody::Receipt(receipt.clone())));
    }
    if let Some(settlement) = &learned.settlement {
        entries.push(contract_entry(
            held,
            EntryBody::Settlement(settlement.clone()),
        ));
    }
    entries
}

/// A document of `held`'s contract (the contract, a receipt or a settlement naming the
/// contract's parties) that this machine has verified or signed itself: either party records it.
fn contract_entry(held: &Held, body: EntryBody) -> CheckedBody {
    let contract = held.contract();
    CheckedBody::vouched(body, [contract.requester, contract.provider])
}

/// This node's own signed statement (its failure record, its evidence): it records it.
fn own_entry(ctx: &Context<'_>, body: EntryBody) -> CheckedBody {
    CheckedBody::vouched(body, [ctx.me(); 2])
}

/// This node's signed evidence that `offender` misbehaved, holding the offending bytes.
fn sign_evidence(
    ctx: &Context<'_>,
    offender: NodeId,
    kind: MisbehaviourKind,
    message: &str,
    mut payload: Vec<u8>,
) -> Result<Signed<Evidence>, String> {
    payload.truncate(MAX_EVIDENCE_BYTES);
    let evidence = Evidence {
        reporter: ctx.me(),
        offender,
        kind,
        message: truncate(message),
        payload,
        observed_at_ms: ctx.now_ms,
    };
    Signed::sign(&evidence, ctx.keypair).map_err(|error| format!("cannot sign evidence: {error}"))
}

/// A provider's signed refusal of `job_id` (of its quote when `contract_id` is `None`, else of
/// that proposed contract).
pub fn sign_decline(
    ctx: &Context<'_>,
    requester: NodeId,
    job_id: JobId,
    contract_id: Option<ContractId>,
    code: DeclineCode,
    message: &str,
) -> Result<Signed<Decline>, SignError> {
    let decline = Decline {
        provider: ctx.me(),
        requester,
        job_id,
        contract_id,
        code,
        message: truncate(message),
        declined_at_ms: ctx.now_ms,
    };
    Signed::sign(&decline, ctx.keypair)
}
