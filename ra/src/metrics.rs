//! RA metrics under Istio's names, so existing istiod dashboards and alerts keep working.
//! Written out by hand in the Prometheus text format: the names must be exactly Istio's
//! (no `_total` suffix), which metric libraries that follow OpenMetrics would change.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::node::PodCacheStatus;

/// Upper bounds (seconds) of the CSR latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
pub struct RaMetrics {
    csr_count: AtomicU64,
    authentication_failures: AtomicU64,
    /// Failure reason → count, for `citadel_server_authentication_failure_count`'s detail.
    authentication_failure_reasons: Mutex<BTreeMap<&'static str, u64>>,
    /// Refused `ImpersonatedIdentity` requests by reason (they count as authentication
    /// failures too, as in istiod).
    impersonation_refusals: Mutex<BTreeMap<&'static str, u64>>,
    sign_errors: Mutex<BTreeMap<&'static str, u64>>,
    success_count: AtomicU64,
    shed: AtomicU64,
    /// Calls refused by a per-caller limit, by limit (`address`, `identity`, `rest_auth`).
    rate_limited: Mutex<BTreeMap<&'static str, u64>>,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Values read from the CA at scrape time: expiry gauges and store counters.
#[derive(Debug, Clone, Copy)]
pub struct CaReadings {
    pub root_cert_expiry: u64,
    pub cert_chain_expiry: u64,
    pub cacerts_reload_failures: u64,
    pub issuance_commits: u64,
    pub issuances_committed: u64,
}

// === impl RaMetrics ===

impl RaMetrics {
    pub fn csr_received(&self) {
        self.csr_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A call refused with RESOURCE_EXHAUSTED because too many were in flight.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A call refused by the per-caller limit `limit`.
    pub fn rate_limited(&self, limit: &'static str) {
        *self
            .rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(limit)
            .or_default() += 1;
    }

    pub fn authentication_failed(&self, reason: &'static str) {
        self.authentication_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .authentication_failure_reasons
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += 1;
    }

    /// A node agent's `ImpersonatedIdentity` was refused.
    pub fn impersonation_refused(&self, reason: &'static str) {
        self.authentication_failures.fetch_add(1, Ordering::Relaxed);
        *self
            .impersonation_refusals
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += 1;
    }

    pub fn sign_error(&self, kind: &'static str) {
        *self
            .sign_errors
            .lock()
            .expect("metrics lock")
            .entry(kind)
            .or_default() += 1;
    }

    pub fn issued(&self, latency: Duration) {
        self.success_count.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }

    pub fn authentication_failures(&self) -> u64 {
        self.authentication_failures.load(Ordering::Relaxed)
    }

    pub fn successes(&self) -> u64 {
        self.success_count.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: CaReadings) -> String {
        let mut out = String::with_capacity(2048);
        counter(
            &mut out,
            "citadel_server_csr_count",
            "The number of CSRs received by the CA server.",
            self.csr_count.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "meshca_csr_shed_count",
            "CreateCertificate calls refused with RESOURCE_EXHAUSTED (grpc.max_in_flight_issuances).",
            self.shed.load(Ordering::Relaxed),
        );
        let limited = self
            .rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP meshca_rate_limited_count Calls refused by a per-caller limit (grpc.rate_limit, rest.failed_auth_limit), by limit.\n# TYPE meshca_rate_limited_count counter"
        );
        for (limit, count) in limited {
            let _ = writeln!(
                out,
                "meshca_rate_limited_count{{limit=\"{limit}\"}} {count}"
            );
        }
        counter(
            &mut out,
            "citadel_server_authentication_failure_count",
            "The number of authentication failures.",
            self.authentication_failures(),
        );
        labeled_counter(
            &mut out,
            "meshca_authentication_failure_reason_count",
            "Authentication failures by reason (never sent to callers).",
            "reason",
            &self
                .authentication_failure_reasons
                .lock()
                .expect("metrics lock"),
        );
        labeled_counter(
            &mut out,
            "meshca_impersonation_refusal_count",
            "ImpersonatedIdentity requests refused by node authorization, by reason (never sent to callers).",
            "reason",
            &self.impersonation_refusals.lock().expect("metrics lock"),
        );
        labeled_counter(
            &mut out,
            "citadel_server_csr_sign_err_count",
            "The number of errors occurred when signing the CSR.",
            "error",
            &self.sign_errors.lock().expect("metrics lock"),
        );
        counter(
            &mut out,
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded.",
            self.successes(),
        );
        gauge(
            &mut out,
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA root cert will expire.",
            gauges.root_cert_expiry,
        );
        gauge(
            &mut out,
            "citadel_server_cert_chain_expiry_timestamp",
            "The unix timestamp, in seconds, when the CA cert chain will expire.",
            gauges.cert_chain_expiry,
        );
        counter(
            &mut out,
            "meshca_cacerts_reload_failure_count",
            "Plugged-in CA directory changes that failed validation (old material kept).",
            gauges.cacerts_reload_failures,
        );
        counter(
            &mut out,
            "meshca_store_issuance_commit_count",
            "Store transactions that recorded issuances; several queued issuances share one (group commit).",
            gauges.issuance_commits,
        );
        counter(
            &mut out,
            "meshca_store_issuances_committed_count",
            "Issuances recorded by those transactions.",
            gauges.issuances_committed,
        );
        self.latency.render(
            &mut out,
            "meshca_csr_latency_seconds",
            "Time from request to signed, recorded certificate.",
        );
        out
    }
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The pod caches of node authorization, one series per cluster: whether the first list has
/// completed (until then impersonation is answered UNAVAILABLE) and how many pods it holds.
pub fn render_pod_caches(out: &mut String, caches: &[PodCacheStatus]) {
    if caches.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP meshca_pod_cache_synced 1 once node authorization's pod cache of a cluster has listed its pods.\n# TYPE meshca_pod_cache_synced gauge"
    );
    for cache in caches {
        let _ = writeln!(
            out,
            "meshca_pod_cache_synced{{cluster=\"{}\"}} {}",
            cache.cluster,
            u8::from(cache.synced)
        );
    }
    let _ = writeln!(
        out,
        "# HELP meshca_pod_cache_pods Pods in node authorization's pod cache of a cluster.\n# TYPE meshca_pod_cache_pods gauge"
    );
    for cache in caches {
        let _ = writeln!(
            out,
            "meshca_pod_cache_pods{{cluster=\"{}\"}} {}",
            cache.cluster, cache.pods
        );
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn labeled_counter(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &BTreeMap<&'static str, u64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (key, value) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_names_and_histogram() {
        let m = RaMetrics::default();
        m.csr_received();
        m.csr_received();
        m.authentication_failed("no credential");
        m.sign_error("ttl_error");
        m.issued(Duration::from_millis(3));
        let text = m.render(CaReadings {
            root_cert_expiry: 4_000_000_000,
            cert_chain_expiry: 3_000_000_000,
            cacerts_reload_failures: 0,
            issuance_commits: 2,
            issuances_committed: 5,
        });
        assert!(
            text.contains("\nmeshca_store_issuance_commit_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmeshca_store_issuances_committed_count 5\n"),
            "{text}"
        );
        assert!(text.contains("\ncitadel_server_csr_count 2\n"), "{text}");
        assert!(text.contains("\ncitadel_server_authentication_failure_count 1\n"));
        assert!(text.contains("citadel_server_csr_sign_err_count{error=\"ttl_error\"} 1"));
        assert!(text.contains("\ncitadel_server_success_cert_issuance_count 1\n"));
        assert!(text.contains("citadel_server_root_cert_expiry_timestamp 4000000000"));
        assert!(text.contains("meshca_csr_latency_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("meshca_csr_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("meshca_csr_latency_seconds_count 1"));
    }
}
