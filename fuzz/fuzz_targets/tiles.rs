//! C2SP tlog-tiles read back: entry bundles (`tile/entries/…`), hash tiles (`tile/<L>/<N>`) and
//! the root of a tree recomputed from tiles, which is what an auditor of a tiled ledger runs on
//! files it fetched.
//!
//! The first byte selects the mode:
//! - 0: the rest is an entry bundle (`read_bundle`);
//! - 1: a tree size and tile contents, all fuzzed: `root_from_tiles` reads each tile's file
//!   from the input;
//! - 2: a real tree of 600 leaves at a size the input picks, and its tiles, one of which the
//!   input may corrupt.
//!
//! Properties: nothing panics; a bundle that reads re-bundles to the same bytes and holds at
//! most 256 entries; the root from a tree's own tiles is the tree's root, and from tiles that
//! differ from them it is an error or another root (never the real one, short of a collision).
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::split_selector;
use suanli_protocol::hash::Hash32;
use suanli_protocol::merkle::MerkleTree;
use suanli_protocol::tiles::{
    Tile, TileBuilder, TileId, push_bundle_entry, read_bundle, root_from_tiles, tiles_of_tree,
};

/// One tree of 600 leaves (two full level-0 tiles, a partial one and a partial level-1 tile),
/// built once: the input picks the size and the corruption.
fn tree() -> &'static (Vec<Hash32>, MerkleTree) {
    static TREE: OnceLock<(Vec<Hash32>, MerkleTree)> = OnceLock::new();
    TREE.get_or_init(|| {
        let leaves: Vec<Hash32> = (0..600u64).map(|i| Hash32::of(&i.to_le_bytes())).collect();
        let tree = MerkleTree::from_leaf_hashes(leaves.iter().copied());
        (leaves, tree)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = split_selector(data) else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(entries) = read_bundle(rest) {
                assert!(entries.len() <= 256);
                let mut bundle = Vec::new();
                for entry in &entries {
                    push_bundle_entry(&mut bundle, entry).expect("a read entry fits a bundle");
                }
                assert_eq!(bundle, rest);
            }
        }
        1 => {
            let Some((size, files)) = rest.split_first_chunk::<8>() else {
                return;
            };
            let size = u64::from_le_bytes(*size);
            // Each tile read takes the next `byte_len` bytes of the input (or what is left).
            let mut offset = 0usize;
            let _ = root_from_tiles(size, |id: TileId| {
                let end = offset.saturating_add(id.byte_len()).min(files.len());
                let bytes = files.get(offset..end).unwrap_or_default().to_vec();
                offset = end;
                if let Ok(tile) = Tile::from_bytes(id, &bytes) {
                    assert_eq!(tile.to_bytes(), bytes);
                }
                Ok(bytes)
            });
        }
        _ => {
            let Some((header, corruption)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let (leaves, tree) = tree();
            let size = u64::from(u16::from_le_bytes(*header)) % (leaves.len() as u64 + 1);
            let tiles = tiles_of_tree(tree, size).expect("size within the tree");
            // The streaming builder, fed the first `size` leaves, makes the same tiles.
            let mut builder = TileBuilder::new();
            let mut streamed = Vec::new();
            for hash in leaves.iter().take(size as usize) {
                streamed.extend(builder.push(*hash));
            }
            streamed.extend(builder.finish());
            let by_id = |tiles: &[Tile]| -> BTreeMap<TileId, Vec<u8>> {
                tiles
                    .iter()
                    .map(|tile| (tile.id, tile.to_bytes()))
                    .collect()
            };
            assert_eq!(by_id(&streamed), by_id(&tiles));
            let mut files: BTreeMap<TileId, Vec<u8>> = tiles
                .iter()
                .map(|tile| (tile.id, tile.to_bytes()))
                .collect();
            let real = tree.root_at(size).expect("size within the tree");
            assert_eq!(
                root_from_tiles(size, |id| files
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| "missing".into())),
                Ok(real)
            );
            // Corrupt one tile: XOR the input into the file it names, or cut it short.
            if let Some((&which, patch)) = corruption.split_first() {
                let Some(id) = files
                    .keys()
                    .nth(usize::from(which) % files.len().max(1))
                    .copied()
                else {
                    return;
                };
                let original = files[&id].clone();
                let file = files.get_mut(&id).expect("chosen from the map");
                if patch.first() == Some(&0xff) {
                    file.truncate(usize::from(patch.get(1).copied().unwrap_or(0)));
                } else {
                    for (byte, with) in file.iter_mut().zip(patch) {
                        *byte ^= with;
                    }
                }
                let changed = *file != original;
                let result = root_from_tiles(size, |id| {
                    files.get(&id).cloned().ok_or_else(|| "missing".into())
                });
                if changed {
                    // A changed tile the root depends on gives another root or an error; one
                    // the root does not read leaves it unchanged. Either way never a panic, and
                    // the real root only if the changed bytes were not read.
                    if let Ok(root) = result {
                        if root == real {
                            assert!(
                                root_from_tiles(size, |read| if read == id {
                                    Err("unread".into())
                                } else {
                                    files.get(&read).cloned().ok_or_else(|| "missing".into())
                                })
                                .is_ok(),
                                "a corrupted tile gave the real root"
                            );
                        }
                    }
                }
            }
        }
    }
});
