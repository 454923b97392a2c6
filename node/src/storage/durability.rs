//! The second half of the durability barrier: a real flush to stable storage of every file sled
//! 0.34.7 writes.
//!
//! `sled::Db::flush` writes the log buffers with `pwrite` + `sync_file_range`, which starts
//! writeback of the data pages but neither commits the file's metadata (its size, when the log
//! grew) nor flushes the device's write cache, so "flushed" data can be gone after a power
//! failure. After `flush` we therefore `fdatasync`/`fsync` what sled wrote. The files, read from
//! its source (`config.rs`, `pagecache/{iobuf,blob_io,snapshot}.rs`):
//!
//! ```text
//! <db dir>/
//!   db           the log: every tree's pages               fdatasync at every barrier
//!   conf         storage parameters, written once at       fsync at open (sled never does)
//!                creation with a plain write
//!   blobs/<lsn>  values too big for a log segment's share  fdatasync each new (or grown) file;
//!                (> ~128 KiB), plain write_all, never       the log only points at a blob that
//!                fsynced by sled                            was written before the flush
//!   snap.<lsn>   page-table snapshot: sled fsyncs the file,  fsync the directory when its
//!                then renames it into place                 names changed
//! ```
//!
//! A new directory entry (a blob file, a snapshot rename, the `db` directory itself) survives a
//! power failure only once its directory is fsynced: the two directories are fsynced whenever
//! their list of names changed since their last fsync, and the parent directory once at open.
//! fsync works on any descriptor of a file, so we keep our own read-only handles and never touch
//! sled's (it holds an exclusive `flock` on its own handle, which does not stop another
//! descriptor from syncing the inode).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// sled's log file inside its directory.
pub(super) const LOG_FILE: &str = "db";
const CONF_FILE: &str = "conf";
const BLOBS_DIR: &str = "blobs";

/// Handles for fsyncing a sled 0.34.7 database directory.
#[derive(Debug)]
pub(super) struct Durability {
    dir: PathBuf,
    log: File,
    dir_handle: File,
    blobs_dir: PathBuf,
    blobs_handle: File,
    /// Blob files already fsynced, with the length they had. sled writes each blob file once
    /// (a new file per new version; old ones are deleted), so each needs one fsync once complete.
    synced_blobs: BTreeMap<OsString, u64>,
    /// The directory's names when it was last fsynced.
    dir_names: BTreeSet<OsString>,
    /// Nothing fsynced yet: the first barrier syncs both directories whatever they hold.
    never_synced: bool,
}

/// An fsync failed: which file, and why.
#[derive(Debug)]
pub(super) struct SyncError {
    pub(super) path: PathBuf,
    pub(super) source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> SyncError + '_ {
    move |source| SyncError {
        path: path.to_owned(),
        source,
    }
}

fn sync_path(path: &Path) -> Result<(), SyncError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(at(path))
}

impl Durability {
    /// Opens the handles of an open sled database in `dir` and makes its creation durable: the
    /// `conf` file and the directory's entry in its parent.
    pub(super) fn open(dir: &Path) -> Result<Durability, SyncError> {
        let log_path = dir.join(LOG_FILE);
        let log = File::open(&log_path).map_err(at(&log_path))?;
        let dir_handle = File::open(dir).map_err(at(dir))?;
        let blobs_dir = dir.join(BLOBS_DIR);
        let blobs_handle = File::open(&blobs_dir).map_err(at(&blobs_dir))?;
        sync_path(&dir.join(CONF_FILE))?;
        let parent = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_path(parent)?;
        Ok(Durability {
            dir: dir.to_owned(),
            log,
            dir_handle,
            blobs_dir,
            blobs_handle,
            synced_blobs: BTreeMap::new(),
            dir_names: BTreeSet::new(),
            never_synced: true,
        })
    }

    /// fsyncs everything sled may have written since the last call. Call after `Db::flush`.
    ///
    /// A directory is fsynced only when its list of names changed since it was last fsynced:
    /// here a directory fsync costs more than the log's (it commits the filesystem journal), and
    /// most barriers create no file. Names are listed *before* the fsync, so a change racing
    /// with it shows up as a difference at the next barrier.
    pub(super) fn sync(&mut self) -> Result<(), SyncError> {
        let blobs_changed = self.sync_new_blobs()?;
        // fdatasync: the data and the metadata needed to read it back (the size, when the log
        // grew), without the modification time. Durable all the same.
        self.log.sync_data().map_err(at(&self.dir.join(LOG_FILE)))?;
        if blobs_changed {
            self.blobs_handle.sync_all().map_err(at(&self.blobs_dir))?;
        }
        let names = list_names(&self.dir)?;
        if names != self.dir_names {
            self.dir_handle.sync_all().map_err(at(&self.dir))?;
            self.dir_names = names;
        }
        Ok(())
    }

    /// fsyncs new or grown blob files; `true` if the directory's names changed.
    fn sync_new_blobs(&mut self) -> Result<bool, SyncError> {
        let listing = std::fs::read_dir(&self.blobs_dir).map_err(at(&self.blobs_dir))?;
        let mut present = BTreeMap::new();
        for item in listing {
            let name = item.map_err(at(&self.blobs_dir))?.file_name();
            let path = self.blobs_dir.join(&name);
            // The length is read *before* the fsync: every byte below it was written before the
            // fsync started, so it is covered. A blob sled is still writing grows past that length
            // and is synced again at the next barrier.
            let len = match std::fs::metadata(&path) {
                Ok(metadata) => metadata.len(),
                // Garbage-collected by sled since the listing: nothing to keep.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(SyncError { path, source }),
            };
            if self.synced_blobs.get(&name) != Some(&len) {
                match File::open(&path).and_then(|file| file.sync_data()) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(SyncError { path, source }),
                }
            }
            present.insert(name, len);
        }
        let changed = !present.keys().eq(self.synced_blobs.keys()) || self.never_synced;
        self.never_synced = false;
        // Forget deleted blobs so the map stays as small as the directory.
        self.synced_blobs = present;
        Ok(changed)
    }
}

fn list_names(dir: &Path) -> Result<BTreeSet<OsString>, SyncError> {
    std::fs::read_dir(dir)
        .map_err(at(dir))?
        .map(|item| item.map(|item| item.file_name()).map_err(at(dir)))
        .collect()
}
