//! Peers the node knows: their addresses, which of their connections are alive, and when to
//! re-dial them.
//!
//! A connection counts as alive from the moment it opens until it is closed or goes silent
//! (answers no ping for the silence bound, see [`PeerBook::take_silent`]); a peer is listed as
//! connected only while it holds an alive connection. The book is pure bookkeeping over the
//! times it is given: the event loop closes the connections it reports and performs the dials.
//!
//! Re-dial schedule of a peer without an alive connection: the first re-dial comes
//! [`FIRST_BACKOFF`] after the loss, then the wait doubles after every attempt. For
//! [`RECENT_LOSS`] after a peer was lost the wait is capped at the "recent" cap (the ping
//! interval), so a peer behind a healed cut is back within about one ping interval; after that,
//! and for peers never connected in this run (from `peers.json` or the bootstrap list), it is
//! capped at [`MAX_BACKOFF`] — except while the node has no peer at all, when every wait is
//! capped at the recent cap (a joining node whose bootstrap peer is full tries again soon). A
//! connection resets the schedule.
//!
//! Bounded connections (see [`super::peer_manager`]): a peer the node let go of on purpose is
//! [pruned](PeerBook::pruned): it leaves the live set at once and is not re-dialled for
//! [`PRUNE_COOLDOWN`]. A peer that closes a connection that was healthy (it proved alive within
//! the last ping interval) let us go, or is leaving: it is not re-dialled for
//! [`CLOSED_COOLDOWN`], so that two nodes above their targets do not reconnect each other in a
//! loop. Re-dials run only while the node is below its target, at most as many at a time as it
//! is short; held peers are re-dialled regardless, and a node without any peer ignores the
//! cooldowns.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use crate::data_dir::{MAX_ADDRS_PER_PEER, MAX_PERSISTED_PEERS, PersistedPeers};

use super::PeerInfo;

/// Wait before the first re-dial of a lost peer (and the first retry of a failed dial).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two re-dials.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long after a peer was lost its re-dials stay capped at the recent cap: long enough to
/// ride out a typical network incident, short enough that a peer gone for good costs one dial a
/// minute, not one every few seconds.
pub const RECENT_LOSS: Duration = Duration::from_secs(300);
/// How long a pruned peer is not re-dialled (it would be pruned again: the node had too many).
pub const PRUNE_COOLDOWN: Duration = Duration::from_secs(600);
/// How long a peer that closed a healthy connection is not re-dialled.
pub const CLOSED_COOLDOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Peer {
    addrs: Vec<Multiaddr>,
    agent_version: Option<String>,
    /// Connections believed alive, each with when it last proved it (opened or answered a
    /// ping). Bounded by the per-peer connection limit.
    alive: BTreeMap<ConnectionId, Instant>,
    /// When the peer's last alive connection went; `None` while connected, and for peers not
    /// connected since the node started.
    lost_at: Option<Instant>,
    /// Re-dials since the peer was lost (or since the node started).
    attempts: u32,
    /// When to dial next while disconnected; `None` when connected or never to be re-dialled.
    redial_at: Option<Instant>,
    /// Not re-dialled before this (it was let go of, or let us go), unless held or alone.
    cooldown_until: Option<Instant>,
    /// Whether this node dialled the peer's oldest alive connection.
    outbound: bool,
    /// The alive connections this node dialled (the others the peer dialled).
    dialled: std::collections::BTreeSet<ConnectionId>,
    /// When the peer's oldest alive connection opened.
    connected_at: Option<Instant>,
    /// When the peer last served or asked for something (a request or a response).
    useful_at: Option<Instant>,
}

/// A live peer as the peer manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivePeer {
    pub peer: PeerId,
    pub outbound: bool,
    pub connected_at: Instant,
    pub useful_at: Option<Instant>,
}

