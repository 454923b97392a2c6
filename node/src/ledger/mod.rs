//! The node's ledger: the append-only, hash-chained entries, their Merkle tree, and the writer
//! that appends them. Its bytes live in the node's [`Storage`] (the only module that names
//! sled), which gives it its entries tree and its durability barrier.
//!
//! It owns
//! - the **ledger**: an append-only, hash-chained sequence of [`LedgerEntry`]s in the protocol's
//!   format, in the storage's tree `ledger/entries` (key = seq as 8 bytes big-endian, value = the
//!   exact framed bytes that are hashed), and our `ledger.head` file in the database directory;
//! - the **group-commit writer** (`writer.rs`), the only task that appends;
//!
//! and, in memory, the RFC 6962 **Merkle tree** of the durable entries (the protocol's
//! [`MerkleTree`](suanli_protocol::merkle::MerkleTree); leaf `n` is the
//! [`entry_hash`](suanli_protocol::ledger::entry_hash) of entry `n`'s stored bytes), from which
//! roots, inclusion, consistency and prefix proofs are answered in `O(log n)` hashes without
//! touching the disk. Job records, blobs and witness state are not the ledger's: they are
//! [`Storage`] record trees.
//!
//! ```text
//!  market, api ──append(body)──▶ LedgerHandle ──Command (bounded)──▶ writer task (one owner)
//!       │                          │     ▲                              │ group of ≤ 256:
//!       │                          │     └──── head (watch) ◀───────────┤ seq, prev_hash, time
//!       │                          │                                    │ Storage::ensure_space
//!       │                          │                                    │ apply_batch (atomic)
//!       │                          │                                    │ Storage::barrier
//!       │                          │                                    │ leaves → Merkle tree
//!       │                          │                                    │ head → ledger.head
//!       │                          │                                    └ reply to each caller
//!       ├── range / verify / balances ──▶ the entries tree, read directly (never past the head)
//!       └── tree_root / *_proof ──▶ the Merkle tree (RwLock; never past the head)
//! ```
//!
//! Rules this module keeps:
//! - **An append returns `Ok` only once its entry is durable**: the storage's barrier (sled's
//!   flush *and* a real fsync of sled's files). Many appends share one barrier (group commit).
//!   If a barrier fails, every caller of its group gets an error and the writer halts: nothing is
//!   acknowledged that might not be on disk.
//! - **A full disk refuses, it does not halt**: before a group is written the writer asks the
//!   storage for room ([`Storage::ensure_space`]); without it every caller of the group gets
//!   [`LedgerError::DiskFull`], nothing was written (no seq is used), and the writer takes the
//!   next group as usual: appends succeed again as soon as the storage's health is back.
//! - **Only the writer task appends**, and only bodies that verify with the owner as a party,
//!   by type: the writer takes a `writer::VerifiedBody`, made only from a
//!   [`CheckedBody`](suanli_protocol::ledger::CheckedBody), which only verification makes
//!   ([`LedgerHandle::append`] verifies in the caller's task, so signature checks run in
//!   parallel) or the contract engine, for documents it has just verified or signed
//!   ([`LedgerHandle::append_checked`]: each signature is verified once per node, not again on
//!   append). The owner-is-a-party check runs on every append.
//! - **Readers never see past the durable head**: `range`, `verify`, `balances`, roots and proofs
//!   stop at [`LedgerHandle::head`], which moves only after a barrier. The writer extends the
//!   Merkle tree after the barrier and *before* the head moves, so a reader that sees size `n` can
//!   prove anything up to `n`; a request beyond the head is [`LedgerError::OutOfRange`].
//! - **Chain rules live in the protocol crate**: verification is
//!   [`ChainVerifier`](suanli_protocol::ledger::ChainVerifier), hashing is
//!   [`entry_hash`](suanli_protocol::ledger::entry_hash).
//! - **Damage is reported, never repaired**: at open the keys must be exactly `0..n`, the last
//!   entry must say it is entry `n - 1`, and the last head recorded as durable must still be
//!   there, unchanged. That record lives in a small file outside sled (`head_file.rs`), because
//!   sled stops recovering its log at the first corrupt record and silently returns a shorter
//!   ledger. Otherwise opening fails with [`LedgerError::Damaged`]; nothing is truncated. What a
//!   crash can legitimately lose is the tail that was never acknowledged: sled recovers a prefix
//!   of its log, and each group is one atomic batch, so such a tail simply is not there.
//!
//! It must never: acknowledge before the barrier; rewrite, reorder or delete an entry; append a
//! body its owner is not party to; name a sled type (the storage module does).
//!
//! After a crash (`kill -9`, power loss) the reopened ledger holds every entry whose append
//! returned `Ok`, and possibly some entries of the group that was in its barrier (complete,
//! valid entries whose callers never heard back: safe to keep, since nobody was told of them and
//! nothing was published for them; the market must expect such a duplicate on retry).
//!
//! Costs to know (measured here, release build): opening reads and hashes every entry once, to
//! rebuild the Merkle tree (~120 ms for 30,000 contract-sized entries, process start included;
//! the reads alone were ~80-180 ms per 40,000 entries); the tree costs about
//! **two hashes (64 bytes) per entry** of memory for as long as the node runs (64 MiB per
//! million entries), plus up to as much again transiently while its vectors grow; [`verify`]
//! checks every signature, in strict batches of 128 entries with `verify_strict`'s verdict
//! (~14,000 co-signed entries per second on one core; ~9,000 one by one) and, like [`balances`], reads the whole ledger and blocks: in async code call them from
//! `spawn_blocking`. A body given to [`LedgerHandle::append`] is verified in the caller's task
//! (~0.12 ms for a co-signed contract); the contract engine's bodies come checked already.
//!
//! [`verify`]: LedgerHandle::verify
//! [`balances`]: LedgerHandle::balances
//! [`LedgerEntry`]: suanli_protocol::ledger::LedgerEntry

