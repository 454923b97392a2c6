use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::fixtures::provider;
use crate::ledger::entry_hash;

fn leaves(n: u64) -> Vec<Hash32> {
    (0..n).map(|i| entry_hash(&i.to_be_bytes())).collect()
}

/// Every tile of a tree of `n` leaves, by id, built by streaming.
fn built(leaves: &[Hash32]) -> BTreeMap<TileId, Tile> {
    let mut builder = TileBuilder::new();
    let mut tiles = Vec::new();
    for leaf in leaves {
        tiles.extend(builder.push(*leaf));
    }
    assert_eq!(builder.size(), leaves.len() as u64);
    tiles.extend(builder.finish());
    tiles.into_iter().map(|tile| (tile.id, tile)).collect()
}

fn reader(tiles: &BTreeMap<TileId, Tile>) -> impl FnMut(TileId) -> Result<Vec<u8>, String> + '_ {
    |id| {
        tiles
            .get(&id)
            .map(Tile::to_bytes)
            .ok_or_else(|| "no such file".to_owned())
    }
}

#[test]
fn paths_follow_the_spec_examples() {
    assert_eq!(encode_index(0), "000");
    assert_eq!(encode_index(5), "005");
    assert_eq!(encode_index(999), "999");
    assert_eq!(encode_index(1000), "x001/000");
    assert_eq!(encode_index(1_234_067), "x001/x234/067");
    assert_eq!(encode_index(u64::MAX), "x018/x446/x744/x073/x709/x551/615");
    let full = TileId::new(0, 1_234_067, 256).unwrap();
    assert_eq!(full.path(), "tile/0/x001/x234/067");
    assert_eq!(full.entries_path(), "tile/entries/x001/x234/067");
    assert!(!full.is_partial());
    let partial = TileId::new(0, 1_234_067, 8).unwrap();
    assert_eq!(partial.path(), "tile/0/x001/x234/067.p/8");
    assert_eq!(partial.entries_path(), "tile/entries/x001/x234/067.p/8");
    assert_eq!(TileId::new(1, 0, 1).unwrap().path(), "tile/1/000.p/1");
    assert_eq!(TileId::new(3, 2, 256).unwrap().path(), "tile/3/002");
    assert_eq!(TileId::new(0, 0, 0), Err(TileError::Width(0)));
    assert_eq!(TileId::new(0, 0, 257), Err(TileError::Width(257)));
    assert_eq!(TileId::new(64, 0, 1), Err(TileError::Level(64)));
}

#[test]
fn the_tiles_of_a_tree() {
    let ids = |size| tiles_in_tree(size).map(|id| id.path()).collect::<Vec<_>>();
    assert!(ids(0).is_empty());
    assert_eq!(ids(1), ["tile/0/000.p/1"]);
    assert_eq!(ids(256), ["tile/0/000", "tile/1/000.p/1"]);
    assert_eq!(
        ids(513),
        [
            "tile/0/000",
            "tile/0/001",
            "tile/0/002.p/1",
            "tile/1/000.p/2"
        ]
    );
    assert_eq!(ids(65_536).len(), 256 + 1 + 1);
    assert_eq!(ids(65_536).last().unwrap(), "tile/2/000.p/1");
    assert_eq!(tile_in_tree(0, 2, 513), TileId::new(0, 2, 1).ok());
    assert_eq!(tile_in_tree(0, 3, 513), None);
    assert_eq!(tile_in_tree(1, 0, 255), None);
}

