//! The CA's configuration: plain data with defaults, deserialized from the `[ca]` and `[store]`
//! sections of the config file (and `MESHCA_CA_*` / `MESHCA_STORE_*` overrides).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys::KeyType;
use crate::store::redact_url;

/// The signing service's port: beside the RA's 15012, and one istiod does not use.
pub const DEFAULT_SERVICE_PORT: u16 = 15013;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    /// A plugged-in CA (Istio `cacerts` or `kubernetes.io/tls` layout). Unset: self-signed root.
    pub cacerts_dir: Option<PathBuf>,
    /// How often `cacerts_dir` is checked for new material.
    #[serde(with = "humantime_serde")]
    pub cacerts_poll_interval: Duration,
    /// What a changed `cacerts_dir` with a new signing key does: `activate` (sign with it at
    /// once; the previous authority stays trusted as `old`) or `refuse` (keep signing with
    /// the running one, log an error and count a reload failure until the directory is put
    /// back or meshca restarts).
    pub cacerts_on_change: CacertsChange,
    /// Workload certificate TTL when the caller asks for none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest TTL a caller may ask for; longer requests are refused.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Key type of a generated self-signed root.
    pub self_signed_key_type: KeyType,
    /// 32 random bytes, base64, that seal CA keys in the store. Default
    /// `<data_dir>/key-encryption-key`, generated (0600) when absent; a configured file must exist.
    pub key_encryption_key_file: Option<PathBuf>,

    // --- split deployment: a keyless `meshca server` in front of `meshca ca` ---
    /// `meshca server` only: a `meshca ca` signing service, `https://host:port`. Set, this
    /// process holds no CA key and no key-encryption key: it forwards every signing and
    /// rotation step there. Unset: the CA runs in-process.
    pub remote_addr: Option<String>,
    /// PEM roots that verify the signing service's certificate (e.g. the mesh
    /// `root-cert.pem`, which the service's self-issued certificate chains to).
    pub remote_ca_file: Option<PathBuf>,
    /// This RA's client certificate (PEM chain) and key for the signing service; the
    /// certificate's SPIFFE id must be listed in the service's `ca.allowed_ras`.
    pub remote_cert_file: Option<PathBuf>,
    pub remote_key_file: Option<PathBuf>,
    /// `meshca ca` only: the SPIFFE ids (client-certificate URI SAN) of the RAs that may call.
    pub allowed_ras: Vec<String>,
    /// `meshca ca` only: where the signing service listens (mTLS gRPC).
    pub service_listen: SocketAddr,
    /// DNS and IP SANs of the signing service's self-issued serving certificate.
    pub service_dns_names: Vec<String>,
    pub service_ip_sans: Vec<IpAddr>,
    /// PEM roots RA client certificates must chain to. Unset: the mesh trust bundle (every
    /// root of every non-revoked authority), so an RA can use a certificate meshca issued.
    pub service_client_ca_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacertsChange {
    #[default]
    Activate,
    Refuse,
}

#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://…` or `postgres://…`. Default: SQLite file `<data_dir>/meshca.db`.
    pub url: Option<String>,
}

// === impl CaConfig ===

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            cacerts_dir: None,
            cacerts_poll_interval: Duration::from_secs(5),
            cacerts_on_change: CacertsChange::Activate,
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            self_signed_key_type: KeyType::EcP256,
            key_encryption_key_file: None,
            remote_addr: None,
            remote_ca_file: None,
            remote_cert_file: None,
            remote_key_file: None,
            allowed_ras: Vec::new(),
            service_listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_SERVICE_PORT)),
            service_dns_names: Vec::new(),
            service_ip_sans: Vec::new(),
            service_client_ca_file: None,
        }
    }
}

// === impl StoreConfig ===

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_debug_redacts_password() {
        let c = StoreConfig {
            url: Some("postgres://u:hunter2@db/meshca".into()),
        };
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("u:***@db"));
    }
}
