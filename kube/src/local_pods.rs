//! One node's pods by UID, as the agent's `k8s` workload attestor looks a process's pod up:
//! fed by a watch of the API server restricted to the node (`spec.nodeName=<node>`) or by the
//! kubelet's own pod list (`GET /pods`). Only what attestation reads is kept.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::Method;

use super::client::KubeClient;
use super::error::KubeError;
use super::objects::ObjectList;
use super::pods::{ContainerStatus, Pod};
use super::reflector::{Cache, ObjectKey};

/// A static pod runs under the UID the kubelet derived from its manifest (the one in the
/// process's cgroup), while its mirror pod in the API server has a UID of its own and carries
/// the kubelet's in this annotation.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What attestation reads of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub service_account: Box<str>,
    /// The runtime's ids of its containers, init and ephemeral ones included, without the
    /// `containerd://` scheme: those the kubelet has reported so far.
    pub containers: Box<[Box<str>]>,
    /// Succeeded or Failed.
    pub finished: bool,
}

/// Pods by UID. Clones share the pods themselves.
#[derive(Clone, Debug, Default)]
pub struct PodsByUid {
    by_uid: HashMap<Box<str>, Arc<LocalPod>>,
    /// The UIDs each object is filed under: its own and, for a mirror pod, its static pod's.
    filed_under: HashMap<ObjectKey, Vec<Box<str>>>,
}

// === impl LocalPod ===

impl LocalPod {
    fn of(pod: &Pod) -> Self {
        let status = &pod.status;
        let containers = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .filter_map(container_id)
        .map(Box::from)
        .collect();
        Self {
            namespace: pod.metadata.namespace.as_deref().unwrap_or_default().into(),
            name: pod.metadata.name.as_str().into(),
            service_account: pod.service_account().into(),
            containers,
            finished: pod.finished(),
        }
    }

    /// Whether the kubelet has reported a container with this runtime id in the pod.
    pub fn has_container(&self, container_id: &str) -> bool {
        self.containers.iter().any(|c| c.as_ref() == container_id)
    }
}

/// `containerd://4f3a…` → `4f3a…`; any runtime scheme is accepted, as the kubelet reports it.
fn container_id(status: &ContainerStatus) -> Option<&str> {
    let full = status.container_id.as_deref()?;
    let (_runtime, id) = full.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

// === impl PodsByUid ===

impl PodsByUid {
    /// Every pod of a list (the kubelet's answer), by UID.
    pub fn from_pods(pods: impl IntoIterator<Item = Pod>) -> Self {
        let mut cache = Self::default();
        for pod in pods {
            cache.insert(ObjectKey::of(&pod), pod);
        }
        cache
    }

    /// The pod whose UID (or static pod's UID) this is.
    pub fn get(&self, uid: &str) -> Option<Arc<LocalPod>> {
        self.by_uid.get(uid).cloned()
    }

    pub fn len(&self) -> usize {
        self.filed_under.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filed_under.is_empty()
    }
}

impl Cache<Pod> for PodsByUid {
    fn insert(&mut self, key: ObjectKey, pod: Pod) {
        self.remove(&key);
        let uids: Vec<Box<str>> = pod
            .metadata
            .uid
            .iter()
            .map(String::as_str)
            .chain(mirror_of(&pod))
            .filter(|uid| !uid.is_empty())
            .map(Box::from)
            .collect();
        let local = Arc::new(LocalPod::of(&pod));
        for uid in &uids {
            self.by_uid.insert(uid.clone(), local.clone());
        }
        self.filed_under.insert(key, uids);
    }

    fn remove(&mut self, key: &ObjectKey) {
        for uid in self.filed_under.remove(key).into_iter().flatten() {
            self.by_uid.remove(&uid);
        }
    }
}

/// The static pod's UID a mirror pod stands for.
fn mirror_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .rest
        .get("annotations")?
        .get(MIRROR_ANNOTATION)?
        .as_str()
}

// === impl KubeClient: the kubelet ===

