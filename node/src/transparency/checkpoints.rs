//! This node's own checkpoints: the start-up check against the last one published, and the
//! publisher task that signs new ones after the entries they cover are durable.

use std::time::Duration;

use suanli_protocol::checkpoint::{Checkpoint, SignedCheckpoint};
use suanli_protocol::wire::GossipMessage;
use suanli_protocol::{Keypair, NodeId};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::LedgerConfig;
use crate::data_dir::DataDir;
use crate::ledger::{LedgerHandle, Store};
use crate::network::NetworkHandle;

/// How often the latest checkpoint is gossiped again, for nodes that joined since. (Gossipsub
/// drops a re-publication of identical bytes while it remembers the message, about a minute.)
const REPUBLISH_INTERVAL: Duration = Duration::from_secs(30);
/// Least time between two checkpoints triggered by the entry count, which bounds checkpoint gossip
/// to one message per node per second however busy its ledger is.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Why the node must not start on its ledger.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "the ledger does not extend the checkpoint this node published (size {size}, file \
         {path}): {detail}. Its history was rewritten or lost; refusing to start. Restore the \
         data directory from a backup. Starting a new ledger instead (moving db/ and the \
         checkpoint file aside) is visible to every peer that holds the old checkpoint, as an \
         equivocation"
    )]
    Rewritten {
        path: String,
        size: u64,
        detail: String,
    },
    #[error("checkpoint file {path}: {detail}")]
    Unreadable { path: String, detail: String },
}

/// Loads the last checkpoint this node published and checks that the ledger extends it: at least
/// as many entries, and the same tree root at the checkpoint's size. Run before anything can
/// append.
pub fn check_published(
    data_dir: &DataDir,
    ledger: &Store,
) -> Result<Option<SignedCheckpoint>, CheckpointError> {
    let path = data_dir.checkpoint_path().display().to_string();
    let note = data_dir
        .load_checkpoint_note()
        .map_err(|error| CheckpointError::Unreadable {
            path: path.clone(),
            detail: error.to_string(),
        })?;
    let Some(note) = note else {
        return Ok(None);
    };
    let published = Checkpoint::parse_and_verify(&note, ledger.owner()).map_err(|error| {
        CheckpointError::Unreadable {
            path: path.clone(),
            detail: format!("not a checkpoint signed by this node: {error}"),
        }
    })?;
    let rewritten = |detail: String| CheckpointError::Rewritten {
        path: path.clone(),
        size: published.size(),
        detail,
    };
    let size = ledger.head().size;
    if size < published.size() {
        return Err(rewritten(format!("the ledger holds only {size} entries")));
    }
    let root = ledger
        .tree_root(published.size())
        .map_err(|error| rewritten(error.to_string()))?;
    if root != published.root() {
        return Err(rewritten(format!(
            "its first {} entries hash to root {root}, the checkpoint says {}",
            published.size(),
            published.root()
        )));
    }
    Ok(Some(published))
}

/// Signs and publishes checkpoints: every `checkpoint_every_entries` new entries (at most one
/// per second), or after `checkpoint_interval_secs` when any entry was appended. Order: the entries are durable (the
/// ledger's head only moves after its barrier) → sign → write the checkpoint file durably →
/// only then announce it (API, ledger sync, gossip). A checkpoint that could not be saved is
/// not announced.
pub(super) struct Publisher {
    pub keypair: Keypair,
    pub ledger: LedgerHandle,
    pub network: NetworkHandle,
    pub data_dir: DataDir,
    pub config: LedgerConfig,
    pub latest: watch::Sender<Option<SignedCheckpoint>>,
}

impl Publisher {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut head = self.ledger.watch_head();
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.config.checkpoint_interval_secs));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut republish =
            tokio::time::interval_at(Instant::now() + REPUBLISH_INTERVAL, REPUBLISH_INTERVAL);
        republish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = head.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let size = head.borrow_and_update().size;
                    let due = self.published_size().saturating_add(self.config.checkpoint_every_entries);
                    if size >= due && last.elapsed() >= MIN_INTERVAL {
                        self.publish(size).await;
                        last = Instant::now();
                    }
                }
                _ = tick.tick() => {
                    let size = self.ledger.head().size;
                    let current = self.latest.borrow().as_ref().map(SignedCheckpoint::size);
                    if current != Some(size) {
                        self.publish(size).await;
                        last = Instant::now();
                    }
                }
                _ = republish.tick() => self.gossip().await,
            }
        }
        debug!("checkpoint publisher stopped");
    }

    fn published_size(&self) -> u64 {
        self.latest
            .borrow()
            .as_ref()
            .map_or(0, SignedCheckpoint::size)
    }

    async fn publish(&mut self, size: u64) {
        let node: NodeId = self.keypair.node_id();
        let root = match self.ledger.tree_root(size) {
            Ok(root) => root,
            Err(error) => {
                error!(%error, size, "cannot compute the tree root for a checkpoint");
                return;
            }
        };
        let signed = match Checkpoint::new(node, size, root).sign(&self.keypair) {
            Ok(signed) => signed,
            Err(error) => {
                error!(%error, "cannot sign a checkpoint");
                return;
            }
        };
        let data_dir = self.data_dir.clone();
        let note = signed.note().to_owned();
        let saved = tokio::task::spawn_blocking(move || data_dir.save_checkpoint_note(&note)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                error!(%error, size, "checkpoint not saved; not published");
                return;
            }
            Err(error) => {
                error!(%error, "checkpoint writer failed");
                return;
            }
        }
        info!(size, %root, "checkpoint published");
        self.latest.send_replace(Some(signed));
        self.gossip().await;
    }

    async fn gossip(&self) {
        let Some(note) = self
            .latest
            .borrow()
            .as_ref()
            .map(|latest| latest.note().to_owned())
        else {
            return;
        };
        if self
            .network
            .publish_checkpoint_topic(&GossipMessage::Checkpoint { note })
            .await
            .is_err()
        {
            warn!("network stopped; checkpoint not gossiped");
        }
    }
}
