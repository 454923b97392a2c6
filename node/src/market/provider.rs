//! The provider side: pricing quotes, holding slots, countersigning contracts, running jobs and
//! delivering signed receipts.
//!
//! Capacity is `slots` jobs running at once plus `queue` waiting; a quote holds one place until
//! its offer expires or a contract takes it over. A contract is appended to the ledger before it
//! is countersigned back, a receipt before it is delivered, a settlement as soon as the requester
//! returns it. Execution is acknowledged at once and the result delivered in a separate request,
//! so no request waits for a job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::lifecycle::{ContractEvent, ContractLifecycle};
use suanli_protocol::negotiation::{AttemptFailure, MisbehaviourKind};
use suanli_protocol::wire::{Delivery, ErrorCode, ExecuteRequest, MarketRequest, MarketResponse};
use suanli_protocol::{
    CoSigned, Contract, ContractId, Decline, DeclineCode, ExecutorKind, Hash32, JobSpec, Limits,
    NodeId, Offer, PriceTerms, QuoteRequest, Receipt, Settlement, Signed,
};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::{Market, truncate, wire_error};
use crate::capacity::Load;
use crate::clock::now_ms;
use crate::config::ProviderConfig;
use crate::executor::JobInput;

/// Most offers one requester may hold at once: a peer cannot take all places by quoting.
const MAX_RESERVATIONS_PER_REQUESTER: usize = 16;
/// Most time a contract's deadline may leave beyond its job's time limit.
const MAX_DEADLINE_SLACK_MS: u64 = 10 * 60 * 1000;

struct Reservation {
    quote: QuoteRequest,
    offer: Signed<Offer>,
    expires_at_ms: u64,
}

struct ProviderContract {
    lifecycle: ContractLifecycle,
    spec: JobSpec,
    started: bool,
}

#[derive(Default)]
struct State {
    reservations: HashMap<Hash32, Reservation>,
    contracts: HashMap<ContractId, ProviderContract>,
    /// Proposals between taking their reservation and holding their contract (the ledger
    /// append in between); they keep their place so nothing is overbooked meanwhile.
    proposing: u32,
}

impl State {
    fn in_use(&self) -> u32 {
        u32::try_from(self.reservations.len() + self.contracts.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.proposing)
    }

    fn reservations_of(&self, requester: NodeId) -> usize {
        self.reservations
            .values()
            .filter(|reservation| reservation.quote.requester == requester)
            .count()
    }

    /// Drops offers that expired and contracts never started whose deadline passed.
    fn purge(&mut self, now: u64) {
        self.reservations.retain(|_, r| r.expires_at_ms > now);
        self.contracts
            .retain(|_, c| c.started || c.lifecycle.contract().deadline_ms > now);
    }
}

/// The provider's configuration and state.
pub(super) struct Provider {
    accept_jobs: bool,
    slots: u32,
    capacity: u32,
    max_limits: Limits,
    offer_validity_ms: u64,
    prices: PriceTerms,
    executors: Vec<ExecutorKind>,
    state: Mutex<State>,
    run_slots: Arc<Semaphore>,
    load: watch::Sender<Load>,
    reservation_counter: AtomicU64,
}

