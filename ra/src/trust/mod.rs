//! The trust bundle this RA publishes: the CA's authority set with the extra anchors merged
//! in, as one value every consumer reads (answers, the trust-bundle stream, the REST API, the
//! root ConfigMaps), and the stream that pushes it to agents.

pub mod anchors;
pub mod deliveries;
pub mod stream;

use std::sync::Arc;

use meshca_ca::{AuthoritySet, CertificateAuthority};
use meshca_pki::{ExtraAnchor, TrustBundle};
use tokio::sync::watch;

use crate::config::TrustConfig;
pub use anchors::AnchorError;
use anchors::AnchorFiles;

/// Publishes the bundle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TrustBundles {
    ca: CertificateAuthority,
    anchors: watch::Receiver<Arc<Vec<ExtraAnchor>>>,
    published: Arc<watch::Sender<Arc<TrustBundle>>>,
}

// === impl TrustBundles ===

impl TrustBundles {
    /// Reads the anchor files (a bad one is an error naming it) and follows them and the CA's
    /// authorities from now on.
    pub fn start(ca: CertificateAuthority, config: &TrustConfig) -> Result<Self, AnchorError> {
        let files = AnchorFiles::new(&config.extra_anchors)?;
        let (anchors_tx, anchors) = watch::channel(Arc::new(files.load()?));
        files.follow(config.reload_interval, anchors_tx);
        let first = TrustBundle::new(ca.trust_domain(), ca.authorities(), &anchors.borrow());
        let published = Arc::new(watch::channel(Arc::new(first)).0);
        let bundles = Self {
            ca,
            anchors,
            published,
        };
        tokio::spawn(bundles.clone().follow());
        Ok(bundles)
    }

    /// The bundle of the CA's authorities as they are now. Built here when the follower has
    /// not caught up with a change yet, so an answer never ends in a bundle older than the
    /// authority that signed it.
    pub fn current(&self) -> Arc<TrustBundle> {
        let set = self.ca.authorities();
        let published = self.published.borrow().clone();
        if Arc::ptr_eq(published.authorities(), &set) {
            return published;
        }
        self.publish(set)
    }

    /// Each new bundle (a new version) as it is published.
    pub fn watch(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.published.subscribe()
    }

    /// The bundle's PEM text on every change, for consumers that want only that (the root
    /// ConfigMaps).
    pub fn watch_pem(&self) -> watch::Receiver<Arc<str>> {
        let mut bundles = self.watch();
        let first: Arc<str> = bundles.borrow_and_update().pem().into();
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = bundles.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                let pem: Arc<str> = bundles.borrow_and_update().pem().into();
                tx.send_if_modified(|current| {
                    let changed = **current != *pem;
                    *current = pem;
                    changed
                });
            }
        });
        rx
    }

    /// Builds the bundle of `set` with the current anchors and publishes it; watchers wake only
    /// when its content (version) changed.
    fn publish(&self, set: Arc<AuthoritySet>) -> Arc<TrustBundle> {
        let anchors = self.anchors.borrow().clone();
        let bundle = Arc::new(TrustBundle::new(self.ca.trust_domain(), set, &anchors));
        self.published.send_if_modified(|current| {
            let changed = current.version() != bundle.version();
            *current = bundle.clone();
            changed
        });
        bundle
    }

    /// Runs while the CA publishes authorities.
    async fn follow(self) {
        let mut authorities = self.ca.watch_authorities();
        let mut anchors = self.anchors.clone();
        // No anchor files: nothing follows them and their channel is closed from the start.
        let mut anchors_followed = true;
        loop {
            tokio::select! {
                changed = authorities.changed() => if changed.is_err() { return },
                changed = anchors.changed(), if anchors_followed => {
                    if changed.is_err() {
                        anchors_followed = false;
                        continue;
                    }
                }
            }
            let set = authorities.borrow_and_update().clone();
            anchors.borrow_and_update();
            self.publish(set);
        }
    }
}
