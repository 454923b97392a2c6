//! The writer task: the single owner of appends, committing them in groups.
//!
//! ```text
//!                                     ┌─ assign seq / prev_hash / timestamp, encode
//!  append ──Command::Append──┐        ├─ ask the storage for room (no room: DiskFull to all, next)
//!                  bounded   ├──────▶ ├─ apply_batch (one atomic batch of the entries tree)
//!                            │ writer ├─ barrier: sled flush + fsync of sled's files (Storage)
//!                            │(drains ├─ extend the Merkle tree
//!                            │  ≤     ├─ record the head in ledger.head
//!                            │MAX_    ├─ publish the new head (watch)
//!                            ┘ BATCH) └─ reply to every command of the group
//! ```
//!
//! While one group is in its barrier, new commands queue in the channel and form the next group,
//! so the number of fsyncs follows the disk's speed, not the number of callers. A failed barrier
//! fails the whole group and halts the writer: after a failed fsync the kernel may have dropped
//! the dirty pages, so retrying could "succeed" without the data (PostgreSQL's fsyncgate). A
//! restart recovers from what is really on disk.
//!
//! A full disk is not a failure: the room check runs before anything of the group is written, so
//! a refused group leaves no trace (no seq used, nothing in sled's buffers), its callers get
//! [`LedgerError::DiskFull`] and the writer goes on. While the storage's health is
//! [`DiskFull`](crate::storage::Health::DiskFull) every group is refused at once, without touching
//! the disk; the storage's monitor re-checks the free space with backoff and turns the health
//! back when space returns, and the next group is written as usual.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use suanli_protocol::NodeId;
use suanli_protocol::ledger::{
    ChainHead, CheckedBody, EntryBody, EntryError, LedgerEntry, entry_hash,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::head_file::SYNC_INTERVAL;
use super::store::{Shared, seq_key};
use super::{Appended, LedgerError};
use crate::clock;
use crate::storage::WriteBatch;

/// Most commands committed under one barrier.
pub(super) const MAX_BATCH: usize = 256;

/// A body whose signatures were checked and whose owner is a party: the only thing the writer
/// appends. The field is private to this module, so [`VerifiedBody::new`] is the only way in,
/// and it takes a [`CheckedBody`], which only verification (or the contract engine, for what it
/// has just verified or signed) makes: the signatures are not checked again here.
#[derive(Debug)]
pub(super) struct VerifiedBody(EntryBody);

impl VerifiedBody {
    pub(super) fn new(body: CheckedBody, owner: NodeId) -> Result<VerifiedBody, EntryError> {
        body.check_owner(owner)?;
        Ok(VerifiedBody(body.into_body()))
    }
}

/// Requests to the writer task.
#[derive(Debug)]
pub(super) enum Command {
    /// Append bodies, in order and all or none; reply once they are durable.
    Append {
        bodies: Vec<VerifiedBody>,
        reply: Reply,
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
    // The storage's record-tree writes that nobody flushed become durable on a clean stop, and
    // the head file is synced, so damage done while the node is stopped is detected in full.
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
    /// caller of the group has been told its entry is not durable. A full disk is `Ok`: the
    /// callers were told [`LedgerError::DiskFull`] and nothing was written.
    fn commit(&mut self, group: Vec<Command>) -> Result<(), String> {
        let group_len = group.len();
        let now = clock::now_ms();
        let mut head = self.head;
        let mut writes = WriteBatch::default();
        let mut index = self.shared.index.changes(head.size);
        let mut appended = Vec::new();
        for command in group {
            let Command::Append { bodies, reply } = command;
            // Encode the command's entries first: one that cannot be encoded refuses the whole
            // command (all or none), and its seqs are not used.
            let mut entries = Vec::with_capacity(bodies.len());
            let mut next = head;
            let mut refused = None;
            for body in bodies {
                let entry = LedgerEntry {
                    seq: next.size,
                    timestamp_ms: now.max(next.timestamp_ms),
                    prev_hash: next.head,
                    body: body.0,
                };
                match entry.encode() {
                    Ok(raw) => {
                        let hash = entry_hash(&raw);
                        next = ChainHead {
                            size: entry.seq + 1,
                            head: hash,
                            timestamp_ms: entry.timestamp_ms,
                        };
                        entries.push((entry, raw, hash));
                    }
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            if let Some(error) = refused {
                let _ = reply.send(Err(LedgerError::Encode(error)));
                continue;
            }
            let mut done = Vec::with_capacity(entries.len());
            for (entry, raw, hash) in entries {
                writes.insert(&seq_key(entry.seq), &raw);
                if let Err(error) = self.shared.index.add(&mut index, entry.seq, &entry.body) {
                    // The index could not be read: storage is failing.
                    return Err(self.fail_group(error.to_string(), appended));
                }
                done.push(Appended {
                    seq: entry.seq,
                    hash,
                    timestamp_ms: entry.timestamp_ms,
                });
            }
            head = next;
            appended.push((reply, done));
        }
        if appended.is_empty() {
            return Ok(());
        }
        let index = self.shared.index.batch(index);
        // Room first: a group refused here has written nothing, so it cannot be half-applied
        // and its seqs are used by the next group.
        if let Err(error) = self
            .shared
            .storage
            .ensure_space(writes.bytes() + index.bytes())
        {
            let error = LedgerError::from(error);
            if let LedgerError::DiskFull {
                available,
                needed,
                reserve,
            } = error
            {
                debug!(entries = appended.len(), %error, "ledger group refused");
                for (reply, _) in appended {
                    let _ = reply.send(Err(LedgerError::DiskFull {
                        available,
                        needed,
                        reserve,
                    }));
                }
                return Ok(());
            }
            // The storage failed earlier: same as a failed barrier.
            return Err(self.fail_group(error.to_string(), appended));
        }
        // The index's batch after the entries': a crash between them leaves the index behind
        // the chain, which the next open catches up; never ahead of it.
        let durable = self
            .shared
            .entries
            .apply_batch(writes)
            .and_then(|()| self.shared.index_tree().apply_batch(index))
            .map_err(LedgerError::from)
            .and_then(|()| self.shared.barrier());
        if let Err(error) = durable {
            return Err(self.fail_group(error.to_string(), appended));
        }
        // Durable. Extend the Merkle tree *before* the head moves, so a reader that sees the new
        // size can prove anything up to it, and publish the head before replying, so a caller
        // that got `Ok` sees it.
        self.shared.extend_tree(
            appended
                .iter()
                .flat_map(|(_, done)| done.iter().map(|appended| appended.hash)),
        );
        self.head = head;
        self.head_sender.send_replace(head);
        let counters = &self.shared.counters;
        let entries: usize = appended.iter().map(|(_, done)| done.len()).sum();
        counters
            .appended
            .fetch_add(entries as u64, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(group_len as u64, Ordering::Relaxed);
        debug!(entries, size = head.size, "ledger group committed");
        for (reply, done) in appended {
            let _ = reply.send(Ok(done));
        }
        // The head file is recorded after the replies (it may lag the chain by design: a lost
        // update only narrows what it detects, see `head_file`), so its occasional fdatasync is
        // not on anyone's path. The entries are durable and acknowledged; a storage that cannot
        // take a small write right after a barrier is failing, so stop before anything else is
        // appended.
        match self.shared.record_head(&head, false) {
            Ok(synced) => {
                self.head_unsynced = !synced;
                Ok(())
            }
            Err(error) => {
                let reason = error.to_string();
                self.shared.halt(reason.clone());
                Err(reason)
            }
        }
    }

    /// Halts the writer and tells every caller of the group that its entry is not durable.
    fn fail_group(&self, reason: String, appended: Vec<(Reply, Vec<Appended>)>) -> String {
        self.shared.halt(reason.clone());
        for (reply, _) in appended {
            let _ = reply.send(Err(LedgerError::NotDurable(reason.clone())));
        }
        reason
    }
}

type Reply = oneshot::Sender<Result<Vec<Appended>, LedgerError>>;
