//! The loop behind [`super::RootCertPublisher`]: watches the namespace and ConfigMap caches,
//! the desired bundle and leadership; queues the namespaces whose inputs changed (all of them
//! on a bundle change, a resync or becoming leader); and, while leader, brings each queued
//! namespace's ConfigMap to the planned state with a few workers. Level-triggered: a worker
//! looks at the current caches, not at the event that queued it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meshca_pki::timing::Backoff;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::plan::{
    compute_status, plan, wants_configmap, ConfigMapStatus, FingerprintCache, Plan,
    ROOT_CONFIGMAP_NAME,
};
use super::queue::WorkQueue;
use meshca_kube::{
    ConfigMap, KubeClient, KubeError, ListParams, Namespace, ObjectKey, ObjectMap, Reflector,
    ReflectorSettings, Resource, Snapshot,
};

/// Namespaces written at once: enough to get through thousands after a root change without
/// one slow answer holding the rest, few enough not to flood the API server.
const WORKERS: usize = 4;

/// Stale-version and lost-create retries inside one reconcile, each after a fresh GET.
const WRITE_ATTEMPTS: u32 = 3;

/// Retries of a namespace whose reconcile failed (API down, RBAC missing…).
pub const RECONCILE_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(60),
    low: 0.8,
    spread: 0.4,
};

/// What the publisher covers and how often it re-checks everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootConfigMapSettings {
    /// A Kubernetes label selector (`k=v,k2!=v2`) the API server applies to namespaces, like
    /// istio-csr's `--configmap-namespace-selector`; None selects all.
    pub namespace_selector: Option<String>,
    /// Every this often all selected namespaces are queued again. Writes happen only where
    /// the ConfigMap differs, so a resync of an up-to-date cluster writes nothing.
    pub resync: Duration,
}

/// A reconcile that could not finish; the namespace is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    #[error("creating {namespace}/{ROOT_CONFIGMAP_NAME}: {source}")]
    Create {
        namespace: String,
        source: KubeError,
    },
    #[error("updating {namespace}/{ROOT_CONFIGMAP_NAME}: {source}")]
    Update {
        namespace: String,
        source: KubeError,
    },
    #[error("reading {namespace}/{ROOT_CONFIGMAP_NAME} after a conflict: {source}")]
    Reread {
        namespace: String,
        source: KubeError,
    },
    #[error("{namespace}/{ROOT_CONFIGMAP_NAME} kept changing under {WRITE_ATTEMPTS} writes")]
    KeptChanging { namespace: String },
}

/// What a reconcile did.
#[derive(Debug)]
enum Outcome {
    Unchanged,
    /// The object as the server stored it.
    Created(ConfigMap),
    Updated(ConfigMap),
    /// The namespace is terminating or gone: nothing to write, nothing to retry.
    NamespaceGoing,
    /// RBAC refused the write. Like istiod, logged and not retried with backoff: the next
    /// resync tries again, so a missing permission costs one warning per namespace per resync
    /// rather than a retry storm.
    Forbidden(KubeError),
}

/// The inputs a worker reads, fixed for one reconcile.
#[derive(Clone)]
struct View {
    namespaces: Arc<Snapshot<ObjectMap<Namespace>>>,
    configmaps: Arc<Snapshot<ObjectMap<ConfigMap>>>,
    desired: Arc<str>,
}

/// ConfigMaps this loop wrote whose watch event the cache has not shown yet. Planning from
/// them instead of the cache keeps a reconcile in that gap (a resync, another event) from
/// sending a PUT with the superseded version, which would only earn a 409 and a re-read.
type WrittenAhead = std::collections::HashMap<String, Arc<ConfigMap>>;

// === the loop ===

