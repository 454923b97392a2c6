//! RFC 6962 Merkle trees over a ledger: roots, inclusion and consistency proofs, and their
//! verification.
//!
//! The leaves of a node's tree are its ledger entries in order, and a leaf's hash is
//! [`entry_hash`] of the raw entry bytes, `SHA-256(0x00 || raw)`: the same hash that links the
//! chain, so one hash per entry serves both. Interior nodes are `SHA-256(0x01 || left || right)`
//! ([`node_hash`]). A tree of `n > 1` leaves splits at the largest power of two below `n`
//! (RFC 6962 §2.1; RFC 9162 §2.1.1), and the root of the empty tree is `SHA-256("")`
//! ([`EMPTY_ROOT`]).
//!
//! What this module owns:
//! - [`MerkleTree`]: the node's in-memory tree. It keeps every leaf hash and the hash of every
//!   complete, aligned `2^k` subtree, so the root of any prefix, an inclusion proof and a
//!   consistency proof each cost `O(log n)` hashes, mostly cache look-ups (about 64 bytes per
//!   leaf).
//! - [`Frontier`]: the root of a growing tree in constant memory (the hashes of the complete
//!   subtrees on its right border), for recomputing a root while streaming entries.
//! - [`verify_inclusion`] and [`verify_consistency`]: the verifiers of RFC 9162 §2.1.3.2 and
//!   §2.1.4.2, with the edge cases of the transparency-dev reference (`transparency-dev/merkle`).
//! - [`InclusionProof`] and [`ConsistencyProof`]: the JSON shape of the transparency-dev test
//!   vectors (base64 hashes), for the HTTP API and offline tools.
//!
//! What it must never do: I/O, hold entry bytes (only their 32-byte hashes), or panic on any
//! input. Every size and index is checked; a request for a tree size the tree does not hold, or a
//! proof that does not fit its sizes, is an error.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hash::Hash32;
use crate::ledger::entry_hash;

/// The root of the empty tree: `SHA-256("")` (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash32 = Hash32([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

/// The most hashes a valid proof can hold: 64 levels of a tree of up to `2^64 - 1` leaves, plus
/// the seed of a consistency proof. Anything longer is refused before it is read.
pub const MAX_PROOF_HASHES: usize = 65;

/// An interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left.0);
    hasher.update(right.0);
    Hash32(hasher.finalize().into())
}

/// The largest power of two strictly below `n`, for `n >= 2`: where RFC 6962 splits a tree.
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n.saturating_sub(1) | 1).leading_zeros())
}

