//! The [C2SP `tlog-tiles`](https://c2sp.org/tlog-tiles) layout of a ledger's Merkle tree: tile
//! paths, the tiles of a tree, entry bundles, and the root of a tree read back from its tiles.
//!
//! A tiled log is a directory of static files any HTTP server or archive can hold:
//!
//! ```text
//! checkpoint                  the signed note (C2SP tlog-checkpoint) naming size and root
//! tile/<L>/<N>                256 hashes (8,192 bytes): tree level 8·L, hashes 256·N … 256·N+255
//! tile/<L>/<N>.p/<W>          the rightmost tile of a level when it is partial: W hashes, 1 ≤ W < 256
//! tile/entries/<N>[.p/<W>]    entries 256·N … of the log, each as a big-endian u16 length + bytes
//! ```
//!
//! A level-`L` tile holds the hashes of the complete subtrees of `256^L` leaves, left to right:
//! level 0 holds the leaf hashes ([`entry_hash`](crate::ledger::entry_hash) of each raw entry),
//! level 1 the roots of each complete run of 256 leaves, and so on. A tree of `s` leaves has
//! `s >> 8L` hashes at level `L`, so `(s >> 8L) / 256` full tiles and, when `(s >> 8L) % 256` is not
//! zero, one partial tile of that width; levels go up while `s >> 8L` is not zero. `<N>` is written
//! in groups of three decimal digits, every group but the last prefixed with `x`
//! (`1234067` → `x001/x234/067`, `5` → `005`); [`TileId::path`] does this.
//!
//! Every complete subtree on the right border of the tree of size `s` is `2^r` consecutive hashes
//! of one tile (`r < 8`), so [`root_from_tiles`] recomputes the root from at most one tile per
//! level. [`TileBuilder`] produces the tiles of a growing tree while streaming its leaves, holding
//! at most 255 hashes per level.
//!
//! This module does no I/O: callers read and write the files. It never panics on input: a tile of
//! the wrong length, a malformed bundle or an entry too long for a bundle is an error.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::hash::Hash32;
use crate::merkle::{EMPTY_ROOT, MerkleTree, node_hash};

/// Levels of the tree held by one tile.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile (and entries in a full bundle).
pub const TILE_WIDTH: u16 = 1 << TILE_HEIGHT;
/// The highest tile level (a tree of up to `2^64 - 1` leaves needs levels `0..=7`; the path
/// format allows up to 63).
pub const MAX_TILE_LEVEL: u8 = 63;
/// The longest entry an entry bundle can hold: its length is a big-endian `u16`.
pub const MAX_BUNDLE_ENTRY_BYTES: usize = u16::MAX as usize;

const HASH_BYTES: usize = 32;

/// Why a tile, a bundle or a root from tiles could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    #[error("tile level {0} is above {MAX_TILE_LEVEL}")]
    Level(u8),
    #[error("tile width {0} is not in 1..=256")]
    Width(u16),
    #[error("tree size {size} is beyond the {len} leaves held")]
    SizeBeyondTree { size: u64, len: u64 },
    #[error("{path} is {len} bytes; a tile of {width} hashes is {expected}")]
    TileLength {
        path: String,
        len: usize,
        width: u16,
        expected: usize,
    },
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "an entry of {len} bytes does not fit an entry bundle (at most {MAX_BUNDLE_ENTRY_BYTES})"
    )]
    EntryTooLarge { len: usize },
    #[error("malformed entry bundle: {0}")]
    Bundle(&'static str),
}

/// One tile: its level, its index within the level and its width in hashes (256 when full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TileId {
    level: u8,
    index: u64,
    width: u16,
}

impl TileId {
    pub fn new(level: u8, index: u64, width: u16) -> Result<TileId, TileError> {
        if level > MAX_TILE_LEVEL {
            return Err(TileError::Level(level));
        }
        if width == 0 || width > TILE_WIDTH {
            return Err(TileError::Width(width));
        }
        Ok(TileId {
            level,
            index,
            width,
        })
    }

    pub fn level(&self) -> u8 {
        self.level
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn width(&self) -> u16 {
        self.width
    }

    pub fn is_partial(&self) -> bool {
        self.width < TILE_WIDTH
    }

    /// Bytes of the hash tile: 32 per hash.
    pub fn byte_len(&self) -> usize {
        usize::from(self.width) * HASH_BYTES
    }

    /// `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!("tile/{}/{}", self.level, self.suffix())
    }

    /// `tile/entries/<N>[.p/<W>]`: the bundle of the entries whose leaf hashes a level-0 tile of
    /// this index and width holds.
    pub fn entries_path(&self) -> String {
        format!("tile/entries/{}", self.suffix())
    }

