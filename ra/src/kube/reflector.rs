//! A local copy of one kind's objects kept current the way client-go's reflector keeps it:
//! list, then watch from the list's version; on a broken stream resume from the last version
//! seen, and when that version has been compacted away (410) list again. The copy is published
//! whole through a `watch` channel, so a reader holds one consistent snapshot, never a
//! half-applied one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshca_pki::timing::Backoff;
use tokio::sync::watch;
use tracing::Instrument;

use super::api::ListParams;
use super::client::KubeClient;
use super::error::KubeError;
use super::objects::{Resource, WatchEvent};

/// Retries of a failed list or watch: quick at first (a rolling API server restart), then
/// every half minute at most, jittered so replicas do not retry in step.
pub const REFLECTOR_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(30),
    low: 0.8,
    spread: 0.4,
};

/// Where an object lives; cluster-scoped kinds have an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

/// The cache at one moment.
#[derive(Debug)]
pub struct Snapshot<R> {
    pub objects: BTreeMap<ObjectKey, Arc<R>>,
    /// The version the cache reflects (the list's, then each event's or bookmark's).
    pub resource_version: String,
    /// A first list has completed; before that an empty cache means "unknown", not "none".
    pub synced: bool,
}

/// What to list and watch.
#[derive(Clone, Debug, Default)]
pub struct ReflectorSettings {
    /// Only this namespace (namespaced kinds); None for all.
    pub namespace: Option<String>,
    pub params: ListParams,
}

/// A running reflector; dropping it stops the task.
#[derive(Debug)]
pub struct Reflector<R> {
    snapshots: watch::Receiver<Arc<Snapshot<R>>>,
    task: tokio::task::JoinHandle<()>,
}

/// How a watch ended.
enum WatchEnd {
    /// Resume from the last version seen.
    Resume,
    /// The version is gone: list again.
    Relist,
}

// === impl ObjectKey ===

impl ObjectKey {
    pub fn of<R: Resource>(object: &R) -> Self {
        let meta = object.metadata();
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone(),
        }
    }
}

// === impl Snapshot ===

impl<R> Clone for Snapshot<R> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            resource_version: self.resource_version.clone(),
            synced: self.synced,
        }
    }
}

impl<R> Default for Snapshot<R> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            resource_version: String::new(),
            synced: false,
        }
    }
}

impl<R: Resource> Snapshot<R> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<R>> {
        self.objects.get(&ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Applies one watch event. Returns false for an ERROR event, which the caller handles.
    fn apply(&mut self, event: WatchEvent<R>) -> bool {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                self.advance(&o);
                self.objects.insert(ObjectKey::of(&o), Arc::new(o));
            }
            WatchEvent::Deleted(o) => {
                self.advance(&o);
                self.objects.remove(&ObjectKey::of(&o));
            }
            WatchEvent::Bookmark { resource_version } => {
                if !resource_version.is_empty() {
                    self.resource_version = resource_version;
                }
            }
            WatchEvent::Error(_) => return false,
        }
        true
    }

    fn advance(&mut self, object: &R) {
        if let Some(rv) = &object.metadata().resource_version {
            self.resource_version.clone_from(rv);
        }
    }
}

// === impl Reflector ===

impl<R: Resource> Reflector<R> {
    /// Starts listing and watching at once; [`Snapshot::synced`] turns true after the first list.
    pub fn start(client: KubeClient, settings: ReflectorSettings) -> Self {
        let (tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let span = tracing::info_span!(
            "reflector",
            kind = R::KIND,
            label_selector = settings.params.label_selector.as_deref().unwrap_or(""),
            field_selector = settings.params.field_selector.as_deref().unwrap_or(""),
        );
        let task = tokio::spawn(run(client, settings, tx).instrument(span));
        Self { snapshots, task }
    }

    /// A receiver that sees every later snapshot (coalesced: a slow reader sees the newest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot<R>>> {
        self.snapshots.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot<R>> {
        self.snapshots.borrow().clone()
    }
}

impl<R> Drop for Reflector<R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The list-then-watch loop; runs until aborted.
async fn run<R: Resource>(
    client: KubeClient,
    settings: ReflectorSettings,
    tx: watch::Sender<Arc<Snapshot<R>>>,
) {
    let mut failures = 0u32;
    loop {
        let list = match client
            .list::<R>(settings.namespace.as_deref(), &settings.params)
            .await
        {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "list failed");
                pause(&mut failures).await;
                continue;
            }
        };
        let count = list.items.len();
        tx.send_modify(|snapshot| {
            *snapshot = Arc::new(Snapshot {
                objects: list
                    .items
                    .into_iter()
                    .map(|o| (ObjectKey::of(&o), Arc::new(o)))
                    .collect(),
                resource_version: list.metadata.resource_version,
                synced: true,
            });
        });
        tracing::debug!(count, "listed");
        failures = 0;
        loop {
            let from = tx.borrow().resource_version.clone();
            match watch_once(&client, &settings, &from, &tx).await {
                Ok(WatchEnd::Resume) => failures = 0,
                Ok(WatchEnd::Relist) => {
                    tracing::info!(resource_version = %from, "watch expired; listing again");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, resource_version = %from, "watch failed");
                    pause(&mut failures).await;
                }
            }
        }
    }
}

/// One watch request, applied event by event until it ends.
async fn watch_once<R: Resource>(
    client: &KubeClient,
    settings: &ReflectorSettings,
    from: &str,
    tx: &watch::Sender<Arc<Snapshot<R>>>,
) -> Result<WatchEnd, KubeError> {
    let mut stream = match client
        .watch::<R>(settings.namespace.as_deref(), &settings.params, from)
        .await
    {
        Ok(stream) => stream,
        Err(KubeError::Expired(_)) => return Ok(WatchEnd::Relist),
        Err(e) => return Err(e),
    };
    while let Some(event) = stream.next().await {
        match event? {
            WatchEvent::Error(status) => {
                return match KubeError::from_status(status) {
                    KubeError::Expired(_) => Ok(WatchEnd::Relist),
                    other => Err(other),
                };
            }
            // Copy-on-write: the map is cloned only while a reader still holds the old one.
            event => {
                tx.send_modify(|snapshot| {
                    Arc::make_mut(snapshot).apply(event);
                });
            }
        }
    }
    Ok(WatchEnd::Resume)
}

async fn pause(failures: &mut u32) {
    let delay = REFLECTOR_BACKOFF.delay(*failures, meshca_pki::time::random_unit());
    *failures = failures.saturating_add(1);
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::objects::{ConfigMap, ObjectMeta};

    fn cm(ns: &str, rv: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: "c".into(),
                namespace: Some(ns.into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            data: [("k".to_string(), value.to_string())].into(),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn events_move_the_cache_and_its_version() {
        let mut s = Snapshot::<ConfigMap>::default();
        assert!(s.apply(WatchEvent::Added(cm("a", "5", "one"))));
        assert!(s.apply(WatchEvent::Added(cm("b", "6", "two"))));
        assert!(s.apply(WatchEvent::Modified(cm("a", "7", "three"))));
        assert_eq!(s.get("a", "c").unwrap().data["k"], "three");
        assert!(s.apply(WatchEvent::Deleted(cm("b", "8", "two"))));
        assert!(s.get("b", "c").is_none());
        assert!(s.apply(WatchEvent::Bookmark {
            resource_version: "12".into()
        }));
        assert_eq!(s.resource_version, "12");
        assert!(!s.apply(WatchEvent::Error(Default::default())));
        assert_eq!((s.objects.len(), s.resource_version.as_str()), (1, "12"));
    }
}
