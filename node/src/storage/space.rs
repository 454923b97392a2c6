//! The free-space reserve and the storage's health.
//!
//! sled 0.34 must never see ENOSPC: a failed log write sets its *global error*, which every later
//! insert and flush returns until the database is reopened, however much space came back
//! (`Config::set_global_error` in `pagecache/iobuf.rs`; checked on a 16 MiB tmpfs: after ENOSPC,
//! inserts and flushes kept failing with 4 MiB free). So the node stops *before* the disk is
//! full: new writes are admitted only while the filesystem keeps [`min_free_bytes`] free after
//! them, and sled's own growth (its write amplification, new segments, the page-table snapshot it
//! writes when it opens) happens inside that reserve.
//!
//! ```text
//!     a write refused for room (available < reserve + 3 × its size), or the
//!     monitor's poll finds available < reserve
//!   Healthy ─────────────────────────────────────────────────────────────▶ DiskFull
//!      ▲                                                                      │ monitor re-checks:
//!      └───────────────── available ≥ reserve + reserve/4 ◀──────────────────┘ 100 ms doubling to 5 s
//!   any state ── a barrier failed (or the ledger writer halted) ──▶ Failed (until restart)
//! ```
//!
//! [`min_free_bytes`]: crate::config::StorageConfig::min_free_bytes

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Inner;

/// What a write of `n` bytes is assumed to cost on disk: sled's files took 1.9-2.1× the bytes of
/// ledger entries, and up to 3× for 300-byte values in a bare-sled test (docs/benchmarks.md).
pub(super) const WRITE_AMPLIFICATION: u64 = 3;
/// How often a healthy storage looks at the free space (so a disk filled by something else is
/// noticed, and advertised, before a write fails).
const POLL_HEALTHY: Duration = Duration::from_secs(1);
/// First re-check after the reserve was breached, doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whether the node's storage takes new work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Free space is above the reserve: writes are admitted.
    Healthy,
    /// Free space fell below the reserve, or a write was refused because it would have eaten
    /// into it: new work is refused (ledger appends, new blobs, large records) until free space
    /// is back above the resume mark. Nothing was lost.
    DiskFull {
        /// Free bytes when last measured.
        available_bytes: u64,
        /// The configured reserve.
        min_free_bytes: u64,
    },
    /// A durability barrier failed (or the ledger writer halted): nothing more is written, and
    /// the node must be restarted (after a failed fsync the kernel may have dropped the data).
    Failed { reason: String },
}

impl Health {
    /// `true` when new work may be taken.
    pub fn is_accepting(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Why new work is refused (for an error or a decline), or `None` when it is taken.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Health::Healthy => None,
            Health::DiskFull {
                available_bytes,
                min_free_bytes,
            } => Some(format!(
                "this node's disk is full ({available_bytes} bytes free, {min_free_bytes} kept in \
                 reserve); it takes no work until space is freed"
            )),
            Health::Failed { reason } => Some(format!(
                "this node's storage failed ({reason}); it takes no work until it is restarted"
            )),
        }
    }
}

/// The reserve and how free space is measured.
#[derive(Debug)]
pub(super) struct Space {
    path: PathBuf,
    /// Bytes that must stay free after any admitted write; 0 disables the checks.
    pub(super) reserve: u64,
    /// Free bytes needed to leave [`Health::DiskFull`]: the reserve plus a quarter, so a node
    /// hovering at the reserve does not flap between accepting and refusing.
    pub(super) resume: u64,
    /// Tests pretend the filesystem has this many bytes free.
    #[cfg(test)]
    pub(super) fake_available: std::sync::Mutex<Option<u64>>,
}

impl Space {
    pub(super) fn new(path: &Path, reserve: u64) -> Space {
        Space {
            path: path.to_owned(),
            reserve,
            resume: reserve.saturating_add(reserve / 4),
            #[cfg(test)]
            fake_available: std::sync::Mutex::new(None),
        }
    }

    /// Bytes an unprivileged writer can still use on the database's filesystem (`statvfs`'s
    /// `f_bavail`: root may use a little more, so this errs on the safe side).
    pub(super) fn available(&self) -> io::Result<u64> {
        #[cfg(test)]
        if let Some(bytes) = *self
            .fake_available
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Ok(bytes);
        }
        let stats = rustix::fs::statvfs(&self.path)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Free bytes a write of `bytes` needs: the reserve plus its estimated cost on disk.
    pub(super) fn needed(&self, bytes: u64) -> u64 {
        self.reserve
            .saturating_add(bytes.saturating_mul(WRITE_AMPLIFICATION))
    }
}

/// Starts the task that keeps the health current: a poll every second while healthy; while the
/// disk is full, re-checks at 100 ms doubling to 5 s, and back to healthy above the resume mark.
/// It holds the storage weakly (the database closes when the last handle drops) and ends then,
/// on `cancel`, or once the storage failed for good.
pub(super) fn spawn_monitor(inner: Weak<Inner>, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(monitor(inner, cancel))
}

async fn monitor(inner: Weak<Inner>, cancel: CancellationToken) {
    let Some(mut health) = inner.upgrade().map(|inner| inner.health.subscribe()) else {
        return;
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let current = health.borrow_and_update().clone();
        let wait = match current {
            Health::Healthy => POLL_HEALTHY,
            Health::DiskFull { .. } => backoff,
            Health::Failed { .. } => return,
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            changed = health.changed() => {
                if changed.is_err() {
                    return;
                }
                // A write found the disk full (or something else changed): start over with
                // the shortest wait.
                backoff = BACKOFF_MIN;
                continue;
            }
            () = tokio::time::sleep(wait) => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // statvfs is quick, but on a hung network filesystem it would block a worker.
        let checked = tokio::task::spawn_blocking(move || {
            let available = strong.space.available();
            (strong, available)
        })
        .await;
        let Ok((strong, available)) = checked else {
            return;
        };
        match available {
            Ok(available) => {
                if recheck(&strong, available) {
                    // Still full: wait longer next time.
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                } else {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(error) => warn!(%error, "cannot measure the database's free space"),
        }
        // Mark what we just did as seen, so our own update does not reset the backoff.
        health.borrow_and_update();
    }
}

/// Applies a fresh measurement; `true` while the disk is (still) full.
fn recheck(inner: &Arc<Inner>, available: u64) -> bool {
    let space = &inner.space;
    let mut full = false;
    inner.health.send_if_modified(|health| match health {
        Health::Healthy if available < space.reserve => {
            warn!(
                available_bytes = available,
                min_free_bytes = space.reserve,
                "free disk space is below the reserve: refusing new work until it is back"
            );
            *health = Health::DiskFull {
                available_bytes: available,
                min_free_bytes: space.reserve,
            };
            full = true;
            true
        }
        Health::DiskFull { .. } if available >= space.resume => {
            info!(
                available_bytes = available,
                "free disk space is back above the reserve: accepting work again"
            );
            *health = Health::Healthy;
            true
        }
        Health::DiskFull {
            available_bytes, ..
        } => {
            full = true;
            debug!(
                available_bytes = available,
                "free disk space still below the resume mark"
            );
            let changed = *available_bytes != available;
            *available_bytes = available;
            changed
        }
        Health::Healthy | Health::Failed { .. } => false,
    });
    full
}
