//! The capacity view of the mesh: the newest valid advert of every node, until it expires.
//!
//! Written only by the network task (the one place adverts arrive and are validated); read by the
//! API and the market. A cheap clone shares the same table. Each entry keeps the advert as its
//! author signed it, so that the view can be handed to a joining node page by page
//! ([`MeshView::page`]), which verifies every advert itself.
//!
//! Nodes proven to have equivocated (signed two inconsistent ledger checkpoints) are
//! [distrusted](MeshView::distrust) by the transparency module: their adverts are dropped and
//! refused from then on, so they are no longer chosen for placement.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use suanli_protocol::{CapacityAdvert, NodeId, Signed};

/// Most nodes the table holds; beyond it, adverts of unknown nodes are dropped until some expire.
pub const MAX_MESH_NODES: usize = 100_000;

/// One node's entry: its advert (decoded, and as signed) and when this node received it (Unix
/// ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshEntry {
    pub advert: CapacityAdvert,
    pub signed: Arc<Signed<CapacityAdvert>>,
    pub received_at_ms: u64,
}

impl MeshEntry {
    fn is_live(&self, now_ms: u64) -> bool {
        self.advert.expires_at_ms() > now_ms
    }
}

/// What happened to an offered advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// New node or newer sequence number: stored.
    Stored,
    /// Same or older sequence number than the one held: ignored.
    Stale,
    /// The table is full.
    Full,
    /// The node is distrusted.
    Distrusted,
}

/// The shared capacity table.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    table: Arc<RwLock<BTreeMap<NodeId, MeshEntry>>>,
    distrusted: Arc<RwLock<HashSet<NodeId>>>,
}

