//! A hostile peer: a bare libp2p swarm that speaks the gossip topics and the ledger-sync protocol
//! and sends whatever bytes a test hands it. It answers pings, as a node closes connections that
//! do not.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, gossipsub, noise, ping, tcp, yamux,
};
use suanli_node::network::{
    FrameCodec, advert_topic, checkpoint_topic, gossipsub_config, new_gossipsub,
};
use suanli_protocol::Keypair;
use suanli_protocol::wire::{LEDGER_PROTOCOL, MAX_LEDGER_MESSAGE_BYTES};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

enum Action {
    Publish(gossipsub::IdentTopic, Vec<u8>, Reply),
    Ledger(Vec<u8>, Reply),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    ledger: request_response::Behaviour<FrameCodec>,
}

/// A running hostile peer.
#[derive(Debug)]
pub struct Adversary {
    pub key: Keypair,
    actions: mpsc::Sender<Action>,
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
        swarm.dial(target).expect("dial");
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                gossipsub::Event::Subscribed { .. },
            )) = swarm.select_next_some().await
            {
                break;
            }
        }
        let (actions, inbox) = mpsc::channel::<Action>(16);
        tokio::spawn(drive(swarm, inbox, target_id));
        Adversary { key, actions }
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
}

async fn drive(mut swarm: Swarm<Behaviour>, mut inbox: mpsc::Receiver<Action>, target: PeerId) {
    let mut pending = std::collections::HashMap::new();
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
            },
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
                _ => {}
            },
        }
    }
}
