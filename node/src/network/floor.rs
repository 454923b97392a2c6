//! Network floors for `suanli bench`: what libp2p alone costs on this machine, measured with the
//! same transport stack the node uses (TCP + noise + yamux, `FrameCodec` framing, gossipsub
//! with the node's message ids and heartbeat), so node figures can be set against them.
//!
//! - [`request_response_round_trips`]: two bare swarms with nothing but request-response; one
//!   echoes, the other sends one request at a time.
//! - [`gossipsub_spread`]: N bare swarms with nothing but gossipsub, wired with a given topology;
//!   one publishes a payload, and the time until every other swarm received it is recorded.
//!
//! Nothing here is used by a running node. Each swarm runs in its own task (as a node's does),
//! stopped through a [`CancellationToken`] when the measurement ends.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder, gossipsub, noise, request_response, tcp, yamux,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame_codec::FrameCodec;

const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/suanli/bench-echo/1");
const FLOOR_TOPIC: &str = "suanli/bench-floor/1";
/// How long a floor measurement may wait for its swarms to connect or a message to arrive.
const PATIENCE: Duration = Duration::from_secs(120);

/// Why a floor could not be measured.
#[derive(Debug, thiserror::Error)]
#[error("network floor: {0}")]
pub struct FloorError(String);

fn floor_error(error: impl std::fmt::Display) -> FloorError {
    FloorError(error.to_string())
}

/// A bare swarm over the node's TCP stack (nodelay, noise, yamux), with `behaviour`.
fn bare_swarm<B: NetworkBehaviour>(
    make: impl FnOnce(&libp2p::identity::Keypair) -> Result<B, FloorError>,
) -> Result<Swarm<B>, FloorError> {
    let mut failure = None;
    let swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(floor_error)?
        .with_behaviour(|key| match make(key) {
            Ok(behaviour) => Ok(behaviour),
            Err(error) => {
                failure = Some(error.0.clone());
                Err(Box::new(error) as Box<dyn std::error::Error + Send + Sync>)
            }
        })
        .map_err(|error| FloorError(failure.clone().unwrap_or_else(|| error.to_string())))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// A bare swarm over the memory transport (noise, yamux), for floors of large meshes.
fn memory_swarm<B: NetworkBehaviour>(
    make: impl FnOnce(&libp2p::identity::Keypair) -> Result<B, FloorError>,
) -> Result<Swarm<B>, FloorError> {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let behaviour = make(&key)?;
    Ok(SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(super::memory::transport)
        .map_err(floor_error)?
        .with_behaviour(|_| behaviour)
        .map_err(floor_error)?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}

/// Listens on loopback TCP port 0 and returns the bound address.
async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Result<Multiaddr, FloorError> {
    let any: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().map_err(floor_error)?;
    listen_on(swarm, any).await
}

/// Listens on `addr` and returns the bound address.
async fn listen_on<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addr: Multiaddr,
) -> Result<Multiaddr, FloorError> {
    swarm.listen_on(addr).map_err(floor_error)?;
    let wait = async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .map_err(|_| FloorError("no listen address".into()))
}

type Echo = request_response::Behaviour<FrameCodec>;

fn echo_behaviour() -> Echo {
    request_response::Behaviour::with_codec(
        FrameCodec::new(1 << 20),
        [(ECHO_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(PATIENCE),
    )
}

/// `count` sequential request-response round trips of `payload_bytes` each way between two bare
/// swarms on loopback TCP in this process (after 50 unrecorded warm-up trips); one duration each.
pub async fn request_response_round_trips(
    count: usize,
    payload_bytes: usize,
) -> Result<Vec<Duration>, FloorError> {
    let mut server = bare_swarm(|_| Ok(echo_behaviour()))?;
    let mut client = bare_swarm(|_| Ok(echo_behaviour()))?;
    let address = listen(&mut server).await?;
    let server_id = *server.local_peer_id();
    let cancel = CancellationToken::new();
    let server_cancel = cancel.clone();
    let server_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = server_cancel.cancelled() => break,
                event = server.select_next_some() => {
                    if let SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Request { request, channel, .. },
                        ..
                    }) = event
                    {
                        let _ = server.behaviour_mut().send_response(channel, request);
                    }
                }
            }
        }
    });
    client.add_peer_address(server_id, address);
    let payload = vec![0x5a; payload_bytes];
    let mut samples = Vec::with_capacity(count);
    let result = async {
        for trip in 0..count + 50 {
            let started = Instant::now();
            client
                .behaviour_mut()
                .send_request(&server_id, payload.clone());
            let wait = async {
                loop {
                    match client.select_next_some().await {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { .. },
                            ..
                        }) => return Ok(()),
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            error,
                            ..
                        }) => return Err(floor_error(error)),
                        _ => {}
                    }
                }
            };
            tokio::time::timeout(PATIENCE, wait)
                .await
                .map_err(|_| FloorError("echo timed out".into()))??;
            if trip >= 50 {
                samples.push(started.elapsed());
            }
        }
        Ok::<(), FloorError>(())
    }
    .await;
    cancel.cancel();
    let _ = server_task.await;
    result.map(|()| samples)
}

/// Bare gossipsub: the node's gossipsub parameters (mesh sizes, no flood publishing, message
/// ids, heartbeat, size cap), without application validation or peer scoring.
fn gossip_behaviour(_: &libp2p::identity::Keypair) -> Result<gossipsub::Behaviour, FloorError> {
    let config = super::gossipsub_base().build().map_err(floor_error)?;
    super::new_gossipsub(config).map_err(floor_error)
}

