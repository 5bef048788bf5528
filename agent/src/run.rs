//! `meshca agent`: one workload identity kept fresh, served to Envoy over SDS and to any
//! workload over the SPIFFE Workload API and, when configured, written to `output_dir`; health,
//! readiness and metrics on a local HTTP port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use meshca_pki::TrustDomain;

use crate::attest::{
    validate_rules, AttestationMode, Attestor, AttestorSettings, K8sSettings, PodSource,
};
use crate::client::{AskedAs, CaClient, CaClientConfig, WorkloadIdentity};
use crate::config::AgentConfig;
use crate::config::PodSourceKind;
use crate::credential::Credential;
use crate::identities::{self, IdentityPool, PoolSettings};
use crate::metrics::AgentMetrics;
use crate::refresh::keep_fresh;
use crate::sds::SdsService;
use crate::workload_api::{ATTESTED_SOCKET_MODE, PRIVATE_SOCKET_MODE};
use crate::workloads::Workloads;
use crate::{bundle, output, sds, workload_api};
use meshca_kube::Endpoint;

/// The agent's settings after defaults are applied.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub trust_domain: String,
    pub spiffe_id: String,
    pub client: CaClientConfig,
    pub identity: WorkloadIdentity,
    pub sds_socket: PathBuf,
    pub workload_api_socket: PathBuf,
    /// Permissions of both sockets.
    pub socket_mode: u32,
    pub output_dir: Option<PathBuf>,
    pub metrics_listen: SocketAddr,
    pub serving: Serving,
}

