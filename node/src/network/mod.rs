//! The network: the only module that names libp2p types.
//!
//! One task, the `EventLoop`, owns the libp2p `Swarm`. Everything else
//! holds a cloneable [`NetworkHandle`] that sends a [`Command`] with a oneshot reply over a bounded
//! channel.
//!
//! ```text
//!   API / node ──Command──▶ EventLoop (owns Swarm) ──valid adverts──▶ MeshView
//!                             │  ▲
//!     gossip, view sync,      ▼  │  swarm events
//!           identify, ping   libp2p
//! ```
//!
//! What it does: listens on TCP and QUIC (or, for simulations, the in-process [`memory`]
//! transport); joins through bootstrap peers, peers remembered in the data dir, the capacity view
//! (pulled from the first peer, then dialled at the adverts' addresses) and optionally mDNS; keeps
//! about `target_peers` peers and never more than `max_connections` connections (see
//! [`peer_manager`]); re-dials lost peers with exponential backoff while below its target;
//! publishes this node's signed capacity advert every `advert_interval`, on load changes, and when
//! a peer subscribes while its current advert has reached no peer; validates every advert it
//! receives (signature, sizes, TTL, clock skew) before it enters the
//! [`MeshView`], and reports invalid ones to gossipsub, which lowers the
//! sender's score.
//!
//! Dead connections: every connection is pinged each `ping_interval`; one that has answered no
//! ping for `ping_interval + ping_timeout` (or whose ping fails outright) is closed, and its peer
//! leaves the peer book's live set at once, before the close completes. [`Command::Peers`] and
//! [`Command::IsConnected`] answer from that live set, never from the Swarm's view (which keeps
//! a connection until its close completes, possibly behind a stalled socket). A peer lost so
//! is re-dialled (below the target) within a second, then at least every `ping_interval` for five minutes, then
//! with backoff up to a minute (the schedule is in the peer book's module doc). QUIC connections
//! also time out by themselves after the same silence.
//!
//! Two request-response protocols carry what must arrive: `/suanli/market/1` (inbound requests
//! go to the market as [`NetworkEvent`]s) and `/suanli/ledger/1` (inbound requests go to the
//! transparency module as [`LedgerEvent`]s). The checkpoint topic carries signed ledger
//! checkpoints (checked here: size, signature, their node must hold a live advert) and equivocation proofs (verified here); both reach the transparency module as
//! [`LedgerEvent`]s. A third, `/suanli/view/1`, is the network's own: a joining node pulls the
//! capacity view from its first suanli peer, page by page, verifying every advert as if
//! gossiped, so that it sees the whole mesh within seconds rather than after every node's next
//! re-publication.
//!
//! Bounded connections: the node keeps `target_peers` peers and never holds more than
//! `max_connections` connections; the [`peer_manager`] decides whom to let go of.

mod behaviour;
mod event_loop;
pub mod floor;
mod frame;
mod frame_codec;
pub mod memory;
pub mod peer_manager;
mod peers;
pub mod tokens;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use behaviour::{
    IDENTIFY_PROTOCOL, advert_topic, checkpoint_topic, gossipsub_base, gossipsub_config,
    new_gossipsub, peer_score,
};
pub use frame_codec::FrameCodec;

use crate::capacity::Capacity;
use crate::config::CheckedConfig;
use crate::data_dir::DataDir;
use crate::mesh::MeshView;
use suanli_protocol::checkpoint::{Equivocation, SignedCheckpoint};
use suanli_protocol::wire::{
    ErrorCode, GossipMessage, LedgerRequest, LedgerResponse, MarketRequest, MarketResponse,
    WireError, WireMessage,
};
use suanli_protocol::{Keypair, NodeId};

/// Capacity of the command channel; senders wait when it is full.
const COMMAND_QUEUE: usize = 256;
/// Capacity of the event channel to the market; when it is full, inbound requests are answered
/// "busy" at once rather than queued without bound.
pub const EVENT_QUEUE: usize = 1024;

