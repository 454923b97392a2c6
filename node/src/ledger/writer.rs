//! The writer task: the single owner of appends, committing them in groups.
//!
//! ```text
//!  append ──Command::Append──┐                      ┌─ assign seq / prev_hash / timestamp, encode
//!  flush  ──Command::Sync────┤ bounded   writer     ├─ apply_batch (one atomic sled batch)
//!                            ├─────────▶ (drains ≤  ├─ barrier: Db::flush + fsync of sled's files
//!                            │           MAX_BATCH) ├─ extend the Merkle tree
//!                            │                      ├─ record the head in ledger.head
//!                            │                      ├─ publish the new head (watch)
//!                            ┘                      └─ reply to every command of the group
//! ```
//!
//! While one group is in its barrier, new commands queue in the channel and form the next group,
//! so the number of fsyncs follows the disk's speed, not the number of callers. A failed barrier
//! fails the whole group and halts the writer: after a failed fsync the kernel may have dropped
//! the dirty pages, so retrying could "succeed" without the data (PostgreSQL's fsyncgate). A
//! restart recovers from what is really on disk.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use suanli_protocol::NodeId;
use suanli_protocol::ledger::{ChainHead, EntryBody, EntryError, LedgerEntry, entry_hash};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::head_file::SYNC_INTERVAL;
use super::store::{Shared, seq_key};
use super::{Appended, LedgerError};
use crate::clock;

/// Most commands committed under one barrier.
pub(super) const MAX_BATCH: usize = 256;

/// A body whose signatures were checked and whose owner is a party: the only thing the writer
/// appends. The field is private to this module, so [`VerifiedBody::new`] is the only way in.
#[derive(Debug)]
pub(super) struct VerifiedBody(EntryBody);

impl VerifiedBody {
    pub(super) fn new(body: EntryBody, owner: NodeId) -> Result<VerifiedBody, EntryError> {
        body.verify(owner)?;
        Ok(VerifiedBody(body))
    }
}

/// Requests to the writer task.
#[derive(Debug)]
pub(super) enum Command {
    /// Append a body; reply once it is durable.
    Append {
        body: VerifiedBody,
        reply: oneshot::Sender<Result<Appended, LedgerError>>,
    },
    /// Reply once everything written to the database so far (record trees included) is durable.
    Sync {
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
}

/// The writer's state, moved into a blocking thread for each group and back.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// The last durable head: where the next entry links.
    pub(super) head: ChainHead,
    pub(super) head_sender: watch::Sender<ChainHead>,
    /// The head file holds a head that is not fdatasynced yet.
    pub(super) head_unsynced: bool,
}

/// Runs the writer until `cancel` fires (then commits what is already queued) or every handle
/// is dropped, or until storage fails.
pub(super) async fn run(
    mut writer: Writer,
    mut inbox: mpsc::Receiver<Command>,
    cancel: CancellationToken,
) {
    let shared = Arc::clone(&writer.shared);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            command = inbox.recv() => {
                let Some(command) = command else { break };
                command
            }
            // Idle with a recorded head not yet synced: sync it, so a power failure cannot take
            // more than SYNC_INTERVAL of records.
            () = tokio::time::sleep(SYNC_INTERVAL), if writer.head_unsynced => {
                let Some(next) = sync_head_file(writer).await else {
                    return;
                };
                writer = next;
                continue;
            }
        };
        let group = drain(first, &mut inbox);
        let Some(next) = commit(writer, group).await else {
            return;
        };
        writer = next;
    }
    // Stopping: refuse new commands, but commit those already accepted into the queue.
    inbox.close();
    while let Some(first) = inbox.recv().await {
        let group = drain(first, &mut inbox);
        let Some(next) = commit(writer, group).await else {
            return;
        };
        writer = next;
    }
    // Record-tree writes that nobody flushed become durable on a clean stop, and the head file
    // is synced, so damage done while the node is stopped is detected in full.
    let final_barrier = tokio::task::spawn_blocking(move || {
        writer.shared.barrier()?;
        writer.shared.record_head(&writer.head, true).map(drop)
    })
    .await;
    match final_barrier {
        Ok(Ok(())) => info!(entries = shared.stats().appended, "ledger writer stopped"),
        Ok(Err(error)) => error!(%error, "final ledger barrier failed"),
        Err(error) => error!(%error, "final ledger barrier panicked"),
    }
}

fn drain(first: Command, inbox: &mut mpsc::Receiver<Command>) -> Vec<Command> {
    let mut group = vec![first];
    while group.len() < MAX_BATCH {
        match inbox.try_recv() {
            Ok(command) => group.push(command),
            Err(_) => break,
        }
    }
    group
}

