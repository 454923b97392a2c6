use super::*;
use proptest::prelude::*;

/// `MTH(D[n])` straight from RFC 6962 §2.1, on leaf hashes.
fn reference_root(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = reference_split(n);
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

fn reference_split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// `PATH(m, D[n])`, RFC 6962 §2.1.1.
fn reference_path(m: usize, leaves: &[Hash32]) -> Vec<Hash32> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = reference_split(n);
    if m < k {
        let mut path = reference_path(m, &leaves[..k]);
        path.push(reference_root(&leaves[k..]));
        path
    } else {
        let mut path = reference_path(m - k, &leaves[k..]);
        path.push(reference_root(&leaves[..k]));
        path
    }
}

/// `SUBPROOF(m, D[n], b)`, RFC 6962 §2.1.2.
fn reference_subproof(m: usize, leaves: &[Hash32], complete: bool) -> Vec<Hash32> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![reference_root(leaves)]
        };
    }
    let k = reference_split(n);
    if m <= k {
        let mut proof = reference_subproof(m, &leaves[..k], complete);
        proof.push(reference_root(&leaves[k..]));
        proof
    } else {
        let mut proof = reference_subproof(m - k, &leaves[k..], false);
        proof.push(reference_root(&leaves[..k]));
        proof
    }
}

fn leaves(n: u64) -> Vec<Hash32> {
    (0..n).map(|i| entry_hash(&i.to_be_bytes())).collect()
}

fn flip(hash: &Hash32, bit: usize) -> Hash32 {
    let mut bytes = hash.0;
    bytes[bit / 8] ^= 1 << (bit % 8);
    Hash32(bytes)
}

#[test]
fn constants_and_hashes() {
    assert_eq!(EMPTY_ROOT, Hash32::of(b""));
    assert_eq!(MerkleTree::new().root(), EMPTY_ROOT);
    assert_eq!(Frontier::new().root(), EMPTY_ROOT);
    let (a, b) = (Hash32::of(b"a"), Hash32::of(b"b"));
    let mut input = vec![1u8];
    input.extend_from_slice(&a.0);
    input.extend_from_slice(&b.0);
    assert_eq!(node_hash(&a, &b), Hash32::of(&input));
    // The leaf hash is the ledger's entry hash.
    let mut tree = MerkleTree::new();
    assert_eq!(tree.push_entry(b"entry"), entry_hash(b"entry"));
    assert_eq!(tree.root(), entry_hash(b"entry"));
    assert_eq!(tree.leaf_hash(0), Some(entry_hash(b"entry")));
    assert_eq!(tree.leaf_hash(1), None);
}

#[test]
fn split_point_is_the_largest_power_of_two_below() {
    for n in 2..2000u64 {
        assert_eq!(
            split_point(n),
            reference_split(n as usize) as u64,
            "n = {n}"
        );
    }
    assert_eq!(split_point(u64::MAX), 1 << 63);
    assert_eq!(split_point((1 << 63) + 1), 1 << 63);
    assert_eq!(split_point(1 << 63), 1 << 62);
}

/// Every root, inclusion proof and consistency proof of every prefix of a 70-leaf tree agrees
/// with the RFC's recursive definitions, and verifies.
#[test]
fn agrees_with_the_rfc_definitions() {
    let all = leaves(70);
    let tree = MerkleTree::from_leaf_hashes(all.iter().copied());
    let mut frontier = Frontier::new();
    assert_eq!(tree.len(), 70);
    for n in 0..=70usize {
        let size = n as u64;
        let root = reference_root(&all[..n]);
        assert_eq!(tree.root_at(size).unwrap(), root, "root {n}");
        assert_eq!(frontier.root(), root, "frontier {n}");
        assert_eq!(frontier.size(), size);
        if let Some(leaf) = all.get(n) {
            frontier.push(*leaf);
        }
        for m in 0..n {
            let proof = tree.inclusion_proof(m as u64, size).unwrap();
            assert_eq!(proof, reference_path(m, &all[..n]), "path {m} of {n}");
            verify_inclusion(&all[m], m as u64, size, &proof, &root).unwrap();
        }
        for m in 1..=n {
            let proof = tree.consistency_proof(m as u64, size).unwrap();
            let expected = if m == n {
                Vec::new()
            } else {
                reference_subproof(m, &all[..n], true)
            };
            assert_eq!(proof, expected, "proof {m} to {n}");
            let old = reference_root(&all[..m]);
            verify_consistency(m as u64, size, &old, &root, &proof).unwrap();
        }
    }
    assert_eq!(tree.root(), reference_root(&all));
    let mut reserved = MerkleTree::with_capacity(70);
    assert_eq!(reserved.root(), EMPTY_ROOT);
    for (n, leaf) in all.iter().enumerate() {
        reserved.push(*leaf);
        assert_eq!(reserved.root(), reference_root(&all[..=n]));
        assert_eq!(reserved.len(), n as u64 + 1);
    }
    assert_eq!(reserved, tree);
    assert_eq!(tree.leaf_hashes(), &all[..]);
}