impl KubeClient {
    /// The pods the kubelet at this client's URL runs (`GET /pods`, its read-only port 10255 or
    /// the authenticated 10250, which needs `nodes/proxy` get), with the statuses it holds
    /// itself: a container shows up here before the API server has heard of it.
    pub async fn kubelet_pods(&self) -> Result<ObjectList<Pod>, KubeError> {
        let url = self.url(&["pods"], &[]);
        let response = self
            .send(Method::GET, url, None, self.request_timeout())
            .await?;
        let bytes = response.bytes().await.map_err(KubeError::Transport)?;
        serde_json::from_slice(&bytes).map_err(|source| KubeError::Decode {
            what: "kubelet pod list",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubelet `/pods` item as a 1.30 kubelet answers for a running Deployment pod and a
    /// static pod's mirror, trimmed of what is not read.
    fn kubelet_list() -> ObjectList<Pod> {
        serde_json::from_value(serde_json::json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {},
            "items": [
                {
                    "metadata": {"name": "web-7d9f8-x2x7q", "namespace": "shop", "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
                    "spec": {"serviceAccountName": "web", "nodeName": "worker-1"},
                    "status": {
                        "phase": "Running",
                        "initContainerStatuses": [{"name": "istio-init", "containerID": "containerd://aaaa"}],
                        "containerStatuses": [
                            {"name": "app", "containerID": "containerd://bbbb", "ready": true},
                            {"name": "sidecar", "ready": false, "state": {"waiting": {"reason": "ContainerCreating"}}}
                        ]
                    }
                },
                {
                    "metadata": {"name": "etcd-worker-1", "namespace": "kube-system", "uid": "5f0e8b7a-0000-4000-8000-000000000001",
                                 "annotations": {"kubernetes.io/config.mirror": "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "kubernetes.io/config.source": "file"}},
                    "spec": {"nodeName": "worker-1"},
                    "status": {"phase": "Running", "containerStatuses": [{"name": "etcd", "containerID": "cri-o://cccc"}]}
                }
            ]
        }))
        .unwrap()
    }

    #[test]
    fn pods_are_found_by_uid_with_their_containers() {
        let pods = PodsByUid::from_pods(kubelet_list().items);
        assert_eq!(pods.len(), 2);
        let web = pods.get("1b4e28ba-2fa1-11d2-883f-0016d3cca427").unwrap();
        assert_eq!(
            (&*web.namespace, &*web.name, &*web.service_account),
            ("shop", "web-7d9f8-x2x7q", "web")
        );
        assert!(web.has_container("aaaa") && web.has_container("bbbb"));
        // A container not yet created has no id, and no other pod's id matches.
        assert!(!web.has_container("cccc") && !web.has_container(""));
        assert!(!web.finished);
    }

    #[test]
    fn a_static_pod_is_found_under_the_kubelets_uid_too() {
        let mut pods = PodsByUid::from_pods(kubelet_list().items);
        let etcd = pods.get("0a1b2c3d4e5f60718293a4b5c6d7e8f9").unwrap();
        assert_eq!(&*etcd.service_account, "default");
        assert!(etcd.has_container("cccc"));
        assert!(pods.get("5f0e8b7a-0000-4000-8000-000000000001").is_some());
        pods.remove(&ObjectKey {
            namespace: "kube-system".into(),
            name: "etcd-worker-1".into(),
        });
        assert!(pods.get("0a1b2c3d4e5f60718293a4b5c6d7e8f9").is_none());
        assert!(pods.get("5f0e8b7a-0000-4000-8000-000000000001").is_none());
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn a_pod_replaced_under_its_name_loses_its_old_uid() {
        let mut pods = PodsByUid::default();
        let mut pod = kubelet_list().items.remove(0);
        pods.insert(ObjectKey::of(&pod), pod.clone());
        pod.metadata.uid = Some("new-uid".into());
        pod.status.phase = Some("Succeeded".into());
        pods.insert(ObjectKey::of(&pod), pod);
        assert!(pods.get("1b4e28ba-2fa1-11d2-883f-0016d3cca427").is_none());
        assert!(pods.get("new-uid").unwrap().finished);
    }
}
