//! The agent's view of the RA: Istio's CreateCertificate over TLS, authenticated by a
//! service-account token (re-read on every call: projected tokens rotate) or an mTLS
//! credential. It calls the RA through any gRPC service (a TLS channel, or in tests an RA in
//! process), so the rotation loop is tested without a socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_proto::istio::v1::auth::IstioCertificateRequest;
use tonic::body::Body;
use tonic::codegen::{http, Service, StdError};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::credential::{Credential, KeyAndCsr, KeyType};
use crate::timing::{self, RetryClass};

/// How to reach and authenticate to the RA.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `host:port`.
    pub ca_addr: String,
    /// PEM roots that verify the RA's serving certificate.
    pub ca_root_pem: String,
    pub token_file: Option<PathBuf>,
    /// An mTLS credential (e.g. Athenz), PEM cert chain and key.
    pub client_identity: Option<(String, String)>,
    pub cluster_id: String,
    pub timeout: Duration,
}

/// What the agent calls the RA over: a TLS [`Channel`], or in tests an RA in process. Its
/// errors are already the statuses tonic's client would make of them.
pub type RaService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Status>;

#[derive(Clone, Debug)]
pub struct CaClient {
    /// Replaced when the trust bundle gains roots, so the RA's serving certificate still
    /// verifies after it moves to a newly activated authority.
    service: Arc<std::sync::RwLock<RaService>>,
    /// What the TLS channel is rebuilt from; `None` for a service given as it is.
    config: Option<Arc<CaClientConfig>>,
    token_file: Option<PathBuf>,
    cluster_id: String,
}

/// One identity to keep a certificate for.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    pub spiffe_id: String,
    pub key_type: KeyType,
    pub ttl: Duration,
    pub grace_ratio: f64,
    pub grace_jitter: f64,
    pub asked_as: AskedAs,
}

/// Whose identity the agent asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AskedAs {
    /// Its own: the credential names the identity (`attestation = none`).
    #[default]
    Itself,
    /// An attested workload's on its node: `ImpersonatedIdentity`, which the RA grants only to
    /// a trusted node account with a pod of that identity on the same node (as for ztunnel).
    NodeAgent,
}

/// The request metadata key istiod and meshca read (istio-agent's `ImpersonatedIdentity`).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The `ImpersonatedIdentity` a request carries, read as an RA reads it: for in-process RAs in
/// tests and benchmarks.
#[cfg(any(test, feature = "testing"))]
pub fn impersonated_identity(
    request: &meshca_proto::istio::v1::auth::IstioCertificateRequest,
) -> Option<String> {
    match &request
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?
        .kind
    {
        Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("CA answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("reading the token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA response refused: {0}")]
    Invalid(#[from] crate::credential::ValidationError),
    #[error("{0}")]
    KeyGen(#[from] crate::credential::KeyGenError),
}

// === impl CaClient ===

impl CaClient {
    /// Connects lazily: the agent starts (and keeps serving what it has) while the RA is down.
    pub fn new(config: &CaClientConfig) -> Result<Self, tonic::transport::Error> {
        let channel = Self::connect(config, &[])?;
        let client = Self::with_service(channel, config.token_file.clone(), &config.cluster_id);
        Ok(Self {
            config: Some(Arc::new(config.clone())),
            ..client
        })
    }

    /// A client that calls `service` as it is (in tests, an RA in process), authenticated by
    /// the token in `token_file` when given and `cluster_id`.
    pub fn with_service<S>(service: S, token_file: Option<PathBuf>, cluster_id: &str) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + Sync,
        S: 'static,
        S::Error: Into<StdError>,
        S::Future: Send + 'static,
    {
        Self {
            service: Arc::new(std::sync::RwLock::new(boxed(service))),
            config: None,
            token_file,
            cluster_id: cluster_id.to_string(),
        }
    }

    fn connect(
        config: &CaClientConfig,
        extra_roots: &[String],
    ) -> Result<Channel, tonic::transport::Error> {
        let roots = std::iter::once(config.ca_root_pem.as_str())
            .chain(extra_roots.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\n");
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(roots));
        if let Some((cert, key)) = &config.client_identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(
            Endpoint::from_shared(format!("https://{}", config.ca_addr))?
                .tls_config(tls)?
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .connect_lazy(),
        )
    }

    /// Trusts `roots` (the mesh's trust bundle) besides `ca_root_cert` for new connections to
    /// the RA.
    pub fn trust_roots(&self, roots: &[String]) {
        let Some(config) = &self.config else { return };
        match Self::connect(config, roots) {
            Ok(channel) => {
                *self.service.write().unwrap_or_else(|e| e.into_inner()) = boxed(channel)
            }
            Err(error) => tracing::warn!(%error, "keeping the previous RA channel"),
        }
    }

    /// The service every RPC to the RA goes through (for the agent, one TLS channel).
    pub fn service(&self) -> RaService {
        self.service
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds the agent's credentials to a request: the current token (read now, since
    /// projected tokens rotate) and the cluster id.
    pub async fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), FetchError> {
        if let Some(path) = &self.token_file {
            let token =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| FetchError::Token {
                        path: path.clone(),
                        source,
                    })?;
            if let Ok(value) = format!("Bearer {}", token.trim()).parse() {
                request.metadata_mut().insert("authorization", value);
            }
        }
        if let Ok(value) = self.cluster_id.parse() {
            request.metadata_mut().insert("clusterid", value);
        }
        Ok(())
    }

    /// Asks for a certificate for `identity` with a fresh key and checks the answer.
    pub async fn fetch(&self, identity: &WorkloadIdentity) -> Result<Credential, FetchError> {
        let request_key = KeyAndCsr::generate(identity.key_type, &identity.spiffe_id)?;
        let metadata = match identity.asked_as {
            AskedAs::Itself => None,
            AskedAs::NodeAgent => Some(prost_types::Struct {
                fields: [(
                    IMPERSONATED_IDENTITY.to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(
                            identity.spiffe_id.clone(),
                        )),
                    },
                )]
                .into(),
            }),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: request_key.csr_pem.clone(),
            validity_duration: identity.ttl.as_secs() as i64,
            metadata,
        });
        self.authorize(&mut request).await?;
        let response = IstioCertificateServiceClient::new(self.service())
            .create_certificate(request)
            .await
            .map_err(|s| FetchError::Status {
                code: s.code(),
                message: s.message().to_string(),
            })?
            .into_inner();
        Ok(request_key.accept(&identity.spiffe_id, &response.cert_chain, SystemTime::now())?)
    }
}

/// `service` as an [`RaService`]: its errors become statuses as tonic's client makes them.
fn boxed<S>(service: S) -> RaService
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + Sync,
    S: 'static,
    S::Error: Into<StdError>,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service.map_err(|error| Status::from_error(error.into())))
}

impl FetchError {
    /// How soon to try again after this failure.
    pub(crate) fn retry_class(&self) -> RetryClass {
        match self {
            FetchError::Status { code, .. } => timing::retry_class(*code),
            // A bad answer or an unreadable token will not fix itself in 200 ms.
            _ => RetryClass::Slow,
        }
    }
}
