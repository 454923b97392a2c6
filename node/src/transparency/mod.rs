//! Ledger transparency: this node's signed checkpoints, witnessing of other nodes' checkpoints,
//! equivocation proofs, the `/suanli/ledger/1` server and cross-audits.
//!
//! ```text
//!  ledger head (durable) ──watch──▶ Publisher ──sign──▶ <data dir>/checkpoint (fsync)
//!                                       │                 then: latest (watch) ─▶ API, server
//!                                       └──────────────────────▶ gossip (checkpoint topic)
//!  network ──LedgerEvent──▶ dispatcher ──Request──▶ Server (≤ 8 at once): checkpoint, range, proof
//!                               ├──Checkpoint──▶ witness queue ─▶ WitnessBook::observe
//!                               │                  (asks the node for a consistency proof
//!                               │                   when it is a peer)
//!                               └──Equivocation──▶ WitnessBook::record_equivocation
//!  API / CLI ──audit(peer)──▶ Auditor: fetch checkpoint + entries, verify, compare
//! ```
//!
//! Rules:
//! - A checkpoint is signed only over durable entries and announced only once its file is
//!   durable; at start the node refuses a ledger that does not extend its last checkpoint
//!   ([`check_published`]).
//! - A newer checkpoint of another node replaces the one held only with a verified consistency
//!   proof; two inconsistent signed checkpoints are kept as a portable
//!   [`Equivocation`](suanli_protocol::checkpoint::Equivocation) proof,
//!   gossiped, and the node is [distrusted](crate::mesh::MeshView::distrust) (no longer placed).
//! - Every queue is bounded: the network drops events when the dispatcher lags, the witness
//!   queue drops checkpoints when full (the next one will do), the server serves at most
//!   8 requests at once.

mod audit;
mod checkpoints;
mod server;
mod witness;

use std::collections::HashSet;
use std::sync::Arc;

use suanli_protocol::Keypair;
use suanli_protocol::NodeId;
use suanli_protocol::checkpoint::SignedCheckpoint;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use audit::{
    AuditError, AuditReport, AuditVerdict, AuditedCheckpoint, ChainProblem, Discrepancy,
    DiscrepancyIssue, DocumentKind,
};
pub use checkpoints::{CheckpointError, check_published};
pub use witness::{EquivocationRecord, MAX_WITNESSED, Observation, Witnessed};

use crate::config::LedgerConfig;
use crate::data_dir::DataDir;
use crate::ledger::LedgerHandle;
use crate::mesh::MeshView;
use crate::network::{LedgerEvent, NetworkHandle};
use crate::storage::Storage;

/// Checkpoints waiting to be witnessed; more are dropped (each node publishes again soon).
const WITNESS_QUEUE: usize = 256;
/// Checkpoints witnessed at once (each may wait for a consistency proof from its node).
const WITNESS_CONCURRENCY: usize = 16;

/// What the transparency tasks need.
#[derive(Debug)]
pub struct TransparencyParts {
    pub keypair: Keypair,
    pub ledger: LedgerHandle,
    /// Where witnessed checkpoints and equivocation proofs are kept.
    pub storage: Storage,
    pub network: NetworkHandle,
    pub mesh: MeshView,
    pub data_dir: DataDir,
    pub config: LedgerConfig,
    /// The checkpoint [`check_published`] loaded.
    pub published: Option<SignedCheckpoint>,
    pub events: mpsc::Receiver<LedgerEvent>,
    pub cancel: CancellationToken,
}

/// A cloneable handle on this node's transparency state.
#[derive(Clone)]
pub struct Transparency {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: LedgerHandle,
    network: NetworkHandle,
    latest: watch::Receiver<Option<SignedCheckpoint>>,
    witness: witness::WitnessBook,
}

impl std::fmt::Debug for Transparency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transparency").finish_non_exhaustive()
    }
}

