//! `<db dir>/ledger.head`: the last head known durable, kept **outside** sled's log.
//!
//! sled 0.34 recovers its log up to the first record that fails its checksum and silently drops
//! everything after it: one flipped byte in the middle of the log comes back as a shorter,
//! perfectly valid ledger (checked: 100 entries, a byte flipped in entry 50's record, reopened
//! with 50 entries that verify). A record of the head *inside* sled would be dropped along with
//! the entries, so this small file is the anchor that lets opening tell "lost acknowledged
//! entries" from "never had them".
//!
//! Rules: the head is written only after the barrier that made it durable, so the file never
//! names an entry that was not durable first. It is overwritten in place (no new directory
//! entries), alternating between two checksummed 64-byte slots so that a torn write leaves the
//! previous head readable. It is fdatasynced at open, at a clean stop, and otherwise at most
//! [`SYNC_INTERVAL`] after an update (not at every barrier: that would be a second device flush
//! per group). A process crash keeps it anyway (it is in the page cache); a power failure may
//! take the last interval's updates, which only narrows what can be detected, never raises a
//! false alarm.
//!
//! ```text
//! slot (64 bytes) = "SLH1" ‖ counter u64 ‖ size u64 ‖ head hash 32 ‖ timestamp u64 ‖ check 4
//!                   (big-endian; check = first 4 bytes of SHA-256 of the 60 bytes before it)
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use suanli_protocol::Hash32;
use suanli_protocol::ledger::ChainHead;

pub(super) const HEAD_FILE: &str = "ledger.head";
const MAGIC: &[u8; 4] = b"SLH1";
const SLOT: usize = 64;
/// Longest time a recorded head stays only in the page cache.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    /// No file, or an empty one (a new database, or one from before this file existed).
    Nothing,
    Head(ChainHead),
    /// The file exists but neither slot is valid: it was damaged (a torn write spoils one slot).
    Unreadable,
}

#[derive(Debug)]
pub(super) struct HeadFile {
    path: PathBuf,
    file: File,
    counter: u64,
    last_sync: Option<Instant>,
}

fn encode(counter: u64, head: &ChainHead) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..12].copy_from_slice(&counter.to_be_bytes());
    slot[12..20].copy_from_slice(&head.size.to_be_bytes());
    slot[20..52].copy_from_slice(head.head.as_bytes());
    slot[52..60].copy_from_slice(&head.timestamp_ms.to_be_bytes());
    let check = Hash32::of(&slot[..60]);
    slot[60..].copy_from_slice(&check.as_bytes()[..4]);
    slot
}

fn decode(slot: &[u8]) -> Option<(u64, ChainHead)> {
    let slot: &[u8; SLOT] = slot.try_into().ok()?;
    let check = Hash32::of(&slot[..60]);
    if &slot[..4] != MAGIC || slot[60..] != check.as_bytes()[..4] {
        return None;
    }
    let u64_at = |at: usize| slot[at..at + 8].try_into().ok().map(u64::from_be_bytes);
    Some((
        u64_at(4)?,
        ChainHead {
            size: u64_at(12)?,
            head: Hash32(slot[20..52].try_into().ok()?),
            timestamp_ms: u64_at(52)?,
        },
    ))
}

impl HeadFile {
    /// Opens (creating) the file in the database directory `dir` and reads it.
    pub(super) fn open(dir: &Path) -> io::Result<(HeadFile, Recorded)> {
        let path = dir.join(HEAD_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = [0u8; 2 * SLOT];
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let readable = len.min(bytes.len());
        file.read_exact_at(&mut bytes[..readable], 0)?;
        let newest = bytes
            .chunks_exact(SLOT)
            .filter_map(decode)
            .max_by_key(|(counter, _)| *counter);
        let (counter, recorded) = match newest {
            Some((counter, head)) => (counter, Recorded::Head(head)),
            None if len == 0 => (0, Recorded::Nothing),
            None => (0, Recorded::Unreadable),
        };
        let head_file = HeadFile {
            path,
            file,
            counter,
            last_sync: None,
        };
        Ok((head_file, recorded))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Records `head`, which must already be durable. fdatasyncs when `force` or when the last
    /// sync is older than [`SYNC_INTERVAL`]; `Ok(false)` when the record is not synced yet (the
    /// writer then calls [`sync`](Self::sync) once it has been idle for [`SYNC_INTERVAL`]).
    pub(super) fn record(&mut self, head: &ChainHead, force: bool) -> io::Result<bool> {
        self.counter += 1;
        let offset = if self.counter.is_multiple_of(2) {
            0
        } else {
            SLOT as u64
        };
        self.file
            .write_all_at(&encode(self.counter, head), offset)?;
        let due = self
            .last_sync
            .is_none_or(|last| last.elapsed() >= SYNC_INTERVAL);
        if force || due {
            self.sync()?;
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.last_sync = Some(Instant::now());
        Ok(())
    }
}