mod head_file;
mod index;
mod store;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use suanli_protocol::checkpoint::PrefixProof;
use suanli_protocol::ledger::{ChainHead, CheckedBody, EntryBody, EntryError};
use suanli_protocol::merkle::{ConsistencyProof, InclusionProof, ProveError};
use suanli_protocol::tokens::UsageReceipt;
use suanli_protocol::{CoSigned, ContractDocs, ContractId, EncodeError, Hash32, JobId, NodeId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::store::Shared;
use self::writer::{Command, VerifiedBody, Writer};
use crate::storage::{Storage, StorageError};

/// Most entries one [`LedgerHandle::range`] call returns.
pub const MAX_RANGE: u32 = 1024;
/// Capacity of the writer's queue; appenders wait when it is full.
pub const QUEUE: usize = 1024;
/// Most commands the writer commits under one barrier.
pub const MAX_BATCH: usize = writer::MAX_BATCH;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Another process (normally the running node) holds the database.
    #[error(
        "the ledger database {path} is in use by another process: stop the node first, \
         or ask the running node (its HTTP API)"
    )]
    InUse { path: PathBuf },
    /// An offline helper found no database.
    #[error("no ledger database at {path}")]
    NotFound { path: PathBuf },
    /// The stored ledger is not a well-formed chain, or lost an acknowledged entry.
    #[error("the ledger database {path} is damaged: {detail}; refusing to use it")]
    Damaged { path: PathBuf, detail: String },
    /// sled failed.
    #[error("ledger storage failed ({operation}): {message}")]
    Storage {
        operation: &'static str,
        message: String,
    },
    /// A file operation failed (an fsync, at the barrier).
    #[error("ledger {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The body is not one this node may record (bad signature, or the owner is not a party).
    #[error("entry refused: {0}")]
    Refused(#[from] EntryError),
    /// A root, proof or entry was asked for beyond the durable ledger, or with sizes that cannot
    /// make one (`size1 > size2`, a consistency proof from the empty tree).
    #[error(transparent)]
    OutOfRange(#[from] ProveError),
    /// The entry would exceed the protocol's size cap.
    #[error("entry cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    /// The barrier of this entry's group failed. The entry must be treated as not appended and
    /// must not be acknowledged (after a restart it may or may not be in the ledger).
    #[error("not durable, do not acknowledge: {0}")]
    NotDurable(String),
    /// The disk is (nearly) full: the entry was **not** written (no seq was used), and the
    /// ledger keeps running; the same append succeeds once space is back above the storage's
    /// reserve ([`Storage::health`] says when).
    #[error(
        "disk full: {available} bytes free, appending needs {needed} (a reserve of {reserve} \
         bytes is kept free); nothing was written, try again once space is freed"
    )]
    DiskFull {
        available: u64,
        needed: u64,
        reserve: u64,
    },
    /// The writer has stopped (node shutting down).
    #[error("the ledger writer has stopped")]
    Stopped,
    /// The writer stopped because storage failed; the node must be restarted.
    #[error("the ledger writer halted after a storage failure ({0}); restart the node")]
    Halted(String),
}

