//! The requester side: placing one submitted job, provider after provider, until a contract of it
//! settles, it fails with a reason, or the placement deadline passes with the reasons collected.
//!
//! One task per job owns its record. Each attempt is a requester machine
//! (`suanli_protocol::engine::requester`) run by a driver inside this task. After a restart the
//! task first reads the job's contracts back from the ledger: a settled one ends the job at once
//! (its receipt and stored output say how), open ones are resumed (the provider is asked to run
//! the job again, or the contract ends at its deadline), and only then does placement go on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use suanli_protocol::engine::requester::{JobTerms, Requester};
use suanli_protocol::engine::{AttemptEnd, Context, Held, Status};
use suanli_protocol::{ContractId, Hash32, JobSpec, NodeId, Outcome};
use tracing::{debug, error, info, warn};

use super::contracts::{Driver, Machine, Payload};
use super::events::{JobEvent, Quote};
use super::jobs::{
    Attempt, AttemptOutcome, AttemptReason, JobError, JobErrorCode, JobRecord, JobState,
};
use super::{Market, ranking};
use crate::clock::now_ms;

/// How many candidates one placement round asks, one after the other.
const CANDIDATES_PER_ROUND: usize = 3;
/// How long a decided end waits before writing again what the storage refused (a full disk).
const STORE_RETRY: Duration = Duration::from_secs(1);

/// One job being placed.
pub(super) struct JobTask {
    pub(super) market: Market,
    /// Cancelled when the submitter cancels the job.
    pub(super) cancel: tokio_util::sync::CancellationToken,
    pub(super) record: JobRecord,
    pub(super) terms: JobTerms,
    pub(super) payload: Arc<Payload>,
    /// Hears of the first contract signed (a model session waits for it).
    pub(super) signed: Option<super::SignedHook>,
    /// The providers claimed by the runs of this job's replicated job, when it is one of its
    /// runs: this run claims its provider there before offering it a contract.
    pub(super) group: Option<Arc<super::replicas::GroupShare>>,
}

impl JobTask {
    fn save(&mut self) {
        self.record.updated_at_ms = now_ms();
        if let Err(error) = self.market.inner.jobs.save(&self.record) {
            warn!(job_id = %self.record.job_id, %error, "cannot save job record");
        }
    }

    /// Makes the final record durable (again every [`STORE_RETRY`] while the storage refuses),
    /// then tells whoever waits for it: a job reported final is final after any crash. `false`
    /// when the node stops first; its next start ends the job again.
    async fn save_final(&mut self) -> bool {
        let durable = self.save_durably().await;
        if durable {
            self.announce();
        }
        durable
    }

    /// Writes the record and waits for a barrier (again every [`STORE_RETRY`] while the storage
    /// refuses); `false` when the node stops first.
    async fn save_durably(&mut self) -> bool {
        self.record.updated_at_ms = now_ms();
        while let Err(error) = self.market.inner.jobs.save_durably(&self.record).await {
            warn!(job_id = %self.record.job_id, %error, "cannot save the final job record durably; retried");
            if !self.pause().await {
                return false;
            }
        }
        true
    }

    /// Tells live readers of this job (and of its group) what it does.
    fn emit(&self, event: JobEvent) {
        self.market
            .inner
            .events
            .announce(self.record.job_id, self.record.group, event);
    }

    /// Wakes whoever waits for this job to end, and counts its ending.
    fn announce(&self) {
        let record = &self.record;
        let seconds = record.updated_at_ms.saturating_sub(record.created_at_ms) as f64 / 1000.0;
        let state = if record.state == JobState::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        self.market.inner.metrics.job_finished(state, seconds);
        let _ = self.market.inner.finished.send(record.job_id);
    }

    /// Waits [`STORE_RETRY`]; `false` when the node stops first.
    async fn pause(&self) -> bool {
        tokio::select! {
            () = self.market.inner.cancel.cancelled() => false,
            () = tokio::time::sleep(STORE_RETRY) => true,
        }
    }

    async fn fail(&mut self, error: JobError) {
        info!(job_id = %self.record.job_id, code = ?error.code, message = %error.message, "job failed");
        self.record.state = JobState::Failed;
        self.record.error = Some(error);
        self.save_final().await;
    }