/// The peer book: one entry per peer seen, bounded.
#[derive(Debug)]
pub struct PeerBook {
    peers: BTreeMap<PeerId, Peer>,
    /// Longest wait between re-dials of a recently lost peer.
    recent_cap: Duration,
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
    /// An empty book; `recent_cap` is the longest wait between re-dials of a recently lost peer.
    pub fn new(recent_cap: Duration) -> PeerBook {
        PeerBook {
            peers: BTreeMap::new(),
            recent_cap,
            dirty: false,
        }
    }

    /// Peers from `peers.json`, scheduled for an immediate dial (made only while the node is
    /// below its target: see [`PeerBook::due`]).
    pub fn from_persisted(
        persisted: &PersistedPeers,
        recent_cap: Duration,
        now: Instant,
    ) -> PeerBook {
        let mut book = PeerBook::new(recent_cap);
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

    /// A connection opened (`outbound`: this node dialled it): it counts as alive from now, and
    /// the re-dial schedule resets.
    pub fn connected(
        &mut self,
        peer_id: PeerId,
        connection: ConnectionId,
        outbound: bool,
        now: Instant,
    ) {
        if !self.peers.contains_key(&peer_id) && self.peers.len() >= MAX_PERSISTED_PEERS {
            // Make room: forget a disconnected peer, preferring one without addresses.
            let victim = self
                .peers
                .iter()
                .filter(|(_, peer)| peer.alive.is_empty())
                .min_by_key(|(_, peer)| peer.addrs.len())
                .map(|(id, _)| *id);
            if let Some(victim) = victim {
                self.peers.remove(&victim);
            }
        }
        let peer = self.peers.entry(peer_id).or_default();
        if peer.alive.is_empty() {
            peer.outbound = outbound;
            peer.connected_at = Some(now);
        }
        if outbound {
            peer.dialled.insert(connection);
        }
        peer.alive.insert(connection, now);
        peer.lost_at = None;
        peer.attempts = 0;
        peer.redial_at = None;
        peer.cooldown_until = None;
    }

    /// A ping on `connection` was answered: it proved alive at `now`.
    pub fn answered(&mut self, peer_id: &PeerId, connection: ConnectionId, now: Instant) {
        if let Some(last) = self
            .peers
            .get_mut(peer_id)
            .and_then(|peer| peer.alive.get_mut(&connection))
        {
            *last = now;
        }
    }

    /// `peer_id` sent or answered a request: it is worth keeping.
    pub fn useful(&mut self, peer_id: &PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.useful_at = Some(now);
        }
    }