impl From<StorageError> for LedgerError {
    fn from(error: StorageError) -> LedgerError {
        match error {
            StorageError::InUse { path } => LedgerError::InUse { path },
            StorageError::NotFound { path } => LedgerError::NotFound { path },
            StorageError::Damaged { path, detail } => LedgerError::Damaged { path, detail },
            StorageError::Sled { operation, message } => {
                LedgerError::Storage { operation, message }
            }
            StorageError::Io {
                operation,
                path,
                source,
            } => LedgerError::Io {
                operation,
                path,
                source,
            },
            StorageError::DiskFull {
                available,
                needed,
                reserve,
            } => LedgerError::DiskFull {
                available,
                needed,
                reserve,
            },
            StorageError::Failed(reason) => LedgerError::Halted(reason),
        }
    }
}

/// An entry the ledger made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Appended {
    pub seq: u64,
    /// [`entry_hash`](suanli_protocol::ledger::entry_hash) of the stored bytes.
    pub hash: Hash32,
    pub timestamp_ms: u64,
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub seq: u64,
    /// The exact stored bytes: a framed [`LedgerEntry`](suanli_protocol::ledger::LedgerEntry),
    /// hashed as is. Never re-encode it.
    pub raw: Vec<u8>,
}

/// The outcome of verifying a whole ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries verified (all of them when `ok`; those before the bad one otherwise).
    pub entries: u64,
    /// Hex hash of the last verified entry (64 zeros for none).
    pub head: String,
    pub error: Option<VerifyFailure>,
}

/// The first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VerifyFailure {
    pub index: u64,
    pub message: String,
}

/// Net credits with one counterparty, from the settlements in this ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Balance {
    /// The counterparty.
    pub node_id: String,
    /// What the counterparty owes us in micro-credits: + for jobs we ran for them (provider),
    /// - for jobs they ran for us (requester).
    pub net_micro: i128,
    /// Settlements counted (each contract once).
    pub settlements: u64,
}

/// The writer's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerStats {
    /// Durability barriers the writer ran (flush + fsyncs; the storage counts everyone's).
    pub barriers: u64,
    /// Entries appended since open.
    pub appended: u64,
    /// Most commands committed under one barrier.
    pub largest_batch: u64,
    /// Why the writer halted, if it did.
    pub halted: Option<String>,
}

/// The opened ledger, before its writer starts.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    head: ChainHead,
}

impl Store {
    /// Opens (creating) the ledger of `owner` in `storage`. Recovers the head from the last
    /// entry after checking that the keys are exactly `0..n`, that the last entry is entry
    /// `n - 1`, and that no entry acknowledged as durable was lost or changed. Blocking (reads
    /// every key once); spawns nothing.
    pub fn open(storage: &Storage, owner: NodeId) -> Result<Store, LedgerError> {
        let (shared, head) = Shared::open(storage, owner)?;
        Ok(Store {
            shared: Arc::new(shared),
            head,
        })
    }

