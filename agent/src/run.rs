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

use crate::client::{CaClient, CaClientConfig, WorkloadIdentity};
use crate::config::AgentConfig;
use crate::credential::Credential;
use crate::metrics::AgentMetrics;
use crate::refresh::keep_fresh;
use crate::sds::SdsService;
use crate::{bundle, output, sds, workload_api};

/// The agent's settings after defaults are applied.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub trust_domain: String,
    pub spiffe_id: String,
    pub client: CaClientConfig,
    pub identity: WorkloadIdentity,
    pub sds_socket: PathBuf,
    pub workload_api_socket: PathBuf,
    pub output_dir: Option<PathBuf>,
    pub metrics_listen: SocketAddr,
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
            output_dir: config.output_dir.clone(),
            metrics_listen: config.metrics_listen,
        })
    }
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
    ));
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
    println!("meshca agent for {}", settings.spiffe_id);
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

    let api = workload_api::serve(
        workload_api::WorkloadApi::new(rx.clone(), metrics.clone()),
        &settings.workload_api_socket,
        async move {
            let _ = api_stop.recv().await;
        },
    );
    let sds_service = SdsService::new(rx.clone(), metrics.clone());
    let sds = sds::serve(sds_service.clone(), &settings.sds_socket, async move {
        let _ = sds_stop.recv().await;
    });
    let http = axum::serve(listener, http_app(rx, sds_service, metrics)).with_graceful_shutdown(
        async move {
            let _ = http_stop.recv().await;
        },
    );
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
}

fn http_app(current: Current, sds: SdsService, metrics: Arc<AgentMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState {
            current,
            sds,
            metrics,
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
    state.metrics.render(&state.sds.expiries())
}
