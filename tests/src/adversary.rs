//! A hostile peer: a bare libp2p swarm that speaks the advert gossip topic and publishes whatever
//! bytes a test hands it.

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, SwarmBuilder, gossipsub, noise, tcp, yamux};
use suanli_node::network::{advert_topic, gossipsub_config};
use suanli_protocol::Keypair;
use tokio::sync::{mpsc, oneshot};

type Publish = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// A running hostile peer.
#[derive(Debug)]
pub struct Adversary {
    pub key: Keypair,
    publish: mpsc::Sender<Publish>,
}

impl Adversary {
    /// Connects to `target` and waits until the target has subscribed to the advert topic.
    pub async fn connect(key: Keypair, target: Multiaddr) -> Adversary {
        let mut swarm: Swarm<gossipsub::Behaviour> =
            SwarmBuilder::with_existing_identity(key.to_libp2p())
                .with_tokio()
                .with_tcp(
                    tcp::Config::default(),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .expect("tcp")
                .with_behaviour(|key| {
                    gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        gossipsub_config().expect("config"),
                    )
                    .expect("gossipsub")
                })
                .expect("behaviour")
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build();
        swarm
            .behaviour_mut()
            .subscribe(&advert_topic())
            .expect("subscribe");
        swarm.dial(target).expect("dial");
        loop {
            if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) =
                swarm.select_next_some().await
            {
                break;
            }
        }
        let (publish, mut inbox) = mpsc::channel::<Publish>(16);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    request = inbox.recv() => {
                        let Some((bytes, reply)) = request else { break };
                        let result = swarm
                            .behaviour_mut()
                            .publish(advert_topic(), bytes)
                            .map(|_| ())
                            .map_err(|error| error.to_string());
                        let _ = reply.send(result);
                    }
                    _ = swarm.select_next_some() => {}
                }
            }
        });
        Adversary { key, publish }
    }

    /// Publishes raw bytes on the advert topic.
    pub async fn publish(&self, bytes: Vec<u8>) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.publish
            .send((bytes, reply))
            .await
            .map_err(|_| "adversary stopped".to_owned())?;
        answer.await.map_err(|_| "adversary stopped".to_owned())?
    }
}