pub(super) async fn run(
    client: KubeClient,
    settings: RootConfigMapSettings,
    mut desired: watch::Receiver<Arc<str>>,
    mut leader: watch::Receiver<bool>,
    status: watch::Sender<Arc<ConfigMapStatus>>,
) {
    let namespace_cache = Reflector::<Namespace>::start(
        client.clone(),
        ReflectorSettings {
            namespace: None,
            params: ListParams {
                label_selector: settings.namespace_selector.clone(),
                field_selector: None,
            },
            relist_every: None,
        },
    );
    let configmap_cache = Reflector::<ConfigMap>::start(
        client.clone(),
        ReflectorSettings {
            namespace: None,
            params: ListParams {
                label_selector: None,
                field_selector: Some(format!("metadata.name={ROOT_CONFIGMAP_NAME}")),
            },
            relist_every: None,
        },
    );
    let mut namespaces_rx = namespace_cache.subscribe();
    let mut configmaps_rx = configmap_cache.subscribe();
    let mut view = View {
        namespaces: namespaces_rx.borrow_and_update().clone(),
        configmaps: configmaps_rx.borrow_and_update().clone(),
        desired: desired.borrow_and_update().clone(),
    };
    let mut queue = WorkQueue::new(RECONCILE_BACKOFF);
    let mut workers: JoinSet<(String, Option<ConfigMap>, bool)> = JoinSet::new();
    let mut written = WrittenAhead::new();
    let mut fingerprints = FingerprintCache::default();
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.resync,
        settings.resync.max(Duration::from_millis(10)),
    );
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut desired_open, mut leader_open) = (true, true);
    let mut was_leader = *leader.borrow_and_update();
    publish_status(&status, &view, &mut fingerprints);

    loop {
        let retry_at = queue.next_due();
        let mut refresh_status = false;
        tokio::select! {
            changed = namespaces_rx.changed() => {
                if changed.is_ok() {
                    let next = namespaces_rx.borrow_and_update().clone();
                    for ns in changed_namespaces(&view.namespaces, &next) {
                        queue.add(&ns);
                    }
                    view.namespaces = next;
                    refresh_status = true;
                }
            }
            changed = configmaps_rx.changed() => {
                if changed.is_ok() {
                    let next = configmaps_rx.borrow_and_update().clone();
                    for ns in changed_namespaces(&view.configmaps, &next) {
                        written.remove(&ns);
                        queue.add(&ns);
                    }
                    view.configmaps = next;
                    refresh_status = true;
                }
            }
            changed = desired.changed(), if desired_open => {
                desired_open = changed.is_ok();
                view.desired = desired.borrow_and_update().clone();
                queue_all(&mut queue, &view.namespaces);
                refresh_status = true;
            }
            changed = leader.changed(), if leader_open => {
                leader_open = changed.is_ok();
                let is_leader = *leader.borrow_and_update();
                if is_leader && !was_leader {
                    tracing::info!("leading: publishing {ROOT_CONFIGMAP_NAME}");
                    queue_all(&mut queue, &view.namespaces);
                }
                was_leader = is_leader;
            }
            _ = resync.tick() => queue_all(&mut queue, &view.namespaces),
            Some(joined) = workers.join_next() => {
                // A worker cannot panic short of a bug; its namespace is dropped then.
                if let Ok((ns, wrote, ok)) = joined {
                    if let Some(cm) = wrote {
                        let cached = view.configmaps.get(&ns, ROOT_CONFIGMAP_NAME);
                        if cached.is_none_or(|c| c.metadata.resource_version != cm.metadata.resource_version) {
                            written.insert(ns.clone(), Arc::new(cm));
                        }
                    }
                    queue.done(&ns, ok, tokio::time::Instant::now(), meshca_pki::time::random_unit());
                }
            }
            _ = sleep_until(retry_at) => {}
        }
        if refresh_status {
            publish_status(&status, &view, &mut fingerprints);
        }
        let ready = was_leader
            && !view.desired.is_empty()
            && view.namespaces.synced
            && view.configmaps.synced;
        while ready && workers.len() < WORKERS {
            let Some(ns) = queue.pop(tokio::time::Instant::now()) else {
                break;
            };
            let (client, view) = (client.clone(), view.clone());
            let ahead = written.get(&ns).cloned();
            let span = tracing::info_span!("root_configmap", namespace = %ns);
            workers.spawn(
                async move {
                    match reconcile(&client, &ns, &view, ahead).await {
                        Ok(outcome) => {
                            log_outcome(&outcome);
                            let wrote = match outcome {
                                Outcome::Created(cm) | Outcome::Updated(cm) => Some(cm),
                                Outcome::Unchanged
                                | Outcome::NamespaceGoing
                                | Outcome::Forbidden(_) => None,
                            };
                            (ns, wrote, true)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "reconcile failed; will retry");
                            (ns, None, false)
                        }
                    }
                }
                .instrument(span),
            );
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn queue_all(queue: &mut WorkQueue, namespaces: &Snapshot<ObjectMap<Namespace>>) {
    for ns in namespaces.objects.values() {
        queue.add(&ns.metadata.name);
    }
}

fn publish_status(
    status: &watch::Sender<Arc<ConfigMapStatus>>,
    view: &View,
    fingerprints: &mut FingerprintCache,
) {
    let next = compute_status(
        &view.namespaces,
        &view.configmaps,
        &view.desired,
        fingerprints,
    );
    status.send_if_modified(|current| {
        if **current == next {
            return false;
        }
        *current = Arc::new(next);
        true
    });
}

/// The namespaces whose object (a Namespace, or a ConfigMap in it) was added, removed or
/// changed between two snapshots, by resourceVersion.
fn changed_namespaces<R: Resource>(
    before: &Snapshot<ObjectMap<R>>,
    after: &Snapshot<ObjectMap<R>>,
) -> Vec<String> {
    let namespace_of = |key: &ObjectKey| {
        if R::NAMESPACED {
            key.namespace.clone()
        } else {
            key.name.clone()
        }
    };
    let mut changed = BTreeSet::new();
    for (key, object) in &after.objects {
        let same = before.objects.get(key).is_some_and(|old| {
            Arc::ptr_eq(old, object)
                || old.metadata().resource_version == object.metadata().resource_version
        });
        if !same {
            changed.insert(namespace_of(key));
        }
    }
    for key in before.objects.keys() {
        if !after.objects.contains_key(key) {
            changed.insert(namespace_of(key));
        }
    }
    changed.into_iter().collect()
}

fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Created(_) => tracing::info!("created {ROOT_CONFIGMAP_NAME}"),
        Outcome::Updated(_) => tracing::info!("updated {ROOT_CONFIGMAP_NAME}"),
        Outcome::NamespaceGoing => {
            tracing::debug!("namespace is terminating or gone; nothing written")
        }
        Outcome::Forbidden(error) => {
            tracing::warn!(%error, "not allowed to write {ROOT_CONFIGMAP_NAME}; trying again at the next resync")
        }
        Outcome::Unchanged => tracing::trace!("up to date"),
    }
}

