//! A local copy of one kind's objects kept current the way client-go's reflector keeps it:
//! list (in pages), then watch from the list's version; on a broken stream resume from the
//! last version seen, and when that version has been compacted away (410) list again. The copy
//! is published whole through a `watch` channel, so a reader holds one consistent snapshot,
//! never a half-applied one. What the copy keeps is a [`Cache`]: every object by default, or an
//! index that answers one question (the pod index of node authorization).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What a reflector keeps of the objects it sees. Cloned only while a reader still holds the
/// previous snapshot (copy-on-write), so a reader that looks up under
/// [`watch::Receiver::borrow`] never causes a copy.
pub trait Cache<R>: Clone + Default + Send + Sync + 'static {
    /// An object was listed, added or modified.
    fn insert(&mut self, key: ObjectKey, object: R);
    /// An object was deleted.
    fn remove(&mut self, key: &ObjectKey);
}

/// The default cache: every object, by namespace and name.
pub type ObjectMap<R> = BTreeMap<ObjectKey, Arc<R>>;

/// The cache at one moment.
#[derive(Debug)]
pub struct Snapshot<C> {
    pub objects: C,
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
    /// List again this often even when the watch is healthy, so an event the stream lost
    /// (a proxy that dropped a line) cannot stay lost; None: only when a version expires.
    pub relist_every: Option<Duration>,
}

/// A running reflector; dropping it stops the task.
#[derive(Debug)]
pub struct Reflector<R, C = ObjectMap<R>> {
    snapshots: watch::Receiver<Arc<Snapshot<C>>>,
    task: tokio::task::JoinHandle<()>,
    _kind: PhantomData<fn() -> R>,
}

/// How a watch ended.
enum WatchEnd {
    /// Resume from the last version seen.
    Resume,
    /// The version is gone, or it is time to: list again.
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

// === impl Cache for ObjectMap ===

impl<R: Resource> Cache<R> for ObjectMap<R> {
    fn insert(&mut self, key: ObjectKey, object: R) {
        BTreeMap::insert(self, key, Arc::new(object));
    }

    fn remove(&mut self, key: &ObjectKey) {
        BTreeMap::remove(self, key);
    }
}

// === impl Snapshot ===

impl<C: Clone> Clone for Snapshot<C> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            resource_version: self.resource_version.clone(),
            synced: self.synced,
        }
    }
}

impl<C: Default> Default for Snapshot<C> {
    fn default() -> Self {
        Self {
            objects: C::default(),
            resource_version: String::new(),
            synced: false,
        }
    }
}

impl<R: Resource> Snapshot<ObjectMap<R>> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<R>> {
        self.objects.get(&ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl<C> Snapshot<C> {
    /// Applies one watch event. Returns false for an ERROR event, which the caller handles.
    fn apply<R: Resource>(&mut self, event: WatchEvent<R>) -> bool
    where
        C: Cache<R>,
    {
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                self.advance(&o);
                self.objects.insert(ObjectKey::of(&o), o);
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

    fn advance<R: Resource>(&mut self, object: &R) {
        if let Some(rv) = &object.metadata().resource_version {
            self.resource_version.clone_from(rv);
        }
    }
}

// === impl Reflector ===

impl<R: Resource, C: Cache<R>> Reflector<R, C> {
    /// Starts listing and watching at once; [`Snapshot::synced`] turns true after the first list.
    pub fn start(client: KubeClient, settings: ReflectorSettings) -> Self {
        let (tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let span = tracing::info_span!(
            "reflector",
            kind = R::KIND,
            label_selector = settings.params.label_selector.as_deref().unwrap_or(""),
            field_selector = settings.params.field_selector.as_deref().unwrap_or(""),
        );
        let task = tokio::spawn(run::<R, C>(client, settings, tx).instrument(span));
        Self {
            snapshots,
            task,
            _kind: PhantomData,
        }
    }

    /// A receiver that sees every later snapshot (coalesced: a slow reader sees the newest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot<C>>> {
        self.snapshots.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot<C>> {
        self.snapshots.borrow().clone()
    }
}

impl<R, C> Drop for Reflector<R, C> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The list-then-watch loop; runs until aborted.
async fn run<R: Resource, C: Cache<R>>(
    client: KubeClient,
    settings: ReflectorSettings,
    tx: watch::Sender<Arc<Snapshot<C>>>,
) {
    let mut failures = 0u32;
    loop {
        // The new cache is built aside, so readers keep the previous one until it is whole.
        let mut objects = C::default();
        let mut count = 0usize;
        let listed = client
            .list_pages::<R>(settings.namespace.as_deref(), &settings.params, |page| {
                count += page.len();
                for object in page {
                    objects.insert(ObjectKey::of(&object), object);
                }
            })
            .await;
        let resource_version = match listed {
            Ok(version) => version,
            Err(error) => {
                tracing::warn!(%error, "list failed");
                pause(&mut failures).await;
                continue;
            }
        };
        tx.send_modify(|snapshot| {
            *snapshot = Arc::new(Snapshot {
                objects,
                resource_version,
                synced: true,
            });
        });
        tracing::debug!(count, "listed");
        failures = 0;
        let listed_at = Instant::now();
        loop {
            let from = tx.borrow().resource_version.clone();
            let until = settings.relist_every.map(|every| listed_at + every);
            match watch_once::<R, C>(&client, &settings, &from, until, &tx).await {
                Ok(WatchEnd::Resume) => failures = 0,
                Ok(WatchEnd::Relist) => {
                    tracing::info!(resource_version = %from, "listing again");
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

/// One watch request, applied event by event until it ends (or `until`, time to relist).
async fn watch_once<R: Resource, C: Cache<R>>(
    client: &KubeClient,
    settings: &ReflectorSettings,
    from: &str,
    until: Option<Instant>,
    tx: &watch::Sender<Arc<Snapshot<C>>>,
) -> Result<WatchEnd, KubeError> {
    if until.is_some_and(|t| t <= Instant::now()) {
        return Ok(WatchEnd::Relist);
    }
    let mut stream = match client
        .watch::<R>(settings.namespace.as_deref(), &settings.params, from)
        .await
    {
        Ok(stream) => stream,
        Err(KubeError::Expired(_)) => return Ok(WatchEnd::Relist),
        Err(e) => return Err(e),
    };
    let deadline = async {
        match until {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            () = &mut deadline => return Ok(WatchEnd::Relist),
        };
        let Some(event) = event else {
            return Ok(WatchEnd::Resume);
        };
        match event? {
            WatchEvent::Error(status) => {
                return match KubeError::from_status(status) {
                    KubeError::Expired(_) => Ok(WatchEnd::Relist),
                    other => Err(other),
                };
            }
            // Copy-on-write: the cache is cloned only while a reader still holds the old one.
            event => {
                tx.send_modify(|snapshot| {
                    Arc::make_mut(snapshot).apply(event);
                });
            }
        }
    }
}

async fn pause(failures: &mut u32) {
    let delay = REFLECTOR_BACKOFF.delay(*failures, meshca_pki::time::random_unit());
    *failures = failures.saturating_add(1);
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{ConfigMap, ObjectMeta};

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
        let mut s = Snapshot::<ObjectMap<ConfigMap>>::default();
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
