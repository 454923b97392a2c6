//! The libp2p behaviour of a suanli node and how its Swarm is built.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, connection_limits, gossipsub, identify, mdns, noise, ping,
    request_response, tcp, yamux,
};
use sha2::{Digest, Sha256};
use suanli_protocol::wire::{
    ADVERT_TOPIC, CHECKPOINT_TOPIC, LEDGER_PROTOCOL, MARKET_PROTOCOL, MAX_GOSSIP_MESSAGE_BYTES,
    MAX_LEDGER_MESSAGE_BYTES, MAX_MARKET_MESSAGE_BYTES, MAX_VIEW_MESSAGE_BYTES, VIEW_PROTOCOL,
};

use super::frame_codec::FrameCodec;

use crate::config::CheckedConfig;

/// The identify protocol version of suanli nodes; peers announcing another are not suanli nodes.
pub const IDENTIFY_PROTOCOL: &str = "/suanli/1";

/// Everything a node speaks, connection limits first so they apply before anything else.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub market: request_response::Behaviour<FrameCodec>,
    pub ledger: request_response::Behaviour<FrameCodec>,
    /// View sync: a joining node pulls the capacity view from a peer.
    pub view: request_response::Behaviour<FrameCodec>,
    /// Raw substreams: `/suanli/tokens/1` (see [`super::tokens`]).
    pub streams: libp2p_stream::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// How long one market exchange (request and its response) may take. Responses are immediate by
/// design (work is acknowledged, results come in a separate request), so this bounds transfer
/// time of the largest message, not job time.
pub const MARKET_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one ledger-sync exchange may take (a range answer is at most 16 MiB).
pub const LEDGER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The advert topic.
pub fn advert_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(ADVERT_TOPIC)
}

/// The topic of checkpoints and equivocation proofs.
pub fn checkpoint_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(CHECKPOINT_TOPIC)
}

/// Peers in a topic's gossip mesh, and the fewest before gossipsub grafts more (its defaults).
pub const MESH_N: usize = 6;
pub const MESH_LOW: usize = 5;

/// Gossipsub as every suanli node runs it: the application validates every message before it is
/// forwarded, message ids are SHA-256 of the payload (content-addressed, so the same advert from
/// two paths is one message), and messages are capped at the gossip message size.
///
/// Messages are anonymous (no libp2p author, sequence number or signature; gossipsub rejects a
/// message that carries one): every message is a document its author signed (an advert, a
/// checkpoint, an equivocation proof), which the application verifies once. Gossipsub's own
/// signature was checked on every copy received, before duplicates are dropped: at mesh degree 6
/// that was several signature checks per message per node, most of a large mesh's CPU.
///
/// No flood publishing: a node's own messages go to its mesh peers (topped up with other
/// subscribed peers while the mesh is short), not to every connected subscriber, so a
/// publication costs the same at 25 peers as at 2 and the mesh, not the connection count,
/// decides the load.
pub fn gossipsub_config() -> Result<gossipsub::Config, String> {
    gossipsub_base()
        .validate_messages()
        .build()
        .map_err(|error| error.to_string())
}

/// Gossipsub's parameters as the node runs it, without application validation: the bare
/// gossipsub floor of the benchmark runs with these.
pub fn gossipsub_base() -> gossipsub::ConfigBuilder {
    let mut builder = gossipsub::ConfigBuilder::default();
    builder
        .mesh_n(MESH_N)
        .mesh_n_low(MESH_LOW)
        .flood_publish(false)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::from(Sha256::digest(&message.data).to_vec())
        })
        .max_transmit_size(MAX_GOSSIP_MESSAGE_BYTES)
        .heartbeat_interval(Duration::from_millis(700));
    builder
}

/// A gossipsub behaviour with `config`, publishing anonymous messages (see [`gossipsub_config`]).
pub fn new_gossipsub(config: gossipsub::Config) -> Result<gossipsub::Behaviour, &'static str> {
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
}

/// Peer scoring: an invalid advert or checkpoint costs its sender heavily (it is graylisted after one), and
/// nodes sharing an IP are not penalised (data centers run several nodes behind one address, and
/// tests run many on loopback). Adverts are infrequent, so mesh-delivery quotas are off.
pub fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(advert_topic().hash(), topic.clone());
    params.topics.insert(checkpoint_topic().hash(), topic);
    (params, gossipsub::PeerScoreThresholds::default())
}

