//! Ledger transparency against outside references: every RFC 6962 proof vector of
//! transparency-dev/merkle (copied, with its licence, into `testdata/rfc6962/`), and an ignored
//! measurement of the tree at 10^4 and 10^6 leaves.
//!
//! Run the measurement with
//! `cargo test --release -p suanli-protocol --test transparency -- --ignored --nocapture`.

// Test code: panicking on a broken fixture is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use suanli_protocol::Hash32;
use suanli_protocol::merkle::{
    ConsistencyProof, InclusionProof, MerkleTree, VerifyProofError, verify_consistency,
    verify_inclusion,
};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/rfc6962")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "json") {
            out.push(path);
        }
    }
}

/// The fields of a vector besides the proof.
#[derive(Deserialize)]
struct Expectation {
    desc: String,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

fn hash(bytes: &[u8]) -> Option<Hash32> {
    bytes.try_into().ok().map(Hash32)
}

fn hashes(list: &[Vec<u8>]) -> Option<Vec<Hash32>> {
    list.iter().map(|bytes| hash(bytes)).collect()
}

/// The leaves of the vectors' tree (RFC 6962 / Certificate Transparency test leaves).
fn vector_tree() -> MerkleTree {
    let mut tree = MerkleTree::new();
    for leaf in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ] {
        tree.push_entry(&hex::decode(leaf).unwrap());
    }
    tree
}

#[derive(Default, Debug, PartialEq)]
struct Tally {
    files: usize,
    accepted: usize,
    rejected: usize,
    /// Vectors whose hashes are all 32 bytes, also run through the typed verifier.
    typed: usize,
    /// Happy paths whose proof the tree regenerates exactly.
    regenerated: usize,
}