/// Whom the sockets serve.
#[derive(Clone, Debug)]
pub enum Serving {
    /// Every client gets the agent's own identity (`attestation = "none"`).
    Itself,
    /// Each attested client its own, asked for as a node agent.
    Attested {
        attestor: AttestorSettings,
        trust_domain: TrustDomain,
        max_identities: usize,
        grace: std::time::Duration,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("agent.{0} is required")]
    Missing(&'static str),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent.ca_addr: {0}")]
    Client(#[from] tonic::transport::Error),
    #[error(transparent)]
    UnixRules(#[from] crate::attest::UnixRulesError),
    #[error("agent.k8s: {0}")]
    KubernetesAttestation(#[from] meshca_kube::KubeClientError),
    #[error("agent.socket_mode {0:?} is not octal permissions such as \"0660\"")]
    SocketMode(String),
    #[error("agent.trust_domain {0:?}: {1}")]
    TrustDomain(String, String),
    #[error("{what}: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

type Current = watch::Receiver<Option<Arc<Credential>>>;

// === impl AgentSettings ===

impl AgentSettings {
    /// Applies defaults: under `--dev`, everything points into `data_dir` as `meshca server
    /// --dev` wrote it (`root-cert.pem`, `dev/token`, sockets in `agent/`, `default/default`).
    pub fn resolve(
        trust_domain: &str,
        data_dir: &Path,
        config: &AgentConfig,
        dev: bool,
    ) -> Result<Self, AgentError> {
        let dev_path = |rel: &str| dev.then(|| data_dir.join(rel));
        let dev_name = |name: &str| dev.then(|| name.to_string());
        let root_path = config
            .ca_root_cert
            .clone()
            .or_else(|| dev_path("root-cert.pem"))
            .ok_or(AgentError::Missing("ca_root_cert"))?;
        let ca_root_pem =
            std::fs::read_to_string(&root_path).map_err(|source| AgentError::Read {
                path: root_path.clone(),
                source,
            })?;
        let client_identity = match (&config.athenz_cert, &config.athenz_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => return Err(AgentError::Missing("athenz_cert and athenz_key together")),
        };
        let token_file = config.token_file.clone().or_else(|| dev_path("dev/token"));
        if token_file.is_none() && client_identity.is_none() {
            return Err(AgentError::Missing(
                "token_file (or athenz_cert + athenz_key)",
            ));
        }
        let namespace = config
            .namespace
            .clone()
            .or_else(|| dev_name("default"))
            .ok_or(AgentError::Missing("namespace"))?;
        let service_account = config
            .service_account
            .clone()
            .or_else(|| dev_name("default"))
            .ok_or(AgentError::Missing("service_account"))?;
        let spiffe_id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        let td = TrustDomain::new(trust_domain)
            .map_err(|e| AgentError::TrustDomain(trust_domain.to_string(), e.to_string()))?;
        let attestor = match config.attestation {
            AttestationMode::None => None,
            AttestationMode::Unix => Some(AttestorSettings::Unix {
                rules: validate_rules(&config.unix_rules, &td)?,
                proc_root: config.proc_root.clone(),
            }),
            AttestationMode::K8s => Some(AttestorSettings::K8s(Box::new(k8s_settings(config)?))),
        };
        let serving = match attestor {
            None => Serving::Itself,
            Some(attestor) => Serving::Attested {
                attestor,
                trust_domain: td,
                max_identities: config.max_identities.max(1),
                grace: config.identity_grace,
            },
        };
        let socket_mode = match &config.socket_mode {
            Some(text) => parse_socket_mode(text)?,
            None if matches!(serving, Serving::Itself) => PRIVATE_SOCKET_MODE,
            None => ATTESTED_SOCKET_MODE,
        };
        let ca_addr = if dev && config.ca_addr == AgentConfig::default().ca_addr {
            "127.0.0.1:15012".to_string()
        } else {
            config.ca_addr.clone()
        };
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            spiffe_id: spiffe_id.clone(),
            client: CaClientConfig {
                ca_addr,
                ca_root_pem,
                token_file,
                client_identity,
                cluster_id: config.cluster_id.clone(),
                timeout: config.request_timeout,
            },
            identity: WorkloadIdentity {
                spiffe_id,
                key_type: config.key_type,
                ttl: config.cert_ttl,
                grace_ratio: config.grace_ratio,
                grace_jitter: config.grace_jitter,
                asked_as: AskedAs::Itself,
            },
            sds_socket: config
                .sds_socket
                .clone()
                .or_else(|| dev_path("agent/sds.sock"))
                .unwrap_or_else(|| PathBuf::from("/var/run/meshca/sds.sock")),
            workload_api_socket: config
                .workload_api_socket
                .clone()
                .or_else(|| dev_path("agent/spiffe.sock"))
                .unwrap_or_else(|| PathBuf::from("/var/run/meshca/spiffe.sock")),
            socket_mode,
            output_dir: config.output_dir.clone(),
            metrics_listen: config.metrics_listen,
            serving,
        })
    }
}

/// `[agent.k8s]` resolved: the node is required, and so is the kubelet's URL when it is the
/// source.
fn k8s_settings(config: &AgentConfig) -> Result<K8sSettings, AgentError> {
    let k8s = &config.k8s;
    let node_name = k8s
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(AgentError::Missing("k8s.node_name (attestation = \"k8s\")"))?;
    let source = match k8s.pod_source {
        PodSourceKind::ApiServer => PodSource::ApiServer(Endpoint {
            url: k8s.api_server_url.clone(),
            ca_file: k8s.api_server_ca_file.clone(),
            token_file: k8s.api_server_token_file.clone(),
            request_timeout: k8s.request_timeout,
        }),
        PodSourceKind::Kubelet => PodSource::Kubelet(Endpoint {
            url: Some(k8s.kubelet_url.clone().ok_or(AgentError::Missing(
                "k8s.kubelet_url (pod_source = \"kubelet\")",
            ))?),
            ca_file: k8s.kubelet_ca_file.clone(),
            token_file: k8s.kubelet_token_file.clone(),
            request_timeout: k8s.request_timeout,
        }),
    };
    Ok(K8sSettings {
        node_name,
        source,
        pod_wait: k8s.pod_wait,
        proc_root: config.proc_root.clone(),
    })
}

/// `"0660"`, `"0o660"` or `"660"`: octal permission bits, nothing above `0o777`.
fn parse_socket_mode(text: &str) -> Result<u32, AgentError> {
    let digits = text.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| AgentError::SocketMode(text.to_string()))
}

fn read(path: &Path) -> Result<String, AgentError> {
    std::fs::read_to_string(path).map_err(|source| AgentError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    settings: AgentSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let client = CaClient::new(&settings.client)?;
    let (fresh_tx, fresh_rx) = watch::channel(None);
    let metrics = Arc::new(AgentMetrics::default());
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(bundle::StreamBundle::default()));
    tokio::spawn(keep_fresh(
        client.clone(),
        settings.identity.clone(),
        fresh_tx,
        metrics.clone(),
        bundle_rx.clone(),
        // The agent's own identity: a refusal is in its log and `/readyz`, not told to clients.
        watch::Sender::new(None),
    ));
    let (pool_client, bundle_for_pool) = (client.clone(), bundle_rx.clone());
    tokio::spawn(bundle::follow_trust_bundle(client, bundle_tx));
    // What is served: the credential with its roots merged with the RA's bundle stream.
    let (tx, rx) = watch::channel(None);
    tokio::spawn(bundle::combine(fresh_rx, bundle_rx, tx));
    if let Some(dir) = settings.output_dir.clone() {
        tokio::spawn(write_outputs(dir, rx.clone()));
    }

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut api_stop = stop_tx.subscribe();
    let mut sds_stop = stop_tx.subscribe();
    let mut http_stop = stop_tx.subscribe();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });

