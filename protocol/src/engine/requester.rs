//! The requester's machine: one attempt to place a job with one provider, from the quote to the
//! contract's end, and the requester's side of that contract whenever it is asked about later.
//!
//! ```text
//!  Quoting ─offer─▶ Proposing ─countersigned─▶ [append contract] ─▶ Starting ─accepted─▶ Running
//!     │ decline / invalid / unreachable              │                  │  delivery checks out:
//!     ▼                                              ▼                  ▼  [append receipt +
//!   Ended (no contract)                      Ended (ledger failed)        settlement + output]
//!                                                                       │  deadline, provider
//!                                                                       │  lost, misbehaviour:
//!                                                                       ▼  [append failure]
//!                                                                     Ended
//! ```
//!
//! The requester decides: it settles a delivery that checks out, and fails the contract when
//! the deadline passes, the provider is lost, or the provider breaks the contract. Once ended it
//! keeps answering with its decision (a delivery repeated after a crash gets the same answer).

use super::checks::{self, CheckError};
use super::{
    APPEND_RETRY_MS, Append, AttemptEnd, Context, Effect, Held, Learned, Outbound, RequestKind,
    Role, Status, adopt, busy, contract_entry, learned_entries, mirrored_failure, own_entry,
    reconciled, sign_evidence, sign_failure, truncate, wire_error,
};
use crate::codec;
use crate::identity::NodeId;
use crate::job::{JobId, JobSpec};
use crate::ledger::{CheckedBody, EntryBody};
use crate::negotiation::{
    AttemptFailure, Contract, ContractDocs, ContractId, DeclineCode, MisbehaviourKind, Offer,
    QuoteRequest, Receipt,
};
use crate::signed::{CoSigned, Signed};
use crate::wire::{Delivery, ErrorCode, MarketRequest, MarketResponse};

/// Longest wait between two attempts to send `Execute` to a provider that did not answer.
const MAX_EXECUTE_BACKOFF_MS: u64 = 5_000;
const FIRST_EXECUTE_BACKOFF_MS: u64 = 250;

/// The job an attempt places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTerms {
    pub job_id: JobId,
    pub spec: JobSpec,
    /// The submitter's nonce: part of the job id.
    pub nonce: u128,
    /// Added to the job's time limit for transfer and queueing: the contract's deadline.
    pub deadline_grace_ms: u64,
}

/// What happens to a requester's attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The answer to a request this machine sent (`Err`: no answer, with why).
    Answer {
        to: RequestKind,
        answer: Result<MarketResponse, String>,
    },
    /// A request from a peer about this contract (a delivery, or reconciliation).
    Inbound {
        from: NodeId,
        request: MarketRequest,
    },
    /// The last [`Effect::Append`] is durable.
    Durable,
    /// The last [`Effect::Append`] failed; nothing of it may be relied on.
    AppendFailed(String),
    /// The time in the context reached `wake_at()`.
    Tick,
    /// The provider has been unreachable for the driver's grace period.
    PeerLost,
    /// The submitter cancelled the job: a contract is failed as `Cancelled` (the provider is
    /// told, and stops the run); an attempt without one ends. A proposal in flight is waited for
    /// and its contract, once recorded, failed the same way.
    Cancel,
}

// States are moved a few times per attempt; boxing their documents would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum State {
    Quoting,
    Proposing {
        proposal: Signed<Contract>,
    },
    /// The contract is durable; `Execute` was sent, or is to be sent again at `retry_at`.
    Starting {
        held: Held,
        retry_at: Option<u64>,
        backoff_ms: u64,
    },
    /// The provider accepted the run; waiting for its delivery.
    Running {
        held: Held,
    },
    /// Over; `held` is `None` when no contract came to be.
    Ended {
        held: Option<Held>,
    },
}

/// An append in flight and what follows it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Pending {
    /// The countersigned contract: then `Execute`.
    Contract { held: Held },
    /// A delivery that checked out: then the answer and the end of the attempt.
    Settle {
        held: Held,
        prior: Held,
        receipt: Receipt,
        output: Vec<u8>,
        respond: bool,
    },
    /// Documents this node must record (its failure, or documents learned about the contract):
    /// then the end of the attempt, if `end`. Retried until durable: a decided end, and what a
    /// counterparty showed, must be recorded.
    Record {
        held: Held,
        append: Append,
        end: Option<AttemptEnd>,
        respond: bool,
        retry_at: Option<u64>,
    },
    /// Evidence against a provider before any contract: then the end.
    Evidence { end: AttemptEnd },
}

