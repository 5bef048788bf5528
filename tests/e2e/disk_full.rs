//! The SQLite data directory filling up under load (a small tmpfs the test mounts): callers get
//! `UNAVAILABLE` saying nothing was issued, `/readyz` turns 503 (reads still work, writes do
//! not), no certificate leaves the server without its row, and once space is freed issuance
//! resumes by itself, the server is ready again and the audit chain verifies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_ca::x509::ParsedCert;

use crate::admin::read_token;
use crate::harness::*;

/// A tmpfs of `size` mounted at `at`, unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// None (the test is skipped, unless in CI) where mounting is not allowed.
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        if out.status.success() {
            return Some(Self { at: at.into() });
        }
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var_os("CI").is_none(),
            "mounting a tmpfs failed in CI: {why}"
        );
        eprintln!("disk_full: skipped: cannot mount a tmpfs here: {why}");
        None
    }

    fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

enum Outcome {
    Issued(String),
    Refused(tonic::Code, String),
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_cleanly_and_issuance_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&tmp.path().join("disk"), "3m") else {
        return;
    };
    let data = disk.at.join("meshca-dev");
    let grpc: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = no_rate_limits();
    env.push(("MESHCA_GRPC_LISTEN", grpc.to_string()));
    env.push(("MESHCA_METRICS_LISTEN", metrics.to_string()));
    // Logs stay off the small disk.
    let server = MeshcaProcess::start(
        &["server", "--dev", "--data-dir", data.to_str().unwrap()],
        &env,
        tmp.path(),
        grpc,
        metrics,
    );
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let token = std::fs::read_to_string(data.join("dev/token"))
        .unwrap()
        .trim()
        .to_string();
    let auditor = read_token(&data, "auditor-token");

    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let mut client = ca_client(server.grpc, &root, None).await;
        let (token, outcomes, stop) = (token.clone(), outcomes.clone(), stop.clone());
        let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]);
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let outcome = match create_certificate(&mut client, &csr, 3600, Some(&token), None)
                    .await
                {
                    Ok(answer) => {
                        let leaf = ParsedCert::from_der(&der_of(&answer.cert_chain[0])).unwrap();
                        Outcome::Issued(leaf.serial().to_hex())
                    }
                    Err(status) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Outcome::Refused(status.code(), status.message().to_string())
                    }
                };
                outcomes.lock().unwrap().push(outcome);
            }
        }));
    }
    let refusals = |outcomes: &Arc<Mutex<Vec<Outcome>>>, from: usize| {
        outcomes.lock().unwrap()[from..]
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(..)))
            .count()
    };
    let until = async |what: &str, check: &dyn Fn() -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The disk fills: calls start being refused, and the server says it is not ready.
    until("the disk fills and calls are refused", &|| {
        refusals(&outcomes, 0) >= 20
    })
    .await;
    let ready = || {
        http_get(server.metrics, "/readyz")
            .map(|(code, _)| code)
            .unwrap_or(0)
    };
    until("/readyz turns 503", &|| ready() == 503).await;
    let (_, why) = http_get(server.metrics, "/readyz").unwrap();
    assert!(why.contains("recording issuances fails"), "{why}");

    // Space comes back: issuance resumes without a restart.
    disk.grow("64m");
    let grown_at = outcomes.lock().unwrap().len();
    until("issuance resumes", &|| {
        outcomes.lock().unwrap()[grown_at..]
            .iter()
            .any(|o| matches!(o, Outcome::Issued(_)))
    })
    .await;
    until("/readyz turns 200", &|| ready() == 200).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    for outcome in &outcomes {
        if let Outcome::Refused(code, message) = outcome {
            assert_eq!(*code, tonic::Code::Unavailable, "{message}");
            assert!(message.contains("nothing was issued"), "{message}");
        }
    }
    let rest = Rest::new(server.rest, &root);
    let serials: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Issued(serial) => Some(serial),
            Outcome::Refused(..) => None,
        })
        .collect();
    let mut missing = Vec::new();
    for serial in &serials {
        let (status, _) = rest
            .get(&format!("/v1/certificates/{serial}"), &auditor)
            .await;
        if status != 200 {
            missing.push(serial.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} not on record",
        missing.len(),
        serials.len()
    );
    let (_, verdict) = rest.get("/v1/audit/verify", &auditor).await;
    assert_eq!(verdict["intact"], true, "{verdict}");
    eprintln!(
        "disk_full: {} issued, {} refused while the disk was full",
        serials.len(),
        outcomes.len() - serials.len()
    );
}
