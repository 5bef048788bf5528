//! The fake API server's state: namespaces, ConfigMaps and pods as the exact JSON the real
//! server stores, one resourceVersion counter for everything (as etcd has), the event history
//! watches replay from, the list snapshots paged lists continue from, and the compaction point
//! below which a resume or a continue is refused with 410.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

/// The kinds this fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Namespace,
    ConfigMap,
    Pod,
}

/// One change, kept for watches that resume from before it.
#[derive(Debug)]
pub(crate) struct Change {
    pub kind: Kind,
    /// ADDED, MODIFIED or DELETED.
    pub event_type: &'static str,
    pub resource_version: u64,
    /// Shared with the store and snapshots: a pod is tens of kilobytes as a `Value`, and a
    /// cluster of 10,000 should not be held three times.
    pub object: Arc<Value>,
    /// The object before a MODIFIED, so a selector watch can turn it into ADDED or DELETED.
    pub previous: Option<Arc<Value>>,
}

/// What open watches receive live. The changes of one hook or request travel as one message,
/// so a bulk load of thousands of pods does not overrun the channel and cut every watch.
#[derive(Clone, Debug)]
pub(crate) enum Broadcast {
    Changes(Arc<[Arc<Change>]>),
    Bookmark(u64),
}

/// One kind's objects at one resourceVersion, keyed and ordered as etcd keys them: what later
/// pages of a paged list read from.
pub(crate) type Snapshot = Arc<Vec<(String, Arc<Value>)>>;

/// A failure answer: the HTTP code and the `Status` body.
pub(crate) type Refusal = (u16, Value);

/// State shared by the handlers and the test hooks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub events: broadcast::Sender<Broadcast>,
    /// Bumped to end every open watch at once.
    pub cut: watch::Sender<u64>,
    /// While true, watches hold their events back (the client's cache goes stale).
    pub paused: watch::Sender<bool>,
    pub token: String,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub resource_version: u64,
    pub namespaces: BTreeMap<String, Arc<Value>>,
    pub configmaps: BTreeMap<(String, String), Arc<Value>>,
    pub pods: BTreeMap<(String, String), Arc<Value>>,
    /// Pods created so far, for their IP addresses.
    pub pods_created: u32,
    pub history: Vec<Arc<Change>>,
    /// Versions at or below this are gone from history.
    pub compacted: u64,
    /// Create/update/delete calls through the API, per namespace.
    pub writes: BTreeMap<String, usize>,
    /// Answer a too-old watch with a bare HTTP 410 instead of an ERROR event.
    pub expire_with_http_status: bool,
    /// Namespaces where RBAC denies ConfigMap writes.
    pub forbidden: std::collections::BTreeSet<String>,
    /// List requests (each page counts), per plural (`pods`…).
    pub lists: BTreeMap<&'static str, usize>,
    /// What paged lists continue from, per kind and version (see `paging`).
    pub snapshots: BTreeMap<(Kind, u64), Snapshot>,
    /// Snapshots at or below this version were dropped to bound memory: a continue from one
    /// is expired, as if etcd had compacted it.
    pub snapshots_dropped_through: u64,
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(token: &str) -> Self {
        Self {
            store: Mutex::new(Store::default()),
            events: broadcast::channel(4096).0,
            cut: watch::channel(0).0,
            paused: watch::channel(false).0,
            token: token.to_string(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `changes` and tells open watches, under the store lock so no watch that starts
    /// meanwhile misses or repeats one.
    pub(crate) fn publish(&self, store: &mut Store, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let changes: Arc<[Arc<Change>]> = changes.into_iter().map(Arc::new).collect();
        store.history.extend(changes.iter().cloned());
        let _ = self.events.send(Broadcast::Changes(changes));
    }
}

// === impl Kind ===

impl Kind {
    /// The resource name in URLs, `Status` details and RBAC messages.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ConfigMap => "configmaps",
            Kind::Pod => "pods",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ConfigMap => "ConfigMap",
            Kind::Pod => "Pod",
        }
    }

    pub(crate) fn list_name(self) -> &'static str {
        match self {
            Kind::Namespace => "NamespaceList",
            Kind::ConfigMap => "ConfigMapList",
            Kind::Pod => "PodList",
        }
    }

    /// The real server's 404 for a missing object of this kind.
    pub(crate) fn not_found(self, name: &str) -> Refusal {
        status(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", self.plural()),
            Some(json!({"name": name, "kind": self.plural()})),
        )
    }
}