/// The requester's side of one contract attempt.
#[derive(Debug, Clone)]
pub struct Requester {
    provider: NodeId,
    job: Option<JobTerms>,
    contract_nonce: u64,
    state: State,
    pending: Option<Pending>,
    /// `Finished` was emitted (or is not wanted: rebuilt to answer about an ended contract).
    finished: bool,
    /// The submitter cancelled the job.
    cancelled: bool,
}

impl Requester {
    /// Starts an attempt: asks `provider` for a quote.
    pub fn start(
        ctx: &Context<'_>,
        job: JobTerms,
        provider: NodeId,
        contract_nonce: u64,
    ) -> (Requester, Vec<Effect>) {
        let mut machine = Requester {
            provider,
            job: None,
            contract_nonce,
            state: State::Quoting,
            pending: None,
            finished: false,
            cancelled: false,
        };
        let quote = QuoteRequest::new(ctx.me(), &job.spec, job.nonce, ctx.now_ms);
        machine.job = Some(job);
        let effects = match quote {
            Ok(quote) => vec![Effect::Send(Outbound::Request(MarketRequest::Quote(quote)))],
            Err(error) => {
                let mut out = vec![Effect::Fault(format!("cannot encode the spec: {error}"))];
                machine.end(
                    AttemptEnd::Rejected {
                        contract_id: None,
                        message: format!("cannot encode the spec: {error}"),
                    },
                    &mut out,
                );
                out
            }
        };
        (machine, effects)
    }

    /// Resumes an open contract from this node's ledger after a restart: asks the provider to
    /// run it (again) while its deadline allows, else ends it. `job` is `None` when the job's
    /// record is gone, which ends the contract.
    pub fn resume(
        ctx: &Context<'_>,
        held: Held,
        job: Option<JobTerms>,
    ) -> (Requester, Vec<Effect>) {
        let mut machine = Requester::new_with(held.clone(), job);
        let mut out = Vec::new();
        match held.status() {
            Status::Settled | Status::Failed => {
                machine.state = State::Ended { held: Some(held) };
                machine.finished = true;
            }
            // The provider holds a receipt it will deliver again.
            Status::Delivered => machine.state = State::Running { held },
            Status::Signed => {
                if machine.job.is_none() {
                    machine.fail(
                        ctx,
                        held,
                        AttemptFailure::NotStarted,
                        "the job's record is lost; the contract cannot run",
                        Vec::new(),
                        true,
                        false,
                        &mut out,
                    );
                } else if ctx.now_ms > held.contract().deadline_ms {
                    machine.fail(
                        ctx,
                        held,
                        AttemptFailure::DeadlineMissed,
                        "the deadline passed while this node was down",
                        Vec::new(),
                        true,
                        false,
                        &mut out,
                    );
                } else {
                    let id = held.id();
                    machine.state = State::Starting {
                        held,
                        retry_at: None,
                        backoff_ms: FIRST_EXECUTE_BACKOFF_MS,
                    };
                    out.push(Effect::Send(Outbound::Execute(id)));
                }
            }
        }
        (machine, out)
    }

    /// A contract this node has ended, rebuilt to answer about it.
    pub fn ended(held: Held) -> Requester {
        let mut machine = Requester::new_with(held.clone(), None);
        machine.state = State::Ended { held: Some(held) };
        machine.finished = true;
        machine
    }

    /// A `Reconcile` from `from` about a contract this node never recorded (the answer to its
    /// proposal was lost): checks it, then records it ended the way the provider ended it, or as
    /// failed (this node never ran it and no longer waits for it). `None` with an answer when the
    /// documents do not check out or this node is not the requester.
    pub fn adopt(
        ctx: &Context<'_>,
        from: NodeId,
        theirs: &ContractDocs,
    ) -> (Option<Requester>, Vec<Effect>) {
        let (held, learned) = match adopt(ctx, from, theirs, Role::Requester) {
            Ok(adopted) => adopted,
            Err(effects) => return (None, effects),
        };
        let mut machine = Requester::new_with(held.clone(), None);
        machine.finished = true;
        let mut out = Vec::new();
        machine.conclude(ctx, held, &learned, true, true, &mut out);
        (Some(machine), out)
    }

    fn new_with(held: Held, job: Option<JobTerms>) -> Requester {
        Requester {
            provider: held.contract().provider,
            job,
            contract_nonce: held.contract().nonce,
            state: State::Ended { held: Some(held) },
            pending: None,
            finished: false,
            cancelled: false,
        }
    }

    pub fn provider(&self) -> NodeId {
        self.provider
    }

