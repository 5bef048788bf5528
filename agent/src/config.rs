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
    /// `attestation = "k8s"`: where the node's pods are read from.
    pub k8s: K8sAttestationConfig,
}

/// `[agent.k8s]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct K8sAttestationConfig {
    /// The node the agent runs on (the DaemonSet passes `spec.nodeName`); required.
    pub node_name: Option<String>,
    pub pod_source: PodSourceKind,
    /// `pod_source = "api_server"`; each defaults to the pod's in-cluster setting.
    pub api_server_url: Option<String>,
    pub api_server_ca_file: Option<PathBuf>,
    pub api_server_token_file: Option<PathBuf>,
    /// `pod_source = "kubelet"`: e.g. `https://<node IP>:10250` (needs `nodes/proxy` get) or
    /// the read-only `http://<node IP>:10255`; required in that mode.
    pub kubelet_url: Option<String>,
    /// CA bundle of the kubelet's serving certificate (https only; default the pod's
    /// service-account `ca.crt`, right when kubelets get their serving certificates from the
    /// cluster CA).
    pub kubelet_ca_file: Option<PathBuf>,
    /// Default: the pod's service-account token.
    pub kubelet_token_file: Option<PathBuf>,
    /// How long a client whose pod or container is not reported yet is waited for before it
    /// is refused.
    #[serde(with = "humantime_serde")]
    pub pod_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// `agent.k8s.pod_source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodSourceKind {
    /// Watch the node's pods on the API server.
    #[default]
    ApiServer,
    /// Ask the kubelet for its pods.
    Kubelet,
}

impl Default for K8sAttestationConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            pod_source: PodSourceKind::ApiServer,
            api_server_url: None,
            api_server_ca_file: None,
            api_server_token_file: None,
            kubelet_url: None,
            kubelet_ca_file: None,
            kubelet_token_file: None,
            pod_wait: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
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
            k8s: K8sAttestationConfig::default(),
        }
    }
}
