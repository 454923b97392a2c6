//! Witnessing: the latest checkpoint of every other node this node has seen, accepted only when
//! proven consistent with the one held, and the equivocation proofs found on the way.
//!
//! State (one owner, [`WitnessBook`]): two maps behind mutexes, each persisted in a record tree of
//! the node's [`Storage`] (`witnessed`: node id → note; `equivocations`: node id → proof as JSON),
//! so a restart neither forgets a checkpoint (which would let a node fork history unnoticed) nor
//! an equivocation. Both are bounded ([`MAX_WITNESSED`]); checkpoints only come from nodes in the
//! capacity view, from audits, or from the nodes this node trades with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use suanli_protocol::checkpoint::{
    Equivocation, PrefixProof, SignedCheckpoint, WitnessError, witness,
};
use suanli_protocol::wire::{GossipMessage, LedgerRequest, LedgerResponse};
use suanli_protocol::{Hash32, NodeId};
use tracing::{debug, info, warn};

use crate::mesh::MeshView;
use crate::network::NetworkHandle;
use crate::storage::{RecordTree, Storage};

/// How long a witness waits for a node's consistency proof.
const PROOF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most nodes whose checkpoints are held (and most equivocation proofs kept).
pub const MAX_WITNESSED: usize = 16_384;

/// Where a checkpoint to witness came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The checkpoint topic.
    Gossip,
    /// An audit, or a node this node deals with: worth a connection.
    Direct,
}

/// What witnessing a checkpoint came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Observation {
    /// The first checkpoint seen from this node: held (trust on first use).
    First,
    /// Proven to extend the checkpoint held, of size `from`: now held instead.
    Extended { from: u64 },
    /// The same tree as the checkpoint held.
    Unchanged,
    /// Older than the checkpoint held (and consistent with it, or not provable): ignored.
    Stale { held: u64 },
    /// Consistency could not be proven (the node did not answer, or its proof failed): the
    /// checkpoint held is kept. No evidence against the node.
    Unproven { reason: String },
    /// The two checkpoints are inconsistent: the node equivocated. The proof is stored and
    /// gossiped, and the node is no longer chosen for placement.
    Equivocation,
    /// Not a checkpoint of this node, or no room to hold it.
    Refused { reason: String },
}

/// A held checkpoint, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Witnessed {
    pub node_id: String,
    pub size: u64,
    pub root: String,
    pub note: String,
}

/// A stored equivocation proof, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EquivocationRecord {
    pub node_id: String,
    pub proof: Equivocation,
}

