//! A hostile peer: a bare libp2p swarm that speaks the gossip topics, the ledger-sync protocol and
//! the market protocol, and sends whatever bytes a test hands it. It answers pings, as a node
//! closes connections that do not.
//!
//! On `/suanli/market/1` it is both a requester (a test sends raw request bytes and gets the raw
//! answer) and a provider (the node's requests reach the test as [`MarketInbound`], which answers
//! with bytes of its choice, later, or never), and it opens raw market streams whose bytes the
//! test writes itself (oversized or announced-but-missing frames, trickled bytes).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, Swarm, SwarmBuilder, gossipsub, noise, ping, tcp,
    yamux,
};
use suanli_node::network::{
    FrameCodec, advert_topic, checkpoint_topic, gossipsub_config, new_gossipsub,
};
use suanli_protocol::Keypair;
use suanli_protocol::wire::{LEDGER_PROTOCOL, MARKET_PROTOCOL, MAX_LEDGER_MESSAGE_BYTES};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// Frames the adversary itself sends or reads on the market protocol may be this large: twice
/// the protocol's cap, so that it can send frames a node must refuse.
const ADVERSARY_FRAME_CAP: usize = 2 * suanli_protocol::wire::MAX_MARKET_MESSAGE_BYTES;

/// How long the adversary waits for a node's answer: longer than a node's own request timeout,
/// so that the node's behaviour, not the adversary's patience, decides how an exchange ends.
const ADVERSARY_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

enum Action {
    Publish(gossipsub::IdentTopic, Vec<u8>, Reply),
    Ledger(Vec<u8>, Reply),
    Market(Vec<u8>, Reply),
    Connected(oneshot::Sender<bool>),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    ledger: request_response::Behaviour<FrameCodec>,
    market: request_response::Behaviour<FrameCodec>,
    streams: libp2p_stream::Behaviour,
}

/// A market request the target sent to the adversary. Answer it with [`MarketInbound::answer`];
/// dropping it closes the stream unanswered; keeping it keeps the node waiting.
#[derive(Debug)]
pub struct MarketInbound {
    /// The raw framed request.
    pub bytes: Vec<u8>,
    answer: oneshot::Sender<Vec<u8>>,
}

impl MarketInbound {
    /// Answers with raw bytes (a framed `MarketResponse`, or anything else).
    pub fn answer(self, bytes: Vec<u8>) {
        let _ = self.answer.send(bytes);
    }
}

/// A running hostile peer.
pub struct Adversary {
    pub key: Keypair,
    pub target: PeerId,
    actions: mpsc::Sender<Action>,
    streams: libp2p_stream::Control,
    inbound: tokio::sync::Mutex<mpsc::Receiver<MarketInbound>>,
}

impl std::fmt::Debug for Adversary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adversary")
            .field("node_id", &self.key.node_id())
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Action")
    }
}

