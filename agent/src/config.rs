//! The agent's `[agent]` config section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attest::{AttestationMode, UnixRuleConfig};
use crate::credential::KeyType;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `host:port` of the RA (istiod's address when meshca stands in for it).
    pub ca_addr: String,
    /// PEM roots that verify the RA's serving certificate.
    pub ca_root_cert: Option<PathBuf>,
    /// Service-account token, re-read on every request (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// mTLS credential (e.g. Athenz) used instead of a token.
    pub athenz_cert: Option<PathBuf>,
    pub athenz_key: Option<PathBuf>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    /// Sent as the `clusterid` header.
    pub cluster_id: String,
    pub key_type: KeyType,
    #[serde(with = "humantime_serde")]
    pub cert_ttl: Duration,
    /// Rotate at this fraction of the lifetime…
    pub grace_ratio: f64,
    /// …give or take this fraction, so a fleet does not renew at once.
    pub grace_jitter: f64,
    /// Envoy SDS (`default`, `ROOTCA`, `file-cert:`, `file-root:`).
    pub sds_socket: Option<PathBuf>,
    pub workload_api_socket: Option<PathBuf>,
    /// Istio's OUTPUT_CERTS: key.pem, cert-chain.pem, root-cert.pem.
    pub output_dir: Option<PathBuf>,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Who a socket client is: `none` (every client gets the agent's own identity), `unix`
    /// (`unix_rules` on its uid, gid, executable) or `k8s` (its pod).
    pub attestation: AttestationMode,
    /// `attestation = "unix"`: the first rule a client matches names its identity.
    pub unix_rules: Vec<UnixRuleConfig>,
    /// Where the clients' processes are looked up (a fake tree in tests).
    pub proc_root: PathBuf,
    /// Identities held at once for attested clients; beyond it, idle ones are dropped first
    /// and then clients are refused.
    pub max_identities: usize,
    /// How long an identity's key is kept after its last stream closed.
    #[serde(with = "humantime_serde")]
    pub identity_grace: Duration,
    /// Octal permissions of both sockets, e.g. `"0660"`; default `0777` with attestation (every
    /// process may connect and is served only itself) and `0660` without.
    pub socket_mode: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            ca_addr: "istiod.istio-system.svc:15012".into(),
            ca_root_cert: None,
            token_file: None,
            athenz_cert: None,
            athenz_key: None,
            namespace: None,
            service_account: None,
            cluster_id: "Kubernetes".into(),
            key_type: KeyType::EcP256,
            cert_ttl: Duration::from_secs(24 * 3600),
            grace_ratio: 0.5,
            grace_jitter: 0.01,
            sds_socket: None,
            workload_api_socket: None,
            output_dir: None,
            metrics_listen: "127.0.0.1:15020".parse().expect("valid address"),
            request_timeout: Duration::from_secs(10),
            attestation: AttestationMode::None,
            unix_rules: Vec::new(),
            proc_root: PathBuf::from("/proc"),
            max_identities: 256,
            identity_grace: Duration::from_secs(60),
            socket_mode: None,
        }
    }
}
