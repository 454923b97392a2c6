//! Peers the node knows: their addresses, whether they are connected, and when to re-dial them.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use crate::data_dir::{MAX_ADDRS_PER_PEER, MAX_PERSISTED_PEERS, PersistedPeers};

use super::PeerInfo;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Peer {
    addrs: Vec<Multiaddr>,
    agent_version: Option<String>,
    connections: u32,
    /// When to dial next while disconnected; `None` when connected or never to be re-dialled.
    redial_at: Option<Instant>,
    backoff: Option<Duration>,
}

/// The peer book: one entry per suanli peer seen, bounded.
#[derive(Debug, Default)]
pub struct PeerBook {
    peers: BTreeMap<PeerId, Peer>,
    dirty: bool,
}

/// Whether an address is worth remembering and dialling (not `0.0.0.0`, not `::`).
pub fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|protocol| match protocol {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// The address without a trailing `/p2p/<id>`.
pub fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|protocol| !matches!(protocol, Protocol::P2p(_)))
        .collect()
}

impl PeerBook {
    /// Peers from `peers.json`, scheduled for an immediate dial.
    pub fn from_persisted(persisted: &PersistedPeers, now: Instant) -> PeerBook {
        let mut book = PeerBook::default();
        for (id, addrs) in &persisted.peers {
            let Ok(peer_id) = id.parse::<PeerId>() else {
                continue;
            };
            let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
            book.learn(peer_id, addrs);
            book.dial_soon(&peer_id, now);
        }
        book.dirty = false;
        book
    }

    pub fn to_persisted(&self) -> PersistedPeers {
        PersistedPeers {
            peers: self
                .peers
                .iter()
                .filter(|(_, peer)| !peer.addrs.is_empty())
                .map(|(id, peer)| {
                    (
                        id.to_string(),
                        peer.addrs.iter().map(ToString::to_string).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Takes the "changed since last save" flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Remembers addresses of a peer (most recent first, bounded).
    pub fn learn(&mut self, peer_id: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        if !self.peers.contains_key(&peer_id) && self.peers.len() >= MAX_PERSISTED_PEERS {
            return;
        }
        let peer = self.peers.entry(peer_id).or_default();
        for addr in addrs {
            let addr = without_peer_id(&addr);
            if !is_dialable(&addr) || peer.addrs.contains(&addr) {
                continue;
            }
            peer.addrs.insert(0, addr);
            peer.addrs.truncate(MAX_ADDRS_PER_PEER);
            self.dirty = true;
        }
    }

    pub fn set_agent(&mut self, peer_id: &PeerId, agent_version: String) {
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.agent_version = Some(agent_version);
        }
    }

    pub fn connected(&mut self, peer_id: PeerId) {
        if !self.peers.contains_key(&peer_id) && self.peers.len() >= MAX_PERSISTED_PEERS {
            // Make room: forget a disconnected peer, preferring one without addresses.
            let victim = self
                .peers
                .iter()
                .filter(|(_, peer)| peer.connections == 0)
                .min_by_key(|(_, peer)| peer.addrs.len())
                .map(|(id, _)| *id);
            if let Some(victim) = victim {
                self.peers.remove(&victim);
            }
        }
        let peer = self.peers.entry(peer_id).or_default();
        peer.connections = peer.connections.saturating_add(1);
        peer.redial_at = None;
        peer.backoff = None;
    }

    /// A connection closed; when it was the last one, schedule a re-dial with backoff.
    pub fn disconnected(&mut self, peer_id: &PeerId, remaining: u32, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.connections = remaining;
            if remaining == 0 && !peer.addrs.is_empty() {
                let backoff = peer.backoff.unwrap_or(FIRST_BACKOFF);
                peer.redial_at = Some(now + backoff);
                peer.backoff = Some(backoff);
            }
        }
    }

    /// Schedules a dial at `now` unless the peer is connected.
    pub fn dial_soon(&mut self, peer_id: &PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id)
            && peer.connections == 0
        {
            peer.redial_at = Some(now);
        }
    }

    /// A dial failed: try again later, waiting twice as long (up to a minute).
    pub fn dial_failed(&mut self, peer_id: &PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id)
            && peer.connections == 0
            && !peer.addrs.is_empty()
        {
            let backoff = peer
                .backoff
                .map_or(FIRST_BACKOFF, |backoff| (backoff * 2).min(MAX_BACKOFF));
            peer.backoff = Some(backoff);
            peer.redial_at = Some(now + backoff);
        }
    }

    /// Peers due for a re-dial, with their addresses; each is rescheduled as if the dial failed,
    /// so a dial that never reports back is retried too.
    pub fn due(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.redial_at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| {
                self.dial_failed(&id, now);
                self.peers.get(&id).map(|peer| (id, peer.addrs.clone()))
            })
            .collect()
    }

    pub fn is_connected(&self, peer_id: &PeerId) -> bool {
        self.peers
            .get(peer_id)
            .is_some_and(|peer| peer.connections > 0)
    }

    pub fn connected_count(&self) -> usize {
        self.peers
            .values()
            .filter(|peer| peer.connections > 0)
            .count()
    }

    pub fn connected_info(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.connections > 0)
            .map(|(id, peer)| PeerInfo {
                node_id: id.to_string(),
                addrs: peer.addrs.iter().map(ToString::to_string).collect(),
                agent_version: peer.agent_version.clone(),
                connections: peer.connections,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let now = Instant::now();
        let mut book = PeerBook::default();
        let peer = PeerId::random();
        book.learn(peer, ["/ip4/127.0.0.1/tcp/1".parse().unwrap()]);
        book.connected(peer);
        book.disconnected(&peer, 0, now);
        assert!(book.due(now).is_empty());
        assert_eq!(book.due(now + FIRST_BACKOFF).len(), 1);
        // `due` rescheduled with a doubled backoff.
        assert!(
            book.due(now + FIRST_BACKOFF + Duration::from_millis(1500))
                .is_empty()
        );
        assert_eq!(book.due(now + FIRST_BACKOFF * 3).len(), 1);
        book.connected(peer);
        assert!(book.due(now + MAX_BACKOFF * 10).is_empty());
    }

    #[test]
    fn unspecified_addresses_are_not_remembered() {
        let mut book = PeerBook::default();
        let peer = PeerId::random();
        book.learn(peer, ["/ip4/0.0.0.0/tcp/1".parse().unwrap()]);
        assert!(book.to_persisted().peers.is_empty());
    }
}
