//! The CA's counters, which the RA's metrics endpoint exports. A module of its own so the
//! parts that count (the group commit, the cacerts reloader) need nothing else of the CA.

use std::sync::atomic::AtomicU64;

/// Counters the metrics endpoint exports.
#[derive(Debug, Default)]
pub struct CaMetrics {
    pub cacerts_reloads: AtomicU64,
    pub cacerts_reload_failures: AtomicU64,
    /// Store transactions that recorded issuances (group commits)…
    pub issuance_commits: AtomicU64,
    /// …and the issuances they recorded: the ratio is the mean batch size.
    pub issuances_committed: AtomicU64,
}
