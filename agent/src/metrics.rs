//! Agent metrics, in the Prometheus text format: certificate expiry, outgoing CSRs (count,
//! failures, retries, latency) and connected Workload API streams.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct AgentMetrics {
    csr_count: AtomicU64,
    csr_failures: AtomicU64,
    csr_retries: AtomicU64,
    csr_latency_micros: AtomicU64,
    workload_api_streams: AtomicI64,
}

/// Counts a connected stream for as long as it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<AgentMetrics>);

impl AgentMetrics {
    pub fn csr_sent(&self, latency: Duration, ok: bool) {
        self.csr_count.fetch_add(1, Ordering::Relaxed);
        self.csr_latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        if !ok {
            self.csr_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn retry_scheduled(&self) {
        self.csr_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.workload_api_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    pub fn render(&self, cert_not_after: Option<SystemTime>) -> String {
        let expiry = cert_not_after
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let count = self.csr_count.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, sample: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample}");
        };
        metric(
            "meshca_agent_cert_expiry_timestamp",
            "gauge",
            "Unix time the served certificate expires.",
            format!("meshca_agent_cert_expiry_timestamp{{resource=\"default\"}} {expiry}"),
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
        self.0.workload_api_streams.fetch_sub(1, Ordering::Relaxed);
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
        let guard = m.stream_opened();
        let text = m.render(Some(UNIX_EPOCH + Duration::from_secs(42)));
        assert!(text.contains("meshca_agent_cert_expiry_timestamp{resource=\"default\"} 42"));
        assert!(text.contains("\nmeshca_agent_csr_count 2\n"));
        assert!(text.contains("\nmeshca_agent_csr_failure_count 1\n"));
        assert!(text.contains("\nmeshca_agent_csr_retry_count 1\n"));
        assert!(text.contains("\nmeshca_agent_workload_api_streams 1\n"));
        drop(guard);
        assert!(m
            .render(None)
            .contains("\nmeshca_agent_workload_api_streams 0\n"));
    }
}
