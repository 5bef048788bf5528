//! The configured attestor: turns a socket peer's credentials into the workload identity it is
//! served, or says why it gets none. `unix` reads the peer's executable from the proc tree and
//! applies the rules (the decision itself is `unix::resolve`'s); `k8s` finds the peer's pod
//! (`k8s`).

use std::path::PathBuf;
use std::time::Duration;

use meshca_kube::KubeClientError;

use super::k8s::{K8sAttestor, K8sSettings};
use super::unix::{self, UnixRule};
use super::workload::{PeerCredentials, WorkloadId};

/// How callers are to be attested when the agent serves more than its own identity, as
/// configured; [`Attestor::start`] makes it run.
#[derive(Clone, Debug)]
pub enum AttestorSettings {
    /// `attestation = "unix"`: uid, gid and executable rules, SPIRE's unix attestor.
    Unix {
        rules: Vec<UnixRule>,
        /// `/proc`, or a fake tree in tests.
        proc_root: PathBuf,
    },
    /// `attestation = "k8s"`: the peer's pod on this node, SPIRE's k8s attestor.
    K8s(K8sSettings),
}

/// A running attestor.
#[derive(Debug)]
pub enum Attestor {
    Unix {
        rules: Vec<UnixRule>,
        proc_root: PathBuf,
    },
    K8s(K8sAttestor),
}

/// Why a caller was served nothing. The reason goes back to the caller (it is about the
/// caller itself, not a secret of the agent's) and into a metric.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("the connection carries no peer credentials (not a Unix socket?)")]
    NoPeerCredentials,
    #[error("no agent.unix_rules entry matches uid {uid}, gid {gid}{}", exe.as_ref().map(|e| format!(", executable {}", e.display())).unwrap_or_default())]
    NoRule {
        uid: u32,
        gid: u32,
        exe: Option<PathBuf>,
    },
    #[error("the peer's pid is not visible to the agent (another pid namespace: a node agent needs hostPID)")]
    NoPid,
    #[error("process {pid} exited before it could be attested")]
    ProcessGone { pid: u32 },
    #[error("process {pid} does not run in a pod's container (its cgroup names none)")]
    NotInPod { pid: u32 },
    #[error("no pod with UID {uid} on node {node} (waited {})", humantime::format_duration(*waited))]
    PodUnknown {
        uid: String,
        node: String,
        waited: Duration,
    },
    #[error("pod {pod} has no container {container} (waited {})", humantime::format_duration(*waited))]
    ContainerUnknown {
        pod: String,
        container: String,
        waited: Duration,
    },
    #[error("pod {pod} has finished")]
    PodFinished { pod: String },
    #[error("pod {pod} runs as no valid identity: {reason}")]
    InvalidIdentity { pod: String, reason: String },
    #[error("the pods of node {node} are not known: {reason}")]
    PodsUnavailable { node: String, reason: String },
}

// === impl Attestor ===

impl Attestor {
    /// Runs `settings`; the `k8s` attestor starts following the node's pods at once, so this
    /// needs a Tokio runtime.
    pub fn start(settings: AttestorSettings) -> Result<Self, KubeClientError> {
        Ok(match settings {
            AttestorSettings::Unix { rules, proc_root } => Self::Unix { rules, proc_root },
            AttestorSettings::K8s(k8s) => Self::K8s(K8sAttestor::start(k8s)?),
        })
    }

    pub async fn attest(&self, peer: Option<PeerCredentials>) -> Result<WorkloadId, AttestError> {
        let peer = peer.ok_or(AttestError::NoPeerCredentials)?;
        match self {
            Self::Unix { rules, proc_root } => {
                let exe = peer.pid.and_then(|pid| unix::read_exe(proc_root, pid));
                unix::resolve(rules, &peer, exe.as_deref()).ok_or(AttestError::NoRule {
                    uid: peer.uid,
                    gid: peer.gid,
                    exe,
                })
            }
            Self::K8s(k8s) => k8s.attest(&peer).await,
        }
    }
}

// === impl AttestError ===

impl AttestError {
    /// Short label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoPeerCredentials => "no_peer_credentials",
            Self::NoRule { .. } => "no_rule",
            Self::NoPid => "no_pid",
            Self::ProcessGone { .. } => "process_gone",
            Self::NotInPod { .. } => "not_in_pod",
            Self::PodUnknown { .. } => "pod_unknown",
            Self::ContainerUnknown { .. } => "container_unknown",
            Self::PodFinished { .. } => "pod_finished",
            Self::InvalidIdentity { .. } => "invalid_identity",
            Self::PodsUnavailable { .. } => "pods_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use meshca_pki::TrustDomain;

    use super::*;
    use crate::attest::unix::{validate_rules, UnixMatcher, UnixRuleConfig, UnixTarget};

    fn rule(matcher: UnixMatcher, namespace: &str) -> UnixRuleConfig {
        UnixRuleConfig {
            matcher,
            target: UnixTarget::Workload {
                namespace: namespace.into(),
                service_account: namespace.into(),
            },
        }
    }

    /// A proc tree where pid 42 runs `/usr/local/bin/backup`.
    fn proc_tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("42")).unwrap();
        std::os::unix::fs::symlink("/usr/local/bin/backup", root.path().join("42/exe")).unwrap();
        root
    }

    fn attestor(root: &Path) -> Attestor {
        let rules = validate_rules(
            &[
                rule(
                    UnixMatcher {
                        uid: Some(1000),
                        path: Some("/usr/local/bin/backup".into()),
                        ..UnixMatcher::default()
                    },
                    "backup",
                ),
                rule(
                    UnixMatcher {
                        uid: Some(1000),
                        ..UnixMatcher::default()
                    },
                    "web",
                ),
            ],
            &TrustDomain::new("cluster.local").unwrap(),
        )
        .unwrap();
        Attestor::Unix {
            rules,
            proc_root: root.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn the_peer_process_decides_its_identity() {
        let root = proc_tree();
        let attestor = attestor(root.path());
        let peer = |pid, uid| {
            Some(PeerCredentials {
                pid,
                uid,
                gid: 1000,
            })
        };
        let named = |r: Result<WorkloadId, AttestError>| r.map(|id| id.to_string());
        assert_eq!(
            named(attestor.attest(peer(Some(42), 1000)).await),
            Ok("backup/backup".into())
        );
        // Same uid, another program (or one the agent cannot see): the uid-only rule.
        assert_eq!(
            named(attestor.attest(peer(Some(7), 1000)).await),
            Ok("web/web".into())
        );
        assert_eq!(
            named(attestor.attest(peer(None, 1000)).await),
            Ok("web/web".into())
        );
        let refused = attestor.attest(peer(Some(42), 1001)).await.unwrap_err();
        assert_eq!(refused.reason(), "no_rule");
        assert_eq!(
            refused.to_string(),
            "no agent.unix_rules entry matches uid 1001, gid 1000, executable /usr/local/bin/backup"
        );
        assert_eq!(
            attestor.attest(None).await.unwrap_err(),
            AttestError::NoPeerCredentials
        );
    }
}
