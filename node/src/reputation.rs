//! A local standing for every peer, from the signed history this node's own ledger holds: runs a
//! provider completed for us (its signed receipts), contracts settled with it (both signed),
//! contracts it provided that failed (our signed failure records as its requester: it vanished,
//! missed the deadline, never started, misbehaved), our signed misbehaviour records against it,
//! and whether
//! this node holds proof that it equivocated (two checkpoints that cannot both be true).
//!
//! Nothing here is taken on another node's word: every count is one of our own ledger's entries,
//! which verification or this node signed. The counts are derived, never stored: a task follows
//! the ledger from its first entry (once, at start) and then each new head, so a restart
//! re-derives the same standing.
//!
//! Placement skips distrusted providers (`market::ranking`); the provider side gives a peer
//! without history (or a distrusted one) a small credit line, or none (`market::provider`);
//! `GET /v1/peers` shows each standing and why.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use suanli_protocol::ledger::{EntryBody, LedgerEntry};
use suanli_protocol::negotiation::AttemptFailure;
use suanli_protocol::{ContractId, JobId, NodeId, Outcome};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::ledger::LedgerHandle;
use crate::transparency::Transparency;

/// Entries read per step while following the ledger.
const BATCH: u32 = 1024;
/// Most peers with counts kept; beyond it, new peers are not counted (and so stay "new").
pub const MAX_PEERS: usize = 1_000_000;
/// Most open contracts remembered (far above what a node can hold open).
const MAX_OPEN: usize = 1_000_000;
/// Below this score a peer is distrusted: placement skips it, admission gives it no credit.
pub const DISTRUSTED_BELOW: f64 = 0.25;

/// What this node's ledger holds of one peer.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Counts {
    /// Runs it completed for us (its receipts with a succeeded outcome).
    pub completed: u64,
    /// Runs that ended failed for the job's own reasons (a trap, fuel): counted, not held
    /// against it.
    pub failed_runs: u64,
    /// Contracts settled with it, either side.
    pub settled: u64,
    /// Contracts we recorded as failed because it became unreachable.
    pub lost: u64,
    /// ... because it missed the deadline.
    pub late: u64,
    /// ... because it never started the job.
    pub not_started: u64,
    /// Our signed records of its misbehaviour (and contracts failed for it).
    pub misbehaved: u64,
    /// Replicated jobs in which its output was the odd one out.
    pub mismatched: u64,
}

impl Counts {
    fn good(&self) -> u64 {
        self.completed.saturating_add(self.settled)
    }

    /// Failures weighted by what they say: a provable lie weighs ten ordinary failures.
    fn bad(&self) -> u64 {
        self.lost
            .saturating_add(self.not_started)
            .saturating_add(self.late.saturating_mul(2))
            .saturating_add(self.misbehaved.saturating_mul(10))
            .saturating_add(self.mismatched.saturating_mul(10))
    }
}

/// A peer's standing: the counts, a score in 0..1 (0.5 for a peer never seen), and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Standing {
    pub counts: Counts,
    /// This node holds proof that the peer signed two checkpoints that cannot both be true.
    pub equivocated: bool,
    /// `(good + 1) / (good + bad + 2)`, where good counts completed runs and settlements, and bad
    /// weighs lost and unstarted contracts 1, late ones 2, misbehaviour and output mismatches 10;
    /// 0 for an equivocator.
    pub score: f64,
    /// Equivocated, or scored below [`DISTRUSTED_BELOW`].
    pub distrusted: bool,
    /// The counts that made the score, in words.
    pub reasons: Vec<String>,
}

