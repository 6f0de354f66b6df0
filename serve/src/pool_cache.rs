//! The service's shared pools, bounded: the one used longest ago goes first.

use std::collections::HashMap;
use std::hash::Hash;

/// At most a given number of pools by key, least recently used out first. Work in flight
/// holds its own handle to its pool, so a pool dropped from here ends after that work.
#[derive(Debug)]
pub(crate) struct PoolCache<K, V> {
    entries: HashMap<K, (V, u64)>,
    /// Counts uses: an entry's is when it was last used.
    tick: u64,
}

impl<K, V> Default for PoolCache<K, V> {
    fn default() -> Self {
        PoolCache {
            entries: HashMap::new(),
            tick: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> PoolCache<K, V> {
    /// `key`'s pool, marked as used now.
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = tick;
            value.clone()
        })
    }

    /// Keeps `value` as `key`'s pool, dropping the least recently used ones past `max`, and
    /// returns it; if `key` got one meanwhile (built twice at once), that first one stays
    /// and is returned instead.
    pub(crate) fn insert(&mut self, key: K, value: V, max: usize) -> V {
        if let Some(existing) = self.get(&key) {
            return existing;
        }
        while self.entries.len() >= max {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (value.clone(), self.tick));
        value
    }

    /// How many pools are kept.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::PoolCache;

    #[test]
    fn the_pool_used_longest_ago_goes_first() {
        let mut cache = PoolCache::default();
        cache.insert("a", 1, 2);
        cache.insert("b", 2, 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.insert("c", 3, 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"b"), None, "b was used longest ago");
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"c"), Some(3));
    }

    #[test]
    fn a_pool_built_twice_at_once_keeps_the_first() {
        let mut cache = PoolCache::default();
        assert_eq!(cache.insert("a", 1, 4), 1);
        assert_eq!(cache.insert("a", 2, 4), 1);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.len(), 1);
    }
}