#[test]
fn bad_requests_are_errors() {
    let tree = MerkleTree::from_leaf_hashes(leaves(5));
    assert_eq!(
        tree.root_at(6),
        Err(ProveError::SizeBeyondTree { size: 6, len: 5 })
    );
    assert_eq!(tree.root_at(0), Ok(EMPTY_ROOT));
    assert_eq!(
        tree.inclusion_proof(5, 5),
        Err(ProveError::IndexBeyondSize { index: 5, size: 5 })
    );
    assert_eq!(
        tree.inclusion_proof(0, 0),
        Err(ProveError::IndexBeyondSize { index: 0, size: 0 })
    );
    assert!(matches!(
        tree.inclusion_proof(0, 6),
        Err(ProveError::SizeBeyondTree { .. })
    ));
    assert_eq!(
        tree.consistency_proof(4, 3),
        Err(ProveError::SizeOrder { size1: 4, size2: 3 })
    );
    assert_eq!(tree.consistency_proof(0, 3), Err(ProveError::FromEmptyTree));
    assert_eq!(tree.consistency_proof(0, 0), Ok(Vec::new()));
    assert_eq!(tree.consistency_proof(5, 5), Ok(Vec::new()));
    assert!(matches!(
        tree.consistency_proof(2, 9),
        Err(ProveError::SizeBeyondTree { .. })
    ));
    for size in [u64::MAX, u64::MAX - 1, 1 << 63] {
        assert!(tree.root_at(size).is_err());
        assert!(tree.inclusion_proof(size - 1, size).is_err());
        assert!(tree.consistency_proof(1, size).is_err());
    }
}

#[test]
fn verifier_edge_cases() {
    let all = leaves(8);
    let tree = MerkleTree::from_leaf_hashes(all.iter().copied());
    let root = tree.root();
    let proof = tree.inclusion_proof(3, 8).unwrap();
    assert_eq!(
        verify_inclusion(&all[3], 8, 8, &proof, &root),
        Err(VerifyProofError::IndexBeyondSize { index: 8, size: 8 })
    );
    let mut long = proof.clone();
    long.push(root);
    assert_eq!(
        verify_inclusion(&all[3], 3, 8, &long, &root),
        Err(VerifyProofError::WrongLength { len: 4 })
    );
    assert_eq!(
        verify_inclusion(&all[3], 3, 8, &proof[..2], &root),
        Err(VerifyProofError::WrongLength { len: 2 })
    );
    assert_eq!(
        verify_inclusion(&all[2], 3, 8, &proof, &root),
        Err(VerifyProofError::RootMismatch)
    );

    let old = tree.root_at(3).unwrap();
    let proof = tree.consistency_proof(3, 8).unwrap();
    verify_consistency(3, 8, &old, &root, &proof).unwrap();
    assert_eq!(
        verify_consistency(8, 3, &root, &old, &proof),
        Err(VerifyProofError::SizeOrder { size1: 8, size2: 3 })
    );
    assert_eq!(
        verify_consistency(0, 8, &EMPTY_ROOT, &root, &[]),
        Err(VerifyProofError::FromEmptyTree)
    );
    assert_eq!(
        verify_consistency(0, 0, &EMPTY_ROOT, &EMPTY_ROOT, &[]),
        Ok(())
    );
    assert_eq!(
        verify_consistency(0, 0, &root, &root, &[]),
        Err(VerifyProofError::RootMismatch)
    );
    assert_eq!(verify_consistency(8, 8, &root, &root, &[]), Ok(()));
    assert_eq!(
        verify_consistency(8, 8, &root, &root, &[root]),
        Err(VerifyProofError::WrongLength { len: 1 })
    );
    assert_eq!(
        verify_consistency(3, 8, &old, &root, &[]),
        Err(VerifyProofError::WrongLength { len: 0 })
    );
    assert_eq!(
        verify_consistency(4, 8, &tree.root_at(4).unwrap(), &root, &[]),
        Err(VerifyProofError::WrongLength { len: 0 })
    );
}