/// A request from a peer, waiting for [`NetworkHandle::respond`] (market) or
/// [`NetworkHandle::respond_ledger`] (ledger sync).
#[derive(Debug)]
pub struct InboundRequest<R = MarketRequest> {
    /// Pass back to the respond call.
    pub id: u64,
    /// The authenticated sender (from the connection's noise/TLS handshake).
    pub peer: NodeId,
    /// The IP address its latest connection came from (admission shares one credit line among
    /// new identities behind one address).
    pub ip: Option<std::net::IpAddr>,
    pub request: R,
}

/// What the network tells the market.
#[derive(Debug)]
pub enum NetworkEvent {
    Market(InboundRequest),
}

/// What the network tells the transparency module (checkpoints, witnessing, ledger sync).
#[derive(Debug)]
pub enum LedgerEvent {
    /// A `/suanli/ledger/1` request (bounds not yet checked: see [`LedgerRequest::validate`]).
    Request(InboundRequest<LedgerRequest>),
    /// A checkpoint gossiped by the node it belongs to; its signature is verified.
    Checkpoint(SignedCheckpoint),
    /// A gossiped equivocation proof that verified, against `node`.
    Equivocation {
        node: NodeId,
        proof: Box<Equivocation>,
    },
}

/// The request-response protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Market,
    Ledger,
    /// Answered by the network task itself (see `EventLoop::sync_view`).
    View,
}

/// Why an outbound request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("no answer in time")]
    Timeout,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error(transparent)]
    Stopped(#[from] NetworkStopped),
}

/// A connected peer, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PeerInfo {
    pub node_id: String,
    pub addrs: Vec<String>,
    pub agent_version: Option<String>,
    pub connections: u32,
    /// Its standing in this node's ledger, and why (filled in by the API, not the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing: Option<crate::reputation::Standing>,
}

/// Requests to the network task.
#[derive(Debug)]
pub enum Command {
    /// The peers holding a live connection (one not closed, and not silent past the ping
    /// bound).
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// The addresses the node listens on.
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    /// Publish this node's advert now.
    PublishAdvert(oneshot::Sender<()>),
    /// Send an encoded request; the reply gets the raw response bytes.
    SendRequest {
        protocol: Protocol,
        peer: NodeId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
    /// Answer an [`InboundRequest`] with an encoded response.
    Respond { id: u64, bytes: Vec<u8> },
    /// Publish an encoded [`GossipMessage`] on the checkpoint topic.
    PublishCheckpointTopic(Vec<u8>),
    /// Whether the peer holds a live connection (as for [`Command::Peers`]).
    IsConnected(NodeId, oneshot::Sender<bool>),
    /// How many peers this node's advert-topic gossip mesh holds, and how many peers are
    /// subscribed to the topic.
    GossipMesh(oneshot::Sender<(usize, usize)>),
    /// Counts a strike against a peer that sent something invalid (banned after a few).
    Penalize { peer: NodeId, reason: String },
    /// Dial the peer with every address known for it (peer book, its advert) unless it is
    /// connected.
    Connect(NodeId),
    /// Dial the peer as [`Command::Connect`] does, and answer once it holds a live connection
    /// (at once if it does), or with why not.
    Dial(NodeId, oneshot::Sender<Result<(), String>>),
    /// Connection counts and what the peer manager did.
    ConnectionStats(oneshot::Sender<ConnectionStats>),
}

/// Connection counts and what the peer manager did, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConnectionStats {
    /// Peers holding a live connection.
    pub peers: usize,
    /// Connections established now (the Swarm's count, closing ones included).
    pub established: usize,
    pub established_incoming: usize,
    /// The most connections ever established at once since the node started.
    pub peak_established: usize,
    /// Peers let go of because the node held more than its target.
    pub pruned: u64,
    /// The configured target and maximum.
    pub target_peers: usize,
    pub max_connections: usize,
}

/// Peers something on this node needs connected (a contract's counterparty, a token stream's
/// peer): the peer manager never lets go of them, and re-dials them when they are lost even
/// above its target. Shared by the handles (writers) and the network task (reader).
#[derive(Debug, Default)]
pub struct PeerHolds(Mutex<HashMap<PeerId, usize>>);

impl PeerHolds {
    // Every critical section is one map update, so a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, usize>> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn is_held(&self, peer: &PeerId) -> bool {
        self.lock().contains_key(peer)
    }
}

