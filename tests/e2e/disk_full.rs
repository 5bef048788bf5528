//! The SQLite data directory filling up under load (a small tmpfs the test mounts): callers get
//! `UNAVAILABLE` saying nothing was issued, `/readyz` turns 503 (reads still work, writes do
//! not), no certificate leaves the server without its row, and once space is freed issuance
//! resumes by itself, the server is ready again and the audit chain verifies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::load::{all_on_record, refusals_say_nothing_was_issued, serials, until, Load};

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
    let load = Load::start(server.grpc, &data, 8, false).await;
    let within = Duration::from_secs(90);
    // The disk fills: calls start being refused, and the server says it is not ready.
    until("the disk fills and calls are refused", within, &|| {
        load.refused_since(0) >= 20
    })
    .await;
    let ready = || {
        http_get(server.metrics, "/readyz")
            .map(|(code, _)| code)
            .unwrap_or(0)
    };
    until("/readyz turns 503", within, &|| ready() == 503).await;
    let (_, why) = http_get(server.metrics, "/readyz").unwrap();
    assert!(why.contains("recording issuances fails"), "{why}");

    // Space comes back: issuance resumes without a restart.
    disk.grow("64m");
    let grown_at = load.len();
    until("issuance resumes", within, &|| {
        load.issued_since(grown_at) > 0
    })
    .await;
    until("/readyz turns 200", within, &|| ready() == 200).await;
    let outcomes = load.finish().await;

    refusals_say_nothing_was_issued(&outcomes);
    let issued = serials(&outcomes);
    all_on_record(server.rest, &data, &issued).await;
    eprintln!(
        "disk_full: {} issued, {} refused while the disk was full",
        issued.len(),
        outcomes.len() - issued.len()
    );
}
