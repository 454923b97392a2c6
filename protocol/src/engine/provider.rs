//! The provider's machine: one contract from the requester's proposal to its end.
//!
//! ```text
//!  proposal checks out ─▶ [append contract] ─▶ Ready ─execute─▶ Running ─run ends─▶
//!  [append receipt + output] ─▶ Delivering ──Deliver until the requester answers──▶
//!      requester settled: [append settlement] ─▶ Ended
//!      requester failed it: [append own failure] ─▶ Ended
//!  Ready / Running past the deadline (no receipt): [append own failure], tell the requester
//! ```
//!
//! Which offers to make (capacity, limits, prices, credit) is the node's policy; this machine
//! starts where a proposal arrives for an offer the node made. The provider never decides the
//! fate of a contract it holds a receipt for: it delivers until the requester answers.
//!
//! A contract a node placed with itself (requester = provider) is recorded once, by its
//! requester side: this machine then appends nothing and ends nothing on its own.

use super::checks::{self, CheckError};
use super::{
    APPEND_RETRY_MS, Append, Context, Effect, Held, Learned, Outbound, RequestKind, Role, RunOrder,
    RunReport, Status, adopt, busy, contract_entry, learned_entries, mirrored_failure, own_entry,
    reconciled, sign_decline, sign_failure, wire_error,
};
use crate::advert::ExecutorKind;
use crate::hash::Hash32;
use crate::identity::NodeId;
use crate::job::{JobSpec, job_hash_from_bytes};
use crate::ledger::{CheckedBody, EntryBody};
use crate::negotiation::{
    AttemptFailure, Contract, ContractDocs, ContractId, DeclineCode, Offer, QuoteRequest, Receipt,
    Settlement,
};
use crate::signed::{CoSigned, Signed};
use crate::wire::{Delivery, ErrorCode, ExecuteRequest, MarketRequest, MarketResponse};

/// Longest wait between two deliveries to a requester that does not answer.
const MAX_DELIVERY_BACKOFF_MS: u64 = 30_000;
const FIRST_DELIVERY_BACKOFF_MS: u64 = 200;
/// How long after countersigning a provider waits for `Execute` before asking the requester
/// about the contract. An honest requester sends it milliseconds after recording the contract.
const EXECUTE_WAIT_MS: u64 = 3_000;

/// The provider's rules for proposals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most time a contract's deadline may leave beyond its job's time limit.
    pub max_deadline_slack_ms: u64,
}

/// What happens to a provider's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The answer to a request this machine sent (`Err`: no answer, with why).
    Answer {
        to: RequestKind,
        answer: Result<MarketResponse, String>,
    },
    /// A request from the requester about this contract.
    Inbound {
        from: NodeId,
        request: MarketRequest,
    },
    /// The run ordered by [`Effect::Run`] ended.
    RunFinished(RunReport),
    Durable,
    AppendFailed(String),
    Tick,
}

// States are moved a few times per contract; boxing their documents would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum State {
    /// Signed by both and durable; waiting for `Execute`.
    Ready { held: Held },
    /// Running.
    Running { held: Held },
    /// The receipt is durable; delivering until the requester answers. `delivery` is `None`
    /// when the output was lost (then only `Reconcile` can be sent).
    Delivering {
        held: Held,
        delivery: Option<Delivery>,
        retry_at: Option<u64>,
        backoff_ms: u64,
        in_flight: bool,
    },
    /// Over; `held` is `None` when the proposal was declined.
    Ended { held: Option<Held> },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Pending {
    /// The countersigned contract: then the answer to the proposal (a decline, signed then,
    /// should the append fail).
    Contract {
        held: Held,
        cosigned: CoSigned<Contract>,
    },
    /// The receipt and output: then the delivery. Retried until durable.
    Receipt {
        held: Held,
        delivery: Delivery,
        append: Append,
        retry_at: Option<u64>,
    },
    /// What the requester decided (a settlement, or this node's failure mirroring the
    /// requester's), this node's own failure, or documents learned about an ended contract:
    /// then the end. Retried until durable.
    End {
        held: Held,
        append: Append,
        respond: bool,
        retry_at: Option<u64>,
    },
}