    /// Starts the group-commit writer task under `cancel`. On cancel it commits what is already
    /// queued, runs a final barrier (so the storage's record-tree writes survive a clean stop
    /// too) and ends; appends after that get [`LedgerError::Stopped`]. Must be called within a
    /// tokio runtime. The database closes when the last handle of the storage is dropped.
    pub fn start(self, cancel: CancellationToken) -> (LedgerHandle, JoinHandle<()>) {
        let (commands, inbox) = mpsc::channel(QUEUE);
        let (head_sender, head) = watch::channel(self.head);
        let writer = Writer {
            shared: Arc::clone(&self.shared),
            head: self.head,
            head_sender,
            head_unsynced: false,
        };
        let task = tokio::spawn(writer::run(writer, inbox, cancel));
        let handle = LedgerHandle {
            shared: self.shared,
            commands,
            head,
        };
        (handle, task)
    }

    /// The recovered head.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    pub fn owner(&self) -> NodeId {
        self.shared.owner
    }

    /// See [`LedgerHandle::range`].
    pub fn range(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, LedgerError> {
        self.shared.range(&self.head, from, limit)
    }

    /// See [`LedgerHandle::verify`].
    pub fn verify(&self) -> VerifyReport {
        self.shared.verify(&self.head)
    }

    /// See [`LedgerHandle::balances`].
    pub fn balances(&self) -> Result<Vec<Balance>, LedgerError> {
        self.shared.balances()
    }

    /// See [`LedgerHandle::tree_root`].
    pub fn tree_root(&self, size: u64) -> Result<Hash32, LedgerError> {
        self.shared.tree_root(&self.head, size)
    }

    /// See [`LedgerHandle::inclusion_proof`].
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, LedgerError> {
        self.shared.inclusion_proof(&self.head, index, size)
    }

    /// See [`LedgerHandle::consistency_proof`].
    pub fn consistency_proof(
        &self,
        size1: u64,
        size2: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        self.shared.consistency_proof(&self.head, size1, size2)
    }

    /// See [`LedgerHandle::prefix_proof`].
    pub fn prefix_proof(&self, size1: u64, size2: u64) -> Result<PrefixProof, LedgerError> {
        self.shared.prefix_proof(&self.head, size1, size2)
    }

    /// See [`LedgerHandle::raw_entry`].
    pub fn raw_entry(&self, index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        self.shared.raw_entry(&self.head, index)
    }
}

/// A cloneable handle on the ledger: appends go through the writer task, reads go to the
/// entries tree.
#[derive(Clone)]
pub struct LedgerHandle {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    head: watch::Receiver<ChainHead>,
}