impl Provider {
    pub(super) fn new(
        config: &ProviderConfig,
        default_slots: u32,
        prices: PriceTerms,
        executors: Vec<ExecutorKind>,
        load: watch::Sender<Load>,
    ) -> Provider {
        let slots = config.slots.unwrap_or(default_slots).max(1);
        let capacity = slots.saturating_add(config.queue);
        load.send_replace(Load {
            in_use: 0,
            slots,
            capacity,
        });
        Provider {
            accept_jobs: config.accept_jobs,
            slots,
            capacity,
            max_limits: Limits {
                fuel: config.max_fuel,
                memory_bytes: config.max_memory_bytes,
                wall_time_ms: config.max_wall_time_ms,
                output_bytes: config.max_output_bytes,
            },
            offer_validity_ms: config.offer_validity_secs.saturating_mul(1000),
            prices,
            executors,
            state: Mutex::new(State::default()),
            run_slots: Arc::new(Semaphore::new(slots as usize)),
            load,
            reservation_counter: AtomicU64::new(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Drops expired offers and stale contracts and publishes the load (run every second, so an
    /// idle provider's load falls back even when no request arrives).
    pub(super) fn purge(&self) {
        let mut state = self.state();
        state.purge(now_ms());
        self.publish_load(&state);
    }

    fn publish_load(&self, state: &State) {
        self.load.send_if_modified(|load| {
            let in_use = state.in_use();
            let changed = load.in_use != in_use;
            load.in_use = in_use;
            changed
        });
    }

    /// Why this provider would not take a job within `limits`, if it would not.
    fn refusal(&self, spec: &JobSpec) -> Option<(DeclineCode, String)> {
        if !self.accept_jobs {
            return Some((DeclineCode::Other, "this node does not accept jobs".into()));
        }
        if !self.executors.contains(&spec.executor) {
            return Some((
                DeclineCode::ExecutorUnsupported,
                format!("executor {} is not offered", spec.executor.name()),
            ));
        }
        let (limits, max) = (&spec.limits, &self.max_limits);
        for (name, asked, most) in [
            ("fuel", limits.fuel, max.fuel),
            ("memory_bytes", limits.memory_bytes, max.memory_bytes),
            ("timeout_ms", limits.wall_time_ms, max.wall_time_ms),
            ("max_output_bytes", limits.output_bytes, max.output_bytes),
        ] {
            if asked > most {
                return Some((
                    DeclineCode::LimitsExceeded,
                    format!("{name} {asked} is above this provider's maximum of {most}"),
                ));
            }
        }
        match self.prices.max_cost(limits) {
            Ok(cost) if cost <= spec.max_price => None,
            Ok(cost) => Some((
                DeclineCode::PriceTooLow,
                format!(
                    "max price {} is below this provider's price of up to {} for these limits",
                    spec.max_price.micro(),
                    cost.micro()
                ),
            )),
            Err(_) => Some((DeclineCode::LimitsExceeded, "cost overflows".into())),
        }
    }
}

impl Market {
    fn sign_decline(
        &self,
        requester: NodeId,
        job_id: suanli_protocol::JobId,
        contract_id: Option<ContractId>,
        code: DeclineCode,
        message: String,
    ) -> MarketResponse {
        let decline = Decline {
            provider: self.inner.node_id,
            requester,
            job_id,
            contract_id,
            code,
            message: truncate(message),
            declined_at_ms: now_ms(),
        };
        match Signed::sign(&decline, &self.inner.keypair) {
            Ok(signed) => MarketResponse::Decline(signed),
            Err(error) => wire_error(ErrorCode::Internal, error.to_string()),
        }
    }

    pub(super) fn handle_quote(&self, peer: NodeId, quote: QuoteRequest) -> MarketResponse {
        if quote.requester != peer {
            return wire_error(ErrorCode::Forbidden, "requester is not the sending node");
        }
        let spec = match quote.decode_spec() {
            Ok(spec) => spec,
            Err(error) => return wire_error(ErrorCode::BadRequest, error.to_string()),
        };
        let decline = |code, message| self.sign_decline(peer, quote.job_id, None, code, message);
        let provider = &self.inner.provider;
        if self.inner.cancel.is_cancelled() {
            return decline(
                DeclineCode::ShuttingDown,
                "this node is shutting down".into(),
            );
        }
        if let Some((code, message)) = provider.refusal(&spec) {
            return decline(code, message);
        }
        let Ok(max_cost) = provider.prices.max_cost(&spec.limits) else {
            return decline(DeclineCode::LimitsExceeded, "cost overflows".into());
        };
        let now = now_ms();
        let mut state = provider.state();
        state.purge(now);
        // A new quote for the same job replaces the earlier offer.
        state
            .reservations
            .retain(|_, r| !(r.quote.requester == peer && r.quote.job_id == quote.job_id));
        if state.reservations_of(peer) >= MAX_RESERVATIONS_PER_REQUESTER {
            provider.publish_load(&state);
            return decline(
                DeclineCode::Busy,
                format!("at most {MAX_RESERVATIONS_PER_REQUESTER} open offers per requester"),
            );
        }
        if state.in_use() >= provider.capacity {
            return decline(
                DeclineCode::Busy,
                format!(
                    "all {} slots and {} queue places are taken",
                    provider.slots,
                    provider.capacity - provider.slots
                ),
            );
        }
        let offer = Offer {
            provider: self.inner.node_id,
            requester: peer,
            job_id: quote.job_id,
            price: provider.prices,
            max_cost,
            valid_until_ms: now + provider.offer_validity_ms,
            reservation: provider.reservation_counter.fetch_add(1, Ordering::Relaxed),
        };
        let signed = match Signed::sign(&offer, &self.inner.keypair) {
            Ok(signed) => signed,
            Err(error) => return wire_error(ErrorCode::Internal, error.to_string()),
        };
        state.reservations.insert(
            signed.digest(),
            Reservation {
                quote,
                offer: signed.clone(),
                expires_at_ms: offer.valid_until_ms,
            },
        );
        provider.publish_load(&state);
        MarketResponse::Offer(signed)
    }

    pub(super) async fn handle_propose(
        &self,
        peer: NodeId,
        proposal: Signed<Contract>,
    ) -> MarketResponse {
        let contract = match proposal.verify() {
            Ok(contract) => contract,
            Err(error) => {
                self.penalize(peer, format!("proposal: {error}")).await;
                return wire_error(ErrorCode::BadRequest, error.to_string());
            }
        };
        if contract.provider != self.inner.node_id || contract.requester != peer {
            return wire_error(ErrorCode::Forbidden, "the contract names other parties");
        }
        let contract_id = ContractId(proposal.digest());
        let decline = |code, message: String| {
            self.sign_decline(peer, contract.job_id, Some(contract_id), code, message)
        };
        let provider = &self.inner.provider;
        let now = now_ms();
        let reservation = {
            let mut state = provider.state();
            state.purge(now);
            let taken = state
                .reservations
                .remove(&contract.offer)
                .filter(|reservation| reservation.quote.requester == peer);
            if taken.is_some() {
                state.proposing += 1;
            }
            taken
        };
        let Some(reservation) = reservation else {
            return decline(DeclineCode::Other, "no such offer, or it expired".into());
        };
        let response = self
            .accept_proposal(peer, proposal, contract, contract_id, reservation, now)
            .await;
        let mut state = provider.state();
        state.proposing = state.proposing.saturating_sub(1);
        provider.publish_load(&state);
        response
    }

    /// Checks a proposal against its reservation, countersigns it and records the contract.
    async fn accept_proposal(
        &self,
        peer: NodeId,
        proposal: Signed<Contract>,
        contract: Contract,
        contract_id: ContractId,
        reservation: Reservation,
        now: u64,
    ) -> MarketResponse {
        let decline = |code, message: String| {
            self.sign_decline(peer, contract.job_id, Some(contract_id), code, message)
        };
        let provider = &self.inner.provider;
        let spec = match contract
            .check_quote(&reservation.quote)
            .and_then(|spec| contract.check_offer(&reservation.offer).map(|_| spec))
        {
            Ok(spec) => spec,
            Err(error) => return decline(DeclineCode::Other, error.to_string()),
        };
        let earliest = now.saturating_add(contract.limits.wall_time_ms);
        if contract.deadline_ms < earliest
            || contract.deadline_ms > earliest.saturating_add(MAX_DEADLINE_SLACK_MS)
        {
            return decline(
                DeclineCode::Other,
                format!(
                    "the deadline must leave the job's time limit and at most {} s more",
                    MAX_DEADLINE_SLACK_MS / 1000
                ),
            );
        }
        let cosigned = match CoSigned::countersign(proposal, &self.inner.keypair) {
            Ok((cosigned, _)) => cosigned,
            Err(error) => return wire_error(ErrorCode::Internal, error.to_string()),
        };
        let lifecycle = match ContractLifecycle::signed(&cosigned) {
            Ok(lifecycle) => lifecycle,
            Err(error) => return wire_error(ErrorCode::Internal, error.to_string()),
        };
        // The contract is durable in our ledger before the requester learns it is signed. (A job
        // this node placed with itself is recorded once, by the requester side.)
        if peer != self.inner.node_id
            && let Err(error) = self
                .inner
                .ledger
                .append(EntryBody::Contract(cosigned.clone()))
                .await
        {
            warn!(%error, "ledger append failed; declining");
            return decline(DeclineCode::Other, format!("ledger unavailable: {error}"));
        }
        {
            let mut state = provider.state();
            state.contracts.insert(
                contract_id,
                ProviderContract {
                    lifecycle,
                    spec,
                    started: false,
                },
            );
        }
        debug!(%contract_id, requester = %peer, "contract countersigned");
        MarketResponse::Countersigned(cosigned)
    }

    pub(super) fn handle_execute(&self, peer: NodeId, execute: ExecuteRequest) -> MarketResponse {
        if let Err(error) = execute.validate() {
            return wire_error(ErrorCode::TooLarge, error.to_string());
        }
        let contract_id = execute.contract_id;
        // Hash before taking the lock: up to 12 MiB.
        let (module_hash, stdin_hash) = (Hash32::of(&execute.module), Hash32::of(&execute.stdin));
        let (lifecycle, spec) = {
            let mut state = self.inner.provider.state();
            let Some(entry) = state.contracts.get_mut(&contract_id) else {
                return wire_error(ErrorCode::NotFound, "no such contract");
            };
            let contract = entry.lifecycle.contract();
            if contract.requester != peer {
                return wire_error(ErrorCode::Forbidden, "not your contract");
            }
            if entry.started {
                // Never run a contract twice.
                return wire_error(ErrorCode::BadRequest, "already started");
            }
            if module_hash != contract.module_hash || stdin_hash != contract.stdin_hash {
                return wire_error(
                    ErrorCode::BadRequest,
                    "module or stdin does not match the contract's hashes",
                );
            }
            if entry.lifecycle.apply(ContractEvent::Started).is_err() {
                return wire_error(ErrorCode::BadRequest, "contract is not runnable");
            }
            entry.started = true;
            (entry.lifecycle.clone(), entry.spec.clone())
        };
        let market = self.clone();
        tokio::spawn(async move {
            market
                .run_contract(lifecycle, spec, execute.module, execute.stdin)
                .await;
            let provider = &market.inner.provider;
            let mut state = provider.state();
            state.contracts.remove(&contract_id);
            provider.publish_load(&state);
        });
        MarketResponse::Accepted { contract_id }
    }

    /// Runs a started contract, then delivers its receipt and output until the requester settles
    /// or the deadline passes.
    async fn run_contract(
        &self,
        mut lifecycle: ContractLifecycle,
        spec: JobSpec,
        module: Vec<u8>,
        stdin: Vec<u8>,
    ) {
        let contract = lifecycle.contract().clone();
        let contract_id = lifecycle.id();
        let permit = match self.inner.provider.run_slots.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return,
        };
        if now_ms().saturating_add(contract.limits.wall_time_ms) > contract.deadline_ms {
            // Queued too long: its result could not arrive in time. Do not burn the slot.
            drop(permit);
            self.record_failure(
                contract_id,
                contract.job_id,
                contract.requester,
                AttemptFailure::NotStarted,
                "waited for a slot past the contract's deadline".into(),
            )
            .await;
            return;
        }
        let result = self
            .inner
            .executor
            .run(JobInput {
                module: Arc::new(module),
                args: spec.args.clone(),
                env: spec.env.clone(),
                stdin,
                limits: contract.limits,
            })
            .await;
        drop(permit);
        let cost = contract
            .price
            .cost(&result.usage)
            .unwrap_or(contract.max_cost);
        let receipt = Receipt {
            contract_id,
            job_id: contract.job_id,
            provider: self.inner.node_id,
            requester: contract.requester,
            outcome: result.outcome,
            usage: result.usage,
            cost,
            finished_at_ms: now_ms(),
        };
        let settlement = Settlement {
            contract_id,
            receipt: Hash32::ZERO,
            provider: self.inner.node_id,
            requester: contract.requester,
            cost,
            settled_at_ms: receipt.finished_at_ms,
        };
        let (receipt, settlement) =
            match Signed::sign(&receipt, &self.inner.keypair).and_then(|receipt| {
                let settlement = Settlement {
                    receipt: receipt.digest(),
                    ..settlement
                };
                Signed::sign(&settlement, &self.inner.keypair)
                    .map(|settlement| (receipt, settlement))
            }) {
                Ok(signed) => signed,
                Err(error) => {
                    warn!(%contract_id, %error, "cannot sign receipt");
                    return;
                }
            };
        if let Err(error) = lifecycle.apply(ContractEvent::Delivered(&receipt)) {
            warn!(%contract_id, %error, "own receipt breaks the contract; not delivering");
            return;
        }
        let remote = contract.requester != self.inner.node_id;
        if remote
            && let Err(error) = self
                .inner
                .ledger
                .append(EntryBody::Receipt(receipt.clone()))
                .await
        {
            warn!(%contract_id, %error, "ledger append failed; not delivering");
            return;
        }
        let delivery = MarketRequest::Deliver(Delivery {
            receipt,
            settlement,
            output: result.stdout,
        });
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.send(contract.requester, delivery.clone()).await {
                Ok(MarketResponse::Settled(settled)) => {
                    match lifecycle.apply(ContractEvent::Settled(&settled)) {
                        Ok(_) => {
                            if remote
                                && let Err(error) = self
                                    .inner
                                    .ledger
                                    .append(EntryBody::Settlement(settled))
                                    .await
                            {
                                warn!(%contract_id, %error, "cannot append settlement");
                            }
                            info!(%contract_id, cost = cost.micro(), "contract settled");
                        }
                        Err(error) => {
                            let payload =
                                suanli_protocol::codec::encode(&settled).unwrap_or_default();
                            self.record_misbehaviour(
                                contract.requester,
                                MisbehaviourKind::ContractMismatch,
                                format!("settlement refused: {error}"),
                                payload,
                            )
                            .await;
                        }
                    }
                    return;
                }
                Ok(MarketResponse::Error(error))
                    if error.code == ErrorCode::Unavailable && now_ms() <= contract.deadline_ms =>
                {
                    debug!(%contract_id, "requester busy; delivering again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(MarketResponse::Error(error)) => {
                    let message = truncate(error.message);
                    warn!(%contract_id, code = ?error.code, %message, "requester refused the delivery");
                    // NotFound: the requester gave the contract up (deadline, or it restarted).
                    let failure = if error.code == ErrorCode::NotFound {
                        AttemptFailure::DeadlineMissed
                    } else {
                        AttemptFailure::Misbehaved
                    };
                    self.record_failure(
                        contract_id,
                        contract.job_id,
                        contract.requester,
                        failure,
                        format!("delivery refused: {message}"),
                    )
                    .await;
                    return;
                }
                Ok(other) => {
                    warn!(%contract_id, ?other, "unexpected answer to a delivery");
                    return;
                }
                Err(error) => {
                    if now_ms() > contract.deadline_ms {
                        self.record_failure(
                            contract_id,
                            contract.job_id,
                            contract.requester,
                            AttemptFailure::PeerLost,
                            format!("requester unreachable until the deadline: {error}"),
                        )
                        .await;
                        return;
                    }
                    debug!(%contract_id, %error, "delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub(super) fn handle_cancel(&self, peer: NodeId, contract_id: ContractId) -> MarketResponse {
        let provider = &self.inner.provider;
        let mut state = provider.state();
        match state.contracts.get(&contract_id) {
            None => wire_error(ErrorCode::NotFound, "no such contract"),
            Some(entry) if entry.lifecycle.contract().requester != peer => {
                wire_error(ErrorCode::Forbidden, "not your contract")
            }
            Some(entry) if entry.started => wire_error(
                ErrorCode::BadRequest,
                "already running; it will be delivered",
            ),
            Some(_) => {
                state.contracts.remove(&contract_id);
                provider.publish_load(&state);
                MarketResponse::Cancelled { contract_id }
            }
        }
    }
}
