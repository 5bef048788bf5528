//! `rest.failed_auth_limit`: failed REST authentications per client address. An address that
//! has used up its failures is answered `429` before its credentials are even looked at, until
//! its bucket refills; one that authenticates spends nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::{KeyedLimiter, RateLimit};
use crate::metrics::RaMetrics;

/// Cheap to clone; the default limits nothing.
#[derive(Clone, Debug, Default)]
pub struct FailedAuthLimit {
    limiter: Option<Arc<KeyedLimiter<IpAddr>>>,
    /// Seconds until a drained address has a failure to spend again.
    refill: Duration,
    metrics: Arc<RaMetrics>,
}

// === impl FailedAuthLimit ===

impl FailedAuthLimit {
    pub fn new(limit: RateLimit, max_addresses: usize, metrics: Arc<RaMetrics>) -> Self {
        Self {
            limiter: KeyedLimiter::new(limit, max_addresses).map(Arc::new),
            refill: Duration::from_secs_f64(1.0 / f64::from(limit.rate.max(1))),
            metrics,
        }
    }

    /// Before authenticating `address`: how long it must wait, if it has no failure left.
    pub fn admit(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        match &self.limiter {
            Some(limiter) if !limiter.has_token(&address, now) => {
                self.metrics.rate_limited("rest_auth");
                Err(self.refill)
            }
            _ => Ok(()),
        }
    }

    /// `address` failed to authenticate: one failure spent.
    pub fn failed(&self, address: IpAddr, now: Instant) {
        if let Some(limiter) = &self.limiter {
            let _ = limiter.take(&address, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_back_only_after_its_failures() {
        let limit = FailedAuthLimit::new(RateLimit { rate: 2, burst: 3 }, 10, Arc::default());
        let now = Instant::now();
        let (guesser, admin): (IpAddr, IpAddr) =
            ("10.0.0.66".parse().unwrap(), "10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limit.admit(guesser, now), Ok(()));
            limit.failed(guesser, now);
        }
        assert_eq!(limit.admit(guesser, now), Err(Duration::from_millis(500)));
        assert_eq!(limit.admit(admin, now), Ok(()));
        assert_eq!(
            limit.admit(guesser, now + Duration::from_millis(500)),
            Ok(())
        );
        assert!(FailedAuthLimit::default().admit(guesser, now).is_ok());
    }
}
