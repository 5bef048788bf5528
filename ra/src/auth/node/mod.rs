//! Node authorization of `ImpersonatedIdentity`, as istiod's NodeAuthorizer does it: a trusted
//! node agent (ztunnel) may ask for the identity of a pod only if its own pod is the one its
//! token is bound to and a pod of the requested service account is scheduled on its node.
//! The decision is a pure function over a pod index; [`NodeAuthorizer`] keeps one index per
//! cluster, fed by a list-and-watch of its pods.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use meshca_ca::{SpiffeId, TrustDomain};

use super::caller::Caller;
use crate::config::{AuthConfig, NodeAccount, DEFAULT_CLUSTER_ID};
use meshca_kube::{
    KubeClient, KubeClientError, ListParams, Pod, PodIndex, Reflector, ReflectorSettings,
};

/// Who may impersonate, and into which trust domain.
#[derive(Clone, Debug)]
pub struct NodePolicy {
    pub trust_domain: TrustDomain,
    pub trusted: BTreeSet<NodeAccount>,
}

/// The pods of the caller's cluster as the decision sees them.
#[derive(Clone, Copy, Debug)]
pub enum PodView<'a> {
    Synced(&'a PodIndex),
    /// The first list has not completed: an empty cache means "unknown", not "no pods".
    NotSynced {
        cluster: &'a str,
    },
}

/// An allowed impersonation: the identity to issue, and where the asking agent runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impersonation {
    pub spiffe_id: SpiffeId,
    /// The node agent's own identity.
    pub agent: SpiffeId,
    /// The node agent's pod, `namespace/name`.
    pub agent_pod: String,
    pub agent_pod_uid: String,
    /// The node both pods are on.
    pub node: String,
}

/// Why an impersonation was refused. Logged, audited and counted; the caller only ever hears
/// Istio's "request impersonation authentication failure" (or, for [`Self::NotSynced`], to
/// retry).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImpersonationError {
    #[error("no node account is trusted (auth.trusted_node_accounts is empty)")]
    NotConfigured,
    #[error("{caller} authenticated with a {method} credential; only a node agent's service-account token may impersonate")]
    NotKubernetes {
        caller: String,
        method: &'static str,
    },
    #[error("{account} is not a trusted node account")]
    NotTrusted { account: String },
    #[error("requested identity {requested:?} is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    Malformed { requested: String },
    #[error("requested identity {requested} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        requested: String,
        trust_domain: String,
    },
    #[error("the token of {account} is not bound to a pod (no pod name and uid in it)")]
    NoPodBinding { account: String },
    #[error(
        "the pods of cluster {cluster:?} are not known yet (the first list has not completed)"
    )]
    NotSynced { cluster: String },
    #[error("the caller's pod {pod} does not exist")]
    CallerPodMissing { pod: String },
    #[error("the caller's pod {pod} has uid {found}, its token was issued to uid {expected}")]
    UidMismatch {
        pod: String,
        found: String,
        expected: String,
    },
    #[error("the caller's pod {pod} runs as service account {found}, its token names {expected}")]
    ServiceAccountMismatch {
        pod: String,
        found: String,
        expected: String,
    },
    #[error("the caller's pod {pod} is not scheduled on a node")]
    CallerNotScheduled { pod: String },
    #[error("the caller's token names node {token}, its pod runs on {pod}")]
    NodeMismatch { token: String, pod: String },
    #[error("no running pod of {namespace}/{service_account} on node {node}")]
    NotOnNode {
        namespace: String,
        service_account: String,
        node: String,
    },
}

/// The running part: the policy and one pod cache per configured cluster.
pub struct NodeAuthorizer {
    policy: NodePolicy,
    pods: BTreeMap<String, Reflector<Pod, PodIndex>>,
    /// How long a refusal our cache may simply be late for waits for the cache to change.
    catch_up: Duration,
}

/// One cluster's pod cache, for metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCacheStatus {
    pub cluster: String,
    pub synced: bool,
    pub pods: usize,
}

/// Starting the pod caches failed: a cluster's API server cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
#[error("auth.clusters.{cluster}: node authorization needs the cluster's API server: {source}")]
pub struct NodeAuthorizerSetupError {
    pub cluster: String,
    #[source]
    pub source: KubeClientError,
}