impl Adversary {
    /// Connects to `target` (an address with its `/p2p/` id) and waits until the target has
    /// subscribed to a topic.
    pub async fn connect(key: Keypair, target: Multiaddr) -> Adversary {
        let target_id = target
            .iter()
            .find_map(|protocol| match protocol {
                libp2p::multiaddr::Protocol::P2p(peer_id) => Some(peer_id),
                _ => None,
            })
            .expect("target address with /p2p/");
        let mut swarm: Swarm<Behaviour> = SwarmBuilder::with_existing_identity(key.to_libp2p())
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| Behaviour {
                ping: ping::Behaviour::default(),
                gossipsub: new_gossipsub(gossipsub_config().expect("config")).expect("gossipsub"),
                ledger: request_response::Behaviour::with_codec(
                    FrameCodec::new(MAX_LEDGER_MESSAGE_BYTES),
                    [(StreamProtocol::new(LEDGER_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
                market: request_response::Behaviour::with_codec(
                    FrameCodec::new(ADVERSARY_FRAME_CAP),
                    [(StreamProtocol::new(MARKET_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(ADVERSARY_REQUEST_TIMEOUT),
                ),
                streams: libp2p_stream::Behaviour::new(),
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for topic in [advert_topic(), checkpoint_topic()] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&topic)
                .expect("subscribe");
        }
        // Requests after the target dropped the connection dial it again.
        let address = target
            .iter()
            .filter(|protocol| !matches!(protocol, libp2p::multiaddr::Protocol::P2p(_)))
            .collect::<Multiaddr>();
        swarm.add_peer_address(target_id, address);
        swarm.dial(target).expect("dial");
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                gossipsub::Event::Subscribed { .. },
            )) = swarm.select_next_some().await
            {
                break;
            }
        }
        let streams = swarm.behaviour().streams.new_control();
        let (actions, inbox) = mpsc::channel::<Action>(16);
        let (inbound_tx, inbound) = mpsc::channel::<MarketInbound>(64);
        tokio::spawn(drive(swarm, inbox, inbound_tx, target_id));
        Adversary {
            key,
            target: target_id,
            actions,
            streams,
            inbound: tokio::sync::Mutex::new(inbound),
        }
    }

    async fn act(&self, action: impl FnOnce(Reply) -> Action) -> Result<Vec<u8>, String> {
        let (reply, answer) = oneshot::channel();
        self.actions
            .send(action(reply))
            .await
            .map_err(|_| "adversary stopped".to_owned())?;
        answer.await.map_err(|_| "adversary stopped".to_owned())?
    }

    /// Publishes raw bytes on the advert topic.
    pub async fn publish(&self, bytes: Vec<u8>) -> Result<(), String> {
        self.publish_on(advert_topic(), bytes).await
    }

    /// Publishes raw bytes on `topic`.
    pub async fn publish_on(
        &self,
        topic: gossipsub::IdentTopic,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        self.act(|reply| Action::Publish(topic, bytes, reply))
            .await
            .map(|_| ())
    }

    /// Sends raw bytes as a `/suanli/ledger/1` request to the target; returns the raw answer.
    pub async fn ledger_request(&self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        self.act(|reply| Action::Ledger(bytes, reply)).await
    }

    /// Sends raw bytes as one `/suanli/market/1` request to the target (dialling it again when
    /// it dropped the connection); returns the raw answer, or why there was none.
    pub async fn market_request(&self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        self.act(|reply| Action::Market(bytes, reply)).await
    }

    /// Whether the adversary holds a connection to the target now.
    pub async fn is_connected(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.actions.send(Action::Connected(reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// The next market request the target sent to the adversary.
    pub async fn next_market_request(&self) -> MarketInbound {
        self.inbound
            .lock()
            .await
            .recv()
            .await
            .expect("the adversary's swarm runs")
    }

    /// Opens a raw `/suanli/market/1` stream to the target: the test writes its bytes (the
    /// protocol's framing is a 4-byte big-endian length, then the framed message).
    pub async fn open_market_stream(&self) -> Result<Stream, String> {
        self.streams
            .clone()
            .open_stream(self.target, StreamProtocol::new(MARKET_PROTOCOL))
            .await
            .map_err(|error| error.to_string())
    }
}

type Answering = Pin<Box<dyn Future<Output = Option<(ResponseChannel<Vec<u8>>, Vec<u8>)>> + Send>>;

async fn drive(
    mut swarm: Swarm<Behaviour>,
    mut inbox: mpsc::Receiver<Action>,
    inbound: mpsc::Sender<MarketInbound>,
    target: PeerId,
) {
    let mut pending = std::collections::HashMap::new();
    let mut pending_market = std::collections::HashMap::new();
    // Answers the test has yet to give; an answer dropped leaves its channel unanswered.
    let mut answering: FuturesUnordered<Answering> = FuturesUnordered::new();
    loop {
        tokio::select! {
            action = inbox.recv() => match action {
                None => break,
                Some(Action::Publish(topic, bytes, reply)) => {
                    let result = swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(topic, bytes)
                        .map(|_| Vec::new())
                        .map_err(|error| error.to_string());
                    let _ = reply.send(result);
                }
                Some(Action::Ledger(bytes, reply)) => {
                    let id = swarm.behaviour_mut().ledger.send_request(&target, bytes);
                    pending.insert(id, reply);
                }
                Some(Action::Market(bytes, reply)) => {
                    let id = swarm.behaviour_mut().market.send_request(&target, bytes);
                    pending_market.insert(id, reply);
                }
                Some(Action::Connected(reply)) => {
                    let _ = reply.send(swarm.is_connected(&target));
                }
            },
            Some(Some((channel, bytes))) = answering.next(), if !answering.is_empty() => {
                let _ = swarm.behaviour_mut().market.send_response(channel, bytes);
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Ledger(
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    },
                )) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ledger(
                    request_response::Event::OutboundFailure { request_id, error, .. },
                )) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Market(
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    },
                )) => {
                    if let Some(reply) = pending_market.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Market(
                    request_response::Event::OutboundFailure { request_id, error, .. },
                )) => {
                    if let Some(reply) = pending_market.remove(&request_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Market(
                    request_response::Event::Message {
                        message: request_response::Message::Request { request, channel, .. },
                        ..
                    },
                )) => {
                    let (answer, answered) = oneshot::channel();
                    let _ = inbound.try_send(MarketInbound { bytes: request, answer });
                    answering.push(Box::pin(async move {
                        answered.await.ok().map(|bytes| (channel, bytes))
                    }));
                }
                _ => {}
            },
        }
    }
}

/// A `Signed<T>` with any signer and signature, for forgeries `Signed::sign` refuses to make: the
/// document's bytes, the claimed signer, and a signature over `T`'s signing message by `key`
/// (which need not be the signer's). Encoded by hand per docs/protocol.md section 6.1.
pub fn forge_signed<T: suanli_protocol::signed::Document>(
    document: &[u8],
    signer: suanli_protocol::NodeId,
    key: &Keypair,
) -> suanli_protocol::Signed<T> {
    let message = suanli_protocol::signed::signing_message(T::KIND, document);
    let signature = key.to_libp2p().sign(&message).expect("ed25519 signs");
    let mut raw = Vec::new();
    push_varint(&mut raw, document.len() as u64);
    raw.extend_from_slice(document);
    raw.extend_from_slice(signer.as_bytes());
    push_varint(&mut raw, signature.len() as u64);
    raw.extend_from_slice(&signature);
    suanli_protocol::codec::decode(&raw, raw.len()).expect("a well-formed Signed")
}

fn push_varint(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=250 => out.push(value as u8),
        251..=0xffff => {
            out.push(0xfb);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        _ => {
            out.push(0xfc);
            out.extend_from_slice(&(value as u32).to_le_bytes());
        }
    }
}

/// A `CoSigned<T>` over `signed` with a countersignature by `key`, whether or not the first
/// signature verifies (`CoSigned::countersign` refuses to make one that does not).
pub fn forge_cosigned<T: suanli_protocol::signed::CoSignedDocument>(
    signed: &suanli_protocol::Signed<T>,
    key: &Keypair,
) -> suanli_protocol::CoSigned<T> {
    let signature = key
        .to_libp2p()
        .sign(&signed.message())
        .expect("ed25519 signs");
    let mut raw = suanli_protocol::codec::encode(signed).expect("encodable");
    push_varint(&mut raw, signature.len() as u64);
    raw.extend_from_slice(&signature);
    suanli_protocol::codec::decode(&raw, raw.len()).expect("a well-formed CoSigned")
}
