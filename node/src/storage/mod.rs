//! The node's on-disk key-value state: the only module that names sled.
//!
//! It owns one sled database (`<data dir>/db`) and hands out, through a cloneable [`Storage`]:
//! - **record trees** ([`RecordTree`]): ordered key-value trees other modules keep their records
//!   in (job records, witness state), under `records/<name>`; the ledger's own trees live under
//!   `ledger/<name>` (`Storage::ledger_tree`), so no record tree can alias them;
//! - the **blob store** ([`Blobs`]): bytes by SHA-256 (job modules, stdin, outputs);
//! - the **durability barrier** ([`Storage::barrier`], [`Storage::sync`]): sled's flush and then
//!   a real fsync of every file sled wrote (`durability.rs`: sled 0.34's flush only uses
//!   `sync_file_range`). Concurrent callers share barriers: a caller is done as soon as a barrier
//!   that *started after it asked* has completed;
//! - the **free-space reserve** and the storage's [`Health`] (`space.rs`), watched by whoever
//!   must stop taking work when the disk fills up.
//!
//! ```text
//!  ledger writer ──ensure_space(group) ─▶ Storage ── statvfs ── Health (watch) ──▶ advert load,
//!        │          apply_batch(entries)    │  ▲                    ▲               GET /v1/node,
//!        └────────── barrier() ─────────────┤  └── monitor task ────┘               POST /v1/jobs
//!  market, transparency ── records / blobs ─┤      (poll 1 s; when full: 100 ms doubling to 5 s)
//!  RecordTree::flush ─────── sync() ────────┘ sled flush + fsync of db, blobs/, the directories
//! ```
//!
//! Rules this module keeps:
//! - **Durable means fsynced**: [`Storage::barrier`] returns `Ok` only after sled's flush and
//!   the fsyncs. A failed barrier marks the storage [`Health::Failed`] for good and every later
//!   barrier fails too (after a failed fsync the kernel may have dropped the dirty pages, so a
//!   retry could "succeed" without the data: PostgreSQL's fsyncgate). A restart recovers from what
//!   is really on disk.
//! - **sled never sees a full disk**: ENOSPC poisons sled 0.34 until the database is reopened, so
//!   writes are refused *before* they would eat into the reserve ([`StorageError::DiskFull`]),
//!   with nothing written; a full disk is a state ([`Health::DiskFull`]) the node leaves by itself
//!   when space returns, not a failure.
//! - **Damage is reported, never repaired**: sled's corruption at open is
//!   [`StorageError::Damaged`].
//!
//! It must never: let a sled type out of this module; acknowledge a barrier that failed; retry a
//! failed barrier; create a database from an offline helper ([`Storage::open_existing`]).
//!
//! Costs to know (measured here, see docs/benchmarks.md "Database disk use"): sled's files take
//! about twice the bytes of the ledger entries (1.9-2.1×); a round of 64 appends grew them by up
//! to 0.2 MB beyond its entries, a 1 MiB blob by 2.1 MB beyond its size; reopening writes a
//! page-table snapshot of ~1-2 % of the database. Admission counts a write at three times its
//! size; the default reserve (256 MiB) takes the spikes, the snapshot of a database of several
//! GB, and the small records that keep being written while new work is refused. A barrier is
//! one `fdatasync` of the log (plus the directories when sled created files).

mod blobs;
mod database;
mod durability;
mod records;
mod space;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

pub use blobs::Blobs;
pub use records::{LARGE_VALUE_BYTES, Record, RecordTree, Value, WriteBatch};
pub use space::Health;

use crate::config::StorageConfig;
use database::{existing_database, open_database, sled_error};
use durability::{Durability, SyncError};
use space::Space;