/// Syncs the head file on a blocking thread. `None` when the writer must stop.
async fn sync_head_file(writer: Writer) -> Option<Writer> {
    let shared = Arc::clone(&writer.shared);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let result = writer.shared.sync_head_file();
        writer.head_unsynced = false;
        (writer, result)
    })
    .await;
    match outcome {
        Ok((writer, Ok(()))) => Some(writer),
        Ok((_, Err(error))) => {
            // Same reasoning as a failed barrier: the storage is failing.
            shared.halt(error.to_string());
            error!(%error, "ledger writer halted");
            None
        }
        Err(panic) => {
            shared.halt(format!("writer panicked: {panic}"));
            None
        }
    }
}

/// Commits one group on a blocking thread. `None` when the writer must stop.
async fn commit(writer: Writer, group: Vec<Command>) -> Option<Writer> {
    let shared = Arc::clone(&writer.shared);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let result = writer.commit(group);
        (writer, result)
    })
    .await;
    match outcome {
        Ok((writer, Ok(()))) => Some(writer),
        Ok((_, Err(reason))) => {
            error!(%reason, "ledger writer halted");
            None
        }
        Err(panic) => {
            // The group's reply senders were dropped with the thread: its callers get `Halted`.
            shared.halt(format!("writer panicked: {panic}"));
            error!(%panic, "ledger writer panicked");
            None
        }
    }
}

impl Writer {
    /// Appends the group's bodies, runs one barrier, then replies. `Err` halts the writer; every
    /// caller of the group has been told its entry is not durable.
    fn commit(&mut self, group: Vec<Command>) -> Result<(), String> {
        let group_len = group.len();
        let now = clock::now_ms();
        let mut head = self.head;
        let mut writes = sled::Batch::default();
        let mut appended = Vec::new();
        let mut syncs = Vec::new();
        for command in group {
            match command {
                Command::Append { body, reply } => {
                    let entry = LedgerEntry {
                        seq: head.size,
                        timestamp_ms: now.max(head.timestamp_ms),
                        prev_hash: head.head,
                        body: body.0,
                    };
                    match entry.encode() {
                        Ok(raw) => {
                            let hash = entry_hash(&raw);
                            writes.insert(&seq_key(entry.seq)[..], raw);
                            head = ChainHead {
                                size: entry.seq + 1,
                                head: hash,
                                timestamp_ms: entry.timestamp_ms,
                            };
                            let done = Appended {
                                seq: entry.seq,
                                hash,
                                timestamp_ms: entry.timestamp_ms,
                            };
                            appended.push((reply, done));
                        }
                        // Too large: nothing was written for it and its seq is not used.
                        Err(error) => {
                            let _ = reply.send(Err(LedgerError::Encode(error)));
                        }
                    }
                }
                Command::Sync { reply } => syncs.push(reply),
            }
        }
        if appended.is_empty() && syncs.is_empty() {
            return Ok(());
        }
        let durable = if appended.is_empty() {
            self.shared.barrier()
        } else {
            self.shared
                .entries
                .apply_batch(writes)
                .map_err(super::store::storage("append"))
                .and_then(|()| self.shared.barrier())
        };
        if let Err(error) = durable {
            let reason = error.to_string();
            self.shared.halt(reason.clone());
            for (reply, _) in appended {
                let _ = reply.send(Err(LedgerError::NotDurable(reason.clone())));
            }
            for reply in syncs {
                let _ = reply.send(Err(LedgerError::NotDurable(reason.clone())));
            }
            return Err(reason);
        }
        // Durable. Extend the Merkle tree *before* the head moves, so a reader that sees the new
        // size can prove anything up to it. Record it outside sled, and publish it before
        // replying, so a caller that got `Ok` sees it.
        self.shared
            .extend_tree(appended.iter().map(|(_, done)| done.hash));
        let recorded = (!appended.is_empty()).then(|| self.shared.record_head(&head, false));
        self.head = head;
        self.head_sender.send_replace(head);
        let counters = &self.shared.counters;
        counters
            .appended
            .fetch_add(appended.len() as u64, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(group_len as u64, Ordering::Relaxed);
        debug!(
            entries = appended.len(),
            syncs = syncs.len(),
            size = head.size,
            "ledger group committed"
        );
        for (reply, done) in appended {
            let _ = reply.send(Ok(done));
        }
        for reply in syncs {
            let _ = reply.send(Ok(()));
        }
        // The entries are durable and acknowledged; a storage that cannot take a small write
        // right after a barrier is failing, so stop before anything else is appended.
        match recorded {
            None => Ok(()),
            Some(Ok(synced)) => {
                self.head_unsynced = !synced;
                Ok(())
            }
            Some(Err(error)) => {
                let reason = error.to_string();
                self.shared.halt(reason.clone());
                Err(reason)
            }
        }
    }
}