    /// This node let go of `peer_id` (it holds more peers than its target): it leaves the live
    /// set now, before its connections finish closing, and is not re-dialled for
    /// [`PRUNE_COOLDOWN`] (it may still dial us, or be dialled for a request).
    pub fn pruned(&mut self, peer_id: &PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.alive.clear();
            peer.dialled.clear();
            peer.lost_at = Some(now);
            peer.attempts = 0;
            peer.redial_at = (!peer.addrs.is_empty()).then_some(now + FIRST_BACKOFF);
            peer.cooldown_until = Some(now + PRUNE_COOLDOWN);
        }
    }

    /// `peer_id` delivered a message on one of its connections, unknown which: each counts as
    /// heard now (a peer normally has one).
    pub fn heard_from(&mut self, peer_id: &PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id) {
            for last in peer.alive.values_mut() {
                *last = now;
            }
        }
    }

    /// This node's own event loop stalled for `stall` (it could not hear anyone meanwhile):
    /// every alive connection's silence is counted from `stall` later, so that a node that
    /// fell behind does not close healthy connections (and add reconnections to its load).
    pub fn forgive(&mut self, stall: Duration) {
        for peer in self.peers.values_mut() {
            for last in peer.alive.values_mut() {
                *last += stall;
            }
        }
    }

    /// A connection closed, or is being closed as dead: it no longer counts. When it was the
    /// peer's last alive one, the peer is lost and a re-dial is scheduled; returns whether so.
    /// Calling it again for the same connection (the close completing) changes nothing.
    pub fn closed(&mut self, peer_id: &PeerId, connection: ConnectionId, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(peer_id) else {
            return false;
        };
        peer.dialled.remove(&connection);
        let Some(proved_at) = peer.alive.remove(&connection) else {
            return false;
        };
        if !peer.alive.is_empty() {
            return false;
        }
        if now.saturating_duration_since(proved_at) < self.recent_cap {
            peer.cooldown_until = Some(now + CLOSED_COOLDOWN);
        }
        peer.lost_at = Some(now);
        peer.attempts = 0;
        if !peer.addrs.is_empty() {
            peer.redial_at = Some(now + FIRST_BACKOFF.min(self.recent_cap));
        }
        true
    }

    /// Connections that proved alive last before `now - silence`: each is taken out of the
    /// alive set (as by [`PeerBook::closed`]) and returned for the caller to close.
    pub fn take_silent(&mut self, now: Instant, silence: Duration) -> Vec<(PeerId, ConnectionId)> {
        let silent: Vec<(PeerId, ConnectionId)> = self
            .peers
            .iter()
            .flat_map(|(id, peer)| {
                peer.alive
                    .iter()
                    .filter(|(_, last)| now.saturating_duration_since(**last) > silence)
                    .map(|(connection, _)| (*id, *connection))
            })
            .collect();
        for (peer_id, connection) in &silent {
            self.closed(peer_id, *connection, now);
        }
        silent
    }

    /// Schedules a dial at `now` unless the peer is connected.
    pub fn dial_soon(&mut self, peer_id: &PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(peer_id)
            && peer.alive.is_empty()
        {
            peer.redial_at = Some(now);
        }
    }

    /// A dial failed. The peer's next re-dial was scheduled when this one started (see
    /// [`PeerBook::due`]); only a peer with none scheduled gets one.
    pub fn dial_failed(&mut self, peer_id: &PeerId, now: Instant) {
        let recent_cap = self.recent_cap;
        if let Some(peer) = self.peers.get_mut(peer_id)
            && peer.alive.is_empty()
            && !peer.addrs.is_empty()
            && peer.redial_at.is_none()
        {
            peer.redial_at = Some(now + peer.backoff(recent_cap, now));
        }
    }

    /// Peers due for a re-dial, with their addresses: every due peer that `held` names, and of
    /// the others at most `wanted` (how many peers the node is short of its target), skipping
    /// those in cooldown unless the node has no peer at all. Each is
    /// rescheduled at once by the backoff, so a dial that never reports back is retried too, and
    /// a failure that does report back does not shorten or lengthen the wait. Due peers left
    /// out stay due.
    pub fn due(
        &mut self,
        now: Instant,
        wanted: usize,
        held: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let recent_cap = self.recent_cap;
        let mut budget = wanted;
        let alone = self.peers.values().all(|peer| peer.alive.is_empty());
        self.peers
            .iter_mut()
            .filter(|(_, peer)| peer.redial_at.is_some_and(|at| at <= now))
            .filter(|(id, peer)| {
                if held(id) {
                    return true;
                }
                let cooling = peer.cooldown_until.is_some_and(|until| until > now);
                if cooling && !alone {
                    return false;
                }
                let take = budget > 0;
                budget = budget.saturating_sub(1);
                take
            })
            .map(|(id, peer)| {
                peer.attempts = peer.attempts.saturating_add(1);
                // A node without any peer keeps trying every recent cap at least.
                let backoff = peer.backoff(recent_cap, now);
                let backoff = if alone {
                    backoff.min(recent_cap)
                } else {
                    backoff
                };
                peer.redial_at = Some(now + backoff);
                (*id, peer.addrs.clone())
            })
            .collect()
    }

    pub fn is_connected(&self, peer_id: &PeerId) -> bool {
        self.peers
            .get(peer_id)
            .is_some_and(|peer| !peer.alive.is_empty())
    }

    /// The peers holding a live connection, for the peer manager.
    pub fn live(&self) -> Vec<LivePeer> {
        self.peers
            .iter()
            .filter(|(_, peer)| !peer.alive.is_empty())
            .map(|(id, peer)| LivePeer {
                peer: *id,
                outbound: peer.outbound,
                connected_at: peer
                    .connected_at
                    .unwrap_or(peer.lost_at.unwrap_or_else(Instant::now)),
                useful_at: peer.useful_at,
            })
            .collect()
    }

    /// The alive connections to close so that each peer connected for at least `settled`
    /// keeps one (two nodes dialling each other at once end up with two; a restarted peer's
    /// new connection may meet its old one not yet closed). Both ends keep the same one: the
    /// newest dialled by the node with the smaller id (`local` is this node's), else the newest.
    pub fn duplicates(
        &self,
        local: &PeerId,
        now: Instant,
        settled: Duration,
    ) -> Vec<(PeerId, ConnectionId)> {
        self.peers
            .iter()
            .filter(|(_, peer)| {
                peer.alive.len() > 1
                    && peer
                        .connected_at
                        .is_some_and(|at| now.saturating_duration_since(at) >= settled)
            })
            .flat_map(|(id, peer)| {
                let we_dial_first = local.to_bytes() < id.to_bytes();
                let preferred = peer
                    .alive
                    .keys()
                    .rev()
                    .find(|connection| peer.dialled.contains(connection) == we_dial_first)
                    .or_else(|| peer.alive.keys().next_back())
                    .copied();
                peer.alive
                    .keys()
                    .filter(|connection| Some(**connection) != preferred)
                    .map(|connection| (*id, *connection))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Whether `peer_id` is in a cooldown (let go of, or let us go, recently) at `now`.
    pub fn is_cooling(&self, peer_id: &PeerId, now: Instant) -> bool {
        self.peers
            .get(peer_id)
            .and_then(|peer| peer.cooldown_until)
            .is_some_and(|until| until > now)
    }

    /// The addresses known for `peer_id`.
    pub fn addrs(&self, peer_id: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer_id)
            .map(|peer| peer.addrs.clone())
            .unwrap_or_default()
    }

    pub fn connected_count(&self) -> usize {
        self.peers
            .values()
            .filter(|peer| !peer.alive.is_empty())
            .count()
    }

    pub fn connected_info(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|(_, peer)| !peer.alive.is_empty())
            .map(|(id, peer)| PeerInfo {
                node_id: id.to_string(),
                addrs: peer.addrs.iter().map(ToString::to_string).collect(),
                agent_version: peer.agent_version.clone(),
                connections: u32::try_from(peer.alive.len()).unwrap_or(u32::MAX),
                standing: None,
            })
            .collect()
    }
}

