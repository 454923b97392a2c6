//! Recovering the head from the entries tree, and the readers that every handle (and the offline
//! helpers) share.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use suanli_protocol::checkpoint::PrefixProof;
use suanli_protocol::ledger::{ChainHead, ChainVerifier, EntryBody, LedgerEntry, entry_hash};
use suanli_protocol::merkle::{
    ConsistencyProof, EMPTY_ROOT, InclusionProof, MerkleTree, ProveError,
};
use suanli_protocol::negotiation::ContractId;
use suanli_protocol::signed::SignatureBatch;
use suanli_protocol::tokens::UsageReceipt;
use suanli_protocol::{CoSigned, ContractDocs, Hash32, JobId, Keypair, NodeId};
use tracing::{info, warn};

/// Most entries whose signatures [`Shared::verify`] checks in one batch (~1,700 signatures):
/// the batch's fixed cost (64 torsion checks, each a scalar multiplication) is spread over more
/// signatures, and the multi-scalar multiplication gets cheaper per point as it grows. 128
/// entries verified about 16k entries/s, 1,024 about 20k on the same machine.
const VERIFY_BATCH_ENTRIES: usize = 1024;
/// Most bytes of entries held for one batch: ledger entries are usually under 1 KiB, but one may
/// hold up to 128 KiB of output, and the group and the batch's messages are held in memory.
const VERIFY_BATCH_BYTES: usize = 4 << 20;

use super::head_file::{HEAD_FILE, HeadFile, Recorded};
use super::index::{Index, docs_at};
use super::{
    Balance, LedgerError, LedgerStats, MAX_RANGE, StoredEntry, VerifyFailure, VerifyReport,
};
use crate::storage::{RecordTree, Storage, Value};

/// Tree of ledger entries (sled tree `ledger/entries`): key = seq as 8 bytes big-endian, value =
/// the framed entry bytes.
pub(super) const ENTRIES_TREE: &str = "entries";
/// Tree of the ledger's index (`index.rs`).
const INDEX_TREE: &str = "index";

pub(super) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn describe_key(key: &[u8]) -> String {
    match <[u8; 8]>::try_from(key) {
        Ok(bytes) => u64::from_be_bytes(bytes).to_string(),
        Err(_) => format!("0x{}", hex::encode(key)),
    }
}

/// Counters of the writer, readable by anyone.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) barriers: AtomicU64,
    pub(super) appended: AtomicU64,
    pub(super) largest_batch: AtomicU64,
}

