//! The per-caller limits of `CreateCertificate`: per peer address, checked before
//! authentication so that a flood costs next to nothing, and per authenticated identity (a
//! ztunnel asking for its node's pods counts as itself). A limited call gets
//! `RESOURCE_EXHAUSTED` with when to retry, in the message and in `grpc-retry-pushback-ms`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bucket::RateLimit;
use super::keyed::KeyedLimiter;

/// `[grpc.rate_limit]`: token buckets per caller, so that one tenant cannot take the RA from
/// the others. `rate = 0` turns a limit off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerLimitConfig {
    /// Per authenticated identity; a node agent's requests for its node's pods count as its
    /// own. The default lets one node's restart storm through (110 pods, Kubernetes' default
    /// maximum per node, well inside the burst).
    pub per_identity: RateLimit,
    /// Per peer IP address, checked before authentication (SPIRE's server allows 500
    /// signings a second per address).
    pub per_address: RateLimit,
    /// Callers remembered per limit; beyond it the least recently seen are forgotten (and
    /// start with a full burst again).
    pub max_callers: usize,
}

/// Which limit a call hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Address,
    Identity,
}

/// A call over its caller's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

/// The buckets; a limit that is off has none.
#[derive(Debug)]
pub struct CallerLimits {
    per_address: Option<KeyedLimiter<IpAddr>>,
    per_identity: Option<KeyedLimiter<String>>,
}

// === impl CallerLimits ===

impl CallerLimits {
    pub fn new(settings: &CallerLimitConfig) -> Self {
        Self {
            per_address: KeyedLimiter::new(settings.per_address, settings.max_callers),
            per_identity: KeyedLimiter::new(settings.per_identity, settings.max_callers),
        }
    }

    pub fn check_address(&self, address: IpAddr, now: Instant) -> Result<(), RateLimited> {
        check(&self.per_address, &address, now, LimitKind::Address)
    }

    pub fn check_identity(&self, identity: &str, now: Instant) -> Result<(), RateLimited> {
        check(
            &self.per_identity,
            &identity.to_string(),
            now,
            LimitKind::Identity,
        )
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<KeyedLimiter<K>>,
    key: &K,
    now: Instant,
    kind: LimitKind,
) -> Result<(), RateLimited> {
    match limiter {
        None => Ok(()),
        Some(limiter) => limiter
            .take(key, now)
            .map_err(|retry_after| RateLimited { kind, retry_after }),
    }
}

impl Default for CallerLimitConfig {
    fn default() -> Self {
        Self {
            per_identity: RateLimit {
                rate: 200,
                burst: 500,
            },
            per_address: RateLimit {
                rate: 500,
                burst: 1000,
            },
            max_callers: 100_000,
        }
    }
}

// === impl LimitKind ===

impl LimitKind {
    /// The metric label, and what the message names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Identity => "identity",
        }
    }
}

// === impl RateLimited ===

impl RateLimited {
    /// Whole milliseconds to wait, at least one.
    pub fn retry_after_millis(&self) -> u64 {
        (self.retry_after.as_micros().div_ceil(1000) as u64).max(1)
    }

    /// `RESOURCE_EXHAUSTED`, nothing done; gRPC clients with a retry policy read the pushback.
    pub fn status(&self) -> tonic::Status {
        let millis = self.retry_after_millis();
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "grpc-retry-pushback-ms",
            millis
                .to_string()
                .parse()
                .expect("digits are a valid header value"),
        );
        tonic::Status::with_metadata(
            tonic::Code::ResourceExhausted,
            format!(
                "rate limit per caller {} exceeded; nothing was issued; retry in {millis} ms",
                self.kind.as_str()
            ),
            metadata,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_says_when_to_retry() {
        let limits = CallerLimits::new(&CallerLimitConfig {
            per_identity: RateLimit { rate: 4, burst: 1 },
            per_address: RateLimit { rate: 0, burst: 0 },
            max_callers: 10,
        });
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        // The address limit is off.
        for _ in 0..10 {
            assert!(limits.check_address(ip, now).is_ok());
        }
        let id = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
        assert!(limits.check_identity(id, now).is_ok());
        let limited = limits.check_identity(id, now).unwrap_err();
        assert_eq!(limited.kind, LimitKind::Identity);
        assert_eq!(limited.retry_after_millis(), 250);
        let status = limited.status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "rate limit per caller identity exceeded; nothing was issued; retry in 250 ms"
        );
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "250"
        );
    }
}
