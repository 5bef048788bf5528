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
use crate::timing::RetryClass;
use meshca_pki::time::random_unit;
use meshca_pki::timing as pki_timing;

/// Why the CA refuses an identity (its answer), while it does; cleared by the next issuance.
pub type Refusal = watch::Sender<Option<Arc<str>>>;

/// Keeps `identity`'s credential fresh and published on `tx` until every receiver is gone.
/// Rotates at the grace point; failures back off (fast for transient codes, slow for
/// refusals) while the last good credential stays published until it expires. A refusal's
/// reason is published on `refusal` so that the identity's clients can be told.
pub async fn keep_fresh(
    client: CaClient,
    identity: WorkloadIdentity,
    tx: watch::Sender<Option<Arc<Credential>>>,
    metrics: Arc<AgentMetrics>,
    mut bundle: watch::Receiver<Arc<StreamBundle>>,
    refusal: Refusal,
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
                let at = pki_timing::rotation_time(
                    credential.received_at.max(credential.not_before),
                    credential.not_after,
                    identity.grace_ratio,
                    identity.grace_jitter,
                    random_unit(),
                );
                tracing::info!(
                    spiffe_id = %identity.spiffe_id,
                    not_after = %humantime::format_rfc3339_seconds(credential.not_after),
                    "certificate renewed"
                );
                tx.send_replace(Some(Arc::new(credential)));
                refusal.send_if_modified(|r| r.take().is_some());
                pki_timing::delay_until(at, SystemTime::now())
            }
            Err(error) => {
                let class = error.retry_class();
                let delay = class.backoff().delay(attempt, random_unit());
                attempt = attempt.saturating_add(1);
                metrics.retry_scheduled();
                match class {
                    RetryClass::Fast => {
                        tracing::warn!(spiffe_id = %identity.spiffe_id, %error, ?delay, "certificate request failed; retrying")
                    }
                    RetryClass::Slow => {
                        tracing::error!(spiffe_id = %identity.spiffe_id, %error, ?delay, "certificate request refused; retrying slowly");
                        refusal.send_replace(Some(error.to_string().into()));
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use meshca_proto::istio::v1::auth::istio_certificate_service_server::{
        IstioCertificateService, IstioCertificateServiceServer,
    };
    use meshca_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
    use tokio::sync::mpsc;
    use tokio::time::Instant;
    use tonic::{Code, Request, Response, Status};

    use super::*;
    use crate::credential::tests::{authority, response, ID};
    use crate::credential::KeyType;
    use crate::timing;

    /// An RA in process: each call takes the next scripted answer (`None` signs, as the RA
    /// would; a code fails with it; signing once the script is spent) and reports when it came.
    struct ScriptedRa {
        authority: meshca_pki::Authority,
        script: Mutex<VecDeque<Option<Code>>>,
        calls: mpsc::UnboundedSender<(Instant, Option<Code>)>,
    }

    #[tonic::async_trait]
    impl IstioCertificateService for ScriptedRa {
        async fn create_certificate(
            &self,
            request: Request<IstioCertificateRequest>,
        ) -> Result<Response<IstioCertificateResponse>, Status> {
            let failure = self.script.lock().unwrap().pop_front().flatten();
            self.calls.send((Instant::now(), failure)).unwrap();
            if let Some(code) = failure {
                return Err(Status::new(code, "scripted failure"));
            }
            let csr = request.into_inner().csr;
            Ok(Response::new(IstioCertificateResponse {
                cert_chain: response(&self.authority, &csr, ID),
            }))
        }
    }

    /// The rotation loop running against a [`ScriptedRa`], with no socket in between.
    struct Loop {
        calls: mpsc::UnboundedReceiver<(Instant, Option<Code>)>,
        published: watch::Receiver<Option<Arc<Credential>>>,
        bundle: watch::Sender<Arc<StreamBundle>>,
        metrics: Arc<AgentMetrics>,
        authority_id: String,
    }

    // === impl Loop ===

    impl Loop {
        /// Rotation at exactly half the lifetime (no jitter), so its time can be computed.
        fn start(script: &[Option<Code>]) -> Self {
            let authority = authority();
            let authority_id = hex::encode(authority.key_id());
            let (calls_tx, calls) = mpsc::unbounded_channel();
            let ra = IstioCertificateServiceServer::new(ScriptedRa {
                authority,
                script: Mutex::new(script.iter().copied().collect()),
                calls: calls_tx,
            });
            let identity = WorkloadIdentity {
                spiffe_id: ID.into(),
                key_type: KeyType::EcP256,
                ttl: Duration::from_secs(3600),
                grace_ratio: 0.5,
                grace_jitter: 0.0,
                asked_as: Default::default(),
            };
            let (tx, published) = watch::channel(None);
            let (bundle, bundle_rx) = watch::channel(Arc::default());
            let metrics = Arc::new(AgentMetrics::default());
            let client = CaClient::with_service(ra, None, "Kubernetes");
            tokio::spawn(keep_fresh(
                client,
                identity,
                tx,
                metrics.clone(),
                bundle_rx,
                watch::Sender::new(None),
            ));
            Self {
                calls,
                published,
                bundle,
                metrics,
                authority_id,
            }
        }

        async fn next_call(&mut self) -> (Instant, Option<Code>) {
            self.calls.recv().await.expect("the loop is running")
        }

        async fn next_credential(&mut self) -> Arc<Credential> {
            self.published.changed().await.expect("the loop is running");
            let current = self.published.borrow_and_update().clone();
            current.expect("a credential, not a withdrawal")
        }

        fn taint(&self, authority_id: &str) {
            self.bundle.send_replace(Arc::new(StreamBundle {
                tainted_authority_ids: vec![authority_id.to_string()],
                ..StreamBundle::default()
            }));
        }
    }

    /// How long after accepting `credential` the loop should ask again.
    fn rotation_delay(credential: &Credential) -> Duration {
        let from = credential.received_at.max(credential.not_before);
        let at = pki_timing::rotation_time(from, credential.not_after, 0.5, 0.0, 0.5);
        at.duration_since(credential.received_at).unwrap()
    }

    /// `waited` is `expected`, give or take the loop's own run time before it sleeps (under a
    /// second of the wall clock) and Tokio's millisecond timer resolution.
    fn assert_waited(waited: Duration, expected: Duration) {
        let early = expected.saturating_sub(Duration::from_secs(1));
        let late = expected + Duration::from_millis(1);
        assert!(
            (early..=late).contains(&waited),
            "waited {waited:?}, expected {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_the_rotation_time_or_at_once_when_the_issuer_is_tainted() {
        let mut agent = Loop::start(&[]);
        let (first_call, _) = agent.next_call().await;
        let first = agent.next_credential().await;
        let expected = rotation_delay(&first);
        assert!(expected > Duration::from_secs(1790), "{expected:?}");

        // Another authority tainted: not ours, so no early rotation.
        agent.taint("00ff");
        let (second_call, _) = agent.next_call().await;
        assert_waited(second_call - first_call, expected);
        let second = agent.next_credential().await;
        assert_ne!(second.key_pem, first.key_pem, "a fresh key per renewal");

        // Ours tainted: replaced now, not at its rotation time.
        agent.taint(&agent.authority_id.clone());
        let (third_call, _) = agent.next_call().await;
        assert_eq!(third_call - second_call, Duration::ZERO);
        agent.next_credential().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_ca_is_retried_fast_when_transient_and_slowly_when_refused() {
        let failures = [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::PermissionDenied,
        ];
        let script: Vec<Option<Code>> = std::iter::once(None).chain(failures.map(Some)).collect();
        let mut agent = Loop::start(&script);
        let (first_call, _) = agent.next_call().await;
        let first = agent.next_credential().await;

        let (mut previous, failure) = agent.next_call().await;
        assert_eq!(failure, Some(Code::Unavailable));
        assert_waited(previous - first_call, rotation_delay(&first));
        for (attempt, code) in failures.into_iter().enumerate() {
            // Until it expires, the last good credential is what is served.
            let held = agent.published.borrow().clone().unwrap();
            assert_eq!(held.chain_pem, first.chain_pem);

            let (call, next_failure) = agent.next_call().await;
            assert_eq!(next_failure, failures.get(attempt + 1).copied());
            let waited = call - previous;
            let class = timing::retry_class(code);
            let backoff = class.backoff();
            let attempt = attempt as u32;
            let (shortest, longest) = (backoff.delay(attempt, 0.0), backoff.delay(attempt, 1.0));
            assert!(
                (shortest..=longest + Duration::from_millis(1)).contains(&waited),
                "after {code:?}: waited {waited:?}, not in {shortest:?}..={longest:?}"
            );
            match class {
                RetryClass::Fast => assert!(waited < Duration::from_secs(1), "{code:?}"),
                RetryClass::Slow => assert!(waited >= Duration::from_secs(15), "{code:?}"),
            }
            previous = call;
        }
        let renewed = agent.next_credential().await;
        assert_ne!(renewed.chain_pem, first.chain_pem);
        let text = agent.metrics.render(&[]);
        assert!(
            text.contains("\nmeshca_agent_csr_failure_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmeshca_agent_csr_retry_count 3\n"),
            "{text}"
        );
    }
}
