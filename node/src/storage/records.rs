//! Record trees: ordered key-value trees in the node's database, with sled kept out of sight.

use std::fmt;
use std::ops::{Bound, Deref, RangeBounds};
use std::sync::OnceLock;

use super::database::sled_error;
use super::{Storage, StorageError};

/// A key and its value, from [`RecordTree::iter_from`].
pub type Record = (Vec<u8>, Vec<u8>);

/// Values at least this large are checked against the free-space reserve before they are
/// written; smaller ones (job records, witness state) are written into the reserve, which is
/// what lets work already in flight finish its records while new work is refused.
pub const LARGE_VALUE_BYTES: usize = 64 * 1024;

/// Stored bytes as read from the database, without a copy. Derefs to `[u8]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Value(sled::IVec);

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} bytes)", self.0.len())
    }
}

/// Writes applied to one tree atomically by [`RecordTree::apply_batch`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    batch: sled::Batch,
    bytes: u64,
}

impl WriteBatch {
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.bytes = self.bytes.saturating_add((key.len() + value.len()) as u64);
        self.batch.insert(key, value);
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.bytes = self.bytes.saturating_add(key.len() as u64);
        self.batch.remove(key);
    }

    /// Bytes of keys and values inserted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A persistent key-value tree in the node's database. Keys and values are bytes, ordered by key.
/// Reads and writes go to sled directly (blocking, but short); writes are durable after
/// [`flush`](Self::flush) or [`Storage::sync`]. Cheap to clone.
#[derive(Clone)]
pub struct RecordTree {
    name: &'static str,
    /// The sled tree's name: `name` under its namespace's prefix.
    tree_name: String,
    storage: Storage,
    /// Opened on first use, so that naming a tree cannot fail.
    tree: OnceLock<sled::Tree>,
}

impl fmt::Debug for RecordTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordTree")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RecordTree {
    pub(super) fn new(name: &'static str, tree_name: String, storage: Storage) -> RecordTree {
        RecordTree {
            name,
            tree_name,
            storage,
            tree: OnceLock::new(),
        }
    }

    fn tree(&self) -> Result<&sled::Tree, StorageError> {
        if let Some(tree) = self.tree.get() {
            return Ok(tree);
        }
        let tree = self.storage.open_tree(&self.tree_name)?;
        Ok(self.tree.get_or_init(|| tree))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(super) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.get_value(key)?.map(|value| value.to_vec()))
    }

    /// Like [`get`](Self::get), without copying the value.
    pub fn get_value(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self
            .tree()?
            .get(key)
            .map_err(sled_error("record get"))?
            .map(Value))
    }

    pub fn contains_key(&self, key: &[u8]) -> Result<bool, StorageError> {
        self.tree()?
            .contains_key(key)
            .map_err(sled_error("record get"))
    }

    /// Inserts or replaces. A value of [`LARGE_VALUE_BYTES`] or more is refused with
    /// [`StorageError::DiskFull`] when it would eat into the free-space reserve.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.check_large(key, value)?;
        self.tree()?
            .insert(key, value)
            .map_err(sled_error("record insert"))?;
        Ok(())
    }

    /// Inserts only if `key` is absent; `false` if it was present (its value is kept). Large
    /// values are checked against the reserve as in [`insert`](Self::insert).
    pub fn insert_if_absent(&self, key: &[u8], value: &[u8]) -> Result<bool, StorageError> {
        self.check_large(key, value)?;
        let swapped = self
            .tree()?
            .compare_and_swap(key, None::<&[u8]>, Some(value))
            .map_err(sled_error("record insert"))?;
        Ok(swapped.is_ok())
    }

    fn check_large(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if value.len() >= LARGE_VALUE_BYTES {
            self.storage
                .ensure_space((key.len() + value.len()) as u64)?;
        }
        Ok(())
    }

    /// Applies every write of `batch` atomically (all or none, also across a crash). The caller
    /// checks the reserve first ([`Storage::ensure_space`] with [`WriteBatch::bytes`]).
    pub fn apply_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.tree()?
            .apply_batch(batch.batch)
            .map_err(sled_error("apply batch"))
    }

    /// Removes `key`, returning its value.
    pub fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree()?
            .remove(key)
            .map_err(sled_error("record remove"))?
            .map(|value| value.to_vec()))
    }

    /// Up to `limit` pairs with key ≥ `start`, in key order. Page by passing the last key with a
    /// `0` byte appended.
    pub fn iter_from(&self, start: &[u8], limit: u32) -> Result<Vec<Record>, StorageError> {
        let mut pairs = Vec::new();
        for item in self.tree()?.range(start..).take(limit as usize) {
            let (key, value) = item.map_err(sled_error("record scan"))?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    /// Every pair with a key in `range`, in key order, read lazily (constant memory, no copies):
    /// for streaming a whole tree.
    pub fn scan<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> impl Iterator<Item = Result<(Value, Value), StorageError>> + use<K, R> {
        let bound = |bound: Bound<&K>| match bound {
            Bound::Included(key) => Bound::Included(key.as_ref().to_vec()),
            Bound::Excluded(key) => Bound::Excluded(key.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = (bound(range.start_bound()), bound(range.end_bound()));
        // A tree that cannot be opened yields its error as the only item.
        let (items, error) = match self.tree() {
            Ok(tree) => (Some(tree.range::<Vec<u8>, _>(range)), None),
            Err(error) => (None, Some(error)),
        };
        error
            .into_iter()
            .map(Err)
            .chain(items.into_iter().flatten().map(|item| {
                item.map(|(key, value)| (Value(key), Value(value)))
                    .map_err(sled_error("record scan"))
            }))
    }

    /// Number of records. O(n): it counts them.
    pub fn len(&self) -> Result<usize, StorageError> {
        Ok(self.tree()?.len())
    }

    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.tree()?.is_empty())
    }

    /// Returns once everything written to the database so far (this tree included) is durable:
    /// [`Storage::sync`].
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.storage.sync().await
    }
}