/// Every single-bit flip of every hash of every valid proof, and of the leaf hash and the roots,
/// fails verification: exhaustively, for all trees of up to 16 leaves.
#[test]
fn every_flipped_bit_fails_verification() {
    let all = leaves(16);
    let tree = MerkleTree::from_leaf_hashes(all.iter().copied());
    let mut checked = 0u64;
    for size in 1..=16u64 {
        let root = tree.root_at(size).unwrap();
        for index in 0..size {
            let leaf = all[index as usize];
            let proof = tree.inclusion_proof(index, size).unwrap();
            verify_inclusion(&leaf, index, size, &proof, &root).unwrap();
            for bit in 0..256 {
                assert!(verify_inclusion(&flip(&leaf, bit), index, size, &proof, &root).is_err());
                assert!(verify_inclusion(&leaf, index, size, &proof, &flip(&root, bit)).is_err());
                for at in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[at] = flip(&bad[at], bit);
                    assert!(
                        verify_inclusion(&leaf, index, size, &bad, &root).is_err(),
                        "inclusion {index} of {size}, hash {at}, bit {bit}"
                    );
                    checked += 1;
                }
            }
        }
        for size1 in 1..size {
            let old = tree.root_at(size1).unwrap();
            let proof = tree.consistency_proof(size1, size).unwrap();
            verify_consistency(size1, size, &old, &root, &proof).unwrap();
            for bit in 0..256 {
                assert!(verify_consistency(size1, size, &flip(&old, bit), &root, &proof).is_err());
                assert!(verify_consistency(size1, size, &old, &flip(&root, bit), &proof).is_err());
                for at in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[at] = flip(&bad[at], bit);
                    assert!(
                        verify_consistency(size1, size, &old, &root, &bad).is_err(),
                        "consistency {size1} to {size}, hash {at}, bit {bit}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked}");
}

/// A tree that forks after a shared prefix: no consistency proof from one branch to the other.
#[test]
fn a_fork_is_inconsistent() {
    let mut forked = leaves(10);
    forked[6] = Hash32::of(b"rewritten");
    let honest = MerkleTree::from_leaf_hashes(leaves(10));
    let fork = MerkleTree::from_leaf_hashes(forked);
    for size1 in 7..=10 {
        let old = honest.root_at(size1).unwrap();
        for size2 in size1..=10 {
            let proof = fork.consistency_proof(size1, size2).unwrap();
            assert!(
                verify_consistency(size1, size2, &old, &fork.root_at(size2).unwrap(), &proof)
                    .is_err()
            );
        }
    }
    // Before the fork, the branches agree.
    let proof = fork.consistency_proof(6, 10).unwrap();
    verify_consistency(6, 10, &honest.root_at(6).unwrap(), &fork.root(), &proof).unwrap();
}

#[test]
fn json_shape_round_trips() {
    let tree = MerkleTree::from_leaf_hashes(leaves(8));
    let inclusion = InclusionProof::from_tree(&tree, 5, 8).unwrap();
    inclusion.verify().unwrap();
    let json = serde_json::to_value(&inclusion).unwrap();
    assert_eq!(
        json.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["leafHash", "leafIdx", "proof", "root", "treeSize"]
    );
    assert_eq!(json["root"], base64::encode(&tree.root().0));
    let back: InclusionProof = serde_json::from_value(json).unwrap();
    assert_eq!(back, inclusion);

    let consistency = ConsistencyProof::from_tree(&tree, 3, 8).unwrap();
    consistency.verify().unwrap();
    let text = serde_json::to_string(&consistency).unwrap();
    let back: ConsistencyProof = serde_json::from_str(&text).unwrap();
    assert_eq!(back, consistency);

    // `null` and absent proofs read as empty.
    let single = MerkleTree::from_leaf_hashes(leaves(1));
    let root = base64::encode(&single.root().0);
    for proof in [r#","proof":null"#, ""] {
        let text =
            format!(r#"{{"leafIdx":0,"treeSize":1,"root":"{root}","leafHash":"{root}"{proof}}}"#);
        let parsed: InclusionProof = serde_json::from_str(&text).unwrap();
        assert!(parsed.proof.is_empty());
        parsed.verify().unwrap();
    }
    // Hashes of the wrong length are refused by name.
    let mut short = inclusion.clone();
    short.leaf_hash.pop();
    assert_eq!(
        short.verify(),
        Err(VerifyProofError::NotAHash {
            field: "leafHash",
            len: 31
        })
    );
    let mut long = consistency.clone();
    long.proof = vec![vec![0; 32]; MAX_PROOF_HASHES + 1];
    assert!(matches!(
        long.verify(),
        Err(VerifyProofError::WrongLength { .. })
    ));
    assert!(serde_json::from_str::<ConsistencyProof>(&text.replace('=', "")).is_err());
}

#[test]
fn base64_known_answers_and_strictness() {
    for (bytes, text) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (&[0xfb, 0xff, 0xbf], "+/+/"),
    ] {
        assert_eq!(base64::encode(bytes), text);
        assert_eq!(base64::decode(text).unwrap(), bytes);
    }
    for bad in [
        "Zg", "Zg=", "Zh==", "Zm9=", "Zg==Zg==", "Zm9v\n", " Zm9v", "Zm-v", "Zm_v", "====", "Z===",
        "Zm9vY===",
    ] {
        assert!(base64::decode(bad).is_err(), "{bad:?}");
    }
    assert!(base64::decode_hash(&base64::encode(&[0; 31])).is_err());
    assert!(base64::decode_hash(&base64::encode(&[0; 33])).is_err());
    assert_eq!(
        base64::decode_hash(&base64::encode(&[7; 32])),
        Ok(Hash32([7; 32]))
    );
}

proptest! {
    #[test]
    fn base64_agrees_with_the_base64_crate(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        use ::base64::Engine as _;
        let text = base64::encode(&bytes);
        prop_assert_eq!(&text, &::base64::engine::general_purpose::STANDARD.encode(&bytes));
        prop_assert_eq!(base64::decode(&text).unwrap(), bytes);
    }

    #[test]
    fn base64_decoding_agrees_with_the_base64_crate(text in "[A-Za-z0-9+/=_ -]{0,24}") {
        use ::base64::Engine as _;
        let theirs = ::base64::engine::general_purpose::STANDARD.decode(&text).ok();
        prop_assert_eq!(base64::decode(&text).ok(), theirs);
    }

    /// Random trees up to 3000 leaves: proofs verify, and a random flipped bit fails.
    #[test]
    fn random_proofs_verify_and_flips_fail(
        size in 1u64..3000,
        index_pick in any::<prop::sample::Index>(),
        old_pick in any::<prop::sample::Index>(),
        at_pick in any::<prop::sample::Index>(),
        bit in 0usize..256,
    ) {
        let tree = MerkleTree::from_leaf_hashes(leaves(size));
        let root = tree.root();
        let index = index_pick.index(size as usize) as u64;
        let leaf = tree.leaf_hash(index).unwrap();
        let proof = tree.inclusion_proof(index, size).unwrap();
        prop_assert!(proof.len() <= 12);
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let at = at_pick.index(bad.len());
            bad[at] = flip(&bad[at], bit);
            prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
        }
        let size1 = old_pick.index(size as usize) as u64 + 1;
        let old = tree.root_at(size1).unwrap();
        let proof = tree.consistency_proof(size1, size).unwrap();
        prop_assert!(verify_consistency(size1, size, &old, &root, &proof).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let at = at_pick.index(bad.len());
            bad[at] = flip(&bad[at], bit);
            prop_assert!(verify_consistency(size1, size, &old, &root, &bad).is_err());
        }
    }

    /// The verifiers refuse (never panic on) arbitrary sizes, indices and proofs.
    #[test]
    fn verifiers_never_panic(
        index in any::<u64>(),
        size1 in any::<u64>(),
        size2 in any::<u64>(),
        proof in proptest::collection::vec(any::<[u8; 32]>().prop_map(Hash32), 0..70),
        leaf in any::<[u8; 32]>().prop_map(Hash32),
        root in any::<[u8; 32]>().prop_map(Hash32),
    ) {
        let _ = verify_inclusion(&leaf, index, size2, &proof, &root);
        let _ = verify_consistency(size1, size2, &leaf, &root, &proof);
        let _ = verify_consistency(size1 % 64, size2 % 128, &leaf, &root, &proof);
        let _ = verify_inclusion(&leaf, index % 64, size2 % 128, &proof, &root);
    }
}