impl fmt::Debug for LedgerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerHandle")
            .field("owner", &self.shared.owner)
            .field("head", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

impl LedgerHandle {
    /// Appends one entry holding `body` and returns once it is **durable** (sled flush plus a
    /// real fsync of the database files), never before. The body's signatures are checked here
    /// and the owner must be a party ([`EntryBody::verify`]); a refused body is an error to this
    /// caller only. Waits while the writer's queue is full.
    ///
    /// Errors: [`LedgerError::Refused`] / [`LedgerError::Encode`] / [`LedgerError::DiskFull`]
    /// (nothing written), [`LedgerError::NotDurable`] (the barrier failed: do not acknowledge),
    /// [`LedgerError::Stopped`] or [`LedgerError::Halted`] (the writer is gone).
    pub async fn append(&self, body: EntryBody) -> Result<Appended, LedgerError> {
        let mut appended = self.append_all(vec![body]).await?;
        appended.pop().ok_or_else(|| self.shared.stopped())
    }

    /// Appends `bodies` as consecutive entries, all or none (one atomic batch, one barrier), and
    /// returns once they are durable. Each body is checked as in [`append`](Self::append); one
    /// refused body refuses them all.
    pub async fn append_all(&self, bodies: Vec<EntryBody>) -> Result<Vec<Appended>, LedgerError> {
        let bodies = bodies
            .into_iter()
            .map(EntryBody::check)
            .collect::<Result<Vec<_>, _>>()?;
        self.append_checked(bodies).await
    }

    /// [`append_all`](Self::append_all) of bodies whose signatures are checked already (the
    /// contract engine's [`Append`](suanli_protocol::engine::Append)): only the owner is checked
    /// (a party to each), not the signatures again.
    pub async fn append_checked(
        &self,
        bodies: Vec<CheckedBody>,
    ) -> Result<Vec<Appended>, LedgerError> {
        let bodies = bodies
            .into_iter()
            .map(|body| VerifiedBody::new(body, self.shared.owner))
            .collect::<Result<Vec<_>, _>>()?;
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Append { bodies, reply })
            .await
            .map_err(|_| self.shared.stopped())?;
        let appended = response.await.map_err(|_| self.shared.stopped())?;
        if appended.is_ok() {
            self.shared
                .append_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        appended
    }

    /// How long each append took, from the request to its durable answer (the node's metrics).
    pub fn append_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.shared.append_seconds.clone()
    }

    /// The documents this ledger holds of contract `id` (its contract, receipt, settlement and
    /// this node's own failure record), from the index. Blocking read, short.
    pub fn contract_docs(&self, id: ContractId) -> Result<Option<ContractDocs>, LedgerError> {
        self.shared.contract_docs(&self.head(), &id)
    }

    /// The usage receipts of standing contract `id`, in request order, from the index.
    pub fn usage_receipts(
        &self,
        id: ContractId,
    ) -> Result<Vec<CoSigned<UsageReceipt>>, LedgerError> {
        self.shared.usage_receipts(&self.head(), &id)
    }

    /// The documents of every open contract (signed, neither settled nor failed here).
    pub fn open_contracts(&self) -> Result<Vec<ContractDocs>, LedgerError> {
        let head = self.head();
        let mut open = Vec::new();
        for id in self.shared.open_contracts()? {
            if let Some(docs) = self.shared.contract_docs(&head, &id)? {
                open.push(docs);
            }
        }
        Ok(open)
    }

    /// The contracts of job `job` in this ledger.
    pub fn contracts_of_job(&self, job: JobId) -> Result<Vec<ContractId>, LedgerError> {
        self.shared.contracts_of_job(job)
    }

    /// What `peer` owes this node by the settlements in the ledger (negative: what this node
    /// owes it).
    pub fn balance_with(&self, peer: NodeId) -> Result<i128, LedgerError> {
        self.shared.balance_with(peer)
    }

    /// Size, head hash and timestamp of the last durable entry.
    pub fn head(&self) -> ChainHead {
        *self.head.borrow()
    }

    /// The durable head, updated after every barrier that appended entries (e.g. to sign and
    /// publish checkpoints: append → fsync → publish).
    pub fn watch_head(&self) -> watch::Receiver<ChainHead> {
        self.head.clone()
    }

    /// Up to `limit` (at most [`MAX_RANGE`]) durable entries from `from`, in order; empty when
    /// `from` is at or past the head. Blocking read of the database.
    pub fn range(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, LedgerError> {
        self.shared.range(&self.head(), from, limit)
    }

    /// Verifies the whole durable chain (encoding, seq, links, timestamps, every signature,
    /// owner a party), streaming in constant memory, and that it ends at [`head`](Self::head).
    /// CPU-heavy and blocking: in async code call it from `spawn_blocking`.
    pub fn verify(&self) -> VerifyReport {
        self.shared.verify(&self.head())
    }

    pub fn owner(&self) -> NodeId {
        self.shared.owner
    }

    /// Net credits per counterparty from the settlements in the durable ledger (positive = they
    /// owe us), sorted by node id. Reads the whole ledger; blocking.
    pub fn balances(&self) -> Result<Vec<Balance>, LedgerError> {
        self.shared.balances()
    }

    /// The writer's counters.
    pub fn stats(&self) -> LedgerStats {
        self.shared.stats()
    }

    /// The RFC 6962 root of the first `size` entries (`size` at most the durable head's size;
    /// the empty tree's root for 0). In memory, `O(log n)`.
    ///
    /// Errors: [`LedgerError::OutOfRange`] beyond the head.
    pub fn tree_root(&self, size: u64) -> Result<Hash32, LedgerError> {
        self.shared.tree_root(&self.head(), size)
    }

    /// The inclusion proof of entry `index` in the tree of the first `size` entries, with that
    /// tree's root and the entry's leaf hash. In memory, `O(log n)`.
    ///
    /// Errors: [`LedgerError::OutOfRange`] when `size` is beyond the head or `index >= size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, LedgerError> {
        self.shared.inclusion_proof(&self.head(), index, size)
    }

    /// The consistency proof from the tree of the first `size1` entries to that of the first
    /// `size2`, with both roots. In memory, `O(log n)`.
    ///
    /// Errors: [`LedgerError::OutOfRange`] when `size2` is beyond the head, `size1 > size2`, or
    /// `size1 == 0 < size2` (nothing to prove: every tree extends the empty one).
    pub fn consistency_proof(
        &self,
        size1: u64,
        size2: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        self.shared.consistency_proof(&self.head(), size1, size2)
    }

    /// What a witness holding a checkpoint of size `size1` asks for before accepting one of size
    /// `size2`: the root at `size1` and the consistency proof from it to the root at `size2`
    /// (empty root and empty proof for `size1 == 0`). In memory, `O(log n)`.
    ///
    /// Errors: [`LedgerError::OutOfRange`] when `size2` is beyond the head or `size1 > size2`.
    pub fn prefix_proof(&self, size1: u64, size2: u64) -> Result<PrefixProof, LedgerError> {
        self.shared.prefix_proof(&self.head(), size1, size2)
    }

    /// The exact stored bytes of entry `index` (whose [`entry_hash`] is its leaf in the tree),
    /// `None` at or past the durable head. Blocking read of the database.
    ///
    /// [`entry_hash`]: suanli_protocol::ledger::entry_hash
    pub fn raw_entry(&self, index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        self.shared.raw_entry(&self.head(), index)
    }
}

