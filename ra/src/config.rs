//! The RA's configuration sections: `[grpc]`, `[metrics]`, `[auth]`, `[rest]`, `[trust]`,
//! `[rotation]`, `[istio]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::{CallerLimitConfig, RateLimit};

/// Istio's default cluster id; an empty `clusterid` header means this one.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Where istio-agents connect (istiod's port).
    pub listen: SocketAddr,
    /// DNS names on the serving certificate meshca issues itself.
    pub dns_names: Vec<String>,
    /// IP SANs on that certificate (so clients can dial an address).
    pub ip_sans: Vec<std::net::IpAddr>,
    /// Serve this certificate instead (PEM chain); `key_file` must be set too.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Lifetime of the self-issued serving certificate; renewed at half-life.
    #[serde(with = "humantime_serde")]
    pub serving_cert_ttl: Duration,
    /// CreateCertificate calls handled at once; beyond this a call is shed at once with
    /// `RESOURCE_EXHAUSTED` (clients retry with backoff) instead of queueing without bound,
    /// so a restart storm costs latency, not memory or timeouts.
    pub max_in_flight_issuances: usize,
    /// Per-caller limits on CreateCertificate.
    pub rate_limit: CallerLimitConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Kubernetes clusters whose service-account tokens are accepted, by cluster id (the
    /// `clusterid` request header).
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub athenz: AthenzConfig,
    /// Service accounts (`namespace/name`) of node agents that may ask for the identity of a
    /// pod on their own node (`ImpersonatedIdentity`): istiod's `CA_TRUSTED_NODE_ACCOUNTS`,
    /// e.g. `istio-system/ztunnel`. Empty: nobody may. Non-empty: every cluster's pods are
    /// watched through its `api_server_*` settings.
    pub trusted_node_accounts: Vec<NodeAccount>,
    /// How often the pod caches of node authorization list everything again, besides
    /// following the watch.
    #[serde(with = "humantime_serde")]
    pub pod_relist_interval: Duration,
    /// How long an impersonation those caches would refuse for a pod they may not have seen
    /// yet (missing, recreated, not yet scheduled, not on the node) waits for them to catch up
    /// before it is refused.
    #[serde(with = "humantime_serde")]
    pub pod_cache_catch_up: Duration,
}

/// A Kubernetes service account, `namespace/name`, as `CA_TRUSTED_NODE_ACCOUNTS` spells it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtMode {
    /// Validate locally against the issuer's keys.
    Jwks,
    /// Ask the API server (`authentication.k8s.io/v1` TokenReview).
    Tokenreview,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub mode: JwtMode,
    /// Accepted token audiences (`aud` must intersect).
    pub audiences: Vec<String>,

    // --- jwks mode ---
    /// Expected `iss`; with neither `jwks_file` nor `jwks_url`, its OIDC discovery document
    /// names the JWKS.
    pub issuer: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// Re-fetch keys this often (and on an unknown `kid`, at most every `jwks_min_refresh`).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Clock skew allowed on `exp`/`nbf`; at most 60 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,

    // --- tokenreview mode ---
    /// Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_server_url: Option<String>,
    /// CA bundle for the API server (default: the in-cluster service-account `ca.crt`).
    pub api_server_ca_file: Option<PathBuf>,
    /// meshca's own token for the TokenReview call (default: the in-cluster token); re-read
    /// on every call since projected tokens rotate.
    pub api_server_token_file: Option<PathBuf>,
    /// How long a positive review is reused (never past the token's `exp`).
    #[serde(with = "humantime_serde")]
    pub tokenreview_cache_ttl: Duration,
    pub tokenreview_cache_size: usize,
    /// Also used for JWKS/discovery fetches.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AthenzConfig {
    /// PEM bundle of the Athenz CA(s); unset disables Athenz authentication.
    pub ca_bundle: Option<PathBuf>,
    /// Athenz domain → Kubernetes namespace; unmapped domains use the domain with `.` → `-`.
    pub namespace_map: BTreeMap<String, String>,
}

/// The admin and audit REST API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfig {
    /// HTTPS, with a certificate from meshca's own CA (the gRPC port's).
    pub listen: SocketAddr,
    /// Bearer tokens, stored only as SHA-256 hashes.
    pub tokens: Vec<RestToken>,
    /// SPIFFE ids whose mesh client certificates may administer.
    pub admins: Vec<String>,
    /// SPIFFE ids whose mesh client certificates may read (inventory, audit log).
    pub auditors: Vec<String>,
    /// Failed authentications allowed per client address: past the burst the address gets
    /// `429` with `Retry-After` until its bucket refills, whatever it presents.
    pub failed_auth_limit: RateLimit,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestToken {
    /// Who holds it; recorded as the actor of what it does.
    pub name: String,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    pub role: RestRole,
}

/// `admin` can do everything an `auditor` can, and change things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestRole {
    Auditor,
    Admin,
}

