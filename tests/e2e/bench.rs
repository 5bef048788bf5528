//! `meshca bench` against a real dev server: every request succeeds and is checked, the
//! report carries latency percentiles and the server's CPU per issuance; refusals are counted
//! by gRPC code.

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn the_load_generator_measures_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    let grpc = server.grpc;
    let bench = |extra: &[&str]| {
        let out = std::process::Command::new(meshca_bin())
            .args(["bench", "--json", "--addr", &grpc.to_string(), "--ca-cert"])
            .arg(data.join("root-cert.pem"))
            .args(["--server-pid", &server.pid().to_string()])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
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
