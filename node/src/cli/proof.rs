//! `suanli ledger proof …` and `suanli ledger entry`: Merkle proofs and raw entries, from a
//! running node's API or a stopped node's data dir, and offline verification of a saved proof.
//!
//! Proofs are printed as the JSON the API serves (the transparency-dev vector shape), so a saved
//! answer can be checked later with `suanli ledger proof verify FILE`, by any RFC 6962 verifier,
//! or by hand (docs/ledger.md).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use serde_json::Value;
use suanli_protocol::checkpoint::SignedCheckpoint;
use suanli_protocol::merkle::{ConsistencyProof, InclusionProof};

use super::ledger::Source;
use super::{SilentExit, output};
use crate::api::types::EntryView;
use crate::data_dir::DataDir;
use crate::ledger::{Store, StoredEntry, open_offline};

/// Largest proof or checkpoint file read (a proof is at most 65 hashes: about 4 KiB of JSON).
const MAX_PROOF_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Print the inclusion proof of entry INDEX in the tree of the first N entries (JSON).
    Inclusion {
        index: u64,
        /// Tree size [default: the ledger's durable size].
        #[arg(long, value_name = "N")]
        size: Option<u64>,
        #[command(flatten)]
        source: Source,
    },
    /// Print the proof that the tree of the first N entries extends that of the first FROM (JSON).
    Consistency {
        from: u64,
        /// The larger tree size [default: the ledger's durable size].
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        #[command(flatten)]
        source: Source,
    },
    /// Verify a saved inclusion or consistency proof (JSON) offline; exit 1 if it fails.
    Verify {
        /// The proof, as printed by `suanli ledger proof inclusion|consistency`.
        file: PathBuf,
        /// Also require the proof's (larger) tree to be the one this signed checkpoint names,
        /// and the checkpoint's signature to verify.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
}

/// Opens a stopped node's ledger.
pub(super) fn offline_store(dir: &Path) -> anyhow::Result<Store> {
    let data_dir = DataDir::new(dir);
    let owner = data_dir.load_key()?.node_id();
    Ok(open_offline(&data_dir.db_path(), owner)?)
}

pub async fn execute(command: ProofCommand) -> anyhow::Result<()> {
    match command {
        ProofCommand::Inclusion {
            index,
            size,
            source,
        } => {
            let proof: InclusionProof = match &source.data_dir {
                Some(dir) => {
                    let store = offline_store(dir)?;
                    let size = size.unwrap_or(store.head().size);
                    store.inclusion_proof(index, size)?
                }
                None => {
                    let size = size.map(|size| format!("&size={size}")).unwrap_or_default();
                    source
                        .client
                        .client()?
                        .get_json(&format!("/v1/ledger/proof/inclusion?index={index}{size}"))
                        .await?
                }
            };
            output::json(&proof)
        }
        ProofCommand::Consistency { from, to, source } => {
            let proof: ConsistencyProof = match &source.data_dir {
                Some(dir) => {
                    let store = offline_store(dir)?;
                    let to = to.unwrap_or(store.head().size);
                    store.consistency_proof(from, to)?
                }
                None => {
                    let to = to.map(|to| format!("&to={to}")).unwrap_or_default();
                    source
                        .client
                        .client()?
                        .get_json(&format!("/v1/ledger/proof/consistency?from={from}{to}"))
                        .await?
                }
            };
            output::json(&proof)
        }
        ProofCommand::Verify { file, checkpoint } => {
            let verdict = verify_file(&file, checkpoint.as_deref())?;
            match verdict {
                Ok(summary) => output::line(&format!("ok: {summary}")),
                Err(reason) => {
                    output::line(&format!("FAILED: {reason}"))?;
                    Err(SilentExit(1).into())
                }
            }
        }
    }
}

/// Reads a small file whole, refusing anything larger than `MAX_PROOF_FILE_BYTES`.
pub(super) fn read_small(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PROOF_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("read {}", path.display()))?;
    if bytes.len() as u64 > MAX_PROOF_FILE_BYTES {
        bail!(
            "{} is larger than {MAX_PROOF_FILE_BYTES} bytes: not a proof",
            path.display()
        );
    }
    Ok(bytes)
}

/// Reads and verifies a signed checkpoint note from a file.
pub(super) fn read_checkpoint(path: &Path) -> anyhow::Result<SignedCheckpoint> {
    let bytes = read_small(path)?;
    let note = String::from_utf8(bytes)
        .map_err(|_| anyhow!("{}: a checkpoint is UTF-8 text", path.display()))?;
    SignedCheckpoint::from_note(&note)
        .map_err(|error| anyhow!("{}: not a valid signed checkpoint: {error}", path.display()))
}