/// Every vector file: the verdict of `verify()` matches `wantErr`; where every hash is 32 bytes,
/// the typed verifier gives the same verdict; and every happy path is exactly the proof
/// `MerkleTree` generates for the vectors' leaves.
#[test]
fn every_rfc6962_vector() {
    let mut files = Vec::new();
    json_files(&vectors_dir(), &mut files);
    files.sort();
    let tree = vector_tree();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();

    for path in &files {
        let relative = path.strip_prefix(vectors_dir()).unwrap();
        let group = relative.parent().unwrap().display().to_string();
        let text = fs::read_to_string(path).unwrap();
        let expectation: Expectation = serde_json::from_str(&text).unwrap();
        let tally = tallies.entry(group.clone()).or_default();
        tally.files += 1;

        let (verdict, typed, regenerated) = if group.starts_with("inclusion") {
            let vector: InclusionProof = serde_json::from_str(&text).unwrap();
            let verdict = vector.verify();
            let typed = match (
                hash(&vector.leaf_hash),
                hash(&vector.root),
                hashes(&vector.proof),
            ) {
                (Some(leaf), Some(root), Some(proof)) => Some(verify_inclusion(
                    &leaf,
                    vector.leaf_idx,
                    vector.tree_size,
                    &proof,
                    &root,
                )),
                _ => None,
            };
            let regenerated =
                (!expectation.want_err && group != "inclusion/single-entry").then(|| {
                    InclusionProof::from_tree(&tree, vector.leaf_idx, vector.tree_size).unwrap()
                        == vector
                });
            (verdict, typed, regenerated)
        } else {
            let vector: ConsistencyProof = serde_json::from_str(&text).unwrap();
            let verdict = vector.verify();
            let typed = match (
                hash(&vector.root1),
                hash(&vector.root2),
                hashes(&vector.proof),
            ) {
                (Some(root1), Some(root2), Some(proof)) => Some(verify_consistency(
                    vector.size1,
                    vector.size2,
                    &root1,
                    &root2,
                    &proof,
                )),
                _ => None,
            };
            let regenerated =
                (!expectation.want_err && group != "consistency/additional").then(|| {
                    ConsistencyProof::from_tree(&tree, vector.size1, vector.size2).unwrap()
                        == vector
                });
            (verdict, typed, regenerated)
        };

        if verdict.is_err() != expectation.want_err {
            failures.push(format!(
                "{}: {} — wantErr {}, got {verdict:?}",
                relative.display(),
                expectation.desc,
                expectation.want_err
            ));
        }
        if verdict.is_ok() {
            tally.accepted += 1;
        } else {
            tally.rejected += 1;
        }
        if let Some(typed) = typed {
            tally.typed += 1;
            if typed != verdict {
                failures.push(format!(
                    "{}: typed verifier says {typed:?}, document says {verdict:?}",
                    relative.display()
                ));
            }
        }
        match regenerated {
            Some(true) => tally.regenerated += 1,
            Some(false) => failures.push(format!("{}: not regenerated", relative.display())),
            None => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every file ran: 98 inclusion and 98 consistency vectors, 12 of them valid.
    let count = |prefix: &str| -> usize {
        tallies
            .iter()
            .filter(|(group, _)| group.starts_with(prefix))
            .map(|(_, tally)| tally.files)
            .sum()
    };
    assert_eq!(
        (count("inclusion"), count("consistency")),
        (98, 98),
        "{tallies:#?}"
    );
    let accepted: usize = tallies.values().map(|tally| tally.accepted).sum();
    assert_eq!(accepted, 12, "{tallies:#?}");
    let expected_groups = [
        "consistency/0",
        "consistency/1",
        "consistency/2",
        "consistency/3",
        "consistency/4",
        "consistency/additional",
        "inclusion/0",
        "inclusion/1",
        "inclusion/2",
        "inclusion/3",
        "inclusion/4",
        "inclusion/additional/0",
        "inclusion/additional/1",
        "inclusion/additional/2",
        "inclusion/additional/3",
        "inclusion/single-entry",
    ];
    assert_eq!(tallies.keys().collect::<Vec<_>>(), expected_groups);
    let regenerated: usize = tallies.values().map(|tally| tally.regenerated).sum();
    assert_eq!(regenerated, 10, "{tallies:#?}");
    let typed: usize = tallies.values().map(|tally| tally.typed).sum();
    // The rest hold a hash that is not 32 bytes: the typed verifier cannot even be asked.
    assert_eq!(typed, 143, "{tallies:#?}");
}

/// The roots of the vectors' tree at every size, as listed by the reference.
#[test]
fn vector_tree_roots() {
    let tree = vector_tree();
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    for (size, root) in (1u64..).zip(roots) {
        assert_eq!(tree.root_at(size).unwrap().to_hex(), root, "size {size}");
    }
    assert_eq!(
        tree.root_at(0).unwrap().to_hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

/// A document holding a 12-byte "root" is only ever accepted in the one case that hashes nothing.
#[test]
fn short_hashes_only_pass_where_nothing_is_hashed() {
    let tree = vector_tree();
    let mut proof = ConsistencyProof::from_tree(&tree, 3, 8).unwrap();
    proof.root1 = b"don't care 1".to_vec();
    assert!(matches!(
        proof.verify(),
        Err(VerifyProofError::NotAHash {
            field: "root1",
            len: 12
        })
    ));
}

fn measure<T>(what: &str, runs: u32, mut f: impl FnMut(u32) -> T) -> T {
    let start = Instant::now();
    let mut last = None;
    for run in 0..runs {
        last = Some(f(run));
    }
    let per_run = start.elapsed() / runs;
    #[allow(clippy::print_stdout)]
    {
        println!("{what:<48} {per_run:>12.2?}");
    }
    last.unwrap()
}

/// Figures for the node's tree: appends, roots and proofs at 10^4 and 10^6 leaves.
#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn measure_tree() {
    for leaves in [10_000u64, 1_000_000] {
        let hashes: Vec<Hash32> = (0..leaves).map(|i| Hash32::of(&i.to_be_bytes())).collect();
        let tree = measure(&format!("append {leaves} leaf hashes"), 3, |_| {
            let mut tree = MerkleTree::with_capacity(hashes.len());
            hashes.iter().for_each(|hash| tree.push(*hash));
            tree
        });
        let mut raw_tree = MerkleTree::new();
        measure(&format!("append {leaves} raw 200-byte entries"), 1, |_| {
            let mut entry = [7u8; 200];
            for i in 0..leaves {
                entry[..8].copy_from_slice(&i.to_be_bytes());
                raw_tree.push_entry(&entry);
            }
        });
        measure(&format!("root at {leaves}"), 1000, |_| tree.root());
        measure(&format!("root at {leaves} - 1 (ragged)"), 1000, |_| {
            tree.root_at(leaves - 1).unwrap()
        });
        let proof = measure(&format!("inclusion proof, tree of {leaves}"), 1000, |run| {
            tree.inclusion_proof(u64::from(run) * 7919 % leaves, leaves)
                .unwrap()
        });
        let root = tree.root();
        let index = 999 * 7919 % leaves;
        let leaf = tree.leaf_hash(index).unwrap();
        measure(&format!("verify inclusion, tree of {leaves}"), 1000, |_| {
            verify_inclusion(&leaf, index, leaves, &proof, &root).unwrap()
        });
        let size1 = leaves / 3 + 1;
        let consistency = measure(
            &format!("consistency proof {size1} -> {leaves}"),
            1000,
            |_| tree.consistency_proof(size1, leaves).unwrap(),
        );
        let root1 = tree.root_at(size1).unwrap();
        measure(
            &format!("verify consistency {size1} -> {leaves}"),
            1000,
            |_| verify_consistency(size1, leaves, &root1, &root, &consistency).unwrap(),
        );
        let json = serde_json::to_string(&InclusionProof::from_tree(&tree, index, leaves).unwrap())
            .unwrap();
        #[allow(clippy::print_stdout)]
        {
            println!(
                "tree of {leaves}: inclusion proof {} hashes ({} bytes, {} bytes as JSON), \
                 consistency proof {} hashes ({} bytes)",
                proof.len(),
                proof.len() * 32,
                json.len(),
                consistency.len(),
                consistency.len() * 32,
            );
        }
    }
}
