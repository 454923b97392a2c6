//! The outbox: contracts this node ended on its own (a deadline, a lost or misbehaving peer)
//! whose counterparty has not heard of it yet. A note is written before the failure entry (so
//! it is durable with it) and removed once the counterparty has answered and whatever its answer
//! taught is recorded. Until then the worker sends it `Reconcile` with this node's documents,
//! retrying with backoff, across restarts.
//!
//! This is what makes both sides end a contract the same way when only one of them decided: the
//! other records the same end when it hears of it (or adopts the contract, if it never recorded
//! it, and ends it too).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use suanli_protocol::ContractId;
use suanli_protocol::engine::Held;
use suanli_protocol::wire::{MarketRequest, MarketResponse};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Market;
use super::contracts::{Mail, Route};
use crate::clock::now_ms;
use crate::storage::{RecordTree, Storage, StorageError};

/// Notifications sent at once.
const CONCURRENT: usize = 8;
/// How often the worker looks at the outbox when nothing wakes it.
const SWEEP: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Notes looked at per sweep (the rest wait for the next).
const PER_SWEEP: u32 = 256;

/// The durable notes and the worker's wake-up call.
#[derive(Debug, Clone)]
pub(super) struct Outbox {
    /// Contract id → the run of the node that wrote the note.
    notes: RecordTree,
    wake: Arc<Notify>,
    /// This run of the node (when it opened the outbox, and its pid): a note another run
    /// wrote has no append in flight.
    run: [u8; 12],
}

/// What a notification came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// The counterparty answered and the answer is recorded, or there is nothing to tell.
    Done,
    /// Ask again later.
    Retry,
}

impl Outbox {
    pub(super) fn new(storage: &Storage) -> Outbox {
        Outbox {
            notes: storage.records("outbox"),
            wake: Arc::new(Notify::new()),
            run: this_run(),
        }
    }

    /// Notes that the counterparty of `id` must be told (durable with the next barrier).
    pub(super) fn note(&self, id: ContractId) -> Result<(), StorageError> {
        self.notes.insert(id.0.as_bytes(), &self.run)
    }

    /// Whether the note of `id` was written by an earlier run of the node (so the append it
    /// was written with is not in flight any more: it became durable, or never will).
    fn noted_by_an_earlier_run(&self, id: ContractId) -> bool {
        match self.notes.get(id.0.as_bytes()) {
            Ok(Some(written)) => written != self.run,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Wakes the worker (a note was made durable).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    fn done(&self, id: ContractId) {
        if let Err(error) = self.notes.remove(id.0.as_bytes()) {
            warn!(%id, %error, "cannot remove an outbox note");
        }
    }

    /// Up to [`PER_SWEEP`] notes from `from` on, and where the next sweep starts (after the
    /// last one, or from the beginning once the end is reached): every note gets its turn,
    /// however many peers never answer.
    fn pending(&self, from: &[u8]) -> (Vec<ContractId>, Vec<u8>) {
        match self.notes.iter_from(from, PER_SWEEP) {
            Ok(records) => {
                let next = match records.last() {
                    Some((key, _)) if records.len() == PER_SWEEP as usize => {
                        let mut next = key.clone();
                        next.push(0);
                        next
                    }
                    _ => Vec::new(),
                };
                let ids = records
                    .into_iter()
                    .filter_map(|(key, _)| {
                        Some(ContractId(suanli_protocol::Hash32(key.try_into().ok()?)))
                    })
                    .collect();
                (ids, next)
            }
            Err(error) => {
                warn!(%error, "cannot read the outbox");
                (Vec::new(), Vec::new())
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.notes.len().unwrap_or(0)
    }
}

/// What tells this run of the node from every other: its start time and pid.
fn this_run() -> [u8; 12] {
    let mut run = [0; 12];
    run[..8].copy_from_slice(&now_ms().to_be_bytes());
    run[8..].copy_from_slice(&std::process::id().to_be_bytes());
    run
}

impl Market {
    /// Sends the outbox's notifications until the node stops.
    pub(super) async fn run_outbox(self) {
        let inner = self.inner.clone();
        let outbox = inner.outbox.clone();
        let mut retry_at: HashMap<ContractId, (Instant, Duration)> = HashMap::new();
        let mut sending = FuturesUnordered::new();
        let mut from = Vec::new();
        loop {
            let now = Instant::now();
            let (pending, next) = outbox.pending(&from);
            from = next;
            for id in pending {
                if sending.len() >= CONCURRENT {
                    break;
                }
                if retry_at.get(&id).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let backoff = retry_at
                    .get(&id)
                    .map_or(FIRST_RETRY, |(_, backoff)| *backoff);
                retry_at.insert(id, (now + backoff, (backoff * 2).min(MAX_RETRY)));
                let market = self.clone();
                sending.push(async move { (id, market.notify(id).await) });
            }
            tokio::select! {
                biased;
                _ = inner.cancel.cancelled() => return,
                Some((id, told)) = sending.next(), if !sending.is_empty() => {
                    if told == Told::Done {
                        outbox.done(id);
                        retry_at.remove(&id);
                    }
                }
                _ = outbox.wake.notified() => {}
                _ = tokio::time::sleep(SWEEP) => {}
            }
        }
    }

    /// Tells the counterparty of `id` how this node ended it, once that end is durable.
    async fn notify(&self, id: ContractId) -> Told {
        let docs = match self.inner.ledger.contract_docs(id) {
            Ok(Some(docs)) => docs,
            // Not in the ledger: its append is in flight, or never became durable (a crash; then
            // there is nothing to tell).
            Ok(None) if self.inner.outbox.noted_by_an_earlier_run(id) => return Told::Done,
            Ok(None) => return Told::Retry,
            Err(error) => {
                warn!(%id, %error, "cannot read a contract to notify its counterparty");
                return Told::Retry;
            }
        };
        let Ok(held) = Held::from_ledger(docs.clone()) else {
            warn!(%id, "a contract in the outbox does not decode; its note is dropped");
            return Told::Done;
        };
        if !held.status().is_final() {
            // The end being told is still being appended.
            return Told::Retry;
        }
        let peer = held.counterparty(self.inner.node_id);
        if peer == self.inner.node_id {
            return Told::Done;
        }
        let answer = self
            .send(peer, MarketRequest::Reconcile(Box::new(docs)))
            .await;
        let answer = match answer {
            Ok(answer @ MarketResponse::Reconciled(_)) => answer,
            Ok(other) => {
                debug!(%id, %peer, ?other, "notification not taken yet");
                return Told::Retry;
            }
            Err(error) => {
                debug!(%id, %peer, %error, "notification not delivered yet");
                return Told::Retry;
            }
        };
        let route = Route::held_by(self.inner.node_id, id, held.contract());
        let (done, recorded) = oneshot::channel();
        if !self.route(route, Mail::Notified { answer, done }) {
            return Told::Retry;
        }
        if recorded.await.unwrap_or(false) {
            Told::Done
        } else {
            Told::Retry
        }
    }
}
