//! Opening the sled database, recovering the head, the barrier, and the readers that every
//! handle (and the offline helpers) share.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use suanli_protocol::checkpoint::PrefixProof;
use suanli_protocol::ledger::{ChainHead, ChainVerifier, EntryBody, LedgerEntry, entry_hash};
use suanli_protocol::merkle::{
    ConsistencyProof, EMPTY_ROOT, InclusionProof, MerkleTree, ProveError,
};
use suanli_protocol::negotiation::ContractId;
use suanli_protocol::signed::SignatureBatch;
use suanli_protocol::{Hash32, Keypair, NodeId};
use tracing::{info, warn};

/// Entries whose signatures [`Shared::verify`] checks in one batch (~200 signatures).
const VERIFY_BATCH_ENTRIES: usize = 128;

use super::durability::{Durability, LOG_FILE, SyncError};
use super::head_file::{HEAD_FILE, HeadFile, Recorded};
use super::{
    Balance, LedgerError, LedgerStats, MAX_RANGE, StoredEntry, VerifyFailure, VerifyReport,
};

/// Tree of ledger entries: key = seq as 8 bytes big-endian, value = the framed entry bytes.
pub(super) const ENTRIES_TREE: &str = "ledger/entries";
/// Record trees live under this prefix, so no record tree can alias a ledger tree.
const RECORDS_PREFIX: &str = "records/";

pub(super) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn describe_key(key: &[u8]) -> String {
    match <[u8; 8]>::try_from(key) {
        Ok(bytes) => u64::from_be_bytes(bytes).to_string(),
        Err(_) => format!("0x{}", hex::encode(key)),
    }
}

pub(super) fn storage(operation: &'static str) -> impl FnOnce(sled::Error) -> LedgerError {
    move |error| LedgerError::Storage {
        operation,
        message: error.to_string(),
    }
}

/// Counters of the writer, readable by anyone.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) barriers: AtomicU64,
    pub(super) appended: AtomicU64,
    pub(super) largest_batch: AtomicU64,
}

