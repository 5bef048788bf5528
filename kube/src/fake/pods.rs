//! Pods as the fake API server stores them: the JSON of a Deployment's pod in a real cluster
//! (owner ReplicaSet, managedFields, the projected service-account token volume, scheduling and
//! phase in status), and the store's changes behind the pod hooks. Clients decode a few fields
//! of this; the rest is here so that they prove they ignore it.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{json, Value};

use super::store::{now, uid, Change, Kind, Store};

// === impl Store ===

impl Store {
    /// A pod as its ReplicaSet's controller creates it and, with `node`, the scheduler binds
    /// and the kubelet starts it. Panics when the pod exists: a test that adds one twice is
    /// wrong, and a silent ADDED for an existing object would hide it.
    pub(crate) fn new_pod(
        &mut self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: Option<&str>,
    ) -> Change {
        let key = (namespace.to_string(), name.to_string());
        assert!(
            !self.pods.contains_key(&key),
            "pod {namespace}/{name} already exists"
        );
        let rv = self.next_version();
        let mut object = pod_json(namespace, name, service_account);
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        if let Some(node) = node {
            self.pods_created += 1;
            bind(&mut object, node, pod_ip(self.pods_created));
        }
        let object = Arc::new(object);
        self.pods.insert(key, object.clone());
        Change {
            kind: Kind::Pod,
            event_type: "ADDED",
            resource_version: rv,
            object,
            previous: None,
        }
    }

    /// The scheduler's binding and the kubelet's start, seen as one update. `None` when there
    /// is no such pod or it is already bound: a binding is made once (the real server answers a
    /// second one with 409).
    pub(crate) fn schedule_pod(
        &mut self,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> Option<Change> {
        let key = (namespace.to_string(), name.to_string());
        if self.pods.get(&key)?["spec"].get("nodeName").is_some() {
            return None;
        }
        self.pods_created += 1;
        let ip = pod_ip(self.pods_created);
        self.modify_pod(&key, |pod| bind(pod, node, ip))
    }

    /// The kubelet reports `phase`; readiness follows it. `None` when there is no such pod or
    /// nothing changed (the real server makes no event for a no-op update).
    pub(crate) fn set_pod_phase(
        &mut self,
        namespace: &str,
        name: &str,
        phase: &str,
    ) -> Option<Change> {
        let key = (namespace.to_string(), name.to_string());
        self.modify_pod(&key, |pod| {
            pod["status"]["phase"] = phase.into();
            let ready = phase == "Running";
            let reason = match phase {
                "Succeeded" => Some("PodCompleted"),
                "Failed" => Some("PodFailed"),
                _ => None,
            };
            let Some(conditions) = pod["status"]["conditions"].as_array_mut() else {
                return;
            };
            for condition in conditions.iter_mut() {
                if matches!(
                    condition["type"].as_str(),
                    Some("Ready" | "ContainersReady" | "PodReadyToStartContainers")
                ) {
                    condition["status"] = if ready { "True" } else { "False" }.into();
                    match reason {
                        Some(reason) if condition["type"] != "PodReadyToStartContainers" => {
                            condition["reason"] = reason.into();
                        }
                        _ => {
                            if let Some(map) = condition.as_object_mut() {
                                map.remove("reason");
                            }
                        }
                    }
                }
            }
        })
    }

    /// The end of a deletion (grace period over, finalizers done): the last state, at a new
    /// version.
    pub(crate) fn delete_pod(&mut self, namespace: &str, name: &str) -> Option<Change> {
        let object = self
            .pods
            .remove(&(namespace.to_string(), name.to_string()))?;
        let mut object = Arc::unwrap_or_clone(object);
        let rv = self.next_version();
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        Some(Change {
            kind: Kind::Pod,
            event_type: "DELETED",
            resource_version: rv,
            object: Arc::new(object),
            previous: None,
        })
    }

    /// Applies `edit` to a stored pod; a new version and a MODIFIED change only when it
    /// changed something.
    fn modify_pod(
        &mut self,
        key: &(String, String),
        edit: impl FnOnce(&mut Value),
    ) -> Option<Change> {
        let stored = self.pods.get(key)?;
        let mut object = Value::clone(stored);
        edit(&mut object);
        if object == **stored {
            return None;
        }
        let rv = self.next_version();
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        let object = Arc::new(object);
        let previous = self.pods.insert(key.clone(), object.clone());
        Some(Change {
            kind: Kind::Pod,
            event_type: "MODIFIED",
            resource_version: rv,
            object,
            previous,
        })
    }
}

/// A pending, unscheduled pod of a Deployment named after the pod (`web-7d4b9c8f6d-x2x7q`
/// belongs to ReplicaSet `web-7d4b9c8f6d` of app `web`), as the ReplicaSet controller creates
/// it and admission completes it; no resourceVersion yet.
fn pod_json(namespace: &str, name: &str, service_account: &str) -> Value {
    let (app, replicaset, hash) = owners(name);
    let created = now();
    let replicaset_uid = uid();
    let volume = format!(
        "kube-api-access-{}",
        random_suffix(fnv(uid().as_bytes()), 5)
    );
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": format!("{replicaset}-"),
            "namespace": namespace,
            "uid": uid(),
            "creationTimestamp": created,
            "labels": {"app": app, "pod-template-hash": hash},
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": replicaset,
                "uid": replicaset_uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
            "managedFields": [managed_fields(&replicaset_uid, &created)],
        },
        "spec": {
            "volumes": [{
                "name": volume,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }},
                        {"downwardAPI": {"items": [{
                            "path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                        }]}},
                    ],
                    "defaultMode": 420,
                },
            }],
            "containers": [{
                "name": "app",
                "image": format!("ghcr.io/example/{app}:1.4.2"),
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {
                    "limits": {"memory": "256Mi"},
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                },
                "volumeMounts": [{
                    "name": volume,
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": service_account,
            // The deprecated alias, which the server still fills in.
            "serviceAccount": service_account,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Pending",
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": null,
                "lastTransitionTime": created,
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
            }],
            "qosClass": "Burstable",
        },
    })
}

