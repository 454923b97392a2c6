//! The network task: owns the Swarm and reacts to commands, swarm events and timers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use libp2p::core::transport::ListenerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, ping};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use suanli_protocol::advert::{MAX_ADDR_BYTES, MAX_LISTEN_ADDRS};
use suanli_protocol::checkpoint::SignedCheckpoint;
use suanli_protocol::wire::{
    ErrorCode, GossipMessage, LedgerRequest, LedgerResponse, MAX_GOSSIPED_NOTE_BYTES,
    MarketRequest, MarketResponse, VIEW_PAGE_BUDGET, ViewPage, ViewRequest, WireError, WireMessage,
};
use suanli_protocol::{CapacityAdvert, NodeId, Signed};

use super::behaviour::{
    Behaviour, BehaviourEvent, IDENTIFY_PROTOCOL, MESH_N, advert_topic, build_swarm,
    checkpoint_topic,
};
use super::peer_manager::{GRACE, PeerState, plan_prune};
use super::peers::{PeerBook, is_dialable, without_peer_id};
use super::{
    Command, ConnectionStats, GossipCounters, InboundRequest, LedgerEvent, NetworkEvent,
    NetworkParts, PeerHolds, Protocol, RequestError, StartError,
};
use crate::clock::now_ms;
use crate::mesh::Offered;

/// How often timers (re-dials, pending publications) are checked.
const TICK: Duration = Duration::from_millis(250);
/// How late a tick may be before the lateness counts as a stall of this loop.
const STALL_TOLERANCE: Duration = Duration::from_secs(1);
/// Swarm events handled before a tick judges silence (bounded, so a flood cannot stall it).
const MAX_EVENTS_BEFORE_TICK: usize = 1024;
/// How often strikes decay, and a node without peers re-dials its anonymous bootstrap peers.
const SLOW_INTERVAL: Duration = Duration::from_secs(30);
/// How often the peer manager lets go of peers above the target.
const HEARTBEAT: Duration = Duration::from_secs(1);
const SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// Least time between two advert publications triggered by new subscribers.
const PUBLISH_DEBOUNCE: Duration = Duration::from_millis(300);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most inbound requests waiting for an answer; beyond it new ones are answered "busy".
const MAX_PENDING_INBOUND: usize = 4096;
/// Of those, most ledger-sync requests (their answers are large; the market keeps the rest).
const MAX_PENDING_LEDGER: usize = 256;
/// Malformed messages a peer may send before it is disconnected and ignored for a while.
const MAX_STRIKES: u32 = 3;
const BAN: Duration = Duration::from_secs(300);

