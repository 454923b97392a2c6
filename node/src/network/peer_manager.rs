//! Which connected peers to let go when the node holds more than its target (issue 13): pure
//! bookkeeping over a snapshot the event loop gives it, so the rule is tested on its own.
//!
//! A peer is **protected**, and never chosen, when:
//! - it is one of the (at most six) peers of our advert gossip mesh: adverts reach the mesh
//!   through it;
//! - a request or a stream with it is in flight, or a contract holds it;
//! - its connection is younger than [`GRACE`] (identify, subscription and grafting are not done);
//! - it is one of the outbound peers we keep at least ⌈target / 3⌉ of (eclipse resistance: an
//!   attacker that fills our inbound slots cannot make us drop every peer we chose).
//!
//! Among the others, the heartbeat lets go of the lowest-value peers first, until the node is back
//! at its target:
//! 1. a negative gossip score;
//! 2. a region that is over-represented among the connected peers (diversity);
//! 3. inbound before outbound;
//! 4. useful longest ago;
//! 5. a tie-break salted per node, so that nodes do not all drop the same peer.
//!
//! The target is soft: protected peers are never dropped, so a node with more protected peers than
//! its target keeps them all. The hard maximum is the connection limit's.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// A connection younger than this is never pruned.
pub const GRACE: Duration = Duration::from_secs(2);

/// What the planner knows of one connected peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    pub peer: PeerId,
    /// We dialled it.
    pub outbound: bool,
    pub connected_at: Instant,
    /// When it last answered or served a request, or carried a stream.
    pub useful_at: Option<Instant>,
    /// Its gossipsub score, when known.
    pub score: Option<f64>,
    /// The region its advert names, when known.
    pub region: Option<String>,
    /// In a gossip mesh, in flight, or held by a contract.
    pub protected: bool,
}

/// The peers to disconnect so that at most `target` remain, lowest value first; fewer when
/// protected peers are in the way.
pub fn plan_prune(peers: &[PeerState], target: usize, now: Instant, salt: u64) -> Vec<PeerId> {
    let excess = peers.len().saturating_sub(target);
    if excess == 0 {
        return Vec::new();
    }
    let outbound_floor = target.div_ceil(3);
    // The outbound peers kept for the floor: the longest connected.
    let mut outbound: Vec<&PeerState> = peers.iter().filter(|peer| peer.outbound).collect();
    outbound.sort_by_key(|peer| peer.connected_at);
    let kept_outbound: Vec<PeerId> = outbound
        .iter()
        .take(outbound_floor)
        .map(|peer| peer.peer)
        .collect();
    let mut regions: BTreeMap<&str, usize> = BTreeMap::new();
    for peer in peers {
        if let Some(region) = &peer.region {
            *regions.entry(region.as_str()).or_default() += 1;
        }
    }
    let mut candidates: Vec<&PeerState> = peers
        .iter()
        .filter(|peer| {
            !peer.protected
                && now.saturating_duration_since(peer.connected_at) >= GRACE
                && !kept_outbound.contains(&peer.peer)
        })
        .collect();
    let crowd = |peer: &PeerState| {
        peer.region
            .as_deref()
            .and_then(|region| regions.get(region))
            .copied()
            .unwrap_or(0)
    };
    let tie = |peer: &PeerState| {
        let bytes = peer.peer.to_bytes();
        let tail: [u8; 8] = bytes[bytes.len() - 8..].try_into().unwrap_or([0; 8]);
        (u64::from_le_bytes(tail) ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    };
    candidates.sort_by(|a, b| {
        let negative = |peer: &PeerState| peer.score.is_some_and(|score| score < 0.0);
        negative(b)
            .cmp(&negative(a))
            .then_with(|| crowd(b).cmp(&crowd(a)))
            .then_with(|| a.outbound.cmp(&b.outbound))
            .then_with(|| a.useful_at.cmp(&b.useful_at))
            .then_with(|| tie(a).cmp(&tie(b)))
    });
    candidates
        .into_iter()
        .take(excess)
        .map(|peer| peer.peer)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(outbound: bool, age_secs: u64, now: Instant) -> PeerState {
        PeerState {
            peer: PeerId::random(),
            outbound,
            connected_at: now - Duration::from_secs(age_secs),
            useful_at: None,
            score: None,
            region: None,
            protected: false,
        }
    }

    #[test]
    fn nothing_is_pruned_at_or_below_the_target() {
        let now = Instant::now() + Duration::from_secs(3600);
        let peers: Vec<PeerState> = (0..5).map(|_| peer(false, 60, now)).collect();
        assert!(plan_prune(&peers, 5, now, 1).is_empty());
        assert!(plan_prune(&peers, 9, now, 1).is_empty());
        assert_eq!(plan_prune(&peers, 3, now, 1).len(), 2);
    }

    #[test]
    fn protected_young_and_kept_outbound_peers_are_never_chosen() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut peers: Vec<PeerState> = (0..6).map(|_| peer(false, 60, now)).collect();
        peers[0].protected = true;
        peers[1].connected_at = now - Duration::from_millis(100);
        // Two outbound peers and a target of 3: the floor keeps one (the older).
        peers[2].outbound = true;
        peers[2].connected_at = now - Duration::from_secs(600);
        peers[3].outbound = true;
        let chosen = plan_prune(&peers, 3, now, 7);
        assert_eq!(chosen.len(), 3);
        for kept in [0, 1, 2] {
            assert!(!chosen.contains(&peers[kept].peer), "{kept} was chosen");
        }
        // Everything protected: the target is soft.
        for peer in &mut peers {
            peer.protected = true;
        }
        assert!(plan_prune(&peers, 3, now, 7).is_empty());
    }

    #[test]
    fn bad_scores_then_crowded_regions_then_inbound_go_first() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut peers: Vec<PeerState> = (0..6).map(|_| peer(false, 60, now)).collect();
        for (index, region) in ["eu", "eu", "eu", "us", "asia", "us"].iter().enumerate() {
            peers[index].region = Some((*region).into());
        }
        peers[4].score = Some(-5.0);
        peers[3].outbound = true;
        peers[5].outbound = true;
        // Target 4 with 6 peers: the outbound floor (2) keeps both outbound peers; the first to
        // go is the badly scored one, then one from the crowded region.
        let chosen = plan_prune(&peers, 4, now, 3);
        assert_eq!(chosen.len(), 2);
        assert_eq!(chosen[0], peers[4].peer);
        assert!(peers[..3].iter().any(|peer| peer.peer == chosen[1]));
    }

    #[test]
    fn the_least_recently_useful_goes_first_and_salts_break_ties() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut peers: Vec<PeerState> = (0..4).map(|_| peer(false, 60, now)).collect();
        peers[0].useful_at = Some(now - Duration::from_secs(5));
        peers[1].useful_at = Some(now - Duration::from_secs(500));
        peers[2].useful_at = Some(now - Duration::from_secs(50));
        peers[3].useful_at = Some(now - Duration::from_secs(1));
        let chosen = plan_prune(&peers, 2, now, 0);
        assert_eq!(chosen, vec![peers[1].peer, peers[2].peer]);
        // Equal peers: different salts (different nodes) do not all pick the same one.
        let equal: Vec<PeerState> = (0..8).map(|_| peer(false, 60, now)).collect();
        let picks: std::collections::BTreeSet<PeerId> = (0..16)
            .map(|salt| plan_prune(&equal, 7, now, salt)[0])
            .collect();
        assert!(picks.len() > 1);
    }
}