// === impl Store ===

impl Store {
    pub(crate) fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    pub(crate) fn count_write(&mut self, namespace: &str) {
        *self.writes.entry(namespace.to_string()).or_default() += 1;
    }

    /// Every stored object of `kind`, in no particular order across namespaces.
    pub(crate) fn objects(&self, kind: Kind) -> Box<dyn Iterator<Item = &Arc<Value>> + '_> {
        match kind {
            Kind::Namespace => Box::new(self.namespaces.values()),
            Kind::ConfigMap => Box::new(self.configmaps.values()),
            Kind::Pod => Box::new(self.pods.values()),
        }
    }

    pub(crate) fn new_namespace(&mut self, name: &str, labels: &[(&str, &str)]) -> Change {
        let rv = self.next_version();
        let mut all_labels = serde_json::Map::new();
        all_labels.insert("kubernetes.io/metadata.name".into(), name.into());
        for (k, v) in labels {
            all_labels.insert((*k).into(), (*v).into());
        }
        let object = json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": uid(),
                "resourceVersion": rv.to_string(),
                "creationTimestamp": now(),
                "labels": all_labels,
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        let object = Arc::new(object);
        self.namespaces.insert(name.to_string(), object.clone());
        Change {
            kind: Kind::Namespace,
            event_type: "ADDED",
            resource_version: rv,
            object,
            previous: None,
        }
    }

    /// Applies `edit` to a stored namespace and bumps its version.
    pub(crate) fn modify_namespace(
        &mut self,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Option<Change> {
        let rv = self.next_version();
        let stored = self.namespaces.get_mut(name)?;
        let previous = stored.clone();
        let object = Arc::make_mut(stored);
        edit(object);
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        Some(Change {
            kind: Kind::Namespace,
            event_type: "MODIFIED",
            resource_version: rv,
            object: stored.clone(),
            previous: Some(previous),
        })
    }

    /// Removes a namespace and everything in it (what the namespace controller ends with).
    pub(crate) fn delete_namespace(&mut self, name: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let inside: Vec<(String, String)> = self
            .configmaps
            .keys()
            .filter(|(ns, _)| ns == name)
            .cloned()
            .collect();
        for (ns, cm) in inside {
            changes.extend(self.delete_configmap(&ns, &cm));
        }
        let pods: Vec<(String, String)> = self
            .pods
            .keys()
            .filter(|(ns, _)| ns == name)
            .cloned()
            .collect();
        for (ns, pod) in pods {
            changes.extend(self.delete_pod(&ns, &pod));
        }
        if let Some(object) = self.namespaces.remove(name) {
            let mut object = Arc::unwrap_or_clone(object);
            let rv = self.next_version();
            object["metadata"]["resourceVersion"] = rv.to_string().into();
            changes.push(Change {
                kind: Kind::Namespace,
                event_type: "DELETED",
                resource_version: rv,
                object: Arc::new(object),
                previous: None,
            });
        }
        changes
    }

    /// POST: the checks the real server makes, in its order, then the stored object.
    pub(crate) fn create_configmap(
        &mut self,
        namespace: &str,
        mut body: Value,
    ) -> Result<Change, Refusal> {
        let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
        if body["kind"].as_str().is_some_and(|k| k != "ConfigMap") {
            return Err(status(
                400,
                "BadRequest",
                "the body is not a ConfigMap",
                None,
            ));
        }
        if name.is_empty() {
            return Err(status(
                422,
                "Invalid",
                "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required",
                None,
            ));
        }
        if body["metadata"]["namespace"]
            .as_str()
            .is_some_and(|ns| ns != namespace)
        {
            return Err(status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
                None,
            ));
        }
        if body["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty())
        {
            return Err(status(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
                None,
            ));
        }
        let Some(ns) = self.namespaces.get(namespace) else {
            return Err(status(
                404,
                "NotFound",
                &format!("namespaces \"{namespace}\" not found"),
                Some(json!({"name": namespace, "kind": "namespaces"})),
            ));
        };
        if ns["status"]["phase"] == "Terminating" {
            return Err(status(
                403,
                "Forbidden",
                &format!(
                    "configmaps \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
                ),
                Some(json!({
                    "name": name,
                    "kind": "configmaps",
                    "causes": [{
                        "type": "NamespaceTerminating",
                        "message": format!("namespace {namespace} is being terminated"),
                        "field": "metadata.namespace",
                    }],
                })),
            ));
        }
        let key = (namespace.to_string(), name.clone());
        if self.configmaps.contains_key(&key) {
            return Err(status(
                409,
                "AlreadyExists",
                &format!("configmaps \"{name}\" already exists"),
                Some(json!({"name": name, "kind": "configmaps"})),
            ));
        }
        let rv = self.next_version();
        body["kind"] = "ConfigMap".into();
        body["apiVersion"] = "v1".into();
        let meta = &mut body["metadata"];
        meta["namespace"] = namespace.into();
        meta["uid"] = uid().into();
        meta["resourceVersion"] = rv.to_string().into();
        meta["creationTimestamp"] = now().into();
        let body = Arc::new(body);
        self.configmaps.insert(key, body.clone());
        Ok(Change {
            kind: Kind::ConfigMap,
            event_type: "ADDED",
            resource_version: rv,
            object: body,
            previous: None,
        })
    }

    /// PUT: refused with 409 when the body's resourceVersion is not the stored one. A write
    /// that changes nothing keeps the version and makes no event, as the real server does.
    pub(crate) fn update_configmap(
        &mut self,
        namespace: &str,
        name: &str,
        mut body: Value,
    ) -> Result<Option<Change>, Refusal> {
        let body_name = body["metadata"]["name"].as_str().unwrap_or("");
        if body_name != name {
            return Err(status(
                400,
                "BadRequest",
                &format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                ),
                None,
            ));
        }
        let key = (namespace.to_string(), name.to_string());
        let Some(stored) = self.configmaps.get(&key) else {
            return Err(Kind::ConfigMap.not_found(name));
        };
        let current = stored["metadata"]["resourceVersion"].clone();
        let sent = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !sent.is_empty() && current.as_str() != Some(sent) {
            return Err(status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
                Some(json!({"name": name, "kind": "configmaps"})),
            ));
        }
        body["kind"] = "ConfigMap".into();
        body["apiVersion"] = "v1".into();
        let meta = &mut body["metadata"];
        meta["namespace"] = namespace.into();
        meta["uid"] = stored["metadata"]["uid"].clone();
        meta["creationTimestamp"] = stored["metadata"]["creationTimestamp"].clone();
        meta["resourceVersion"] = current;
        if body == **stored {
            return Ok(None);
        }
        let previous = stored.clone();
        let rv = self.next_version();
        body["metadata"]["resourceVersion"] = rv.to_string().into();
        let body = Arc::new(body);
        self.configmaps.insert(key, body.clone());
        Ok(Some(Change {
            kind: Kind::ConfigMap,
            event_type: "MODIFIED",
            resource_version: rv,
            object: body,
            previous: Some(previous),
        }))
    }

    pub(crate) fn delete_configmap(&mut self, namespace: &str, name: &str) -> Option<Change> {
        let object = self
            .configmaps
            .remove(&(namespace.to_string(), name.to_string()))?;
        let mut object = Arc::unwrap_or_clone(object);
        let rv = self.next_version();
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        Some(Change {
            kind: Kind::ConfigMap,
            event_type: "DELETED",
            resource_version: rv,
            object: Arc::new(object),
            previous: None,
        })
    }

    /// RBAC's answer to a write of ConfigMap `name` in `namespace` (`verb`: create, update…).
    pub(crate) fn authorize_write(
        &self,
        verb: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), Refusal> {
        if !self.forbidden.contains(namespace) {
            return Ok(());
        }
        Err(status(
            403,
            "Forbidden",
            &format!(
                "configmaps \"{name}\" is forbidden: User \"system:serviceaccount:meshca:meshca\" cannot {verb} resource \"configmaps\" in API group \"\" in the namespace \"{namespace}\""
            ),
            Some(json!({"name": name, "kind": "configmaps"})),
        ))
    }

    /// Forgets history up to now: a watch resuming from any earlier version gets 410, and so
    /// does a paged list continuing from a snapshot taken before now.
    pub(crate) fn compact(&mut self) {
        self.compacted = self.resource_version;
        self.history.clear();
        let compacted = self.compacted;
        self.snapshots
            .retain(|(_, version), _| *version > compacted);
    }
}

/// A `Status` body as the API server writes it.
pub(crate) fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Refusal {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    (code, body)
}

/// A random (version 4) UUID, as the server assigns `metadata.uid`.
pub(crate) fn uid() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `creationTimestamp`: RFC 3339 in UTC, whole seconds.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
