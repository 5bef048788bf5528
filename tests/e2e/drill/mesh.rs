//! The drill's cluster: the fake Kubernetes API server with the drill's namespaces, `meshca
//! server --dev` publishing `istio-ca-root-cert` into them with short lifetimes and settle, and
//! `meshca agent --dev` for workload A; plus the views of them the assertions read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{dev_agent, dev_server, meshca_bin, MeshcaProcess, Rest};
use crate::peers::{self, ApiServerState, REVIEWER_TOKEN};

/// Namespaces of the fake cluster; meshca writes the root ConfigMap into each.
pub const NAMESPACES: [&str; 3] = ["default", "istio-system", "apps"];
/// Workload certificates live this long (A's agent and B ask for it), renewed at half.
pub const WORKLOAD_TTL: Duration = Duration::from_secs(12);

/// The running pieces, killed on drop.
pub struct Mesh {
    pub api: Arc<ApiServerState>,
    pub server: MeshcaProcess,
    pub agent: MeshcaProcess,
    /// The bundle the drill started with.
    pub initial_bundle: String,
    // Last, so the processes are stopped before their files go.
    pub dir: tempfile::TempDir,
}

// === impl Mesh ===

impl Mesh {
    /// The API server, then the server (state in `dir`, plus `extra_env`), then the agent
    /// for A.
    pub async fn start(dir: tempfile::TempDir, extra_env: &[(&'static str, String)]) -> Self {
        let api = Arc::new(ApiServerState::default());
        let (api_addr, api_ca) =
            peers::start_api_server(&tokio::runtime::Handle::current(), api.clone());
        for namespace in NAMESPACES {
            api.cluster().add_namespace(namespace, &[]);
        }
        let kube = dir.path().join("kube");
        std::fs::create_dir_all(&kube).unwrap();
        std::fs::write(kube.join("ca.crt"), api_ca.pem()).unwrap();
        std::fs::write(kube.join("token"), REVIEWER_TOKEN).unwrap();
        let mut env = vec![
            ("MESHCA_ROTATION_SETTLE", "2s".to_string()),
            ("MESHCA_GRPC_SERVING_CERT_TTL", "20s".to_string()),
            ("MESHCA_ISTIO_PUBLISH_ROOT_CONFIGMAP", "true".to_string()),
            (
                "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_URL",
                format!("https://{api_addr}"),
            ),
            (
                "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_CA_FILE",
                kube.join("ca.crt").display().to_string(),
            ),
            (
                "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_TOKEN_FILE",
                kube.join("token").display().to_string(),
            ),
        ];
        env.extend(extra_env.iter().cloned());
        let path = dir.path().to_path_buf();
        let (server, agent) = tokio::task::spawn_blocking(move || {
            let server = dev_server(&path, &env);
            let ttl = format!("{}s", WORKLOAD_TTL.as_secs());
            let agent = dev_agent(&path, server.grpc, &[("MESHCA_AGENT_CERT_TTL", ttl)]);
            (server, agent)
        })
        .await
        .unwrap();
        let initial_bundle =
            std::fs::read_to_string(dir.path().join("meshca-dev/root-cert.pem")).unwrap();
        Self {
            api,
            server,
            agent,
            initial_bundle,
            dir,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("meshca-dev")
    }

    pub fn sds_socket(&self) -> PathBuf {
        self.data().join("agent/sds.sock")
    }

    pub fn admin_token(&self) -> String {
        read_trimmed(&self.data().join("dev/admin-token"))
    }

    /// A service-account token for `namespace/service_account` from the dev issuer, as the
    /// kubelet projects one into a pod.
    pub fn mint_token(&self, namespace: &str, service_account: &str) -> String {
        crate::harness::dev_issuer_token(&self.data(), namespace, service_account, None)
    }

    /// A REST client trusting every root the mesh has had, so it follows the server's serving
    /// certificate across a rotation.
    pub fn rest(&self) -> Rest {
        let current =
            std::fs::read_to_string(self.data().join("root-cert.pem")).unwrap_or_default();
        let roots = [self.initial_bundle.as_str(), current.as_str()]
            .into_iter()
            .flat_map(|pem| {
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default()
            });
        let client = reqwest::Client::builder()
            .tls_certs_only(roots)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Rest {
            base: format!("https://{}", self.server.rest),
            client,
        }
    }

    /// `GET /v1/trust-bundle`.
    pub async fn trust_bundle(&self) -> String {
        let (status, body) = self
            .rest()
            .call(reqwest::Method::GET, "/v1/trust-bundle", None, None)
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_str().unwrap().to_string()
    }

    /// `GET /v1/authorities`, as the admin.
    pub async fn authorities(&self) -> Value {
        let (status, list) = self
            .rest()
            .get("/v1/authorities", &self.admin_token())
            .await;
        assert_eq!(status, 200, "{list}");
        list
    }

    /// `root-cert.pem` of `istio-ca-root-cert` in each namespace (None where it is missing).
    pub fn configmaps(&self) -> Vec<(&'static str, Option<String>)> {
        NAMESPACES
            .iter()
            .map(|ns| {
                let cm = self.api.cluster().configmap(ns, "istio-ca-root-cert");
                let pem =
                    cm.and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_string));
                (*ns, pem)
            })
            .collect()
    }

    /// `meshca admin <args>` beside the dev server (its token and root found in ./meshca-dev),
    /// printing its stdout lines as they come; returns whether it succeeded, stdout and stderr.
    pub async fn admin(&self, args: &[&str]) -> (bool, Vec<String>, String) {
        use tokio::io::AsyncBufReadExt;

        let mut child = tokio::process::Command::new(meshca_bin())
            .arg("admin")
            .args(args)
            .current_dir(self.dir.path())
            .env("MESHCA_ADMIN_URL", format!("https://{}", self.server.rest))
            .env_remove("MESHCA_ADMIN_TOKEN")
            .env_remove("MESHCA_ADMIN_CA")
            .env_remove("MESHCA_ADMIN_IDENTITY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
            text
        });
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut out = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("  {} meshca admin: {line}", super::traffic::clock());
            out.push(line);
        }
        let status = child.wait().await.unwrap();
        (status.success(), out, errors.await.unwrap())
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The certificates of a PEM text, DER, in order.
pub fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect()
}