    let listener = tokio::net::TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(|source| AgentError::Serve {
            what: "agent.metrics_listen",
            source,
        })?;
    match &settings.serving {
        Serving::Itself => println!("meshca agent for {}", settings.spiffe_id),
        Serving::Attested { attestor, .. } => println!(
            "meshca agent ({}), serving attested workloads ({})",
            settings.spiffe_id,
            match attestor {
                AttestorSettings::Unix { .. } => "unix rules".to_string(),
                AttestorSettings::K8s(k8s) => format!("pods of node {}", k8s.node_name),
            }
        ),
    }
    println!("  CA:                 {}", settings.client.ca_addr);
    println!(
        "  Envoy SDS:           unix:{}",
        settings.sds_socket.display()
    );
    println!(
        "  SPIFFE Workload API: unix:{}",
        settings.workload_api_socket.display()
    );
    if let Some(dir) = &settings.output_dir {
        println!("  certificate files:  {}", dir.display());
    }
    println!(
        "  health:             http://{}/readyz",
        listener.local_addr().map_err(|source| AgentError::Serve {
            what: "agent.metrics_listen",
            source
        })?
    );

    let workloads = match settings.serving.clone() {
        Serving::Itself => Workloads::Itself(rx.clone()),
        Serving::Attested {
            attestor,
            trust_domain,
            max_identities,
            grace,
        } => Workloads::Attested {
            attestor: Arc::new(Attestor::start(attestor)?),
            pool: IdentityPool::new(
                PoolSettings {
                    trust_domain,
                    template: settings.identity.clone(),
                    grace,
                    max_identities,
                },
                pool_client,
                bundle_for_pool,
                metrics.clone(),
            ),
            metrics: metrics.clone(),
        },
    };
    let api = workload_api::serve(
        workload_api::WorkloadApi::serving(workloads.clone(), metrics.clone()),
        &settings.workload_api_socket,
        settings.socket_mode,
        async move {
            let _ = api_stop.recv().await;
        },
    );
    let pool = match &workloads {
        Workloads::Itself(_) => None,
        Workloads::Attested { pool, .. } => Some(pool.clone()),
    };
    let sds_service = SdsService::serving(workloads, metrics.clone());
    let sds = sds::serve(
        sds_service.clone(),
        &settings.sds_socket,
        settings.socket_mode,
        async move {
            let _ = sds_stop.recv().await;
        },
    );
    let http = axum::serve(listener, http_app(rx, sds_service, metrics, pool))
        .with_graceful_shutdown(async move {
            let _ = http_stop.recv().await;
        });
    let (api, sds, http) = tokio::join!(api, sds, http);
    sds.map_err(|source| AgentError::Serve {
        what: "agent.sds_socket",
        source,
    })?;
    api.map_err(|source| AgentError::Serve {
        what: "agent.workload_api_socket",
        source,
    })?;
    http.map_err(|source| AgentError::Serve {
        what: "agent.metrics_listen",
        source,
    })
}

