//! `meshca.v1.TrustBundleService/Watch`: the trust bundle at connect and on every change, so
//! agents pick up new roots (a reloaded `root-cert.pem`, a rotation) without waiting for their
//! next certificate.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshca_ca::x509::ParsedCert;
use meshca_pki::TrustBundle;
use meshca_proto::meshca::v1 as pb;
use meshca_proto::meshca::v1::trust_bundle_service_server::TrustBundleService;
use meshca_proto::meshca::v1::WatchTrustBundleRequest;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::metrics::RaMetrics;
use crate::service::authenticate_request;
use crate::trust::TrustBundles;

#[derive(Clone, Debug)]
pub struct TrustBundleWatch {
    bundles: TrustBundles,
    auth: Arc<Authenticator>,
    metrics: Arc<RaMetrics>,
    watchers: Arc<BundleWatchers>,
}

/// The agents connected to this replica's trust-bundle stream, and which roots (by SHA-256
/// fingerprint) each was last sent, so the admin API can say how far a rotation has reached.
#[derive(Debug, Default)]
pub struct BundleWatchers {
    next_id: AtomicU64,
    sent: Mutex<HashMap<u64, Vec<String>>>,
}

/// Removes a watcher when its stream ends.
struct WatcherGuard {
    id: u64,
    watchers: Arc<BundleWatchers>,
}

/// The bundle as the stream sends it.
pub fn message_of(bundle: &TrustBundle) -> pb::TrustBundle {
    pb::TrustBundle {
        version: bundle.version().to_string(),
        roots_pem: bundle.roots_pem(),
        tainted_authority_ids: bundle.tainted_authority_ids().to_vec(),
        by_trust_domain: bundle
            .by_trust_domain()
            .iter()
            .map(|(trust_domain, roots)| pb::TrustDomainRoots {
                trust_domain: trust_domain.clone(),
                roots_pem: roots.iter().map(ParsedCert::to_pem).collect(),
            })
            .collect(),
    }
}

// === impl BundleWatchers ===

impl BundleWatchers {
    fn register(self: &Arc<Self>) -> WatcherGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Vec::new());
        WatcherGuard {
            id,
            watchers: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<String>>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (watchers that were sent a bundle holding this root, watchers connected).
    pub fn propagation(&self, root_fingerprint: &str) -> (usize, usize) {
        let sent = self.lock();
        let reached = sent
            .values()
            .filter(|roots| roots.iter().any(|r| r == root_fingerprint))
            .count();
        (reached, sent.len())
    }

    /// Watchers connected, and per root how many were sent a bundle holding it: this
    /// replica's report to the others.
    pub fn snapshot(&self) -> (usize, BTreeMap<String, i64>) {
        let sent = self.lock();
        let mut received = BTreeMap::new();
        for root in sent.values().flatten() {
            *received.entry(root.clone()).or_default() += 1;
        }
        (sent.len(), received)
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.watchers.lock().remove(&self.id);
    }
}

// === impl TrustBundleWatch ===

impl TrustBundleWatch {
    pub fn new(
        bundles: TrustBundles,
        auth: Arc<Authenticator>,
        metrics: Arc<RaMetrics>,
        watchers: Arc<BundleWatchers>,
    ) -> Self {
        Self {
            bundles,
            auth,
            metrics,
            watchers,
        }
    }
}

#[tonic::async_trait]
impl TrustBundleService for TrustBundleWatch {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::TrustBundle, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchTrustBundleRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (caller, _) = authenticate_request(&self.auth, &self.metrics, &request).await?;
        tracing::debug!(spiffe_id = %caller.spiffe_id, "trust-bundle watcher connected");
        let mut last_version: Option<String> = None;
        let guard = self.watchers.register();
        // The current bundle first (consistent with the authorities right now), then each
        // new version.
        let mut watch = self.bundles.watch();
        watch.mark_unchanged();
        let first = tokio_stream::once(self.bundles.current());
        let stream = first
            .chain(WatchStream::from_changes(watch))
            .filter_map(move |bundle| {
                if last_version.as_deref() == Some(bundle.version()) {
                    return None;
                }
                last_version = Some(bundle.version().to_string());
                // Counted when the stream yields it to the transport, i.e. once the previous
                // message was written: the closest a one-way stream gets to "received".
                guard
                    .watchers
                    .lock()
                    .insert(guard.id, bundle.fingerprints().to_vec());
                Some(Ok(message_of(&bundle)))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