    /// The contract's id, once a proposal is signed.
    pub fn contract_id(&self) -> Option<ContractId> {
        match &self.state {
            State::Quoting => None,
            State::Proposing { proposal } => Some(ContractId(proposal.digest())),
            State::Starting { held, .. } | State::Running { held } => Some(held.id()),
            State::Ended { held } => held.as_ref().map(Held::id),
        }
    }

    /// The documents held, once the contract is signed.
    pub fn held(&self) -> Option<&Held> {
        match &self.state {
            State::Starting { held, .. } | State::Running { held } => Some(held),
            State::Ended { held } => held.as_ref(),
            State::Quoting | State::Proposing { .. } => None,
        }
    }

    /// When to feed [`Input::Tick`].
    pub fn wake_at(&self) -> Option<u64> {
        if let Some(pending) = &self.pending {
            return match pending {
                Pending::Record { retry_at, .. } => *retry_at,
                _ => None,
            };
        }
        match &self.state {
            State::Starting { held, retry_at, .. } => {
                let deadline = held.contract().deadline_ms.saturating_add(1);
                Some(retry_at.map_or(deadline, |retry| retry.min(deadline)))
            }
            State::Running { held } => Some(held.contract().deadline_ms.saturating_add(1)),
            _ => None,
        }
    }

    /// Whether the driver should watch the provider's connection (and report [`Input::PeerLost`]).
    pub fn watches_peer(&self) -> bool {
        self.pending.is_none()
            && matches!(self.state, State::Starting { .. } | State::Running { .. })
    }

