//! Caller authentication for CreateCertificate. Methods are tried in a fixed order (renewal by
//! client cert, Athenz X.509, Kubernetes JWT); the first that succeeds names the identity, and
//! node authorization ([`node`]) decides whether it may ask for another's. Failure reasons go
//! to logs and metrics only; callers see one stable message.

mod caller;
pub mod jwks;
mod jws;
pub mod node;
pub mod tokenreview;
pub mod x509;

pub use caller::{
    parse_service_account, AuthError, AuthMethod, Caller, KubernetesCaller, PodBinding,
    TokenIdentity,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshca_ca::{CertificateAuthority, TrustDomain};
use rustls_pki_types::CertificateDer;

use crate::config::{AuthConfig, JwtMode, DEFAULT_CLUSTER_ID};

/// What a request carries that can prove who sent it.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    /// The TLS client certificate chain, leaf first (empty when none was sent).
    pub peer_certs: &'a [CertificateDer<'static>],
    /// The `authorization: Bearer …` token.
    pub bearer_token: Option<&'a str>,
    /// The `clusterid` header.
    pub cluster_id: Option<&'a str>,
    pub peer_addr: Option<SocketAddr>,
}

/// The configured methods, and who may ask for another identity.
#[derive(Debug)]
pub struct Authenticator {
    trust_domain: TrustDomain,
    renewal: x509::RenewalAuthenticator,
    athenz: Option<x509::AthenzAuthenticator>,
    clusters: BTreeMap<String, ClusterAuthenticator>,
    /// Set when `auth.trusted_node_accounts` names someone.
    nodes: Option<node::NodeAuthorizer>,
}

#[derive(Debug)]
enum ClusterAuthenticator {
    Jwks(Arc<jwks::JwksAuthenticator>),
    TokenReview(tokenreview::TokenReviewer),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    #[error("auth.athenz.ca_bundle: {0}")]
    AthenzBundle(String),
    #[error("auth.clusters.{cluster}: {source}")]
    Jwks {
        cluster: String,
        source: jwks::JwksError,
    },
    #[error("auth.clusters.{cluster}: {reason}")]
    Cluster { cluster: String, reason: String },
    #[error(transparent)]
    NodeAuthorization(#[from] node::NodeAuthorizerSetupError),
}

// === impl Authenticator ===

impl Authenticator {
    pub async fn new(
        config: &AuthConfig,
        ca: CertificateAuthority,
    ) -> Result<Self, AuthSetupError> {
        let trust_domain = ca.trust_domain().clone();
        let athenz = match &config.athenz.ca_bundle {
            Some(path) => Some(
                x509::AthenzAuthenticator::load(path, &config.athenz.namespace_map, &trust_domain)
                    .map_err(AuthSetupError::AthenzBundle)?,
            ),
            None => None,
        };
        let mut clusters = BTreeMap::new();
        for (id, cluster) in &config.clusters {
            let auth = match cluster.mode {
                JwtMode::Jwks => ClusterAuthenticator::Jwks(
                    jwks::JwksAuthenticator::start(cluster)
                        .await
                        .map_err(|source| AuthSetupError::Jwks {
                            cluster: id.clone(),
                            source,
                        })?,
                ),
                JwtMode::Tokenreview => ClusterAuthenticator::TokenReview(
                    tokenreview::TokenReviewer::new(cluster).map_err(|e| {
                        AuthSetupError::Cluster {
                            cluster: id.clone(),
                            reason: e.to_string(),
                        }
                    })?,
                ),
            };
            clusters.insert(id.clone(), auth);
        }
        let nodes = node::NodeAuthorizer::start(config, trust_domain.clone())?;
        Ok(Self {
            trust_domain,
            renewal: x509::RenewalAuthenticator::new(ca),
            athenz,
            clusters,
            nodes,
        })
    }

    /// Whether `caller` may have `requested` (the request's `ImpersonatedIdentity`) instead of
    /// its own identity; see [`node::decide`] and [`node::NodeAuthorizer::authorize`].
    pub async fn impersonate(
        &self,
        caller: &Caller,
        requested: &str,
    ) -> Result<node::Impersonation, node::ImpersonationError> {
        match &self.nodes {
            Some(nodes) => nodes.authorize(caller, requested).await,
            None => Err(node::ImpersonationError::NotConfigured),
        }
    }

    /// The pod caches of node authorization (none when it is off).
    pub fn pod_caches(&self) -> Vec<node::PodCacheStatus> {
        self.nodes
            .as_ref()
            .map(node::NodeAuthorizer::status)
            .unwrap_or_default()
    }

    /// Tries each method in order; returns the first success, or the most specific failure.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Result<Caller, AuthError> {
        let mut failure = AuthError::NoCredential;
        if !creds.peer_certs.is_empty() {
            match self.renewal.authenticate(creds.peer_certs) {
                Ok(caller) => return Ok(caller),
                Err(e) => failure = e,
            }
            if let Some(athenz) = &self.athenz {
                match athenz.authenticate(creds.peer_certs) {
                    Ok(caller) => return Ok(caller),
                    Err(e) => failure = e,
                }
            }
        }
        if let Some(token) = creds.bearer_token {
            return self.authenticate_token(token, creds.cluster_id).await;
        }
        Err(failure)
    }

    async fn authenticate_token(
        &self,
        token: &str,
        cluster_id: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let cluster_id = match cluster_id {
            None | Some("") => DEFAULT_CLUSTER_ID,
            Some(id) => id,
        };
        let cluster = self
            .clusters
            .get(cluster_id)
            .ok_or_else(|| AuthError::UnknownCluster(cluster_id.to_string()))?;
        let (method, token) = match cluster {
            ClusterAuthenticator::Jwks(a) => (AuthMethod::Jwt, a.validate(token).await?),
            ClusterAuthenticator::TokenReview(a) => {
                (AuthMethod::TokenReview, a.review(token).await?)
            }
        };
        let (namespace, service_account) = parse_service_account(&token.username)?;
        let spiffe_id = self
            .trust_domain
            .workload_id(namespace, service_account)
            .map_err(|_| AuthError::BadServiceAccount(token.username.clone()))?;
        let kubernetes = KubernetesCaller {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod: token.pod,
            node: token.node,
        };
        Ok(Caller {
            spiffe_id,
            method,
            principal: token.username,
            cluster_id: Some(cluster_id.to_string()),
            kubernetes: Some(kubernetes),
            renewal_of: None,
        })
    }
}
