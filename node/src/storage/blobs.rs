//! The content-addressed blob store: job modules, stdin and outputs, keyed by their SHA-256.
//!
//! On disk it is the record tree `blobs` (sled tree `records/blobs`, key = the 32-byte hash,
//! value = the bytes), the layout the job book used before this module existed, so existing data
//! dirs keep their blobs.

use std::fmt;

use suanli_protocol::Hash32;

use super::records::RecordTree;
use super::{Storage, StorageError};

/// The record tree holding the blobs.
pub(super) const BLOBS_TREE: &str = "blobs";

/// Blobs by hash. Cheap to clone; writes are durable after [`Storage::sync`].
#[derive(Clone)]
pub struct Blobs {
    tree: RecordTree,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs").finish_non_exhaustive()
    }
}

impl Blobs {
    pub(super) fn new(storage: &Storage) -> Blobs {
        Blobs {
            tree: storage.records(BLOBS_TREE),
        }
    }

    /// Stores `bytes` (if not stored already) and returns their SHA-256. Blocking, but short.
    ///
    /// Errors: [`StorageError::DiskFull`] when writing them would eat into the free-space
    /// reserve (nothing is written); a blob already stored is never refused.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash32, StorageError> {
        let hash = Hash32::of(bytes);
        if !self.tree.contains_key(hash.as_bytes())? {
            // Every new blob is checked, whatever its size: blobs are the large writes.
            self.tree
                .storage()
                .ensure_space((hash.as_bytes().len() + bytes.len()) as u64)?;
            self.tree.insert_if_absent(hash.as_bytes(), bytes)?;
        }
        Ok(hash)
    }

    /// The bytes stored under `hash`, if any.
    pub fn get(&self, hash: &Hash32) -> Result<Option<Vec<u8>>, StorageError> {
        self.tree.get(hash.as_bytes())
    }

    pub fn contains(&self, hash: &Hash32) -> Result<bool, StorageError> {
        self.tree.contains_key(hash.as_bytes())
    }
}