#[test]
fn tiles_rebuild_the_root_at_every_shape_of_size() {
    let all = leaves(70_000);
    let tree = MerkleTree::from_leaf_hashes(all.iter().copied());
    for size in [
        1, 2, 3, 255, 256, 257, 511, 512, 513, 1000, 65_535, 65_536, 65_537, 70_000,
    ] {
        let slice = &all[..size as usize];
        let tiles = built(slice);
        let expected: Vec<TileId> = tiles_in_tree(size).collect();
        assert_eq!(tiles.keys().copied().collect::<Vec<_>>(), {
            let mut sorted = expected.clone();
            sorted.sort();
            sorted
        });
        assert_eq!(
            root_from_tiles(size, reader(&tiles)).unwrap(),
            tree.root_at(size).unwrap(),
            "size {size}"
        );
        if size <= 1000 {
            let from_tree = tiles_of_tree(&tree, size).unwrap();
            assert_eq!(from_tree.len(), tiles.len());
            for tile in from_tree {
                assert_eq!(tiles[&tile.id], tile);
            }
        }
    }
    // Level 0 holds the leaf hashes; level 1 the roots of each run of 256 leaves.
    let tiles = built(&all[..1000]);
    let level0 = &tiles[&TileId::new(0, 1, 256).unwrap()];
    assert_eq!(level0.hashes, all[256..512]);
    let level1 = &tiles[&TileId::new(1, 0, 3).unwrap()];
    for (i, hash) in level1.hashes.iter().enumerate() {
        let run = &all[i * 256..(i + 1) * 256];
        assert_eq!(
            *hash,
            MerkleTree::from_leaf_hashes(run.iter().copied()).root()
        );
    }
    assert_eq!(
        root_from_tiles(0, |_| Err("unused".into())).unwrap(),
        EMPTY_ROOT
    );
    assert!(tiles_of_tree(&tree, 70_001).is_err());
}

#[test]
fn the_root_from_tiles_matches_a_signed_checkpoint() {
    let all = leaves(600);
    let tree = MerkleTree::from_leaf_hashes(all.iter().copied());
    let key = provider();
    let note = Checkpoint::new(key.node_id(), 600, tree.root())
        .sign(&key)
        .unwrap()
        .into_note();
    let checkpoint = SignedCheckpoint::from_note(&note).unwrap();
    let tiles = built(&all);
    assert_eq!(
        root_from_tiles(checkpoint.size(), reader(&tiles)).unwrap(),
        checkpoint.root()
    );
}

#[test]
fn damaged_or_missing_tiles_are_errors_or_another_root() {
    let all = leaves(600);
    let root = MerkleTree::from_leaf_hashes(all.iter().copied()).root();
    let mut tiles = built(&all);
    let id = TileId::new(0, 2, 88).unwrap();
    tiles.get_mut(&id).unwrap().hashes[5].0[0] ^= 1;
    assert_ne!(root_from_tiles(600, reader(&tiles)).unwrap(), root);
    tiles.remove(&id);
    assert_eq!(
        root_from_tiles(600, reader(&tiles)),
        Err(TileError::Read {
            path: "tile/0/002.p/88".into(),
            message: "no such file".into()
        })
    );
    let short = root_from_tiles(600, |id| Ok(vec![0; id.byte_len() - 1]));
    assert!(
        matches!(short, Err(TileError::TileLength { .. })),
        "{short:?}"
    );
}

#[test]
fn entry_bundles() {
    let mut bundle = Vec::new();
    push_bundle_entry(&mut bundle, b"first").unwrap();
    push_bundle_entry(&mut bundle, b"").unwrap();
    push_bundle_entry(&mut bundle, &[7; MAX_BUNDLE_ENTRY_BYTES]).unwrap();
    assert_eq!(&bundle[..7], b"\x00\x05first");
    let entries = read_bundle(&bundle).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0], b"first");
    assert!(entries[1].is_empty());
    assert_eq!(entries[2].len(), MAX_BUNDLE_ENTRY_BYTES);
    assert_eq!(
        push_bundle_entry(&mut bundle, &[0; MAX_BUNDLE_ENTRY_BYTES + 1]),
        Err(TileError::EntryTooLarge {
            len: MAX_BUNDLE_ENTRY_BYTES + 1
        })
    );
    assert_eq!(
        read_bundle(&bundle[..bundle.len() - 1]),
        Err(TileError::Bundle("truncated entry"))
    );
    assert_eq!(
        read_bundle(&[0]),
        Err(TileError::Bundle("truncated length"))
    );
    assert_eq!(read_bundle(&[]).unwrap().len(), 0);
    let too_many = [0u8, 0].repeat(257);
    assert!(read_bundle(&too_many).is_err());
}

proptest! {
    #[test]
    fn any_tile_file_is_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200), size in 0u64..100_000) {
        let _ = root_from_tiles(size, |_| Ok(bytes.clone()));
        let _ = read_bundle(&bytes);
    }
}
