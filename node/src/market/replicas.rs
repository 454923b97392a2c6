//! Replicated jobs (`replicas` > 1): one group record and one ordinary child job per replica,
//! each placed on its own provider under its own contract; once every child has ended, a strict
//! majority of their signed results decides the group, and evidence is stored against every
//! provider whose result differed (RFC 010).
//!
//! ```text
//!  submit ─▶ group record + k child records (one barrier) ─▶ k job tasks ─┐ claims: one
//!                                                                          │ provider per child
//!  group task: waits for every child's final record ◀── finished ─────────┘ (GroupShare)
//!    → votes from the children's receipts in the ledger → majority → evidence (durable)
//!    → the group's final record (durable) → announced
//! ```
//!
//! A *spot check* (`jobs.spot_check_fraction`) is a group that grows: its first child is an
//! ordinary job, listed and answered as any other; once it has completed the group adds a check
//! run on another provider, and a tie-break when the two disagree ([`spot_check_grows`]), then
//! decides by the same majority rule. Its runs are this node's own work (no API token).
//!
//! The group task owns the group's record and never writes a child's; each child's job task
//! owns its own, as for any job. The verdict is a pure function of the children's final records
//! and the receipts in the ledger, both durable before the group decides, so a group decided
//! again after a crash reaches the same verdict and stores the same evidence under the same
//! keys. This module must never settle, withhold or alter a child's contract: every replica's
//! contract settles like any other.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli_protocol::replicas::{self as quorum, ReplicaMismatch, ReplicaRun, Vote};
use suanli_protocol::{JobId, NodeId};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::Market;
use super::jobs::{
    EvidenceKind, JobError, JobErrorCode, JobRecord, JobState, MismatchRecord, ReplicaGroup,
};
use crate::clock::now_ms;

/// How long a decided group waits before writing again what the storage refused.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The providers a group's children hold, so that no two children run on one provider. A
/// provider is claimed before a contract is offered to it, released when that attempt ends
/// without a result, and kept by a child whose contract settled.
#[derive(Debug, Default)]
pub(super) struct GroupShare {
    taken: Mutex<HashMap<NodeId, JobId>>,
}

impl GroupShare {
    fn taken(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, JobId>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `provider` for `child`; `false` when another child holds it.
    pub(super) fn claim(&self, provider: NodeId, child: JobId) -> bool {
        *self.taken().entry(provider).or_insert(child) == child
    }

    /// Releases `provider` if `child` holds it.
    pub(super) fn release(&self, provider: NodeId, child: JobId) {
        let mut taken = self.taken();
        if taken.get(&provider) == Some(&child) {
            taken.remove(&provider);
        }
    }

    /// The providers other children hold.
    pub(super) fn held_by_others(&self, child: JobId) -> HashSet<NodeId> {
        self.taken()
            .iter()
            .filter(|(_, holder)| **holder != child)
            .map(|(provider, _)| *provider)
            .collect()
    }

    /// A share holding, for each child, the providers of the contracts it has in the ledger that
    /// have not failed (what a restart must not offer to another child).
    pub(super) fn from_ledger(market: &Market, children: &[JobId]) -> GroupShare {
        let share = GroupShare::default();
        let ledger = &market.inner.ledger;
        for child in children {
            let Ok(ids) = ledger.contracts_of_job(*child) else {
                continue;
            };
            for id in ids {
                let Ok(Some(docs)) = ledger.contract_docs(id) else {
                    continue;
                };
                if docs.failure.is_some() {
                    continue;
                }
                if let Ok(contract) = docs.contract.decode_unverified() {
                    share.claim(contract.provider, *child);
                }
            }
        }
        share
    }
}

/// What one child contributes to its group's verdict.
struct Ballot {
    record: JobRecord,
    /// Its contract and receipt, when its contract settled with a completed run.
    run: Option<(ReplicaRun, Vote)>,
}

/// The children's votes, in their order.
fn votes_of(ballots: &[Ballot]) -> Vec<Option<Vote>> {
    ballots
        .iter()
        .map(|ballot| ballot.run.as_ref().map(|(_, vote)| *vote))
        .collect()
}

/// The verdict of a group whose children have all ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// A strict majority agreed on this vote; `winner` is the index of a child that cast it and
    /// `odd` those of the children whose vote differed.
    Majority {
        vote: Vote,
        winner: usize,
        odd: Vec<usize>,
    },
    /// Completed runs disagreed and no strict majority agreed.
    Disagree { votes: usize, distinct: usize },
    /// Too few runs completed for a majority (none disagreeing).
    TooFew { votes: usize },
}