    fn suffix(&self) -> String {
        let index = encode_index(self.index);
        if self.is_partial() {
            format!("{index}.p/{}", self.width)
        } else {
            index
        }
    }
}

/// A tile index as a path: groups of three decimal digits, all but the last prefixed with `x`.
pub fn encode_index(index: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = index;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(n, group)| {
            if n == last {
                format!("{group:03}")
            } else {
                format!("x{group:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Hashes at tree level `8 * level` in a tree of `size` leaves.
fn hashes_at_level(size: u64, level: u8) -> u64 {
    size.checked_shr(TILE_HEIGHT * u32::from(level))
        .unwrap_or(0)
}

/// The tile `(level, index)` of a tree of `size` leaves, with its width; `None` when that tree
/// has no such tile.
pub fn tile_in_tree(level: u8, index: u64, size: u64) -> Option<TileId> {
    let count = hashes_at_level(size, level);
    let full = count / u64::from(TILE_WIDTH);
    let width = if index < full {
        TILE_WIDTH
    } else if index == full {
        u16::try_from(count % u64::from(TILE_WIDTH)).ok()?
    } else {
        return None;
    };
    TileId::new(level, index, width).ok()
}

/// Every tile of a tree of `size` leaves, level by level, left to right.
pub fn tiles_in_tree(size: u64) -> impl Iterator<Item = TileId> {
    (0..=MAX_TILE_LEVEL)
        .take_while(move |&level| hashes_at_level(size, level) > 0)
        .flat_map(move |level| {
            let count = hashes_at_level(size, level);
            (0..count.div_ceil(u64::from(TILE_WIDTH)))
                .filter_map(move |index| tile_in_tree(level, index, size))
        })
}

/// A tile and its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub id: TileId,
    pub hashes: Vec<Hash32>,
}

impl Tile {
    /// The file's contents: the hashes, concatenated.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.iter().flat_map(|hash| hash.0).collect()
    }

    /// Reads the file of tile `id`, which must be exactly `32 * width` bytes.
    pub fn from_bytes(id: TileId, bytes: &[u8]) -> Result<Tile, TileError> {
        if bytes.len() != id.byte_len() {
            return Err(TileError::TileLength {
                path: id.path(),
                len: bytes.len(),
                width: id.width,
                expected: id.byte_len(),
            });
        }
        let hashes = bytes
            .chunks_exact(HASH_BYTES)
            .filter_map(|chunk| <[u8; 32]>::try_from(chunk).ok().map(Hash32))
            .collect();
        Ok(Tile { id, hashes })
    }
}

/// The root of a complete subtree given its `2^k` leaves (`hashes.len()` a power of two).
fn complete_root(hashes: &[Hash32]) -> Option<Hash32> {
    let mut row = hashes.to_vec();
    while row.len() > 1 {
        row = row
            .chunks_exact(2)
            .filter_map(|pair| match pair {
                [left, right] => Some(node_hash(left, right)),
                _ => None,
            })
            .collect();
    }
    row.first().copied()
}

/// Produces the tiles of a tree while its leaf hashes stream in, in `O(log n)` memory: at most
/// 255 pending hashes per level.
#[derive(Debug, Clone, Default)]
pub struct TileBuilder {
    size: u64,
    /// Per level: hashes not yet in a full tile, and the full tiles emitted so far.
    levels: Vec<(Vec<Hash32>, u64)>,
}

impl TileBuilder {
    pub fn new() -> TileBuilder {
        TileBuilder::default()
    }

    /// Leaves pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the full tiles it completes, lowest level first (usually
    /// none; one every 256 leaves, more when a higher tile fills too).
    pub fn push(&mut self, leaf_hash: Hash32) -> Vec<Tile> {
        self.size = self.size.saturating_add(1);
        let mut completed = Vec::new();
        let mut hash = leaf_hash;
        for level in 0..=MAX_TILE_LEVEL {
            let slot = usize::from(level);
            if self.levels.len() <= slot {
                self.levels.push((Vec::new(), 0));
            }
            let Some((pending, full)) = self.levels.get_mut(slot) else {
                break;
            };
            pending.push(hash);
            if pending.len() < usize::from(TILE_WIDTH) {
                break;
            }
            let hashes = std::mem::take(pending);
            let Ok(id) = TileId::new(level, *full, TILE_WIDTH) else {
                break;
            };
            *full += 1;
            let Some(root) = complete_root(&hashes) else {
                break;
            };
            completed.push(Tile { id, hashes });
            hash = root;
        }
        completed
    }

    /// The partial tiles of the tree pushed so far (those not emitted by [`push`](Self::push)),
    /// lowest level first.
    pub fn finish(self) -> Vec<Tile> {
        self.levels
            .into_iter()
            .zip(0..=MAX_TILE_LEVEL)
            .filter_map(|((pending, full), level)| {
                let width = u16::try_from(pending.len()).ok()?;
                let id = TileId::new(level, full, width).ok()?;
                Some(Tile {
                    id,
                    hashes: pending,
                })
            })
            .collect()
    }
}

/// Every tile of the tree of the first `size` leaves of `tree`, level by level. Holds them all
/// (about 32 bytes per leaf); stream with [`TileBuilder`] for large trees.
pub fn tiles_of_tree(tree: &MerkleTree, size: u64) -> Result<Vec<Tile>, TileError> {
    let leaves = usize::try_from(size)
        .ok()
        .and_then(|size| tree.leaf_hashes().get(..size))
        .ok_or(TileError::SizeBeyondTree {
            size,
            len: tree.len(),
        })?;
    let mut builder = TileBuilder::new();
    let mut tiles = Vec::new();
    for leaf in leaves {
        tiles.extend(builder.push(*leaf));
    }
    tiles.extend(builder.finish());
    tiles.sort_by_key(|tile| (tile.id.level, tile.id.index));
    Ok(tiles)
}

/// Recomputes the root of the tree of `size` leaves from its tiles. `read` returns the contents
/// of a tile's file (or why it cannot); each tile is read at most once, at most one per level.
pub fn root_from_tiles(
    size: u64,
    mut read: impl FnMut(TileId) -> Result<Vec<u8>, String>,
) -> Result<Hash32, TileError> {
    let mut tiles: BTreeMap<TileId, Tile> = BTreeMap::new();
    // The complete subtrees of the right border, largest (leftmost) first: one per set bit.
    let mut subtree_roots = Vec::new();
    let mut start = 0u64;
    for bit in (0..64u32).rev() {
        let width = 1u64 << bit;
        if size & width == 0 {
            continue;
        }
        let level = u8::try_from(bit / TILE_HEIGHT).map_err(|_| TileError::Level(u8::MAX))?;
        let span = 1usize << (bit % TILE_HEIGHT);
        let first = start >> (TILE_HEIGHT * u32::from(level));
        let index = first / u64::from(TILE_WIDTH);
        let offset = usize::try_from(first % u64::from(TILE_WIDTH)).unwrap_or(usize::MAX);
        let id = tile_in_tree(level, index, size)
            .ok_or(TileError::SizeBeyondTree { size, len: start })?;
        let tile = match tiles.entry(id) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(slot) => {
                let bytes = read(id).map_err(|message| TileError::Read {
                    path: id.path(),
                    message,
                })?;
                slot.insert(Tile::from_bytes(id, &bytes)?)
            }
        };
        // In range: the tile has `width` hashes and the subtree lies inside it.
        let hashes =
            tile.hashes
                .get(offset..offset.saturating_add(span))
                .ok_or(TileError::TileLength {
                    path: id.path(),
                    len: tile.hashes.len() * HASH_BYTES,
                    width: id.width,
                    expected: id.byte_len(),
                })?;
        subtree_roots.push(complete_root(hashes).ok_or(TileError::Width(0))?);
        start += width;
    }
    Ok(subtree_roots
        .into_iter()
        .rev()
        .reduce(|right, left| node_hash(&left, &right))
        .unwrap_or(EMPTY_ROOT))
}

/// Appends `entry` to an entry bundle being built: its length as a big-endian `u16`, then its
/// bytes. Longer entries cannot be bundled.
pub fn push_bundle_entry(bundle: &mut Vec<u8>, entry: &[u8]) -> Result<(), TileError> {
    let len =
        u16::try_from(entry.len()).map_err(|_| TileError::EntryTooLarge { len: entry.len() })?;
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
    Ok(())
}

/// The entries of a bundle, in order. Refuses a truncated bundle or trailing bytes.
pub fn read_bundle(bundle: &[u8]) -> Result<Vec<&[u8]>, TileError> {
    let mut entries = Vec::new();
    let mut rest = bundle;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err(TileError::Bundle("truncated length"));
        };
        let len = usize::from(u16::from_be_bytes(*len));
        let Some((entry, tail)) = tail.split_at_checked(len) else {
            return Err(TileError::Bundle("truncated entry"));
        };
        entries.push(entry);
        rest = tail;
        if entries.len() > usize::from(TILE_WIDTH) {
            return Err(TileError::Bundle("more than 256 entries"));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