impl MeshView {
    // A panic elsewhere while holding the lock leaves the table consistent (every write is one
    // insert or remove), so a poisoned lock is used as is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, MeshEntry>> {
        self.table
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, MeshEntry>> {
        self.table
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Keeps `advert`, which `signed` holds and which the caller verified and validated, if it
    /// is newer than the one held.
    pub fn offer(
        &self,
        signed: Arc<Signed<CapacityAdvert>>,
        advert: CapacityAdvert,
        now_ms: u64,
    ) -> Offered {
        if self.is_distrusted(&advert.node) {
            return Offered::Distrusted;
        }
        let mut table = self.write();
        if let Some(held) = table.get(&advert.node) {
            if held.advert.seq >= advert.seq {
                return Offered::Stale;
            }
        } else if table.len() >= MAX_MESH_NODES {
            return Offered::Full;
        }
        table.insert(
            advert.node,
            MeshEntry {
                advert,
                signed,
                received_at_ms: now_ms,
            },
        );
        Offered::Stored
    }

    /// Drops every advert expired at `now_ms`; returns the nodes dropped.
    pub fn prune(&self, now_ms: u64) -> Vec<NodeId> {
        let mut table = self.write();
        let expired: Vec<NodeId> = table
            .iter()
            .filter(|(_, entry)| !entry.is_live(now_ms))
            .map(|(node, _)| *node)
            .collect();
        for node in &expired {
            table.remove(node);
        }
        expired
    }

    /// The live entries at `now_ms`, ordered by node id.
    pub fn snapshot(&self, now_ms: u64) -> Vec<MeshEntry> {
        let table = self.read();
        table
            .values()
            .filter(|entry| entry.is_live(now_ms))
            .cloned()
            .collect()
    }

    /// The nodes with a live entry at `now_ms`, in node-id order (without copying the entries:
    /// the peer manager reads this every second).
    pub fn live_nodes(&self, now_ms: u64) -> Vec<NodeId> {
        let table = self.read();
        table
            .iter()
            .filter(|(_, entry)| entry.is_live(now_ms))
            .map(|(node, _)| *node)
            .collect()
    }

    /// The live adverts as signed, in node-id order, of the nodes after `after`, until their
    /// bytes reach `budget`; and whether live adverts remain after the last one.
    pub fn page(
        &self,
        after: Option<&NodeId>,
        now_ms: u64,
        budget: usize,
    ) -> (Vec<Signed<CapacityAdvert>>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let table = self.read();
        let start = after.map_or(Unbounded, Excluded);
        let mut live = table
            .range((start, Unbounded))
            .map(|(_, entry)| entry)
            .filter(|entry| entry.is_live(now_ms));
        let mut page = Vec::new();
        let mut bytes = 0;
        for entry in live.by_ref() {
            bytes += entry.signed.bytes().len();
            page.push((*entry.signed).clone());
            if bytes >= budget {
                break;
            }
        }
        let more = live.next().is_some();
        (page, more)
    }

    /// How many live adverts the table holds at `now_ms` (no copying).
    pub fn live_count(&self, now_ms: u64) -> usize {
        let table = self.read();
        table.values().filter(|entry| entry.is_live(now_ms)).count()
    }

    /// Whether the view holds `signed`'s node at its sequence number or later, judged from the
    /// advert's unchecked contents: then it can be dropped without checking its signature, since
    /// a valid one would change nothing (gossip and view sync deliver most adverts twice, and
    /// verification is what a large mesh costs). `false` when it cannot be decoded.
    pub fn already_holds(&self, signed: &Signed<CapacityAdvert>) -> bool {
        signed.decode_unverified().is_ok_and(|advert| {
            self.seq_of(&advert.node)
                .is_some_and(|held| held >= advert.seq)
        })
    }

    /// The sequence number of the advert held for `node` (no copying).
    pub fn seq_of(&self, node: &NodeId) -> Option<u64> {
        let table = self.read();
        table.get(node).map(|entry| entry.advert.seq)
    }

    pub fn get(&self, node: &NodeId) -> Option<MeshEntry> {
        let table = self.read();
        table.get(node).cloned()
    }

    /// Drops `node`'s advert and refuses its adverts from now on (until restart; the
    /// transparency module re-applies its stored equivocation proofs at start).
    pub fn distrust(&self, node: NodeId) {
        self.distrusted
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(node);
        self.write().remove(&node);
    }

    pub fn is_distrusted(&self, node: &NodeId) -> bool {
        self.distrusted
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_protocol::{Keypair, PriceTerms, Resources};

    fn offer(view: &MeshView, key: &Keypair, seq: u64, at_ms: u64) -> Offered {
        let advert = advert(key, seq, at_ms);
        let signed = Arc::new(Signed::sign(&advert, key).unwrap());
        view.offer(signed, advert, at_ms)
    }

    fn advert(key: &Keypair, seq: u64, issued_at_ms: u64) -> CapacityAdvert {
        CapacityAdvert {
            node: key.node_id(),
            seq,
            issued_at_ms,
            ttl_ms: 1_000,
            region: String::new(),
            listen_addrs: vec![],
            total: Resources::default(),
            free: Resources::default(),
            executors: vec![],
            prices: PriceTerms::default(),
            load_permille: 0,
            software_version: String::new(),
            models: Vec::new(),
            cluster: None,
        }
    }

    #[test]
    fn an_advert_not_newer_than_the_held_one_is_recognised_before_any_check() {
        let view = MeshView::default();
        let key = Keypair::generate().unwrap();
        assert_eq!(offer(&view, &key, 5, 1_000), Offered::Stored);
        let signed = |seq| Signed::sign(&advert(&key, seq, 1_000), &key).unwrap();
        assert!(view.already_holds(&signed(5)));
        assert!(view.already_holds(&signed(4)));
        assert!(
            !view.already_holds(&signed(6)),
            "a newer one must be checked"
        );
        let stranger = Keypair::generate().unwrap();
        let unknown = Signed::sign(&advert(&stranger, 1, 1_000), &stranger).unwrap();
        assert!(
            !view.already_holds(&unknown),
            "an unknown node's must be checked"
        );
    }

    #[test]
    fn newest_wins_and_expired_are_dropped() {
        let view = MeshView::default();
        let key = Keypair::from_secret_bytes([1; 32]);
        assert_eq!(offer(&view, &key, 2, 1_000), Offered::Stored);
        assert_eq!(offer(&view, &key, 1, 1_500), Offered::Stale);
        assert_eq!(offer(&view, &key, 2, 1_500), Offered::Stale);
        assert_eq!(view.snapshot(1_999).len(), 1);
        assert_eq!(view.snapshot(2_000).len(), 0);
        assert_eq!(offer(&view, &key, 3, 1_800), Offered::Stored);
        assert_eq!(view.prune(2_000), vec![]);
        assert_eq!(view.prune(2_800), vec![key.node_id()]);
        assert!(view.get(&key.node_id()).is_none());
    }

    #[test]
    fn pages_cover_the_live_view_in_node_order() {
        let view = MeshView::default();
        let keys: Vec<Keypair> = (1..=7u8)
            .map(|seed| Keypair::from_secret_bytes([seed; 32]))
            .collect();
        for key in &keys {
            offer(&view, key, 1, 1_000);
        }
        let size = view.get(&keys[0].node_id()).unwrap().signed.bytes().len();
        // Three adverts' bytes per page: 3 + 3 + 1.
        let mut after = None;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (page, more) = view.page(after.as_ref(), 1_500, 3 * size);
            pages += 1;
            seen.extend(page.iter().map(|signed| signed.signer()));
            after = seen.last().copied();
            if !more {
                break;
            }
        }
        assert_eq!(pages, 3);
        let mut expected: Vec<NodeId> = keys.iter().map(Keypair::node_id).collect();
        expected.sort();
        assert_eq!(seen, expected);
        // Expired adverts are not handed out.
        assert_eq!(view.page(None, 2_000, usize::MAX), (Vec::new(), false));
    }
}