    /// Whether the attempt is over and nothing is in flight: the driver may drop the machine.
    pub fn is_ended(&self) -> bool {
        self.pending.is_none() && matches!(self.state, State::Ended { .. })
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, ctx: &Context<'_>, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Durable => self.on_durable(ctx, &mut out),
            Input::Cancel => self.on_cancel(ctx, &mut out),
            Input::AppendFailed(message) => self.on_append_failed(ctx, &message, &mut out),
            input if self.pending.is_some() => self.while_pending(ctx, input, &mut out),
            Input::Answer { to, answer } => self.on_answer(ctx, to, answer, &mut out),
            Input::Inbound { from, request } => self.on_inbound(ctx, from, request, &mut out),
            Input::Tick => self.on_tick(ctx, &mut out),
            Input::PeerLost => self.on_peer_lost(ctx, &mut out),
        }
        out
    }

    fn end(&mut self, end: AttemptEnd, out: &mut Vec<Effect>) {
        let held = self.held().cloned();
        self.state = State::Ended { held };
        if !self.finished {
            self.finished = true;
            out.push(Effect::Finished(end));
        }
    }

    fn while_pending(&mut self, ctx: &Context<'_>, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Inbound { .. } => out.push(busy()),
            Input::Tick => {
                if let Some(Pending::Record {
                    append, retry_at, ..
                }) = &mut self.pending
                    && retry_at.is_some_and(|at| at <= ctx.now_ms)
                {
                    *retry_at = None;
                    out.push(Effect::Append(append.clone()));
                }
            }
            // Answers to requests sent before the decision are moot now.
            _ => {}
        }
    }

    fn on_cancel(&mut self, ctx: &Context<'_>, out: &mut Vec<Effect>) {
        self.cancelled = true;
        if self.pending.is_some() {
            // Once the append is durable (a contract: failed then).
            return;
        }
        match &self.state {
            State::Quoting => self.end(AttemptEnd::Cancelled { contract_id: None }, out),
            State::Starting { held, .. } | State::Running { held } => {
                let held = held.clone();
                self.fail(
                    ctx,
                    held,
                    AttemptFailure::Cancelled,
                    "cancelled by the submitter",
                    Vec::new(),
                    true,
                    false,
                    out,
                );
            }
            // The answer to the proposal decides: a contract is failed once recorded.
            State::Proposing { .. } | State::Ended { .. } => {}
        }
    }

    fn on_durable(&mut self, ctx: &Context<'_>, out: &mut Vec<Effect>) {
        let Some(pending) = self.pending.take() else {
            out.push(Effect::Fault(
                "durable reported with no append in flight".into(),
            ));
            return;
        };
        match pending {
            Pending::Contract { held } => {
                let id = held.id();
                self.state = State::Starting {
                    held,
                    retry_at: None,
                    backoff_ms: FIRST_EXECUTE_BACKOFF_MS,
                };
                if self.cancelled {
                    self.on_cancel(ctx, out);
                } else {
                    out.push(Effect::Send(Outbound::Execute(id)));
                }
            }
            Pending::Settle {
                held,
                receipt,
                output,
                respond,
                ..
            } => {
                if respond {
                    out.push(reconciled(&held));
                }
                let contract_id = held.id();
                self.state = State::Ended { held: Some(held) };
                self.end(
                    AttemptEnd::Settled {
                        contract_id,
                        receipt,
                        output,
                    },
                    out,
                );
            }
            Pending::Record {
                held, end, respond, ..
            } => {
                if respond {
                    out.push(reconciled(&held));
                }
                self.state = State::Ended { held: Some(held) };
                if let Some(end) = end {
                    self.end(end, out);
                }
            }
            Pending::Evidence { end } => self.end(end, out),
        }
    }

    fn on_append_failed(&mut self, ctx: &Context<'_>, message: &str, out: &mut Vec<Effect>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match pending {
            Pending::Contract { .. } => {
                // Nothing was promised: the provider may hold the contract, and will end it at
                // its deadline and tell this node, which adopts it then.
                self.state = State::Ended { held: None };
                self.end(
                    AttemptEnd::LedgerFailed {
                        message: format!("cannot record the contract: {message}"),
                    },
                    out,
                );
            }
            Pending::Settle { prior, respond, .. } => {
                // Not settled: the provider delivers again later.
                if respond {
                    out.push(busy());
                }
                self.state = State::Running { held: prior };
            }
            Pending::Record {
                held,
                append,
                end,
                respond,
                ..
            } => {
                if respond {
                    out.push(busy());
                }
                self.pending = Some(Pending::Record {
                    held,
                    append,
                    end,
                    respond: false,
                    retry_at: Some(ctx.now_ms.saturating_add(APPEND_RETRY_MS)),
                });
            }
            Pending::Evidence { end } => self.end(end, out),
        }
    }

    fn on_answer(
        &mut self,
        ctx: &Context<'_>,
        to: RequestKind,
        answer: Result<MarketResponse, String>,
        out: &mut Vec<Effect>,
    ) {
        match (&self.state, to) {
            (State::Quoting, RequestKind::Quote) => self.on_quote_answer(ctx, answer, out),
            (State::Proposing { .. }, RequestKind::Propose) => {
                self.on_propose_answer(ctx, answer, out);
            }
            (State::Starting { .. }, RequestKind::Execute) => {
                self.on_execute_answer(ctx, answer, out);
            }
            (_, RequestKind::Reconcile) => {
                if let Ok(MarketResponse::Reconciled(theirs)) = answer {
                    self.reconcile_with(ctx, &theirs, false, out);
                }
            }
            // Stale: an answer to something this machine has moved past.
            _ => {}
        }
    }

    fn on_quote_answer(
        &mut self,
        ctx: &Context<'_>,
        answer: Result<MarketResponse, String>,
        out: &mut Vec<Effect>,
    ) {
        let Some(job) = self.job.clone() else {
            return;
        };
        let offer = match answer {
            Err(message) => {
                return self.end(
                    AttemptEnd::Unreachable {
                        contract_id: None,
                        message,
                    },
                    out,
                );
            }
            Ok(MarketResponse::Offer(offer)) => offer,
            Ok(other) => return self.refused(ctx, None, other, out),
        };
        let document = match offer.verify() {
            Ok(document) => document,
            Err(error) => {
                out.push(Effect::Penalize(format!("offer: {error}")));
                return self.end(
                    AttemptEnd::Rejected {
                        contract_id: None,
                        message: format!("offer: {error}"),
                    },
                    out,
                );
            }
        };
        if document.valid_until_ms <= ctx.now_ms {
            // Late, or the clocks differ: not a breach by the provider.
            return self.end(
                AttemptEnd::Rejected {
                    contract_id: None,
                    message: "the offer expired before it arrived".into(),
                },
                out,
            );
        }
        if !self.offer_fits(ctx, &job, &document) {
            let payload = codec::encode(&offer).unwrap_or_default();
            return self.evidence(
                ctx,
                MisbehaviourKind::ContractMismatch,
                "offer does not match the quote",
                payload,
                AttemptEnd::Rejected {
                    contract_id: None,
                    message: "offer does not match the quote".into(),
                },
                out,
            );
        }
        let contract = match job.spec.hash() {
            Ok(job_hash) => Contract {
                job_id: job.job_id,
                job_hash,
                module_hash: job.spec.module_hash,
                stdin_hash: job.spec.stdin_hash,
                requester: ctx.me(),
                provider: self.provider,
                offer: offer.digest(),
                price: document.price,
                max_cost: document.max_cost,
                limits: job.spec.limits,
                deadline_ms: ctx
                    .now_ms
                    .saturating_add(job.spec.limits.wall_time_ms)
                    .saturating_add(job.deadline_grace_ms),
                nonce: self.contract_nonce,
                created_at_ms: ctx.now_ms,
            },
            Err(error) => {
                out.push(Effect::Fault(format!("cannot hash the spec: {error}")));
                return self.end(
                    AttemptEnd::Rejected {
                        contract_id: None,
                        message: format!("cannot hash the spec: {error}"),
                    },
                    out,
                );
            }
        };
        match Signed::sign(&contract, ctx.keypair) {
            Ok(proposal) => {
                self.state = State::Proposing {
                    proposal: proposal.clone(),
                };
                out.push(Effect::Send(Outbound::Request(MarketRequest::Propose(
                    proposal,
                ))));
            }
            Err(error) => {
                out.push(Effect::Fault(format!("cannot sign the contract: {error}")));
                self.end(
                    AttemptEnd::Rejected {
                        contract_id: None,
                        message: format!("cannot sign the contract: {error}"),
                    },
                    out,
                );
            }
        }
    }

    /// The offer's checks: it is the provider's, for this node and job, within the job's price,
    /// and its max cost follows its own price terms for the job's limits (expiry is checked
    /// apart: an expired offer is no breach).
    fn offer_fits(&self, ctx: &Context<'_>, job: &JobTerms, offer: &Offer) -> bool {
        offer.provider == self.provider
            && offer.requester == ctx.me()
            && offer.job_id == job.job_id
            && offer.max_cost <= job.spec.max_price
            && offer.price.max_cost(&job.spec.limits).ok() == Some(offer.max_cost)
    }

    /// Any answer but the one hoped for, before a contract exists.
    fn refused(
        &mut self,
        ctx: &Context<'_>,
        contract_id: Option<ContractId>,
        answer: MarketResponse,
        out: &mut Vec<Effect>,
    ) {
        let job_id = self.job.as_ref().map(|job| job.job_id);
        let end = match answer {
            MarketResponse::Decline(decline) => {
                let checked = job_id
                    .ok_or(CheckError::Mismatch {
                        document: "decline",
                        field: "job_id",
                    })
                    .and_then(|job_id| {
                        checks::check_decline(
                            &decline,
                            self.provider,
                            ctx.me(),
                            job_id,
                            contract_id,
                        )
                    });
                match checked {
                    Ok(decline) => AttemptEnd::Declined {
                        contract_id,
                        code: decline.code,
                        message: decline.message,
                    },
                    Err(error) => {
                        if let CheckError::Verify(_) = error {
                            out.push(Effect::Penalize(format!("decline: {error}")));
                        }
                        AttemptEnd::Rejected {
                            contract_id,
                            message: format!("invalid decline: {error}"),
                        }
                    }
                }
            }
            // Its queues are full: like a busy decline.
            MarketResponse::Error(error) if error.code == ErrorCode::Unavailable => {
                AttemptEnd::Declined {
                    contract_id,
                    code: DeclineCode::Busy,
                    message: error.message,
                }
            }
            MarketResponse::Error(error) => AttemptEnd::Refused {
                contract_id,
                code: error.code,
                message: error.message,
            },
            _ => AttemptEnd::Rejected {
                contract_id,
                message: "an answer out of protocol".into(),
            },
        };
        self.end(end, out);
    }

    fn on_propose_answer(
        &mut self,
        ctx: &Context<'_>,
        answer: Result<MarketResponse, String>,
        out: &mut Vec<Effect>,
    ) {
        let State::Proposing { proposal } = &self.state else {
            return;
        };
        let proposal = proposal.clone();
        let id = ContractId(proposal.digest());
        let cosigned = match answer {
            // The provider may have countersigned and recorded it; if so it ends the contract
            // at its deadline and tells this node, which adopts it then.
            Err(message) => {
                return self.end(
                    AttemptEnd::Unreachable {
                        contract_id: Some(id),
                        message,
                    },
                    out,
                );
            }
            Ok(MarketResponse::Countersigned(cosigned)) => cosigned,
            Ok(other) => return self.refused(ctx, Some(id), other, out),
        };
        match checks::check_countersigned(&proposal, &cosigned) {
            Ok(contract) => {
                let held = Held::from_parts(cosigned.clone(), contract);
                let entry = contract_entry(&held, EntryBody::Contract(cosigned));
                self.pending = Some(Pending::Contract { held });
                out.push(Effect::Append(Append {
                    entries: vec![entry],
                    output: None,
                    notify: false,
                }));
            }
            Err(error @ CheckError::Verify(_)) => {
                out.push(Effect::Penalize(format!("countersignature: {error}")));
                self.end(
                    AttemptEnd::Rejected {
                        contract_id: Some(id),
                        message: format!("countersignature: {error}"),
                    },
                    out,
                );
            }
            Err(error) => {
                let payload = codec::encode(&cosigned).unwrap_or_default();
                let message = error.to_string();
                self.evidence(
                    ctx,
                    error.misbehaviour(),
                    &message,
                    payload,
                    AttemptEnd::Rejected {
                        contract_id: Some(id),
                        message: message.clone(),
                    },
                    out,
                );
            }
        }
    }

    fn on_execute_answer(
        &mut self,
        ctx: &Context<'_>,
        answer: Result<MarketResponse, String>,
        out: &mut Vec<Effect>,
    ) {
        let State::Starting {
            held, backoff_ms, ..
        } = &self.state
        else {
            return;
        };
        let (held, backoff_ms) = (held.clone(), *backoff_ms);
        let retry = |machine: &mut Requester| {
            machine.state = State::Starting {
                held: held.clone(),
                retry_at: Some(ctx.now_ms.saturating_add(backoff_ms)),
                backoff_ms: backoff_ms.saturating_mul(2).min(MAX_EXECUTE_BACKOFF_MS),
            };
        };
        match answer {
            Ok(MarketResponse::Accepted { contract_id }) if contract_id == held.id() => {
                self.state = State::Running { held };
            }
            Ok(MarketResponse::Reconciled(theirs)) => self.reconcile_with(ctx, &theirs, false, out),
            Ok(MarketResponse::Error(error)) if error.code == ErrorCode::Unavailable => retry(self),
            // The provider lost the contract, or refuses to run it: this node decides it failed,
            // and tells the provider (which adopts it if it never had it).
            Ok(MarketResponse::Error(error)) => self.fail(
                ctx,
                held,
                AttemptFailure::NotStarted,
                &format!("the provider did not start the job: {}", error.message),
                Vec::new(),
                true,
                false,
                out,
            ),
            Ok(_) => self.fail(
                ctx,
                held,
                AttemptFailure::NotStarted,
                "an answer out of protocol to execute",
                Vec::new(),
                true,
                false,
                out,
            ),
            // Unreachable for now: try again; the driver reports a provider that stays gone.
            Err(_) => retry(self),
        }
    }

    fn on_tick(&mut self, ctx: &Context<'_>, out: &mut Vec<Effect>) {
        let (held, retry_due) = match &self.state {
            State::Starting { held, retry_at, .. } => {
                (held.clone(), retry_at.is_some_and(|at| at <= ctx.now_ms))
            }
            State::Running { held } => (held.clone(), false),
            _ => return,
        };
        if ctx.now_ms > held.contract().deadline_ms {
            return self.fail(
                ctx,
                held,
                AttemptFailure::DeadlineMissed,
                "no delivery before the deadline",
                Vec::new(),
                true,
                false,
                out,
            );
        }
        if retry_due && let State::Starting { retry_at, .. } = &mut self.state {
            *retry_at = None;
            out.push(Effect::Send(Outbound::Execute(held.id())));
        }
    }

    fn on_peer_lost(&mut self, ctx: &Context<'_>, out: &mut Vec<Effect>) {
        if let State::Starting { held, .. } | State::Running { held } = &self.state {
            let held = held.clone();
            self.fail(
                ctx,
                held,
                AttemptFailure::PeerLost,
                "the provider went away",
                Vec::new(),
                true,
                false,
                out,
            );
        }
    }

    fn on_inbound(
        &mut self,
        ctx: &Context<'_>,
        from: NodeId,
        request: MarketRequest,
        out: &mut Vec<Effect>,
    ) {
        if from != self.provider {
            return out.push(Effect::Respond(wire_error(
                ErrorCode::Forbidden,
                "not your contract",
            )));
        }
        match (request, self.state.clone()) {
            (MarketRequest::Deliver(delivery), State::Starting { held, .. })
            | (MarketRequest::Deliver(delivery), State::Running { held }) => {
                self.on_delivery(ctx, held, delivery, out);
            }
            (MarketRequest::Deliver(delivery), State::Ended { held: Some(held) }) => {
                self.on_late_delivery(held, &delivery, out);
            }
            (MarketRequest::Reconcile(theirs), State::Proposing { proposal }) => {
                // The provider countersigned and ended it before its answer reached this node.
                match checks::check_countersigned(&proposal, &theirs.contract) {
                    Ok(contract) => {
                        let held = Held::from_parts(theirs.contract.clone(), contract);
                        match held.learn(&theirs, self.provider) {
                            Ok(learned) => self.conclude(ctx, held, &learned, true, true, out),
                            Err(error) => out.push(Effect::Respond(wire_error(
                                ErrorCode::BadRequest,
                                &error.to_string(),
                            ))),
                        }
                    }
                    Err(error) => out.push(Effect::Respond(wire_error(
                        ErrorCode::BadRequest,
                        &format!("not the contract proposed: {error}"),
                    ))),
                }
            }
            (MarketRequest::Reconcile(theirs), State::Starting { .. })
            | (MarketRequest::Reconcile(theirs), State::Running { .. })
            | (MarketRequest::Reconcile(theirs), State::Ended { held: Some(_) }) => {
                self.reconcile_with(ctx, &theirs, true, out);
            }
            (MarketRequest::Deliver(_) | MarketRequest::Reconcile(_), _) => out.push(
                Effect::Respond(wire_error(ErrorCode::NotFound, "no such contract")),
            ),
            _ => out.push(Effect::Respond(wire_error(
                ErrorCode::BadRequest,
                "not a request a requester answers",
            ))),
        }
    }

    /// A delivery for an open contract: settle it if it checks out, else end the contract as
    /// failed with the evidence.
    fn on_delivery(
        &mut self,
        ctx: &Context<'_>,
        held: Held,
        delivery: Delivery,
        out: &mut Vec<Effect>,
    ) {
        let checked = checks::check_delivery(held.contract(), held.id(), &delivery);
        let (receipt, settlement) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                let message = format!("delivery refused: {error}");
                let mut extra = Vec::new();
                match error.misbehaviour() {
                    MisbehaviourKind::BadSignature => out.push(Effect::Penalize(message.clone())),
                    kind => {
                        let payload = codec::encode(&delivery.receipt).unwrap_or_default();
                        match sign_evidence(ctx, self.provider, kind, &message, payload) {
                            Ok(evidence) => {
                                extra.push(own_entry(ctx, EntryBody::Misbehaviour(evidence)));
                            }
                            Err(fault) => out.push(Effect::Fault(fault)),
                        }
                    }
                }
                return self.fail(
                    ctx,
                    held,
                    AttemptFailure::Misbehaved,
                    &message,
                    extra,
                    false,
                    true,
                    out,
                );
            }
        };
        // `check_delivery` verified the provider's half: countersigning does not check it again.
        let settled = match CoSigned::countersign_verified(
            delivery.settlement.clone(),
            &settlement,
            ctx.keypair,
        ) {
            Ok(settled) => settled,
            Err(error) => {
                out.push(Effect::Fault(format!("cannot countersign: {error}")));
                return out.push(Effect::Respond(wire_error(
                    ErrorCode::Internal,
                    "cannot countersign the settlement",
                )));
            }
        };
        let entries = vec![
            contract_entry(&held, EntryBody::Receipt(delivery.receipt.clone())),
            contract_entry(&held, EntryBody::Settlement(settled.clone())),
        ];
        let settled_held = held
            .clone()
            .with_receipt(delivery.receipt, receipt.clone())
            .with_settlement(settled);
        self.pending = Some(Pending::Settle {
            held: settled_held,
            prior: held,
            receipt,
            output: delivery.output.clone(),
            respond: true,
        });
        out.push(Effect::Append(Append {
            entries,
            output: Some(delivery.output),
            notify: false,
        }));
    }

    /// A delivery for a contract already ended: the same answer again; a valid receipt of a
    /// contract ended as failed is recorded, so both ledgers hold the same documents.
    fn on_late_delivery(&mut self, held: Held, delivery: &Delivery, out: &mut Vec<Effect>) {
        if held.status() == Status::Failed
            && held.signed_receipt().is_none()
            && let Ok(receipt) =
                checks::check_receipt(held.contract(), held.id(), &delivery.receipt)
        {
            let filled = held.with_receipt(delivery.receipt.clone(), receipt);
            let entries = vec![contract_entry(
                &filled,
                EntryBody::Receipt(delivery.receipt.clone()),
            )];
            return self.record(filled, entries, None, true, out);
        }
        out.push(reconciled(&held));
    }

    /// What the provider holds, from a `Reconcile` it sent (`respond`) or from its answer.
    fn reconcile_with(
        &mut self,
        ctx: &Context<'_>,
        theirs: &ContractDocs,
        respond: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(held) = self.held().cloned() else {
            return;
        };
        let learned = match held.learn(theirs, self.provider) {
            Ok(learned) => learned,
            Err(error) => {
                out.push(Effect::Penalize(format!("reconcile: {error}")));
                if respond {
                    out.push(Effect::Respond(wire_error(
                        ErrorCode::BadRequest,
                        &error.to_string(),
                    )));
                }
                return;
            }
        };
        if !learned.conflicts.is_empty() {
            out.push(Effect::Penalize(learned.conflicts.join("; ")));
        }
        if matches!(self.state, State::Ended { .. }) {
            if learned.adds_documents() {
                let entries = learned_entries(&held, &learned);
                return self.record(held.with_learned(&learned), entries, None, respond, out);
            }
            if respond {
                out.push(reconciled(&held));
            }
            return;
        }
        if learned.their_failure.is_some() {
            return self.conclude(ctx, held, &learned, respond, false, out);
        }
        // The provider holds the contract but no receipt and asks: it lost the run (it
        // restarted). Ask again.
        if respond && theirs.receipt.is_none() {
            let id = held.id();
            self.state = State::Starting {
                held: held.clone(),
                retry_at: None,
                backoff_ms: FIRST_EXECUTE_BACKOFF_MS,
            };
            out.push(reconciled(&held));
            return out.push(Effect::Send(Outbound::Execute(id)));
        }
        if respond {
            out.push(reconciled(&held));
        }
    }

    /// Ends an open (or adopted, `adopted`) contract from what the provider holds: settled if it
    /// holds our settlement, else failed the way the provider ended it, or as not started.
    fn conclude(
        &mut self,
        ctx: &Context<'_>,
        held: Held,
        learned: &Learned,
        respond: bool,
        adopted: bool,
        out: &mut Vec<Effect>,
    ) {
        let mut entries = Vec::new();
        if adopted {
            entries.push(contract_entry(
                &held,
                EntryBody::Contract(held.docs().contract),
            ));
        }
        if learned.settlement.is_some() {
            entries.extend(learned_entries(&held, learned));
            return self.record(held.with_learned(learned), entries, None, respond, out);
        }
        entries.extend(learned_entries(&held, learned));
        let held = held.with_learned(learned);
        let (failure, message) = mirrored_failure("provider", learned);
        self.fail(ctx, held, failure, &message, entries, false, respond, out);
    }

    /// Decides the contract failed: records this node's failure (after `extra` entries) and then
    /// ends the attempt; `notify`: the provider must be told.
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        ctx: &Context<'_>,
        held: Held,
        failure: AttemptFailure,
        message: &str,
        extra: Vec<CheckedBody>,
        notify: bool,
        respond: bool,
        out: &mut Vec<Effect>,
    ) {
        let record = match sign_failure(ctx, &held, self.provider, failure, message) {
            Ok(record) => record,
            Err(error) => {
                return out.push(Effect::Fault(format!(
                    "cannot sign a failure record: {error}"
                )));
            }
        };
        let mut entries = extra;
        entries.push(own_entry(ctx, EntryBody::Failure(record.clone())));
        let end = AttemptEnd::Failed {
            contract_id: held.id(),
            failure,
            message: truncate(message),
        };
        // Leave the open state now, so nothing else is started while the record is written.
        self.state = State::Ended {
            held: Some(held.clone()),
        };
        self.pending = Some(Pending::Record {
            held: held.with_failure(record),
            append: Append {
                entries: entries.clone(),
                output: None,
                notify,
            },
            end: Some(end),
            respond,
            retry_at: None,
        });
        out.push(Effect::Append(Append {
            entries,
            output: None,
            notify,
        }));
    }

    /// Records documents for an ended contract (or one ending with them), retried until durable;
    /// then answers (`respond`) and reports `end`.
    fn record(
        &mut self,
        held: Held,
        entries: Vec<CheckedBody>,
        end: Option<AttemptEnd>,
        respond: bool,
        out: &mut Vec<Effect>,
    ) {
        let append = Append {
            entries,
            output: None,
            notify: false,
        };
        self.pending = Some(Pending::Record {
            held,
            append: append.clone(),
            end,
            respond,
            retry_at: None,
        });
        out.push(Effect::Append(append));
    }

    /// Records evidence against the provider (no contract yet), then ends the attempt.
    fn evidence(
        &mut self,
        ctx: &Context<'_>,
        kind: MisbehaviourKind,
        message: &str,
        payload: Vec<u8>,
        end: AttemptEnd,
        out: &mut Vec<Effect>,
    ) {
        match sign_evidence(ctx, self.provider, kind, message, payload) {
            Ok(evidence) => {
                self.pending = Some(Pending::Evidence { end });
                out.push(Effect::Append(Append {
                    entries: vec![own_entry(ctx, EntryBody::Misbehaviour(evidence))],
                    output: None,
                    notify: false,
                }));
            }
            Err(fault) => {
                out.push(Effect::Fault(fault));
                self.end(end, out);
            }
        }
    }
}