/// What every handle, record tree and the writer share: the open database.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) owner: NodeId,
    pub(super) db: sled::Db,
    pub(super) entries: sled::Tree,
    /// The Merkle tree of every durable entry (and, for a moment, of a group between its
    /// barrier and the head moving). Extended only by the writer, *before* it publishes a new
    /// head, so every size a reader can see is in it.
    tree: RwLock<MerkleTree>,
    durability: Mutex<Durability>,
    head_file: Mutex<HeadFile>,
    pub(super) counters: Counters,
    /// Set once when the writer stops because storage failed; every later append reports it.
    halted: OnceLock<String>,
    /// Tests make the next barriers fail, to check that nobody is acknowledged.
    #[cfg(test)]
    pub(super) fail_barriers: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("path", &self.path)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Opens (creating) the sled database in `path` and checks the stored chain's structure.
    pub(super) fn open(path: &Path, owner: NodeId) -> Result<(Shared, ChainHead), LedgerError> {
        let db = open_database(path)?;
        let entries = db
            .open_tree(ENTRIES_TREE)
            .map_err(storage("open entries"))?;
        let durability = Durability::open(path).map_err(|error| sync_failed("open", error))?;
        let (head_file, recorded) = HeadFile::open(path).map_err(|source| LedgerError::Io {
            operation: "open",
            path: path.join(HEAD_FILE),
            source,
        })?;
        let (head, tree) = recover_head(&entries, path)?;
        check_recorded_head(recorded, &entries, &head, path)?;
        info!(path = %path.display(), entries = head.size, head = %head.head, "ledger opened");
        let shared = Shared {
            path: path.to_owned(),
            owner,
            db,
            entries,
            tree: RwLock::new(tree),
            durability: Mutex::new(durability),
            head_file: Mutex::new(head_file),
            counters: Counters::default(),
            halted: OnceLock::new(),
            #[cfg(test)]
            fail_barriers: std::sync::atomic::AtomicBool::new(false),
        };
        // Whatever sled recovered is made durable and becomes the recorded head (a crash can
        // only have lost a tail that was never acknowledged), so from now on losing any of these
        // entries is detected.
        shared.barrier()?;
        shared.record_head(&head, true)?;
        Ok((shared, head))
    }

    /// The durability barrier: sled's flush (all trees share one log), then a real fsync of
    /// every file sled wrote. Blocking; call from a blocking thread.
    pub(super) fn barrier(&self) -> Result<(), LedgerError> {
        #[cfg(test)]
        if self.fail_barriers.load(Ordering::SeqCst) {
            return Err(LedgerError::Io {
                operation: "fsync",
                path: self.path.join(LOG_FILE),
                source: std::io::Error::other("injected failure"),
            });
        }
        self.db.flush().map_err(storage("flush"))?;
        // A poisoned lock only means another barrier panicked; the map of synced blobs is still
        // sound (at worst it makes us fsync a blob twice).
        self.durability
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync()
            .map_err(|error| sync_failed("fsync", error))?;
        self.counters.barriers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records `head` as durable in the head file; call only after the barrier that made it
    /// so. `Ok(false)`: recorded but not yet fdatasynced (see [`HeadFile::record`]).
    pub(super) fn record_head(
        &self,
        head: &ChainHead,
        force_sync: bool,
    ) -> Result<bool, LedgerError> {
        let mut head_file = self
            .head_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        head_file
            .record(head, force_sync)
            .map_err(|source| LedgerError::Io {
                operation: "write",
                path: head_file.path().to_owned(),
                source,
            })
    }

    /// fdatasyncs the head file.
    pub(super) fn sync_head_file(&self) -> Result<(), LedgerError> {
        let mut head_file = self
            .head_file
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        head_file.sync().map_err(|source| LedgerError::Io {
            operation: "fsync",
            path: head_file.path().to_owned(),
            source,
        })
    }

    pub(super) fn halt(&self, reason: String) {
        let _ = self.halted.set(reason);
    }

    /// The error an append gets when the writer is gone.
    pub(super) fn stopped(&self) -> LedgerError {
        match self.halted.get() {
            Some(reason) => LedgerError::Halted(reason.clone()),
            None => LedgerError::Stopped,
        }
    }

    pub(super) fn stats(&self) -> LedgerStats {
        LedgerStats {
            barriers: self.counters.barriers.load(Ordering::Relaxed),
            appended: self.counters.appended.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
            halted: self.halted.get().cloned(),
        }
    }

    pub(super) fn record_tree(&self, name: &str) -> Result<sled::Tree, LedgerError> {
        self.db
            .open_tree(format!("{RECORDS_PREFIX}{name}"))
            .map_err(storage("open record tree"))
    }

    fn damaged(&self, detail: String) -> LedgerError {
        LedgerError::Damaged {
            path: self.path.clone(),
            detail,
        }
    }

    /// Entries `from..` (at most `limit`, capped at [`MAX_RANGE`]) below `head.size`.
    pub(super) fn range(
        &self,
        head: &ChainHead,
        from: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, LedgerError> {
        let end = from
            .saturating_add(u64::from(limit.min(MAX_RANGE)))
            .min(head.size);
        if from >= end {
            return Ok(Vec::new());
        }
        let mut stored = Vec::new();
        let mut expected = from;
        for item in self.entries.range(seq_key(from)..seq_key(end)) {
            let (key, raw) = item.map_err(storage("read entries"))?;
            if key.as_ref() != seq_key(expected) {
                return Err(self.damaged(format!(
                    "entry {expected} is missing (next stored key: {})",
                    describe_key(&key)
                )));
            }
            stored.push(StoredEntry {
                seq: expected,
                raw: raw.to_vec(),
            });
            expected += 1;
        }
        if expected != end {
            return Err(self.damaged(format!("entry {expected} is missing")));
        }
        Ok(stored)
    }

    /// Appends the leaf hashes of entries that just became durable. The writer calls it after
    /// the barrier and before publishing the head that includes them.
    pub(super) fn extend_tree(&self, leaf_hashes: impl IntoIterator<Item = Hash32>) {
        // A poisoned lock means a reader panicked while holding it; the tree itself is only ever
        // changed here, one whole push at a time, so it is still sound.
        let mut tree = self.tree.write().unwrap_or_else(PoisonError::into_inner);
        for hash in leaf_hashes {
            tree.push(hash);
        }
    }

    fn tree(&self) -> RwLockReadGuard<'_, MerkleTree> {
        self.tree.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The root of the first `size` entries, `size <= head.size`.
    pub(super) fn tree_root(&self, head: &ChainHead, size: u64) -> Result<Hash32, LedgerError> {
        check_size(head, size)?;
        Ok(self.tree().root_at(size)?)
    }

    /// The inclusion proof of entry `index` in the tree of the first `size` entries.
    pub(super) fn inclusion_proof(
        &self,
        head: &ChainHead,
        index: u64,
        size: u64,
    ) -> Result<InclusionProof, LedgerError> {
        check_size(head, size)?;
        Ok(InclusionProof::from_tree(&self.tree(), index, size)?)
    }

    /// The consistency proof from the first `size1` entries to the first `size2`.
    pub(super) fn consistency_proof(
        &self,
        head: &ChainHead,
        size1: u64,
        size2: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        check_size(head, size2)?;
        Ok(ConsistencyProof::from_tree(&self.tree(), size1, size2)?)
    }

    /// The root at `size1` and the consistency proof from it to the root at `size2`. From the
    /// empty tree it is the empty root and an empty proof (any tree extends the empty tree).
    pub(super) fn prefix_proof(
        &self,
        head: &ChainHead,
        size1: u64,
        size2: u64,
    ) -> Result<PrefixProof, LedgerError> {
        check_size(head, size2)?;
        if size1 > size2 {
            return Err(ProveError::SizeOrder { size1, size2 }.into());
        }
        if size1 == 0 {
            return Ok(PrefixProof {
                prefix_root: EMPTY_ROOT,
                proof: Vec::new(),
            });
        }
        let tree = self.tree();
        Ok(PrefixProof {
            prefix_root: tree.root_at(size1)?,
            proof: tree.consistency_proof(size1, size2)?,
        })
    }

    /// The stored bytes of entry `index`, `None` at or past the head.
    pub(super) fn raw_entry(
        &self,
        head: &ChainHead,
        index: u64,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        if index >= head.size {
            return Ok(None);
        }
        match self
            .entries
            .get(seq_key(index))
            .map_err(storage("read entries"))?
        {
            Some(raw) => Ok(Some(raw.to_vec())),
            None => Err(self.damaged(format!("entry {index} is missing"))),
        }
    }

    /// Verifies entries `0..head.size` one at a time (constant memory) with the protocol's
    /// [`ChainVerifier`], then checks that the chain ends at `head`.
    pub(super) fn verify(&self, head: &ChainHead) -> VerifyReport {
        let mut verifier = ChainVerifier::new(self.owner);
        let fail = |verifier: &ChainVerifier, index: u64, message: String| {
            let verified = verifier.head();
            VerifyReport {
                ok: false,
                entries: verified.size,
                head: verified.head.to_hex(),
                error: Some(VerifyFailure { index, message }),
            }
        };
        // Signatures are checked in batches with verify_strict's verdict (same first bad entry,
        // same error), ~1.6× faster; without OS randomness for the batch's secret seed, one by
        // one.
        let mut batch = Keypair::generate()
            .ok()
            .map(|key| SignatureBatch::new(key.secret_bytes()));
        let mut group: Vec<sled::IVec> = Vec::with_capacity(VERIFY_BATCH_ENTRIES);
        let mut check = |verifier: &mut ChainVerifier, group: &mut Vec<sled::IVec>| {
            let raws: Vec<&[u8]> = group.iter().map(|raw| raw.as_ref()).collect();
            let result = match batch.as_mut() {
                Some(batch) => verifier.push_batch(&raws, batch),
                None => raws.iter().try_for_each(|raw| verifier.push(raw).map(drop)),
            };
            group.clear();
            result
        };
        for (expected, item) in (0u64..).zip(self.entries.range(..seq_key(head.size))) {
            let (key, raw) = match item {
                Ok(item) => item,
                Err(error) => {
                    if let Err(error) = check(&mut verifier, &mut group) {
                        return fail(&verifier, error.index, error.error.to_string());
                    }
                    return fail(&verifier, expected, format!("cannot be read: {error}"));
                }
            };
            if key.as_ref() != seq_key(expected) {
                if let Err(error) = check(&mut verifier, &mut group) {
                    return fail(&verifier, error.index, error.error.to_string());
                }
                return fail(
                    &verifier,
                    expected,
                    format!("missing (next stored key: {})", describe_key(&key)),
                );
            }
            group.push(raw);
            if group.len() == VERIFY_BATCH_ENTRIES
                && let Err(error) = check(&mut verifier, &mut group)
            {
                return fail(&verifier, error.index, error.error.to_string());
            }
        }
        if let Err(error) = check(&mut verifier, &mut group) {
            return fail(&verifier, error.index, error.error.to_string());
        }
        let verified = verifier.head();
        if verified.size < head.size {
            return fail(&verifier, verified.size, "missing".to_owned());
        }
        if verified != *head {
            // Every entry verified, but the last one is not the one this node acknowledged.
            return fail(
                &verifier,
                head.size.saturating_sub(1),
                format!(
                    "chain ends at {} but the acknowledged head is {}",
                    verified.head, head.head
                ),
            );
        }
        VerifyReport {
            ok: true,
            entries: verified.size,
            head: verified.head.to_hex(),
            error: None,
        }
    }

    /// Net credits per counterparty from the settlements among entries `0..head.size`.
    pub(super) fn balances(&self, head: &ChainHead) -> Result<Vec<Balance>, LedgerError> {
        let mut totals: BTreeMap<NodeId, (i128, u64)> = BTreeMap::new();
        // A contract settled twice (which the market must never do) is counted once.
        let mut settled: BTreeSet<ContractId> = BTreeSet::new();
        for item in self.entries.range(..seq_key(head.size)) {
            let (key, raw) = item.map_err(storage("read entries"))?;
            let entry = LedgerEntry::decode(&raw).map_err(|error| {
                self.damaged(format!(
                    "entry {} cannot be decoded: {error}",
                    describe_key(&key)
                ))
            })?;
            let EntryBody::Settlement(settlement) = entry.body else {
                continue;
            };
            // Verified before it was stored; `verify` re-checks signatures on demand.
            let settlement = settlement
                .decode_unverified()
                .map_err(|error| self.damaged(format!("entry {}: {error}", describe_key(&key))))?;
            if settlement.provider == settlement.requester
                || !settled.insert(settlement.contract_id)
            {
                continue;
            }
            let cost = i128::from(settlement.cost.micro());
            let (counterparty, amount) = if settlement.provider == self.owner {
                (settlement.requester, cost)
            } else if settlement.requester == self.owner {
                (settlement.provider, -cost)
            } else {
                // Cannot be stored (the owner must be a party); skip rather than misattribute.
                continue;
            };
            let total = totals.entry(counterparty).or_default();
            total.0 += amount;
            total.1 += 1;
        }
        Ok(totals
            .into_iter()
            .map(|(node, (net_micro, settlements))| Balance {
                node_id: node.to_string(),
                net_micro,
                settlements,
            })
            .collect())
    }
}

/// Refuses a tree size beyond the durable head: nothing past it may be proven yet.
fn check_size(head: &ChainHead, size: u64) -> Result<(), LedgerError> {
    if size > head.size {
        return Err(ProveError::SizeBeyondTree {
            size,
            len: head.size,
        }
        .into());
    }
    Ok(())
}

fn sync_failed(operation: &'static str, error: SyncError) -> LedgerError {
    LedgerError::Io {
        operation,
        path: error.path,
        source: error.source,
    }
}

/// How long opening waits for sled's lock to clear.
///
/// sled 0.34 releases its lock lazily: its I/O threads can hold the log file for a moment after
/// the last `Db` is dropped (sled issues #1234, #1289), so reopening right after a clean stop in
/// the same process (a restarted node, tests) would otherwise fail. A node that really is running
/// still gets [`LedgerError::InUse`], just this much later.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Opens sled, waiting up to [`LOCK_WAIT`] for another holder of the lock to let go.
pub(super) fn open_database(path: &Path) -> Result<sled::Db, LedgerError> {
    let started = Instant::now();
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(error) => match open_error(path, error) {
                LedgerError::InUse { .. } if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                error => return Err(error),
            },
        }
    }
}