/// What every handle and the writer share: the storage and the ledger's trees in it.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) owner: NodeId,
    pub(super) storage: Storage,
    pub(super) entries: RecordTree,
    /// By contract, job and peer; updated by the writer in the same commit as the entries.
    pub(super) index: Index,
    /// The Merkle tree of every durable entry (and, for a moment, of a group between its
    /// barrier and the head moving). Extended only by the writer, *before* it publishes a new
    /// head, so every size a reader can see is in it.
    tree: RwLock<MerkleTree>,
    head_file: Mutex<HeadFile>,
    pub(super) counters: Counters,
    /// How long each append took, from its caller's request to its durable answer, seconds.
    pub(super) append_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Set once when the writer stops because storage failed; every later append reports it.
    halted: OnceLock<String>,
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
    /// Reads the ledger's trees in `storage` and checks the stored chain's structure.
    pub(super) fn open(
        storage: &Storage,
        owner: NodeId,
    ) -> Result<(Shared, ChainHead), LedgerError> {
        let path = storage.path();
        let entries = storage.ledger_tree(ENTRIES_TREE);
        let (head_file, recorded) = HeadFile::open(path).map_err(|source| LedgerError::Io {
            operation: "open",
            path: path.join(HEAD_FILE),
            source,
        })?;
        let (head, tree) = recover_head(&entries, path)?;
        check_recorded_head(recorded, &entries, &head, path)?;
        let index = Index::new(storage.ledger_tree(INDEX_TREE), owner);
        catch_up_index(&index, &entries, &head)?;
        info!(path = %path.display(), entries = head.size, head = %head.head, "ledger opened");
        let shared = Shared {
            path: path.to_owned(),
            owner,
            storage: storage.clone(),
            entries,
            index,
            tree: RwLock::new(tree),
            head_file: Mutex::new(head_file),
            counters: Counters::default(),
            append_seconds: crate::metrics::duration_histogram(),
            halted: OnceLock::new(),
        };
        // Whatever sled recovered is made durable and becomes the recorded head (a crash can
        // only have lost a tail that was never acknowledged), so from now on losing any of these
        // entries is detected.
        shared.barrier()?;
        shared.record_head(&head, true)?;
        Ok((shared, head))
    }

    pub(super) fn index_tree(&self) -> &RecordTree {
        self.index.tree()
    }

    /// The storage's durability barrier (sled flush + fsyncs), counted as the writer's.
    /// Blocking; call from a blocking thread.
    pub(super) fn barrier(&self) -> Result<(), LedgerError> {
        self.storage.barrier()?;
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

    /// Stops appends for good, and tells the storage, so the node stops taking work.
    pub(super) fn halt(&self, reason: String) {
        if self.halted.set(reason.clone()).is_ok() {
            self.storage
                .fail(format!("the ledger writer halted: {reason}"));
        }
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
        for item in self.entries.scan(seq_key(from)..seq_key(end)) {
            let (key, raw) = item?;
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
        match self.entries.get(&seq_key(index))? {
            Some(raw) => Ok(Some(raw)),
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
        let mut group: Vec<Value> = Vec::with_capacity(VERIFY_BATCH_ENTRIES);
        let mut group_bytes = 0usize;
        let mut check = |verifier: &mut ChainVerifier, group: &mut Vec<Value>| {
            let raws: Vec<&[u8]> = group.iter().map(|raw| raw.as_ref()).collect();
            let result = match batch.as_mut() {
                Some(batch) => verifier.push_batch(&raws, batch),
                None => raws.iter().try_for_each(|raw| verifier.push(raw).map(drop)),
            };
            group.clear();
            result
        };
        for (expected, item) in (0u64..).zip(self.entries.scan(..seq_key(head.size))) {
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
            group_bytes += raw.len();
            group.push(raw);
            if group.len() == VERIFY_BATCH_ENTRIES || group_bytes >= VERIFY_BATCH_BYTES {
                group_bytes = 0;
                if let Err(error) = check(&mut verifier, &mut group) {
                    return fail(&verifier, error.index, error.error.to_string());
                }
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
    /// Net credits with every peer, from the index (each settled contract counted once).
    pub(super) fn balances(&self) -> Result<Vec<Balance>, LedgerError> {
        self.index.balances()
    }

    /// What `peer` owes this node by the settlements in the ledger (negative: what this node
    /// owes it).
    pub(super) fn balance_with(&self, peer: NodeId) -> Result<i128, LedgerError> {
        Ok(self.index.balance(peer)?.0)
    }

    /// The documents this ledger holds of contract `id`, up to `head`.
    pub(super) fn contract_docs(
        &self,
        head: &ChainHead,
        id: &ContractId,
    ) -> Result<Option<ContractDocs>, LedgerError> {
        let Some(seqs) = self.index.seqs(id)? else {
            return Ok(None);
        };
        docs_at(&seqs, |seq| self.raw_entry(head, seq))
    }

    /// The usage receipts this ledger holds of contract `id` (a standing contract), in request
    /// order, up to `head`.
    pub(super) fn usage_receipts(
        &self,
        head: &ChainHead,
        id: &ContractId,
    ) -> Result<Vec<CoSigned<UsageReceipt>>, LedgerError> {
        let mut receipts = Vec::new();
        for seq in self.index.usage_seqs(id)? {
            let Some(raw) = self.raw_entry(head, seq)? else {
                continue;
            };
            let entry = LedgerEntry::decode(&raw).map_err(|error| LedgerError::Damaged {
                path: std::path::PathBuf::new(),
                detail: format!("entry {seq} cannot be decoded: {error}"),
            })?;
            if let EntryBody::Usage(usage) = entry.body {
                receipts.push(usage);
            }
        }
        Ok(receipts)
    }

    pub(super) fn open_contracts(&self) -> Result<Vec<ContractId>, LedgerError> {
        self.index.open_contracts()
    }

    pub(super) fn contracts_of_job(&self, job: JobId) -> Result<Vec<ContractId>, LedgerError> {
        self.index.contracts_of_job(job)
    }
}

/// Brings the index up to `head`: indexes the entries after the size it last recorded, or
/// rebuilds it when it claims more than the chain holds (it was written for a chain that is
/// not this one).
fn catch_up_index(
    index: &Index,
    entries: &RecordTree,
    head: &ChainHead,
) -> Result<(), LedgerError> {
    let mut from = index.size()?;
    if from > head.size {
        warn!(
            indexed = from,
            entries = head.size,
            "ledger index ahead of the chain; rebuilding it"
        );
        index.clear()?;
        from = 0;
    }
    if from == head.size {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let items = entries.scan(seq_key(from)..seq_key(head.size)).map(|item| {
        let (key, raw) = item?;
        let seq = <[u8; 8]>::try_from(&key[..])
            .map(u64::from_be_bytes)
            .map_err(|_| LedgerError::Damaged {
                path: PathBuf::new(),
                detail: "an entry key is not a sequence number".into(),
            })?;
        Ok((seq, raw.to_vec()))
    });
    let indexed = index.catch_up(items)?;
    info!(
        from,
        indexed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ledger index caught up"
    );
    Ok(())
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

/// The head of the stored chain and its Merkle tree: the keys must be exactly `0..n` and the last
/// entry must say it is entry `n - 1`. Reads and hashes every entry once (O(n); the tree takes
/// about two hashes per entry) but decodes only the last one.
fn recover_head(entries: &RecordTree, path: &Path) -> Result<(ChainHead, MerkleTree), LedgerError> {
    let damaged = |detail| LedgerError::Damaged {
        path: path.to_owned(),
        detail,
    };
    let mut count: u64 = 0;
    let mut last = None;
    let mut tree = MerkleTree::new();
    for item in entries.scan::<&[u8], _>(..) {
        let (key, raw) = item?;
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
    entries: &RecordTree,
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
        .get_value(&seq_key(index))?
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