type OutboundReply = tokio::sync::oneshot::Sender<Result<Vec<u8>, RequestError>>;
type DialReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Callers that may wait for one peer's dial ([`Command::Dial`]); one more is refused at once.
const MAX_DIAL_WAITERS_PER_PEER: usize = 64;
/// Peers whose dials may be waited for at once; a caller for one more is refused at once.
const MAX_DIAL_WAITING_PEERS: usize = 1024;

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    inbox: mpsc::Receiver<Command>,
    parts: NetworkParts,
    node_id: NodeId,
    peers: PeerBook,
    /// A connection that answered no ping for this long is closed as dead.
    silence_limit: Duration,
    listen_addrs: Vec<Multiaddr>,
    /// Bootstrap addresses without a peer id: dialled while the node has no connection.
    anonymous_bootstrap: Vec<Multiaddr>,
    advert_seq: u64,
    last_publish: Option<Instant>,
    /// When the last tick ran (a stall of this loop shows as a late tick).
    last_tick: Instant,
    publish_pending: bool,
    /// Whether the current advert was handed to at least one subscribed peer (gossip takes it
    /// on from there; until then every new subscriber triggers a re-publication).
    advert_delivered: bool,
    view_sync: ViewSync,
    counters: Arc<GossipCounters>,
    holds: Arc<PeerHolds>,
    /// Tie-break of the peer manager, so that nodes do not all let go of the same peer.
    salt: u64,
    peak_established: usize,
    pruned: u64,
    outbound: HashMap<(Protocol, OutboundRequestId), (PeerId, OutboundReply)>,
    inbound: HashMap<u64, (Protocol, PeerId, ResponseChannel<Vec<u8>>)>,
    pending_ledger: usize,
    next_inbound_id: u64,
    strikes: HashMap<PeerId, u32>,
    banned_until: HashMap<PeerId, Instant>,
    /// The IP address of each connected peer's latest connection (bounded by the connections).
    peer_ips: HashMap<PeerId, std::net::IpAddr>,
    /// Who waits for a peer to be connected ([`Command::Dial`]): told when a connection comes
    /// up, the dial fails, or the peer's last connection closes.
    dial_waiters: HashMap<PeerId, Vec<DialReply>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    pub fn new(
        parts: NetworkParts,
        inbox: mpsc::Receiver<Command>,
        counters: Arc<GossipCounters>,
        holds: Arc<PeerHolds>,
    ) -> Result<EventLoop, StartError> {
        let mut swarm = build_swarm(parts.keypair.to_libp2p(), &parts.config)?;
        for topic in [advert_topic(), checkpoint_topic()] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&topic)
                .map_err(|error| StartError::Listen {
                    addr: Multiaddr::empty(),
                    message: format!("subscribe to {topic}: {error}"),
                })?;
        }
        let mut peers = PeerBook::from_persisted(
            &parts.data_dir.load_peers(),
            parts.config.ping_interval,
            Instant::now(),
        );
        // A ping is sent one interval after the last answer and may take the timeout.
        let silence_limit = parts.config.ping_interval + parts.config.ping_timeout;
        let mut anonymous_bootstrap = Vec::new();
        for addr in &parts.config.bootstrap {
            match peer_id_of(addr) {
                Some(peer_id) => {
                    peers.learn(peer_id, [addr.clone()]);
                    peers.dial_soon(&peer_id, Instant::now());
                }
                None => anonymous_bootstrap.push(addr.clone()),
            }
        }
        let node_id = parts.keypair.node_id();
        let salt = node_id
            .to_peer_id()
            .to_bytes()
            .iter()
            .fold(0u64, |salt, byte| salt.rotate_left(8) ^ u64::from(*byte));
        Ok(EventLoop {
            swarm,
            inbox,
            parts,
            node_id,
            peers,
            silence_limit,
            listen_addrs: Vec::new(),
            anonymous_bootstrap,
            advert_seq: 0,
            last_publish: None,
            last_tick: Instant::now(),
            publish_pending: false,
            advert_delivered: false,
            view_sync: ViewSync::Wanted,
            counters,
            holds,
            salt,
            peak_established: 0,
            pruned: 0,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            pending_ledger: 0,
            next_inbound_id: 0,
            strikes: HashMap::new(),
            banned_until: HashMap::new(),
            peer_ips: HashMap::new(),
            dial_waiters: HashMap::new(),
        })
    }

    /// Opens every configured listener and waits until each reports an address.
    pub async fn listen(&mut self) -> Result<Vec<Multiaddr>, StartError> {
        let mut pending: HashSet<ListenerId> = HashSet::new();
        for addr in self.parts.config.listen.clone() {
            let id = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|error| StartError::Listen {
                    addr,
                    message: error.to_string(),
                })?;
            pending.insert(id);
        }
        let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
        tokio::pin!(deadline);
        while !pending.is_empty() {
            tokio::select! {
                _ = &mut deadline => return Err(StartError::ListenTimeout(LISTEN_TIMEOUT)),
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { listener_id, address } => {
                        pending.remove(&listener_id);
                        self.add_listen_addr(address);
                    }
                    SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                        return Err(StartError::Listen {
                            addr: addresses.into_iter().next().unwrap_or_else(Multiaddr::empty),
                            message: format!("{reason:?}"),
                        });
                    }
                    SwarmEvent::ListenerError { error, .. } => {
                        return Err(StartError::Listen { addr: Multiaddr::empty(), message: error.to_string() });
                    }
                    other => self.handle_swarm_event(other),
                },
            }
        }
        Ok(self.listen_addrs.clone())
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut advert = tokio::time::interval(self.parts.config.advert_interval);
        advert.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut slow = tokio::time::interval(SLOW_INTERVAL);
        slow.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut save = tokio::time::interval(SAVE_INTERVAL);
        save.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.dial_anonymous_bootstrap();
        let cancel = self.parts.cancel.clone();
        let mut load = self.parts.load.clone();
        let mut load_open = true;
        let mut cluster = self.parts.cluster.clone();
        let mut cluster_open = true;
        loop {
            // Not `biased`: under load both commands and swarm events are always ready, and a
            // fixed order would starve one of them. Cancellation is still noticed within a turn.
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = load.changed(), if load_open => {
                    // Re-publish on change, debounced by the tick. A closed channel means the
                    // market is gone: keep advertising the last load.
                    load_open = changed.is_ok();
                    self.publish_pending |= load_open;
                }
                changed = cluster.changed(), if cluster_open => {
                    cluster_open = changed.is_ok();
                    self.publish_pending |= cluster_open;
                }
                command = self.inbox.recv() => {
                    let Some(command) = command else { break };
                    self.handle_command(command);
                }
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = advert.tick() => self.publish_advert(),
                _ = tick.tick() => {
                    // Silence is judged on what has arrived: events already waiting (answered
                    // pings among them) are handled first.
                    for _ in 0..MAX_EVENTS_BEFORE_TICK {
                        match self.swarm.next().now_or_never() {
                            Some(Some(event)) => self.handle_swarm_event(event),
                            _ => break,
                        }
                    }
                    self.handle_tick();
                }
                _ = slow.tick() => {
                    // Strikes decay: a peer must offend repeatedly within minutes to be banned.
                    self.strikes.retain(|_, strikes| {
                        *strikes = strikes.saturating_sub(1);
                        *strikes > 0
                    });
                    if self.peers.connected_count() == 0 {
                        self.dial_anonymous_bootstrap();
                    }
                }
                _ = heartbeat.tick() => {
                    // Readers skip expired entries themselves; dropping them once a second
                    // keeps the table small without a write lock four times a second.
                    for node in self.parts.mesh.prune(now_ms()) {
                        info!(%node, "advert expired; node left the capacity view");
                    }
                    self.prune_excess();
                    self.fill_from_view();
                }
                _ = save.tick() => self.save_peers(),
            }
        }
        self.peers.take_dirty();
        if let Err(error) = self.parts.data_dir.save_peers(&self.peers.to_persisted()) {
            warn!(%error, "could not save peers on shutdown");
        }
        info!("network stopped");
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let _ = reply.send(self.peers.connected_info());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::PublishAdvert(reply) => {
                self.publish_advert();
                let _ = reply.send(());
            }
            Command::SendRequest {
                protocol,
                peer,
                bytes,
                reply,
            } => {
                let _ = self.connect(peer);
                let peer = peer.to_peer_id();
                let id = self.request_response(protocol).send_request(&peer, bytes);
                self.outbound.insert((protocol, id), (peer, reply));
            }
            Command::Connect(peer) => {
                let _ = self.connect(peer);
            }
            Command::Dial(peer, reply) => self.dial_and_tell(peer, reply),
            Command::ConnectionStats(reply) => {
                let info = self.swarm.network_info();
                let counters = info.connection_counters();
                let _ = reply.send(ConnectionStats {
                    peers: self.peers.connected_count(),
                    established: counters.num_established() as usize,
                    established_incoming: counters.num_established_incoming() as usize,
                    peak_established: self.peak_established,
                    pruned: self.pruned,
                    target_peers: self.parts.config.target_peers as usize,
                    max_connections: self.parts.config.max_connections as usize,
                });
            }
            Command::Respond { id, bytes } => {
                let Some((protocol, _, channel)) = self.inbound.remove(&id) else {
                    return;
                };
                if protocol == Protocol::Ledger {
                    self.pending_ledger -= 1;
                }
                if self
                    .request_response(protocol)
                    .send_response(channel, bytes)
                    .is_err()
                {
                    debug!(id, "response not sent: the requester has gone");
                }
            }
            Command::PublishCheckpointTopic(bytes) => {
                let length = bytes.len();
                match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(checkpoint_topic(), bytes)
                {
                    Ok(_) => {
                        self.counters.count_published(length);
                        debug!("published on the checkpoint topic");
                    }
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        debug!("no subscribed peer for the checkpoint topic yet");
                    }
                    // Content-addressed ids: re-publishing the same checkpoint is a duplicate.
                    Err(gossipsub::PublishError::Duplicate) => {}
                    Err(error) => warn!(%error, "checkpoint-topic message not published"),
                }
            }
            Command::IsConnected(peer, reply) => {
                // The peer book, not the Swarm: a connection being closed as dead still counts
                // in the Swarm until its close completes.
                let _ = reply.send(self.peers.is_connected(&peer.to_peer_id()));
            }
            Command::Penalize { peer, reason } => self.strike(peer.to_peer_id(), &reason),
            Command::GossipMesh(reply) => {
                let topic = advert_topic().hash();
                let gossipsub = &self.swarm.behaviour().gossipsub;
                let mesh = gossipsub.mesh_peers(&topic).count();
                let subscribed = gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&topic))
                    .count();
                let _ = reply.send((mesh, subscribed));
            }
        }
    }

    fn request_response(
        &mut self,
        protocol: Protocol,
    ) -> &mut request_response::Behaviour<super::frame_codec::FrameCodec> {
        let behaviour = self.swarm.behaviour_mut();
        match protocol {
            Protocol::Market => &mut behaviour.market,
            Protocol::Ledger => &mut behaviour.ledger,
            Protocol::View => &mut behaviour.view,
        }
    }

    fn handle_request_response(
        &mut self,
        protocol: Protocol,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        if let request_response::Event::Message {
            peer,
            connection_id,
            ..
        } = &event
        {
            // A message proves its connection alive as well as a ping does, and the peer useful.
            self.peers.answered(peer, *connection_id, Instant::now());
            self.peers.useful(peer, Instant::now());
        }
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.handle_inbound_request(protocol, peer, request, channel),
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, .. },
                ..
            } if protocol == Protocol::View && self.view_sync.is_running(request_id) => {
                let request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                } = event
                else {
                    return;
                };
                self.view_page(peer, &response);
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } if protocol == Protocol::View && self.view_sync.is_running(request_id) => {
                debug!(%peer, %error, "view sync failed; the next suanli peer is asked");
                self.view_sync = ViewSync::Wanted;
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, reply)) = self.outbound.remove(&(protocol, request_id)) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, ?protocol, "request failed");
                if let Some((_, reply)) = self.outbound.remove(&(protocol, request_id)) {
                    let error = match error {
                        request_response::OutboundFailure::Timeout => RequestError::Timeout,
                        other => RequestError::Unreachable(other.to_string()),
                    };
                    let _ = reply.send(Err(error));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // An answer that could not be sent, or a request that timed out (slowness is not
                // struck). An over-long request never gets here: the codec hands it on as the
                // empty request, refused and struck like any malformed one.
                debug!(%peer, %error, ?protocol, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn answer_now(
        &mut self,
        protocol: Protocol,
        channel: ResponseChannel<Vec<u8>>,
        code: ErrorCode,
        message: &str,
    ) {
        let error = WireError::new(code, message);
        let bytes = match protocol {
            Protocol::Market => MarketResponse::Error(error).to_bytes(),
            Protocol::Ledger => LedgerResponse::Error(error).to_bytes(),
            // View sync has no error answer: an empty page.
            Protocol::View => ViewPage {
                adverts: Vec::new(),
                more: false,
            }
            .to_bytes(),
        };
        if let Ok(bytes) = bytes {
            let _ = self
                .request_response(protocol)
                .send_response(channel, bytes);
        }
    }

    fn handle_inbound_request(
        &mut self,
        protocol: Protocol,
        peer: PeerId,
        bytes: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        if self
            .banned_until
            .get(&peer)
            .is_some_and(|until| *until > Instant::now())
        {
            self.answer_now(
                protocol,
                channel,
                ErrorCode::Forbidden,
                "banned for sending malformed messages",
            );
            return;
        }
        let Ok(node) = NodeId::from_peer_id(&peer) else {
            self.answer_now(
                protocol,
                channel,
                ErrorCode::Forbidden,
                "peer id is not an ed25519 node id",
            );
            return;
        };
        if protocol == Protocol::View {
            self.answer_view(peer, &bytes, channel);
            return;
        }
        if self.inbound.len() >= MAX_PENDING_INBOUND
            || (protocol == Protocol::Ledger && self.pending_ledger >= MAX_PENDING_LEDGER)
        {
            self.answer_now(protocol, channel, ErrorCode::Unavailable, "busy");
            return;
        }
        let id = self.next_inbound_id;
        let queued = match protocol {
            Protocol::Market => MarketRequest::from_bytes(&bytes)
                .map(|request| {
                    self.parts
                        .events
                        .try_send(NetworkEvent::Market(InboundRequest {
                            id,
                            peer: node,
                            ip: self.peer_ips.get(&peer).copied(),
                            request,
                        }))
                        .is_ok()
                })
                .map_err(|error| error.to_string()),
            Protocol::Ledger => LedgerRequest::from_bytes(&bytes)
                .map(|request| {
                    self.parts
                        .ledger_events
                        .try_send(LedgerEvent::Request(InboundRequest {
                            id,
                            peer: node,
                            ip: self.peer_ips.get(&peer).copied(),
                            request,
                        }))
                        .is_ok()
                })
                .map_err(|error| error.to_string()),
            Protocol::View => return,
        };
        match queued {
            Ok(true) => {
                self.next_inbound_id += 1;
                self.inbound.insert(id, (protocol, peer, channel));
                if protocol == Protocol::Ledger {
                    self.pending_ledger += 1;
                }
            }
            Ok(false) => self.answer_now(protocol, channel, ErrorCode::Unavailable, "busy"),
            Err(error) => {
                self.strike(peer, &error);
                self.answer_now(protocol, channel, ErrorCode::BadRequest, &error);
            }
        }
    }

    /// Answers a view-sync request from the capacity view, at once.
    fn answer_view(&mut self, peer: PeerId, bytes: &[u8], channel: ResponseChannel<Vec<u8>>) {
        let request = match ViewRequest::from_bytes(bytes) {
            Ok(request) => request,
            Err(error) => {
                self.strike(peer, &error.to_string());
                self.answer_now(Protocol::View, channel, ErrorCode::BadRequest, "");
                return;
            }
        };
        let (adverts, more) =
            self.parts
                .mesh
                .page(request.after.as_ref(), now_ms(), VIEW_PAGE_BUDGET);
        debug!(%peer, adverts = adverts.len(), more, "view page served");
        match (ViewPage { adverts, more }).to_bytes() {
            Ok(bytes) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .view
                    .send_response(channel, bytes);
            }
            Err(error) => warn!(%error, "view page not encoded"),
        }
    }

    /// Asks `peer` (a suanli node) for the page of its capacity view after `after`.
    fn sync_view(&mut self, peer: PeerId, after: Option<NodeId>) {
        let Ok(bytes) = (ViewRequest { after }).to_bytes() else {
            return;
        };
        let id = self.swarm.behaviour_mut().view.send_request(&peer, bytes);
        self.view_sync = ViewSync::Running(id, after);
    }

    /// A page of a peer's capacity view: every advert is checked as if gossiped (signature
    /// checked in one batch); a page with an invalid advert ends the sync and counts against the
    /// peer. Asks for the next page while there is more.
    fn view_page(&mut self, peer: PeerId, bytes: &[u8]) {
        let after = match self.view_sync {
            ViewSync::Running(_, after) => after,
            _ => None,
        };
        self.view_sync = ViewSync::Wanted;
        let page = match ViewPage::from_bytes(bytes) {
            Ok(page) => page,
            Err(error) => {
                self.strike(peer, &format!("view page: {error}"));
                return;
            }
        };
        // Pages must move forward in node-id order, or a peer could keep a node pulling forever.
        let mut previous = after;
        for signed in &page.adverts {
            let node = signed.signer();
            if previous.is_some_and(|previous| node <= previous) {
                self.strike(peer, "view page out of order");
                return;
            }
            previous = Some(node);
        }
        let now = now_ms();
        let mut batch =
            suanli_protocol::signed::SignatureBatch::new(self.parts.keypair.secret_bytes());
        let mut adverts = Vec::with_capacity(page.adverts.len());
        let mut last = None;
        let page_adverts: Vec<_> = page
            .adverts
            .into_iter()
            .inspect(|signed| last = Some(signed.signer()))
            .filter(|signed| !self.parts.mesh.already_holds(signed))
            .collect();
        for signed in &page_adverts {
            match signed.verify_deferred(&mut batch) {
                Ok(advert) => adverts.push(advert),
                Err(error) => {
                    self.strike(peer, &format!("view page: {error}"));
                    return;
                }
            }
        }
        if let Err(index) = batch.verify() {
            self.strike(peer, &format!("view page: advert {index} badly signed"));
            return;
        }
        let mut stored = 0;
        for (signed, advert) in page_adverts.into_iter().zip(adverts) {
            // Expired on the way or not newer: skipped, like a late gossiped advert.
            if advert.validate(now).is_ok()
                && self.parts.mesh.offer(Arc::new(signed), advert, now) == Offered::Stored
            {
                stored += 1;
            }
        }
        debug!(%peer, stored, more = page.more, "view page received");
        if page.more && last.is_some() {
            self.sync_view(peer, last);
        } else {
            self.view_sync = ViewSync::Done;
        }
    }

    /// Counts a malformed message against `peer`; too many and it is disconnected and ignored.
    fn strike(&mut self, peer: PeerId, reason: &str) {
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        warn!(%peer, strikes = *strikes, %reason, "malformed message from peer");
        if *strikes >= MAX_STRIKES {
            warn!(%peer, "peer banned for {BAN:?} after repeated malformed messages");
            self.strikes.remove(&peer);
            self.banned_until.insert(peer, Instant::now() + BAN);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn handle_tick(&mut self) {
        let now = Instant::now();
        // A tick far later than due means this loop itself was starved (an overloaded host):
        // the peers were not silent for that long, this node was deaf.
        let stall = now
            .saturating_duration_since(self.last_tick)
            .saturating_sub(STALL_TOLERANCE);
        self.last_tick = now;
        if !stall.is_zero() {
            debug!(
                ?stall,
                "event loop stalled; silence limits extended by as much"
            );
            self.peers.forgive(stall);
        }
        if self.publish_pending
            && self
                .last_publish
                .is_none_or(|last| now.duration_since(last) >= PUBLISH_DEBOUNCE)
        {
            self.publish_advert();
        }
        for (peer_id, connection) in self.peers.take_silent(now, self.silence_limit) {
            info!(
                %peer_id,
                %connection,
                silence = ?self.silence_limit,
                "no ping answered; closing the connection as dead"
            );
            self.swarm.close_connection(connection);
        }
        let holds = self.holds.clone();
        for (peer_id, addrs) in self
            .peers
            .due(now, self.below_target(), |peer| holds.is_held(peer))
        {
            debug!(%peer_id, "re-dialling");
            self.dial(peer_id, addrs);
        }
        self.banned_until.retain(|_, until| *until > now);
    }

    fn dial(&mut self, peer_id: PeerId, addrs: Vec<Multiaddr>) {
        // `NotDialing` rather than the default `DisconnectedAndNotDialing`: callers dial only
        // peers without an alive connection, and one being closed as dead (whose close may wait
        // on a stalled socket) must not hold up the re-dial.
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer_id)
            .condition(libp2p::swarm::dial_opts::PeerCondition::NotDialing)
            .addresses(addrs)
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            debug!(%peer_id, %error, "dial not started");
        }
    }

    /// How many peers the node is short of its target, counting dials under way (several
    /// sources of peers dial in the same turn: the peer book, the view, the DHT).
    fn below_target(&self) -> usize {
        let dialling = self
            .swarm
            .network_info()
            .connection_counters()
            .num_pending_outgoing() as usize;
        (self.parts.config.target_peers as usize)
            .saturating_sub(self.peers.connected_count() + dialling)
    }

    /// Dials `node` unless it is connected, with the addresses of the peer book and of its
    /// advert (a provider chosen from the capacity view is usually not a peer yet).
    /// Fails only when no dial could start (no address known, the peer banned…); a dial that
    /// runs already is not started again.
    fn connect(&mut self, node: NodeId) -> Result<(), String> {
        let peer_id = node.to_peer_id();
        if peer_id == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer_id) {
            return Ok(());
        }
        let mut addrs = self.peers.addrs(&peer_id);
        if let Some(entry) = self.parts.mesh.get(&node) {
            for addr in &entry.advert.listen_addrs {
                if let Ok(addr) = addr.parse::<Multiaddr>() {
                    let addr = without_peer_id(&addr);
                    if is_dialable(&addr) && !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
            }
        }
        debug!(%peer_id, addrs = addrs.len(), "dialling for a request");
        // Also with the addresses the behaviours know (the DHT's), and not while a dial runs.
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer_id)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => Ok(()),
            Err(error) => {
                debug!(%peer_id, %error, "dial not started");
                Err(error.to_string())
            }
        }
    }

    /// Answers `reply` once `node` holds a live connection (at once if it does), or with why
    /// not: the dial failed, or could not start.
    fn dial_and_tell(&mut self, node: NodeId, reply: DialReply) {
        let peer_id = node.to_peer_id();
        if peer_id == *self.swarm.local_peer_id() || self.peers.is_connected(&peer_id) {
            let _ = reply.send(Ok(()));
            return;
        }
        let waiting = match self.dial_waiters.get_mut(&peer_id) {
            Some(waiting) => {
                waiting.retain(|waiter| !waiter.is_closed());
                waiting.len()
            }
            None => 0,
        };
        let full = match waiting {
            0 => self.dial_waiters.len() >= MAX_DIAL_WAITING_PEERS,
            n => n >= MAX_DIAL_WAITERS_PER_PEER,
        };
        if full {
            let _ = reply.send(Err("too many wait for dials".into()));
            return;
        }
        if let Err(error) = self.connect(node) {
            let _ = reply.send(Err(error));
            return;
        }
        self.dial_waiters.entry(peer_id).or_default().push(reply);
    }

    fn tell_dial_waiters(&mut self, peer_id: &PeerId, outcome: &Result<(), String>) {
        for waiter in self.dial_waiters.remove(peer_id).unwrap_or_default() {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Below the target, dials nodes of the capacity view (every advert carries its node's
    /// addresses), picked at random, skipping peers in cooldown.
    fn fill_from_view(&mut self) {
        let wanted = self.below_target();
        if wanted == 0 {
            return;
        }
        let now = Instant::now();
        let local = *self.swarm.local_peer_id();
        let mut candidates: Vec<NodeId> = self
            .parts
            .mesh
            .live_nodes(now_ms())
            .into_iter()
            .filter(|node| {
                let peer = node.to_peer_id();
                peer != local
                    && !self.peers.is_connected(&peer)
                    && !self.peers.is_cooling(&peer, now)
            })
            .collect();
        let mut pick = self.salt ^ now_ms();
        for _ in 0..wanted.min(candidates.len()) {
            pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let node = candidates.swap_remove((pick >> 33) as usize % candidates.len());
            debug!(%node, "dialling a node of the capacity view");
            let _ = self.connect(node);
        }
    }

    /// Lets go of the lowest-value peers while the node holds more than its target (see
    /// [`super::peer_manager`] for who is protected and in which order the others go).
    fn prune_excess(&mut self) {
        let now = Instant::now();
        let busy: HashSet<PeerId> = self
            .outbound
            .values()
            .map(|(peer, _)| *peer)
            .chain(self.inbound.values().map(|(_, peer, _)| *peer))
            .collect();
        // One connection per peer is enough (two appear when two nodes dial each other at once).
        let local = *self.swarm.local_peer_id();
        for (peer, connection) in self.peers.duplicates(&local, now, GRACE) {
            if !busy.contains(&peer) && !self.holds.is_held(&peer) {
                debug!(%peer, %connection, "closing a second connection to a peer");
                self.peers.closed(&peer, connection, now);
                self.swarm.close_connection(connection);
            }
        }
        // Hysteresis: the node dials up to its target and prunes only above a band over it, so
        // that one node's prune (which leaves its peer below target, dialling) does not set off
        // another's in a loop.
        let target = self.parts.config.target_peers as usize;
        let band = target + prune_slack(target);
        let live = self.peers.live();
        if live.len() <= band {
            return;
        }
        let gossipsub = &self.swarm.behaviour().gossipsub;
        // The advert mesh (up to its normal size) keeps adverts flowing; the rest of the mesh
        // peers are not protected, or a small target could never be reached. Gossipsub grafts
        // a replacement when a mesh peer goes.
        let mut protected: HashSet<PeerId> = gossipsub
            .mesh_peers(&advert_topic().hash())
            .take(MESH_N)
            .copied()
            .collect();
        protected.extend(busy);
        let states: Vec<PeerState> = live
            .iter()
            .map(|live| PeerState {
                peer: live.peer,
                outbound: live.outbound,
                connected_at: live.connected_at,
                useful_at: live.useful_at,
                score: gossipsub.peer_score(&live.peer),
                region: NodeId::from_peer_id(&live.peer)
                    .ok()
                    .and_then(|node| self.parts.mesh.get(&node))
                    .map(|entry| entry.advert.region),
                protected: protected.contains(&live.peer) || self.holds.is_held(&live.peer),
            })
            .collect();
        let chosen = plan_prune(&states, band, now, self.salt);
        debug!(
            live = live.len(),
            target,
            protected = states.iter().filter(|state| state.protected).count(),
            young = states
                .iter()
                .filter(|state| now.saturating_duration_since(state.connected_at) < GRACE)
                .count(),
            outbound = states.iter().filter(|state| state.outbound).count(),
            pruning = chosen.len(),
            "above the peer target"
        );
        for peer in chosen {
            self.peers.pruned(&peer, now);
            self.pruned += 1;
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn dial_anonymous_bootstrap(&mut self) {
        for addr in self.anonymous_bootstrap.clone() {
            if let Err(error) = self.swarm.dial(addr.clone()) {
                warn!(%addr, %error, "cannot dial bootstrap peer");
            }
        }
    }

    fn save_peers(&mut self) {
        if self.peers.take_dirty()
            && let Err(error) = self.parts.data_dir.save_peers(&self.peers.to_persisted())
        {
            warn!(%error, "could not save peers");
        }
    }

    /// A new listen address changes the advert: re-publish it soon.
    fn add_listen_addr(&mut self, address: Multiaddr) {
        info!(%address, "listening");
        if !self.listen_addrs.contains(&address) {
            self.listen_addrs.push(address);
            self.publish_pending = true;
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => self.add_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|known| known != &address);
                self.publish_pending = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                debug!(%peer_id, %connection_id, address = %endpoint.get_remote_address(), "connected");
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.peer_ips.insert(peer_id, ip);
                }
                if endpoint.is_dialer() {
                    self.peers
                        .learn(peer_id, [endpoint.get_remote_address().clone()]);
                }
                self.peers
                    .connected(peer_id, connection_id, endpoint.is_dialer(), Instant::now());
                self.tell_dial_waiters(&peer_id, &Ok(()));
                let established = self
                    .swarm
                    .network_info()
                    .connection_counters()
                    .num_established() as usize;
                self.peak_established = self.peak_established.max(established);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                debug!(%peer_id, %connection_id, ?cause, "connection closed");
                if self.peers.closed(&peer_id, connection_id, Instant::now()) {
                    debug!(%peer_id, "peer lost; re-dial scheduled");
                    self.peer_ips.remove(&peer_id);
                    self.tell_dial_waiters(&peer_id, &Err("the connection closed".into()));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, ?error, "dial failed");
                if let Some(peer_id) = peer_id {
                    self.peers.dial_failed(&peer_id, Instant::now());
                    self.tell_dial_waiters(&peer_id, &Err(format!("dial failed: {error}")));
                }
            }
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            _ => {}
        }
    }

    /// A handle on the swarm's raw substreams (token streaming).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().streams.new_control()
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Streams(()) => {}
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.handle_gossip(propagation_source, message_id, message),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic })
                if topic == advert_topic().hash() =>
            {
                // A node whose advert has reached nobody yet (it is new, or was alone) publishes
                // when a peer subscribes. Once one peer has it, gossip carries it to the rest,
                // and newcomers pull the view (see `sync_view`): re-publishing on every new
                // subscriber would make every node verify a joiner's advert once per
                // connection the joiner makes.
                debug!(%peer_id, delivered = self.advert_delivered, "peer subscribed to adverts");
                if !self.advert_delivered {
                    self.publish_pending = true;
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    debug!(%peer_id, version = %info.protocol_version, "not a suanli peer");
                    return;
                }
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .filter(is_dialable)
                    .map(|addr| without_peer_id(&addr))
                    .collect();
                self.peers.learn(peer_id, addrs);
                self.peers.set_agent(&peer_id, info.agent_version);
                if self.view_sync == ViewSync::Wanted {
                    self.sync_view(peer_id, None);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => self.handle_ping(peer, connection, result),
            BehaviourEvent::Market(event) => self.handle_request_response(Protocol::Market, event),
            BehaviourEvent::Ledger(event) => self.handle_request_response(Protocol::Ledger, event),
            BehaviourEvent::View(event) => self.handle_request_response(Protocol::View, event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer_id, addr) in found {
                    if !self.peers.is_connected(&peer_id) && self.below_target() > 0 {
                        self.dial(peer_id, vec![addr]);
                    }
                }
            }
            _ => {}
        }
    }

    /// libp2p's ping only reports; acting on a failure is ours. An answered ping proves the
    /// connection alive; a failed one (reported from the second consecutive failure on, or when
    /// the peer does not speak ping) closes it at once. A ping that just never comes back is
    /// caught by the silence limit in `handle_tick`.
    fn handle_ping(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        result: Result<Duration, ping::Failure>,
    ) {
        match result {
            Ok(rtt) => {
                tracing::trace!(%peer, %connection, ?rtt, "ping answered");
                self.peers.answered(&peer, connection, Instant::now());
            }
            Err(failure) => {
                info!(%peer, %connection, %failure, "ping failed; closing the connection");
                self.peers.closed(&peer, connection, Instant::now());
                self.swarm.close_connection(connection);
            }
        }
    }

    /// Validates a gossiped message and reports the verdict to gossipsub, which forwards accepted
    /// messages and penalises the senders of rejected ones.
    fn handle_gossip(
        &mut self,
        propagation_source: PeerId,
        message_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        // The peer that forwarded it is alive (gossipsub does not say on which connection).
        self.peers.heard_from(&propagation_source, Instant::now());
        let acceptance = if message.topic == advert_topic().hash() {
            self.handle_advert(propagation_source, &message)
        } else if message.topic == checkpoint_topic().hash() {
            self.handle_checkpoint_topic(propagation_source, &message)
        } else {
            gossipsub::MessageAcceptance::Ignore
        };
        self.counters.count(&acceptance, message.data.len());
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, acceptance);
    }

    fn handle_advert(
        &mut self,
        propagation_source: PeerId,
        message: &gossipsub::Message,
    ) -> gossipsub::MessageAcceptance {
        let now = now_ms();
        let signed = match GossipMessage::from_bytes(&message.data) {
            Ok(GossipMessage::Advert(signed)) => signed,
            Ok(_) => return self.reject_advert(propagation_source, "not an advert"),
            Err(error) => {
                return self.reject_advert(propagation_source, &error.to_string());
            }
        };
        if self.parts.mesh.already_holds(&signed) {
            return gossipsub::MessageAcceptance::Ignore;
        }
        match validate_advert(signed, now) {
            Ok((signed, advert)) => {
                let node = advert.node;
                match self.parts.mesh.offer(signed, advert, now) {
                    Offered::Stored => {
                        debug!(%node, "advert stored");

                        gossipsub::MessageAcceptance::Accept
                    }
                    Offered::Stale | Offered::Full | Offered::Distrusted => {
                        gossipsub::MessageAcceptance::Ignore
                    }
                }
            }
            Err(AdvertRefusal::Late(reason)) => {
                // Valid, but it aged out on its way: the forwarder is not at fault. (Rejecting it
                // penalised honest forwarders under load until the mesh partitioned.)
                debug!(via = %propagation_source, %reason, "late advert ignored");
                gossipsub::MessageAcceptance::Ignore
            }
            Err(AdvertRefusal::Invalid(reason)) => self.reject_advert(propagation_source, &reason),
        }
    }

    fn reject_advert(
        &self,
        propagation_source: PeerId,
        reason: &str,
    ) -> gossipsub::MessageAcceptance {
        warn!(via = %propagation_source, %reason, "rejected advert; sender penalised");
        gossipsub::MessageAcceptance::Reject
    }

    /// Checkpoints must be signed by the node that published them, which must be in the capacity
    /// view (so a node tracks checkpoints of a bounded set of nodes). Equivocation proofs must
    /// verify. Anything else is rejected; valid messages the witness has no room for are ignored
    /// (not forwarded).
    fn handle_checkpoint_topic(
        &mut self,
        propagation_source: PeerId,
        message: &gossipsub::Message,
    ) -> gossipsub::MessageAcceptance {
        let event = match validate_checkpoint_topic(message) {
            Ok(CheckpointTopic::Checkpoint(checkpoint)) => {
                let node = checkpoint.signer();
                if node == self.node_id || self.parts.mesh.get(&node).is_none() {
                    return gossipsub::MessageAcceptance::Ignore;
                }
                LedgerEvent::Checkpoint(checkpoint)
            }
            Ok(CheckpointTopic::Equivocation(node, proof)) => {
                warn!(%node, via = %propagation_source, "equivocation proof received");
                LedgerEvent::Equivocation { node, proof }
            }
            Err(reason) => {
                warn!(
                    via = %propagation_source,
                    %reason,
                    "rejected checkpoint-topic message; sender penalised"
                );
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        match self.parts.ledger_events.try_send(event) {
            Ok(()) => gossipsub::MessageAcceptance::Accept,
            Err(_) => gossipsub::MessageAcceptance::Ignore,
        }
    }

    fn publish_advert(&mut self) {
        self.publish_pending = false;
        self.last_publish = Some(Instant::now());
        let now = now_ms();
        // Unix ms as the sequence number survives restarts without storing anything.
        self.advert_seq = now.max(self.advert_seq + 1);
        let listen_addrs: Vec<String> = self
            .listen_addrs
            .iter()
            .map(ToString::to_string)
            .filter(|addr| addr.len() <= MAX_ADDR_BYTES)
            .take(MAX_LISTEN_ADDRS)
            .collect();
        let advert = self.parts.capacity.advert(
            self.node_id,
            self.advert_seq,
            self.parts.config.advert_ttl,
            listen_addrs,
            crate::capacity::Now {
                at_ms: now,
                load: *self.parts.load.borrow(),
                cluster: self.parts.cluster.borrow().clone(),
            },
        );
        let signed = match Signed::sign(&advert, &self.parts.keypair) {
            Ok(signed) => Arc::new(signed),
            Err(error) => {
                warn!(%error, "cannot sign advert");
                return;
            }
        };
        let bytes = match GossipMessage::Advert((*signed).clone()).to_bytes() {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(%error, "cannot build advert");
                return;
            }
        };
        self.parts.mesh.offer(signed, advert, now);
        let length = bytes.len();
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(advert_topic(), bytes)
        {
            Ok(_) => {
                self.counters.count_published(length);
                self.advert_delivered = true;
                debug!(seq = self.advert_seq, "advert published");
            }
            // Normal right after start or while alone: the next subscription retries.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                self.advert_delivered = false;
                debug!("no subscribed peer for the advert yet");
            }
            Err(error) => {
                self.advert_delivered = false;
                warn!(%error, "advert not published");
            }
        }
    }
}