// === impl ImpersonationError ===

impl ImpersonationError {
    /// Short label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::NotKubernetes { .. } => "not_kubernetes",
            Self::NotTrusted { .. } => "not_trusted",
            Self::Malformed { .. } => "malformed_identity",
            Self::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Self::NoPodBinding { .. } => "no_pod_binding",
            Self::NotSynced { .. } => "not_synced",
            Self::CallerPodMissing { .. } => "caller_pod_missing",
            Self::UidMismatch { .. } => "uid_mismatch",
            Self::ServiceAccountMismatch { .. } => "service_account_mismatch",
            Self::CallerNotScheduled { .. } => "caller_not_scheduled",
            Self::NodeMismatch { .. } => "node_mismatch",
            Self::NotOnNode { .. } => "not_on_node",
        }
    }

    /// Only an unsynced cache says nothing about the caller: retrying soon may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotSynced { .. })
    }

    /// Refusals that a pod cache lagging behind the API server gives: the node agent's own
    /// watch can see a pod created, recreated or scheduled before ours does. Facts that never
    /// change for a pod (its service account, its node once set) are not waited on.
    pub fn cache_may_be_behind(&self) -> bool {
        matches!(
            self,
            Self::NotSynced { .. }
                | Self::CallerPodMissing { .. }
                | Self::UidMismatch { .. }
                | Self::CallerNotScheduled { .. }
                | Self::NotOnNode { .. }
        )
    }
}

/// Decides one impersonation: the caller must be a trusted node account with a pod-bound
/// token, its pod must be the one the token names (uid and service account), and some
/// unfinished pod of the requested service account must be scheduled on the same node.
/// Checks that need no pods come first, so an untrusted caller is refused even before the
/// cache has synced.
pub fn decide(
    policy: &NodePolicy,
    caller: &Caller,
    requested: &str,
    pods: PodView<'_>,
) -> Result<Impersonation, ImpersonationError> {
    if policy.trusted.is_empty() {
        return Err(ImpersonationError::NotConfigured);
    }
    let Some(k8s) = &caller.kubernetes else {
        return Err(ImpersonationError::NotKubernetes {
            caller: caller.spiffe_id.to_string(),
            method: caller.method.as_str(),
        });
    };
    let account = NodeAccount {
        namespace: k8s.namespace.clone(),
        name: k8s.service_account.clone(),
    };
    if !policy.trusted.contains(&account) {
        return Err(ImpersonationError::NotTrusted {
            account: account.to_string(),
        });
    }
    let malformed = || ImpersonationError::Malformed {
        requested: requested.to_string(),
    };
    let spiffe_id = SpiffeId::new(requested).map_err(|_| malformed())?;
    let (namespace, service_account) = spiffe_id.kubernetes_workload().ok_or_else(malformed)?;
    if !spiffe_id.is_in(&policy.trust_domain) {
        return Err(ImpersonationError::ForeignTrustDomain {
            requested: requested.to_string(),
            trust_domain: policy.trust_domain.to_string(),
        });
    }
    let Some(binding) = &k8s.pod else {
        return Err(ImpersonationError::NoPodBinding {
            account: account.to_string(),
        });
    };
    let index = match pods {
        PodView::Synced(index) => index,
        PodView::NotSynced { cluster } => {
            return Err(ImpersonationError::NotSynced {
                cluster: cluster.to_string(),
            })
        }
    };
    let pod_name = format!("{}/{}", k8s.namespace, binding.name);
    let Some(pod) = index.pod(&k8s.namespace, &binding.name) else {
        return Err(ImpersonationError::CallerPodMissing { pod: pod_name });
    };
    if *pod.uid != *binding.uid {
        return Err(ImpersonationError::UidMismatch {
            pod: pod_name,
            found: pod.uid.to_string(),
            expected: binding.uid.clone(),
        });
    }
    if *pod.service_account != *k8s.service_account {
        return Err(ImpersonationError::ServiceAccountMismatch {
            pod: pod_name,
            found: pod.service_account.to_string(),
            expected: k8s.service_account.clone(),
        });
    }
    let Some(node) = pod.node.as_deref() else {
        return Err(ImpersonationError::CallerNotScheduled { pod: pod_name });
    };
    if let Some(token_node) = k8s.node.as_deref().filter(|n| *n != node) {
        return Err(ImpersonationError::NodeMismatch {
            token: token_node.to_string(),
            pod: node.to_string(),
        });
    }
    if !index.runs_on(node, namespace, service_account) {
        return Err(ImpersonationError::NotOnNode {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            node: node.to_string(),
        });
    }
    Ok(Impersonation {
        agent: caller.spiffe_id.clone(),
        agent_pod: pod_name,
        agent_pod_uid: binding.uid.clone(),
        node: node.to_string(),
        spiffe_id,
    })
}

