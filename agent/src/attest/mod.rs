//! Workload attestation: which workload identity the process on the other end of an agent
//! socket may have. The peer's kernel-reported credentials, the identity they resolve to and
//! the configured mode are in `workload`; the resolution rules live in `cgroup` (pod and
//! container from `/proc/<pid>/cgroup`) and `unix` (uid, gid and executable rules), as pure
//! functions beside the two small `/proc` readers; `k8s` finds a container's pod among the
//! node's pods; `Attestor` applies the configured mode.

mod attestor;
pub mod cgroup;
mod error;
mod k8s;
pub mod unix;
mod workload;

pub use attestor::{Attestor, AttestorSettings};
pub use cgroup::{parse_cgroup, read_container, ContainerId, ContainerRef, PodUid};
pub use error::AttestError;
pub use k8s::{K8sSettings, PodSource};
// `unix::resolve` stays behind its module name: it is one of two ways to resolve an identity.
pub use unix::{
    read_exe, validate_rules, RuleTargetError, UnixMatcher, UnixRule, UnixRuleConfig,
    UnixRulesError, UnixTarget,
};
pub use workload::{AttestationMode, PeerCredentials, WorkloadId, WorkloadIdError};