/// `[trust]`: what workloads trust besides meshca's own roots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Roots meshca does not sign with but its workloads must trust (e.g. the Athenz CA that
    /// signs what proxies present in `MUTUAL` mode). Merged into the trust bundle, as Istio's
    /// `meshConfig.caCertificates`; the SPIFFE Workload API serves them under their own trust
    /// domain.
    pub extra_anchors: Vec<ExtraAnchorConfig>,
    /// How often the anchor files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraAnchorConfig {
    pub trust_domain: String,
    /// PEM certificates; re-read when it changes.
    pub pem_file: PathBuf,
}

/// `[rotation]`: the gates of a root rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationConfig {
    /// How long a root must have been in the published bundle before it may be activated and
    /// before meshca's own serving certificates move to it: the time given to holders meshca
    /// cannot see (a kubelet syncing the root ConfigMap into pods takes up to about two minutes).
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
}

/// How meshca takes over the parts of istiod's CA role that live in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IstioConfig {
    /// Keep the `istio-ca-root-cert` ConfigMap (the trust bundle sidecars verify meshca with)
    /// in every selected namespace. Only where istiod does not write it too: istiod runs its
    /// namespace controller whenever its own CA is on (`ENABLE_CA_SERVER`, default true).
    pub publish_root_configmap: bool,
    /// The `auth.clusters` entry whose `api_server_*` settings reach the cluster to write to.
    pub cluster_id: String,
    /// Kubernetes label selector for the namespaces that get the ConfigMap (istio-csr's
    /// `--configmap-namespace-selector`); unset means all.
    pub configmap_namespace_selector: Option<String>,
    /// How often every namespace is checked again, besides reacting to changes.
    #[serde(with = "humantime_serde")]
    pub configmap_resync: Duration,
}

// === defaults ===

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            extra_anchors: Vec::new(),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(300),
        }
    }
}

impl Default for IstioConfig {
    fn default() -> Self {
        Self {
            publish_root_configmap: false,
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            configmap_namespace_selector: None,
            configmap_resync: Duration::from_secs(600),
        }
    }
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".parse().expect("valid address"),
            tokens: Vec::new(),
            admins: Vec::new(),
            auditors: Vec::new(),
            failed_auth_limit: RateLimit { rate: 1, burst: 20 },
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:15012".parse().expect("valid address"),
            dns_names: vec![
                "istiod.istio-system.svc".into(),
                "meshca.meshca-system.svc".into(),
                "localhost".into(),
            ],
            ip_sans: Vec::new(),
            cert_file: None,
            key_file: None,
            serving_cert_ttl: Duration::from_secs(24 * 3600),
            max_in_flight_issuances: 256,
            rate_limit: CallerLimitConfig::default(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:15014".parse().expect("valid address"),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            clusters: BTreeMap::from([(DEFAULT_CLUSTER_ID.to_string(), ClusterConfig::default())]),
            athenz: AthenzConfig::default(),
            trusted_node_accounts: Vec::new(),
            pod_relist_interval: Duration::from_secs(1800),
            pod_cache_catch_up: Duration::from_secs(2),
        }
    }
}

// === impl NodeAccount ===

impl TryFrom<String> for NodeAccount {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        match value.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(Self {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
            _ => Err(format!(
                "trusted node account {value:?} is not <namespace>/<service account>"
            )),
        }
    }
}

impl From<NodeAccount> for String {
    fn from(account: NodeAccount) -> Self {
        account.to_string()
    }
}

impl std::fmt::Display for NodeAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ClusterConfig {
    /// The API server settings (`api_server_*`, `request_timeout`) as the Kubernetes client
    /// takes them.
    pub fn api_server(&self) -> meshca_kube::Endpoint {
        meshca_kube::Endpoint {
            url: self.api_server_url.clone(),
            ca_file: self.api_server_ca_file.clone(),
            token_file: self.api_server_token_file.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: JwtMode::Tokenreview,
            audiences: vec!["istio-ca".into()],
            issuer: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
            leeway: Duration::from_secs(60),
            api_server_url: None,
            api_server_ca_file: None,
            api_server_token_file: None,
            tokenreview_cache_ttl: Duration::from_secs(60),
            tokenreview_cache_size: 10_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_node_accounts_are_namespace_slash_name() {
        let parsed: Vec<NodeAccount> = serde_json::from_value(serde_json::json!([
            "istio-system/ztunnel",
            "kube-system/agent"
        ]))
        .unwrap();
        assert_eq!(parsed[0].namespace, "istio-system");
        assert_eq!(parsed[0].name, "ztunnel");
        assert_eq!(parsed[1].to_string(), "kube-system/agent");
        for bad in [
            "ztunnel",
            "istio-system/",
            "/ztunnel",
            "a/b/c",
            "Istio/ztunnel",
        ] {
            let error = serde_json::from_value::<NodeAccount>(serde_json::json!(bad)).unwrap_err();
            assert!(
                error.to_string().contains("<namespace>/<service account>"),
                "{bad}: {error}"
            );
        }
    }
}
