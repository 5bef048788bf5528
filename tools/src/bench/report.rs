//! What a `meshca bench` run measured, and how it is shown: a few lines for a terminal, or JSON.

use serde::Serialize;
use std::collections::BTreeMap;

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub requests: u64,
    pub ok: u64,
    /// gRPC code name (or `invalid_response`) → count.
    pub errors: BTreeMap<String, u64>,
    /// Attempts the server shed with RESOURCE_EXHAUSTED and the client sent again.
    pub shed_retries: u64,
    pub seconds: f64,
    pub throughput_per_sec: f64,
    pub latency_ms: Percentiles,
    /// Server CPU (user + system) per successful issuance, when `--server-pid` was given.
    pub server_cpu_ms_per_issuance: Option<f64>,
    /// This load generator's own CPU per successful call: on a shared machine, what the
    /// measurement itself takes from the server.
    pub client_cpu_ms_per_request: Option<f64>,
    /// Bytes the server caused to be written to storage per successful issuance (its
    /// `write_bytes` in /proc, KiB), when `--server-pid` was given: what a disk's throughput
    /// limit must allow. A separate database server's writes are not in it.
    pub server_disk_kib_per_issuance: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

// === impl BenchReport ===

impl BenchReport {
    /// A few lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} requests in {:.2} s: {} ok ({:.0}/s)\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n",
            self.requests,
            self.seconds,
            self.ok,
            self.throughput_per_sec,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
        );
        if self.shed_retries > 0 {
            out.push_str(&format!(
                "shed with RESOURCE_EXHAUSTED and retried: {}\n",
                self.shed_retries
            ));
        }
        if let Some(cpu) = self.server_cpu_ms_per_issuance {
            out.push_str(&format!("server CPU per issuance: {cpu:.3} ms\n"));
        }
        if let Some(disk) = self.server_disk_kib_per_issuance {
            out.push_str(&format!("server disk writes per issuance: {disk:.1} KiB\n"));
        }
        if let Some(cpu) = self.client_cpu_ms_per_request {
            out.push_str(&format!("load generator CPU per call: {cpu:.3} ms\n"));
        }
        for (code, n) in &self.errors {
            out.push_str(&format!("errors {code}: {n}\n"));
        }
        out
    }
}