/// Decides a group of `asked` replicas from the votes of its children (`None`: no vote).
pub(super) fn decide(votes: &[Option<Vote>], asked: usize) -> Verdict {
    let cast: Vec<Vote> = votes.iter().flatten().copied().collect();
    match quorum::majority(&cast, asked) {
        Some(vote) => Verdict::Majority {
            vote,
            winner: votes
                .iter()
                .position(|cast| *cast == Some(vote))
                .unwrap_or_default(),
            odd: votes
                .iter()
                .enumerate()
                .filter(|(_, cast)| cast.is_some_and(|cast| cast != vote))
                .map(|(index, _)| index)
                .collect(),
        },
        None => {
            let distinct = cast.iter().collect::<HashSet<_>>().len();
            if distinct > 1 {
                Verdict::Disagree {
                    votes: cast.len(),
                    distinct,
                }
            } else {
                Verdict::TooFew { votes: cast.len() }
            }
        }
    }
}

/// Whether a spot check needs one more run before it decides, from the votes of its runs so
/// far (the checked job's first): a check once the job completed, and a tie-break when the check
/// disagrees with it. Two runs that agree decide; a run that failed leaves it undecided.
pub(super) fn spot_check_grows(votes: &[Option<Vote>]) -> bool {
    match votes {
        [Some(_)] => true,
        [Some(job), Some(check)] => job != check,
        _ => false,
    }
}

/// The task that owns a group's record: it waits for the children and decides.
pub(super) struct GroupTask {
    pub(super) market: Market,
    pub(super) record: JobRecord,
    /// The providers its children hold (what a run added to a spot check avoids).
    pub(super) share: Arc<GroupShare>,
}

impl GroupTask {
    fn children(&self) -> Vec<JobId> {
        self.record
            .replicas
            .as_ref()
            .map(|group| group.children.clone())
            .unwrap_or_default()
    }

