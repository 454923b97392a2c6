//! The network: the only module that names libp2p types.
//!
//! One task, the [`EventLoop`](event_loop::EventLoop), owns the libp2p `Swarm`. Everything else
//! holds a cloneable [`NetworkHandle`] that sends a [`Command`] with a oneshot reply over a bounded
//! channel.
//!
//! ```text
//!   API / node ──Command──▶ EventLoop (owns Swarm) ──valid adverts──▶ MeshView
//!                             │  ▲
//!           gossip, kad,      ▼  │  swarm events
//!           identify, ping   libp2p
//! ```
//!
//! What it does: listens on TCP and QUIC; joins through bootstrap peers, peers remembered in the
//! data dir, Kademlia (server mode) and optionally mDNS; keeps up to `target_peers` outbound
//! connections and re-dials lost peers with exponential backoff; publishes this node's signed
//! capacity advert every `advert_interval` and when a peer subscribes; validates every advert it
//! receives (signature, sender = gossip source, sizes, TTL, clock skew) before it enters the
//! [`MeshView`](crate::mesh::MeshView), and reports invalid ones to gossipsub, which lowers the
//! sender's score.

mod behaviour;
mod event_loop;
mod peers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use behaviour::{IDENTIFY_PROTOCOL, advert_topic, gossipsub_config, peer_score};

use crate::capacity::Capacity;
use crate::config::CheckedConfig;
use crate::data_dir::DataDir;
use crate::mesh::MeshView;
use suanli_protocol::Keypair;

/// Capacity of the command channel; senders wait when it is full.
const COMMAND_QUEUE: usize = 64;

/// A connected peer, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    pub node_id: String,
    pub addrs: Vec<String>,
    pub agent_version: Option<String>,
    pub connections: u32,
}

/// Requests to the network task.
#[derive(Debug)]
pub enum Command {
    /// The currently connected peers.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// The addresses the node listens on.
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// Publish this node's advert now.
    PublishAdvert(oneshot::Sender<()>),
}

/// The network task stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the network task has stopped")]
pub struct NetworkStopped;

/// Counters of received adverts by verdict, shared by the network task (writer) and readers.
#[derive(Debug, Default)]
pub struct GossipCounters {
    accepted: AtomicU64,
    ignored: AtomicU64,
    rejected: AtomicU64,
}

/// A snapshot of [`GossipCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GossipStats {
    /// Valid and newer than the advert held: stored and forwarded.
    pub accepted: u64,
    /// Valid but not newer (or the table is full): neither stored nor forwarded.
    pub ignored: u64,
    /// Invalid: dropped, logged, and the sender penalised.
    pub rejected: u64,
}

impl GossipCounters {
    fn count(&self, verdict: &libp2p::gossipsub::MessageAcceptance) {
        let counter = match verdict {
            libp2p::gossipsub::MessageAcceptance::Accept => &self.accepted,
            libp2p::gossipsub::MessageAcceptance::Ignore => &self.ignored,
            libp2p::gossipsub::MessageAcceptance::Reject => &self.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> GossipStats {
        GossipStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// A cloneable handle on the network task.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<GossipCounters>,
}

impl NetworkHandle {
    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkStopped> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NetworkStopped)?;
        answer.await.map_err(|_| NetworkStopped)
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetworkStopped> {
        self.request(Command::Peers).await
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkStopped> {
        self.request(Command::ListenAddrs).await
    }

    pub async fn publish_advert(&self) -> Result<(), NetworkStopped> {
        self.request(Command::PublishAdvert).await
    }

    /// How many received adverts were accepted, ignored and rejected so far.
    pub fn gossip_stats(&self) -> GossipStats {
        self.counters.snapshot()
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] behaviour::BuildError),
    #[error("listen on {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
    #[error("no listen address came up within {0:?}")]
    ListenTimeout(Duration),
}

/// What the network needs to start.
#[derive(Debug)]
pub struct NetworkParts {
    pub config: CheckedConfig,
    pub keypair: Keypair,
    pub capacity: Capacity,
    pub mesh: MeshView,
    pub data_dir: DataDir,
    pub cancel: CancellationToken,
}

/// Starts listening, then spawns the network task. Returns once every listener is up, with the
/// addresses actually bound (port 0 resolved).
pub async fn start(
    parts: NetworkParts,
) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>, Vec<Multiaddr>), StartError> {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let counters = Arc::new(GossipCounters::default());
    let mut event_loop = event_loop::EventLoop::new(parts, inbox, counters.clone())?;
    let listen_addrs = event_loop.listen().await?;
    let task = tokio::spawn(event_loop.run());
    Ok((NetworkHandle { commands, counters }, task, listen_addrs))
}
