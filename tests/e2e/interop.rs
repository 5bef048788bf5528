//! `meshca agent`'s Unix sockets as clients we did not write see them, each with its own stack's
//! `:authority`: Envoy's side of SDS built from PyPI `xds-protos` + `grpcio` (grpc-core sends
//! the socket path percent-encoded), the same client told to send the raw path as grpc-java
//! does, and py-spiffe's `WorkloadApiClient`. Our own Rust clients passed while these were
//! refused, so these run in CI (`tests/python/`, venv from `scripts/test-venv.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/default";

/// A script of `tests/python/` running against a socket; its JSON lines are read at the end.
struct PythonClient {
    name: String,
    child: std::process::Child,
}

impl PythonClient {
    fn start(python: &Path, script: &str, args: &[&str]) -> Self {
        let child = Command::new(python)
            .arg(python_script(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        Self {
            name: format!("{script} {}", args.join(" ")),
            child,
        }
    }

    /// Its events, after it exited successfully within `within`.
    fn events(mut self, within: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        while self.child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{stdout}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

fn event<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {events:#?}"))
}

/// The first answer and the rotation push an Envoy-shaped client saw.
fn check_sds(events: &[Value], root: &str, stack: &str) {
    let responses: Vec<&Value> = events.iter().filter(|e| e["event"] == "response").collect();
    assert_eq!(responses.len(), 2, "{stack}: {events:#?}");
    let (initial, pushed) = (responses[0], responses[1]);
    let chain = initial["secrets"]["default"]["certificate_chain"]
        .as_str()
        .unwrap();
    assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"), "{stack}");
    assert!(initial["secrets"]["default"]["private_key"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
    assert_eq!(initial["secrets"]["ROOTCA"]["trusted_ca"], root, "{stack}");
    // Neither the ACK nor the NACK was answered: the next answer is the rotation.
    assert_ne!(pushed["version_info"], initial["version_info"], "{stack}");
    assert_ne!(pushed["nonce"], initial["nonce"], "{stack}");
    let rotated = pushed["secrets"]["default"]["certificate_chain"]
        .as_str()
        .unwrap();
    assert_ne!(rotated, chain, "{stack}: a new certificate");
    assert!(
        pushed["secrets"].get("ROOTCA").is_none(),
        "{stack}: ROOTCA unchanged, so not re-sent"
    );
}

#[test]
fn grpc_core_envoy_and_py_spiffe_are_served_through_a_rotation() {
    let Some(python) = third_party_python("interop") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    // Rotates 10 s in: every client sees a first answer and a push.
    let _agent = dev_agent(
        tmp.path(),
        server.grpc,
        &[("MESHCA_AGENT_CERT_TTL", "20s".into())],
    );
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let socket = |name: &str| -> PathBuf { data.join("agent").join(name) };
    let sds = socket("sds.sock");
    let spiffe = socket("spiffe.sock");
    let (sds, spiffe) = (sds.to_str().unwrap(), spiffe.to_str().unwrap());

    let clients = [
        PythonClient::start(&python, "sds_client.py", &["--socket", sds]),
        PythonClient::start(
            &python,
            "sds_client.py",
            &["--socket", sds, "--authority", "raw-path"],
        ),
        PythonClient::start(&python, "workload_client.py", &["--socket", spiffe]),
    ];
    let [grpc_core, raw_path, workload] =
        clients.map(|client| client.events(Duration::from_secs(60)));

    check_sds(&grpc_core, &root, "grpc-core's default authority");
    check_sds(&raw_path, &root, "the raw socket path as authority");

    let svid = event(&workload, "svid");
    assert_eq!(svid["spiffe_id"], ID, "py-spiffe validated and accepted it");
    assert_eq!(
        event(&workload, "bundles")["trust_domains"]["cluster.local"],
        1
    );
    let rotated = event(&workload, "rotated");
    assert_eq!(rotated["spiffe_id"], ID);
    assert_ne!(
        rotated["serial"], svid["serial"],
        "the watch saw the rotation"
    );
    assert_eq!(
        event(&workload, "no_header")["code"],
        "INVALID_ARGUMENT",
        "the Workload API still requires its security header"
    );
}
