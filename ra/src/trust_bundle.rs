//! `meshca.v1.TrustBundleService/Watch`: the trust bundle at connect and on every change, so
//! agents pick up new roots (a reloaded `root-cert.pem`, a rotation) without waiting for their
//! next certificate.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshca_ca::{AuthoritySet, CertificateAuthority};
use meshca_proto::meshca::v1::trust_bundle_service_server::TrustBundleService;
use meshca_proto::meshca::v1::{TrustBundle, WatchTrustBundleRequest};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::metrics::RaMetrics;
use crate::service::authenticate_request;

#[derive(Clone, Debug)]
pub struct TrustBundleWatch {
    ca: CertificateAuthority,
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

/// The bundle as agents see it: the roots of every authority that is not revoked, and the ids
/// of tainted ones. The version is a hash of the content, so replicas agree on it and a change
/// that leaves both alone (a new intermediate) sends nothing.
pub fn bundle_of(set: &AuthoritySet) -> TrustBundle {
    let roots = set.bundle();
    let tainted = set.tainted_ids();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for root in &roots {
        digest.update(root.der());
    }
    for id in &tainted {
        digest.update(b"tainted:");
        digest.update(id.as_bytes());
    }
    TrustBundle {
        version: hex_prefix(digest.finish().as_ref()),
        roots_pem: roots.iter().map(|r| r.to_pem()).collect(),
        tainted_authority_ids: tainted,
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn root_fingerprints(bundle: &TrustBundle) -> Vec<String> {
    bundle
        .roots_pem
        .iter()
        .filter_map(|p| pem::parse(p).ok())
        .map(|p| {
            hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                p.contents(),
            ))
        })
        .collect()
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
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.watchers.lock().remove(&self.id);
    }
}

// === impl TrustBundleWatch ===

impl TrustBundleWatch {
    pub fn new(
        ca: CertificateAuthority,
        auth: Arc<Authenticator>,
        metrics: Arc<RaMetrics>,
        watchers: Arc<BundleWatchers>,
    ) -> Self {
        Self {
            ca,
            auth,
            metrics,
            watchers,
        }
    }
}

#[tonic::async_trait]
impl TrustBundleService for TrustBundleWatch {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<TrustBundle, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchTrustBundleRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (caller, _) = authenticate_request(&self.auth, &self.metrics, &request).await?;
        tracing::debug!(spiffe_id = %caller.spiffe_id, "trust-bundle watcher connected");
        let mut last_version: Option<String> = None;
        let guard = self.watchers.register();
        let stream = WatchStream::new(self.ca.watch_authorities()).filter_map(move |set| {
            let bundle = bundle_of(&set);
            if last_version.as_deref() == Some(bundle.version.as_str()) {
                return None;
            }
            last_version = Some(bundle.version.clone());
            // Counted when the stream yields it to the transport, i.e. once the previous
            // message was written: the closest a one-way stream gets to "received".
            guard
                .watchers
                .lock()
                .insert(guard.id, root_fingerprints(&bundle));
            Some(Ok(bundle))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