// === impl NodeAuthorizer ===

impl NodeAuthorizer {
    /// With trusted node accounts configured, starts listing and watching the pods of every
    /// configured cluster; None when nobody may impersonate.
    pub fn start(
        config: &AuthConfig,
        trust_domain: TrustDomain,
    ) -> Result<Option<Self>, NodeAuthorizerSetupError> {
        if config.trusted_node_accounts.is_empty() {
            return Ok(None);
        }
        let mut pods = BTreeMap::new();
        for (id, cluster) in &config.clusters {
            let client = KubeClient::new(&cluster.api_server()).map_err(|source| {
                NodeAuthorizerSetupError {
                    cluster: id.clone(),
                    source,
                }
            })?;
            let settings = ReflectorSettings {
                namespace: None,
                params: ListParams::default(),
                relist_every: Some(config.pod_relist_interval),
            };
            pods.insert(id.clone(), Reflector::start(client, settings));
        }
        Ok(Some(Self {
            policy: NodePolicy {
                trust_domain,
                trusted: config.trusted_node_accounts.iter().cloned().collect(),
            },
            pods,
            catch_up: config.pod_cache_catch_up,
        }))
    }

    /// [`decide`] against the caller's cluster's cache, read in place (no copy of the index).
    /// A refusal the cache may only be late for ([`ImpersonationError::cache_may_be_behind`])
    /// is decided again on every change of the cache, for up to `auth.pod_cache_catch_up`:
    /// ztunnel asks as soon as its own watch shows a pod on its node, which can be before ours.
    pub async fn authorize(
        &self,
        caller: &Caller,
        requested: &str,
    ) -> Result<Impersonation, ImpersonationError> {
        let cluster = caller.cluster_id.as_deref().unwrap_or(DEFAULT_CLUSTER_ID);
        let Some(reflector) = self.pods.get(cluster) else {
            // Only Kubernetes callers have a cluster, and every configured one has a cache;
            // decide() refuses the others before it looks at pods.
            return decide(
                &self.policy,
                caller,
                requested,
                PodView::NotSynced { cluster },
            );
        };
        let mut receiver = reflector.subscribe();
        let deadline = tokio::time::Instant::now() + self.catch_up;
        loop {
            let decision = {
                let snapshot = receiver.borrow_and_update();
                let view = if snapshot.synced {
                    PodView::Synced(&snapshot.objects)
                } else {
                    PodView::NotSynced { cluster }
                };
                decide(&self.policy, caller, requested, view)
            };
            match decision {
                Err(refusal) if refusal.cache_may_be_behind() => {
                    let changed = tokio::time::timeout_at(deadline, receiver.changed()).await;
                    if !matches!(changed, Ok(Ok(()))) {
                        return Err(refusal);
                    }
                }
                decided => return decided,
            }
        }
    }

    pub fn status(&self) -> Vec<PodCacheStatus> {
        self.pods
            .iter()
            .map(|(cluster, reflector)| {
                let receiver = reflector.subscribe();
                let snapshot = receiver.borrow();
                PodCacheStatus {
                    cluster: cluster.clone(),
                    synced: snapshot.synced,
                    pods: snapshot.objects.len(),
                }
            })
            .collect()
    }
}

impl fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAuthorizer")
            .field("policy", &self.policy)
            .field("clusters", &self.pods.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests;
