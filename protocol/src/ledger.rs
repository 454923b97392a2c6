//! The ledger entry format, entry hashing and chain verification.
//!
//! A node's ledger is an append-only sequence of entries. Entry `n` holds its sequence number, a
//! timestamp, the hash of entry `n - 1` ([`Hash32::ZERO`] for the first) and a body holding raw
//! signed documents. An entry is stored as its framed encoding (version byte + bincode), and its
//! hash is the RFC 6962 leaf hash of those exact bytes:
//!
//! ```text
//! entry_hash = SHA-256(0x00 || raw entry bytes)
//! ```
//!
//! The `0x00` prefix separates leaves from Merkle interior nodes (`0x01`), and from suanli's
//! tagged hashes, whose input starts with `"suanli/v1/"`. It does **not** separate entry hashes
//! from plain content hashes (module, stdin, output), which are SHA-256 of arbitrary bytes: the
//! content hash of the byte string `0x00 || raw entry` *is* that entry's hash. What does hold: a
//! raw entry starts with the version byte `0x01`, so an entry hash's input starts `00 01`, whereas
//! a wasm module starts `00 61 73 6d` (`\0asm`); an entry hash is never the content hash of a valid
//! module (short of a SHA-256 collision). Stdin and output have no such structure. Each hash field
//! says which kind it holds and nothing compares hashes across kinds, so the overlap is harmless;
//! but the prefix alone does not tell an entry hash from a content hash. The same hash links the
//! chain and will be the leaf of the ledger's Merkle tree.
//!
//! [`ChainVerifier`] checks a ledger entry by entry (so a ledger of any length is verified in
//! constant memory) and reports the first bad index: modified, reordered, inserted or removed
//! entries break the sequence numbers or the hash links; forged documents fail their signatures.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, DecodeError, EncodeError};
use crate::hash::Hash32;
use crate::identity::NodeId;
use crate::negotiation::{Contract, Evidence, FailureRecord, Receipt, Settlement};
use crate::signed::{CoSigned, SignatureBatch, Signed, VerifyError};
use crate::tokens::UsageReceipt;

/// Cap on one encoded entry (evidence is the largest body).
pub const MAX_ENTRY_BYTES: usize = 96 * 1024;

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LedgerEntry {
    /// 0 for the first entry, then +1 each.
    pub seq: u64,
    /// Unix ms at append; never less than the previous entry's.
    pub timestamp_ms: u64,
    /// [`entry_hash`] of the previous entry's raw bytes.
    pub prev_hash: Hash32,
    pub body: EntryBody,
}

/// What an entry records: a raw signed document, exactly as it was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum EntryBody {
    /// A contract signed by both parties.
    Contract(CoSigned<Contract>),
    /// A provider's receipt.
    Receipt(Signed<Receipt>),
    /// A settlement signed by both parties.
    Settlement(CoSigned<Settlement>),
    /// The ledger owner's statement that a contract failed.
    Failure(Signed<FailureRecord>),
    /// The ledger owner's record of a peer's misbehaviour.
    Misbehaviour(Signed<Evidence>),
    /// One request's usage under a standing contract, signed by both parties.
    Usage(CoSigned<UsageReceipt>),
}