impl Standing {
    pub fn new(counts: Counts, equivocated: bool) -> Standing {
        let (good, bad) = (counts.good(), counts.bad());
        let score = if equivocated {
            0.0
        } else {
            (good as f64 + 1.0) / ((good as f64) + (bad as f64) + 2.0)
        };
        let mut reasons = Vec::new();
        let mut say = |count: u64, what: &str| {
            if count > 0 {
                reasons.push(format!("{count} {what}"));
            }
        };
        say(counts.completed, "runs completed for this node");
        say(counts.settled, "contracts settled");
        say(
            counts.failed_runs,
            "runs failed for the job's own reasons (not held against it)",
        );
        say(counts.lost, "contracts lost when it became unreachable");
        say(
            counts.late,
            "contracts past their deadline without a receipt",
        );
        say(counts.not_started, "contracts it never started");
        say(
            counts.misbehaved,
            "misbehaviour records (bad documents or broken terms)",
        );
        say(
            counts.mismatched,
            "replicated jobs where its output was the odd one out",
        );
        if equivocated {
            reasons.push("signed two checkpoints that cannot both be true".into());
        }
        if reasons.is_empty() {
            reasons.push("no history with this node".into());
        }
        Standing {
            counts,
            equivocated,
            score,
            distrusted: equivocated || score < DISTRUSTED_BELOW,
            reasons,
        }
    }

    /// Contracts settled with it: what admission calls history.
    pub fn history(&self) -> u64 {
        self.counts.settled
    }
}

/// The standings (see the module docs).
#[derive(Debug, Clone)]
pub struct Reputation {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    me: NodeId,
    counts: Mutex<HashMap<NodeId, Counts>>,
    /// The provider of each contract this node requested that has not ended yet.
    open: Mutex<HashMap<ContractId, NodeId>>,
    /// The replicated jobs in which each provider's result was the odd one out (from the job
    /// book's stored evidence: read at start, then told of each new one).
    mismatches: Mutex<HashMap<NodeId, HashSet<JobId>>>,
    transparency: Option<Transparency>,
}

