//! When to act, as pure functions so the rules are tested directly and the runtime only
//! sleeps: when to rotate a certificate, and how long to back off before retrying. Every
//! component's retries (the agent's calls, the keyless RA's reconnects, `meshca bench`'s
//! resends) are one [`Backoff`] with its own numbers.

use std::time::{Duration, SystemTime};

/// Shortest wait before renewing, whatever the certificate says: a cert that is already past
/// its rotation point must not turn the agent into a busy loop.
pub const MIN_ROTATION_DELAY: Duration = Duration::from_secs(1);

/// Capped exponential backoff with jitter: retry `n` (0-based) waits `min(base · 2ⁿ, cap)`,
/// scaled by a factor drawn uniformly from `[low, low + spread)`, so that clients that failed
/// together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// The smallest factor the capped delay is scaled by.
    pub low: f64,
    /// How far above `low` the factor reaches.
    pub spread: f64,
}

/// The moment to replace a certificate valid over `[not_before, not_after]`: at `grace_ratio`
/// of its lifetime, moved by up to ±`jitter` of the lifetime so a fleet that got its certs at
/// once does not renew at once (Istio's default is 50 % ± 1 %). `random` is in `[0, 1)`.
pub fn rotation_time(
    not_before: SystemTime,
    not_after: SystemTime,
    grace_ratio: f64,
    jitter: f64,
    random: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let ratio = grace_ratio.clamp(0.0, 1.0);
    let jitter = jitter.clamp(0.0, 1.0);
    let offset = (ratio + jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0)).clamp(0.0, 1.0);
    not_before + Duration::from_secs_f64(lifetime * offset)
}

/// How long to sleep until `at`, never less than [`MIN_ROTATION_DELAY`].
pub fn delay_until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .max(MIN_ROTATION_DELAY)
}

// === impl Backoff ===

impl Backoff {
    /// The wait before retry number `attempt` (0-based); `random` is in `[0, 1)` (clamped).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(31))
            .min(self.cap);
        let factor = self.low + self.spread * random.clamp(0.0, 1.0);
        // `Duration::mul_f64`, without its panic on overflow.
        Duration::try_from_secs_f64((factor * ceiling.as_secs_f64()).max(0.0))
            .unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rotates_at_grace_ratio_of_lifetime() {
        let (nb, na) = (at(T0), at(T0 + 1000));
        // random = 0.5 is the centre of the jitter window.
        assert_eq!(rotation_time(nb, na, 0.5, 0.01, 0.5), at(T0 + 500));
        assert_eq!(rotation_time(nb, na, 0.8, 0.0, 0.9), at(T0 + 800));
    }

    #[test]
    fn jitter_stays_within_its_window() {
        let (nb, na) = (at(T0), at(T0 + 10_000));
        assert_eq!(rotation_time(nb, na, 0.5, 0.01, 0.0), at(T0 + 4900));
        let late = rotation_time(nb, na, 0.5, 0.01, 0.999_999);
        assert!(late > at(T0 + 5099) && late <= at(T0 + 5100));
        for i in 0..100 {
            let t = rotation_time(nb, na, 0.5, 0.01, i as f64 / 100.0);
            assert!(t >= at(T0 + 4900) && t <= at(T0 + 5100));
        }
    }

    #[test]
    fn nonsense_inputs_are_clamped() {
        let (nb, na) = (at(T0), at(T0 + 100));
        assert_eq!(rotation_time(nb, na, 7.0, 0.0, 0.5), na);
        assert_eq!(rotation_time(nb, na, -1.0, 0.0, 0.5), nb);
        assert_eq!(
            rotation_time(na, nb, 0.5, 0.0, 0.5),
            na,
            "inverted validity"
        );
    }

    #[test]
    fn delay_is_never_zero() {
        assert_eq!(delay_until(at(T0), at(T0 + 50)), MIN_ROTATION_DELAY);
        assert_eq!(delay_until(at(T0 + 60), at(T0)), Duration::from_secs(60));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_jitters_within_its_window() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            low: 1.0,
            spread: 0.5,
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(6, 0.0), Duration::from_millis(6400));
        assert_eq!(b.delay(7, 0.0), Duration::from_secs(10));
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(125));
        for i in 0..100 {
            let d = b.delay(3, i as f64 / 100.0);
            assert!(d >= Duration::from_millis(800) && d < Duration::from_millis(1200));
        }
        // Out-of-range randomness is clamped; huge attempt numbers neither overflow nor wrap.
        assert_eq!(b.delay(0, 7.0), Duration::from_millis(150));
        assert_eq!(b.delay(0, -1.0), Duration::from_millis(100));
        assert_eq!(b.delay(31, 0.0), Duration::from_secs(10));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(10));
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::MAX,
            low: 1.0,
            spread: 0.0,
        };
        assert_eq!(huge.delay(u32::MAX, 0.0), Duration::MAX);
    }
}