/// Keeps a peer [held](PeerHolds) until dropped.
#[derive(Debug)]
pub struct PeerHold {
    holds: Arc<PeerHolds>,
    peer: PeerId,
}

impl Drop for PeerHold {
    fn drop(&mut self) {
        let mut holds = self.holds.lock();
        if let Some(count) = holds.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                holds.remove(&self.peer);
            }
        }
    }
}

/// The network task stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the network task has stopped")]
pub struct NetworkStopped;

/// Counters of received gossip messages (adverts, checkpoints, equivocation proofs) by verdict,
/// shared by the network task (writer) and readers.
#[derive(Debug, Default)]
pub struct GossipCounters {
    accepted: AtomicU64,
    ignored: AtomicU64,
    rejected: AtomicU64,
    received_bytes: AtomicU64,
    published: AtomicU64,
    published_bytes: AtomicU64,
}

/// A snapshot of [`GossipCounters`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct GossipStats {
    /// Valid and newer than the advert held: stored and forwarded.
    pub accepted: u64,
    /// Valid but not newer (or the table is full): neither stored nor forwarded.
    pub ignored: u64,
    /// Invalid: dropped, logged, and the sender penalised.
    pub rejected: u64,
    /// Bytes of the messages received (whatever their verdict).
    #[serde(default)]
    pub received_bytes: u64,
    /// Messages this node published (its adverts and checkpoint-topic messages).
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub published_bytes: u64,
}

