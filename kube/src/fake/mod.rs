//! A fake Kubernetes API server for tests (no real one runs here): core/v1 namespaces,
//! ConfigMaps and pods over HTTP with the upstream JSON, status codes and `Status` bodies, paged
//! lists, watches with history, bookmarks and 410 after compaction, and hooks to act as a user,
//! an operator or a controller would (add or terminate namespaces, edit or delete ConfigMaps,
//! create, schedule, finish or delete pods, compact, cut watches). Built only for tests
//! (`testing` feature).

mod handlers;
mod kubelet;
mod paging;
mod pods;
mod selector;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;

use store::{Broadcast, Shared};

/// Serves `app` on a loopback port for the life of the runtime.
async fn serve(app: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Handle on one fake server's state; clones share it.
#[derive(Clone, Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

// === impl FakeApiServer ===

impl FakeApiServer {
    /// An empty cluster that accepts `Authorization: Bearer <token>` and nothing else.
    pub fn new(token: &str) -> Self {
        Self {
            shared: Arc::new(Shared::new(token)),
        }
    }

    /// The routes, to serve alone or merged with others (e.g. a TokenReview route).
    pub fn router(&self) -> axum::Router {
        handlers::router(self.shared.clone())
    }

    /// The kubelet of `node`: its `GET /pods`, listing this cluster's pods bound there.
    pub fn kubelet_router(&self, node: &str) -> axum::Router {
        kubelet::router(self.shared.clone(), node.to_string())
    }

    /// Serves [`Self::router`] over plain HTTP on a loopback port for the life of the runtime.
    pub async fn serve_http(&self) -> std::io::Result<SocketAddr> {
        serve(self.router()).await
    }

    /// Serves [`Self::kubelet_router`] over plain HTTP, as a kubelet's read-only port does.
    pub async fn serve_kubelet_http(&self, node: &str) -> std::io::Result<SocketAddr> {
        serve(self.kubelet_router(node)).await
    }

    /// Creates an Active namespace with these labels (plus `kubernetes.io/metadata.name`).
    pub fn add_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let mut store = self.shared.lock();
        let change = store.new_namespace(name, labels);
        self.shared.publish(&mut store, vec![change]);
    }

    /// Sets (or with `None`, removes) one label of a namespace.
    pub fn label_namespace(&self, name: &str, key: &str, value: Option<&str>) {
        let mut store = self.shared.lock();
        let change = store.modify_namespace(name, |ns| {
            let labels = &mut ns["metadata"]["labels"];
            match value {
                Some(v) => labels[key] = v.into(),
                None => {
                    if let Some(map) = labels.as_object_mut() {
                        map.remove(key);
                    }
                }
            }
        });
        self.shared
            .publish(&mut store, change.into_iter().collect());
    }

    /// `kubectl delete namespace` while finalizers run: phase Terminating, deletionTimestamp
    /// set; creates in it are refused from now on.
    pub fn mark_terminating(&self, name: &str) {
        let mut store = self.shared.lock();
        let change = store.modify_namespace(name, |ns| {
            ns["metadata"]["deletionTimestamp"] =
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .into();
            ns["status"]["phase"] = "Terminating".into();
        });
        self.shared
            .publish(&mut store, change.into_iter().collect());
    }

    /// The namespace is gone, with everything in it (ConfigMaps and pods, each DELETED).
    pub fn remove_namespace(&self, name: &str) {
        let mut store = self.shared.lock();
        let changes = store.delete_namespace(name);
        self.shared.publish(&mut store, changes);
    }

    /// A user's `kubectl edit`: `edit` changes the stored ConfigMap, which gets a new version.
    /// Returns false when there is no such ConfigMap.
    pub fn edit_configmap(
        &self,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> bool {
        let mut store = self.shared.lock();
        let Some(mut object) = store
            .configmaps
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| Value::clone(o))
        else {
            return false;
        };
        edit(&mut object);
        match store.update_configmap(namespace, name, object) {
            Ok(change) => {
                self.shared
                    .publish(&mut store, change.into_iter().collect());
                true
            }
            Err(_) => false,
        }
    }

    /// A user's `kubectl create configmap`. Returns the refusal's code on failure.
    pub fn create_configmap(&self, namespace: &str, object: Value) -> Result<(), u16> {
        let mut store = self.shared.lock();
        let change = store
            .create_configmap(namespace, object)
            .map_err(|(code, _)| code)?;
        self.shared.publish(&mut store, vec![change]);
        Ok(())
    }

    /// A user's `kubectl delete configmap`. Returns false when there was none.
    pub fn delete_configmap(&self, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.lock();
        let Some(change) = store.delete_configmap(namespace, name) else {
            return false;
        };
        self.shared.publish(&mut store, vec![change]);
        true
    }

    /// The stored ConfigMap, as a GET would return it.
    pub fn configmap(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .configmaps
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| Value::clone(o))
    }

    /// Creates, updates and deletes of ConfigMaps in `namespace` through the API (test hooks
    /// do not count).
    pub fn writes(&self, namespace: &str) -> usize {
        self.shared
            .lock()
            .writes
            .get(namespace)
            .copied()
            .unwrap_or(0)
    }

    /// The same, over every namespace.
    pub fn total_writes(&self) -> usize {
        self.shared.lock().writes.values().sum()
    }

    /// A Deployment's pod as its ReplicaSet creates it (see `pods.rs` for the JSON):
    /// scheduled on `node` and Running, or with `None` unscheduled and Pending. As with the
    /// other hooks no admission runs: the namespace need not exist. Returns its uid; panics
    /// when the pod exists.
    pub fn add_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: Option<&str>,
    ) -> String {
        let mut store = self.shared.lock();
        let change = store.new_pod(namespace, name, service_account, node);
        let uid = change.object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.shared.publish(&mut store, vec![change]);
        uid
    }

    /// [`Self::add_pod`] for a large cluster: every pod under one lock and, for open watches,
    /// one broadcast, so that none falls behind and is cut.
    pub fn add_pods_bulk(
        &self,
        pods: impl IntoIterator<Item = (String, String, String, Option<String>)>,
    ) {
        let mut store = self.shared.lock();
        let changes = pods
            .into_iter()
            .map(|(namespace, name, service_account, node)| {
                store.new_pod(&namespace, &name, &service_account, node.as_deref())
            })
            .collect();
        self.shared.publish(&mut store, changes);
    }

    /// The scheduler binds a pending pod to `node` and the kubelet starts it (one MODIFIED:
    /// `spec.nodeName` set, phase Running, addresses assigned). Returns false when there is no
    /// such pod or it is already bound (a pod never moves).
    pub fn schedule_pod(&self, namespace: &str, name: &str, node: &str) -> bool {
        let mut store = self.shared.lock();
        let Some(change) = store.schedule_pod(namespace, name, node) else {
            return false;
        };
        self.shared.publish(&mut store, vec![change]);
        true
    }

    /// The kubelet reports `phase` ("Succeeded", "Failed"…), readiness following. Returns false
    /// when there is no such pod; setting the phase it has changes nothing and sends no event.
    pub fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) -> bool {
        let mut store = self.shared.lock();
        if !store
            .pods
            .contains_key(&(namespace.to_string(), name.to_string()))
        {
            return false;
        }
        let change = store.set_pod_phase(namespace, name, phase);
        self.shared
            .publish(&mut store, change.into_iter().collect());
        true
    }

    /// A pod's deletion completes: DELETED with its last state at a new version. Returns false
    /// when there was none.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.lock();
        let Some(change) = store.delete_pod(namespace, name) else {
            return false;
        };
        self.shared.publish(&mut store, vec![change]);
        true
    }

    /// The id of the container a bound pod runs (`status.containerStatuses[0].containerID`
    /// after `containerd://`), known from the pod's UID alone.
    pub fn container_id(pod_uid: &str) -> String {
        pods::container_id(pod_uid)
    }

    /// The stored pod, as a GET would return it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| Value::clone(o))
    }

    /// List requests (not watches) for a kind by its plural (`pods`, `namespaces`,
    /// `configmaps`), each page of a paged list counting once: how a test sees a relist.
    pub fn lists(&self, kind_plural: &str) -> usize {
        self.shared
            .lock()
            .lists
            .get(kind_plural)
            .copied()
            .unwrap_or(0)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version
    }

    /// etcd compaction: every version until now is gone, so a watch resuming from one gets
    /// 410 Expired and must list again, and so does a paged list continuing from before now.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Answer a too-old watch with a bare HTTP 410 (as some servers and proxies do) instead of
    /// the usual 200 with an ERROR event.
    pub fn expire_with_http_status(&self, bare: bool) {
        self.shared.lock().expire_with_http_status = bare;
    }

    /// RBAC denies (`true`) or allows again ConfigMap creates and updates in `namespace`,
    /// with the real authorizer's 403.
    pub fn forbid_writes(&self, namespace: &str, forbidden: bool) {
        let mut store = self.shared.lock();
        if forbidden {
            store.forbidden.insert(namespace.to_string());
        } else {
            store.forbidden.remove(namespace);
        }
    }

    /// Ends every open watch, as an API server restart or a load balancer would.
    pub fn cut_watches(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// Open watches hold their events back until [`Self::resume_watches`]: clients' caches go
    /// stale while the store moves on.
    pub fn pause_watches(&self) {
        self.shared.paused.send_replace(true);
    }

    pub fn resume_watches(&self) {
        self.shared.paused.send_replace(false);
    }

    /// A BOOKMARK at the current version on every watch that allowed them.
    pub fn send_bookmarks(&self) {
        let store = self.shared.lock();
        let _ = self
            .shared
            .events
            .send(Broadcast::Bookmark(store.resource_version));
    }
}
