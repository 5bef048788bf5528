//! A node agent that attests its socket clients. With `agent.attestation = "unix"`, processes
//! started under different uids connect to the same Workload API socket and each is served only
//! its own identity, which the agent asks the RA for as a trusted node account (node
//! authorization against the in-test API server); a uid no rule names is refused, and an
//! identity the RA refuses is reported to its client and per identity in `/metrics`. The
//! `k8s` attestor's test (`attestation_k8s.rs`) shares the cluster set up here.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_ra::dev::BoundPod;
use serde_json::Value;

use crate::harness::*;
use crate::peers::{self, ApiServerState, REVIEWER_TOKEN};

/// The node the agent runs on.
pub(crate) const NODE: &str = "worker-1";

/// A dev server doing node authorization against an in-test API server whose pods are given,
/// the agent's own pod `meshca/meshca-agent-x1` on [`NODE`], and a copy of the binary that
/// other uids may run.
pub(crate) struct NodeCluster {
    pub dir: PathBuf,
    pub meshca: PathBuf,
    pub api: Arc<ApiServerState>,
    pub api_addr: SocketAddr,
    pub data: PathBuf,
    grpc: SocketAddr,
    agent_uid: String,
    _server: MeshcaProcess,
    _runtime: std::thread::JoinHandle<()>,
    _tmp: tempfile::TempDir,
}

impl NodeCluster {
    /// `pods`: namespace, name, service account, node of each workload pod.
    pub(crate) fn start(pods: &[(&str, &str, &str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // Clients run as other users: they must reach the socket and the binary.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let meshca = dir.join("meshca");
        std::fs::copy(meshca_bin(), &meshca).unwrap();
        std::fs::set_permissions(&meshca, std::fs::Permissions::from_mode(0o755)).unwrap();

        let (runtime, runtime_thread) = third_party_runtime();
        let api = Arc::new(ApiServerState::default());
        let (api_addr, api_ca) = peers::start_api_server(&runtime, api.clone());
        std::fs::write(dir.join("apiserver-ca.pem"), api_ca.pem()).unwrap();
        std::fs::write(dir.join("reviewer-token"), REVIEWER_TOKEN).unwrap();
        let cluster = api.cluster();
        let agent_uid = cluster.add_pod("meshca", "meshca-agent-x1", "meshca-agent", Some(NODE));
        for (namespace, name, service_account, node) in pods {
            cluster.add_pod(namespace, name, service_account, Some(node));
        }

        let data = dir.join("meshca-dev");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let prefix = "MESHCA_AUTH_CLUSTERS_KUBERNETES";
        let server_env: Vec<(String, String)> = vec![
            ("MESHCA_GRPC_LISTEN".into(), grpc.to_string()),
            ("MESHCA_METRICS_LISTEN".into(), metrics.to_string()),
            (
                "MESHCA_AUTH_TRUSTED_NODE_ACCOUNTS".into(),
                "meshca/meshca-agent".into(),
            ),
            (
                format!("{prefix}_API_SERVER_URL"),
                format!("https://{api_addr}"),
            ),
            (
                format!("{prefix}_API_SERVER_CA_FILE"),
                dir.join("apiserver-ca.pem").display().to_string(),
            ),
            (
                format!("{prefix}_API_SERVER_TOKEN_FILE"),
                dir.join("reviewer-token").display().to_string(),
            ),
        ];
        let server_env: Vec<(&str, String)> = server_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let server = MeshcaProcess::start(
            &["server", "--dev", "--data-dir", data.to_str().unwrap()],
            &server_env,
            &dir,
            grpc,
            metrics,
        );
        Self {
            dir,
            meshca,
            api,
            api_addr,
            data,
            grpc,
            agent_uid,
            _server: server,
            _runtime: runtime_thread,
            _tmp: tmp,
        }
    }

    /// `meshca agent` as `meshca/meshca-agent` with a token bound to its pod on [`NODE`];
    /// `settings` are more `[agent]` keys, `tables` more tables after it.
    pub(crate) fn start_agent(&self, settings: &str, tables: &str) -> MeshcaProcess {
        let token = dev_issuer_token(
            &self.data,
            "meshca",
            "meshca-agent",
            Some(BoundPod {
                name: "meshca-agent-x1",
                uid: &self.agent_uid,
                node: Some(NODE),
            }),
        );
        let dir = &self.dir;
        std::fs::write(dir.join("agent-token"), token).unwrap();
        std::fs::write(
            dir.join("agent.toml"),
            format!(
                "[agent]\nnamespace = \"meshca\"\nservice_account = \"meshca-agent\"\n\
                 token_file = \"{}\"\n{settings}\n{tables}\n",
                dir.join("agent-token").display()
            ),
        )
        .unwrap();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        MeshcaProcess::start(
            &[
                "agent",
                "--dev",
                "--data-dir",
                self.data.to_str().unwrap(),
                "--config",
                dir.join("agent.toml").to_str().unwrap(),
            ],
            &[
                ("MESHCA_AGENT_CA_ADDR", self.grpc.to_string()),
                ("MESHCA_AGENT_METRICS_LISTEN", health.to_string()),
            ],
            dir,
            health,
            health,
        )
    }

    pub(crate) fn workload_socket(&self) -> PathBuf {
        self.data.join("agent/spiffe.sock")
    }
}

/// `meshca workload fetch --json` on `socket` as `uid`: the identity served, or the error.
fn fetch_as(meshca: &Path, socket: &Path, uid: u32, timeout: &str) -> Result<Value, String> {
    let output = Command::new(meshca)
        .args([
            "workload",
            "fetch",
            "--json",
            "--timeout",
            timeout,
            "--socket",
        ])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_uid_on_the_socket_gets_only_its_own_identity() {
    let cluster = NodeCluster::start(&[
        ("web", "web-1", "web", NODE),
        ("api", "api-1", "api", NODE),
        ("far", "far-1", "far", "worker-2"),
    ]);
    let agent = cluster.start_agent(
        r#"attestation = "unix"
unix_rules = [
  { uid = 1001, namespace = "web", service_account = "web" },
  { uid = 1002, spiffe_id = "spiffe://cluster.local/ns/api/sa/api" },
  { uid = 1004, namespace = "far", service_account = "far" },
]"#,
        "",
    );
    let (meshca, socket) = (&cluster.meshca, cluster.workload_socket());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777, "with attestation every process may connect");

    // Two users, two identities, from one socket. The RA is listing pods meanwhile, so the
    // first answers may take a retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let web = loop {
        match fetch_as(meshca, &socket, 1001, "20s") {
            Ok(v) => break v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "uid 1001: {e}\n{}",
                agent.output()
            ),
        }
    };
    assert_eq!(web["spiffe_id"], "spiffe://cluster.local/ns/web/sa/web");
    let api_svid = fetch_as(meshca, &socket, 1002, "20s").unwrap();
    assert_eq!(
        api_svid["spiffe_id"],
        "spiffe://cluster.local/ns/api/sa/api"
    );