impl Peer {
    /// The wait before the next re-dial: [`FIRST_BACKOFF`] doubled per attempt so far, capped at
    /// `recent_cap` while the peer was lost less than [`RECENT_LOSS`] ago, else at
    /// [`MAX_BACKOFF`].
    fn backoff(&self, recent_cap: Duration, now: Instant) -> Duration {
        let recent = self
            .lost_at
            .is_some_and(|lost| now.saturating_duration_since(lost) < RECENT_LOSS);
        let cap = if recent {
            recent_cap.min(MAX_BACKOFF)
        } else {
            MAX_BACKOFF
        };
        let doubled = FIRST_BACKOFF.saturating_mul(1 << self.attempts.min(16));
        doubled.min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECENT_CAP: Duration = Duration::from_secs(5);

    fn book_with_peer() -> (PeerBook, PeerId) {
        let mut book = PeerBook::new(RECENT_CAP);
        let peer = PeerId::random();
        book.learn(peer, ["/ip4/127.0.0.1/tcp/1".parse().unwrap()]);
        (book, peer)
    }

    fn connection(id: usize) -> ConnectionId {
        ConnectionId::new_unchecked(id)
    }

    /// Connects another peer, so that the book's node is not alone (whose waits are shorter).
    fn not_alone(book: &mut PeerBook, now: Instant) {
        book.connected(PeerId::random(), connection(99), true, now);
    }

    /// Dials due at each second from `from` for `span`, as offsets from `from` in whole seconds.
    fn dial_times(book: &mut PeerBook, from: Instant, span: Duration) -> Vec<u64> {
        let mut times = Vec::new();
        let mut offset = Duration::ZERO;
        while offset <= span {
            if !book.due(from + offset, usize::MAX, |_| false).is_empty() {
                times.push(offset.as_secs());
            }
            offset += Duration::from_secs(1);
        }
        times
    }

    #[test]
    fn a_stall_of_this_node_is_not_counted_as_silence() {
        let now = Instant::now();
        let silence = Duration::from_secs(15);
        let (mut book, peer) = book_with_peer();
        book.connected(peer, connection(1), true, now);
        // 20 s without an answer, 10 of which this node's loop was stalled: 10 s of silence.
        book.forgive(Duration::from_secs(10));
        assert!(
            book.take_silent(now + Duration::from_secs(20), silence)
                .is_empty()
        );
        // Past the limit counted from the shifted time, it is closed.
        assert_eq!(
            book.take_silent(now + Duration::from_secs(26), silence),
            [(peer, connection(1))]
        );
    }

    #[test]
    fn a_peer_never_connected_backs_off_to_a_minute() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        not_alone(&mut book, now);
        book.dial_soon(&peer, now);
        // Attempts at 0, then waits of 2, 4, 8, 16, 32, then 60 s.
        assert_eq!(
            dial_times(&mut book, now, Duration::from_secs(190)),
            [0, 2, 6, 14, 30, 62, 122, 182]
        );
    }