/// Turns sled's open error into [`LedgerError::InUse`] when another process holds the lock.
fn open_error(path: &Path, error: sled::Error) -> LedgerError {
    if let sled::Error::Io(_) = error {
        // sled reports a held lock as a generic I/O error; probe the lock ourselves rather than
        // parse its message. The probe's lock (if it gets one) is released when `file` drops.
        if let Ok(file) = File::open(path.join(LOG_FILE))
            && matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
        {
            return LedgerError::InUse {
                path: path.to_owned(),
            };
        }
    }
    match error {
        corruption @ sled::Error::Corruption { .. } => LedgerError::Damaged {
            path: path.to_owned(),
            detail: format!("sled: {corruption}"),
        },
        error => LedgerError::Storage {
            operation: "open",
            message: format!("{}: {error}", path.display()),
        },
    }
}

/// The head of the stored chain and its Merkle tree: the keys must be exactly `0..n` and the last
/// entry must say it is entry `n - 1`. Reads and hashes every entry once (O(n); the tree takes
/// about two hashes per entry) but decodes only the last one.
fn recover_head(entries: &sled::Tree, path: &Path) -> Result<(ChainHead, MerkleTree), LedgerError> {
    let damaged = |detail| LedgerError::Damaged {
        path: path.to_owned(),
        detail,
    };
    let mut count: u64 = 0;
    let mut last = None;
    let mut tree = MerkleTree::new();
    for item in entries.iter() {
        let (key, raw) = item.map_err(storage("read entries"))?;
        if key.as_ref() != seq_key(count) {
            return Err(damaged(format!(
                "entry {count} is missing (next stored key: {}); {count} entries before it",
                describe_key(&key)
            )));
        }
        tree.push_entry(&raw);
        last = Some(raw);
        count += 1;
    }
    let Some(raw) = last else {
        return Ok((ChainHead::EMPTY, tree));
    };
    let index = count - 1;
    let entry = LedgerEntry::decode(&raw)
        .map_err(|error| damaged(format!("last entry {index} cannot be decoded: {error}")))?;
    if entry.seq != index {
        return Err(damaged(format!(
            "{count} entries are stored but the last one says it is entry {}",
            entry.seq
        )));
    }
    let head = ChainHead {
        size: count,
        head: entry_hash(&raw),
        timestamp_ms: entry.timestamp_ms,
    };
    Ok((head, tree))
}