/// The requester must hear of this contract: after a restart without a receipt, that the run
/// was lost (it then sends `Execute` again); and when no `Execute` came within
/// [`EXECUTE_WAIT_MS`] of the proposal, that the contract exists (a requester that crashed
/// before recording it adopts it and both end it, freeing its place long before its deadline).
/// This node tells it until it answers.
#[derive(Debug, Clone, Copy)]
struct LostRun {
    /// When to tell it again (`None`: a request is in flight).
    retry_at: Option<u64>,
    backoff_ms: u64,
}

/// The provider's side of one contract.
#[derive(Debug, Clone)]
pub struct Provider {
    requester: NodeId,
    /// Requester and provider are this node: the requester side records everything.
    self_dealing: bool,
    state: State,
    pending: Option<Pending>,
    lost_run: Option<LostRun>,
}

impl Provider {
    /// A proposal from `from` for the offer this node made in answer to `quote`: checks it
    /// against the quote, the offer, the offer's validity and the deadline rules, then
    /// countersigns and records it (answering `Countersigned` once durable) or declines it.
    /// `None` when no contract came to be (the answer is among the effects). `offer` is this
    /// node's own, as it signed it: its terms are checked, its signature is not.
    pub fn propose(
        ctx: &Context<'_>,
        from: NodeId,
        quote: &QuoteRequest,
        offer: &Signed<Offer>,
        proposal: Signed<Contract>,
        policy: Policy,
    ) -> (Option<Provider>, Vec<Effect>) {
        let contract = match proposal.verify() {
            Ok(contract) => contract,
            Err(error) => {
                return (
                    None,
                    vec![
                        Effect::Penalize(format!("proposal: {error}")),
                        Effect::Respond(wire_error(ErrorCode::BadRequest, &error.to_string())),
                    ],
                );
            }
        };
        if contract.provider != ctx.me() || contract.requester != from {
            return (
                None,
                vec![Effect::Respond(wire_error(
                    ErrorCode::Forbidden,
                    "the contract names other parties",
                ))],
            );
        }
        let id = ContractId(proposal.digest());
        if let Err(reason) = check_proposal(ctx, &contract, quote, offer, policy) {
            let answer = decline_answer(ctx, &contract, id, DeclineCode::Other, &reason);
            return (None, vec![answer]);
        }
        // Verified above: countersigning does not check the requester's signature again.
        let cosigned = match CoSigned::countersign_verified(proposal, &contract, ctx.keypair) {
            Ok(cosigned) => cosigned,
            Err(error) => {
                return (
                    None,
                    vec![
                        Effect::Fault(format!("cannot countersign: {error}")),
                        Effect::Respond(wire_error(ErrorCode::Internal, "cannot countersign")),
                    ],
                );
            }
        };
        let held = Held::from_parts(cosigned.clone(), contract);
        let entry = contract_entry(&held, EntryBody::Contract(cosigned.clone()));
        let mut machine = Provider {
            requester: from,
            self_dealing: from == ctx.me(),
            // Until the contract is durable; without it, nothing came to be.
            state: State::Ended {
                held: Some(held.clone()),
            },
            pending: None,
            lost_run: (from != ctx.me()).then_some(LostRun {
                retry_at: Some(ctx.now_ms.saturating_add(EXECUTE_WAIT_MS)),
                backoff_ms: FIRST_DELIVERY_BACKOFF_MS,
            }),
        };
        let mut out = Vec::new();
        machine.commit(
            Pending::Contract { held, cosigned },
            Append {
                entries: vec![entry],
                output: None,
                notify: false,
            },
            &mut out,
        );
        (Some(machine), out)
    }