impl EntryBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EntryBody::Contract(_) => "contract",
            EntryBody::Receipt(_) => "receipt",
            EntryBody::Settlement(_) => "settlement",
            EntryBody::Failure(_) => "failure",
            EntryBody::Misbehaviour(_) => "misbehaviour",
            EntryBody::Usage(_) => "usage",
        }
    }

    /// Verifies every signature in the body and that `owner` is entitled to record it: a party to
    /// the contract, receipt or settlement, or the signer of its own statements.
    pub fn verify(&self, owner: NodeId) -> Result<(), EntryError> {
        check_owner(self.verify_parties()?, owner)
    }

    /// Verifies every signature in the body, as [`verify`](Self::verify) does, and returns it as
    /// a [`CheckedBody`], whose owner is checked by [`CheckedBody::check_owner`].
    pub fn check(self) -> Result<CheckedBody, EntryError> {
        let parties = self.verify_parties()?;
        Ok(CheckedBody {
            body: self,
            parties,
        })
    }

    /// Verifies every signature; returns who may record the body (twice the signer for a
    /// node's own statements).
    fn verify_parties(&self) -> Result<[NodeId; 2], EntryError> {
        Ok(match self {
            EntryBody::Contract(contract) => {
                let contract = contract.verify()?;
                [contract.requester, contract.provider]
            }
            EntryBody::Receipt(receipt) => {
                let receipt = receipt.verify()?;
                [receipt.requester, receipt.provider]
            }
            EntryBody::Settlement(settlement) => {
                let settlement = settlement.verify()?;
                [settlement.requester, settlement.provider]
            }
            EntryBody::Failure(failure) => [failure.verify()?.recorder; 2],
            EntryBody::Misbehaviour(evidence) => [evidence.verify()?.reporter; 2],
            EntryBody::Usage(usage) => {
                let usage = usage.verify()?;
                [usage.requester, usage.provider]
            }
        })
    }
}

fn check_owner(parties: [NodeId; 2], owner: NodeId) -> Result<(), EntryError> {
    if parties.contains(&owner) {
        Ok(())
    } else {
        Err(EntryError::NotAParty)
    }
}

/// An entry body every signature of which this node has verified or made itself, with the
/// parties entitled to record it: what a ledger appends without verifying it again. Only
/// [`EntryBody::check`] (which verifies) and the contract engine (for documents it has just
/// verified or signed, see [`crate::engine::Append`]) build one; it has no `Deserialize`, so
/// bytes from anywhere else cannot become one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBody {
    body: EntryBody,
    parties: [NodeId; 2],
}

impl CheckedBody {
    /// For the engine: `body`, every signature of which the caller has just verified or made,
    /// and who may record it (the document's parties; its signer twice for a node's own
    /// statement). Crate-private: the claim is only as good as the code making it.
    pub(crate) fn vouched(body: EntryBody, parties: [NodeId; 2]) -> CheckedBody {
        CheckedBody { body, parties }
    }

    /// The cheap half of [`EntryBody::verify`]: `owner` is entitled to record this body.
    pub fn check_owner(&self, owner: NodeId) -> Result<(), EntryError> {
        check_owner(self.parties, owner)
    }

    pub fn body(&self) -> &EntryBody {
        &self.body
    }

    pub fn into_body(self) -> EntryBody {
        self.body
    }
}

impl EntryBody {
    /// [`verify`](Self::verify) with every signature deferred to `batch`: the body must not be
    /// trusted before the batch passes ([`SignatureBatch::verify`]).
    pub fn verify_deferred(
        &self,
        owner: NodeId,
        batch: &mut SignatureBatch,
    ) -> Result<(), EntryError> {
        let parties = match self {
            EntryBody::Contract(contract) => {
                let contract = contract.verify_deferred(batch)?;
                [contract.requester, contract.provider]
            }
            EntryBody::Receipt(receipt) => {
                let receipt = receipt.verify_deferred(batch)?;
                [receipt.requester, receipt.provider]
            }
            EntryBody::Settlement(settlement) => {
                let settlement = settlement.verify_deferred(batch)?;
                [settlement.requester, settlement.provider]
            }
            EntryBody::Failure(failure) => [failure.verify_deferred(batch)?.recorder; 2],
            EntryBody::Misbehaviour(evidence) => [evidence.verify_deferred(batch)?.reporter; 2],
            EntryBody::Usage(usage) => {
                let usage = usage.verify_deferred(batch)?;
                [usage.requester, usage.provider]
            }
        };
        check_owner(parties, owner)
    }
}