    /// Waits for every child to end, decides, and stores the verdict, or returns when the node
    /// stops (the next start decides again).
    pub(super) async fn run(mut self) {
        self.wait_and_decide().await;
        self.market
            .inner
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    async fn wait_and_decide(&mut self) {
        let inner = self.market.inner.clone();
        // Subscribe before reading, so that a child ending in between is not missed.
        let mut finished = inner.finished.subscribe();
        let ballots = loop {
            let Some(records) = self.wait_children(&mut finished).await else {
                return;
            };
            let ballots: Vec<Ballot> = records
                .into_iter()
                .map(|record| {
                    let run = self.run_of(&record);
                    Ballot { record, run }
                })
                .collect();
            if !self.grows(&ballots) {
                break ballots;
            }
            match self
                .market
                .add_check_run(&mut self.record, &self.share)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    warn!(check = %self.record.job_id, "the checked job's spec is unreadable; the spot check decides as it is");
                    break ballots;
                }
                Err(error) => {
                    warn!(check = %self.record.job_id, %error, "cannot store a spot check's run; retried");
                    if !self.pause().await {
                        return;
                    }
                }
            }
        };
        self.decide_and_store(ballots).await;
    }

    /// Whether this group is a spot check that needs another run and may have one (it was not
    /// cancelled).
    fn grows(&self, ballots: &[Ballot]) -> bool {
        let spot_check = self.record.replicas.as_ref().is_some_and(|g| g.spot_check);
        let votes = votes_of(ballots);
        spot_check
            && spot_check_grows(&votes)
            && !self.market.inner.jobs.cancel_requested(&self.record.job_id)
    }

    /// Waits until every child's record is final and returns them, or `None` when the node
    /// stops.
    async fn wait_children(
        &mut self,
        finished: &mut tokio::sync::broadcast::Receiver<JobId>,
    ) -> Option<Vec<JobRecord>> {
        let inner = self.market.inner.clone();
        let children = self.children();
        loop {
            let mut records = Vec::with_capacity(children.len());
            for child in &children {
                match inner.jobs.get(child) {
                    Ok(Some(record)) => records.push(record),
                    Ok(None) => {
                        warn!(group = %self.record.job_id, %child, "a replica's record is missing");
                    }
                    Err(error) => {
                        warn!(group = %self.record.job_id, %child, %error, "cannot read a replica's record");
                    }
                }
            }
            if records.len() == children.len() && records.iter().all(|r| r.state.is_final()) {
                return Some(records);
            }
            let running = records.iter().any(|r| r.state == JobState::Running);
            let state = if running {
                JobState::Running
            } else {
                JobState::Negotiating
            };
            if self.record.state != state {
                self.record.state = state;
                self.save();
            }
            loop {
                let announced = tokio::select! {
                    () = inner.cancel.cancelled() => return None,
                    announced = finished.recv() => announced,
                    // A record unreadable a moment ago is read again.
                    () = tokio::time::sleep(STORE_RETRY), if records.len() < children.len() => break,
                };
                match announced {
                    Ok(id) if !children.contains(&id) => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    }

    /// Decides from the children's ballots, stores the evidence and then the verdict durably,
    /// and announces it.
    async fn decide_and_store(&mut self, ballots: Vec<Ballot>) {
        let inner = self.market.inner.clone();
        let replicas = ballots.len();
        let votes = votes_of(&ballots);
        let verdict = decide(&votes, replicas);
        let now = now_ms();
        let mut odd_providers = Vec::new();
        if let Verdict::Majority { vote, odd, .. } = &verdict {
            let majority: Vec<ReplicaRun> = ballots
                .iter()
                .filter_map(|ballot| ballot.run.as_ref())
                .filter(|(_, cast)| cast == vote)
                .map(|(run, _)| run.clone())
                .collect();
            for index in odd {
                let Some(ballot) = ballots.get(*index) else {
                    continue;
                };
                let Some((run, _)) = &ballot.run else {
                    continue;
                };
                let Some(record) = self.mismatch(run, &majority, now) else {
                    continue;
                };
                while let Err(error) = inner.jobs.put_mismatch(&record) {
                    warn!(group = %self.record.job_id, %error, "cannot store replica evidence; retried");
                    if !self.pause().await {
                        return;
                    }
                }
                warn!(group = %self.record.job_id, provider = %record.provider, "a replica's result differs from the majority's; evidence stored");
                inner
                    .reputation
                    .record_mismatch(record.provider, record.group);
                odd_providers.push(record.provider);
            }
        }
        self.conclude(&ballots, &verdict, odd_providers);
        // Durable before announced: the evidence and this record go under one barrier.
        self.record.updated_at_ms = now_ms();
        while let Err(error) = inner.jobs.save_durably(&self.record).await {
            warn!(group = %self.record.job_id, %error, "cannot save the group's verdict durably; retried");
            if !self.pause().await {
                return;
            }
        }
        info!(group = %self.record.job_id, state = ?self.record.state, "replicated job decided");
        let _ = inner.finished.send(self.record.job_id);
    }

    /// A child's contract and receipt from the ledger, with its vote, if its contract settled
    /// with a completed run.
    fn run_of(&self, record: &JobRecord) -> Option<(ReplicaRun, Vote)> {
        let contract_id = record.contract_id?;
        let docs = self.market.inner.ledger.contract_docs(contract_id).ok()??;
        docs.settlement.as_ref()?;
        let signed = docs.receipt?;
        // Verified by the engine before it was recorded.
        let receipt = signed.decode_unverified().ok()?;
        let vote = Vote::of(&receipt.outcome)?;
        Some((
            ReplicaRun {
                contract: docs.contract,
                receipt: signed,
            },
            vote,
        ))
    }

    /// The evidence against `odd`'s provider, checked as anyone would check it.
    fn mismatch(
        &self,
        odd: &ReplicaRun,
        majority: &[ReplicaRun],
        now: u64,
    ) -> Option<MismatchRecord> {
        let evidence = ReplicaMismatch {
            odd: odd.clone(),
            majority: majority.to_vec(),
        };
        let verified = match evidence.verify() {
            Ok(verified) => verified,
            Err(error) => {
                warn!(group = %self.record.job_id, %error, "replica evidence does not verify; not stored");
                return None;
            }
        };
        let bytes = match evidence.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(group = %self.record.job_id, %error, "replica evidence does not encode");
                return None;
            }
        };
        Some(MismatchRecord {
            group: self.record.job_id,
            kind: EvidenceKind::Job,
            provider: verified.offender,
            contract_id: verified.odd_contract,
            at_ms: now,
            evidence: bytes,
        })
    }

    /// Writes the verdict into the group's record (in memory).
    fn conclude(&mut self, ballots: &[Ballot], verdict: &Verdict, odd: Vec<NodeId>) {
        let record = &mut self.record;
        // A spot check costs its own runs; the checked job's cost is its submitter's.
        let checked = usize::from(record.replicas.as_ref().is_some_and(|g| g.spot_check));
        let cost = ballots
            .iter()
            .skip(checked)
            .filter_map(|ballot| ballot.record.cost)
            .fold(0u64, u64::saturating_add);
        record.cost = Some(cost);
        if let Some(group) = record.replicas.as_mut() {
            group.odd = odd;
        }
        let replicas = ballots.len();
        match verdict {
            Verdict::Majority { winner, .. } => {
                let Some(winner) = ballots.get(*winner) else {
                    return;
                };
                let child = &winner.record;
                record.provider = child.provider;
                record.contract_id = child.contract_id;
                record.exit_code = child.exit_code;
                // The usage shown is the deciding run's; the cost is every run's.
                record.usage = child.usage;
                record.output_hash = child.output_hash;
                record.state = child.state;
                record.error = child.error.clone();
            }
            Verdict::Disagree { votes, distinct } => {
                record.state = JobState::Failed;
                record.error = Some(JobError::new(
                    JobErrorCode::ReplicasDisagree,
                    format!(
                        "{votes} of {replicas} replicas completed with {distinct} different \
                         results, and no strict majority agreed"
                    ),
                ));
            }
            Verdict::TooFew { votes } => {
                record.state = JobState::Failed;
                // The replicas' most common failure says why.
                let mut codes: Vec<(JobErrorCode, usize, String)> = Vec::new();
                for error in ballots.iter().filter_map(|b| b.record.error.as_ref()) {
                    match codes.iter_mut().find(|(code, _, _)| *code == error.code) {
                        Some((_, count, _)) => *count += 1,
                        None => codes.push((error.code, 1, error.message.clone())),
                    }
                }
                let (code, message) = codes
                    .into_iter()
                    .max_by_key(|(_, count, _)| *count)
                    .map_or((JobErrorCode::Internal, String::new()), |(code, _, m)| {
                        (code, m)
                    });
                let message = if checked == 1 {
                    format!(
                        "the spot check is inconclusive: {votes} of its {replicas} runs \
                         completed: {message}"
                    )
                } else {
                    format!(
                        "only {votes} of {replicas} replicas completed, too few for a majority: \
                         {message}"
                    )
                };
                record.error = Some(JobError::new(code, message));
            }
        }
    }

    fn save(&mut self) {
        self.record.updated_at_ms = now_ms();
        if let Err(error) = self.market.inner.jobs.save(&self.record) {
            warn!(group = %self.record.job_id, %error, "cannot save the group's record");
        }
    }

    async fn pause(&self) -> bool {
        tokio::select! {
            () = self.market.inner.cancel.cancelled() => false,
            () = tokio::time::sleep(STORE_RETRY) => true,
        }
    }
}