/// Why a root or a proof could not be produced from a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProveError {
    #[error("tree size {size} is beyond the {len} leaves held")]
    SizeBeyondTree { size: u64, len: u64 },
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("size1 {size1} is greater than size2 {size2}")]
    SizeOrder { size1: u64, size2: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    FromEmptyTree,
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyProofError {
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("size1 {size1} is greater than size2 {size2}")]
    SizeOrder { size1: u64, size2: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    FromEmptyTree,
    #[error("the proof has the wrong number of hashes ({len})")]
    WrongLength { len: usize },
    #[error("{field} is {len} bytes, not a 32-byte hash")]
    NotAHash { field: &'static str, len: usize },
    #[error("the proof leads to a different root")]
    RootMismatch,
}

/// A Merkle tree that grows one leaf at a time and proves anything about any of its prefixes.
///
/// `levels[k][i]` is the hash of the complete subtree over leaves `[i * 2^k, (i + 1) * 2^k)`;
/// level 0 holds the leaf hashes and level `k` holds `len >> k` hashes, so the whole cache is
/// under `2 * len` hashes. Every node of the RFC 6962 tree of any size `m <= len` is either one
/// of these complete subtrees or a right-border node folded from at most 64 of them.
#[derive(Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash32>>,
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// An empty tree with room for `leaves` leaves without reallocating (when rebuilding a
    /// ledger of known length: exactly `2 * leaves` hashes instead of up to twice that).
    pub fn with_capacity(leaves: usize) -> MerkleTree {
        let levels = (0..usize::BITS)
            .map(|level| leaves >> level)
            .take_while(|&width| width > 0)
            .map(Vec::with_capacity)
            .collect();
        MerkleTree { levels }
    }

    /// A tree of the given leaf hashes, in order.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash32>) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash ([`entry_hash`] of the raw entry). Amortised one interior hash.
    pub fn push(&mut self, leaf_hash: Hash32) {
        let mut hash = leaf_hash;
        let mut level = 0;
        loop {
            if level == self.levels.len() {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(hash);
            // An even count means the last two hashes now form a complete subtree one level up.
            match row.as_slice() {
                [.., left, right] if row.len().is_multiple_of(2) => hash = node_hash(left, right),
                _ => return,
            }
            level += 1;
        }
    }

    /// Appends a raw ledger entry and returns its leaf hash.
    pub fn push_entry(&mut self, raw: &[u8]) -> Hash32 {
        let hash = entry_hash(raw);
        self.push(hash);
        hash
    }

    /// All leaf hashes, in order.
    pub fn leaf_hashes(&self) -> &[Hash32] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// The hash of leaf `index`, if the tree holds it.
    pub fn leaf_hash(&self, index: u64) -> Option<Hash32> {
        self.cached(0, index)
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash32 {
        self.range_hash(0, self.len()).unwrap_or(EMPTY_ROOT)
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash32, ProveError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(EMPTY_ROOT);
        }
        self.range_hash(0, size).ok_or(ProveError::SizeBeyondTree {
            size,
            len: self.len(),
        })
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves (RFC 6962
    /// §2.1.1 `PATH`), ordered from the leaf's sibling up to the root's child.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash32>, ProveError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProveError::IndexBeyondSize { index, size });
        }
        let mut proof = Vec::with_capacity(64);
        let (mut lo, mut hi) = (0u64, size);
        while hi - lo > 1 {
            let mid = lo + split_point(hi - lo);
            if index < mid {
                proof.push(self.node(mid, hi)?);
                hi = mid;
            } else {
                proof.push(self.node(lo, mid)?);
                lo = mid;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    /// The consistency proof from the tree of the first `size1` leaves to that of the first
    /// `size2` (RFC 6962 §2.1.2 `PROOF`). Empty when the sizes are equal; an error from the empty
    /// tree (any tree extends it, and there is nothing to prove).
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Result<Vec<Hash32>, ProveError> {
        self.check_size(size2)?;
        if size1 > size2 {
            return Err(ProveError::SizeOrder { size1, size2 });
        }
        if size1 == size2 {
            return Ok(Vec::new());
        }
        if size1 == 0 {
            return Err(ProveError::FromEmptyTree);
        }
        let mut proof = Vec::with_capacity(65);
        // SUBPROOF(m, D[lo:hi], complete), unrolled: `m` counts the old leaves inside [lo, hi),
        // and `complete` says whether the verifier already knows the old subtree's hash.
        let (mut lo, mut hi, mut m, mut complete) = (0u64, size2, size1, true);
        loop {
            let n = hi - lo;
            if m == n {
                if !complete {
                    proof.push(self.node(lo, hi)?);
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                proof.push(self.node(lo + k, hi)?);
                hi = lo + k;
            } else {
                proof.push(self.node(lo, lo + k)?);
                lo += k;
                m -= k;
                complete = false;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), ProveError> {
        let len = self.len();
        if size > len {
            return Err(ProveError::SizeBeyondTree { size, len });
        }
        Ok(())
    }

    fn node(&self, lo: u64, hi: u64) -> Result<Hash32, ProveError> {
        self.range_hash(lo, hi).ok_or(ProveError::SizeBeyondTree {
            size: hi,
            len: self.len(),
        })
    }

    fn cached(&self, level: u32, index: u64) -> Option<Hash32> {
        let row = self.levels.get(usize::try_from(level).ok()?)?;
        row.get(usize::try_from(index).ok()?).copied()
    }

    /// The hash of the RFC 6962 node over leaves `[lo, hi)`: its complete `2^k` parts (one per
    /// set bit of `hi - lo`, largest first) from the cache, folded from the right. `None` for an
    /// empty range, a range beyond the tree or one that is not a node of an RFC 6962 tree (a part
    /// not aligned to its size).
    fn range_hash(&self, lo: u64, hi: u64) -> Option<Hash32> {
        let mut remaining = hi.checked_sub(lo)?;
        let mut end = hi;
        let mut folded: Option<Hash32> = None;
        while remaining != 0 {
            let level = remaining.trailing_zeros();
            let width = 1u64 << level;
            let start = end - width;
            if start & (width - 1) != 0 {
                return None;
            }
            let part = self.cached(level, start >> level)?;
            folded = Some(match folded {
                None => part,
                Some(right) => node_hash(&part, &right),
            });
            remaining &= remaining - 1;
            end = start;
        }
        folded
    }
}

/// Trees are equal when their leaves are: everything else is derived from them.
impl PartialEq for MerkleTree {
    fn eq(&self, other: &Self) -> bool {
        self.leaf_hashes() == other.leaf_hashes()
    }
}

impl Eq for MerkleTree {}

impl fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// The right border of a growing tree: the hashes of its complete subtrees, largest first (one
/// per set bit of the size). Enough to compute the root and to keep appending, in at most 64
/// hashes of memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    subtrees: Vec<Hash32>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Appends a leaf hash. A frontier holds at most `u64::MAX` leaves; a push beyond that is
    /// ignored (no ledger gets there).
    pub fn push(&mut self, leaf_hash: Hash32) {
        let Some(next) = self.size.checked_add(1) else {
            return;
        };
        let mut hash = leaf_hash;
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.subtrees.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.subtrees.push(hash);
        self.size = next;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> Hash32 {
        self.subtrees
            .iter()
            .rev()
            .copied()
            .reduce(|right, left| node_hash(&left, &right))
            .unwrap_or(EMPTY_ROOT)
    }
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2), or why the proof cannot be one for
/// leaf `index` of a tree of `size` leaves.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
) -> Result<Hash32, VerifyProofError> {
    if index >= size {
        return Err(VerifyProofError::IndexBeyondSize { index, size });
    }
    let wrong_length = VerifyProofError::WrongLength { len: proof.len() };
    let (mut fnode, mut snode) = (index, size - 1);
    let mut root = *leaf_hash;
    for sibling in proof {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            root = node_hash(sibling, &root);
            if fnode & 1 == 0 {
                // On the right border: skip the levels where this node has no right sibling.
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            root = node_hash(&root, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length);
    }
    Ok(root)
}

/// Checks that `proof` proves leaf `index` with hash `leaf_hash` is in the tree of `size` leaves
/// whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> Result<(), VerifyProofError> {
    if root_from_inclusion_proof(leaf_hash, index, size, proof)? == *root {
        Ok(())
    } else {
        Err(VerifyProofError::RootMismatch)
    }
}

/// Checks that `proof` proves the tree of `size2` leaves with root `root2` extends the tree of
/// `size1` leaves with root `root1` (RFC 9162 §2.1.4.2).
///
/// Edge cases, as in the transparency-dev reference: equal sizes need an empty proof and equal
/// roots (and for size 0, the roots must be [`EMPTY_ROOT`]); `size1 > size2` is refused; a proof
/// from size 0 to a larger size is refused (any tree extends the empty tree: there is nothing to
/// prove, so callers handle that case themselves).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash32,
    root2: &Hash32,
    proof: &[Hash32],
) -> Result<(), VerifyProofError> {
    let wrong_length = VerifyProofError::WrongLength { len: proof.len() };
    if size1 > size2 {
        return Err(VerifyProofError::SizeOrder { size1, size2 });
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(wrong_length);
        }
        if root1 != root2 || (size1 == 0 && *root1 != EMPTY_ROOT) {
            return Err(VerifyProofError::RootMismatch);
        }
        return Ok(());
    }
    if size1 == 0 {
        return Err(VerifyProofError::FromEmptyTree);
    }
    // When size1 is a power of two, the old tree is a complete subtree of the new one and its
    // root is the seed; otherwise the proof starts with the seed.
    let (seed, rest) = if size1.is_power_of_two() {
        (*root1, proof)
    } else {
        match proof.split_first() {
            Some((seed, rest)) => (*seed, rest),
            None => return Err(wrong_length),
        }
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut old, mut new) = (seed, seed);
    for hash in rest {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            old = node_hash(hash, &old);
            new = node_hash(hash, &new);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            new = node_hash(&new, hash);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length);
    }
    if old != *root1 || new != *root2 {
        return Err(VerifyProofError::RootMismatch);
    }
    Ok(())
}

/// An inclusion proof in the JSON shape of the transparency-dev test vectors:
/// `{"leafIdx", "treeSize", "root", "leafHash", "proof"}`, hashes in standard base64.
///
/// Hashes are kept as the bytes received, since a JSON document may hold anything;
/// [`InclusionProof::verify`] refuses any that is not 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    pub leaf_idx: u64,
    pub tree_size: u64,
    #[serde(with = "base64::bytes")]
    #[cfg_attr(feature = "schemars", schemars(with = "String"))]
    pub root: Vec<u8>,
    #[serde(with = "base64::bytes")]
    #[cfg_attr(feature = "schemars", schemars(with = "String"))]
    pub leaf_hash: Vec<u8>,
    /// `null` or absent reads as empty.
    #[serde(with = "base64::list", default)]
    #[cfg_attr(feature = "schemars", schemars(with = "Vec<String>"))]
    pub proof: Vec<Vec<u8>>,
}

impl InclusionProof {
    pub fn new(
        leaf_idx: u64,
        tree_size: u64,
        root: Hash32,
        leaf_hash: Hash32,
        proof: &[Hash32],
    ) -> InclusionProof {
        InclusionProof {
            leaf_idx,
            tree_size,
            root: root.0.to_vec(),
            leaf_hash: leaf_hash.0.to_vec(),
            proof: proof.iter().map(|hash| hash.0.to_vec()).collect(),
        }
    }

    /// The proof of leaf `index` in the tree of the first `size` leaves of `tree`.
    pub fn from_tree(
        tree: &MerkleTree,
        index: u64,
        size: u64,
    ) -> Result<InclusionProof, ProveError> {
        let proof = tree.inclusion_proof(index, size)?;
        let leaf_hash = tree
            .leaf_hash(index)
            .ok_or(ProveError::IndexBeyondSize { index, size })?;
        Ok(InclusionProof::new(
            index,
            size,
            tree.root_at(size)?,
            leaf_hash,
            &proof,
        ))
    }

    /// Checks the proof with [`verify_inclusion`].
    pub fn verify(&self) -> Result<(), VerifyProofError> {
        let leaf_hash = to_hash("leafHash", &self.leaf_hash)?;
        let root = to_hash("root", &self.root)?;
        let proof = to_hashes(&self.proof)?;
        verify_inclusion(&leaf_hash, self.leaf_idx, self.tree_size, &proof, &root)
    }
}

/// A consistency proof in the JSON shape of the transparency-dev test vectors:
/// `{"size1", "size2", "root1", "root2", "proof"}`, hashes in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ConsistencyProof {
    pub size1: u64,
    pub size2: u64,
    #[serde(with = "base64::bytes")]
    #[cfg_attr(feature = "schemars", schemars(with = "String"))]
    pub root1: Vec<u8>,
    #[serde(with = "base64::bytes")]
    #[cfg_attr(feature = "schemars", schemars(with = "String"))]
    pub root2: Vec<u8>,
    /// `null` or absent reads as empty.
    #[serde(with = "base64::list", default)]
    #[cfg_attr(feature = "schemars", schemars(with = "Vec<String>"))]
    pub proof: Vec<Vec<u8>>,
}

impl ConsistencyProof {
    pub fn new(
        size1: u64,
        size2: u64,
        root1: Hash32,
        root2: Hash32,
        proof: &[Hash32],
    ) -> ConsistencyProof {
        ConsistencyProof {
            size1,
            size2,
            root1: root1.0.to_vec(),
            root2: root2.0.to_vec(),
            proof: proof.iter().map(|hash| hash.0.to_vec()).collect(),
        }
    }

    /// The proof from the first `size1` leaves of `tree` to its first `size2`.
    pub fn from_tree(
        tree: &MerkleTree,
        size1: u64,
        size2: u64,
    ) -> Result<ConsistencyProof, ProveError> {
        let proof = tree.consistency_proof(size1, size2)?;
        Ok(ConsistencyProof::new(
            size1,
            size2,
            tree.root_at(size1)?,
            tree.root_at(size2)?,
            &proof,
        ))
    }

    /// Checks the proof with [`verify_consistency`].
    ///
    /// One case never reaches a hash: two claims about the same non-empty size with an empty
    /// proof are consistent exactly when their roots are the same bytes. As in the reference
    /// verifier (and its vectors), those bytes are compared as they are, whatever their length.
    pub fn verify(&self) -> Result<(), VerifyProofError> {
        if self.size1 == self.size2 && self.size1 != 0 && self.proof.is_empty() {
            return if self.root1 == self.root2 {
                Ok(())
            } else {
                Err(VerifyProofError::RootMismatch)
            };
        }
        let root1 = to_hash("root1", &self.root1)?;
        let root2 = to_hash("root2", &self.root2)?;
        let proof = to_hashes(&self.proof)?;
        verify_consistency(self.size1, self.size2, &root1, &root2, &proof)
    }
}

fn to_hash(field: &'static str, bytes: &[u8]) -> Result<Hash32, VerifyProofError> {
    <[u8; 32]>::try_from(bytes)
        .map(Hash32)
        .map_err(|_| VerifyProofError::NotAHash {
            field,
            len: bytes.len(),
        })
}

fn to_hashes(proof: &[Vec<u8>]) -> Result<Vec<Hash32>, VerifyProofError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(VerifyProofError::WrongLength { len: proof.len() });
    }
    proof.iter().map(|bytes| to_hash("proof", bytes)).collect()
}

