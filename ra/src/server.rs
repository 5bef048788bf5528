//! Wiring of `meshca server`: the gRPC RA on its TLS port (CreateCertificate, trust bundle,
//! health, reflection), the admin/audit REST API on its HTTPS port, and the plain-HTTP
//! observability port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use meshca_ca::CertificateAuthority;
use meshca_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use meshca_proto::meshca::v1::trust_bundle_service_server::TrustBundleServiceServer;
use tokio::net::TcpListener;

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{
    AuthConfig, GrpcConfig, IstioConfig, MetricsConfig, RestConfig, RotationConfig, TrustConfig,
};
use crate::limits::CallerLimits;
use crate::metrics::{CaReadings, RaMetrics};
use crate::rest::{self, FailedAuthLimit, RestState, TlsListener};
use crate::root_configmap::{
    publisher_client, RootCertPublisher, RootConfigMapSettings, RootConfigMapSetupError,
};
use crate::service::CertificateService;
use crate::tls::{self, TlsSetupError};
use crate::trust::deliveries::AgentDeliveries;
use crate::trust::stream::{BundleWatchers, TrustBundleWatch};
use crate::trust::{AnchorError, TrustBundles};

/// gRPC messages above this are refused by the transport (Istio's limit too).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct RaSettings {
    pub grpc: GrpcConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub rest: RestConfig,
    pub trust: TrustConfig,
    pub rotation: RotationConfig,
    pub istio: IstioConfig,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Anchors(#[from] AnchorError),
    #[error(transparent)]
    RootConfigMaps(#[from] RootConfigMapSetupError),
    #[error("grpc.cert_file and grpc.key_file must be set together")]
    HalfCertFiles,
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    RestTokens(#[from] rest::callers::TokenConfigError),
    #[error("REST server: {0}")]
    Rest(std::io::Error),
}

/// A started RA: its bound addresses, and the future that runs it until shutdown.
pub struct RunningRa {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub rest_addr: SocketAddr,
    pub metrics: Arc<RaMetrics>,
    pub trust_bundles: TrustBundles,
    serve: std::pin::Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>,
}

impl std::fmt::Debug for RunningRa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRa")
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct HttpState {
    ca: CertificateAuthority,
    metrics: Arc<RaMetrics>,
    /// The RA's authenticator, for its pod caches; None in `meshca ca`.
    auth: Option<Arc<Authenticator>>,
}

// === impl RunningRa ===

impl RunningRa {
    /// Binds both ports and prepares the servers; `shutdown` resolving stops them gracefully.
    pub async fn start(
        settings: &RaSettings,
        ca: CertificateAuthority,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, ServeError> {
        let metrics = Arc::new(RaMetrics::default());
        let trust_bundles = TrustBundles::start(ca.clone(), &settings.trust)?;
        let auth = Arc::new(Authenticator::new(&settings.auth, ca.clone()).await?);
        let files = match (&settings.grpc.cert_file, &settings.grpc.key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err(ServeError::HalfCertFiles),
        };
        let spec = tls::ServingCertSpec {
            dns_names: settings.grpc.dns_names.clone(),
            ip_sans: settings.grpc.ip_sans.clone(),
            ttl: settings.grpc.serving_cert_ttl,
            principal: "meshca-server".into(),
            settle: settings.rotation.settle,
        };
        let certs = tls::serving_certificate(&ca, &spec, files).await?;

        let grpc_listener = bind(settings.grpc.listen).await?;
        let metrics_listener = bind(settings.metrics.listen).await?;
        let rest_listener = bind(settings.rest.listen).await?;
        let grpc_addr = grpc_listener.local_addr().map_err(ServeError::Http)?;
        let metrics_addr = metrics_listener.local_addr().map_err(ServeError::Http)?;
        let rest_addr = rest_listener.local_addr().map_err(ServeError::Rest)?;

        let watchers = Arc::new(BundleWatchers::default());
        let agents = AgentDeliveries::start(watchers.clone(), ca.store().clone());
        let mut rest_state =
            RestState::new(&settings.rest, ca.clone(), trust_bundles.clone(), agents)?;
        rest_state.rotation = settings.rotation.clone();
        rest_state.failed_auth = FailedAuthLimit::new(
            settings.rest.failed_auth_limit,
            settings.grpc.rate_limit.max_callers,
            metrics.clone(),
        );
        rest_state.root_configmaps = start_root_configmaps(settings, &ca, &trust_bundles)?;
        let bundles = TrustBundleServiceServer::new(TrustBundleWatch::new(
            trust_bundles.clone(),
            auth.clone(),
            metrics.clone(),
            watchers,
        ));
        let service = IstioCertificateServiceServer::new(
            CertificateService::new(
                ca.clone(),
                trust_bundles.clone(),
                auth.clone(),
                metrics.clone(),
                settings.grpc.max_in_flight_issuances,
            )
            .with_limits(Arc::new(CallerLimits::new(&settings.grpc.rate_limit))),
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<IstioCertificateServiceServer<CertificateService>>()
            .await;
        health_reporter
            .set_serving::<TrustBundleServiceServer<TrustBundleWatch>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meshca_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("descriptor sets are valid");

        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut grpc_stop = stop_tx.subscribe();
        let mut http_stop = stop_tx.subscribe();
        let mut rest_stop = stop_tx.subscribe();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(());
        });

        let rest_incoming = tls::incoming(rest_listener, tls::rest_server_config(certs.clone()));
        let rest = axum::serve(
            TlsListener::new(rest_incoming, rest_addr),
            rest::router(rest_state, crate::console::router())
                .into_make_service_with_connect_info::<rest::RestPeer>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rest_stop.recv().await;
        });
        let incoming = tls::incoming(grpc_listener, tls::server_config(certs));
        let grpc = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(bundles)
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.recv().await;
            });
        let http = axum::serve(
            metrics_listener,
            http_app(HttpState {
                ca,
                metrics: metrics.clone(),
                auth: Some(auth.clone()),
            }),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.recv().await;
        });
        let serve = Box::pin(async move {
            let (grpc, http, rest) = tokio::join!(grpc, http, rest);
            grpc?;
            rest.map_err(ServeError::Rest)?;
            http.map_err(ServeError::Http)
        });
        Ok(Self {
            grpc_addr,
            metrics_addr,
            rest_addr,
            metrics,
            trust_bundles,
            serve,
        })
    }

    /// Runs until the shutdown future resolves and connections drain.
    pub async fn run(self) -> Result<(), ServeError> {
        self.serve.await
    }
}