    // A uid no rule names gets nothing, and is told why.
    let refused = fetch_as(meshca, &socket, 1003, "5s").unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
    assert!(
        refused.contains("no agent.unix_rules entry matches uid 1003"),
        "{refused}"
    );
    // root has no rule either: attestation is not a privilege of the agent's own user.
    let root = fetch_as(meshca, &socket, 0, "5s").unwrap_err();
    assert!(root.contains("uid 0"), "{root}");

    // far runs on worker-2: the RA refuses the agent's impersonation. The client is told so,
    // with the RA's answer, and /metrics names the refused identity.
    let far = fetch_as(meshca, &socket, 1004, "10s").unwrap_err();
    assert!(far.contains("PermissionDenied"), "{far}");
    assert!(far.contains("the CA refuses identity far/far"), "{far}");
    // The RA answers as istiod does (the reason is in its log and audit trail).
    assert!(
        far.contains("request impersonation authentication failure"),
        "the RA's answer: {far}"
    );
    assert_eq!(
        agent.metric("meshca_agent_identity_refused{identity=\"far/far\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("meshca_agent_identity_refused{identity=\"web/web\"}"),
        0.0
    );
    assert_eq!(
        agent.metric("meshca_agent_identity_certified{identity=\"web/web\"}"),
        1.0
    );
    assert!(agent.metric("meshca_agent_unattested_count{reason=\"no_rule\"}") >= 2.0);
    assert!(agent.metric("meshca_agent_unattested_count{reason=\"refused_by_ca\"}") >= 1.0);
}