/// Standard base64 (RFC 4648 §4, padded), strict: the only text accepted for some bytes is the
/// text [`encode`](base64::encode) produces for them (no whitespace, no missing padding, no
/// stray bits in the last symbol). The protocol crate keeps no base64 dependency for this.
pub(crate) mod base64 {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::hash::Hash32;

    /// The text is not canonical standard base64.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Base64Error;

    impl std::fmt::Display for Base64Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("not canonical standard base64")
        }
    }

    fn symbol(value: u8) -> char {
        let byte = match value & 63 {
            v @ 0..=25 => b'A' + v,
            v @ 26..=51 => b'a' + (v - 26),
            v @ 52..=61 => b'0' + (v - 52),
            62 => b'+',
            _ => b'/',
        };
        char::from(byte)
    }

    fn value(symbol: u8) -> Result<u32, Base64Error> {
        let value = match symbol {
            b'A'..=b'Z' => symbol - b'A',
            b'a'..=b'z' => symbol - b'a' + 26,
            b'0'..=b'9' => symbol - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(Base64Error),
        };
        Ok(u32::from(value))
    }

    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let (b0, b1, b2) = match *chunk {
                [b0] => (b0, None, None),
                [b0, b1] => (b0, Some(b1), None),
                [b0, b1, b2, ..] => (b0, Some(b1), Some(b2)),
                [] => break,
            };
            let group =
                u32::from(b0) << 16 | u32::from(b1.unwrap_or(0)) << 8 | u32::from(b2.unwrap_or(0));
            text.push(symbol((group >> 18) as u8));
            text.push(symbol((group >> 12) as u8));
            text.push(if b1.is_some() {
                symbol((group >> 6) as u8)
            } else {
                '='
            });
            text.push(if b2.is_some() {
                symbol(group as u8)
            } else {
                '='
            });
        }
        text
    }

    pub(crate) fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
        let bytes = text.as_bytes();
        if !bytes.len().is_multiple_of(4) {
            return Err(Base64Error);
        }
        let groups = bytes.len() / 4;
        let mut out = Vec::with_capacity(groups * 3);
        for (n, chunk) in bytes.chunks_exact(4).enumerate() {
            let &[a, b, c, d] = chunk else {
                return Err(Base64Error);
            };
            let last = n + 1 == groups;
            let top = value(a)? << 18 | value(b)? << 12;
            match (c, d) {
                (b'=', b'=') if last => {
                    if top & 0xffff != 0 {
                        return Err(Base64Error);
                    }
                    out.push((top >> 16) as u8);
                }
                (_, b'=') if last => {
                    let group = top | value(c)? << 6;
                    if group & 0xff != 0 {
                        return Err(Base64Error);
                    }
                    out.push((group >> 16) as u8);
                    out.push((group >> 8) as u8);
                }
                _ => {
                    let group = top | value(c)? << 6 | value(d)?;
                    out.push((group >> 16) as u8);
                    out.push((group >> 8) as u8);
                    out.push(group as u8);
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn decode_hash(text: &str) -> Result<Hash32, Base64Error> {
        // 32 bytes are exactly 44 symbols; refuse longer text before decoding it.
        if text.len() != 44 {
            return Err(Base64Error);
        }
        let bytes = decode(text)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Hash32)
            .map_err(|_| Base64Error)
    }

    /// `Vec<u8>` as one base64 string.
    pub(crate) mod bytes {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            bytes: &[u8],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(&encode(bytes))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<u8>, D::Error> {
            let text = String::deserialize(deserializer)?;
            decode(&text).map_err(D::Error::custom)
        }
    }

    /// `Vec<Vec<u8>>` as a list of base64 strings; `null` reads as empty.
    pub(crate) mod list {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            list: &[Vec<u8>],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(list.iter().map(|bytes| encode(bytes)))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<Vec<u8>>, D::Error> {
            let list = Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default();
            list.iter()
                .map(|text| decode(text).map_err(D::Error::custom))
                .collect()
        }
    }

    /// A [`Hash32`] as a base64 string in human-readable formats (JSON), as its raw bytes in
    /// binary ones (the wire codec).
    pub(crate) mod hash {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            hash: &Hash32,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            if serializer.is_human_readable() {
                serializer.serialize_str(&encode(&hash.0))
            } else {
                hash.serialize(serializer)
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Hash32, D::Error> {
            if deserializer.is_human_readable() {
                let text = String::deserialize(deserializer)?;
                decode_hash(&text).map_err(D::Error::custom)
            } else {
                Hash32::deserialize(deserializer)
            }
        }
    }

    /// A list of [`Hash32`], as [`hash`] does for one.
    pub(crate) mod hashes {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            hashes: &[Hash32],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            if serializer.is_human_readable() {
                serializer.collect_seq(hashes.iter().map(|hash| encode(&hash.0)))
            } else {
                hashes.serialize(serializer)
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<Hash32>, D::Error> {
            if deserializer.is_human_readable() {
                let list = Vec::<String>::deserialize(deserializer)?;
                list.iter()
                    .map(|text| decode_hash(text).map_err(D::Error::custom))
                    .collect()
            } else {
                Vec::<Hash32>::deserialize(deserializer)
            }
        }
    }
}

#[cfg(test)]
mod tests;
