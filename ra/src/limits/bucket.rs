//! One token bucket, as pure arithmetic on the instants it is given: `rate` tokens a second
//! refill it up to `burst`; a call takes one or is told how long until one is there.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A rate and the burst above it, e.g. `{ rate = 500, burst = 1000 }`. `rate = 0` turns the
/// limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained calls a second.
    pub rate: u32,
    /// Calls allowed at once after a quiet period; 0 (or left out, as when only
    /// `MESHCA_…_RATE` is set) means twice the rate.
    #[serde(default)]
    pub burst: u32,
}

/// A bucket's level at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

// === impl RateLimit ===

impl RateLimit {
    pub fn is_off(&self) -> bool {
        self.rate == 0
    }

    fn per_second(&self) -> f64 {
        f64::from(self.rate)
    }

    fn capacity(&self) -> f64 {
        match self.burst {
            0 => (2.0 * self.per_second()).max(1.0),
            burst => f64::from(burst),
        }
    }
}

// === impl Bucket ===

impl Bucket {
    /// A caller not seen before starts with the whole burst.
    pub fn full(limit: &RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.capacity(),
            at: now,
        }
    }

    /// The level at `now` (never lower than it was: a clock read out of order refills nothing).
    fn level(&self, limit: &RateLimit, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * limit.per_second()).min(limit.capacity())
    }

    /// Takes a token at `now`, or says how long until one is there (nothing is taken then).
    pub fn take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        let level = self.level(limit, now);
        if level >= 1.0 {
            self.tokens = level - 1.0;
            self.at = now.max(self.at);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - level) / limit.per_second()))
        }
    }

    /// Whether a token could be taken at `now`, without taking it.
    pub fn has_token(&self, limit: &RateLimit, now: Instant) -> bool {
        self.level(limit, now) >= 1.0
    }

    /// Full again at `now`: forgetting this bucket changes nothing for its caller.
    pub fn is_full(&self, limit: &RateLimit, now: Instant) -> bool {
        self.level(limit, now) >= limit.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { rate: 10, burst: 3 };

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::full(&LIMIT, t0);
        for _ in 0..3 {
            assert_eq!(bucket.take(&LIMIT, t0), Ok(()));
        }
        // Empty: one token comes back every 100 ms.
        assert_eq!(bucket.take(&LIMIT, t0), Err(Duration::from_millis(100)));
        let wait = bucket
            .take(&LIMIT, t0 + Duration::from_millis(40))
            .unwrap_err();
        assert!((wait.as_secs_f64() - 0.060).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(&LIMIT, t0 + Duration::from_millis(100)), Ok(()));
        assert!(!bucket.has_token(&LIMIT, t0 + Duration::from_millis(150)));
        // Refilling stops at the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.is_full(&LIMIT, later));
        for _ in 0..3 {
            assert_eq!(bucket.take(&LIMIT, later), Ok(()));
        }
        assert!(bucket.take(&LIMIT, later).is_err());
    }

    #[test]
    fn an_earlier_instant_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut bucket = Bucket::full(&LIMIT, t0);
        for _ in 0..3 {
            bucket.take(&LIMIT, t0).unwrap();
        }
        // A caller whose `now` was read just before another's.
        let earlier = t0 - Duration::from_millis(500);
        assert_eq!(
            bucket.take(&LIMIT, earlier),
            Err(Duration::from_millis(100))
        );
    }

    #[test]
    fn no_burst_means_twice_the_rate() {
        let unset: RateLimit = serde_json::from_value(serde_json::json!({ "rate": 2 })).unwrap();
        assert_eq!(unset, RateLimit { rate: 2, burst: 0 });
        let t0 = Instant::now();
        let mut bucket = Bucket::full(&unset, t0);
        for _ in 0..4 {
            assert_eq!(bucket.take(&unset, t0), Ok(()));
        }
        assert!(bucket.take(&unset, t0).is_err());
    }
}