/// Bound to `node` and running there with address `ip`: what the scheduler and the kubelet
/// write.
fn bind(pod: &mut Value, node: &str, ip: Ipv4Addr) {
    let at = now();
    let host_ip = host_ip(node).to_string();
    let ip = ip.to_string();
    pod["spec"]["nodeName"] = node.into();
    let condition = |kind: &str| {
        json!({
            "type": kind,
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": at,
        })
    };
    let status = &mut pod["status"];
    status["phase"] = "Running".into();
    status["conditions"] = json!([
        condition("PodReadyToStartContainers"),
        condition("Initialized"),
        condition("Ready"),
        condition("ContainersReady"),
        condition("PodScheduled"),
    ]);
    status["hostIP"] = host_ip.clone().into();
    status["hostIPs"] = json!([{"ip": host_ip}]);
    status["podIP"] = ip.clone().into();
    status["podIPs"] = json!([{"ip": ip}]);
    status["startTime"] = at.clone().into();
    // The runtime's id of the started container, as containerd reports it to the kubelet.
    let id = container_id(pod["metadata"]["uid"].as_str().unwrap_or_default());
    let image = pod["spec"]["containers"][0]["image"].clone();
    pod["status"]["containerStatuses"] = json!([{
        "name": "app",
        "state": {"running": {"startedAt": at}},
        "lastState": {},
        "ready": true,
        "restartCount": 0,
        "image": image,
        "containerID": format!("containerd://{id}"),
        "started": true,
    }]);
}

/// The id the fake runtime gives a pod's container: 64 hex digits as containerd's, derived
/// from the pod's UID so that a test can place a process in it before the pod is bound.
pub(crate) fn container_id(pod_uid: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        pod_uid.as_bytes(),
    ))
}

/// The app, ReplicaSet and pod-template-hash a pod's name implies.
fn owners(name: &str) -> (String, String, String) {
    let mut parts = name.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_suffix), Some(hash), Some(app)) => {
            (app.to_string(), format!("{app}-{hash}"), hash.to_string())
        }
        _ => {
            let hash = random_suffix(fnv(name.as_bytes()), 10);
            (name.to_string(), format!("{name}-{hash}"), hash)
        }
    }
}

