//! Workload attestation: which workload identity the process on the other end of an agent
//! socket may have. The peer's kernel-reported credentials, the identity they resolve to and
//! the configured mode are in `workload`; the resolution rules live in `cgroup` (pod and
//! container from `/proc/<pid>/cgroup`) and `unix` (uid, gid and executable rules), as pure
//! functions beside the two small `/proc` readers; `Attestor` applies the configured ones.

mod attestor;
pub mod cgroup;
pub mod unix;
mod workload;

pub use attestor::{AttestError, Attestor};
pub use cgroup::{parse_cgroup, read_container, ContainerId, ContainerRef, PodUid};
// `unix::resolve` stays behind its module name: the `k8s` mode will resolve identities too.
pub use unix::{
    read_exe, validate_rules, RuleTargetError, UnixMatcher, UnixRule, UnixRuleConfig,
    UnixRulesError, UnixTarget,
};
pub use workload::{AttestationMode, PeerCredentials, WorkloadId, WorkloadIdError};
