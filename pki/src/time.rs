//! The two time-and-chance helpers every component needs: Unix seconds as the store keeps them,
//! and a uniform random number for jitter (rotation times, backoff), so there is one of each.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as the store and the API keep times; 0 before 1970.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A uniform random number in `[0, 1)` from the system RNG, for jitter.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).expect("system RNG");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_seconds_of_the_epoch_and_before() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_secs(90)), 90);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..10_000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