impl Reputation {
    /// Standings from `ledger`, followed by a task until `cancel`. `transparency` tells who
    /// equivocated (none: nobody, as in tests of the market alone).
    pub fn start(
        me: NodeId,
        ledger: LedgerHandle,
        transparency: Option<Transparency>,
        cancel: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Reputation {
        let reputation = Reputation {
            inner: Arc::new(Inner {
                me,
                counts: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
                mismatches: Mutex::new(HashMap::new()),
                transparency,
            }),
        };
        let follower = reputation.clone();
        tasks.spawn(async move { follower.follow(ledger, cancel).await });
        reputation
    }

    /// Counts a replicated job in which `provider`'s result was the odd one out (once per job,
    /// however often it is told).
    pub fn record_mismatch(&self, provider: NodeId, group: JobId) {
        let mut mismatches = self
            .inner
            .mismatches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if mismatches.len() < MAX_PEERS || mismatches.contains_key(&provider) {
            mismatches.entry(provider).or_default().insert(group);
        }
    }

    /// The standing of `peer` now.
    pub fn standing(&self, peer: &NodeId) -> Standing {
        let mut counts = self.lock().get(peer).copied().unwrap_or_default();
        counts.mismatched = self
            .inner
            .mismatches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .map_or(0, |groups| groups.len() as u64);
        let equivocated = self
            .inner
            .transparency
            .as_ref()
            .is_some_and(|transparency| transparency.has_equivocated(peer));
        Standing::new(counts, equivocated)
    }

    /// Whether placement should skip `peer`.
    pub fn distrusted(&self, peer: &NodeId) -> bool {
        self.standing(peer).distrusted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Counts>> {
        self.inner.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn follow(&self, ledger: LedgerHandle, cancel: CancellationToken) {
        let mut head = ledger.watch_head();
        let mut next = 0u64;
        loop {
            let size = head.borrow_and_update().size;
            while next < size {
                let entries = match ledger.range(next, BATCH) {
                    Ok(entries) if !entries.is_empty() => entries,
                    Ok(_) => break,
                    Err(error) => {
                        warn!(%error, next, "reputation: cannot read the ledger; retried at the next entry");
                        break;
                    }
                };
                for entry in &entries {
                    next = entry.seq + 1;
                    if let Ok(entry) = LedgerEntry::decode(&entry.raw) {
                        self.count(&entry.body);
                    }
                }
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Counts one of our ledger's entries (its documents were verified when appended).
    fn count(&self, body: &EntryBody) {
        let me = self.inner.me;
        // A failure record says which contract failed, not who failed it: both parties record
        // one, each naming the other. Only the requester's record is the provider's failure, so
        // the provider of each open contract is remembered until the contract ends.
        let provider_of = |id| {
            self.inner
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        };
        let other = |a: NodeId, b: NodeId| if a == me { b } else { a };
        let (peer, change): (NodeId, fn(&mut Counts)) = match body {
            EntryBody::Receipt(receipt) => match receipt.decode_unverified() {
                Ok(receipt) if receipt.provider != me => match receipt.outcome {
                    Outcome::Succeeded { .. } => (receipt.provider, |c| c.completed += 1),
                    Outcome::Failed { .. } => (receipt.provider, |c| c.failed_runs += 1),
                },
                _ => return,
            },
            EntryBody::Settlement(settlement) => match settlement.decode_unverified() {
                Ok(s) => {
                    provider_of(s.contract_id);
                    (other(s.provider, s.requester), |c| c.settled += 1)
                }
                Err(_) => return,
            },
            EntryBody::Failure(failure) => match failure.decode_unverified() {
                Ok(record) if provider_of(record.contract_id) == Some(record.counterparty) => (
                    record.counterparty,
                    match record.failure {
                        AttemptFailure::PeerLost => |c| c.lost += 1,
                        AttemptFailure::DeadlineMissed => |c| c.late += 1,
                        AttemptFailure::NotStarted => |c| c.not_started += 1,
                        AttemptFailure::Misbehaved => |c| c.misbehaved += 1,
                        AttemptFailure::Cancelled => return,
                    },
                ),
                _ => return,
            },
            EntryBody::Misbehaviour(evidence) => match evidence.decode_unverified() {
                Ok(evidence) => (evidence.offender, |c| c.misbehaved += 1),
                Err(_) => return,
            },
            EntryBody::Contract(signed) => {
                if let Ok(contract) = signed.decode_unverified()
                    && contract.provider != me
                {
                    let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
                    if open.len() < MAX_OPEN {
                        open.insert(ContractId(signed.digest()), contract.provider);
                    }
                }
                return;
            }
            EntryBody::Usage(_) => return,
        };
        if peer == me {
            return;
        }
        let mut counts = self.lock();
        if counts.len() >= MAX_PEERS && !counts.contains_key(&peer) {
            return;
        }
        change(counts.entry(peer).or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_peer_is_neutral_and_lies_outweigh_work() {
        let new = Standing::new(Counts::default(), false);
        assert_eq!(new.score, 0.5);
        assert!(!new.distrusted);
        assert_eq!(new.reasons, vec!["no history with this node"]);

        let steady = Counts {
            completed: 20,
            settled: 20,
            lost: 1,
            ..Counts::default()
        };
        let steady = Standing::new(steady, false);
        assert!(steady.score > 0.9, "{steady:?}");

        // One provable lie from a newcomer: distrusted.
        let liar = Counts {
            completed: 1,
            settled: 1,
            mismatched: 1,
            ..Counts::default()
        };
        let liar = Standing::new(liar, false);
        assert!(liar.distrusted, "{liar:?}");
        assert!(liar.reasons.iter().any(|r| r.contains("odd one out")));

        // An established provider survives one, with a lower score.
        let slip = Standing::new(
            Counts {
                completed: 40,
                settled: 40,
                mismatched: 1,
                ..Counts::default()
            },
            false,
        );
        assert!(!slip.distrusted && slip.score < 0.9, "{slip:?}");

        let equivocator = Standing::new(steady.counts, true);
        assert_eq!(equivocator.score, 0.0);
        assert!(equivocator.distrusted);
    }
}
