//! The REST API against its own OpenAPI document: schemathesis (a property-based API fuzzer)
//! runs every check in every phase against a real `meshca server --dev`, so generated clients
//! and fuzzers can take the document at its word.

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::harness::*;

/// One expectation of schemathesis's is loosened, for one operation: its positive-data check
/// expects every schema-valid request to be accepted, but whether uploaded PEM text is a valid
/// CA (certificates that parse, a key that matches, a chain to the root) is beyond any schema,
/// and `POST /v1/authorities` rightly answers such material 400.
const CONFIG: &str = r#"
[[operations]]
include-operation-id = "prepare_authority"
checks.positive_data_acceptance.expected-statuses = ["201", "400", "401", "403", "409"]
"#;

/// Every check (`--checks all`), every phase, a fixed seed and example budget, TLS verified
/// against the dev root, as the admin. `POST /v1/authorities/{id}/activate` is excluded: an
/// activation makes the server present a certificate from the new authority, which the root
/// the run verifies against does not sign, so every later request would fail TLS. Taint and
/// revoke of authorities stay in: with nothing activated nothing is `old`, so they can only
/// answer 404 or 409.
#[tokio::test]
async fn schemathesis_finds_no_disagreement_between_the_document_and_the_server() {
    let test = "openapi::schemathesis_finds_no_disagreement_between_the_document_and_the_server";
    let Some(python) = third_party_python(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    let root = data.join("root-cert.pem");
    let admin = std::fs::read_to_string(data.join("dev/admin-token")).unwrap();
    let admin = admin.trim();
    let rest = Rest::new(server.rest, &std::fs::read_to_string(&root).unwrap());
    let (status, document) = rest.get("/openapi.json", admin).await;
    assert_eq!(status, 200, "{document}");
    let spec = tmp.path().join("openapi.json");
    std::fs::write(&spec, document.to_string()).unwrap();
    let config = tmp.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let report = tmp.path().join("schemathesis-report.json");

    let started = Instant::now();
    let out = Command::new(&python)
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("https://{}", server.rest)])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .arg("--tls-verify")
        .arg(&root)
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--mode", "all"])
        .args(["--seed", "1", "--max-examples", "50"])
        .args(["--request-timeout", "60"])
        .args(["--exclude-operation-id", "activate_authority"])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        // Hypothesis keeps its example database in the working directory.
        .current_dir(tmp.path())
        .output()
        .expect("schemathesis runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{test}: schemathesis took {:.1?}", started.elapsed());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{output}"));
    assert!(out.status.success(), "{}:\n{output}", out.status);
    assert_eq!(report["exit_code"], 0, "{output}");
    assert_eq!(report["complete"], true, "{output}");
    assert_eq!(report["failures"], Value::Array(vec![]), "{output}");
    assert_eq!(report["errors"], Value::Array(vec![]), "{output}");
    assert_eq!(report["test_cases"]["with_failures"], 0, "{output}");
    assert_eq!(report["test_cases"]["errored"], 0, "{output}");
    assert!(
        report["test_cases"]["generated"].as_u64() > Some(100),
        "{output}"
    );
    let operations = &report["operations"];
    assert_eq!(operations["tested"], operations["selected"], "{output}");
    assert_eq!(
        operations["selected"].as_u64().unwrap() + 1,
        operations["total"].as_u64().unwrap(),
        "only activate is left out: {output}"
    );
    for phase in ["coverage", "fuzzing", "stateful"] {
        assert_eq!(
            report["phases"][phase]["status"], "success",
            "{phase}: {output}"
        );
    }
}