/// Mirrors every new credential into `dir`.
async fn write_outputs(dir: PathBuf, mut rx: Current) {
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(c) = current {
            let chain: String = c.chain_pem.concat();
            let roots: String = c.roots_pem.concat();
            if let Err(error) = output::write_credentials(&dir, &c.key_pem, &chain, &roots) {
                tracing::error!(dir = %dir.display(), %error, "writing certificate files failed");
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Clone)]
struct HttpState {
    current: Current,
    sds: SdsService,
    metrics: Arc<AgentMetrics>,
    /// With attestation, the identities held for clients.
    pool: Option<IdentityPool>,
}

fn http_app(
    current: Current,
    sds: SdsService,
    metrics: Arc<AgentMetrics>,
    pool: Option<IdentityPool>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState {
            current,
            sds,
            metrics,
            pool,
        })
}

/// Ready once the first certificate is held.
async fn ready(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.current.borrow().as_ref() {
        Some(_) => (StatusCode::OK, "ready\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n"),
    }
}

async fn render_metrics(State(state): State<HttpState>) -> String {
    let mut out = state.metrics.render(&state.sds.expiries());
    if let Some(pool) = &state.pool {
        out.push_str(&identities::render_metrics(&pool.held()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{UnixMatcher, UnixRuleConfig, UnixTarget};

    fn resolve(config: &AgentConfig) -> Result<AgentSettings, AgentError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root-cert.pem"), "roots").unwrap();
        AgentSettings::resolve("cluster.local", dir.path(), config, true)
    }

    #[test]
    fn socket_modes_follow_the_attestation_unless_set() {
        let none = resolve(&AgentConfig::default()).unwrap();
        assert_eq!(none.socket_mode, 0o660);
        assert!(matches!(none.serving, Serving::Itself));
        let unix = AgentConfig {
            attestation: AttestationMode::Unix,
            unix_rules: vec![UnixRuleConfig {
                matcher: UnixMatcher {
                    uid: Some(1000),
                    ..UnixMatcher::default()
                },
                target: UnixTarget::Workload {
                    namespace: "web".into(),
                    service_account: "web".into(),
                },
            }],
            ..AgentConfig::default()
        };
        assert_eq!(resolve(&unix).unwrap().socket_mode, 0o777);
        for (text, mode) in [("0600", 0o600), ("0o640", 0o640), ("755", 0o755)] {
            let set = AgentConfig {
                socket_mode: Some(text.into()),
                ..unix.clone()
            };
            assert_eq!(resolve(&set).unwrap().socket_mode, mode, "{text}");
        }
        for bad in ["rw-rw----", "0999", "01777", ""] {
            let set = AgentConfig {
                socket_mode: Some(bad.into()),
                ..AgentConfig::default()
            };
            assert!(
                matches!(resolve(&set), Err(AgentError::SocketMode(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn attestation_settings_are_checked_at_start() {
        let empty_rule = AgentConfig {
            attestation: AttestationMode::Unix,
            unix_rules: vec![UnixRuleConfig {
                matcher: UnixMatcher::default(),
                target: UnixTarget::Workload {
                    namespace: "web".into(),
                    service_account: "web".into(),
                },
            }],
            ..AgentConfig::default()
        };
        let error = resolve(&empty_rule).unwrap_err().to_string();
        assert!(error.contains("agent.unix_rules[0]"), "{error}");
        let k8s = AgentConfig {
            attestation: AttestationMode::K8s,
            ..AgentConfig::default()
        };
        let error = resolve(&k8s).unwrap_err().to_string();
        assert!(error.contains("agent.k8s.node_name"), "{error}");
        let mut kubelet = AgentConfig {
            attestation: AttestationMode::K8s,
            ..AgentConfig::default()
        };
        kubelet.k8s.node_name = Some("worker-1".into());
        kubelet.k8s.pod_source = PodSourceKind::Kubelet;
        let error = resolve(&kubelet).unwrap_err().to_string();
        assert!(error.contains("agent.k8s.kubelet_url"), "{error}");
        kubelet.k8s.kubelet_url = Some("http://10.0.0.1:10255".into());
        let settings = resolve(&kubelet).unwrap();
        assert_eq!(settings.socket_mode, 0o777);
        let Serving::Attested {
            attestor: AttestorSettings::K8s(k8s),
            ..
        } = settings.serving
        else {
            panic!("not the k8s attestor");
        };
        assert_eq!(k8s.node_name, "worker-1");
        assert!(
            matches!(k8s.source, PodSource::Kubelet(e) if e.url.as_deref() == Some("http://10.0.0.1:10255"))
        );
    }
}
