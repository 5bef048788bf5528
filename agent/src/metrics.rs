//! Agent metrics, in the Prometheus text format: certificate expiry, outgoing CSRs (count,
//! failures, retries, latency) and connected SDS and Workload API streams.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct AgentMetrics {
    csr_count: AtomicU64,
    csr_failures: AtomicU64,
    csr_retries: AtomicU64,
    csr_latency_micros: AtomicU64,
    workload_api_streams: AtomicI64,
    sds_streams: AtomicI64,
    /// Socket clients served nothing, by reason (attestation failed, identity limit).
    unattested: Mutex<BTreeMap<&'static str, u64>>,
}

/// Which server a stream is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    WorkloadApi,
    Sds,
}

/// Counts a connected stream for as long as it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<AgentMetrics>, StreamKind);

impl AgentMetrics {
    pub fn csr_sent(&self, latency: Duration, ok: bool) {
        self.csr_count.fetch_add(1, Ordering::Relaxed);
        self.csr_latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        if !ok {
            self.csr_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A socket client was refused: it could not be attested, or no identity was free.
    pub fn unattested(&self, reason: &'static str) {
        *self
            .unattested
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    pub fn retry_scheduled(&self) {
        self.csr_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// CSRs that failed so far (`meshca_agent_csr_failure_count`).
    pub fn csr_failures(&self) -> u64 {
        self.csr_failures.load(Ordering::Relaxed)
    }

    pub fn stream_opened(self: &Arc<Self>, kind: StreamKind) -> StreamGuard {
        self.streams(kind).fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone(), kind)
    }

    fn streams(&self, kind: StreamKind) -> &AtomicI64 {
        match kind {
            StreamKind::WorkloadApi => &self.workload_api_streams,
            StreamKind::Sds => &self.sds_streams,
        }
    }

    /// `expiries`: each served certificate resource (`default`, `ROOTCA`, mounted files) and
    /// when it expires; `default` reads 0 until the first certificate arrives.
    pub fn render(&self, expiries: &[(String, SystemTime)]) -> String {
        let mut expiry_samples = String::new();
        if !expiries.iter().any(|(name, _)| name == "default") {
            expiry_samples.push_str("meshca_agent_cert_expiry_timestamp{resource=\"default\"} 0");
        }
        for (name, at) in expiries {
            let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if !expiry_samples.is_empty() {
                expiry_samples.push('\n');
            }
            let name = name
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(
                expiry_samples,
                "meshca_agent_cert_expiry_timestamp{{resource=\"{name}\"}} {secs}"
            );
        }
        let count = self.csr_count.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, sample: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample}");
        };
        metric(
            "meshca_agent_cert_expiry_timestamp",
            "gauge",
            "Unix time a served certificate (or, for a bundle, its first root) expires.",
            expiry_samples,
        );
        metric(
            "meshca_agent_csr_count",
            "counter",
            "CSRs sent to the CA.",
            format!("meshca_agent_csr_count {count}"),
        );
        metric(
            "meshca_agent_csr_failure_count",
            "counter",
            "CSRs that failed (refused, unreachable CA, or an answer that did not validate).",
            format!(
                "meshca_agent_csr_failure_count {}",
                self.csr_failures.load(Ordering::Relaxed)
            ),
        );
        metric(
            "meshca_agent_csr_retry_count",
            "counter",
            "Retries scheduled after a failure.",
            format!(
                "meshca_agent_csr_retry_count {}",
                self.csr_retries.load(Ordering::Relaxed)
            ),
        );
        metric(
            "meshca_agent_csr_latency_seconds",
            "summary",
            "Time from CSR to a validated certificate.",
            format!(
                "meshca_agent_csr_latency_seconds_sum {}\nmeshca_agent_csr_latency_seconds_count {count}",
                self.csr_latency_micros.load(Ordering::Relaxed) as f64 / 1e6
            ),
        );
        metric(
            "meshca_agent_sds_streams",
            "gauge",
            "Connected Envoy SDS streams.",
            format!(
                "meshca_agent_sds_streams {}",
                self.sds_streams.load(Ordering::Relaxed)
            ),
        );
        let mut refusals = String::new();
        for (reason, count) in self
            .unattested
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if !refusals.is_empty() {
                refusals.push('\n');
            }
            let _ = write!(
                refusals,
                "meshca_agent_unattested_count{{reason=\"{reason}\"}} {count}"
            );
        }
        metric(
            "meshca_agent_unattested_count",
            "counter",
            "Socket clients served nothing: not attested, or no identity free (agent.max_identities).",
            refusals,
        );
        metric(
            "meshca_agent_workload_api_streams",
            "gauge",
            "Connected Workload API streams.",
            format!(
                "meshca_agent_workload_api_streams {}",
                self.workload_api_streams.load(Ordering::Relaxed)
            ),
        );
        out
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams(self.1).fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_stream_gauge() {
        let m = Arc::new(AgentMetrics::default());
        m.csr_sent(Duration::from_millis(5), true);
        m.csr_sent(Duration::from_millis(5), false);
        m.retry_scheduled();
        let guard = m.stream_opened(StreamKind::WorkloadApi);
        let sds = m.stream_opened(StreamKind::Sds);
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let text = m.render(&[("default".into(), at(42)), ("ROOTCA".into(), at(99))]);
        assert!(text.contains("meshca_agent_cert_expiry_timestamp{resource=\"default\"} 42\n"));
        assert!(text.contains("meshca_agent_cert_expiry_timestamp{resource=\"ROOTCA\"} 99\n"));
        assert!(text.contains("\nmeshca_agent_sds_streams 1\n"));
        assert!(text.contains("\nmeshca_agent_csr_count 2\n"));
        assert!(text.contains("\nmeshca_agent_csr_failure_count 1\n"));
        assert_eq!(m.csr_failures(), 1);
        assert!(text.contains("\nmeshca_agent_csr_retry_count 1\n"));
        assert!(text.contains("\nmeshca_agent_workload_api_streams 1\n"));
        drop(guard);
        drop(sds);
        let text = m.render(&[]);
        assert!(text.contains("\nmeshca_agent_workload_api_streams 0\n"));
        assert!(text.contains("\nmeshca_agent_sds_streams 0\n"));
        assert!(text.contains("meshca_agent_cert_expiry_timestamp{resource=\"default\"} 0\n"));
    }
}