/// Record trees live under this prefix, so no record tree can alias a ledger tree.
const RECORDS_PREFIX: &str = "records/";
/// The ledger's trees live under this prefix.
const LEDGER_PREFIX: &str = "ledger/";

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (normally the running node) holds the database.
    #[error(
        "the database {path} is in use by another process: stop the node first, \
         or ask the running node (its HTTP API)"
    )]
    InUse { path: PathBuf },
    /// An offline helper found no database.
    #[error("no database at {path}")]
    NotFound { path: PathBuf },
    /// sled found its files corrupt.
    #[error("the database {path} is damaged: {detail}; refusing to use it")]
    Damaged { path: PathBuf, detail: String },
    /// sled failed.
    #[error("storage failed ({operation}): {message}")]
    Sled {
        operation: &'static str,
        message: String,
    },
    /// A file operation failed (an fsync, at the barrier).
    #[error("storage {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing this would leave less than the free-space reserve on the database's filesystem.
    /// Nothing was written; the write may be retried once space is back.
    #[error(
        "disk full: {available} bytes free, this write needs {needed} (a reserve of {reserve} \
         bytes is kept free for the database); nothing was written"
    )]
    DiskFull {
        available: u64,
        needed: u64,
        reserve: u64,
    },
    /// An earlier barrier failed: nothing is made durable any more until the node restarts.
    #[error("storage failed earlier ({0}); restart the node")]
    Failed(String),
}

/// Counters of the storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageStats {
    /// Durability barriers run (sled flush + fsyncs).
    pub barriers: u64,
    /// Callers of [`Storage::barrier`] / [`Storage::sync`] served by a barrier someone else ran.
    pub shared_barriers: u64,
}

/// Barriers run one at a time; a caller whose writes a completed barrier covers runs none.
#[derive(Debug, Default)]
struct Barriers {
    /// Barriers started. A caller reads it *after* its writes: barrier `n` covers it if
    /// `n > ticket` (that barrier started after the writes).
    started: AtomicU64,
    /// The number of the last barrier that completed successfully; the lock is held for the
    /// whole barrier, so barriers complete in the order they started.
    completed: Mutex<u64>,
    /// A copy of `completed` readable without waiting for a running barrier.
    completed_copy: AtomicU64,
    /// Async callers take turns here (without a thread each) before one goes to a blocking
    /// thread; the ledger writer, already on one, goes straight to `completed`.
    async_turn: tokio::sync::Mutex<()>,
    shared: AtomicU64,
    run: AtomicU64,
}

/// What every handle, tree and the monitor share.
struct Inner {
    path: PathBuf,
    db: sled::Db,
    durability: Mutex<Durability>,
    barriers: Barriers,
    space: Space,
    health: watch::Sender<Health>,
    /// How long each barrier this storage ran took, seconds.
    barrier_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Set once, when a barrier failed (or the ledger writer halted).
    failed: OnceLock<String>,
    /// Tests make the next barriers fail, to check that nobody is acknowledged.
    #[cfg(test)]
    fail_barriers: std::sync::atomic::AtomicBool,
}

/// A cloneable handle on the node's database. The database closes when the last handle (and
/// every tree and blob store taken from it) is dropped.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.inner.path)
            .field("health", &*self.inner.health.borrow())
            .finish_non_exhaustive()
    }
}

fn sync_failed(operation: &'static str, error: SyncError) -> StorageError {
    StorageError::Io {
        operation,
        path: error.path,
        source: error.source,
    }
}

