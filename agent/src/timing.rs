//! How the agent retries a failed call, by how transient its gRPC code is (when to rotate is
//! pki's pure `timing::rotation_time`). The runtime only sleeps.

use std::time::Duration;

use meshca_pki::timing::Backoff;

/// How urgently a failed call is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// Transient (the CA is restarting, overloaded, or the network blipped).
    Fast,
    /// The CA refused us (bad credentials, a bad request): retrying quickly cannot help and
    /// would only flood its logs.
    Slow,
}

/// Fast retries: 200 ms doubling to 30 s, each wait uniformly in `[½, 1]` of its ceiling.
pub const FAST_RETRY: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(30),
    low: 0.5,
    spread: 0.5,
};

/// Slow retries: 30 s doubling to 10 min, each wait uniformly in `[½, 1]` of its ceiling.
pub const SLOW_RETRY: Backoff = Backoff {
    base: Duration::from_secs(30),
    cap: Duration::from_secs(600),
    low: 0.5,
    spread: 0.5,
};

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

// === impl RetryClass ===

impl RetryClass {
    pub fn backoff(self) -> Backoff {
        match self {
            RetryClass::Fast => FAST_RETRY,
            RetryClass::Slow => SLOW_RETRY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let b = FAST_RETRY;
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(1600));
        assert_eq!(b.delay(20, 1.0), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(15));
        assert!(SLOW_RETRY.delay(0, 0.0) >= Duration::from_secs(15));
        assert_eq!(RetryClass::Fast.backoff(), FAST_RETRY);
        assert_eq!(RetryClass::Slow.backoff(), SLOW_RETRY);
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
