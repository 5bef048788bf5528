//! Token buckets per caller key (an identity, an address), bounded in memory: at most
//! `max_keys` buckets over a few shards, the least recently used dropped first. Dropping a
//! bucket is lenient, never strict (its caller starts with a full burst again), so the bound
//! can only let through a caller that cycles through more keys than that, which takes as many
//! identities or addresses.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use super::bucket::{Bucket, RateLimit};

/// Shards, so that concurrent calls rarely wait on one lock.
const SHARDS: usize = 16;

/// The buckets of one kind of key.
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq> {
    limit: RateLimit,
    shards: Box<[Mutex<LruCache<K, Bucket>>]>,
    hasher: RandomState,
}

// === impl KeyedLimiter ===

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `None` when `limit` is off.
    pub fn new(limit: RateLimit, max_keys: usize) -> Option<Self> {
        if limit.is_off() {
            return None;
        }
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        Some(Self {
            limit,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, LruCache<K, Bucket>> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a token from `key`'s bucket, or says how long until it has one.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut shard = self.shard(key);
        if let Some(bucket) = shard.get_mut(key) {
            return bucket.take(&self.limit, now);
        }
        let mut bucket = Bucket::full(&self.limit, now);
        let taken = bucket.take(&self.limit, now);
        shard.insert(key.clone(), bucket);
        taken
    }

    /// Whether `key` could take a token now, without taking it (an unknown key can).
    pub fn has_token(&self, key: &K, now: Instant) -> bool {
        self.shard(key)
            .peek(key)
            .is_none_or(|bucket| bucket.has_token(&self.limit, now))
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { rate: 1, burst: 2 };

    #[test]
    fn each_key_has_its_own_bucket() {
        let limiter = KeyedLimiter::new(LIMIT, 100).unwrap();
        let now = Instant::now();
        for _ in 0..2 {
            assert!(limiter.take(&"a", now).is_ok());
        }
        assert!(limiter.take(&"a", now).is_err());
        assert!(!limiter.has_token(&"a", now));
        // Another caller is not slowed by the first.
        assert!(limiter.has_token(&"b", now));
        assert!(limiter.take(&"b", now).is_ok());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_callers() {
        let limiter = KeyedLimiter::new(LIMIT, 100_000).unwrap();
        let now = Instant::now();
        for caller in 0..250_000u32 {
            let _ = limiter.take(&caller, now);
        }
        let held = limiter.len();
        assert!(
            (99_000..=100_016).contains(&held),
            "{held} buckets for a bound of 100,000"
        );
        // The most recent callers are still limited; the oldest were forgotten (lenient).
        for caller in 249_990..250_000u32 {
            let _ = limiter.take(&caller, now);
            assert!(limiter.take(&caller, now).is_err(), "caller {caller}");
        }
        assert!(limiter.has_token(&0, now));
    }

    #[test]
    fn an_off_limit_makes_no_limiter() {
        let off = RateLimit { rate: 0, burst: 10 };
        assert!(KeyedLimiter::<u32>::new(off, 10).is_none());
    }
}
