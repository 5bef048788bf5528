//! A plugged-in `cacerts` directory (Istio's layout) followed on disk: polled, and new
//! material published when it changes and validates. Rotation here is the operator's: they
//! change the directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::cacerts;
use crate::config::CacertsChange;
use crate::metrics::CaMetrics;
use crate::rotation::AuthoritySet;
use meshca_pki::time::unix_seconds;

/// Polls `dir` and publishes new material when it changes and validates. A bad update is
/// logged and counted, and the previous authority keeps signing.
pub(super) fn spawn_reloader(
    dir: PathBuf,
    mut seen: Vec<u8>,
    interval: Duration,
    on_change: CacertsChange,
    sender: Weak<watch::Sender<Arc<AuthoritySet>>>,
    metrics: Arc<CaMetrics>,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(sender) = sender.upgrade() else {
                return;
            };
            let current = cacerts::fingerprint(&dir);
            if current == seen {
                continue;
            }
            seen = current;
            reload_once(&dir, on_change, &sender, &metrics);
        }
    });
}

fn reload_once(
    dir: &Path,
    on_change: CacertsChange,
    sender: &watch::Sender<Arc<AuthoritySet>>,
    metrics: &CaMetrics,
) {
    match cacerts::load_dir(dir, SystemTime::now()) {
        Ok(authority) => {
            let current = sender.borrow().clone();
            let new_key = authority.id() != current.active().id();
            if new_key && on_change == CacertsChange::Refuse {
                metrics
                    .cacerts_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    dir = %dir.display(),
                    running = %current.active().id(),
                    found = %authority.id(),
                    "plugged-in CA directory now holds a different signing key and \
                     ca.cacerts_on_change is \"refuse\"; still signing with the running one"
                );
                return;
            }
            metrics.cacerts_reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                dir = %dir.display(),
                authority = %authority.id(),
                previous = %current.active().id(),
                "plugged-in CA changed; new issuances use the new material"
            );
            let now = unix_seconds(SystemTime::now());
            sender.send_replace(Arc::new(current.with_new_active(authority, "cacerts", now)));
        }
        Err(error) => {
            metrics
                .cacerts_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                dir = %dir.display(),
                %error,
                "plugged-in CA changed but does not validate; still signing with the previous material"
            );
        }
    }
}
