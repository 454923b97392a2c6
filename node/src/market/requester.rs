//! The requester side: placing one submitted job, provider after provider, until it is settled,
//! fails with a reason, or the placement deadline passes with the reasons collected.
//!
//! One task per job owns its record. Per provider: quote → verified offer (or signed decline) →
//! contract signed by us, countersigned by them → appended to our ledger → execute (acknowledged
//! at once) → wait for the delivery, watching the deadline and the provider's connection. The
//! delivery itself arrives as an inbound request, handled by [`Market::handle_deliver`], which
//! hands the result to the waiting task through [`Awaiting`]. Whoever removes the `Awaiting`
//! entry first (the delivery, or the task giving up) decides the contract's fate, so a contract
//! is never both settled and failed, and never settled twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::lifecycle::{ContractEvent, ContractLifecycle, LifecycleError};
use suanli_protocol::negotiation::{AttemptFailure, MisbehaviourKind};
use suanli_protocol::wire::{Delivery, ErrorCode, ExecuteRequest, MarketRequest, MarketResponse};
use suanli_protocol::{
    CoSigned, Contract, ContractId, DeclineCode, Hash32, JobId, JobSpec, NodeId, Outcome,
    QuoteRequest, Receipt, Signed,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::jobs::{Attempt, JobError, JobRecord, JobState, MAX_ATTEMPTS_KEPT};
use super::{Market, ranking, truncate, wire_error};
use crate::clock::now_ms;

/// How many candidates one placement round asks, one after the other.
const CANDIDATES_PER_ROUND: usize = 3;
/// A provider whose connection is gone this long is given up.
const LOST_AFTER: Duration = Duration::from_secs(2);

/// What a delivery hands to the waiting job task.
pub(super) struct Delivered {
    receipt: Receipt,
    output: Vec<u8>,
}

/// A contract waiting for its delivery.
pub(super) struct Awaiting {
    lifecycle: ContractLifecycle,
    done: oneshot::Sender<Result<Delivered, String>>,
}

/// How one try with one provider ended.
enum Try {
    /// The job is finished (settled, whatever its outcome).
    Finished,
    /// The provider declined; `permanent` when asking again cannot help (limits, price,
    /// executor, not accepting), else it may be asked again later (busy).
    Declined { permanent: bool },
    /// The provider failed or misbehaved; not asked again for this job.
    Failed,
    /// This node cannot go on (its ledger failed).
    Fatal(JobError),
}

pub(super) struct JobTask {
    pub(super) market: Market,
    pub(super) job_id: JobId,
    pub(super) spec: JobSpec,
    pub(super) nonce: u128,
    pub(super) module: Arc<Vec<u8>>,
    pub(super) stdin: Vec<u8>,
    pub(super) record: JobRecord,
}

impl JobTask {
    fn save(&mut self) {
        self.record.updated_at_ms = now_ms();
        if let Err(error) = self.market.inner.jobs.save(&self.job_id, &self.record) {
            warn!(job_id = %self.job_id, %error, "cannot save job record");
        }
        if self.record.state.is_final() {
            // Wakes long-polling readers; nobody listening is fine.
            let _ = self.market.inner.finished.send(self.job_id);
        }
    }

    /// Marks the job final: it no longer counts against the in-flight limit.
    fn close(&mut self) {
        self.market
            .inner
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn attempt(
        &mut self,
        provider: NodeId,
        contract_id: Option<ContractId>,
        outcome: &str,
        reason: Option<&str>,
        message: String,
    ) {
        debug!(job_id = %self.job_id, %provider, outcome, ?reason, %message, "attempt");
        if self.record.attempts.len() >= MAX_ATTEMPTS_KEPT {
            self.record.attempts.remove(0);
        }
        self.record.attempts.push(Attempt {
            provider: provider.to_string(),
            contract_id: contract_id.map(|id| id.to_string()),
            outcome: outcome.into(),
            reason: reason.map(str::to_owned),
            // Messages can come from peers: bounded like every other peer text.
            message: truncate(message),
            at_ms: now_ms(),
        });
        self.save();
    }

    fn fail(&mut self, error: JobError) {
        info!(job_id = %self.job_id, code = %error.code, message = %error.message, "job failed");
        self.record.state = JobState::Failed;
        self.record.error = Some(error);
        self.save();
    }

    pub(super) async fn run(mut self) {
        self.place().await;
        self.close();
    }

    async fn place(&mut self) {
        self.record.state = JobState::Negotiating;
        self.save();
        let inner = self.market.inner.clone();
        let placement_deadline = now_ms()
            + inner
                .jobs_config
                .placement_timeout_secs
                .saturating_mul(1000);
        let mut excluded: HashSet<NodeId> = HashSet::new();
        let mut backoff = Duration::from_millis(50);
        let salt = u64::from_le_bytes(self.job_id.0.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        loop {
            if inner.cancel.is_cancelled() {
                return self.fail(JobError::new("shutting_down", "the node is shutting down"));
            }
            if now_ms() > placement_deadline {
                let message = self.summary_of_attempts();
                return self.fail(JobError::new("no_provider", message));
            }
            let candidates = ranking::candidates(
                &inner.mesh,
                &self.spec,
                inner.node_id,
                now_ms(),
                &excluded,
                salt,
            );
            if candidates.is_empty() && self.record.attempts.is_empty() {
                debug!(job_id = %self.job_id, "no node in the capacity view fits the job yet");
            }
            for candidate in candidates.into_iter().take(CANDIDATES_PER_ROUND) {
                let outcome = self.try_provider(candidate.node).await;
                if self.record.state == JobState::Running {
                    // The attempt ended without a result: back to looking for a provider.
                    self.record.state = JobState::Negotiating;
                    self.record.provider = None;
                    self.record.contract_id = None;
                    self.save();
                }
                match outcome {
                    Try::Finished => return,
                    Try::Declined { permanent: false } => {}
                    Try::Declined { permanent: true } | Try::Failed => {
                        excluded.insert(candidate.node);
                    }
                    Try::Fatal(error) => return self.fail(error),
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// "No provider took the job" with every distinct reason collected.
    fn summary_of_attempts(&self) -> String {
        if self.record.attempts.is_empty() {
            return "no node in the mesh fits the job (executor, memory, price or placement)"
                .into();
        }
        let mut reasons: Vec<String> = self
            .record
            .attempts
            .iter()
            .map(|attempt| {
                format!(
                    "{} {}: {}",
                    attempt.outcome,
                    attempt.reason.as_deref().unwrap_or("-"),
                    attempt.message
                )
            })
            .collect();
        reasons.sort();
        reasons.dedup();
        format!("no provider took the job: {}", reasons.join("; "))
    }

    /// Records a provider's decline; one that did not verify, or that names another provider or
    /// job, counts as a rejected answer.
    fn declined(
        &mut self,
        provider: NodeId,
        contract_id: Option<ContractId>,
        decline: Option<suanli_protocol::Decline>,
    ) -> Try {
        match decline {
            Some(decline) if decline.provider == provider && decline.job_id == self.job_id => {
                self.attempt(
                    provider,
                    contract_id,
                    "declined",
                    Some(decline.code.name()),
                    decline.message,
                );
                Try::Declined {
                    permanent: is_permanent(decline.code),
                }
            }
            _ => {
                self.attempt(
                    provider,
                    contract_id,
                    "rejected",
                    None,
                    "invalid decline".into(),
                );
                Try::Failed
            }
        }
    }

    async fn try_provider(&mut self, provider: NodeId) -> Try {
        let market = self.market.clone();
        let inner = market.inner.clone();
        let me = inner.node_id;

        // 1. Quote.
        let quote = match QuoteRequest::new(me, &self.spec, self.nonce, now_ms()) {
            Ok(quote) => quote,
            Err(error) => return Try::Fatal(JobError::new("internal", error.to_string())),
        };
        let offer = match market.send(provider, MarketRequest::Quote(quote)).await {
            Ok(MarketResponse::Offer(offer)) => offer,
            Ok(MarketResponse::Decline(decline)) => {
                return self.declined(provider, None, decline.verify().ok());
            }
            Ok(MarketResponse::Error(error)) if error.code == ErrorCode::Unavailable => {
                // Its queues are full: like a busy decline.
                self.attempt(provider, None, "declined", Some("busy"), error.message);
                return Try::Declined { permanent: false };
            }
            Ok(MarketResponse::Error(error)) => {
                self.attempt(provider, None, "error", None, error.message);
                return Try::Failed;
            }
            Ok(_) => {
                self.attempt(
                    provider,
                    None,
                    "rejected",
                    None,
                    "unexpected answer to a quote".into(),
                );
                return Try::Failed;
            }
            Err(error) => {
                self.attempt(provider, None, "unreachable", None, error.to_string());
                return Try::Failed;
            }
        };
        let offer_doc = match offer.verify() {
            Ok(doc)
                if doc.provider == provider
                    && doc.requester == me
                    && doc.job_id == self.job_id
                    && doc.max_cost <= self.spec.max_price
                    && doc.valid_until_ms > now_ms()
                    && doc.price.max_cost(&self.spec.limits).ok() == Some(doc.max_cost) =>
            {
                doc
            }
            Err(error) => {
                market.penalize(provider, format!("offer: {error}")).await;
                self.attempt(provider, None, "rejected", None, format!("offer: {error}"));
                return Try::Failed;
            }
            Ok(_) => {
                let payload = suanli_protocol::codec::encode(&offer).unwrap_or_default();
                market
                    .record_misbehaviour(
                        provider,
                        MisbehaviourKind::ContractMismatch,
                        "offer does not match the quote".into(),
                        payload,
                    )
                    .await;
                self.attempt(
                    provider,
                    None,
                    "rejected",
                    None,
                    "offer does not match the quote".into(),
                );
                return Try::Failed;
            }
        };

        // 2. Contract, signed by us, countersigned by the provider.
        let now = now_ms();
        let job_hash = match self.spec.hash() {
            Ok(hash) => hash,
            Err(error) => return Try::Fatal(JobError::new("internal", error.to_string())),
        };
        let contract = Contract {
            job_id: self.job_id,
            job_hash,
            module_hash: self.spec.module_hash,
            stdin_hash: self.spec.stdin_hash,
            requester: me,
            provider,
            offer: offer.digest(),
            price: offer_doc.price,
            max_cost: offer_doc.max_cost,
            limits: self.spec.limits,
            deadline_ms: now
                + self.spec.limits.wall_time_ms
                + inner.jobs_config.deadline_grace_secs.saturating_mul(1000),
            nonce: inner
                .nonce
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            created_at_ms: now,
        };
        let proposal = match Signed::sign(&contract, &inner.keypair) {
            Ok(proposal) => proposal,
            Err(error) => return Try::Fatal(JobError::new("internal", error.to_string())),
        };
        let mut lifecycle = match ContractLifecycle::propose(proposal.clone()) {
            Ok(lifecycle) => lifecycle,
            Err(error) => return Try::Fatal(JobError::new("internal", error.to_string())),
        };
        let contract_id = lifecycle.id();
        let cosigned = match market
            .send(provider, MarketRequest::Propose(proposal))
            .await
        {
            Ok(MarketResponse::Countersigned(cosigned)) => cosigned,
            Ok(MarketResponse::Decline(decline)) => {
                let valid = lifecycle
                    .apply(ContractEvent::Declined(&decline))
                    .ok()
                    .and_then(|_| decline.verify().ok());
                return self.declined(provider, Some(contract_id), valid);
            }
            Ok(MarketResponse::Error(error)) => {
                self.attempt(provider, Some(contract_id), "error", None, error.message);
                return Try::Failed;
            }
            Ok(_) => {
                self.attempt(
                    provider,
                    Some(contract_id),
                    "rejected",
                    None,
                    "unexpected answer to a proposal".into(),
                );
                return Try::Failed;
            }
            Err(error) => {
                self.attempt(
                    provider,
                    Some(contract_id),
                    "unreachable",
                    None,
                    error.to_string(),
                );
                return Try::Failed;
            }
        };
        if let Err(error) = lifecycle.apply(ContractEvent::Countersigned(&cosigned)) {
            if matches!(error, LifecycleError::Verify(_)) {
                market
                    .penalize(provider, format!("countersignature: {error}"))
                    .await;
            } else {
                let payload = suanli_protocol::codec::encode(&cosigned).unwrap_or_default();
                market
                    .record_misbehaviour(
                        provider,
                        MisbehaviourKind::ContractMismatch,
                        error.to_string(),
                        payload,
                    )
                    .await;
            }
            self.attempt(
                provider,
                Some(contract_id),
                "rejected",
                None,
                error.to_string(),
            );
            return Try::Failed;
        }
        // 3. Durable in our ledger before any work starts.
        if let Err(error) = inner.ledger.append(EntryBody::Contract(cosigned)).await {
            return Try::Fatal(JobError::new("ledger", error.to_string()));
        }

        // 4. Execute; the delivery may arrive before the acknowledgement, so register first.
        let (done, mut delivered) = oneshot::channel();
        inner
            .awaiting_lock()
            .insert(contract_id, Awaiting { lifecycle, done });
        self.record.state = JobState::Running;
        self.record.provider = Some(provider.to_string());
        self.record.contract_id = Some(contract_id.to_string());
        self.save();
        let execute = MarketRequest::Execute(ExecuteRequest {
            contract_id,
            module: self.module.as_ref().clone(),
            stdin: self.stdin.clone(),
        });
        let started = match market.send(provider, execute).await {
            Ok(MarketResponse::Accepted {
                contract_id: accepted,
            }) if accepted == contract_id => Ok(()),
            Ok(MarketResponse::Error(error)) => Err(error.message),
            Ok(_) => Err("unexpected answer to execute".to_owned()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(message) = started {
            if inner.awaiting_lock().remove(&contract_id).is_some() {
                market
                    .record_failure(
                        contract_id,
                        self.job_id,
                        provider,
                        AttemptFailure::NotStarted,
                        message.clone(),
                    )
                    .await;
                self.attempt(
                    provider,
                    Some(contract_id),
                    "failed",
                    Some("not_started"),
                    message,
                );
                return Try::Failed;
            }
        } else if let Some(awaiting) = inner.awaiting_lock().get_mut(&contract_id) {
            let _ = awaiting.lifecycle.apply(ContractEvent::Started);
        }

        // 5. Wait for the delivery, the deadline, or the provider going away.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(contract.deadline_ms.saturating_sub(now_ms()));
        let mut disconnected_since: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let give_up = loop {
            tokio::select! {
                result = &mut delivered => break Some(result),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = check.tick() => {
                    if provider == me {
                        continue;
                    }
                    let connected = inner.network.is_connected(provider).await.unwrap_or(false);
                    match (connected, disconnected_since) {
                        (true, _) => disconnected_since = None,
                        (false, None) => disconnected_since = Some(tokio::time::Instant::now()),
                        (false, Some(since)) if since.elapsed() >= LOST_AFTER => break None,
                        (false, Some(_)) => {}
                    }
                }
            }
        };
        let result = match give_up {
            Some(result) => result.unwrap_or_else(|_| Err("delivery handler stopped".into())),
            None => {
                if inner.awaiting_lock().remove(&contract_id).is_some() {
                    let (failure, outcome, message) = if disconnected_since.is_some() {
                        (
                            AttemptFailure::PeerLost,
                            "lost",
                            "the provider went away".to_owned(),
                        )
                    } else {
                        (
                            AttemptFailure::DeadlineMissed,
                            "deadline_missed",
                            "no delivery before the deadline".to_owned(),
                        )
                    };
                    market
                        .record_failure(
                            contract_id,
                            self.job_id,
                            provider,
                            failure,
                            message.clone(),
                        )
                        .await;
                    // Best effort: tell the provider to drop it if it never started.
                    let _ = market
                        .send(provider, MarketRequest::Cancel { contract_id })
                        .await;
                    self.attempt(provider, Some(contract_id), outcome, None, message);
                    return Try::Failed;
                }
                // A delivery is being handled right now: take its result.
                match tokio::time::timeout(Duration::from_secs(60), delivered).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err("delivery handler stopped".into()),
                    Err(_) => Err("delivery handling took too long".into()),
                }
            }
        };
        match result {
            Ok(delivered) => {
                self.finish(provider, contract_id, delivered);
                Try::Finished
            }
            Err(message) => {
                self.attempt(provider, Some(contract_id), "rejected", None, message);
                Try::Failed
            }
        }
    }

    /// Closes the record from a settled delivery.
    fn finish(&mut self, provider: NodeId, contract_id: ContractId, delivered: Delivered) {
        let Delivered { receipt, output } = delivered;
        self.record.usage = Some(receipt.usage.into());
        self.record.cost = Some(receipt.cost.micro());
        match &receipt.outcome {
            Outcome::Succeeded {
                exit_code,
                output_hash,
                ..
            } => {
                self.record.exit_code = Some(*exit_code);
                self.record.output_hash = Some(output_hash.to_string());
                if let Err(error) = self.market.inner.jobs.put_blob(&output) {
                    warn!(job_id = %self.job_id, %error, "cannot store output");
                }
                if *exit_code == 0 {
                    self.record.state = JobState::Succeeded;
                    self.attempt(
                        provider,
                        Some(contract_id),
                        "succeeded",
                        None,
                        String::new(),
                    );
                } else {
                    self.attempt(
                        provider,
                        Some(contract_id),
                        "succeeded",
                        Some("nonzero_exit"),
                        format!("exited with code {exit_code}"),
                    );
                    self.fail(JobError::new(
                        "nonzero_exit",
                        format!("the job exited with code {exit_code}"),
                    ));
                }
            }
            Outcome::Failed { reason, message } => {
                match self.market.inner.jobs.put_blob(&output) {
                    Ok(hash) => self.record.output_hash = Some(hash.to_string()),
                    Err(error) => warn!(job_id = %self.job_id, %error, "cannot store output"),
                }
                self.attempt(
                    provider,
                    Some(contract_id),
                    "failed",
                    Some(reason.name()),
                    message.clone(),
                );
                self.fail(JobError::new(reason.name(), message.clone()));
            }
        }
        info!(job_id = %self.job_id, %provider, state = ?self.record.state, "job finished");
        self.save();
    }
}

impl super::Inner {
    pub(super) fn awaiting_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<ContractId, Awaiting>> {
        self.awaiting
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Market {
    /// A provider delivers a result: check it against the contract, countersign the settlement,
    /// append receipt and settlement durably, then hand the result to the waiting job task.
    pub(super) async fn handle_deliver(&self, peer: NodeId, delivery: Delivery) -> MarketResponse {
        let inner = &self.inner;
        let receipt = match delivery.receipt.verify() {
            Ok(receipt) => receipt,
            Err(error) => {
                self.penalize(peer, format!("receipt: {error}")).await;
                return wire_error(ErrorCode::BadRequest, "receipt does not verify");
            }
        };
        let contract_id = receipt.contract_id;
        // A delivery repeated after its answer was lost gets the same answer: settling is
        // idempotent, never done twice.
        if let Some(settled) = inner.recently_settled_lock().get(&contract_id, peer) {
            return MarketResponse::Settled(settled);
        }
        // Take the contract only when this peer is its provider, so nobody else can make the
        // real delivery miss it.
        let awaiting = {
            let mut awaiting = inner.awaiting_lock();
            match awaiting.get(&contract_id) {
                None => None,
                Some(entry) if entry.lifecycle.contract().provider != peer => {
                    return wire_error(ErrorCode::Forbidden, "not your contract");
                }
                Some(_) => awaiting.remove(&contract_id),
            }
        };
        let Some(Awaiting {
            mut lifecycle,
            done,
        }) = awaiting
        else {
            return wire_error(ErrorCode::NotFound, "no contract awaits this delivery");
        };
        let settled = match check_delivery(&mut lifecycle, &delivery, &receipt, inner) {
            Ok(settled) => settled,
            Err((kind, message)) => {
                if kind == MisbehaviourKind::BadSignature {
                    self.penalize(peer, message.clone()).await;
                } else {
                    let payload =
                        suanli_protocol::codec::encode(&delivery.receipt).unwrap_or_default();
                    self.record_misbehaviour(peer, kind, message.clone(), payload)
                        .await;
                }
                self.record_failure(
                    contract_id,
                    receipt.job_id,
                    peer,
                    AttemptFailure::Misbehaved,
                    message.clone(),
                )
                .await;
                let _ = done.send(Err(message.clone()));
                return wire_error(ErrorCode::BadRequest, message);
            }
        };
        let appended = async {
            inner
                .ledger
                .append(EntryBody::Receipt(delivery.receipt.clone()))
                .await?;
            inner
                .ledger
                .append(EntryBody::Settlement(settled.clone()))
                .await
        };
        if let Err(error) = appended.await {
            // Not durable, so not acknowledged; the job goes on elsewhere.
            warn!(%contract_id, %error, "ledger append failed; delivery not acknowledged");
            let _ = done.send(Err(format!("ledger unavailable: {error}")));
            return wire_error(
                ErrorCode::Unavailable,
                format!("ledger unavailable: {error}"),
            );
        }
        inner
            .recently_settled_lock()
            .insert(contract_id, peer, settled.clone());
        let _ = done.send(Ok(Delivered {
            receipt,
            output: delivery.output,
        }));
        MarketResponse::Settled(settled)
    }
}

/// Settlements answered recently, so a repeated delivery gets the same answer.
#[derive(Default)]
pub(super) struct RecentlySettled {
    by_contract:
        std::collections::HashMap<ContractId, (NodeId, CoSigned<suanli_protocol::Settlement>)>,
    order: std::collections::VecDeque<ContractId>,
}

/// How many answered settlements are remembered.
const RECENTLY_SETTLED: usize = 4096;

impl RecentlySettled {
    fn get(
        &self,
        contract_id: &ContractId,
        provider: NodeId,
    ) -> Option<CoSigned<suanli_protocol::Settlement>> {
        self.by_contract
            .get(contract_id)
            .filter(|(known, _)| *known == provider)
            .map(|(_, settled)| settled.clone())
    }

    fn insert(
        &mut self,
        contract_id: ContractId,
        provider: NodeId,
        settled: CoSigned<suanli_protocol::Settlement>,
    ) {
        if self.order.len() >= RECENTLY_SETTLED
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_contract.remove(&oldest);
        }
        self.order.push_back(contract_id);
        self.by_contract.insert(contract_id, (provider, settled));
    }
}

impl super::Inner {
    pub(super) fn recently_settled_lock(&self) -> std::sync::MutexGuard<'_, RecentlySettled> {
        self.recently_settled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Declines that asking the same provider again cannot change.
fn is_permanent(code: DeclineCode) -> bool {
    !matches!(
        code,
        DeclineCode::Busy | DeclineCode::NoCapacity | DeclineCode::CreditLimit
    )
}

/// All checks on a delivery; returns the countersigned settlement.
fn check_delivery(
    lifecycle: &mut ContractLifecycle,
    delivery: &Delivery,
    receipt: &Receipt,
    inner: &super::Inner,
) -> Result<CoSigned<suanli_protocol::Settlement>, (MisbehaviourKind, String)> {
    let kind_of = |error: &LifecycleError| match error {
        LifecycleError::UsageBeyondLimits(_) => MisbehaviourKind::UsageBeyondLimits,
        LifecycleError::WrongCost { .. } | LifecycleError::CostAboveMax { .. } => {
            MisbehaviourKind::WrongCost
        }
        LifecycleError::Verify(_) => MisbehaviourKind::BadSignature,
        _ => MisbehaviourKind::ContractMismatch,
    };
    lifecycle
        .apply(ContractEvent::Delivered(&delivery.receipt))
        .map_err(|error| (kind_of(&error), format!("receipt refused: {error}")))?;
    match &receipt.outcome {
        Outcome::Succeeded {
            output_hash,
            output_len,
            ..
        } => {
            if Hash32::of(&delivery.output) != *output_hash
                || delivery.output.len() as u64 != *output_len
            {
                return Err((
                    MisbehaviourKind::ContractMismatch,
                    "output does not match the receipt".into(),
                ));
            }
        }
        Outcome::Failed { .. } => {
            if delivery.output.len() as u64 > lifecycle.contract().limits.output_bytes {
                return Err((
                    MisbehaviourKind::UsageBeyondLimits,
                    "output beyond the limit".into(),
                ));
            }
        }
    }
    let (settled, _) =
        CoSigned::countersign(delivery.settlement.clone(), &inner.keypair).map_err(|error| {
            (
                MisbehaviourKind::BadSignature,
                format!("settlement refused: {error}"),
            )
        })?;
    lifecycle
        .apply(ContractEvent::Settled(&settled))
        .map_err(|error| (kind_of(&error), format!("settlement refused: {error}")))?;
    Ok(settled)
}
