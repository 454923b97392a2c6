//! The provider side's policy: which quotes get an offer (capacity, limits, executors, prices,
//! credit), the places offers and contracts hold, the run slots, and the load the node
//! advertises. What happens to a contract once proposed is the provider machine's
//! (`suanli_protocol::engine::provider`), run by its driver.
//!
//! Capacity is `slots` jobs running at once plus `queue` waiting; an offer holds one place until
//! it expires or its proposal arrives, a contract holds it until its receipt exists.
//!
//! Credit: every requester gets a credit line (`provider.credit_limit`, or its override in
//! `provider.credit_limits`): what it owes this node by the ledger's settlements, plus the most
//! its open contracts and offers can still cost, plus the new job's most, must stay within it.
//! Beyond it the quote is declined with the signed reason `credit_limit`.
//!
//! Admission: a requester with fewer than `provider.history_settlements` contracts settled here is
//! new. Its jobs may cost at most `provider.new_peer_max_job_cost`, and its line is
//! `provider.new_peer_credit_limit`, shared with every other new requester whose connection comes
//! from the same IP address (their debts and open contracts count against it together). Every
//! identity at one address, new or not, also shares one `provider.credit_limit`: fresh identities
//! cost an attacker nothing, and gain it no more credit, before or after they have history. A requester whose
//! standing ([`crate::reputation`]) is distrusted gets no credit at all. Requesters listed in
//! `provider.credit_limits` are never new.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use suanli_protocol::engine::provider::{Policy, Provider};
use suanli_protocol::engine::{Context, sign_decline};
use suanli_protocol::wire::{ErrorCode, MarketResponse, WireError};
use suanli_protocol::{
    Contract, ContractId, Credits, DeclineCode, ExecutorKind, Hash32, JobSpec, Limits, NodeId,
    Offer, PriceTerms, QuoteRequest, Signed,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::Market;
use super::contracts::{Driver, Machine, Route};
use crate::capacity::Load;
use crate::clock::now_ms;
use crate::config::ProviderConfig;
use crate::tokens::Serving;

/// Most offers one requester may hold at once: a peer cannot take all places by quoting.
const MAX_RESERVATIONS_PER_REQUESTER: usize = 16;
/// Most requesters whose address is remembered (see [`State::requester_ips`]).
const MAX_REQUESTERS: usize = 4096;
/// Most identities at one address whose debts a quote adds up; beyond them the quote is declined
/// (a thousand fresh identities behind one address get no more than a few).
const MAX_IDENTITIES_PER_IP: usize = 64;
/// Most time a contract's deadline may leave beyond its job's time limit.
const MAX_DEADLINE_SLACK_MS: u64 = 10 * 60 * 1000;

struct Reservation {
    quote: QuoteRequest,
    offer: Signed<Offer>,
    max_cost: Credits,
    expires_at_ms: u64,
}

/// A contract this node provides, as its driver last reported it.
#[derive(Debug, Clone, Copy)]
struct Open {
    requester: NodeId,
    max_cost: Credits,
    /// It holds a place (to run, or running).
    occupies: bool,
}

/// A proposal being handled, from taking its offer's reservation until it is answered (by then
/// its driver has reported its contract, if it made one): it still holds a place and counts
/// against its requester's credit line.
#[derive(Debug, Clone, Copy)]
struct Proposing {
    requester: NodeId,
    max_cost: Credits,
}

#[derive(Default)]
struct State {
    reservations: HashMap<Hash32, Reservation>,
    open: HashMap<ContractId, Open>,
    /// By offer digest.
    proposing: HashMap<Hash32, Proposing>,
    /// The IP address each requester not listed by the operator last quoted from: every
    /// identity at one address shares one credit line, new ones a smaller one too.
    requester_ips: HashMap<NodeId, IpAddr>,
}

impl State {
    fn in_use(&self) -> u32 {
        let occupied = self.open.values().filter(|open| open.occupies).count();
        u32::try_from(self.reservations.len() + occupied + self.proposing.len()).unwrap_or(u32::MAX)
    }

    fn reservations_of(&self, requester: NodeId) -> usize {
        self.reservations
            .values()
            .filter(|reservation| reservation.quote.requester == requester)
            .count()
    }

    /// The most `requester` can still owe for open contracts and offers.
    fn outstanding(&self, requester: NodeId) -> u128 {
        let offers = self
            .reservations
            .values()
            .filter(|reservation| reservation.quote.requester == requester)
            .map(|reservation| u128::from(reservation.max_cost.micro()));
        let proposals = self
            .proposing
            .values()
            .filter(|proposing| proposing.requester == requester)
            .map(|proposing| u128::from(proposing.max_cost.micro()));
        let contracts = self
            .open
            .values()
            .filter(|open| open.requester == requester)
            .map(|open| u128::from(open.max_cost.micro()));
        offers.chain(proposals).chain(contracts).sum()
    }

    fn purge(&mut self, now: u64) {
        self.reservations.retain(|_, r| r.expires_at_ms > now);
    }

    /// The other requesters last seen at `ip`.
    fn requesters_at(&self, ip: IpAddr, except: NodeId) -> Vec<NodeId> {
        self.requester_ips
            .iter()
            .filter(|(node, at)| **at == ip && **node != except)
            .map(|(node, _)| *node)
            .collect()
    }
}

/// The provider side's configuration and state.
pub(super) struct ProviderSide {
    accept_jobs: bool,
    slots: u32,
    capacity: u32,
    max_limits: Limits,
    offer_validity_ms: u64,
    prices: PriceTerms,
    executors: Vec<ExecutorKind>,
    /// Whose batch scripts the cluster runs (executor `batch`).
    batch_requesters: Vec<NodeId>,
    credit_limit: Credits,
    credit_limits: HashMap<NodeId, Credits>,
    history_settlements: u64,
    new_peer_credit_limit: Credits,
    new_peer_max_job_cost: Credits,
    state: Mutex<State>,
    run_slots: Arc<Semaphore>,
    load: watch::Sender<Load>,
    reservation_counter: AtomicU64,
}

impl std::fmt::Debug for ProviderSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSide")
            .field("slots", &self.slots)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ProviderSide {
    pub(super) fn new(
        config: &ProviderConfig,
        default_slots: u32,
        prices: PriceTerms,
        executors: Vec<ExecutorKind>,
        cluster: Option<&crate::slurm::Cluster>,
        load: watch::Sender<Load>,
    ) -> ProviderSide {
        let max_tasks = cluster.map_or(1, crate::slurm::Cluster::max_tasks);
        let slots = config.slots.unwrap_or(default_slots).max(1);
        let capacity = slots.saturating_add(config.queue);
        load.send_replace(Load {
            in_use: 0,
            slots,
            capacity,
        });
        ProviderSide {
            accept_jobs: config.accept_jobs,
            slots,
            capacity,
            max_limits: Limits {
                fuel: config.max_fuel,
                memory_bytes: config.max_memory_bytes,
                wall_time_ms: config.max_wall_time_ms,
                output_bytes: config.max_output_bytes,
                tasks: max_tasks,
            },
            offer_validity_ms: config.offer_validity_secs.saturating_mul(1000),
            prices,
            executors,
            batch_requesters: cluster
                .map_or_else(Vec::new, crate::slurm::Cluster::batch_requesters),
            credit_limit: Credits(config.credit_limit),
            credit_limits: config
                .credit_limits
                .iter()
                .filter_map(|(node, limit)| Some((node.parse().ok()?, Credits(*limit))))
                .collect(),
            history_settlements: config.history_settlements,
            new_peer_credit_limit: Credits(config.new_peer_credit_limit),
            new_peer_max_job_cost: Credits(config.new_peer_max_job_cost),
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

    /// Drops expired offers and publishes the load (every second, so an idle provider's load
    /// falls back even when no request arrives).
    pub(super) fn purge(&self) {
        let mut state = self.state();
        state.purge(now_ms());
        self.publish_load(&state);
    }

    /// The places as last published.
    pub(super) fn load(&self) -> Load {
        *self.load.borrow()
    }

    fn publish_load(&self, state: &State) {
        self.load.send_if_modified(|load| {
            let in_use = state.in_use();
            let changed = load.in_use != in_use;
            load.in_use = in_use;
            changed
        });
    }

    /// Waits for a run slot; `None` if the slots are gone (never: kept as a stop).
    pub(super) async fn run_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.run_slots.clone().acquire_owned().await.ok()
    }

    /// Records what a contract's driver reports of it: whether it holds a place, and what it
    /// can still cost its requester (for the credit line).
    pub(super) fn occupy(&self, id: ContractId, machine: &Machine, serving: &Serving) {
        let Machine::Provider(provider) = machine else {
            return;
        };
        let Some(held) = provider.held() else {
            return;
        };
        let contract = held.contract();
        let mut state = self.state();
        if held.status().is_final() {
            state.open.remove(&id);
        } else {
            state.open.insert(
                id,
                Open {
                    requester: contract.requester,
                    max_cost: contract.max_cost,
                    // A model session holds no run slot.
                    occupies: provider.occupies_slot()
                        && !serving.serves_sha(&contract.module_hash),
                },
            );
        }
        self.publish_load(&state);
    }

    /// A contract's driver has stopped.
    pub(super) fn release(&self, id: ContractId) {
        let mut state = self.state();
        if state.open.remove(&id).is_some() {
            self.publish_load(&state);
        }
    }

    /// Why this provider would not take a job, if it would not.
    fn refusal(&self, spec: &JobSpec, requester: NodeId) -> Option<(DeclineCode, String)> {
        if !self.accept_jobs {
            return Some((DeclineCode::Other, "this node does not accept jobs".into()));
        }
        if !self.executors.contains(&spec.executor) {
            return Some((
                DeclineCode::ExecutorUnsupported,
                format!("executor {} is not offered", spec.executor.name()),
            ));
        }
        if spec.executor == ExecutorKind::Batch && !self.batch_requesters.contains(&requester) {
            return Some((
                DeclineCode::ExecutorUnsupported,
                "this provider runs batch scripts only for the node ids it lists".into(),
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

    /// The credit line of `requester`.
    pub(super) fn credit_limit_of(&self, requester: NodeId) -> Credits {
        self.credit_limits
            .get(&requester)
            .copied()
            .unwrap_or(self.credit_limit)
    }
}

impl Market {
    /// What `peer` owes this node by the ledger's settlements (0 when this node owes it).
    fn owed_by(&self, peer: NodeId) -> Result<u128, crate::ledger::LedgerError> {
        Ok(self.inner.ledger.balance_with(peer)?.max(0).unsigned_abs())
    }

    /// Checks the lines `peer`'s address shares, with `own` its own exposure with this job: the
    /// debts and open contracts of every identity at the address against `provider.credit_limit`,
    /// and, for a new requester, those of the new identities there against
    /// `provider.new_peer_credit_limit`. `Err` is the reason to decline.
    fn address_line(
        &self,
        state: &mut State,
        peer: NodeId,
        ip: IpAddr,
        own: u128,
        newcomer: bool,
    ) -> Result<(), String> {
        let provider = &self.inner.provider;
        if !state.requester_ips.contains_key(&peer) && state.requester_ips.len() >= MAX_REQUESTERS {
            // Forget identities that owe nothing and have nothing open; never one in debt.
            let idle: Vec<NodeId> = state
                .requester_ips
                .keys()
                .filter(|node| state.outstanding(**node) == 0)
                .filter(|node| self.owed_by(**node).is_ok_and(|owed| owed == 0))
                .copied()
                .collect();
            for node in idle {
                state.requester_ips.remove(&node);
            }
            if state.requester_ips.len() >= MAX_REQUESTERS {
                return Err(format!(
                    "this node already extends credit to {MAX_REQUESTERS} requesters"
                ));
            }
        }
        state.requester_ips.insert(peer, ip);
        let others = state.requesters_at(ip, peer);
        if others.len() >= MAX_IDENTITIES_PER_IP {
            return Err(format!(
                "{} identities at {ip} already have credit here",
                others.len()
            ));
        }
        let (mut address, mut new_at_address, mut new_others) = (own, own, 0);
        for other in others {
            let debt = self
                .owed_by(other)
                .unwrap_or(0)
                .saturating_add(state.outstanding(other));
            address = address.saturating_add(debt);
            if self.inner.reputation.standing(&other).history() < provider.history_settlements {
                new_at_address = new_at_address.saturating_add(debt);
                new_others += 1;
            }
        }
        if address > u128::from(provider.credit_limit.micro()) {
            return Err(format!(
                "this job could bring what the identities at your address owe this node to \
                 {address} µcr, above the credit line of an address, {} µcr",
                provider.credit_limit.micro()
            ));
        }
        if newcomer && new_at_address > u128::from(provider.new_peer_credit_limit.micro()) {
            return Err(format!(
                "this job could bring what new requesters at your address owe this node to \
                 {new_at_address} µcr, above the credit line of a new requester, {} µcr, shared \
                 with {new_others} other new requesters at your address",
                provider.new_peer_credit_limit.micro()
            ));
        }
        Ok(())
    }

    fn decline(
        &self,
        requester: NodeId,
        job_id: suanli_protocol::JobId,
        code: DeclineCode,
        message: &str,
    ) -> MarketResponse {
        let ctx = Context {
            keypair: &self.inner.keypair,
            now_ms: now_ms(),
        };
        match sign_decline(&ctx, requester, job_id, None, code, message) {
            Ok(signed) => MarketResponse::Decline(signed),
            Err(error) => wire_error(ErrorCode::Internal, &error.to_string()),
        }
    }

    pub(super) fn handle_quote(
        &self,
        peer: NodeId,
        ip: Option<IpAddr>,
        quote: QuoteRequest,
    ) -> MarketResponse {
        if quote.requester != peer {
            return wire_error(ErrorCode::Forbidden, "requester is not the sending node");
        }
        let spec = match quote.decode_spec() {
            Ok(spec) => spec,
            Err(error) => return wire_error(ErrorCode::BadRequest, &error.to_string()),
        };
        let decline = |code, message: &str| self.decline(peer, quote.job_id, code, message);
        let provider = &self.inner.provider;
        if self.inner.cancel.is_cancelled() {
            return decline(DeclineCode::ShuttingDown, "this node is shutting down");
        }
        if let Some(reason) = self.inner.storage_refusal() {
            return decline(DeclineCode::NoCapacity, &reason);
        }
        // A model session is priced by its model and holds no run slot (the generation streams
        // are its own limit); a WebAssembly job by the node's prices and slots.
        let session = spec.executor == ExecutorKind::Llm;
        let terms = match session {
            true if provider.executors.contains(&ExecutorKind::Llm) => {
                self.inner.serving.terms(&spec)
            }
            _ => provider
                .refusal(&spec, quote.requester)
                .map_or(Ok(provider.prices), Err),
        };
        let price = match terms {
            Ok(price) => price,
            Err((code, message)) => return decline(code, &message),
        };
        let Ok(max_cost) = price.max_cost(&spec.limits) else {
            return decline(DeclineCode::LimitsExceeded, "cost overflows");
        };
        // Admission: a requester this node's ledger shows to be dishonest gets no credit; one
        // without history here is new, and gets small jobs and a small line (unless the operator
        // listed it).
        let listed = provider.credit_limits.contains_key(&peer);
        let mut newcomer = false;
        if peer != self.inner.node_id && !listed {
            let standing = self.inner.reputation.standing(&peer);
            if standing.distrusted {
                return decline(
                    DeclineCode::CreditLimit,
                    &format!(
                        "this node extends no credit to you: {}",
                        standing.reasons.join("; ")
                    ),
                );
            }
            newcomer = standing.history() < provider.history_settlements;
            if newcomer && max_cost > provider.new_peer_max_job_cost {
                return decline(
                    DeclineCode::LimitsExceeded,
                    &format!(
                        "until {} contracts are settled here ({} so far), a job may cost at most \
                         {} µcr; this one may cost {} µcr",
                        provider.history_settlements,
                        standing.history(),
                        provider.new_peer_max_job_cost.micro(),
                        max_cost.micro()
                    ),
                );
            }
        }
        // What the requester owes this node already (its settlements), before taking the lock.
        let owed = if peer == self.inner.node_id {
            0
        } else {
            match self.owed_by(peer) {
                Ok(owed) => owed,
                // Credit is not extended on a balance that cannot be read.
                Err(error) => {
                    return decline(
                        DeclineCode::Busy,
                        &format!("this node cannot read what you owe it: {error}"),
                    );
                }
            }
        };
        let now = now_ms();
        let mut state = provider.state();
        state.purge(now);
        // A new quote for the same job replaces the earlier offer.
        state
            .reservations
            .retain(|_, r| !(r.quote.requester == peer && r.quote.job_id == quote.job_id));
        if peer != self.inner.node_id {
            let own = owed
                .saturating_add(state.outstanding(peer))
                .saturating_add(u128::from(max_cost.micro()));
            if !listed
                && let Some(ip) = ip
                && let Err(reason) = self.address_line(&mut state, peer, ip, own, newcomer)
            {
                provider.publish_load(&state);
                return decline(DeclineCode::CreditLimit, &reason);
            }
            let mut limit = provider.credit_limit_of(peer);
            if newcomer {
                limit = limit.min(provider.new_peer_credit_limit);
            }
            if own > u128::from(limit.micro()) {
                provider.publish_load(&state);
                let kind = if newcomer {
                    "a new requester's"
                } else {
                    "your"
                };
                return decline(
                    DeclineCode::CreditLimit,
                    &format!(
                        "this job could bring what you owe this node to {own} µcr, above {kind} \
                         credit line of {} µcr (owed now: {owed} µcr)",
                        limit.micro()
                    ),
                );
            }
        }
        if state.reservations_of(peer) >= MAX_RESERVATIONS_PER_REQUESTER {
            provider.publish_load(&state);
            return decline(
                DeclineCode::Busy,
                &format!("at most {MAX_RESERVATIONS_PER_REQUESTER} open offers per requester"),
            );
        }
        if !session && state.in_use() >= provider.capacity {
            return decline(
                DeclineCode::Busy,
                &format!(
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
            price,
            max_cost,
            valid_until_ms: now + provider.offer_validity_ms,
            reservation: provider.reservation_counter.fetch_add(1, Ordering::Relaxed),
        };
        let signed = match Signed::sign(&offer, &self.inner.keypair) {
            Ok(signed) => signed,
            Err(error) => return wire_error(ErrorCode::Internal, &error.to_string()),
        };
        state.reservations.insert(
            signed.digest(),
            Reservation {
                quote,
                offer: signed.clone(),
                max_cost,
                expires_at_ms: offer.valid_until_ms,
            },
        );
        provider.publish_load(&state);
        MarketResponse::Offer(signed)
    }

    /// A proposal for an offer this node made: the provider machine checks it; if it becomes a
    /// contract its driver records it and answers once it is durable.
    pub(super) async fn handle_propose(
        &self,
        peer: NodeId,
        proposal: Signed<Contract>,
    ) -> MarketResponse {
        let provider = &self.inner.provider;
        let offer_digest = match proposal.decode_unverified() {
            Ok(contract) => contract.offer,
            Err(error) => return wire_error(ErrorCode::BadRequest, &error.to_string()),
        };
        let reservation = {
            let mut state = provider.state();
            state.purge(now_ms());
            // Only the peer it was offered to takes it (anyone else leaves it alone).
            let offered_to_peer = state
                .reservations
                .get(&offer_digest)
                .is_some_and(|reservation| reservation.quote.requester == peer);
            let taken = offered_to_peer
                .then(|| state.reservations.remove(&offer_digest))
                .flatten();
            if let Some(reservation) = &taken {
                state.proposing.insert(
                    offer_digest,
                    Proposing {
                        requester: peer,
                        max_cost: reservation.max_cost,
                    },
                );
            }
            taken
        };
        let _proposing = reservation.as_ref().map(|_| ProposingGuard {
            provider,
            offer: offer_digest,
        });
        let Some(reservation) = reservation else {
            let job_id = proposal
                .decode_unverified()
                .map(|contract| contract.job_id)
                .unwrap_or(suanli_protocol::JobId(Hash32::ZERO));
            return self.decline(
                peer,
                job_id,
                DeclineCode::Other,
                "no such offer, or it expired",
            );
        };
        let (machine, effects) = {
            let ctx = Context {
                keypair: &self.inner.keypair,
                now_ms: now_ms(),
            };
            Provider::propose(
                &ctx,
                peer,
                &reservation.quote,
                &reservation.offer,
                proposal,
                Policy {
                    max_deadline_slack_ms: MAX_DEADLINE_SLACK_MS,
                },
            )
        };
        match machine.and_then(|machine| Some((machine.contract_id()?, machine))) {
            Some((id, machine)) => match self.inner.registry.register(Route::provider(id)) {
                Some(inbox) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let driver = Driver::new(
                        self.clone(),
                        (Machine::Provider(Box::new(machine)), effects, Some(reply)),
                        None,
                    );
                    self.inner.tasks.spawn(async move {
                        driver.run_registered(Route::provider(id), inbox).await
                    });
                    answer.await.unwrap_or_else(|_| {
                        wire_error(ErrorCode::Unavailable, "the node is stopping")
                    })
                }
                None => wire_error(ErrorCode::BadRequest, "this contract was proposed already"),
            },
            None => self
                .answer_refused(peer, effects)
                .await
                .unwrap_or_else(|| wire_error(ErrorCode::Internal, "no answer")),
        }
    }
}

/// Ends a [`Proposing`] however its handling ends (answered, or dropped at a stop).
struct ProposingGuard<'a> {
    provider: &'a ProviderSide,
    offer: Hash32,
}

impl Drop for ProposingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.provider.state();
        state.proposing.remove(&self.offer);
        self.provider.publish_load(&state);
    }
}

fn wire_error(code: ErrorCode, message: &str) -> MarketResponse {
    MarketResponse::Error(WireError::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn a_proposal_being_recorded_holds_a_place_and_counts_against_its_requester() {
        let requester = fixtures::requester().node_id();
        let other = fixtures::provider().node_id();
        let mut state = State::default();
        state.proposing.insert(
            Hash32::of(b"offer"),
            Proposing {
                requester,
                max_cost: Credits(500),
            },
        );
        assert_eq!(state.outstanding(requester), 500);
        assert_eq!(state.outstanding(other), 0);
        assert_eq!(state.in_use(), 1);
    }
}