/// How far above its target a node may hold peers before it prunes (a fifth of the target, at
/// least two; `max_connections` stays the hard limit).
pub fn prune_slack(target: usize) -> usize {
    (target / 5).max(2)
}

/// Where the pull of the capacity view stands (one peer is asked once the first suanli peer is
/// identified; a failed pull is retried with the next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ViewSync {
    Wanted,
    /// A page after this node was asked for.
    Running(OutboundRequestId, Option<NodeId>),
    Done,
}

impl ViewSync {
    fn is_running(&self, request: OutboundRequestId) -> bool {
        matches!(self, ViewSync::Running(id, _) if *id == request)
    }
}

/// Why a gossiped advert is not stored: `Late` is a valid advert that expired on its way (ignore
/// it), `Invalid` anything else (reject it, which penalises the sender).
enum AdvertRefusal {
    Late(String),
    Invalid(String),
}

/// The checks every received advert passes before use.
fn validate_advert(
    signed: Signed<CapacityAdvert>,
    now_ms: u64,
) -> Result<(Arc<Signed<CapacityAdvert>>, CapacityAdvert), AdvertRefusal> {
    let invalid = AdvertRefusal::Invalid;
    let advert = signed
        .verify()
        .map_err(|error| invalid(error.to_string()))?;
    let signed = Arc::new(signed);
    match advert.validate(now_ms) {
        Ok(()) => Ok((signed, advert)),
        Err(error @ suanli_protocol::advert::AdvertError::Expired { .. }) => {
            Err(AdvertRefusal::Late(error.to_string()))
        }
        Err(error) => Err(invalid(error.to_string())),
    }
}