/// `len` characters of the alphabet Kubernetes draws name suffixes from (no vowels, no
/// look-alikes), from `seed`.
fn random_suffix(seed: u32, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ALPHABET[(state >> 16) as usize % ALPHABET.len()] as char
        })
        .collect()
}

/// The kube-controller-manager's entry, as a ReplicaSet's pod carries it.
fn managed_fields(replicaset_uid: &str, time: &str) -> Value {
    json!({
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:metadata": {
                "f:generateName": {},
                "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                "f:ownerReferences": {
                    ".": {},
                    format!("k:{{\"uid\":\"{replicaset_uid}\"}}"): {},
                },
            },
            "f:spec": {
                "f:containers": {"k:{\"name\":\"app\"}": {
                    ".": {},
                    "f:image": {},
                    "f:imagePullPolicy": {},
                    "f:name": {},
                    "f:ports": {
                        ".": {},
                        "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {},
                        },
                    },
                    "f:resources": {
                        ".": {},
                        "f:limits": {".": {}, "f:memory": {}},
                        "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}},
                    },
                    "f:terminationMessagePath": {},
                    "f:terminationMessagePolicy": {},
                }},
                "f:dnsPolicy": {},
                "f:enableServiceLinks": {},
                "f:restartPolicy": {},
                "f:schedulerName": {},
                "f:securityContext": {},
                "f:serviceAccount": {},
                "f:serviceAccountName": {},
                "f:terminationGracePeriodSeconds": {},
            },
        },
    })
}

/// The `n`th pod's address in the cluster's pod CIDR, 10.244.0.0/16 (kind's default).
fn pod_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 1)) + n)
}

/// A node's address, the same for every pod on it.
fn host_ip(node: &str) -> Ipv4Addr {
    // 172.18.0.2 to .254, kind's node network.
    let last = 2 + (fnv(node.as_bytes()) % 253) as u8;
    Ipv4Addr::new(172, 18, 0, last)
}

/// FNV-1a: a stable, dependency-free hash for names.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_pod_runs_on_its_node() {
        let mut store = Store::default();
        let change = store.new_pod("web", "web-7d4b9c8f6d-x2x7q", "web-sa", Some("node-a"));
        let pod = &change.object;
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["generateName"], "web-7d4b9c8f6d-");
        assert_eq!(
            pod["metadata"]["ownerReferences"][0]["name"],
            "web-7d4b9c8f6d"
        );
        assert_eq!(
            pod["spec"]["serviceAccount"],
            pod["spec"]["serviceAccountName"]
        );
        assert_eq!(pod["spec"]["nodeName"], "node-a");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["status"]["podIP"], "10.244.0.2");
        let managed = pod["metadata"]["managedFields"].to_string().len();
        assert!((300..2000).contains(&managed), "{managed} bytes");

        // Bound once; a second pod on the node shares its host address.
        assert!(store
            .schedule_pod("web", "web-7d4b9c8f6d-x2x7q", "node-b")
            .is_none());
        store.new_pod("web", "api", "api", None);
        let bound = store.schedule_pod("web", "api", "node-a").unwrap();
        assert_eq!(bound.object["status"]["hostIP"], pod["status"]["hostIP"]);
        assert_eq!(bound.object["status"]["podIP"], "10.244.0.3");
        assert_eq!(bound.previous.unwrap()["status"]["phase"], "Pending");
    }

    #[test]
    fn phases_move_readiness_and_no_op_makes_no_change() {
        let mut store = Store::default();
        store.new_pod("batch", "job", "default", Some("node-a"));
        assert!(store.set_pod_phase("batch", "job", "Running").is_none());
        let done = store.set_pod_phase("batch", "job", "Succeeded").unwrap();
        let ready = done.object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "PodCompleted");
        let deleted = store.delete_pod("batch", "job").unwrap();
        assert!(deleted.resource_version > done.resource_version);
        assert_eq!(deleted.object["status"]["phase"], "Succeeded");
        assert!(store.pods.is_empty());
    }
}