    /// Places the job to its end, or until the node stops (the next start resumes it).
    pub(super) async fn run(mut self) {
        if !self.resume().await {
            self.place().await;
        }
        self.market.job_task_ended(&self.record.job_id);
        self.market
            .inner
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// What the ledger holds of this job: a settled contract ends it; open ones are driven to
    /// their end. `true` when this task is done with the job (it ended, or the node stops with
    /// its settlement not yet in the record: the next start ends it).
    async fn resume(&mut self) -> bool {
        let inner = self.market.inner.clone();
        let ids = match inner.ledger.contracts_of_job(self.record.job_id) {
            Ok(ids) => ids,
            Err(error) => {
                warn!(job_id = %self.record.job_id, %error, "cannot read the job's contracts");
                return false;
            }
        };
        let mut open = Vec::new();
        for id in ids {
            let held = match inner
                .ledger
                .contract_docs(id)
                .map(|docs| docs.map(Held::from_ledger))
            {
                Ok(Some(Ok(held))) => held,
                _ => continue,
            };
            match held.status() {
                Status::Settled => {
                    self.finish_from_ledger(&held).await;
                    return true;
                }
                Status::Failed => {}
                Status::Signed | Status::Delivered => open.push(held),
            }
        }
        for held in open {
            let provider = held.contract().provider;
            if let Some(group) = &self.group {
                // Claimed at the group's start from the same ledger; a conflict is logged.
                if !group.claim(provider, self.record.job_id) {
                    warn!(job_id = %self.record.job_id, %provider, "a replica resumes on a provider another replica holds");
                }
            }
            info!(job_id = %self.record.job_id, contract = %held.id(), %provider, "resuming a contract");
            self.running(provider, held.id());
            let (machine, effects) = {
                let ctx = Context {
                    keypair: &inner.keypair,
                    now_ms: now_ms(),
                };
                Requester::resume(&ctx, held, Some(self.terms.clone()))
            };
            let driver = Driver::new(
                self.market.clone(),
                (Machine::Requester(Box::new(machine)), effects, None),
                Some(self.payload.clone()),
            )
            .cancelled_by(self.cancel.clone());
            let Some(end) = driver.run_attempt(&mut |_| {}).await else {
                return false;
            };
            if self.attempt_ended(provider, end).await {
                return true;
            }
            if let Some(group) = &self.group {
                group.release(provider, self.record.job_id);
            }
        }
        false
    }

    /// Ends the job from a settled contract in the ledger and the output stored with it (made
    /// durable with the receipt, kept until the job's final record holds it).
    async fn finish_from_ledger(&mut self, held: &Held) {
        let Some(receipt) = held.receipt() else {
            return;
        };
        let output = loop {
            match self.market.inner.jobs.output(&held.id()) {
                Ok(output) => break output,
                Err(error) => {
                    warn!(job_id = %self.record.job_id, %error, "cannot read the output of a settled contract; retried");
                    if !self.pause().await {
                        return;
                    }
                }
            }
        };
        if output.is_none() {
            // Only a damaged database loses it: the record keeps the hash the receipt was
            // signed for, and reading the output answers 404.
            error!(job_id = %self.record.job_id, contract = %held.id(), "the output of a settled contract is missing");
        }
        let contract = held.contract();
        self.finish(contract.provider, held.id(), receipt, output.as_deref())
            .await;
    }

    /// Stores the output and the final record, both durably (retrying while the storage
    /// refuses), and only then forgets the contract's copy of the output.
    ///
    /// The settled job is announced as soon as its record is written, before the barrier that
    /// makes it durable (one barrier fewer on every job's path): what it says is already
    /// durable elsewhere. The settlement and the contract's copy of the output were made durable
    /// with the receipt, and after a crash [`JobTask::resume`] ends the job again from them,
    /// with the same result (the record reads `running` until it has).
    async fn finish(
        &mut self,
        provider: NodeId,
        contract_id: ContractId,
        receipt: &suanli_protocol::Receipt,
        output: Option<&[u8]>,
    ) {
        let output_hash = loop {
            let Some(output) = output else {
                break match receipt.outcome {
                    Outcome::Succeeded { output_hash, .. } => output_hash,
                    Outcome::Failed { .. } => Hash32::of(&[]),
                };
            };
            match self.market.inner.jobs.blobs().put(output) {
                Ok(hash) => break hash,
                Err(error) => {
                    warn!(job_id = %self.record.job_id, %error, "cannot store the output; retried");
                    if !self.pause().await {
                        return;
                    }
                }
            }
        };
        self.record
            .settle(provider, contract_id, receipt, output_hash);
        info!(job_id = %self.record.job_id, %provider, state = ?self.record.state, "job finished");
        self.save();
        self.emit(JobEvent::Receipt {
            provider,
            contract_id,
            exit_code: self.record.exit_code,
            fuel: receipt.usage.fuel,
            wall_ms: receipt.usage.wall_time_ms,
            output_hash,
        });
        self.emit(JobEvent::Settlement {
            contract_id,
            state: self.record.state,
            cost: self.record.cost,
        });
        self.announce();
        if self.save_durably().await {
            self.market.inner.jobs.drop_output(&contract_id);
        }
    }

    /// A contract signed by both parties: the job is the provider's to run.
    fn running(&mut self, provider: NodeId, contract_id: ContractId) {
        self.record.state = JobState::Running;
        self.record.provider = Some(provider);
        self.record.contract_id = Some(contract_id);
        self.save();
        self.emit(JobEvent::Contract {
            provider,
            contract_id,
        });
        self.emit(JobEvent::Running {
            provider,
            contract_id,
        });
    }

    /// Records an attempt's end; `true` when it ended the job.
    async fn attempt_ended(&mut self, provider: NodeId, end: AttemptEnd) -> bool {
        let attempt = Attempt::from_end(provider, &end, now_ms());
        debug!(job_id = %self.record.job_id, %provider, outcome = ?attempt.outcome, reason = ?attempt.reason, message = %attempt.message, "attempt");
        let event = match attempt.outcome {
            AttemptOutcome::Succeeded | AttemptOutcome::Failed => None,
            AttemptOutcome::Declined => Some(JobEvent::Decline {
                provider,
                reason: attempt.reason,
                message: attempt.message.clone(),
            }),
            outcome => Some(JobEvent::Failover {
                provider,
                outcome,
                reason: attempt.reason,
                message: attempt.message.clone(),
            }),
        };
        self.record.push_attempt(attempt);
        if let AttemptEnd::Settled {
            contract_id,
            receipt,
            output,
        } = &end
        {
            self.finish(provider, *contract_id, receipt, Some(output))
                .await;
            return true;
        }
        if self.record.state == JobState::Running {
            // The attempt ended without a result: back to looking for a provider.
            self.record.state = JobState::Negotiating;
            self.record.provider = None;
            self.record.contract_id = None;
        }
        self.save();
        if let Some(event) = event {
            self.emit(event);
        }
        false
    }

    /// Asks providers until one settles the job or the placement deadline passes. `true` when the
    /// job is over (`false`: the node is stopping and the job resumes at the next start).
    async fn place(&mut self) -> bool {
        self.record.state = JobState::Negotiating;
        self.save();
        let inner = self.market.inner.clone();
        let spec: &JobSpec = &self.terms.spec;
        let pinned = spec.placement.provider;
        let placement_deadline = now_ms()
            + inner
                .jobs_config
                .placement_timeout_secs
                .saturating_mul(1000);
        let mut excluded: HashSet<NodeId> = HashSet::new();
        let mut backoff = Duration::from_millis(50);
        let mut quoted: Vec<NodeId> = Vec::new();
        let salt = u64::from_le_bytes(
            self.record.job_id.0.as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        );
        loop {
            if inner.cancel.is_cancelled() {
                return false;
            }
            if self.cancel.is_cancelled() {
                self.fail(JobError::new(
                    JobErrorCode::Cancelled,
                    "cancelled by the submitter",
                ))
                .await;
                return true;
            }
            if now_ms() > placement_deadline {
                let message = self.summary_of_attempts();
                self.fail(JobError::new(JobErrorCode::NoProvider, message))
                    .await;
                return true;
            }
            let mut candidates = ranking::candidates(
                &inner.mesh,
                &self.terms.spec,
                inner.node_id,
                now_ms(),
                &excluded,
                salt,
            );
            // A provider this node's ledger shows to be dishonest gets no more work, unless the
            // submitter named it.
            candidates.retain(|candidate| {
                self.terms.spec.placement.provider == Some(candidate.node)
                    || !inner.reputation.distrusted(&candidate.node)
            });
            if let Some(group) = &self.group {
                // A replica runs where no other replica of its job does.
                let others = group.held_by_others(self.record.job_id);
                candidates.retain(|candidate| !others.contains(&candidate.node));
            }
            if candidates.is_empty() && self.record.attempts.is_empty() {
                debug!(job_id = %self.record.job_id, "no node in the capacity view fits the job yet");
            }
            candidates.truncate(CANDIDATES_PER_ROUND);
            let quotes: Vec<Quote> = candidates
                .iter()
                .map(|candidate| Quote {
                    provider: candidate.node,
                    max_cost: candidate.max_cost.micro(),
                    load_permille: candidate.load_permille,
                })
                .collect();
            // A new ranking is news; a load that moved is not.
            let ranked: Vec<NodeId> = quotes.iter().map(|quote| quote.provider).collect();
            if ranked != quoted && !ranked.is_empty() {
                self.emit(JobEvent::Quote { candidates: quotes });
            }
            quoted = ranked;
            for candidate in candidates {
                let provider = candidate.node;
                if let Some(group) = &self.group
                    && !group.claim(provider, self.record.job_id)
                {
                    continue; // another replica claimed it since the candidates were ranked
                }
                let (machine, effects) = {
                    let ctx = Context {
                        keypair: &inner.keypair,
                        now_ms: now_ms(),
                    };
                    let nonce = inner
                        .nonce
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Requester::start(&ctx, self.terms.clone(), provider, nonce)
                };
                let driver = Driver::new(
                    self.market.clone(),
                    (Machine::Requester(Box::new(machine)), effects, None),
                    Some(self.payload.clone()),
                )
                .cancelled_by(self.cancel.clone());
                self.emit(JobEvent::Offer { provider });
                let mut signed = self.signed.take();
                let end = driver
                    .run_attempt(&mut |id| {
                        self.running(provider, id);
                        if let Some(signed) = signed.take() {
                            let _ = signed.send((provider, id));
                        }
                    })
                    .await;
                self.signed = self.signed.take().or(signed);
                let Some(end) = end else {
                    return false;
                };
                if self.attempt_ended(provider, end.clone()).await {
                    return true;
                }
                if let Some(group) = &self.group {
                    group.release(provider, self.record.job_id);
                }
                if self.cancel.is_cancelled() {
                    break;
                }
                if let AttemptEnd::LedgerFailed { message } = &end {
                    // This node cannot record contracts now (a full disk): wait, then go on.
                    warn!(job_id = %self.record.job_id, %message, "ledger refused a contract");
                }
                // A pinned job keeps asking its provider while what stands in the way can pass (it
                // is unreachable, lost, busy); a refusal that asking again cannot change ends it.
                if refuses_for_good(&end) || (pinned != Some(provider) && excludes(&end)) {
                    excluded.insert(provider);
                }
                if pinned.is_some_and(|pinned| excluded.contains(&pinned)) {
                    let message = self.summary_of_attempts();
                    self.fail(JobError::new(JobErrorCode::NoProvider, message))
                        .await;
                    return true;
                }
            }
            tokio::select! {
                _ = inner.cancel.cancelled() => return false,
                _ = self.cancel.cancelled() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
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
                let reason = attempt.reason.map_or("-", AttemptReason::name);
                format!("{} {reason}: {}", attempt.outcome.name(), attempt.message)
            })
            .collect();
        reasons.sort();
        reasons.dedup();
        format!("no provider took the job: {}", reasons.join("; "))
    }
}

/// Whether the provider refused the job in a way asking again cannot change: a signed decline
/// for its limits, price or executor, or an answer that broke the protocol.
fn refuses_for_good(end: &AttemptEnd) -> bool {
    use suanli_protocol::DeclineCode as D;
    match end {
        AttemptEnd::Declined { code, .. } => !matches!(
            code,
            D::Busy | D::NoCapacity | D::CreditLimit | D::ShuttingDown
        ),
        AttemptEnd::Rejected { .. } => true,
        _ => false,
    }
}

/// Whether to ask another provider rather than this one again: it refused for good, or failed
/// this job once already (lost, missed the deadline, did not start it).
fn excludes(end: &AttemptEnd) -> bool {
    use suanli_protocol::DeclineCode as D;
    match end {
        AttemptEnd::Declined { code, .. } => !matches!(
            code,
            D::Busy | D::NoCapacity | D::CreditLimit | D::ShuttingDown
        ),
        AttemptEnd::LedgerFailed { .. } => false,
        _ => true,
    }
}