/// The advisory lock that elects the one replica writing the root ConfigMaps (neither istiod's
/// `istio-namespace-controller-election` nor istio-csr's `istio-csr` lease: those are
/// Kubernetes objects, this lives in meshca's own store).
pub const ROOT_CONFIGMAP_LOCK: i64 = 0x6d65_7368_6361_0001;

/// Keeps `istio-ca-root-cert` in every namespace when `istio.publish_root_configmap` is set:
/// every replica watches (so each reports the same propagation), the lock holder writes.
fn start_root_configmaps(
    settings: &RaSettings,
    ca: &CertificateAuthority,
    bundles: &TrustBundles,
) -> Result<Option<Arc<RootCertPublisher>>, ServeError> {
    if !settings.istio.publish_root_configmap {
        return Ok(None);
    }
    let client = publisher_client(&settings.istio, &settings.auth)?;
    let publisher = RootCertPublisher::start(
        client,
        RootConfigMapSettings::from_config(&settings.istio),
        bundles.watch_pem(),
        ca.store().leadership(ROOT_CONFIGMAP_LOCK),
    );
    tracing::info!(
        cluster = %settings.istio.cluster_id,
        "keeping the istio-ca-root-cert ConfigMaps"
    );
    Ok(Some(Arc::new(publisher)))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// `meshca ca`'s observability port: `/healthz`, `/readyz` (store answers, signing path
/// valid) and `/metrics` (authority expiry), the same endpoints as the RA's.
pub async fn start_ca_observability(
    listen: SocketAddr,
    ca: CertificateAuthority,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = Result<(), ServeError>> + Send,
    ),
    ServeError,
> {
    let listener = bind(listen).await?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    let app = http_app(HttpState {
        ca,
        metrics: Arc::new(RaMetrics::default()),
        auth: None,
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    Ok((addr, async move { serve.await.map_err(ServeError::Http) }))
}

/// `/metrics`, `/healthz`, `/readyz`.
fn http_app(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state)
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let authority = state.ca.current_authority();
    let unix = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ca_metrics = state.ca.metrics();
    let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut body = state.metrics.render(CaReadings {
        root_cert_expiry: unix(authority.root().not_after()),
        cert_chain_expiry: unix(authority.path_not_after()),
        cacerts_reload_failures: read(&ca_metrics.cacerts_reload_failures),
        issuance_commits: read(&ca_metrics.issuance_commits),
        issuances_committed: read(&ca_metrics.issuances_committed),
    });
    if let Some(auth) = &state.auth {
        crate::metrics::render_pod_caches(&mut body, &auth.pod_caches());
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

/// Ready once the CA could issue (see [`meshca_ca::CertificateAuthority::readiness`]).
async fn ready_handler(State(state): State<HttpState>) -> impl IntoResponse {
    match state.ca.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
