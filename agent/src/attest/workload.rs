//! The attestation vocabulary: the configured mode, what the kernel says about a socket peer,
//! and the workload identity it resolves to.

use std::fmt;

use meshca_pki::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

/// `agent.attestation`: how the agent decides who a socket client is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestationMode {
    /// Every client gets the agent's own identity. This is what a per-pod agent (a sidecar
    /// sharing its socket only with its own pod) has always done, so it stays the default.
    #[default]
    None,
    /// `agent.unix_rules` map the peer's uid, gid and executable to an identity, for processes
    /// on the node itself (SPIRE's `unix` workload attestor).
    Unix,
    /// The peer's pod, from its cgroup, looked up on the kubelet (SPIRE's `k8s` workload
    /// attestor); for a node agent serving every pod on its node.
    K8s,
}

/// What the kernel says about a socket peer (`SO_PEERCRED`), taken when it connected.
///
/// The uid and gid are the effective ids at `connect(2)`, the ones SPIRE's unix attestor uses
/// too. The pid is `None` when the peer lives in a pid namespace the agent cannot see (the
/// kernel then reports 0), so nothing in `/proc` can be read about it; a DaemonSet agent needs
/// `hostPID: true` to see its node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
}

/// A Kubernetes workload identity: the only kind of identity the RA issues
/// (`spiffe://<td>/ns/<namespace>/sa/<service account>`). Both names are checked against
/// Kubernetes' own rules, so a typo in a rule fails at start-up rather than at the RA.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkloadIdError {
    #[error(
        "namespace {0:?} is not a Kubernetes namespace name (at most 63 of a-z, 0-9 and '-', \
         starting and ending with a letter or digit)"
    )]
    Namespace(String),
    #[error(
        "service account {0:?} is not a Kubernetes object name (at most 253 of a-z, 0-9, '-' \
         and '.', each dot-separated part starting and ending with a letter or digit)"
    )]
    ServiceAccount(String),
}

/// A namespace name is a DNS-1123 label (Kubernetes' `ValidateNamespaceName`).
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// A service account name is a DNS-1123 subdomain: dot-separated labels, 253 bytes at most.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

// === impl PeerCredentials ===

impl From<tokio::net::unix::UCred> for PeerCredentials {
    fn from(cred: tokio::net::unix::UCred) -> Self {
        Self {
            // 0 is how the kernel reports a peer outside our pid namespace.
            pid: cred
                .pid()
                .and_then(|pid| u32::try_from(pid).ok())
                .filter(|pid| *pid != 0),
            uid: cred.uid(),
            gid: cred.gid(),
        }
    }
}

// === impl AttestationMode ===

impl AttestationMode {
    /// The config spelling, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationMode::None => "none",
            AttestationMode::Unix => "unix",
            AttestationMode::K8s => "k8s",
        }
    }
}

impl fmt::Display for AttestationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl WorkloadId ===

impl WorkloadId {
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, WorkloadIdError> {
        if !is_dns_label(namespace) {
            return Err(WorkloadIdError::Namespace(namespace.to_string()));
        }
        if !is_dns_subdomain(service_account) {
            return Err(WorkloadIdError::ServiceAccount(service_account.to_string()));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service account>`, the id the agent asks the RA for.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> SpiffeId {
        trust_domain
            .workload_id(&self.namespace, &self.service_account)
            // Both names are DNS-1123 (a-z, 0-9, '-', '.'), all legal in a SPIFFE path, and the
            // id stays far below the 2048-byte limit (255 + 63 + 253 plus separators).
            .expect("a validated namespace and service account form a valid SPIFFE id")
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use serde::de::value::{Error as ValueError, StrDeserializer};
    use serde::de::IntoDeserializer;

    use super::*;

    fn mode(s: &str) -> Result<AttestationMode, ValueError> {
        let de: StrDeserializer<'_, ValueError> = s.into_deserializer();
        AttestationMode::deserialize(de)
    }

    #[test]
    fn attestation_mode_is_spelled_as_in_the_config() {
        assert_eq!(mode("none"), Ok(AttestationMode::None));
        assert_eq!(mode("unix"), Ok(AttestationMode::Unix));
        assert_eq!(mode("k8s"), Ok(AttestationMode::K8s));
        for bad in ["K8s", "kubernetes", "spire", ""] {
            assert!(mode(bad).is_err(), "{bad:?} accepted");
        }
        for m in [
            AttestationMode::None,
            AttestationMode::Unix,
            AttestationMode::K8s,
        ] {
            assert_eq!(mode(m.as_str()), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(AttestationMode::default(), AttestationMode::None);
    }

    #[test]
    fn workload_id_becomes_the_spiffe_id_the_ra_issues() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let id = WorkloadId::new("payments", "ledger-writer").unwrap();
        assert_eq!(
            id.spiffe_id(&td).as_str(),
            "spiffe://cluster.local/ns/payments/sa/ledger-writer"
        );
        assert_eq!(id.to_string(), "payments/ledger-writer");
        // Service account names may hold dots; namespaces may not.
        let dotted = WorkloadId::new("default", "build.bot").unwrap();
        assert_eq!(
            dotted.spiffe_id(&td).as_str(),
            "spiffe://cluster.local/ns/default/sa/build.bot"
        );
        // The longest legal names still make a valid id.
        let longest_sa = format!("{0}.{0}.{0}.{1}", "s".repeat(63), "s".repeat(61));
        assert_eq!(longest_sa.len(), 253);
        let long = WorkloadId::new(&"n".repeat(63), &longest_sa).unwrap();
        assert!(long.spiffe_id(&td).as_str().ends_with(&longest_sa));
    }

    #[test]
    fn names_kubernetes_would_reject_are_refused() {
        for ns in ["", "Default", "a.b", "-a", "a-", "a_b", &"n".repeat(64)] {
            assert_eq!(
                WorkloadId::new(ns, "default"),
                Err(WorkloadIdError::Namespace(ns.to_string())),
                "{ns:?}"
            );
        }
        for sa in [
            "",
            "Admin",
            "a..b",
            ".a",
            "a.",
            "a/b",
            "a b",
            &"s".repeat(254),
        ] {
            assert_eq!(
                WorkloadId::new("default", sa),
                Err(WorkloadIdError::ServiceAccount(sa.to_string())),
                "{sa:?}"
            );
        }
    }

    #[tokio::test]
    async fn peer_credentials_come_from_the_socket() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let peer = PeerCredentials::from(a.peer_cred().unwrap());
        // The peer is this very process.
        assert_eq!(peer.pid, Some(std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        let owned = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(peer.uid, owned.uid());
    }
}
