//! The configured attestor: turns a socket peer's credentials into the workload identity it is
//! served, or says why it gets none. `unix` reads the peer's executable from the proc tree and
//! applies the rules (the decision itself is `unix::resolve`'s); `k8s` finds the peer's pod
//! among the node's pods (module `k8s`).

use std::path::PathBuf;

use meshca_kube::KubeClientError;

use super::error::AttestError;
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
    K8s(Box<K8sSettings>),
}

/// A running attestor.
#[derive(Debug)]
pub enum Attestor {
    /// Stateless: the rules are applied to each peer.
    Unix {
        rules: Vec<UnixRule>,
        proc_root: PathBuf,
    },
    /// Holds the node's pods (a watch, or the kubelet's last list).
    K8s(Box<K8sAttestor>),
}

// === impl Attestor ===

impl Attestor {
    /// Runs `settings`; the `k8s` attestor starts following the node's pods at once, so this
    /// needs a Tokio runtime.
    pub fn start(settings: AttestorSettings) -> Result<Self, KubeClientError> {
        Ok(match settings {
            AttestorSettings::Unix { rules, proc_root } => Self::Unix { rules, proc_root },
            AttestorSettings::K8s(k8s) => Self::K8s(Box::new(K8sAttestor::start(*k8s)?)),
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
