//! When to rotate and how long to wait after a failure: pure functions, so the rules are
//! tested directly and the runtime only sleeps.

use std::time::{Duration, SystemTime};

/// Shortest wait before renewing, whatever the certificate says: a cert that is already past
/// its rotation point must not turn the agent into a busy loop.
pub const MIN_ROTATION_DELAY: Duration = Duration::from_secs(1);

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

/// How urgently a failed call is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// Transient (the CA is restarting, overloaded, or the network blipped).
    Fast,
    /// The CA refused us (bad credentials, a bad request): retrying quickly cannot help and
    /// would only flood its logs.
    Slow,
}

/// Capped exponential backoff with full jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// Which class a gRPC status falls in.
pub fn retry_class(code: tonic::Code) -> RetryClass {
    use tonic::Code::*;
    match code {
        Unavailable | Internal | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled => {
            RetryClass::Fast
        }
        _ => RetryClass::Slow,
    }
}

impl Backoff {
    /// Fast retries: 200 ms doubling to 30 s.
    pub const FAST: Backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(30),
    };
    /// Slow retries: 30 s doubling to 10 min.
    pub const SLOW: Backoff = Backoff {
        base: Duration::from_secs(30),
        cap: Duration::from_secs(600),
    };

    pub fn for_class(class: RetryClass) -> Backoff {
        match class {
            RetryClass::Fast => Self::FAST,
            RetryClass::Slow => Self::SLOW,
        }
    }

    /// The wait before retry number `attempt` (0-based): uniformly in `[ceiling / 2, ceiling]`
    /// where the ceiling doubles from `base` up to `cap`. `random` is in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2f64.powi(attempt.min(30) as i32);
        let ceiling = (self.base.as_secs_f64() * factor).min(self.cap.as_secs_f64());
        Duration::from_secs_f64(ceiling * (0.5 + 0.5 * random.clamp(0.0, 1.0)))
    }
}

pub use meshca_pki::time::random_unit;

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
    fn backoff_doubles_to_its_cap_with_jitter() {
        let b = Backoff::FAST;
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(1600));
        assert_eq!(b.delay(20, 1.0), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(15));
        assert!(Backoff::SLOW.delay(0, 0.0) >= Duration::from_secs(15));
    }

    #[test]
    fn only_transient_codes_retry_fast() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Cancelled,
        ] {
            assert_eq!(retry_class(code), RetryClass::Fast, "{code:?}");
        }
        for code in [
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::PermissionDenied,
        ] {
            assert_eq!(retry_class(code), RetryClass::Slow, "{code:?}");
        }
    }
}
