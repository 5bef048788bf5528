//! `meshca bench` against a real dev server: every request succeeds and is checked, the
//! report carries latency percentiles and the server's CPU per issuance; refusals are counted
//! by gRPC code.

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn the_load_generator_measures_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &no_rate_limits());
    let grpc = server.grpc;
    let root = data.join("root-cert.pem").display().to_string();
    let bench = |extra: &[&str]| {
        let pid = server.pid().to_string();
        let grpc = grpc.to_string();
        let common = ["--addr", &grpc, "--ca-cert", &root, "--server-pid", &pid];
        bench_report(common.iter().chain(extra))
    };
    let token = data.join("dev/token").display().to_string();

    // One identity from the dev token.
    let report = bench(&[
        "--token-file",
        &token,
        "--requests",
        "300",
        "--concurrency",
        "16",
    ]);
    assert_eq!(report["requests"], 300, "{report}");
    assert_eq!(report["ok"], 300, "{report}");
    assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap()
            >= report["latency_ms"]["p50"].as_f64().unwrap()
    );
    assert!(
        report["server_cpu_ms_per_issuance"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    // Many identities with tokens minted from the dev issuer's key (the server trusts its JWKS).
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("dev/jwks.json")).unwrap())
            .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let key = data.join("dev/issuer-key.pem").display().to_string();
    let report = bench(&[
        "--jwt-key",
        &key,
        "--jwt-kid",
        &kid,
        "--jwt-issuer",
        "https://kubernetes.default.svc.cluster.local",
        "--identities",
        "8",
        "--requests",
        "200",
    ]);
    assert_eq!(report["ok"], 200, "{report}");
    let rows = server.metric("citadel_server_success_cert_issuance_count");
    assert!(rows >= 500.0, "{rows}");

    // Renewal profile: every call authenticated by a workload certificate over mTLS.
    // Its workload certificate comes from `meshca bench --write-credential`.
    let credential = tmp.path().join("workload");
    let printed = meshca_bench([
        "--addr",
        &grpc.to_string(),
        "--ca-cert",
        &root,
        "--token-file",
        &token,
        "--ttl-secs",
        "3600",
        "--write-credential",
        credential.to_str().unwrap(),
    ]);
    assert!(printed.starts_with("spiffe://cluster.local/ns/default/sa/default: "));
    let cert = credential.join("cert-chain.pem");
    let key = credential.join("key.pem");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let report = bench(&[
        "--client-cert",
        cert.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
        "--requests",
        "100",
    ]);
    assert_eq!(report["ok"], 100, "{report}");
    let renewals = issued_rows(&data, "requester_method = 'renewal'").await;
    assert_eq!(
        renewals, 100,
        "the renewal profile authenticates by certificate"
    );

    // Refusals are counted by code, not hidden.
    let report = bench(&[
        "--token-file",
        &token,
        "--requests",
        "50",
        "--namespace",
        "other",
    ]);
    assert_eq!(report["ok"], 0);
    assert_eq!(report["errors"]["invalid_argument"], 50, "{report}");
}

/// A restart storm: 10,000 CreateCertificate calls at once against a server that handles 32 at
/// a time. The excess is shed with RESOURCE_EXHAUSTED and retried by the client; in the end
/// every call succeeded, and every success is on record.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_ten_thousand_is_shed_and_retried_without_losing_one() {
    const BURST: u64 = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let mut env = no_rate_limits();
    env.push(("MESHCA_GRPC_MAX_IN_FLIGHT_ISSUANCES", "32".into()));
    let server = dev_server(tmp.path(), &env);
    let report = bench_report([
        "--addr",
        &server.grpc.to_string(),
        "--ca-cert",
        data.join("root-cert.pem").to_str().unwrap(),
        "--token-file",
        data.join("dev/token").to_str().unwrap(),
        "--requests",
        &BURST.to_string(),
        "--concurrency",
        &BURST.to_string(),
        "--connections",
        "16",
        "--keys-per-identity",
        "64",
    ]);
    assert_eq!(report["ok"], BURST, "{report}");
    assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
    assert!(
        report["shed_retries"].as_u64().unwrap() > 0,
        "32 in flight cannot take 10,000 at once without shedding: {report}"
    );
    assert!(server.metric("meshca_csr_shed_count") > 0.0);
    assert_eq!(
        server.metric("citadel_server_success_cert_issuance_count"),
        BURST as f64
    );

    // On record: one row per success for the identity (the store, not a counter).
    let rows = issued_rows(
        &data,
        "spiffe_id = 'spiffe://cluster.local/ns/default/sa/default'",
    )
    .await;
    assert_eq!(rows, BURST as i64);
}

/// Issuance rows matching `condition` in the dev server's SQLite store under `data`.
async fn issued_rows(data: &std::path::Path, condition: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("meshca.db").display()))
        .await
        .unwrap();
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM issued_certificates WHERE {condition}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap()
}