impl GossipCounters {
    fn count_published(&self, bytes: usize) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.published_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count(&self, verdict: &libp2p::gossipsub::MessageAcceptance, bytes: usize) {
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
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
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            published_bytes: self.published_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A cloneable handle on the network task.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<GossipCounters>,
    holds: Arc<PeerHolds>,
    streams: libp2p_stream::Control,
}

impl std::fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkHandle").finish_non_exhaustive()
    }
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

    async fn send<Req: WireMessage, Resp: WireMessage>(
        &self,
        protocol: Protocol,
        peer: NodeId,
        request: &Req,
    ) -> Result<Resp, RequestError> {
        let bytes = request
            .to_bytes()
            .map_err(|error| RequestError::TooLarge(error.to_string()))?;
        let answer = self
            .request(|reply| Command::SendRequest {
                protocol,
                peer,
                bytes,
                reply,
            })
            .await??;
        Resp::from_bytes(&answer).map_err(|error| RequestError::Malformed(error.to_string()))
    }

    /// Sends a market request to `peer` and waits for its response (dialling when needed).
    pub async fn market_request(
        &self,
        peer: NodeId,
        request: &MarketRequest,
    ) -> Result<MarketResponse, RequestError> {
        self.send(Protocol::Market, peer, request).await
    }

    /// Sends a ledger-sync request to `peer` and waits for its response (dialling when needed).
    pub async fn ledger_request(
        &self,
        peer: NodeId,
        request: &LedgerRequest,
    ) -> Result<LedgerResponse, RequestError> {
        self.send(Protocol::Ledger, peer, request).await
    }

    async fn respond_with<Resp: WireMessage>(
        &self,
        id: u64,
        response: &Resp,
        error: fn(WireError) -> Resp,
    ) -> Result<(), NetworkStopped> {
        // A response that cannot be encoded becomes an error answer.
        let bytes = response.to_bytes().or_else(|failure| {
            error(WireError::new(ErrorCode::Internal, failure.to_string())).to_bytes()
        });
        let bytes = bytes.map_err(|_| NetworkStopped)?;
        self.commands
            .send(Command::Respond { id, bytes })
            .await
            .map_err(|_| NetworkStopped)
    }

    /// Answers an inbound market request.
    pub async fn respond(&self, id: u64, response: &MarketResponse) -> Result<(), NetworkStopped> {
        self.respond_with(id, response, MarketResponse::Error).await
    }

    /// Answers an inbound ledger-sync request.
    pub async fn respond_ledger(
        &self,
        id: u64,
        response: &LedgerResponse,
    ) -> Result<(), NetworkStopped> {
        self.respond_with(id, response, LedgerResponse::Error).await
    }

    /// Publishes a checkpoint or an equivocation proof on the checkpoint topic (best effort:
    /// gossip is never relied on for delivery).
    pub async fn publish_checkpoint_topic(
        &self,
        message: &GossipMessage,
    ) -> Result<(), NetworkStopped> {
        let Ok(bytes) = message.to_bytes() else {
            tracing::warn!("checkpoint-topic message too large; not published");
            return Ok(());
        };
        self.commands
            .send(Command::PublishCheckpointTopic(bytes))
            .await
            .map_err(|_| NetworkStopped)
    }

    /// Reports a peer that sent an invalid document; repeated offences get it disconnected and
    /// ignored for a while.
    pub async fn penalize(&self, peer: NodeId, reason: String) -> Result<(), NetworkStopped> {
        self.commands
            .send(Command::Penalize { peer, reason })
            .await
            .map_err(|_| NetworkStopped)
    }

    /// (mesh peers, subscribed peers) on the advert topic.
    pub async fn gossip_mesh(&self) -> Result<(usize, usize), NetworkStopped> {
        self.request(Command::GossipMesh).await
    }

    /// Connection counts and what the peer manager did.
    pub async fn connection_stats(&self) -> Result<ConnectionStats, NetworkStopped> {
        self.request(Command::ConnectionStats).await
    }

    /// Keeps `peer` connected (never pruned, re-dialled when lost) until the hold is dropped.
    pub fn hold(&self, peer: NodeId) -> PeerHold {
        let peer = peer.to_peer_id();
        *self.holds.lock().entry(peer).or_default() += 1;
        PeerHold {
            holds: self.holds.clone(),
            peer,
        }
    }

    /// Dials `peer` with every address known for it unless it is connected (requests do this
    /// by themselves).
    pub async fn connect(&self, peer: NodeId) -> Result<(), NetworkStopped> {
        self.commands
            .send(Command::Connect(peer))
            .await
            .map_err(|_| NetworkStopped)
    }

    /// Dials `peer` unless it holds a live connection, and waits until it does; the error says
    /// why it does not (the dial failed, or could not start).
    pub async fn dial(&self, peer: NodeId) -> Result<(), RequestError> {
        self.request(|reply| Command::Dial(peer, reply))
            .await
            .map_err(|_| RequestError::Unreachable("the network stopped".into()))?
            .map_err(RequestError::Unreachable)
    }

    pub async fn is_connected(&self, peer: NodeId) -> Result<bool, NetworkStopped> {
        self.request(|reply| Command::IsConnected(peer, reply))
            .await
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
    pub events: mpsc::Sender<NetworkEvent>,
    /// Where ledger-sync requests, checkpoints and equivocation proofs go.
    pub ledger_events: mpsc::Sender<LedgerEvent>,
    /// The provider's load, for adverts; a change triggers a re-publication.
    pub load: tokio::sync::watch::Receiver<crate::capacity::Load>,
    /// The cluster this node fronts, for adverts; a change triggers a re-publication.
    pub cluster: tokio::sync::watch::Receiver<Option<suanli_protocol::ClusterInfo>>,
    pub cancel: CancellationToken,
}

/// Starts listening, then spawns the network task. Returns once every listener is up, with the
/// addresses actually bound (port 0 resolved).
pub async fn start(
    parts: NetworkParts,
) -> Result<(NetworkHandle, tokio::task::JoinHandle<()>, Vec<Multiaddr>), StartError> {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let counters = Arc::new(GossipCounters::default());
    let holds = Arc::new(PeerHolds::default());
    let node_id = parts.keypair.node_id();
    let mut event_loop = event_loop::EventLoop::new(parts, inbox, counters.clone(), holds.clone())?;
    let listen_addrs = event_loop.listen().await?;
    let streams = event_loop.stream_control();
    // Every log line of the task names its node (many run in one process in tests and benches).
    let span = tracing::debug_span!("network", node = %node_id);
    let task = tokio::spawn(tracing::Instrument::instrument(event_loop.run(), span));
    let handle = NetworkHandle {
        commands,
        counters,
        holds,
        streams,
    };
    Ok((handle, task, listen_addrs))
}