impl Transparency {
    /// Loads the witness state and spawns the publisher, the dispatcher and the witness worker
    /// into `tasks`.
    pub fn start(parts: TransparencyParts, tasks: &mut JoinSet<()>) -> Transparency {
        let (latest_sender, latest) = watch::channel(parts.published);
        let witness = witness::WitnessBook::load(
            &parts.storage,
            parts.ledger.owner(),
            parts.mesh.clone(),
            parts.network.clone(),
        );
        let inner = Arc::new(Inner {
            ledger: parts.ledger.clone(),
            network: parts.network.clone(),
            latest: latest.clone(),
            witness,
        });
        let publisher = checkpoints::Publisher {
            keypair: parts.keypair,
            ledger: parts.ledger.clone(),
            network: parts.network.clone(),
            data_dir: parts.data_dir,
            config: parts.config,
            latest: latest_sender,
        };
        tasks.spawn(publisher.run(parts.cancel.clone()));

        let server = server::Server {
            ledger: parts.ledger,
            network: parts.network,
            latest,
            permits: Arc::new(Semaphore::new(server::MAX_CONCURRENT)),
        };
        let (witness_queue, mut witness_inbox) = mpsc::channel::<SignedCheckpoint>(WITNESS_QUEUE);
        let worker = Arc::clone(&inner);
        let cancel = parts.cancel.clone();
        tasks.spawn(async move {
            // Checkpoints of different nodes are witnessed concurrently (a node that is slow to
            // prove stalls only its own), at most one per node and WITNESS_CONCURRENCY in all.
            let mut running: JoinSet<NodeId> = JoinSet::new();
            let mut busy: HashSet<NodeId> = HashSet::new();
            loop {
                let checkpoint = tokio::select! {
                    _ = cancel.cancelled() => break,
                    Some(done) = running.join_next() => {
                        if let Ok(node) = done {
                            busy.remove(&node);
                        }
                        continue;
                    }
                    checkpoint = witness_inbox.recv(), if running.len() < WITNESS_CONCURRENCY => checkpoint,
                };
                let Some(checkpoint) = checkpoint else { break };
                let node = checkpoint.signer();
                if !busy.insert(node) {
                    // The next checkpoint of this node will be witnessed instead.
                    continue;
                }
                let worker = Arc::clone(&worker);
                running.spawn(async move {
                    let observation = worker.witness.observe(checkpoint, witness::Source::Gossip).await;
                    debug!(%node, ?observation, "checkpoint witnessed");
                    node
                });
            }
        });
        let dispatcher = Arc::clone(&inner);
        let cancel = parts.cancel;
        let mut events = parts.events;
        tasks.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => break,
                    event = events.recv() => event,
                };
                match event {
                    None => break,
                    Some(LedgerEvent::Request(request)) => server.spawn(request),
                    Some(LedgerEvent::Checkpoint(checkpoint)) => {
                        if witness_queue.try_send(checkpoint).is_err() {
                            debug!("witness queue full; checkpoint dropped");
                        }
                    }
                    Some(LedgerEvent::Equivocation { node, proof }) => {
                        dispatcher.witness.record_equivocation(node, *proof).await;
                    }
                }
            }
        });
        Transparency { inner }
    }

    /// The latest checkpoint this node published.
    pub fn latest(&self) -> Option<SignedCheckpoint> {
        self.inner.latest.borrow().clone()
    }

    /// Waits until a checkpoint covering at least `size` entries is published.
    pub async fn wait_for_checkpoint(&self, size: u64) -> Option<SignedCheckpoint> {
        let mut latest = self.inner.latest.clone();
        latest
            .wait_for(|latest| latest.as_ref().is_some_and(|c| c.size() >= size))
            .await
            .ok()
            .and_then(|latest| latest.clone())
    }

    /// The checkpoints held for other nodes.
    pub fn witnessed(&self) -> Vec<Witnessed> {
        self.inner.witness.witnessed()
    }

    /// The equivocation proofs found or received.
    pub fn equivocations(&self) -> Vec<EquivocationRecord> {
        self.inner.witness.equivocations()
    }

    pub fn has_equivocated(&self, node: &NodeId) -> bool {
        self.inner.witness.has_equivocated(node)
    }

    /// Audits `peer`'s ledger against this node's (see the `audit` module docs).
    pub async fn audit(&self, peer: NodeId) -> Result<AuditReport, AuditError> {
        audit::Auditor {
            ledger: &self.inner.ledger,
            network: &self.inner.network,
            witness: &self.inner.witness,
        }
        .audit(peer)
        .await
    }
}
