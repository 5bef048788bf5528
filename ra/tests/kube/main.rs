//! The Kubernetes client, reflector and root-ConfigMap publisher against the fake API server
//! (`meshca_kube::fake`) over a real loopback socket: what a cluster operator would see in
//! the cluster, and what the publisher reports.

mod client;
mod fake_pods;
mod node_authorizer;
mod publisher;
mod reflector;

use std::future::Future;
use std::time::Duration;

use meshca_kube::fake::FakeApiServer;
use meshca_kube::KubeClient;
use meshca_ra::config::ClusterConfig;
use tempfile::TempDir;

pub const TOKEN: &str = "meshca-sa-token";

/// A fake cluster and a client of it, authenticated with a token file.
#[derive(Debug)]
pub struct Cluster {
    pub api: FakeApiServer,
    pub addr: std::net::SocketAddr,
    pub client: KubeClient,
    pub token_file: std::path::PathBuf,
    _dir: TempDir,
}

pub async fn cluster() -> Cluster {
    let api = FakeApiServer::new(TOKEN);
    let addr = api.serve_http().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // Trailing newline, as kubelet-projected tokens do not have but hand-made files often do.
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let client = KubeClient::new(
        &ClusterConfig {
            api_server_url: Some(format!("http://{addr}")),
            api_server_token_file: Some(token_file.clone()),
            request_timeout: Duration::from_secs(2),
            ..ClusterConfig::default()
        }
        .api_server(),
    )
    .unwrap()
    .with_watch_timeout(Duration::from_secs(30));
    Cluster {
        api,
        addr,
        client,
        token_file,
        _dir: dir,
    }
}

/// Polls `check` until it holds, failing with `what` after a few seconds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `check` for a while and requires it to hold throughout: for "nothing happens".
pub async fn throughout(what: &str, period: Duration, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < until {
        assert!(check(), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `f` with a deadline.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("finished in time")
}