/// Refuses a ledger that lost or changed an entry this node had recorded as durable.
fn check_recorded_head(
    recorded: Recorded,
    entries: &sled::Tree,
    head: &ChainHead,
    path: &Path,
) -> Result<(), LedgerError> {
    let damaged = |detail| LedgerError::Damaged {
        path: path.to_owned(),
        detail,
    };
    let mark = match recorded {
        Recorded::Nothing => return Ok(()),
        Recorded::Unreadable => {
            return Err(damaged(format!(
                "{HEAD_FILE}, the record of the last durable head, is unreadable"
            )));
        }
        Recorded::Head(mark) => mark,
    };
    if mark.size > head.size {
        return Err(damaged(format!(
            "{} entries were acknowledged as durable but only {} are stored: entries {}..{} \
             were lost (sled stops recovering its log at the first corrupt record) or removed",
            mark.size, head.size, head.size, mark.size
        )));
    }
    if mark.size == 0 {
        return Ok(());
    }
    let index = mark.size - 1;
    let raw = entries
        .get(seq_key(index))
        .map_err(storage("read entries"))?
        .ok_or_else(|| damaged(format!("entry {index} is missing")))?;
    if entry_hash(&raw) != mark.head {
        return Err(damaged(format!(
            "entry {index} is not the entry that was acknowledged (its hash changed)"
        )));
    }
    if head.size > mark.size {
        // Normal after a crash: a group reached the disk but the record of it did not. Those
        // entries are complete and valid (the structure was checked above), so they are kept;
        // whether their appends had returned is unknown.
        warn!(
            recorded = mark.size,
            stored = head.size,
            "ledger holds entries past its last recorded durable head (the node did not stop cleanly)"
        );
    }
    Ok(())
}
