//! The rotation loop: keeps one workload credential fresh, renewing at the grace point (or at
//! once when its issuer is tainted) and backing off after failures, while the last good
//! credential stays published. The timing is `timing`'s; this loop only sleeps and publishes.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::bundle::{self, StreamBundle};
use crate::client::{CaClient, WorkloadIdentity};
use crate::credential::Credential;
use crate::metrics::AgentMetrics;
use crate::timing::{self, RetryClass};

/// Keeps `identity`'s credential fresh and published on `tx` until every receiver is gone.
/// Rotates at the grace point; failures back off (fast for transient codes, slow for
/// refusals) while the last good credential stays published until it expires.
pub async fn keep_fresh(
    client: CaClient,
    identity: WorkloadIdentity,
    tx: watch::Sender<Option<Arc<Credential>>>,
    metrics: Arc<AgentMetrics>,
    mut bundle: watch::Receiver<Arc<StreamBundle>>,
) {
    let mut attempt = 0u32;
    let mut bundle_open = true;
    loop {
        let started = std::time::Instant::now();
        let result = client.fetch(&identity).await;
        metrics.csr_sent(started.elapsed(), result.is_ok());
        let wait = match result {
            Ok(credential) => {
                attempt = 0;
                let at = timing::rotation_time(
                    credential.received_at.max(credential.not_before),
                    credential.not_after,
                    identity.grace_ratio,
                    identity.grace_jitter,
                    timing::random_unit(),
                );
                tracing::info!(
                    spiffe_id = %identity.spiffe_id,
                    not_after = %humantime::format_rfc3339_seconds(credential.not_after),
                    "certificate renewed"
                );
                tx.send_replace(Some(Arc::new(credential)));
                timing::delay_until(at, SystemTime::now())
            }
            Err(error) => {
                let class = error.retry_class();
                let delay = class.backoff().delay(attempt, timing::random_unit());
                attempt = attempt.saturating_add(1);
                metrics.retry_scheduled();
                match class {
                    RetryClass::Fast => {
                        tracing::warn!(spiffe_id = %identity.spiffe_id, %error, ?delay, "certificate request failed; retrying")
                    }
                    RetryClass::Slow => {
                        tracing::error!(spiffe_id = %identity.spiffe_id, %error, ?delay, "certificate request refused; retrying slowly")
                    }
                }
                let expired = tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|c| c.not_after <= SystemTime::now());
                if expired {
                    tx.send_replace(None);
                }
                delay
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = tx.closed() => return,
                changed = bundle.changed(), if bundle_open => {
                    if changed.is_err() {
                        // No bundle stream any more (shutting down): just wait.
                        bundle_open = false;
                        continue;
                    }
                    let tainted = tx.borrow().as_ref().is_some_and(|c| {
                        bundle::issued_by_tainted(c, &bundle.borrow_and_update())
                    });
                    if tainted {
                        tracing::warn!(spiffe_id = %identity.spiffe_id, "the certificate's issuer was tainted; rotating now");
                        break;
                    }
                }
            }
        }
    }
}
