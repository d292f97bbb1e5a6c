//! A bounded map of what was named in earlier drains: the same addresses
//! come back drain after drain (a hot loop is sampled every drain), and
//! naming one again costs far more than remembering it.

use std::collections::HashMap;
use std::hash::Hash;

/// Entries remember the drain that last used them; when a drain ends with
/// more than `capacity` entries, the least recently used are dropped down to
/// three quarters of it, so evicting is rare and costs one pass.
#[derive(Debug)]
pub struct Cache<K, V> {
    entries: HashMap<K, (V, u64)>,
    capacity: usize,
    generation: u64,
}

impl<K: Eq + Hash, V> Cache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Cache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            generation: 0,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        let (value, used) = self.entries.get_mut(key)?;
        *used = self.generation;
        Some(value)
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.entries.insert(key, (value, self.generation));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Ends a drain: evicts if over capacity.
    pub fn next_generation(&mut self) {
        if self.entries.len() > self.capacity {
            let keep = self.capacity * 3 / 4;
            let drop = self.entries.len() - keep;
            let mut used: Vec<u64> = self.entries.values().map(|&(_, used)| used).collect();
            // Everything last used before `threshold` goes, and as many of
            // those last used at `threshold` as it takes to drop `drop`.
            let (older, &mut threshold, _) = used.select_nth_unstable(drop);
            let mut ties = drop - older.iter().filter(|&&u| u < threshold).count();
            self.entries.retain(|_, &mut (_, used)| {
                if used < threshold {
                    return false;
                }
                if used == threshold && ties > 0 {
                    ties -= 1;
                    return false;
                }
                true
            });
            self.entries.shrink_to(self.capacity);
        }
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_down_to_three_quarters() {
        let mut cache = Cache::new(8);
        for k in 0..8 {
            cache.insert(k, k * 10);
            cache.next_generation();
        }
        assert_eq!(cache.len(), 8, "at capacity: nothing goes");
        // 0 and 1 are used again: the oldest are now 2, 3, 4.
        assert_eq!(cache.get(&0), Some(&0));
        assert_eq!(cache.get(&1), Some(&10));
        cache.insert(8, 80);
        cache.next_generation();
        assert_eq!(cache.len(), 6);
        for gone in [2, 3, 4] {
            assert_eq!(cache.get(&gone), None, "{gone} was the least recently used");
        }
        for kept in [0, 1, 5, 6, 7, 8] {
            assert!(cache.get(&kept).is_some(), "{kept} was used recently");
        }
    }

    #[test]
    fn stays_bounded_when_everything_is_used_at_once() {
        let mut cache = Cache::new(100);
        for k in 0..1000 {
            cache.insert(k, ());
        }
        cache.next_generation();
        assert_eq!(cache.len(), 75);
    }
}