    #[test]
    fn a_recently_lost_peer_is_redialled_every_recent_cap_then_less_often() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        not_alone(&mut book, now);
        book.connected(peer, connection(1), true, now - RECENT_CAP);
        // Closed after a silence (no cooldown).
        assert!(book.closed(&peer, connection(1), now));
        assert!(!book.is_connected(&peer));
        let early = dial_times(&mut book, now, Duration::from_secs(40));
        assert_eq!(early, [1, 3, 7, 12, 17, 22, 27, 32, 37]);
        // No gap longer than the cap while the loss is recent...
        let recent = dial_times(&mut book, now + Duration::from_secs(41), RECENT_LOSS);
        assert!(recent.windows(2).all(|pair| pair[1] - pair[0] <= 5));
        // ...and a minute apart once it is not.
        let later = dial_times(
            &mut book,
            now + RECENT_LOSS + Duration::from_secs(60),
            Duration::from_secs(300),
        );
        assert!(later.len() <= 6, "{later:?}");
        assert!(later.windows(2).all(|pair| pair[1] - pair[0] == 60));
    }

    #[test]
    fn a_reported_dial_failure_keeps_the_schedule() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        book.dial_soon(&peer, now);
        assert_eq!(book.due(now, usize::MAX, |_| false).len(), 1);
        book.dial_failed(&peer, now + Duration::from_millis(10));
        // The next dial stays 2 s after the first: the failure does not double the wait again.
        assert!(
            book.due(now + Duration::from_millis(1900), usize::MAX, |_| false)
                .is_empty()
        );
        assert_eq!(
            book.due(now + Duration::from_secs(2), usize::MAX, |_| false)
                .len(),
            1
        );
    }

    #[test]
    fn a_connection_resets_the_schedule() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        book.dial_soon(&peer, now);
        dial_times(&mut book, now, Duration::from_secs(100));
        book.connected(peer, connection(1), true, now + Duration::from_secs(100));
        assert!(
            book.due(now + MAX_BACKOFF * 10, usize::MAX, |_| false)
                .is_empty()
        );
        book.closed(&peer, connection(1), now + Duration::from_secs(200));
        assert_eq!(
            book.due(now + Duration::from_secs(201), usize::MAX, |_| false)
                .len(),
            1
        );
    }

    #[test]
    fn a_peer_is_listed_while_one_connection_is_alive() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        book.connected(peer, connection(1), true, now);
        book.connected(peer, connection(2), true, now);
        assert_eq!(book.connected_info()[0].connections, 2);
        assert!(!book.closed(&peer, connection(1), now));
        assert!(book.is_connected(&peer));
        assert_eq!(book.connected_info()[0].connections, 1);
        // The close of a connection already taken out changes nothing.
        assert!(!book.closed(&peer, connection(1), now));
        assert!(
            book.due(now + MAX_BACKOFF, usize::MAX, |_| false)
                .is_empty()
        );
        assert!(book.closed(&peer, connection(2), now));
        assert!(book.connected_info().is_empty());
        assert_eq!(book.connected_count(), 0);
    }

    #[test]
    fn silent_connections_are_taken_out_and_answered_ones_stay() {
        let now = Instant::now();
        let silence = Duration::from_secs(15);
        let (mut book, quiet) = book_with_peer();
        let chatty = PeerId::random();
        book.connected(quiet, connection(1), true, now);
        book.connected(chatty, connection(2), true, now);
        for second in [5, 10, 15, 20] {
            book.answered(&chatty, connection(2), now + Duration::from_secs(second));
        }
        // A ping answer on a connection the book does not hold is ignored.
        book.answered(&quiet, connection(9), now + Duration::from_secs(20));
        assert!(book.take_silent(now + silence, silence).is_empty());
        let later = now + silence + Duration::from_millis(1);
        assert_eq!(book.take_silent(later, silence), [(quiet, connection(1))]);
        assert!(!book.is_connected(&quiet));
        assert!(book.is_connected(&chatty));
        // Taken out once: the next check and the close completing change nothing.
        assert!(book.take_silent(later, silence).is_empty());
        assert!(!book.closed(&quiet, connection(1), later));
        // The silent peer is re-dialled a second later.
        assert_eq!(
            book.due(later + FIRST_BACKOFF, usize::MAX, |_| false).len(),
            1
        );
    }

    #[test]
    fn unspecified_addresses_are_not_remembered() {
        let mut book = PeerBook::new(RECENT_CAP);
        let peer = PeerId::random();
        book.learn(peer, ["/ip4/0.0.0.0/tcp/1".parse().unwrap()]);
        assert!(book.to_persisted().peers.is_empty());
    }

    #[test]
    fn a_pruned_peer_is_not_redialled_during_its_cooldown() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        book.connected(peer, connection(1), false, now);
        book.pruned(&peer, now);
        assert!(!book.is_connected(&peer));
        // Its connection closing afterwards changes nothing.
        assert!(!book.closed(&peer, connection(1), now));
        // Not re-dialled during the cooldown while the node has other peers...
        let other = PeerId::random();
        book.connected(other, connection(2), true, now);
        let before = now + PRUNE_COOLDOWN - Duration::from_secs(1);
        assert!(book.due(before, usize::MAX, |_| false).is_empty());
        assert_eq!(
            book.due(now + PRUNE_COOLDOWN, usize::MAX, |_| false).len(),
            1
        );
        // ... but at once by a node left without any.
        let (mut book, peer) = book_with_peer();
        book.connected(peer, connection(1), false, now);
        book.pruned(&peer, now);
        assert_eq!(
            book.due(now + FIRST_BACKOFF, usize::MAX, |_| false).len(),
            1
        );
    }

    #[test]
    fn a_peer_that_closes_a_healthy_connection_is_redialled_after_a_cooldown() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        let other = PeerId::random();
        book.connected(other, connection(9), true, now);
        book.connected(peer, connection(1), true, now);
        // Closed right after it answered: it let us go.
        assert!(book.closed(&peer, connection(1), now + Duration::from_secs(1)));
        let soon = now + Duration::from_secs(30);
        assert!(book.due(soon, usize::MAX, |_| false).is_empty());
        assert!(
            !book
                .due(
                    now + CLOSED_COOLDOWN + Duration::from_secs(1),
                    usize::MAX,
                    |_| false
                )
                .is_empty()
        );
        // Closed after a silence (a dead link): re-dialled at once.
        book.connected(peer, connection(2), true, now);
        assert!(book.closed(&peer, connection(2), now + RECENT_CAP * 2));
        assert_eq!(
            book.due(now + RECENT_CAP * 2 + FIRST_BACKOFF, usize::MAX, |_| false)
                .len(),
            1
        );
    }

    #[test]
    fn redials_stop_at_the_target_but_not_for_held_peers() {
        let now = Instant::now();
        let mut book = PeerBook::new(RECENT_CAP);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (index, peer) in peers.iter().enumerate() {
            book.learn(
                *peer,
                [format!("/ip4/127.0.0.1/tcp/{}", index + 1).parse().unwrap()],
            );
            book.dial_soon(peer, now);
        }
        // Short of two peers: two dials; the others stay due.
        let first = book.due(now, 2, |_| false);
        assert_eq!(first.len(), 2);
        // At the target: only a held peer is dialled.
        let waiting = *peers
            .iter()
            .find(|peer| first.iter().all(|(dialled, _)| dialled != *peer))
            .unwrap();
        let held = book.due(now, 0, |peer| *peer == waiting);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0, waiting);
        assert_eq!(book.due(now, 5, |_| false).len(), 2);
    }

    #[test]
    fn a_node_without_peers_retries_every_recent_cap() {
        let now = Instant::now();
        let (mut book, peer) = book_with_peer();
        book.dial_soon(&peer, now);
        // Attempts at 0, then waits of 2, 4, then the recent cap (5 s).
        assert_eq!(
            dial_times(&mut book, now, Duration::from_secs(30)),
            [0, 2, 6, 11, 16, 21, 26]
        );
    }

    #[test]
    fn both_ends_keep_the_same_one_of_two_connections() {
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let (mut at_a, mut at_b) = (PeerBook::new(RECENT_CAP), PeerBook::new(RECENT_CAP));
        // Connection X is dialled by a, Y by b; each end numbers them its own way.
        at_a.connected(b, connection(1), true, now);
        at_a.connected(b, connection(2), false, now);
        at_b.connected(a, connection(7), false, now);
        at_b.connected(a, connection(3), true, now);
        let later = now + Duration::from_secs(3);
        let closed_at_a = at_a.duplicates(&a, later, Duration::from_secs(2));
        let closed_at_b = at_b.duplicates(&b, later, Duration::from_secs(2));
        assert_eq!(closed_at_a.len(), 1);
        assert_eq!(closed_at_b.len(), 1);
        // a closes X (its own dial) exactly when b closes X (b's connection 7).
        let a_closes_x = closed_at_a[0].1 == connection(1);
        let b_closes_x = closed_at_b[0].1 == connection(7);
        assert_eq!(a_closes_x, b_closes_x);
        // Not before the connections settled.
        assert!(at_a.duplicates(&a, now, Duration::from_secs(2)).is_empty());
        // Two connections dialled by the same end (an old one not yet closed and a new one):
        // the newest stays.
        let mut book = PeerBook::new(RECENT_CAP);
        book.connected(b, connection(4), false, now);
        book.connected(b, connection(9), false, now);
        assert_eq!(
            book.duplicates(&a, later, Duration::from_secs(2)),
            [(b, connection(4))]
        );
    }
}
