//! Pods as node authorization sees them: the few fields of a core/v1 Pod it reads, and
//! [`PodIndex`], the reflector cache that keeps only those, indexed the way istiod's
//! NodeAuthorizer indexes its informer: by namespace/name, and by (node, namespace, service
//! account) for "does any pod of this service account run on that node?".

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::objects::{ObjectMeta, Resource};
use super::reflector::{Cache, ObjectKey};

/// `v1.Pod`, read-only: only what node authorization needs is decoded, the rest of the object
/// (containers, volumes, managedFields…) is skipped, so 10,000 pods do not live in memory as
/// JSON trees. meshca never writes pods back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Empty until the scheduler binds the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Empty means `default` on the server; a stored pod always has it filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The running (or last run) containers; workload attestation matches a process's
    /// container id against these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

/// `v1.ContainerStatus`: only the runtime's id of the container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// `<runtime>://<id>`, e.g. `containerd://4f3a…`; empty until the container was created.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
}

/// What the index keeps of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: Box<str>,
    pub service_account: Box<str>,
    /// None until scheduled.
    pub node: Option<Box<str>>,
    /// Succeeded or Failed: its containers are gone and will not start again.
    pub finished: bool,
}

/// The pod cache of node authorization. Cloned only if a reader holds an old snapshot while
/// an event arrives; node authorization reads under the channel's borrow, so it never does.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    pods: HashMap<ObjectKey, PodFacts>,
    /// Unfinished, scheduled pods per `node/namespace/service-account` (none of the three can
    /// hold a `/`, so the key is unambiguous).
    on_node: HashMap<String, u32>,
}

// === impl Pod ===

impl Resource for Pod {
    const KIND: &'static str = "Pod";
    const PLURAL: &'static str = "pods";
    const NAMESPACED: bool = true;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Pod {
    /// The service account the pod runs as: `default` when the spec names none.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    /// Succeeded or Failed: its containers are gone and will not start again.
    pub fn finished(&self) -> bool {
        matches!(
            self.status.phase.as_deref(),
            Some("Succeeded") | Some("Failed")
        )
    }
}

// === impl PodIndex ===

impl PodIndex {
    /// The pod `namespace/name`, as the cache last saw it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodFacts> {
        self.pods.get(&ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Whether an unfinished pod running as `namespace/service_account` is scheduled on `node`.
    pub fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.on_node
            .contains_key(&node_key(node, namespace, service_account))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn count(&mut self, key: &ObjectKey, facts: &PodFacts, delta: i32) {
        let Some(node) = facts.node.as_deref().filter(|_| !facts.finished) else {
            return;
        };
        let index_key = node_key(node, &key.namespace, &facts.service_account);
        if delta > 0 {
            *self.on_node.entry(index_key).or_default() += 1;
        } else if let Some(count) = self.on_node.get_mut(&index_key) {
            *count -= 1;
            if *count == 0 {
                self.on_node.remove(&index_key);
            }
        }
    }

    fn facts(pod: &Pod) -> PodFacts {
        PodFacts {
            uid: pod.metadata.uid.as_deref().unwrap_or_default().into(),
            service_account: pod.service_account().into(),
            node: pod
                .spec
                .node_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(Box::from),
            finished: pod.finished(),
        }
    }
}

impl Cache<Pod> for PodIndex {
    fn insert(&mut self, key: ObjectKey, pod: Pod) {
        let facts = Self::facts(&pod);
        if let Some(old) = self.pods.remove(&key) {
            self.count(&key, &old, -1);
        }
        self.count(&key, &facts, 1);
        self.pods.insert(key, facts);
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(old) = self.pods.remove(key) {
            self.count(key, &old, -1);
        }
    }
}

fn node_key(node: &str, namespace: &str, service_account: &str) -> String {
    let mut key = String::with_capacity(node.len() + namespace.len() + service_account.len() + 2);
    key.push_str(node);
    key.push('/');
    key.push_str(namespace);
    key.push('/');
    key.push_str(service_account);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, sa: &str, node: Option<&str>, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(ns.into()),
                uid: Some(format!("uid-{ns}-{name}")),
                ..ObjectMeta::default()
            },
            spec: PodSpec {
                node_name: node.map(Into::into),
                service_account_name: Some(sa.into()),
            },
            status: PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            },
        }
    }

    fn put(index: &mut PodIndex, pod: Pod) {
        index.insert(ObjectKey::of(&pod), pod);
    }

    #[test]
    fn the_node_index_follows_scheduling_moves_and_completion() {
        let mut index = PodIndex::default();
        put(&mut index, pod("web", "a", "web", None, "Pending"));
        assert!(!index.runs_on("n1", "web", "web"));
        assert_eq!(index.pod("web", "a").unwrap().uid.as_ref(), "uid-web-a");

        put(&mut index, pod("web", "a", "web", Some("n1"), "Running"));
        put(&mut index, pod("web", "b", "web", Some("n1"), "Running"));
        assert!(index.runs_on("n1", "web", "web"));
        assert!(!index.runs_on("n2", "web", "web"));
        assert!(!index.runs_on("n1", "web", "other"));
        assert!(!index.runs_on("n1", "other", "web"));

        // One of two pods finishing leaves the other; both gone leaves none.
        put(&mut index, pod("web", "a", "web", Some("n1"), "Succeeded"));
        assert!(index.runs_on("n1", "web", "web"));
        index.remove(&ObjectKey::of(&pod("web", "b", "", None, "")));
        assert!(!index.runs_on("n1", "web", "web"));
        assert_eq!(index.len(), 1);
        assert!(index.on_node.is_empty(), "{:?}", index.on_node);
    }

    #[test]
    fn an_unnamed_service_account_is_default() {
        let mut index = PodIndex::default();
        let mut p = pod("web", "a", "", Some("n1"), "Running");
        p.spec.service_account_name = None;
        put(&mut index, p);
        assert!(index.runs_on("n1", "web", "default"));
    }

    #[test]
    fn decodes_only_what_it_reads_from_a_real_pod() {
        let json = serde_json::json!({
            "metadata": {"name": "web-7d9f8", "namespace": "web", "uid": "8f1c", "resourceVersion": "12",
                         "managedFields": [{"manager": "kube-scheduler"}]},
            "spec": {"serviceAccountName": "web", "serviceAccount": "web", "nodeName": "worker-1",
                     "containers": [{"name": "app", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7"},
        });
        let p: Pod = serde_json::from_value(json).unwrap();
        assert_eq!(p.spec.node_name.as_deref(), Some("worker-1"));
        assert_eq!(p.spec.service_account_name.as_deref(), Some("web"));
        assert_eq!(p.status.phase.as_deref(), Some("Running"));
        assert_eq!(p.metadata.uid.as_deref(), Some("8f1c"));
    }
}