/// A group record's group part for `children`.
pub(super) fn group_of(children: Vec<JobId>) -> ReplicaGroup {
    ReplicaGroup {
        children,
        odd: Vec::new(),
        spot_check: false,
    }
}

/// A spot check's group part, before its check run: the checked job is its first run.
pub(super) fn spot_check_of(job: JobId) -> ReplicaGroup {
    ReplicaGroup {
        children: vec![job],
        odd: Vec::new(),
        spot_check: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_protocol::Hash32;

    fn vote(output: &[u8]) -> Option<Vote> {
        Some(Vote {
            exit_code: 0,
            output_hash: Hash32::of(output),
        })
    }

    #[test]
    fn the_majority_decides_and_names_the_odd_ones() {
        let (a, b) = (vote(b"a"), vote(b"b"));
        assert_eq!(
            decide(&[b, a, a], 3),
            Verdict::Majority {
                vote: a.unwrap(),
                winner: 1,
                odd: vec![0]
            }
        );
        // A replica that failed casts no vote and is not odd.
        assert_eq!(
            decide(&[a, None, a], 3),
            Verdict::Majority {
                vote: a.unwrap(),
                winner: 0,
                odd: vec![]
            }
        );
        assert_eq!(
            decide(&[a, b, None], 3),
            Verdict::Disagree {
                votes: 2,
                distinct: 2
            }
        );
        assert_eq!(decide(&[a, None, None], 3), Verdict::TooFew { votes: 1 });
        assert_eq!(decide(&[None, None, None], 3), Verdict::TooFew { votes: 0 });
        assert_eq!(
            decide(&[a, b, a, b, b], 5),
            Verdict::Majority {
                vote: b.unwrap(),
                winner: 1,
                odd: vec![0, 2]
            }
        );
    }

    #[test]
    fn a_spot_check_grows_until_two_runs_agree_or_a_tie_break_ran() {
        let (a, b) = (vote(b"a"), vote(b"b"));
        assert!(spot_check_grows(&[a]), "the job completed: check it");
        assert!(
            !spot_check_grows(&[None]),
            "the job failed: nothing to check"
        );
        assert!(!spot_check_grows(&[a, a]), "the check agrees");
        assert!(
            spot_check_grows(&[a, b]),
            "the check disagrees: break the tie"
        );
        assert!(
            !spot_check_grows(&[a, None]),
            "the check failed: inconclusive"
        );
        assert!(!spot_check_grows(&[a, b, a]), "the tie-break ran");
        assert!(!spot_check_grows(&[a, b, None]));
        // What the grown group then decides.
        assert_eq!(
            decide(&[a, b, b], 3),
            Verdict::Majority {
                vote: b.unwrap(),
                winner: 1,
                odd: vec![0]
            }
        );
        assert!(matches!(decide(&[a, a], 2), Verdict::Majority { .. }));
        assert_eq!(decide(&[a, None], 2), Verdict::TooFew { votes: 1 });
    }

    #[test]
    fn a_provider_is_claimed_by_one_child_at_a_time() {
        let share = GroupShare::default();
        let provider = suanli_protocol::Keypair::from_secret_bytes([7; 32]).node_id();
        let (one, two) = (JobId(Hash32::of(b"1")), JobId(Hash32::of(b"2")));
        assert!(share.claim(provider, one));
        assert!(share.claim(provider, one), "a child's own claim holds");
        assert!(!share.claim(provider, two));
        assert!(share.held_by_others(two).contains(&provider));
        assert!(share.held_by_others(one).is_empty());
        share.release(provider, two); // not its claim: nothing changes
        assert!(!share.claim(provider, two));
        share.release(provider, one);
        assert!(share.claim(provider, two));
    }
}
