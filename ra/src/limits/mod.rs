//! Per-caller rate limits, so that one tenant cannot take the RA from the others: token
//! buckets per peer address and per authenticated identity on `CreateCertificate` (and, in
//! `rest::failed_auth`, per address on failed REST authentication); bounded in memory however
//! many callers there are.

mod bucket;
mod callers;
mod keyed;

pub use bucket::{Bucket, RateLimit};
pub use callers::{CallerLimitConfig, CallerLimits, LimitKind, RateLimited};
pub use keyed::KeyedLimiter;