// === one namespace ===

/// Brings one namespace's ConfigMap to the plan. The cached copy is tried first; when the
/// server says it is stale (409) or gone (404), the live one is read and planned again.
async fn reconcile(
    client: &KubeClient,
    namespace: &str,
    view: &View,
    written_ahead: Option<Arc<ConfigMap>>,
) -> Result<Outcome, ReconcileError> {
    let Some(ns) = view.namespaces.get("", namespace) else {
        return Ok(Outcome::NamespaceGoing);
    };
    if !wants_configmap(ns) {
        return Ok(Outcome::NamespaceGoing);
    }
    let mut current = written_ahead
        .or_else(|| view.configmaps.get(namespace, ROOT_CONFIGMAP_NAME).cloned())
        .map(|cm| (*cm).clone());
    for _ in 0..WRITE_ATTEMPTS {
        match plan(namespace, current.as_ref(), &view.desired) {
            Plan::UpToDate => return Ok(Outcome::Unchanged),
            Plan::Create(configmap) => match client.create(&configmap).await {
                Ok(stored) => return Ok(Outcome::Created(stored)),
                // Someone (a user, the previous leader) created it first: update theirs.
                Err(KubeError::AlreadyExists(_)) => {
                    current = reread(client, namespace).await?;
                }
                // Admission refuses creates in a terminating namespace; a deleted namespace
                // answers 404. Neither gets better with retries.
                Err(e) if e.is_namespace_terminating() => return Ok(Outcome::NamespaceGoing),
                Err(KubeError::NotFound(_)) => return Ok(Outcome::NamespaceGoing),
                Err(e @ KubeError::Forbidden(_)) => return Ok(Outcome::Forbidden(e)),
                Err(source) => {
                    return Err(ReconcileError::Create {
                        namespace: namespace.into(),
                        source,
                    })
                }
            },
            Plan::Update(configmap) => match client.update(&configmap).await {
                Ok(stored) => return Ok(Outcome::Updated(stored)),
                Err(KubeError::Conflict(_)) => {
                    tracing::debug!("stale resourceVersion; reading the live ConfigMap");
                    current = reread(client, namespace).await?;
                }
                // Deleted since the cache saw it: create it again.
                Err(KubeError::NotFound(_)) => current = None,
                Err(e @ KubeError::Forbidden(_)) => return Ok(Outcome::Forbidden(e)),
                Err(source) => {
                    return Err(ReconcileError::Update {
                        namespace: namespace.into(),
                        source,
                    })
                }
            },
        }
    }
    Err(ReconcileError::KeptChanging {
        namespace: namespace.into(),
    })
}

async fn reread(client: &KubeClient, namespace: &str) -> Result<Option<ConfigMap>, ReconcileError> {
    match client
        .get::<ConfigMap>(namespace, ROOT_CONFIGMAP_NAME)
        .await
    {
        Ok(cm) => Ok(Some(cm)),
        Err(KubeError::NotFound(_)) => Ok(None),
        Err(source) => Err(ReconcileError::Reread {
            namespace: namespace.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_kube::ObjectMeta;

    fn ns(name: &str, rv: &str) -> (ObjectKey, Arc<Namespace>) {
        let object = Namespace {
            metadata: ObjectMeta {
                name: name.into(),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        (ObjectKey::of(&object), Arc::new(object))
    }

    #[test]
    fn only_added_removed_or_changed_namespaces_are_queued() {
        let before = Snapshot {
            objects: [ns("a", "1"), ns("b", "2"), ns("c", "3")].into(),
            resource_version: "3".into(),
            synced: true,
        };
        let after = Snapshot {
            objects: [ns("a", "1"), ns("b", "5"), ns("d", "6")].into(),
            resource_version: "6".into(),
            synced: true,
        };
        assert_eq!(changed_namespaces(&before, &after), ["b", "c", "d"]);
        assert!(changed_namespaces(&after, &after).is_empty());
    }
}
