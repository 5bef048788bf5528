//! Who a caller turned out to be, how it proved it, and why it could not: the types every
//! authentication method produces.

use std::fmt;

use meshca_ca::SpiffeId;

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
    /// Set for a Kubernetes service-account token: its account and, for a token bound to a
    /// pod, where it runs. Node authorization needs it; certificate callers have none.
    pub kubernetes: Option<KubernetesCaller>,
    /// For a renewal, the serial (hex) of the meshca certificate presented. Its revocation is
    /// checked where the new certificate is committed, not here: in the same transaction, on
    /// the thread that already holds the database.
    pub renewal_of: Option<String>,
}

// === impl Caller ===

impl Caller {
    /// Istio ambient's ztunnel (`istio-system/ztunnel`) in cluster `Kubernetes`, its token
    /// bound to pod `istio-system/<pod>` with `uid`, on `node` when the token says: the node
    /// agent that node authorization's tests and benches call as.
    #[cfg(any(test, feature = "testing"))]
    pub fn ztunnel(pod: &str, uid: &str, node: Option<&str>) -> Self {
        Caller {
            spiffe_id: SpiffeId::new("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
                .expect("a SPIFFE id"),
            method: AuthMethod::Jwt,
            principal: "system:serviceaccount:istio-system:ztunnel".into(),
            cluster_id: Some("Kubernetes".into()),
            kubernetes: Some(KubernetesCaller {
                namespace: "istio-system".into(),
                service_account: "ztunnel".into(),
                pod: Some(PodBinding {
                    name: pod.into(),
                    uid: uid.into(),
                }),
                node: node.map(Into::into),
            }),
            renewal_of: None,
        }
    }
}

/// A service account, and where its token says it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesCaller {
    pub namespace: String,
    pub service_account: String,
    pub pod: Option<PodBinding>,
    /// The node, when the token says (Kubernetes 1.30+ bound tokens).
    pub node: Option<String>,
}

/// The pod a bound service-account token was issued for (`kubernetes.io.pod` of the JWT, or
/// TokenReview's `authentication.kubernetes.io/pod-name` and `pod-uid`). The uid tells a pod
/// from a later one of the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBinding {
    pub name: String,
    pub uid: String,
}

/// What a verified Kubernetes token says: the username
/// (`system:serviceaccount:<namespace>:<name>`) and, for a bound token, where it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    pub username: String,
    pub pod: Option<PodBinding>,
    pub node: Option<String>,
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

// === impl KubernetesCaller ===

impl KubernetesCaller {
    /// The caller's pod as `namespace/name`, the way records and logs name it; None for a
    /// token bound to no pod.
    pub fn pod_name(&self) -> Option<String> {
        self.pod
            .as_ref()
            .map(|p| format!("{}/{}", self.namespace, p.name))
    }
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