/// What one bare gossip swarm reports to the measurement.
#[derive(Debug)]
enum GossipReport {
    /// A peer subscribed to the topic.
    Subscribed,
    /// A message arrived (its first 8 bytes are the round number).
    Received { node: usize, round: u64 },
}

/// Spread of bare gossipsub over `topology` (node i is connected to every node listed in
/// `topology[i]`; the lists should be symmetric): for each of `rounds` rounds, node
/// `(round * 31) % n` publishes `payload_bytes` and the time until every other node received
/// it is recorded.
pub async fn gossipsub_spread(
    topology: &[Vec<usize>],
    payload_bytes: usize,
    rounds: usize,
    memory: bool,
) -> Result<Vec<Duration>, FloorError> {
    let n = topology.len();
    if n < 2 {
        return Ok(Vec::new());
    }
    let topic = gossipsub::IdentTopic::new(FLOOR_TOPIC);
    let mut swarms = Vec::with_capacity(n);
    let mut addresses = Vec::with_capacity(n);
    for _ in 0..n {
        let mut swarm = if memory {
            memory_swarm(gossip_behaviour)?
        } else {
            bare_swarm(gossip_behaviour)?
        };
        swarm
            .behaviour_mut()
            .subscribe(&topic)
            .map_err(floor_error)?;
        let address = if memory {
            listen_on(&mut swarm, super::memory::unique_addr()).await?
        } else {
            listen(&mut swarm).await?
        };
        addresses.push((*swarm.local_peer_id(), address));
        swarms.push(swarm);
    }
    // Each edge is dialled once, from its lower end.
    for (node, swarm) in swarms.iter_mut().enumerate() {
        for &peer in topology.get(node).into_iter().flatten() {
            if let Some((peer_id, address)) = addresses.get(peer).filter(|_| peer > node) {
                let address = address
                    .clone()
                    .with(libp2p::multiaddr::Protocol::P2p(*peer_id));
                swarm.dial(address).map_err(floor_error)?;
            }
        }
    }
    let cancel = CancellationToken::new();
    let (reports, mut inbox) = mpsc::unbounded_channel();
    let mut publishers = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for (node, swarm) in swarms.into_iter().enumerate() {
        let (publish, orders) = mpsc::unbounded_channel::<Vec<u8>>();
        publishers.push(publish);
        tasks.spawn(run_gossip_swarm(
            node,
            swarm,
            topic.clone(),
            orders,
            reports.clone(),
            cancel.clone(),
        ));
    }
    let result = measure_spread(topology, payload_bytes, rounds, &publishers, &mut inbox).await;
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

async fn measure_spread(
    topology: &[Vec<usize>],
    payload_bytes: usize,
    rounds: usize,
    publishers: &[mpsc::UnboundedSender<Vec<u8>>],
    inbox: &mut mpsc::UnboundedReceiver<GossipReport>,
) -> Result<Vec<Duration>, FloorError> {
    let n = topology.len();
    // Wait until every node saw all its neighbours subscribe, then a few heartbeats for meshes.
    let expected: usize = topology.iter().map(Vec::len).sum();
    let deadline = Instant::now() + PATIENCE;
    let mut subscribed = 0;
    while subscribed < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, inbox.recv()).await {
            Ok(Some(GossipReport::Subscribed)) => subscribed += 1,
            Ok(Some(GossipReport::Received { .. })) => {}
            Ok(None) | Err(_) => {
                return Err(FloorError(format!(
                    "only {subscribed} of {expected} subscriptions seen"
                )));
            }
        }
    }
    debug!(nodes = n, "bare gossipsub swarms connected");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut spreads = Vec::with_capacity(rounds);
    for round in 0..rounds as u64 {
        let publisher = (round as usize * 31) % n;
        let mut payload = vec![0u8; payload_bytes.max(16)];
        payload[..8].copy_from_slice(&round.to_be_bytes());
        payload[8..16].copy_from_slice(&rand_tag().to_be_bytes());
        let started = Instant::now();
        publishers
            .get(publisher)
            .and_then(|publish| publish.send(payload).ok())
            .ok_or_else(|| FloorError("a gossip swarm stopped".into()))?;
        let mut got = vec![false; n];
        got[publisher] = true;
        let mut missing = n - 1;
        while missing > 0 {
            let left = Duration::from_secs(30).saturating_sub(started.elapsed());
            match tokio::time::timeout(left, inbox.recv()).await {
                Ok(Some(GossipReport::Received { node, round: r })) if r == round => {
                    if let Some(seen) = got.get_mut(node).filter(|seen| !**seen) {
                        *seen = true;
                        missing -= 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(FloorError(format!(
                        "round {round}: {missing} of {} nodes never received the message",
                        n - 1
                    )));
                }
            }
        }
        spreads.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(spreads)
}

/// Makes payloads of equal rounds in different runs distinct (message ids are content hashes).
fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

async fn run_gossip_swarm(
    node: usize,
    mut swarm: Swarm<gossipsub::Behaviour>,
    topic: gossipsub::IdentTopic,
    mut orders: mpsc::UnboundedReceiver<Vec<u8>>,
    reports: mpsc::UnboundedSender<GossipReport>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            order = orders.recv() => {
                let Some(payload) = order else { break };
                if let Err(error) = swarm.behaviour_mut().publish(topic.clone(), payload) {
                    debug!(node, %error, "bare gossip publish failed");
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) => {
                    let _ = reports.send(GossipReport::Subscribed);
                }
                SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) => {
                    let round = message
                        .data
                        .get(..8)
                        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                        .map_or(u64::MAX, u64::from_be_bytes);
                    let _ = reports.send(GossipReport::Received { node, round });
                }
                _ => {}
            },
        }
    }
}