    /// Resumes an open contract from this node's ledger after a restart: delivers its receipt
    /// again (`output` is the output stored with it), or, without a receipt, tells the requester
    /// the run was lost (it sends `Execute` again) or ends it when the deadline has passed.
    pub fn resume(
        ctx: &Context<'_>,
        held: Held,
        output: Option<Vec<u8>>,
    ) -> (Provider, Vec<Effect>) {
        let mut machine = Provider::new_with(ctx, &held);
        let mut out = Vec::new();
        match held.status() {
            Status::Settled | Status::Failed => {}
            Status::Delivered => {
                let delivery = output.and_then(|output| rebuild_delivery(ctx, &held, output));
                machine.deliver(held, delivery, &mut out);
            }
            Status::Signed => {
                if ctx.now_ms > held.contract().deadline_ms {
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
                    if !machine.self_dealing {
                        out.push(reconcile_request(&held));
                        machine.lost_run = Some(LostRun {
                            retry_at: None,
                            backoff_ms: FIRST_DELIVERY_BACKOFF_MS,
                        });
                    }
                    machine.state = State::Ready { held };
                }
            }
        }
        (machine, out)
    }

    /// A contract this node has ended (or, requester and provider in one, one whose requester
    /// side owns it), rebuilt to answer about it.
    pub fn ended(ctx: &Context<'_>, held: Held) -> Provider {
        let mut machine = Provider::new_with(ctx, &held);
        if machine.self_dealing && !held.status().is_final() {
            machine.state = State::Ready { held };
        }
        machine
    }

    /// A `Reconcile` from `from` about a contract this node does not hold: records it, ended the
    /// way the requester ended it, or as failed (it never ran here). `None` with an answer when
    /// the documents do not check out or this node is not the provider.
    pub fn adopt(
        ctx: &Context<'_>,
        from: NodeId,
        theirs: &ContractDocs,
    ) -> (Option<Provider>, Vec<Effect>) {
        let (held, learned) = match adopt(ctx, from, theirs, Role::Provider) {
            Ok(adopted) => adopted,
            Err(effects) => return (None, effects),
        };
        let mut machine = Provider::new_with(ctx, &held);
        let mut out = Vec::new();
        machine.conclude(ctx, held, &learned, true, true, &mut out);
        (Some(machine), out)
    }

    fn new_with(ctx: &Context<'_>, held: &Held) -> Provider {
        let requester = held.contract().requester;
        Provider {
            requester,
            self_dealing: requester == ctx.me(),
            state: State::Ended {
                held: Some(held.clone()),
            },
            pending: None,
            lost_run: None,
        }
    }

    pub fn requester(&self) -> NodeId {
        self.requester
    }

    pub fn contract_id(&self) -> Option<ContractId> {
        self.held().map(Held::id)
    }

    pub fn held(&self) -> Option<&Held> {
        match &self.state {
            State::Ready { held } | State::Running { held } | State::Delivering { held, .. } => {
                Some(held)
            }
            State::Ended { held } => held.as_ref(),
        }
    }

    /// Whether the contract holds one of this node's places (to run, or running).
    pub fn occupies_slot(&self) -> bool {
        matches!(self.state, State::Ready { .. } | State::Running { .. })
            || matches!(self.pending, Some(Pending::Contract { .. }))
    }