pub(super) struct WitnessBook {
    me: NodeId,
    held: Mutex<HashMap<NodeId, SignedCheckpoint>>,
    equivocations: Mutex<BTreeMap<NodeId, Equivocation>>,
    held_tree: RecordTree,
    equivocation_tree: RecordTree,
    mesh: MeshView,
    network: NetworkHandle,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every write is one insert: a panic elsewhere leaves the map consistent.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl WitnessBook {
    /// Loads what an earlier run witnessed; distrusts the equivocators again. Blocking (reads
    /// two small record trees).
    pub fn load(
        storage: &Storage,
        me: NodeId,
        mesh: MeshView,
        network: NetworkHandle,
    ) -> WitnessBook {
        let held_tree = storage.records("witnessed");
        let equivocation_tree = storage.records("equivocations");
        let mut held = HashMap::new();
        for (key, value) in read_all(&held_tree) {
            let note = String::from_utf8_lossy(&value);
            match SignedCheckpoint::from_note(&note) {
                Ok(checkpoint) if checkpoint.signer().as_bytes() == key.as_slice() => {
                    held.insert(checkpoint.signer(), checkpoint);
                }
                _ => warn!("ignoring an unreadable witnessed checkpoint"),
            }
        }
        let mut equivocations = BTreeMap::new();
        for (_, value) in read_all(&equivocation_tree) {
            let proof = serde_json::from_slice::<Equivocation>(&value)
                .ok()
                .and_then(|proof| Some((proof.verify().ok()?, proof)));
            match proof {
                Some((node, proof)) => {
                    mesh.distrust(node);
                    equivocations.insert(node, proof);
                }
                None => warn!("ignoring an unreadable equivocation proof"),
            }
        }
        info!(
            witnessed = held.len(),
            equivocations = equivocations.len(),
            "witness state loaded"
        );
        WitnessBook {
            me,
            held: Mutex::new(held),
            equivocations: Mutex::new(equivocations),
            held_tree,
            equivocation_tree,
            mesh,
            network,
        }
    }

    pub fn held(&self, node: &NodeId) -> Option<SignedCheckpoint> {
        lock(&self.held).get(node).cloned()
    }

    pub fn witnessed(&self) -> Vec<Witnessed> {
        let mut list: Vec<Witnessed> = lock(&self.held)
            .values()
            .map(|checkpoint| Witnessed {
                node_id: checkpoint.signer().to_string(),
                size: checkpoint.size(),
                root: checkpoint.root().to_string(),
                note: checkpoint.note().to_owned(),
            })
            .collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        list
    }

    pub fn equivocations(&self) -> Vec<EquivocationRecord> {
        lock(&self.equivocations)
            .iter()
            .map(|(node, proof)| EquivocationRecord {
                node_id: node.to_string(),
                proof: proof.clone(),
            })
            .collect()
    }

    pub fn has_equivocated(&self, node: &NodeId) -> bool {
        lock(&self.equivocations).contains_key(node)
    }

    fn hold(&self, checkpoint: SignedCheckpoint) -> Result<(), String> {
        let node = checkpoint.signer();
        {
            let mut held = lock(&self.held);
            match held.get(&node) {
                // Two observations raced (gossip and an audit): keep the larger, both proven.
                Some(current) if current.size() > checkpoint.size() => return Ok(()),
                Some(_) => {}
                None if held.len() >= MAX_WITNESSED => {
                    return Err(format!("already witnessing {MAX_WITNESSED} nodes"));
                }
                None => {}
            }
            held.insert(node, checkpoint.clone());
        }
        if let Err(error) = self
            .held_tree
            .insert(node.as_bytes(), checkpoint.note().as_bytes())
        {
            warn!(%error, %node, "witnessed checkpoint not persisted");
        }
        Ok(())
    }

    /// Stores a verified equivocation proof against `node` (the first one kept per node),
    /// distrusts the node, and gossips the proof when it is new here. Returns whether it was new.
    pub async fn record_equivocation(&self, node: NodeId, proof: Equivocation) -> bool {
        if node == self.me {
            // Our own ledger is checked at start-up; a proof against us means our data was
            // restored or forked outside the node. Say so loudly, keep serving.
            warn!("an equivocation proof against this node was received");
        }
        {
            let mut equivocations = lock(&self.equivocations);
            if equivocations.contains_key(&node) || equivocations.len() >= MAX_WITNESSED {
                return false;
            }
            equivocations.insert(node, proof.clone());
        }
        warn!(%node, "node equivocated: it signed two inconsistent checkpoints; no longer trusted");
        if node != self.me {
            self.mesh.distrust(node);
        }
        match serde_json::to_vec(&proof) {
            Ok(json) => {
                let stored = self.equivocation_tree.insert(node.as_bytes(), &json);
                if let Err(error) = match stored {
                    Ok(()) => self.equivocation_tree.flush().await,
                    Err(error) => Err(error),
                } {
                    warn!(%error, %node, "equivocation proof not persisted");
                }
            }
            Err(error) => warn!(%error, "equivocation proof not serialisable"),
        }
        let _ = self
            .network
            .publish_checkpoint_topic(&GossipMessage::Equivocation(proof))
            .await;
        true
    }

    /// Witnesses `new`: holds it if it is the first from its node or provably extends the one
    /// held, asking the node for the consistency proof; records an equivocation if the two
    /// cannot both be prefixes of one ledger.
    ///
    /// `Source::Gossip`: the proof is asked for only when the node is a peer already. A node
    /// holds a bounded set of connections, so it proves the histories of its peers and of the
    /// nodes it trades with or audits (each node is witnessed by its own peers), and never
    /// connects to every node whose checkpoint the gossip brings.
    pub async fn observe(&self, new: SignedCheckpoint, source: Source) -> Observation {
        let node = new.signer();
        if node == self.me {
            return Observation::Refused {
                reason: "this node's own checkpoint".into(),
            };
        }
        if self.has_equivocated(&node) {
            return Observation::Equivocation;
        }
        let Some(held) = self.held(&node) else {
            return match self.hold(new) {
                Ok(()) => {
                    debug!(%node, "first checkpoint held");
                    Observation::First
                }
                Err(reason) => Observation::Refused { reason },
            };
        };
        if held.note() == new.note() {
            return Observation::Unchanged;
        }
        let (smaller, larger) = if held.size() <= new.size() {
            (held.size(), new.size())
        } else {
            (new.size(), held.size())
        };
        let proof = if smaller == larger || smaller == 0 {
            // Not consulted by the witness rule.
            PrefixProof {
                prefix_root: Hash32::ZERO,
                proof: Vec::new(),
            }
        } else if source == Source::Gossip
            && !self.network.is_connected(node).await.unwrap_or(false)
        {
            return Observation::Unproven {
                reason: "not a peer: its peers witness it".into(),
            };
        } else {
            match self.fetch_proof(node, smaller, larger).await {
                Ok(proof) => proof,
                Err(reason) => return Observation::Unproven { reason },
            }
        };
        match witness(&held, new.note(), &proof) {
            Ok(accepted) => {
                let from = held.size();
                if accepted.size() == held.size() {
                    let _ = self.hold(accepted);
                    return Observation::Unchanged;
                }
                match self.hold(accepted) {
                    Ok(()) => Observation::Extended { from },
                    Err(reason) => Observation::Refused { reason },
                }
            }
            Err(WitnessError::Stale { held, .. }) => Observation::Stale { held },
            Err(WitnessError::Unproven(error)) => Observation::Unproven {
                reason: error.to_string(),
            },
            Err(WitnessError::BadCheckpoint(error)) => Observation::Refused {
                reason: error.to_string(),
            },
            Err(WitnessError::Equivocation(proof)) => {
                self.record_equivocation(node, *proof).await;
                Observation::Equivocation
            }
        }
    }

    async fn fetch_proof(
        &self,
        node: NodeId,
        size1: u64,
        size2: u64,
    ) -> Result<PrefixProof, String> {
        let prove = LedgerRequest::Prove { size1, size2 };
        let request = self.network.ledger_request(node, &prove);
        let Ok(answer) = tokio::time::timeout(PROOF_TIMEOUT, request).await else {
            return Err(format!("no proof within {PROOF_TIMEOUT:?}"));
        };
        match answer {
            Ok(LedgerResponse::Proof(proof)) => Ok(proof),
            Ok(LedgerResponse::Error(error)) => Err(format!(
                "the node answered {:?}: {}",
                error.code, error.message
            )),
            Ok(_) => Err("the node answered something else than a proof".into()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Every record of a small tree (bounded by [`MAX_WITNESSED`]).
fn read_all(tree: &RecordTree) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records = Vec::new();
    let mut start = Vec::new();
    while records.len() < MAX_WITNESSED {
        let page = match tree.iter_from(&start, 1024) {
            Ok(page) => page,
            Err(error) => {
                warn!(%error, tree = tree.name(), "cannot read witness records");
                break;
            }
        };
        let Some((last, _)) = page.last() else { break };
        start = last.clone();
        start.push(0);
        let full = page.len() == 1024;
        records.extend(page);
        if !full {
            break;
        }
    }
    records.truncate(MAX_WITNESSED);
    records
}