/// Why the Swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("build network: {0}")]
pub struct BuildError(String);

fn build_error(error: impl std::fmt::Display) -> BuildError {
    BuildError(error.to_string())
}

/// QUIC notices a silent peer by itself: keep-alive packets every ping interval, and the
/// connection times out after the same silence as the ping check (`ping_interval +
/// ping_timeout`). The idle timeout in force is the smaller of both sides' values.
fn quic_config(mut quic: libp2p::quic::Config, config: &CheckedConfig) -> libp2p::quic::Config {
    let silence = config.ping_interval + config.ping_timeout;
    quic.max_idle_timeout = u32::try_from(silence.as_millis()).unwrap_or(u32::MAX);
    quic.keep_alive_interval = config.ping_interval;
    quic
}

/// Builds the Swarm: TCP (noise + yamux) and QUIC, DNS, and [`Behaviour`].
///
/// Dead connections: TCP offers no keep-alive or user-timeout option in libp2p-tcp 0.45, and
/// yamux 0.14 sends no keep-alive either (its pings only measure the round trip), so on a black-holed TCP link (no FIN, no RST) nothing
/// below the application would notice for many minutes. The ping behaviour pings every
/// connection each `ping_interval`; it only reports, and the event loop closes a connection
/// that stops answering (see `EventLoop::handle_ping` and the silence check in its tick).
pub fn build_swarm(
    keypair: libp2p::identity::Keypair,
    config: &CheckedConfig,
) -> Result<Swarm<Behaviour>, BuildError> {
    let idle = config.idle_connection_timeout;
    if super::memory::is_memory_only(&config.listen) {
        return Ok(SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(super::memory::transport)
            .map_err(build_error)?
            .with_behaviour(|key| behaviour(key, config))
            .map_err(build_error)?
            .with_swarm_config(|swarm| swarm.with_idle_connection_timeout(idle))
            .build());
    }
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(build_error)?
        .with_quic_config(|quic| quic_config(quic, config))
        .with_dns()
        .map_err(build_error)?
        .with_behaviour(|key| behaviour(key, config))
        .map_err(build_error)?
        .with_swarm_config(|swarm| swarm.with_idle_connection_timeout(idle))
        .build())
}

type BehaviourError = Box<dyn std::error::Error + Send + Sync>;

/// A request-response protocol of ours: framed messages capped at `max_bytes`, answered within
/// `timeout`, at most `streams` exchanges at once per connection.
fn request_response(
    protocol: &'static str,
    max_bytes: usize,
    timeout: Duration,
    streams: usize,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec::new(max_bytes),
        [(
            StreamProtocol::new(protocol),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(streams),
    )
}

/// Every behaviour of a node, configured from `config`.
fn behaviour(
    key: &libp2p::identity::Keypair,
    config: &CheckedConfig,
) -> Result<Behaviour, BehaviourError> {
    let local_peer_id = key.public().to_peer_id();
    // Some slots are kept for connections this node dials (requests to providers, token
    // streams): a crowd of inbound peers cannot take them all.
    let reserve = ((config.max_connections - config.target_peers) / 5).max(2);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_incoming(Some(config.max_connections.saturating_sub(reserve).max(1)))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let mdns_enabled = config.mdns;
    let mut gossipsub = new_gossipsub(gossipsub_config()?)?;
    let (params, thresholds) = peer_score();
    gossipsub.with_peer_score(params, thresholds)?;
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
            .with_agent_version(format!("suanli/{}", env!("CARGO_PKG_VERSION"))),
    );
    let mdns = if mdns_enabled {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            local_peer_id,
        )?)
    } else {
        None
    };
    let market = request_response(
        MARKET_PROTOCOL,
        MAX_MARKET_MESSAGE_BYTES,
        MARKET_REQUEST_TIMEOUT,
        256,
    );
    let ledger = request_response(
        LEDGER_PROTOCOL,
        MAX_LEDGER_MESSAGE_BYTES,
        LEDGER_REQUEST_TIMEOUT,
        32,
    );
    let view = request_response(
        VIEW_PROTOCOL,
        MAX_VIEW_MESSAGE_BYTES,
        LEDGER_REQUEST_TIMEOUT,
        16,
    );
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        identify,
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_timeout),
        ),
        gossipsub,
        market,
        ledger,
        view,
        streams: libp2p_stream::Behaviour::new(),
        mdns: mdns.into(),
    })
}