enum CheckpointTopic {
    Checkpoint(SignedCheckpoint),
    Equivocation(NodeId, Box<suanli_protocol::checkpoint::Equivocation>),
}

/// The checks every message of the checkpoint topic passes before use.
fn validate_checkpoint_topic(message: &gossipsub::Message) -> Result<CheckpointTopic, String> {
    match GossipMessage::from_bytes(&message.data).map_err(|error| error.to_string())? {
        GossipMessage::Checkpoint { note } => {
            if note.len() > MAX_GOSSIPED_NOTE_BYTES {
                return Err(format!(
                    "checkpoint note of {} bytes (at most {MAX_GOSSIPED_NOTE_BYTES})",
                    note.len()
                ));
            }
            let checkpoint =
                SignedCheckpoint::from_note(&note).map_err(|error| error.to_string())?;
            Ok(CheckpointTopic::Checkpoint(checkpoint))
        }
        GossipMessage::Equivocation(proof) => {
            for note in [&proof.first, &proof.second] {
                if note.len() > MAX_GOSSIPED_NOTE_BYTES {
                    return Err(format!("equivocation note of {} bytes", note.len()));
                }
            }
            let node = proof.verify().map_err(|error| error.to_string())?;
            Ok(CheckpointTopic::Equivocation(node, Box::new(proof)))
        }
        GossipMessage::Advert(_) => Err("an advert on the checkpoint topic".into()),
    }
}

fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|protocol| match protocol {
        libp2p::multiaddr::Protocol::P2p(peer_id) => Some(peer_id),
        _ => None,
    })
}

/// The IP address of a multiaddr (`/ip4/…` or `/ip6/…` first).
fn ip_of(address: &Multiaddr) -> Option<std::net::IpAddr> {
    address.iter().find_map(|part| match part {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}