/// Verifies the ledger of a **stopped** node. `path` is its data dir or its `db` directory; a
/// missing database is [`LedgerError::NotFound`] (never created), a running node's is
/// [`LedgerError::InUse`]. sled has no read-only mode: this opens the database normally.
pub fn verify_offline(path: &Path, owner: NodeId) -> Result<VerifyReport, LedgerError> {
    Ok(open_offline(path, owner)?.verify())
}

/// Opens the ledger of a **stopped** node for reading (ranges, roots, proofs); see
/// [`verify_offline`]. Never creates a database. Blocking: it reads and hashes every entry.
pub fn open_offline(path: &Path, owner: NodeId) -> Result<Store, LedgerError> {
    Store::open(&Storage::open_existing(path)?, owner)
}

/// Reads entries of a **stopped** node's ledger; see [`verify_offline`] and
/// [`LedgerHandle::range`].
pub fn range_offline(
    path: &Path,
    owner: NodeId,
    from: u64,
    limit: u32,
) -> Result<Vec<StoredEntry>, LedgerError> {
    open_offline(path, owner)?.range(from, limit)
}

/// Simulates an operator editing the database on disk; for tests only (other modules and crates
/// use it to show that rewritten histories are caught). Not part of the node's API.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    use suanli_protocol::merkle::ProveError;

    use super::LedgerError;
    use super::store::{ENTRIES_TREE, seq_key};
    use crate::storage::Storage;

    /// Simulates an operator editing the database on disk; **for tests only**.
    ///
    /// Replaces the stored bytes of entry `seq` in a **stopped** node's database (`db_path` is its
    /// data dir or its `db` directory) with `raw` and makes it durable, leaving `ledger.head`
    /// untouched: an edited middle entry is not caught at open (only the last recorded entry is
    /// checked there), so it is left for verification, proofs and witnesses to catch. An edited
    /// last entry is refused at the next open.
    ///
    /// Errors: [`LedgerError::NotFound`] without a database, [`LedgerError::InUse`] while the
    /// node runs, [`LedgerError::OutOfRange`] when there is no entry `seq`.
    pub fn rewrite_entry_offline(db_path: &Path, seq: u64, raw: &[u8]) -> Result<(), LedgerError> {
        let storage = Storage::open_existing(db_path)?;
        let entries = storage.ledger_tree(ENTRIES_TREE);
        if !entries.contains_key(&seq_key(seq))? {
            let size = entries.len()? as u64;
            return Err(ProveError::IndexBeyondSize { index: seq, size }.into());
        }
        entries.insert(&seq_key(seq), raw)?;
        storage.barrier()?;
        Ok(())
    }
}
