//! RFC 6962 inclusion and consistency proofs as the API serves them and offline verifiers read
//! them (JSON in the transparency-dev test-vector shape, base64 hashes), and their verifiers.
//!
//! The first byte selects the mode:
//! - 0 / 1: the rest is an `InclusionProof` / `ConsistencyProof` JSON document, verified;
//! - 2: a tree of up to 300 leaves is built from the input, and fuzzed proof hashes are checked
//!   against its real root.
//!
//! Properties: nothing panics; a JSON proof re-serialises and parses back to the same value
//! (the base64 reader is strict, so one text per value); a proof that verifies against a real
//! root is the tree's own proof (RFC 6962 proofs are unique up to a SHA-256 collision), and the
//! tree's own proofs verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::split_selector;
use suanli_protocol::hash::Hash32;
use suanli_protocol::merkle::{
    ConsistencyProof, InclusionProof, MerkleTree, verify_consistency, verify_inclusion,
};

fn json_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).expect("a proof serialises");
    let again: T = serde_json::from_str(&text).expect("a serialised proof parses");
    assert_eq!(&again, value);
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([
        bytes.get(at).copied().unwrap_or(0),
        bytes.get(at + 1).copied().unwrap_or(0),
    ])
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = split_selector(data) else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(proof) = serde_json::from_slice::<InclusionProof>(rest) {
                json_round_trip(&proof);
                let _ = proof.verify();
            }
        }
        1 => {
            if let Ok(proof) = serde_json::from_slice::<ConsistencyProof>(rest) {
                json_round_trip(&proof);
                let _ = proof.verify();
            }
        }
        _ => {
            // Header: leaves (u16), a (u16), b (u16), then 32-byte proof hashes.
            let leaves = u64::from(read_u16(rest, 0) % 301);
            let a = u64::from(read_u16(rest, 2));
            let b = u64::from(read_u16(rest, 4));
            let hashes: Vec<Hash32> = rest
                .get(6..)
                .unwrap_or_default()
                .chunks_exact(32)
                .filter_map(|chunk| <[u8; 32]>::try_from(chunk).ok().map(Hash32))
                .collect();
            let tree =
                MerkleTree::from_leaf_hashes((0..leaves).map(|i| Hash32::of(&i.to_le_bytes())));
            if leaves == 0 {
                return;
            }
            let size = 1 + b % leaves;
            let index = a % size;
            let root = tree.root_at(size).expect("size within the tree");
            let leaf = tree.leaf_hash(index).expect("index within the tree");
            let real = tree.inclusion_proof(index, size).expect("index < size");
            assert_eq!(verify_inclusion(&leaf, index, size, &real, &root), Ok(()));
            if verify_inclusion(&leaf, index, size, &hashes, &root).is_ok() {
                assert_eq!(hashes, real, "a foreign inclusion proof verified");
            }
            let size1 = 1 + a % size;
            let old_root = tree.root_at(size1).expect("size1 within the tree");
            let real = tree.consistency_proof(size1, size).expect("size1 <= size");
            assert_eq!(
                verify_consistency(size1, size, &old_root, &root, &real),
                Ok(())
            );
            if verify_consistency(size1, size, &old_root, &root, &hashes).is_ok() {
                assert_eq!(hashes, real, "a foreign consistency proof verified");
            }
        }
    }
});