/// `Ok(Ok(summary))` when the proof verifies, `Ok(Err(reason))` when it does not, `Err` when
/// the files cannot be read or are not proofs at all.
fn verify_file(path: &Path, checkpoint: Option<&Path>) -> anyhow::Result<Result<String, String>> {
    let bytes = read_small(path)?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|error| anyhow!("{}: not JSON ({error})", path.display()))?;
    let checkpoint = checkpoint.map(read_checkpoint).transpose()?;
    let not_a_proof = || {
        anyhow!(
            "{}: neither an inclusion proof (leafIdx, treeSize, root, leafHash, proof) nor a \
             consistency proof (size1, size2, root1, root2, proof)",
            path.display()
        )
    };
    let object = value.as_object().ok_or_else(not_a_proof)?;
    // (tree size, root) the proof ends at, to compare with the checkpoint.
    let (summary, size, root) = if object.contains_key("leafIdx") {
        let proof: InclusionProof = serde_json::from_value(value)
            .map_err(|error| anyhow!("{}: bad inclusion proof: {error}", path.display()))?;
        if let Err(error) = proof.verify() {
            return Ok(Err(format!("inclusion proof: {error}")));
        }
        (
            format!(
                "entry {} (leaf hash {}) is in the tree of {} entries with root {}",
                proof.leaf_idx,
                hex::encode(&proof.leaf_hash),
                proof.tree_size,
                hex::encode(&proof.root)
            ),
            proof.tree_size,
            proof.root,
        )
    } else if object.contains_key("size1") {
        let proof: ConsistencyProof = serde_json::from_value(value)
            .map_err(|error| anyhow!("{}: bad consistency proof: {error}", path.display()))?;
        if let Err(error) = proof.verify() {
            return Ok(Err(format!("consistency proof: {error}")));
        }
        (
            format!(
                "the tree of {} entries (root {}) extends the tree of {} entries (root {})",
                proof.size2,
                hex::encode(&proof.root2),
                proof.size1,
                hex::encode(&proof.root1)
            ),
            proof.size2,
            proof.root2,
        )
    } else {
        return Err(not_a_proof());
    };
    let Some(checkpoint) = checkpoint else {
        return Ok(Ok(summary));
    };
    if checkpoint.size() != size || checkpoint.root().0.as_slice() != root.as_slice() {
        return Ok(Err(format!(
            "the proof is about the tree of {size} entries with root {}, but the checkpoint \
             signed by {} names size {} with root {}",
            hex::encode(&root),
            checkpoint.signer(),
            checkpoint.size(),
            checkpoint.root()
        )));
    }
    Ok(Ok(format!(
        "{summary}, as signed by {} in its checkpoint",
        checkpoint.signer()
    )))
}

/// `suanli ledger entry INDEX [--raw]`.
pub async fn entry(index: u64, raw: bool, source: Source) -> anyhow::Result<()> {
    let bytes = match &source.data_dir {
        Some(dir) => offline_store(dir)?
            .raw_entry(index)?
            .ok_or_else(|| anyhow!("no entry {index} in the ledger of {}", dir.display()))?,
        None => {
            source
                .client
                .client()?
                .get_bytes(&format!("/v1/ledger/entry/{index}?raw=1"))
                .await?
        }
    };
    if raw {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        out.flush()?;
        return Ok(());
    }
    let entry = StoredEntry {
        seq: index,
        raw: bytes,
    };
    output::json(&EntryView::from(&entry))
}

#[cfg(test)]
mod tests {
    use suanli_protocol::checkpoint::Checkpoint;
    use suanli_protocol::merkle::MerkleTree;
    use tempfile::TempDir;

    use super::*;
    use crate::fixtures::provider;

    fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn saved_proofs_verify_offline_against_an_optional_checkpoint() {
        let dir = TempDir::new().unwrap();
        let tree = MerkleTree::from_leaf_hashes(
            (0..11u64).map(|i| suanli_protocol::ledger::entry_hash(&i.to_be_bytes())),
        );
        let inclusion = InclusionProof::from_tree(&tree, 4, 11).unwrap();
        let consistency = ConsistencyProof::from_tree(&tree, 5, 11).unwrap();
        let inclusion_file = write(&dir, "i.json", &serde_json::to_string(&inclusion).unwrap());
        let consistency_file = write(
            &dir,
            "c.json",
            &serde_json::to_string(&consistency).unwrap(),
        );
        let summary = verify_file(&inclusion_file, None).unwrap().unwrap();
        assert!(summary.contains("entry 4"), "{summary}");
        let summary = verify_file(&consistency_file, None).unwrap().unwrap();
        assert!(summary.contains("extends the tree of 5"), "{summary}");

        let key = provider();
        let signed = |size| {
            Checkpoint::new(key.node_id(), size, tree.root_at(size).unwrap())
                .sign(&key)
                .unwrap()
                .into_note()
        };
        let matching = write(&dir, "cp11", &signed(11));
        let other = write(&dir, "cp10", &signed(10));
        let summary = verify_file(&inclusion_file, Some(&matching))
            .unwrap()
            .unwrap();
        assert!(summary.contains("as signed by"), "{summary}");
        let reason = verify_file(&consistency_file, Some(&other))
            .unwrap()
            .unwrap_err();
        assert!(reason.contains("names size 10"), "{reason}");
        let forged = write(&dir, "forged", &signed(11).replace("11\n", "12\n"));
        assert!(verify_file(&inclusion_file, Some(&forged)).is_err());

        // A tampered proof fails with a reason; what is not a proof is an error.
        let mut bad = inclusion.clone();
        bad.leaf_idx = 5;
        let bad_file = write(&dir, "bad.json", &serde_json::to_string(&bad).unwrap());
        let reason = verify_file(&bad_file, None).unwrap().unwrap_err();
        assert!(reason.contains("different root"), "{reason}");
        assert!(verify_file(&write(&dir, "x.json", "{\"a\":1}"), None).is_err());
        assert!(verify_file(&write(&dir, "y.json", "not json"), None).is_err());
        assert!(verify_file(&dir.path().join("missing"), None).is_err());
    }
}
