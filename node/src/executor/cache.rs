//! The bounded cache of compiled modules, keyed by the SHA-256 of the module bytes.
//!
//! Compiling is the expensive part of a run (milliseconds against microseconds to instantiate),
//! and the same modules come back again and again. The cache holds at most `max_entries`
//! modules and at most `max_bytes` of compiled code (each entry's size is given by the caller:
//! the compiled image), dropping the least recently used first; a module larger than the whole
//! byte budget is not cached at all. Entries are cheap handles (`InstancePre` is an `Arc`
//! inside), so a hit clones one out and never holds the lock while a job runs. An evicted module
//! stays alive only while a running job still holds its handle.

use std::collections::HashMap;
use std::sync::Mutex;

use suanli_protocol::Hash32;

pub(super) struct ModuleCache<V> {
    max_entries: usize,
    max_bytes: u64,
    state: Mutex<State<V>>,
}

struct State<V> {
    entries: HashMap<Hash32, Entry<V>>,
    /// Sum of the entries' sizes.
    bytes: u64,
    /// Increases on every use; an entry's `last_used` orders eviction.
    clock: u64,
}

struct Entry<V> {
    value: V,
    bytes: u64,
    last_used: u64,
}

impl<V: Clone> ModuleCache<V> {
    pub(super) fn new(max_entries: usize, max_bytes: u64) -> Self {
        ModuleCache {
            max_entries: max_entries.max(1),
            max_bytes,
            state: Mutex::new(State {
                entries: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<V>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters
        // (every operation is a single insert or remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(super) fn get(&self, key: &Hash32) -> Option<V> {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        let entry = state.entries.get_mut(key)?;
        entry.last_used = now;
        Some(entry.value.clone())
    }

    /// Inserts `value` of `bytes`, evicting the least recently used entries until both caps
    /// hold. Two jobs compiling the same module at once both insert; the second replaces the
    /// first. A value larger than the byte budget is not kept.
    pub(super) fn insert(&self, key: Hash32, value: V, bytes: u64) {
        if bytes > self.max_bytes {
            return;
        }
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if let Some(old) = state.entries.remove(&key) {
            state.bytes -= old.bytes;
        }
        while state.entries.len() >= self.max_entries
            || state.bytes.saturating_add(bytes) > self.max_bytes
        {
            // A linear scan: the count cap is tens of entries and inserts follow a compile.
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| *key);
            let Some(evicted) = oldest.and_then(|oldest| state.entries.remove(&oldest)) else {
                break;
            };
            state.bytes -= evicted.bytes;
        }
        state.bytes += bytes;
        state.entries.insert(
            key,
            Entry {
                value,
                bytes,
                last_used: now,
            },
        );
    }

    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Compiled bytes held.
    pub(super) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Hash32 {
        Hash32::of(&[n])
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let cache = ModuleCache::new(2, 1000);
        cache.insert(key(1), 1, 10);
        cache.insert(key(2), 2, 10);
        assert_eq!(cache.get(&key(1)), Some(1));
        cache.insert(key(3), 3, 10);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!(cache.get(&key(1)), Some(1));
        assert_eq!(cache.get(&key(3)), Some(3));
    }

    #[test]
    fn stays_bounded() {
        let cache = ModuleCache::new(64, u64::MAX);
        for n in 0..=200u8 {
            cache.insert(key(n), n, 1);
            cache.insert(key(n), n, 1);
        }
        assert_eq!(cache.len(), 64);
        assert_eq!(cache.bytes(), 64);
        assert_eq!(cache.get(&key(200)), Some(200));
        assert_eq!(cache.get(&key(0)), None);
    }

    #[test]
    fn evicts_by_bytes() {
        let cache = ModuleCache::new(64, 100);
        cache.insert(key(1), 1, 40);
        cache.insert(key(2), 2, 40);
        assert_eq!(cache.get(&key(1)), Some(1));
        // 40 + 40 + 30 > 100: the least recently used (2) goes.
        cache.insert(key(3), 3, 30);
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!((cache.len(), cache.bytes()), (2, 70));
        // A large entry evicts as many as it takes.
        cache.insert(key(4), 4, 90);
        assert_eq!((cache.len(), cache.bytes()), (1, 90));
        assert_eq!(cache.get(&key(4)), Some(4));
        // Replacing an entry does not count it twice.
        cache.insert(key(4), 4, 95);
        assert_eq!((cache.len(), cache.bytes()), (1, 95));
        // Larger than the whole budget: not cached, nothing evicted.
        cache.insert(key(5), 5, 101);
        assert_eq!(cache.get(&key(5)), None);
        assert_eq!(cache.get(&key(4)), Some(4));
    }
}
