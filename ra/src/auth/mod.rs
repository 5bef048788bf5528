//! Caller authentication for CreateCertificate. Methods are tried in a fixed order (renewal by
//! client cert, Athenz X.509, Kubernetes JWT); the first that succeeds names the identity.
//! Failure reasons go to logs and metrics only; callers see one stable message.

pub mod jwks;
pub mod tokenreview;
pub mod x509;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use meshca_ca::{CertificateAuthority, SpiffeId, TrustDomain};
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

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A workload certificate meshca issued.
    Renewal,
    /// An Athenz service certificate.
    Athenz,
    /// A Kubernetes token checked against its issuer's keys.
    Jwt,
    /// A Kubernetes token the API server reviewed.
    TokenReview,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub spiffe_id: SpiffeId,
    pub method: AuthMethod,
    /// What the credential named: the client cert's SPIFFE id, the Athenz principal, the
    /// Kubernetes username.
    pub principal: String,
    pub cluster_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no client certificate and no bearer token")]
    NoCredential,
    #[error("client certificate: {0}")]
    ClientCert(String),
    #[error("unknown cluster id {0:?}")]
    UnknownCluster(String),
    #[error("token: {0}")]
    Token(String),
    #[error("TokenReview: {0}")]
    TokenReview(String),
    #[error("service account {0:?} is not system:serviceaccount:<namespace>:<name>")]
    BadServiceAccount(String),
}

/// The configured methods.
#[derive(Debug)]
pub struct Authenticator {
    trust_domain: TrustDomain,
    renewal: x509::RenewalAuthenticator,
    athenz: Option<x509::AthenzAuthenticator>,
    clusters: BTreeMap<String, ClusterAuthenticator>,
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
}

// === impl AuthMethod ===

impl AuthMethod {
    /// The name recorded in the issuance store and the audit log, and reported by the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Renewal => "renewal",
            Self::Athenz => "athenz",
            Self::Jwt => "jwt",
            Self::TokenReview => "tokenreview",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl AuthError ===

impl AuthError {
    /// Short label for the failure-reason metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCredential => "no_credential",
            Self::ClientCert(_) => "client_cert",
            Self::UnknownCluster(_) => "unknown_cluster",
            Self::Token(_) => "token",
            Self::TokenReview(_) => "tokenreview",
            Self::BadServiceAccount(_) => "service_account",
        }
    }
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
                    tokenreview::TokenReviewer::new(cluster).map_err(|reason| {
                        AuthSetupError::Cluster {
                            cluster: id.clone(),
                            reason,
                        }
                    })?,
                ),
            };
            clusters.insert(id.clone(), auth);
        }
        Ok(Self {
            trust_domain,
            renewal: x509::RenewalAuthenticator::new(ca),
            athenz,
            clusters,
        })
    }

    /// Tries each method in order; returns the first success, or the most specific failure.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Result<Caller, AuthError> {
        let mut failure = AuthError::NoCredential;
        if !creds.peer_certs.is_empty() {
            match self.renewal.authenticate(creds.peer_certs).await {
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
        let (method, username) = match cluster {
            ClusterAuthenticator::Jwks(a) => (AuthMethod::Jwt, a.validate(token).await?),
            ClusterAuthenticator::TokenReview(a) => {
                (AuthMethod::TokenReview, a.review(token).await?)
            }
        };
        let (namespace, service_account) = parse_service_account(&username)?;
        let spiffe_id = self
            .trust_domain
            .workload_id(namespace, service_account)
            .map_err(|_| AuthError::BadServiceAccount(username.clone()))?;
        Ok(Caller {
            spiffe_id,
            method,
            principal: username,
            cluster_id: Some(cluster_id.to_string()),
        })
    }
}

/// `system:serviceaccount:<namespace>:<name>` → `(namespace, name)`.
pub fn parse_service_account(username: &str) -> Result<(&str, &str), AuthError> {
    let bad = || AuthError::BadServiceAccount(username.to_string());
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(bad)?;
    let (namespace, name) = rest.split_once(':').ok_or_else(bad)?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if valid(namespace) && valid(name) {
        Ok((namespace, name))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are recorded in stores and audit logs that outlive this binary.
    #[test]
    fn method_names_are_the_recorded_ones() {
        let methods = [
            AuthMethod::Renewal,
            AuthMethod::Athenz,
            AuthMethod::Jwt,
            AuthMethod::TokenReview,
        ];
        assert_eq!(
            methods.map(AuthMethod::as_str),
            ["renewal", "athenz", "jwt", "tokenreview"]
        );
        assert!(methods.iter().all(|m| m.to_string() == m.as_str()));
    }

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            parse_service_account("system:serviceaccount:default:web").unwrap(),
            ("default", "web")
        );
        for bad in [
            "system:serviceaccount:default",
            "system:serviceaccount:default:web:extra",
            "system:serviceaccount::web",
            "system:node:worker-1",
            "admin",
            "system:serviceaccount:Default:web",
        ] {
            assert!(parse_service_account(bad).is_err(), "{bad}");
        }
    }
}