    /// When to feed [`Input::Tick`].
    pub fn wake_at(&self) -> Option<u64> {
        if let Some(pending) = &self.pending {
            return match pending {
                Pending::Receipt { retry_at, .. } | Pending::End { retry_at, .. } => *retry_at,
                _ => None,
            };
        }
        match &self.state {
            // The requester side of a contract with itself watches the deadline.
            State::Ready { held } | State::Running { held } if !self.self_dealing => {
                let deadline = held.contract().deadline_ms.saturating_add(1);
                let retry = self.lost_run.and_then(|lost| lost.retry_at);
                Some(retry.map_or(deadline, |retry| retry.min(deadline)))
            }
            State::Delivering { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    /// Whether the contract is over and nothing is in flight.
    pub fn is_ended(&self) -> bool {
        self.pending.is_none() && matches!(self.state, State::Ended { .. })
    }

    pub fn handle(&mut self, ctx: &Context<'_>, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Durable => self.on_durable(&mut out),
            Input::AppendFailed(_) => self.on_append_failed(ctx, &mut out),
            input if self.pending.is_some() => self.while_pending(ctx, input, &mut out),
            Input::Answer { to, answer } => self.on_answer(ctx, to, answer, &mut out),
            Input::Inbound { from, request } => self.on_inbound(ctx, from, request, &mut out),
            Input::RunFinished(report) => self.on_run_finished(ctx, report, &mut out),
            Input::Tick => self.on_tick(ctx, &mut out),
        }
        out
    }

    /// Makes `append` durable and then does what `pending` says; a contract with itself appends
    /// nothing here (its requester side records it) and goes on at once.
    fn commit(&mut self, pending: Pending, append: Append, out: &mut Vec<Effect>) {
        self.pending = Some(pending);
        if self.self_dealing {
            self.on_durable(out);
        } else {
            out.push(Effect::Append(append));
        }
    }

    fn while_pending(&mut self, ctx: &Context<'_>, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Inbound {
                request: MarketRequest::Execute(_),
                ..
            } if matches!(self.pending, Some(Pending::Receipt { .. })) => {
                // Ran already; the receipt is being recorded.
                if let Some(id) = self.contract_id() {
                    out.push(Effect::Respond(MarketResponse::Accepted {
                        contract_id: id,
                    }));
                }
            }
            Input::Inbound { .. } => out.push(busy()),
            Input::Tick => match &mut self.pending {
                Some(
                    Pending::Receipt {
                        append, retry_at, ..
                    }
                    | Pending::End {
                        append, retry_at, ..
                    },
                ) if retry_at.is_some_and(|at| at <= ctx.now_ms) => {
                    *retry_at = None;
                    out.push(Effect::Append(append.clone()));
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_durable(&mut self, out: &mut Vec<Effect>) {
        let Some(pending) = self.pending.take() else {
            out.push(Effect::Fault(
                "durable reported with no append in flight".into(),
            ));
            return;
        };
        match pending {
            Pending::Contract { held, cosigned, .. } => {
                self.state = State::Ready { held };
                out.push(Effect::Respond(MarketResponse::Countersigned(cosigned)));
            }
            Pending::Receipt { held, delivery, .. } => self.deliver(held, Some(delivery), out),
            Pending::End { held, respond, .. } => {
                if respond {
                    out.push(reconciled(&held));
                }
                self.state = State::Ended { held: Some(held) };
            }
        }
    }

    fn on_append_failed(&mut self, ctx: &Context<'_>, out: &mut Vec<Effect>) {
        let retry_at = Some(ctx.now_ms.saturating_add(APPEND_RETRY_MS));
        match self.pending.take() {
            None => {}
            Some(Pending::Contract { held, .. }) => {
                self.state = State::Ended { held: None };
                // Signed only now, when it is sent: nothing durable depends on it.
                let decline = sign_decline(
                    ctx,
                    self.requester,
                    held.contract().job_id,
                    Some(held.id()),
                    DeclineCode::Other,
                    "this node cannot record the contract now (its ledger refused); \
                     try another provider",
                );
                out.push(match decline {
                    Ok(decline) => Effect::Respond(MarketResponse::Decline(decline)),
                    Err(_) => busy(),
                });
            }
            Some(Pending::Receipt {
                held,
                delivery,
                append,
                ..
            }) => {
                self.pending = Some(Pending::Receipt {
                    held,
                    delivery,
                    append,
                    retry_at,
                });
            }
            Some(Pending::End {
                held,
                append,
                respond,
                ..
            }) => {
                if respond {
                    out.push(busy());
                }
                self.pending = Some(Pending::End {
                    held,
                    append,
                    respond: false,
                    retry_at,
                });
            }
        }
    }

    fn on_answer(
        &mut self,
        ctx: &Context<'_>,
        to: RequestKind,
        answer: Result<MarketResponse, String>,
        out: &mut Vec<Effect>,
    ) {
        if let State::Delivering { in_flight, .. } = &mut self.state {
            *in_flight = false;
        }
        if to == RequestKind::Reconcile
            && let Some(lost) = &mut self.lost_run
        {
            if let Ok(MarketResponse::Reconciled(_)) = &answer {
                self.lost_run = None;
            } else {
                // Not heard: tell it again later.
                lost.retry_at = Some(ctx.now_ms.saturating_add(lost.backoff_ms));
                lost.backoff_ms = lost
                    .backoff_ms
                    .saturating_mul(2)
                    .min(MAX_DELIVERY_BACKOFF_MS);
                return;
            }
        }
        match answer {
            Ok(MarketResponse::Reconciled(theirs)) => self.reconcile_with(ctx, &theirs, false, out),
            // The requester does not know the contract: show it what this node holds (it adopts
            // it).
            Ok(MarketResponse::Error(error))
                if error.code == ErrorCode::NotFound && to == RequestKind::Deliver =>
            {
                if let State::Delivering {
                    held, in_flight, ..
                } = &mut self.state
                {
                    *in_flight = true;
                    out.push(reconcile_request(held));
                }
            }
            // No answer, or "not now": deliver again later.
            _ => self.retry_delivery(ctx),
        }
    }

    fn retry_delivery(&mut self, ctx: &Context<'_>) {
        if let State::Delivering {
            retry_at,
            backoff_ms,
            ..
        } = &mut self.state
        {
            *retry_at = Some(ctx.now_ms.saturating_add(*backoff_ms));
            *backoff_ms = backoff_ms.saturating_mul(2).min(MAX_DELIVERY_BACKOFF_MS);
        }
    }

    fn on_inbound(
        &mut self,
        ctx: &Context<'_>,
        from: NodeId,
        request: MarketRequest,
        out: &mut Vec<Effect>,
    ) {
        if from != self.requester {
            return out.push(Effect::Respond(wire_error(
                ErrorCode::Forbidden,
                "not your contract",
            )));
        }
        match request {
            MarketRequest::Execute(execute) => self.on_execute(execute, out),
            MarketRequest::Reconcile(theirs) => self.reconcile_with(ctx, &theirs, true, out),
            _ => out.push(Effect::Respond(wire_error(
                ErrorCode::BadRequest,
                "not a request a provider answers for a contract",
            ))),
        }
    }

    fn on_execute(&mut self, execute: ExecuteRequest, out: &mut Vec<Effect>) {
        self.lost_run = None;
        match &mut self.state {
            State::Ready { held } => match check_execute(held.id(), held.contract(), &execute) {
                Ok(spec) => {
                    let held = held.clone();
                    let id = held.id();
                    out.push(Effect::Run(RunOrder {
                        contract_id: id,
                        spec,
                        module: execute.module,
                        stdin: execute.stdin,
                        limits: held.contract().limits,
                    }));
                    out.push(Effect::Respond(MarketResponse::Accepted {
                        contract_id: id,
                    }));
                    self.state = State::Running { held };
                }
                Err((code, message)) => out.push(Effect::Respond(wire_error(code, &message))),
            },
            // Never two runs of one contract.
            State::Running { held } => out.push(Effect::Respond(MarketResponse::Accepted {
                contract_id: held.id(),
            })),
            State::Delivering {
                held,
                retry_at,
                in_flight,
                ..
            } => {
                // The requester is back: deliver now.
                out.push(Effect::Respond(MarketResponse::Accepted {
                    contract_id: held.id(),
                }));
                if !*in_flight {
                    *retry_at = Some(0);
                }
            }
            State::Ended { held: Some(held) } => out.push(reconciled(held)),
            State::Ended { held: None } => {
                out.push(Effect::Respond(wire_error(
                    ErrorCode::NotFound,
                    "no such contract",
                )));
            }
        }
    }

    fn on_run_finished(&mut self, ctx: &Context<'_>, report: RunReport, out: &mut Vec<Effect>) {
        let State::Running { held } = &self.state else {
            // A run stopped after the contract ended: its result is not wanted.
            return;
        };
        let held = held.clone();
        let contract = held.contract().clone();
        if ctx.now_ms > contract.deadline_ms && !self.self_dealing {
            return self.fail(
                ctx,
                held,
                AttemptFailure::DeadlineMissed,
                "the run ended after the deadline",
                Vec::new(),
                true,
                false,
                out,
            );
        }
        match sign_delivery(ctx, &held, report) {
            Ok((delivery, receipt)) => {
                let filled = held.with_receipt(delivery.receipt.clone(), receipt);
                let append = Append {
                    entries: vec![contract_entry(
                        &filled,
                        EntryBody::Receipt(delivery.receipt.clone()),
                    )],
                    output: Some(delivery.output.clone()),
                    notify: false,
                };
                self.commit(
                    Pending::Receipt {
                        held: filled,
                        delivery,
                        append: append.clone(),
                        retry_at: None,
                    },
                    append,
                    out,
                );
            }
            Err(message) => {
                out.push(Effect::Fault(message.clone()));
                self.fail(
                    ctx,
                    held,
                    AttemptFailure::NotStarted,
                    &message,
                    Vec::new(),
                    true,
                    false,
                    out,
                );
            }
        }
    }

    fn on_tick(&mut self, ctx: &Context<'_>, out: &mut Vec<Effect>) {
        let overdue = match &self.state {
            State::Ready { held } | State::Running { held } => {
                !self.self_dealing && ctx.now_ms > held.contract().deadline_ms
            }
            _ => false,
        };
        if overdue && let Some(held) = self.held().cloned() {
            if matches!(self.state, State::Running { .. }) {
                out.push(Effect::StopRun);
            }
            return self.fail(
                ctx,
                held,
                AttemptFailure::DeadlineMissed,
                "the deadline passed before the run ended",
                Vec::new(),
                true,
                false,
                out,
            );
        }
        if let (State::Ready { held }, Some(lost)) = (&self.state, &mut self.lost_run)
            && lost.retry_at.is_some_and(|at| at <= ctx.now_ms)
        {
            lost.retry_at = None;
            out.push(reconcile_request(held));
        }
        if let State::Delivering {
            held,
            delivery,
            retry_at,
            in_flight,
            ..
        } = &mut self.state
            && retry_at.is_some_and(|at| at <= ctx.now_ms)
        {
            *retry_at = None;
            *in_flight = true;
            out.push(match delivery {
                Some(delivery) => {
                    Effect::Send(Outbound::Request(MarketRequest::Deliver(delivery.clone())))
                }
                None => reconcile_request(held),
            });
        }
    }

    fn deliver(&mut self, held: Held, delivery: Option<Delivery>, out: &mut Vec<Effect>) {
        out.push(match &delivery {
            Some(delivery) => {
                Effect::Send(Outbound::Request(MarketRequest::Deliver(delivery.clone())))
            }
            None => reconcile_request(&held),
        });
        self.state = State::Delivering {
            held,
            delivery,
            retry_at: None,
            backoff_ms: FIRST_DELIVERY_BACKOFF_MS,
            in_flight: true,
        };
    }

    /// What the requester holds (its answer, or its `Reconcile` when `respond`).
    fn reconcile_with(
        &mut self,
        ctx: &Context<'_>,
        theirs: &ContractDocs,
        respond: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(held) = self.held().cloned() else {
            if respond {
                out.push(Effect::Respond(wire_error(
                    ErrorCode::NotFound,
                    "no such contract",
                )));
            }
            return;
        };
        // The settlement half this node delivered is its own signature: not checked again.
        let delivered = match &self.state {
            State::Delivering {
                delivery: Some(delivery),
                ..
            } => Some(&delivery.settlement),
            _ => None,
        };
        let learned = match held.learn_delivered(theirs, self.requester, delivered) {
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
        match &self.state {
            State::Ended { .. } => {
                if learned.adds_documents() {
                    let entries = learned_entries(&held, &learned);
                    let filled = held.with_learned(&learned);
                    let append = Append {
                        entries,
                        output: None,
                        notify: false,
                    };
                    return self.commit(
                        Pending::End {
                            held: filled,
                            append: append.clone(),
                            respond,
                            retry_at: None,
                        },
                        append,
                        out,
                    );
                }
                if respond {
                    out.push(reconciled(&held));
                }
            }
            State::Ready { .. } | State::Running { .. } | State::Delivering { .. }
                if learned.settlement.is_some() || learned.their_failure.is_some() =>
            {
                if matches!(self.state, State::Running { .. }) {
                    out.push(Effect::StopRun);
                }
                self.conclude(ctx, held, &learned, respond, false, out);
            }
            State::Delivering { in_flight, .. } => {
                // The requester has not decided. Asking (it is back): deliver again now.
                // Answering this node's delivery without deciding: again after the backoff,
                // never at once (that would loop as fast as the round trip).
                let in_flight = *in_flight;
                if respond {
                    out.push(reconciled(&held));
                    if !in_flight && let State::Delivering { retry_at, .. } = &mut self.state {
                        *retry_at = Some(0);
                    }
                } else {
                    self.retry_delivery(ctx);
                }
            }
            State::Ready { .. } | State::Running { .. } => {
                if respond {
                    out.push(reconciled(&held));
                }
            }
        }
    }

    /// Ends the contract the way the requester ended it: settled if it sent the settlement,
    /// failed (mirroring it) if it failed it, failed as never run for an adopted contract.
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
        entries.extend(learned_entries(&held, learned));
        let held = held.with_learned(learned);
        if learned.settlement.is_some() || held.settlement().is_some() {
            let append = Append {
                entries,
                output: None,
                notify: false,
            };
            self.state = State::Ended {
                held: Some(held.clone()),
            };
            return self.commit(
                Pending::End {
                    held,
                    append: append.clone(),
                    respond,
                    retry_at: None,
                },
                append,
                out,
            );
        }
        let (failure, message) = mirrored_failure("requester", learned);
        self.fail(ctx, held, failure, &message, entries, false, respond, out);
    }

    /// Ends the contract as failed with this node's own record, after `extra` entries;
    /// `notify`: the requester must be told.
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
        if self.self_dealing {
            // The requester side records the end of a contract with itself.
            self.state = State::Ended { held: Some(held) };
            return;
        }
        let record = match sign_failure(ctx, &held, self.requester, failure, message) {
            Ok(record) => record,
            Err(error) => {
                return out.push(Effect::Fault(format!(
                    "cannot sign a failure record: {error}"
                )));
            }
        };
        let mut entries = extra;
        entries.push(own_entry(ctx, EntryBody::Failure(record.clone())));
        let append = Append {
            entries,
            output: None,
            notify,
        };
        self.state = State::Ended {
            held: Some(held.clone()),
        };
        self.commit(
            Pending::End {
                held: held.with_failure(record),
                append: append.clone(),
                respond,
                retry_at: None,
            },
            append,
            out,
        );
    }
}

/// The proposal's checks beyond its signature and parties: it runs the quoted job on the
/// offer's terms, the offer is still valid, and the deadline leaves the job's time limit and at
/// most `max_deadline_slack_ms` more.
fn check_proposal(
    ctx: &Context<'_>,
    contract: &Contract,
    quote: &QuoteRequest,
    offer: &Signed<Offer>,
    policy: Policy,
) -> Result<(), String> {
    contract
        .check_quote(quote)
        .map_err(|error| error.to_string())?;
    // The offer is this node's own, from its offer book: its terms are checked, not its
    // signature.
    let offer = contract
        .check_own_offer(offer)
        .map_err(|error| error.to_string())?;
    if offer.valid_until_ms < ctx.now_ms {
        return Err("the offer expired".into());
    }
    let earliest = ctx.now_ms.saturating_add(contract.limits.wall_time_ms);
    if contract.deadline_ms < earliest
        || contract.deadline_ms > earliest.saturating_add(policy.max_deadline_slack_ms)
    {
        return Err(format!(
            "the deadline must leave the job's time limit and at most {} s more",
            policy.max_deadline_slack_ms / 1000
        ));
    }
    Ok(())
}

fn decline_answer(
    ctx: &Context<'_>,
    contract: &Contract,
    id: ContractId,
    code: DeclineCode,
    message: &str,
) -> Effect {
    match sign_decline(
        ctx,
        contract.requester,
        contract.job_id,
        Some(id),
        code,
        message,
    ) {
        Ok(decline) => Effect::Respond(MarketResponse::Decline(decline)),
        Err(error) => Effect::Respond(wire_error(ErrorCode::Internal, &error.to_string())),
    }
}

/// The checks of an `Execute` against contract `id`: it names it, sizes, the spec bytes hash to
/// the contract's job hash and make a valid spec, the module and stdin are the contract's (a
/// model session sends no module).
fn check_execute(
    id: ContractId,
    contract: &Contract,
    execute: &ExecuteRequest,
) -> Result<JobSpec, (ErrorCode, String)> {
    if execute.contract_id != id {
        return Err((ErrorCode::BadRequest, "not this contract's Execute".into()));
    }
    execute
        .validate()
        .map_err(|error| (ErrorCode::TooLarge, error.to_string()))?;
    if job_hash_from_bytes(&execute.spec) != contract.job_hash {
        return Err((
            ErrorCode::BadRequest,
            "the spec is not the contract's (job hash differs)".into(),
        ));
    }
    let spec = JobSpec::decode(&execute.spec)
        .map_err(|error| (ErrorCode::BadRequest, format!("spec: {error}")))?;
    spec.validate()
        .map_err(|error| (ErrorCode::BadRequest, format!("spec: {error}")))?;
    // A model session's "module" is the model file, which the provider holds already (its hash
    // is the contract's `module_hash`): nothing is sent.
    let module_ok = match spec.executor {
        ExecutorKind::Llm => execute.module.is_empty(),
        ExecutorKind::Wasm | ExecutorKind::Slurm | ExecutorKind::Batch => {
            Hash32::of(&execute.module) == contract.module_hash
        }
    };
    if !module_ok || Hash32::of(&execute.stdin) != contract.stdin_hash {
        return Err((
            ErrorCode::BadRequest,
            "module or stdin does not match the contract's hashes".into(),
        ));
    }
    Ok(spec)
}

/// The receipt of a run and the provider's half of its settlement, signed. The settlement is
/// derived from the receipt alone (its time is the receipt's), so signing it again after a
/// restart gives the same bytes.
fn sign_delivery(
    ctx: &Context<'_>,
    held: &Held,
    report: RunReport,
) -> Result<(Delivery, Receipt), String> {
    let contract = held.contract();
    let cost = contract
        .price
        .cost(&report.usage)
        .map_err(|_| "the run's cost overflows".to_owned())?;
    let receipt = Receipt {
        contract_id: held.id(),
        job_id: contract.job_id,
        provider: ctx.me(),
        requester: contract.requester,
        outcome: report.outcome,
        usage: report.usage,
        cost,
        finished_at_ms: ctx.now_ms,
    };
    let signed = Signed::sign(&receipt, ctx.keypair)
        .map_err(|error| format!("cannot sign the receipt: {error}"))?;
    // This node's own receipt must pass the requester's checks, or delivering it is pointless
    // (its terms: the signature is this node's own).
    checks::check_receipt_terms(contract, held.id(), receipt.clone())
        .map_err(|error: CheckError| format!("the run's receipt breaks the contract: {error}"))?;
    check_output_fits(contract, &receipt, &report.output)?;
    let settlement = settlement_half(ctx, held, &signed, &receipt)?;
    Ok((
        Delivery {
            receipt: signed,
            settlement,
            output: report.output,
        },
        receipt,
    ))
}

fn check_output_fits(contract: &Contract, receipt: &Receipt, output: &[u8]) -> Result<(), String> {
    checks::check_output(contract, receipt, output)
        .map_err(|error| format!("the run's output breaks the contract: {error}"))
}

fn settlement_half(
    ctx: &Context<'_>,
    held: &Held,
    signed: &Signed<Receipt>,
    receipt: &Receipt,
) -> Result<Signed<Settlement>, String> {
    let settlement = Settlement {
        contract_id: held.id(),
        receipt: signed.digest(),
        provider: ctx.me(),
        requester: held.contract().requester,
        cost: receipt.cost,
        settled_at_ms: receipt.finished_at_ms,
    };
    Signed::sign(&settlement, ctx.keypair).map_err(|error| format!("cannot sign: {error}"))
}

/// The delivery of a held receipt, rebuilt after a restart from the ledger and the stored output.
fn rebuild_delivery(ctx: &Context<'_>, held: &Held, output: Vec<u8>) -> Option<Delivery> {
    let (signed, receipt) = (held.signed_receipt()?, held.receipt()?);
    checks::check_output(held.contract(), receipt, &output).ok()?;
    let settlement = settlement_half(ctx, held, signed, receipt).ok()?;
    Some(Delivery {
        receipt: signed.clone(),
        settlement,
        output,
    })
}

fn reconcile_request(held: &Held) -> Effect {
    Effect::Send(Outbound::Request(MarketRequest::Reconcile(Box::new(
        held.docs(),
    ))))
}