/// RFC 6962 leaf hash of a raw entry: `SHA-256(0x00 || bytes)`.
pub fn entry_hash(raw: &[u8]) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(raw);
    Hash32(hasher.finalize().into())
}

impl LedgerEntry {
    /// The raw bytes stored and hashed for this entry.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let bytes = codec::encode_framed(self)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EncodeError::too_large(bytes.len(), MAX_ENTRY_BYTES));
        }
        Ok(bytes)
    }

    pub fn decode(raw: &[u8]) -> Result<LedgerEntry, DecodeError> {
        codec::decode_framed(raw, MAX_ENTRY_BYTES)
    }
}

/// What is wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    #[error("sequence number {found}, expected {expected}")]
    Sequence { expected: u64, found: u64 },
    #[error("previous-hash link broken (entry before it was modified, removed or reordered)")]
    BrokenLink,
    #[error("timestamp {found} is before the previous entry's {previous}")]
    TimeWentBack { previous: u64, found: u64 },
    #[error("document: {0}")]
    Document(#[from] VerifyError),
    #[error("the ledger owner is not a party to this document")]
    NotAParty,
}

/// The first bad entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {index}: {error}")]
pub struct ChainError {
    pub index: u64,
    pub error: EntryError,
}

/// The state after the last verified entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Number of entries verified from the start (the next expected sequence number).
    pub size: u64,
    /// Hash of the last entry ([`Hash32::ZERO`] for an empty ledger).
    pub head: Hash32,
    /// Timestamp of the last entry.
    pub timestamp_ms: u64,
}

impl ChainHead {
    pub const EMPTY: ChainHead = ChainHead {
        size: 0,
        head: Hash32::ZERO,
        timestamp_ms: 0,
    };
}

/// Verifies a ledger one raw entry at a time.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    owner: NodeId,
    state: ChainHead,
}

impl ChainVerifier {
    /// Verifies a ledger of `owner` from its first entry.
    pub fn new(owner: NodeId) -> ChainVerifier {
        ChainVerifier::resume(owner, ChainHead::EMPTY)
    }

    /// Continues after a head verified earlier.
    pub fn resume(owner: NodeId, state: ChainHead) -> ChainVerifier {
        ChainVerifier { owner, state }
    }

    /// Checks the next raw entry: its encoding, sequence number, link, timestamp and documents.
    pub fn push(&mut self, raw: &[u8]) -> Result<LedgerEntry, ChainError> {
        let index = self.state.size;
        let fail = |error| ChainError { index, error };
        let entry = LedgerEntry::decode(raw).map_err(|e| fail(e.into()))?;
        if entry.seq != index {
            return Err(fail(EntryError::Sequence {
                expected: index,
                found: entry.seq,
            }));
        }
        if entry.prev_hash != self.state.head {
            return Err(fail(EntryError::BrokenLink));
        }
        if entry.timestamp_ms < self.state.timestamp_ms {
            return Err(fail(EntryError::TimeWentBack {
                previous: self.state.timestamp_ms,
                found: entry.timestamp_ms,
            }));
        }
        entry.body.verify(self.owner).map_err(fail)?;
        self.state = ChainHead {
            size: index + 1,
            head: entry_hash(raw),
            timestamp_ms: entry.timestamp_ms,
        };
        Ok(entry)
    }

    pub fn head(&self) -> ChainHead {
        self.state
    }