impl Storage {
    /// Opens (creating) the database in directory `path` (the node passes
    /// `DataDir::db_path()`, i.e. `<data dir>/db`), waiting up to a second for sled's lock (see
    /// `database.rs`), and makes its creation durable. Blocking; spawns nothing (see
    /// [`spawn_monitor`](Self::spawn_monitor)). Another process holding the database gives
    /// [`StorageError::InUse`]. A filesystem already below the reserve opens as
    /// [`Health::DiskFull`].
    pub fn open(path: &Path, config: &StorageConfig) -> Result<Storage, StorageError> {
        let db = open_database(path, config.cache_capacity_bytes)?;
        let durability = Durability::open(path).map_err(|error| sync_failed("open", error))?;
        let space = Space::new(path, config.min_free_bytes);
        let health = match space.available() {
            Ok(available) if available < space.reserve => {
                warn!(
                    available_bytes = available,
                    min_free_bytes = space.reserve,
                    "free disk space is below the reserve: refusing new work until it is back"
                );
                Health::DiskFull {
                    available_bytes: available,
                    min_free_bytes: space.reserve,
                }
            }
            Ok(_) => Health::Healthy,
            Err(error) => {
                warn!(%error, "cannot measure the database's free space");
                Health::Healthy
            }
        };
        Ok(Storage {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db,
                durability: Mutex::new(durability),
                barriers: Barriers::default(),
                space,
                health: watch::Sender::new(health),
                barrier_seconds: crate::metrics::duration_histogram(),
                failed: OnceLock::new(),
                #[cfg(test)]
                fail_barriers: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Opens the database of a **stopped** node for an offline helper: `path` is its data dir or
    /// its `db` directory. Never creates one ([`StorageError::NotFound`]); a running node's is
    /// [`StorageError::InUse`]. sled has no read-only mode: this opens the database normally.
    pub fn open_existing(path: &Path) -> Result<Storage, StorageError> {
        Storage::open(&existing_database(path)?, &StorageConfig::default())
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The record tree `name` (e.g. `"jobs"`, `"witnessed"`): sled tree `records/<name>`,
    /// separate from the ledger's trees whatever the name. Opened on first use.
    pub fn records(&self, name: &'static str) -> RecordTree {
        RecordTree::new(name, format!("{RECORDS_PREFIX}{name}"), self.clone())
    }

    /// A tree of the ledger (`ledger/<name>`, e.g. `entries`). Only the ledger module calls it.
    pub(crate) fn ledger_tree(&self, name: &'static str) -> RecordTree {
        RecordTree::new(name, format!("{LEDGER_PREFIX}{name}"), self.clone())
    }

    /// The blob store.
    pub fn blobs(&self) -> Blobs {
        Blobs::new(self)
    }

    fn open_tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        self.inner
            .db
            .open_tree(name)
            .map_err(sled_error("open tree"))
    }

    /// Whether the storage takes new work, kept current by the monitor and by every check.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// The health now (see [`health`](Self::health)).
    pub fn current_health(&self) -> Health {
        self.inner.health.borrow().clone()
    }

    /// The configured reserve, bytes (`storage.min_free_bytes`).
    pub fn min_free_bytes(&self) -> u64 {
        self.inner.space.reserve
    }

    /// Free bytes needed to accept work again after the disk was full.
    pub fn resume_free_bytes(&self) -> u64 {
        self.inner.space.resume
    }

    /// Free bytes on the database's filesystem now (`statvfs`), if it can be measured.
    pub fn available_bytes(&self) -> Option<u64> {
        self.inner.space.available().ok()
    }

    /// Admits a write of about `bytes` bytes: `Ok` when the filesystem keeps the reserve free
    /// after it (sled's write amplification included). Call it *before* writing anything
    /// large; blocking (one `statvfs`), but short.
    ///
    /// Errors: [`StorageError::Failed`] after a failed barrier; [`StorageError::DiskFull`] while
    /// the health is [`Health::DiskFull`] (without measuring again: the monitor decides when
    /// space is back) or when this write would eat into the reserve, which turns the health to
    /// [`Health::DiskFull`].
    pub fn ensure_space(&self, bytes: u64) -> Result<(), StorageError> {
        let inner = &self.inner;
        if let Some(reason) = inner.failed.get() {
            return Err(StorageError::Failed(reason.clone()));
        }
        let space = &inner.space;
        if space.reserve == 0 {
            return Ok(());
        }
        let needed = space.needed(bytes);
        if let Health::DiskFull {
            available_bytes, ..
        } = *inner.health.borrow()
        {
            return Err(StorageError::DiskFull {
                available: available_bytes,
                needed,
                reserve: space.reserve,
            });
        }
        let available = match space.available() {
            Ok(available) => available,
            Err(error) => {
                // Not knowing is no reason to stop: the barrier still catches real failures.
                warn!(%error, "cannot measure the database's free space");
                return Ok(());
            }
        };
        if available >= needed {
            return Ok(());
        }
        // Refused for lack of room: the node is full, whether the free space is already below
        // the reserve or this write would take it there. Left at "healthy", a node hovering just
        // above the reserve would refuse most work while advertising that it takes it.
        inner.health.send_if_modified(|health| {
            if *health != Health::Healthy {
                return false;
            }
            warn!(
                available_bytes = available,
                min_free_bytes = space.reserve,
                needed_bytes = needed,
                "free disk space is (nearly) down to the reserve: refusing new work until it is back"
            );
            *health = Health::DiskFull {
                available_bytes: available,
                min_free_bytes: space.reserve,
            };
            true
        });
        Err(StorageError::DiskFull {
            available,
            needed,
            reserve: space.reserve,
        })
    }

    /// Makes everything written to the database so far durable (sled flush, then the fsyncs),
    /// sharing a barrier with concurrent callers where one covers them. Blocking: call it from
    /// a blocking thread (async code uses [`sync`](Self::sync)).
    ///
    /// Errors: the barrier's failure, after which the storage is [`Health::Failed`] and every
    /// later call returns [`StorageError::Failed`].
    pub fn barrier(&self) -> Result<(), StorageError> {
        let ticket = self.inner.barriers.started.load(Ordering::SeqCst);
        self.inner.barrier_after(ticket)
    }

    /// [`barrier`](Self::barrier) for async callers: waits its turn without holding a thread,
    /// and runs the barrier on a blocking thread if none that started after the call covered it.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let barriers = &self.inner.barriers;
        let ticket = barriers.started.load(Ordering::SeqCst);
        let _turn = barriers.async_turn.lock().await;
        if barriers.completed_copy.load(Ordering::SeqCst) > ticket {
            barriers.shared.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.barrier_after(ticket))
            .await
            .map_err(|panic| {
                let reason = format!("barrier panicked: {panic}");
                self.fail(reason.clone());
                StorageError::Failed(reason)
            })?
    }

    /// Marks the storage failed for good (the ledger writer calls it when it halts), so the
    /// node stops taking work and says why.
    pub(crate) fn fail(&self, reason: String) {
        self.inner.fail(reason);
    }

    /// How long each barrier took (sled flush and fsyncs), for the node's metrics.
    pub fn barrier_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.inner.barrier_seconds.clone()
    }

    pub fn stats(&self) -> StorageStats {
        let barriers = &self.inner.barriers;
        StorageStats {
            barriers: barriers.run.load(Ordering::Relaxed),
            shared_barriers: barriers.shared.load(Ordering::Relaxed),
        }
    }

    /// Starts the task that keeps [`health`](Self::health) current (see `space.rs`). It ends on
    /// `cancel`, when the database closes, or once the storage failed. Must be called within a
    /// tokio runtime.
    pub fn spawn_monitor(&self, cancel: CancellationToken) -> JoinHandle<()> {
        space::spawn_monitor(Arc::downgrade(&self.inner), cancel)
    }

    /// Tests make every barrier from now on fail (`true`) or work again (`false`; a storage
    /// that already failed stays failed).
    #[cfg(test)]
    pub(crate) fn fail_barriers_for_test(&self, fail: bool) {
        self.inner.fail_barriers.store(fail, Ordering::SeqCst);
    }

    /// Tests pretend the filesystem has `bytes` free (`None`: measure it again).
    #[cfg(test)]
    pub(crate) fn pretend_available_for_test(&self, bytes: Option<u64>) {
        *self
            .inner
            .space
            .fake_available
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = bytes;
    }
}

impl Inner {
    /// Runs a barrier unless one numbered above `ticket` already completed.
    fn barrier_after(&self, ticket: u64) -> Result<(), StorageError> {
        let barriers = &self.barriers;
        // A poisoned lock only means a barrier panicked; the counter is still sound.
        let mut completed = barriers
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *completed > ticket {
            barriers.shared.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let number = barriers.started.fetch_add(1, Ordering::SeqCst) + 1;
        let started = std::time::Instant::now();
        self.run_barrier()?;
        self.barrier_seconds
            .observe(started.elapsed().as_secs_f64());
        *completed = number;
        barriers.completed_copy.store(number, Ordering::SeqCst);
        barriers.run.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn run_barrier(&self) -> Result<(), StorageError> {
        if let Some(reason) = self.failed.get() {
            return Err(StorageError::Failed(reason.clone()));
        }
        let result = self.flush_and_sync();
        if let Err(error) = &result {
            self.fail(error.to_string());
        }
        result
    }

    fn flush_and_sync(&self) -> Result<(), StorageError> {
        #[cfg(test)]
        if self.fail_barriers.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                operation: "fsync",
                path: self.path.join(durability::LOG_FILE),
                source: std::io::Error::other("injected failure"),
            });
        }
        // All trees share one log: one flush covers every tree.
        self.db.flush().map_err(sled_error("flush"))?;
        // A poisoned lock only means another barrier panicked; the map of synced blobs is still
        // sound (at worst it makes us fsync a blob twice).
        self.durability
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync()
            .map_err(|error| sync_failed("fsync", error))
    }

    fn fail(&self, reason: String) {
        if self.failed.set(reason.clone()).is_ok() {
            error!(%reason, "storage failed: no more writes are made durable; restart the node");
            self.health.send_replace(Health::Failed { reason });
        }
    }
}
