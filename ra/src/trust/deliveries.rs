//! How far a root has reached the meshca agents of every replica: each replica reports its
//! trust-bundle streams to the shared store every few seconds, and a gate adds the other
//! replicas' fresh reports to its own live count. A replica that stops reporting (it died)
//! drops out after [`REPORT_FRESH_SECS`], and so do its agents, which reconnect elsewhere.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_ca::store::{BundleDelivery, StoreError};
use meshca_ca::Store;
use meshca_pki::time::unix_seconds;

use super::stream::BundleWatchers;

/// How often a replica reports.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A report older than this no longer counts.
pub const REPORT_FRESH_SECS: i64 = 15;

/// This replica's watchers and its name in the store.
#[derive(Clone, Debug)]
pub struct AgentDeliveries {
    watchers: Arc<BundleWatchers>,
    store: Store,
    replica: String,
}

impl AgentDeliveries {
    /// Starts reporting `watchers` to `store` under a name of its own.
    pub fn start(watchers: Arc<BundleWatchers>, store: Store) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "meshca".into());
        let mut nonce = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut nonce);
        let deliveries = Self {
            watchers,
            store,
            replica: format!("{host}-{}", hex::encode(nonce)),
        };
        tokio::spawn(deliveries.clone().report());
        deliveries
    }

    async fn report(self) {
        let mut ticker = tokio::time::interval(REPORT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.store.is_closed() {
                return;
            }
            let (connected, received) = self.watchers.snapshot();
            let delivery = BundleDelivery {
                replica: self.replica.clone(),
                connected: connected as i64,
                received,
            };
            let now = unix_seconds(SystemTime::now());
            if let Err(error) = self.store.report_bundle_delivery(&delivery, now).await {
                tracing::warn!(%error, "reporting trust-bundle deliveries failed; retrying");
            }
        }
    }

    /// (agents sent a bundle holding this root, agents connected), on every replica: this one's
    /// as of now, the others' as of their last report.
    pub async fn propagation(&self, root_fingerprint: &str) -> Result<(usize, usize), StoreError> {
        let (mut received, mut connected) = self.watchers.propagation(root_fingerprint);
        let since = unix_seconds(SystemTime::now()) - REPORT_FRESH_SECS;
        for other in self.store.bundle_deliveries(since).await? {
            if other.replica == self.replica {
                continue;
            }
            connected += other.connected.max(0) as usize;
            received += other
                .received
                .get(root_fingerprint)
                .copied()
                .unwrap_or(0)
                .max(0) as usize;
        }
        Ok((received, connected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another replica's fresh report adds its agents; a stale one (a replica that died) does
    /// not.
    #[tokio::test]
    async fn other_replicas_agents_count_while_their_reports_are_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::default_sqlite_url(tmp.path()))
            .await
            .unwrap();
        let here = AgentDeliveries::start(Arc::default(), store.clone());
        let now = unix_seconds(SystemTime::now());
        let report = |replica: &str, connected, received: &[(&str, i64)]| BundleDelivery {
            replica: replica.into(),
            connected,
            received: received.iter().map(|(f, n)| (f.to_string(), *n)).collect(),
        };
        store
            .report_bundle_delivery(&report("b", 3, &[("new", 2), ("old", 3)]), now)
            .await
            .unwrap();
        store
            .report_bundle_delivery(&report("dead", 5, &[("old", 5)]), now - 60)
            .await
            .unwrap();
        assert_eq!(here.propagation("new").await.unwrap(), (2, 3));
        assert_eq!(here.propagation("old").await.unwrap(), (3, 3));
        // A newer report from the same replica replaces its last one.
        store
            .report_bundle_delivery(&report("b", 3, &[("new", 3)]), now)
            .await
            .unwrap();
        assert_eq!(here.propagation("new").await.unwrap(), (3, 3));
    }
}