    /// Checks the next raw entries like [`push`](Self::push) one by one, but with their
    /// signatures checked together in `batch` (see [`SignatureBatch`]): same verdict, same
    /// first bad index and error. Entries before a bad one are accepted (the head moves past
    /// them). `batch` should be empty; it is left empty.
    pub fn push_batch(
        &mut self,
        raws: &[&[u8]],
        batch: &mut SignatureBatch,
    ) -> Result<(), ChainError> {
        batch.clear();
        // The head after each entry, and which entry each collected signature belongs to.
        let mut heads = Vec::with_capacity(raws.len());
        let mut entry_of_signature = Vec::new();
        let mut state = self.state;
        let mut checked = raws.len();
        for (offset, raw) in raws.iter().enumerate() {
            match Self::check_deferred(self.owner, state, raw, batch) {
                Ok(next) => {
                    state = next;
                    heads.push(next);
                    entry_of_signature.resize(batch.len(), offset);
                }
                Err(()) => {
                    checked = offset;
                    break;
                }
            }
        }
        // Signatures of an entry that failed its other checks are not needed.
        let signatures = entry_of_signature.len();
        let good = match batch.verify_first(signatures) {
            Ok(()) => checked,
            Err(index) => entry_of_signature.get(index).copied().unwrap_or(0),
        };
        batch.clear();
        if let Some(head) = good.checked_sub(1).and_then(|last| heads.get(last)) {
            self.state = *head;
        }
        // The first bad entry (if any) and everything after it: one by one, for the exact error.
        for raw in raws.iter().skip(good) {
            self.push(raw)?;
        }
        Ok(())
    }

    /// Every check of [`push`](Self::push) from `state`, signatures deferred to `batch`.
    fn check_deferred(
        owner: NodeId,
        state: ChainHead,
        raw: &[u8],
        batch: &mut SignatureBatch,
    ) -> Result<ChainHead, ()> {
        let entry = LedgerEntry::decode(raw).map_err(|_| ())?;
        if entry.seq != state.size
            || entry.prev_hash != state.head
            || entry.timestamp_ms < state.timestamp_ms
        {
            return Err(());
        }
        entry.body.verify_deferred(owner, batch).map_err(|_| ())?;
        Ok(ChainHead {
            size: state.size + 1,
            head: entry_hash(raw),
            timestamp_ms: entry.timestamp_ms,
        })
    }
}

/// Verifies a whole ledger of `owner` and returns its head, or the first bad entry.
pub fn verify_chain<'a>(
    owner: NodeId,
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<ChainHead, ChainError> {
    let mut verifier = ChainVerifier::new(owner);
    for raw in entries {
        verifier.push(raw)?;
    }
    Ok(verifier.head())
}

/// Most entries per batch that [`verify_chain_batched`] preallocates for; larger batches grow.
const MAX_BATCH_PREALLOCATION: usize = 4096;

/// [`verify_chain`] with signatures checked in batches of the signatures of `batch_entries`
/// entries ([`ChainVerifier::push_batch`]). `seed` should be fresh and secret (the OS random
/// source): see [`SignatureBatch::new`]. Same result as [`verify_chain`]. Batches of fewer than
/// [`MIN_BATCH`](crate::signed::MIN_BATCH) signatures are checked one by one (faster).
pub fn verify_chain_batched<'a>(
    owner: NodeId,
    entries: impl IntoIterator<Item = &'a [u8]>,
    batch_entries: usize,
    seed: [u8; 32],
) -> Result<ChainHead, ChainError> {
    verify_chain_in_batches(
        owner,
        entries,
        batch_entries,
        &mut SignatureBatch::new(seed),
    )
}

/// [`verify_chain_batched`] with a given (empty) batch.
fn verify_chain_in_batches<'a>(
    owner: NodeId,
    entries: impl IntoIterator<Item = &'a [u8]>,
    batch_entries: usize,
    batch: &mut SignatureBatch,
) -> Result<ChainHead, ChainError> {
    let batch_entries = batch_entries.max(1);
    let mut verifier = ChainVerifier::new(owner);
    let mut group = Vec::with_capacity(batch_entries.min(MAX_BATCH_PREALLOCATION));
    for raw in entries {
        group.push(raw);
        if group.len() >= batch_entries {
            verifier.push_batch(&group, batch)?;
            group.clear();
        }
    }
    verifier.push_batch(&group, batch)?;
    Ok(verifier.head())
}

#[cfg(test)]
mod tests;
