//! The bounded cache of compiled modules, keyed by the SHA-256 of the module bytes.
//!
//! Compiling is the expensive part of a run (milliseconds against microseconds to instantiate),
//! and the same modules come back again and again. The cache holds at most `capacity` entries
//! and drops the least recently used; entries are cheap handles (`InstancePre` is an `Arc`
//! inside), so a hit clones one out and never holds the lock while a job runs.

use std::collections::HashMap;
use std::sync::Mutex;

use suanli_protocol::Hash32;

pub(super) struct ModuleCache<V> {
    capacity: usize,
    state: Mutex<State<V>>,
}

struct State<V> {
    entries: HashMap<Hash32, Entry<V>>,
    /// Increases on every use; an entry's `last_used` orders eviction.
    clock: u64,
}

struct Entry<V> {
    value: V,
    last_used: u64,
}

impl<V: Clone> ModuleCache<V> {
    pub(super) fn new(capacity: usize) -> Self {
        ModuleCache {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                entries: HashMap::new(),
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

    /// Inserts `value`, evicting the least recently used entry when full. Two jobs compiling
    /// the same module at once both insert; the second simply replaces the first.
    pub(super) fn insert(&self, key: Hash32, value: V) {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if !state.entries.contains_key(&key) && state.entries.len() >= self.capacity {
            // A linear scan: the capacity is tens of entries and inserts follow a compile.
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                state.entries.remove(&oldest);
            }
        }
        state.entries.insert(
            key,
            Entry {
                value,
                last_used: now,
            },
        );
    }

    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
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
        let cache = ModuleCache::new(2);
        cache.insert(key(1), 1);
        cache.insert(key(2), 2);
        assert_eq!(cache.get(&key(1)), Some(1));
        cache.insert(key(3), 3);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!(cache.get(&key(1)), Some(1));
        assert_eq!(cache.get(&key(3)), Some(3));
    }

    #[test]
    fn stays_bounded() {
        let cache = ModuleCache::new(64);
        for n in 0..=200u8 {
            cache.insert(key(n), n);
            cache.insert(key(n), n);
        }
        assert_eq!(cache.len(), 64);
        assert_eq!(cache.get(&key(200)), Some(200));
        assert_eq!(cache.get(&key(0)), None);
    }
}
