//! Opening sled: waiting for its lock, telling "in use" from "damaged", and finding the database
//! of a stopped node.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StorageError;
use super::durability::LOG_FILE;

/// How long opening waits for sled's lock to clear.
///
/// sled 0.34 releases its lock lazily: its I/O threads can hold the log file for a moment after
/// the last `Db` is dropped (sled issues #1234, #1289), so reopening right after a clean stop in
/// the same process (a restarted node, tests) would otherwise fail. A node that really is running
/// still gets [`StorageError::InUse`], just this much later.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Opens sled with a page cache of `cache_capacity` bytes, waiting up to [`LOCK_WAIT`] for
/// another holder of the lock to let go.
///
/// sled's background flusher stays on (every 500 ms, its default): it is sled 0.34's only caller
/// of segment cleaning (`attempt_gc`), without which the files never give back the space of
/// rewritten pages, and it hands writes made between barriers (job records saved on the way)
/// to the kernel within half a second, so they survive a killed process. Durability never
/// rests on it: every durable write goes through the barrier (`Storage::barrier`).
pub(super) fn open_database(path: &Path, cache_capacity: u64) -> Result<sled::Db, StorageError> {
    let started = Instant::now();
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(error) => match open_error(path, error) {
                StorageError::InUse { .. } if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                error => return Err(error),
            },
        }
    }
}

/// Turns sled's open error into [`StorageError::InUse`] when another process holds the lock.
fn open_error(path: &Path, error: sled::Error) -> StorageError {
    if let sled::Error::Io(_) = error {
        // sled reports a held lock as a generic I/O error; probe the lock ourselves rather than
        // parse its message. The probe's lock (if it gets one) is released when `file` drops.
        if let Ok(file) = File::open(path.join(LOG_FILE))
            && matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
        {
            return StorageError::InUse {
                path: path.to_owned(),
            };
        }
    }
    match error {
        corruption @ sled::Error::Corruption { .. } => StorageError::Damaged {
            path: path.to_owned(),
            detail: format!("sled: {corruption}"),
        },
        error => StorageError::Sled {
            operation: "open",
            message: format!("{}: {}", path.display(), describe(&error)),
        },
    }
}

/// The database directory of `path`: a node's data dir (holding `db/`) or `db/` itself.
pub(super) fn existing_database(path: &Path) -> Result<PathBuf, StorageError> {
    if path.join(LOG_FILE).is_file() {
        Ok(path.to_owned())
    } else if path.join("db").join(LOG_FILE).is_file() {
        Ok(path.join("db"))
    } else {
        Err(StorageError::NotFound {
            path: path.to_owned(),
        })
    }
}

/// sled's error, with what an operator needs to know when the disk filled up.
pub(super) fn describe(error: &sled::Error) -> String {
    match error {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => format!(
            "{error} (sled 0.34 keeps this error for every later write until the database is \
             reopened: free some space, then restart the node)"
        ),
        error => error.to_string(),
    }
}

/// Maps a sled error of `operation` to [`StorageError::Sled`].
pub(super) fn sled_error(operation: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
    move |error| StorageError::Sled {
        operation,
        message: describe(&error),
    }
}
