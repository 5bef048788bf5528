//! Why a socket client was served nothing: one variant per refusal, each with the reason told to
//! the client and a short label for the refusal metric.

use std::path::PathBuf;
use std::time::Duration;

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
