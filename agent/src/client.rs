//! The agent's view of the RA: Istio's CreateCertificate over TLS, authenticated by a
//! service-account token (re-read on every call: projected tokens rotate) or an mTLS
//! credential.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_proto::istio::v1::auth::IstioCertificateRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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

#[derive(Clone, Debug)]
pub struct CaClient {
    /// Replaced when the trust bundle gains roots, so the RA's serving certificate still
    /// verifies after it moves to a newly activated authority.
    channel: Arc<std::sync::RwLock<Channel>>,
    config: Arc<CaClientConfig>,
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
        Ok(Self {
            channel: Arc::new(std::sync::RwLock::new(Self::connect(config, &[])?)),
            config: Arc::new(config.clone()),
            token_file: config.token_file.clone(),
            cluster_id: config.cluster_id.clone(),
        })
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
        match Self::connect(&self.config, roots) {
            Ok(channel) => *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel,
            Err(error) => tracing::warn!(%error, "keeping the previous RA channel"),
        }
    }

    /// The TLS channel to the RA (shared by every RPC the agent makes).
    pub fn channel(&self) -> Channel {
        self.channel
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
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: request_key.csr_pem.clone(),
            validity_duration: identity.ttl.as_secs() as i64,
            metadata: None,
        });
        self.authorize(&mut request).await?;
        let response = IstioCertificateServiceClient::new(self.channel())
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
