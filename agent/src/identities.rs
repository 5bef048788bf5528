//! The identities a node agent holds for the workloads it attested: one key and certificate
//! per identity that has a connected consumer, each kept fresh by its own rotation loop
//! (asking the RA as a node agent, `ImpersonatedIdentity`), shared by every stream of that
//! identity, dropped a grace period after its last stream closes, and at most
//! `max_identities` at once so that a flood of callers cannot make the agent hold keys
//! without bound.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use meshca_pki::TrustDomain;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::attest::WorkloadId;
use crate::bundle::{self, StreamBundle};
use crate::client::{AskedAs, CaClient, WorkloadIdentity};
use crate::credential::Credential;
use crate::metrics::AgentMetrics;
use crate::refresh::keep_fresh;

/// A workload's served credential: its certificate with the trust bundle merged in, `None`
/// until the first one arrives (or after it expired without a renewal).
pub type Served = watch::Receiver<Option<Arc<Credential>>>;

/// How every identity's certificate is requested and kept.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub trust_domain: TrustDomain,
    /// Key type, TTL and rotation timing; `spiffe_id` is replaced per identity.
    pub template: WorkloadIdentity,
    /// How long an identity's key is kept after its last stream closed, so a restarting
    /// workload gets its certificate at once.
    pub grace: Duration,
    pub max_identities: usize,
}

/// The identities held, shared by the SDS and Workload API servers.
#[derive(Clone, Debug)]
pub struct IdentityPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    settings: PoolSettings,
    client: CaClient,
    bundle: watch::Receiver<Arc<StreamBundle>>,
    metrics: Arc<AgentMetrics>,
    entries: Mutex<HashMap<WorkloadId, Entry>>,
}

#[derive(Debug)]
struct Entry {
    served: Served,
    refused: Refused,
    leases: usize,
    /// When the last lease was returned; None while leased.
    idle_since: Option<Instant>,
}

/// Why the CA refuses an identity, while it does.
pub type Refused = watch::Receiver<Option<Arc<str>>>;

/// A stream's hold on its identity; the identity's key is kept while any lease lives.
#[derive(Debug)]
pub struct Lease {
    pool: Weak<PoolInner>,
    id: WorkloadId,
    pub served: Served,
    pub refused: Refused,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error("this agent already holds {max} identities (agent.max_identities), all in use")]
    Full { max: usize },
}

/// What `/metrics` reports of one held identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldIdentity {
    pub id: WorkloadId,
    pub streams: usize,
    pub has_certificate: bool,
    /// The CA's last refusal, while it refuses.
    pub refused: Option<Arc<str>>,
}

/// The identities a node agent holds for attested clients: streams on each, whether it has a
/// certificate, and whether the CA refuses it (the reason is in the log and told to the
/// identity's clients). At most `agent.max_identities` series each.
pub fn render_metrics(held: &[HeldIdentity]) -> String {
    let mut out = String::new();
    type Sample = fn(&HeldIdentity) -> usize;
    let families: [(&str, &str, Sample); 3] = [
        (
            "meshca_agent_identity_streams",
            "Streams served each held identity (zero during its grace period).",
            |h| h.streams,
        ),
        (
            "meshca_agent_identity_certified",
            "1 when the held identity has a certificate to serve.",
            |h| usize::from(h.has_certificate),
        ),
        (
            "meshca_agent_identity_refused",
            "1 while the CA refuses the held identity (its last answer was a refusal).",
            |h| usize::from(h.refused.is_some()),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for h in held {
            let _ = writeln!(out, "{name}{{identity=\"{}\"}} {}", h.id, value(h));
        }
    }
    out
}

// === impl IdentityPool ===

impl IdentityPool {
    pub fn new(
        settings: PoolSettings,
        client: CaClient,
        bundle: watch::Receiver<Arc<StreamBundle>>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                settings,
                client,
                bundle,
                metrics,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A lease on `id`'s credential, starting its rotation loop if no stream holds it yet.
    /// When the pool is full, the identity idle the longest makes room; if none is idle, the
    /// caller is refused.
    pub fn acquire(&self, id: &WorkloadId) -> Result<Lease, PoolError> {
        let mut entries = self.inner.lock();
        if let Some(entry) = entries.get_mut(id) {
            entry.leases += 1;
            entry.idle_since = None;
            return Ok(self.lease(id, entry));
        }
        if entries.len() >= self.inner.settings.max_identities {
            let oldest_idle = entries
                .iter()
                .filter_map(|(k, e)| e.idle_since.map(|t| (t, k.clone())))
                .min()
                .map(|(_, k)| k);
            match oldest_idle {
                Some(victim) => {
                    entries.remove(&victim);
                    tracing::info!(identity = %victim, "dropped an idle identity to make room");
                }
                None => {
                    return Err(PoolError::Full {
                        max: self.inner.settings.max_identities,
                    })
                }
            }
        }
        let (served, refused) = self.inner.start(id);
        let entry = Entry {
            served,
            refused,
            leases: 1,
            idle_since: None,
        };
        let lease = self.lease(id, &entry);
        entries.insert(id.clone(), entry);
        tracing::info!(identity = %id, "holding a new identity");
        Ok(lease)
    }

    fn lease(&self, id: &WorkloadId, entry: &Entry) -> Lease {
        Lease {
            pool: Arc::downgrade(&self.inner),
            id: id.clone(),
            served: entry.served.clone(),
            refused: entry.refused.clone(),
        }
    }

    /// Every identity held, with its streams, for metrics and tests.
    pub fn held(&self) -> Vec<HeldIdentity> {
        let entries = self.inner.lock();
        let mut held: Vec<HeldIdentity> = entries
            .iter()
            .map(|(id, e)| HeldIdentity {
                id: id.clone(),
                streams: e.leases,
                has_certificate: e.served.borrow().is_some(),
                refused: e.refused.borrow().clone(),
            })
            .collect();
        held.sort_by(|a, b| a.id.cmp(&b.id));
        held
    }
}

// === impl PoolInner ===

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkloadId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `id`'s rotation loop; it (and its key) ends when every receiver of what it
    /// serves is gone.
    fn start(&self, id: &WorkloadId) -> (Served, Refused) {
        let identity = WorkloadIdentity {
            spiffe_id: id.spiffe_id(&self.settings.trust_domain).to_string(),
            asked_as: AskedAs::NodeAgent,
            ..self.settings.template.clone()
        };
        let (fresh_tx, fresh_rx) = watch::channel(None);
        let (refusal_tx, refused) = watch::channel(None);
        tokio::spawn(keep_fresh(
            self.client.clone(),
            identity,
            fresh_tx,
            self.metrics.clone(),
            self.bundle.clone(),
            refusal_tx,
        ));
        let (served_tx, served_rx) = watch::channel(None);
        tokio::spawn(bundle::combine(fresh_rx, self.bundle.clone(), served_tx));
        (served_rx, refused)
    }

    /// A lease was returned: an identity with no streams left is dropped after the grace
    /// period unless a stream took it again meanwhile.
    fn release(self: Arc<Self>, id: &WorkloadId) {
        let since = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(id) else {
                return;
            };
            entry.leases = entry.leases.saturating_sub(1);
            if entry.leases > 0 {
                return;
            }
            let now = Instant::now();
            entry.idle_since = Some(now);
            now
        };
        let grace = self.settings.grace;
        let pool = Arc::downgrade(&self);
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let Some(pool) = pool.upgrade() else { return };
            let mut entries = pool.lock();
            if entries
                .get(&id)
                .is_some_and(|e| e.leases == 0 && e.idle_since == Some(since))
            {
                entries.remove(&id);
                tracing::info!(identity = %id, "dropped an identity no stream uses");
            }
        });
    }
}

// === impl Lease ===

impl Lease {
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.release(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use meshca_proto::istio::v1::auth::istio_certificate_service_server::{
        IstioCertificateService, IstioCertificateServiceServer,
    };
    use meshca_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::client::impersonated_identity;
    use crate::credential::tests::{authority, response};
    use crate::credential::KeyType;

    /// An RA in process that grants every `ImpersonatedIdentity` and records what it was asked.
    struct NodeAgentRa {
        authority: meshca_pki::Authority,
        asked: Arc<StdMutex<Vec<Option<String>>>>,
    }

    #[tonic::async_trait]
    impl IstioCertificateService for NodeAgentRa {
        async fn create_certificate(
            &self,
            request: Request<IstioCertificateRequest>,
        ) -> Result<Response<IstioCertificateResponse>, Status> {
            let body = request.into_inner();
            let impersonated = impersonated_identity(&body);
            self.asked.lock().unwrap().push(impersonated.clone());
            let id = impersonated.ok_or_else(|| Status::unauthenticated("not a node agent"))?;
            if id.contains("/ns/far/") {
                return Err(Status::unauthenticated("no pod of far/far on this node"));
            }
            Ok(Response::new(IstioCertificateResponse {
                cert_chain: response(&self.authority, &body.csr, &id),
            }))
        }
    }

    fn pool(max: usize, grace: Duration) -> (IdentityPool, Arc<StdMutex<Vec<Option<String>>>>) {
        let asked = Arc::new(StdMutex::new(Vec::new()));
        let ra = IstioCertificateServiceServer::new(NodeAgentRa {
            authority: authority(),
            asked: asked.clone(),
        });
        let client = CaClient::with_service(ra, None, "Kubernetes");
        let (_bundle_tx, bundle) = watch::channel(Arc::default());
        std::mem::forget(_bundle_tx);
        let settings = PoolSettings {
            trust_domain: TrustDomain::new("cluster.local").unwrap(),
            template: WorkloadIdentity {
                spiffe_id: String::new(),
                key_type: KeyType::EcP256,
                ttl: Duration::from_secs(3600),
                grace_ratio: 0.5,
                grace_jitter: 0.0,
                asked_as: AskedAs::Itself,
            },
            grace,
            max_identities: max,
        };
        let pool = IdentityPool::new(settings, client, bundle, Arc::default());
        (pool, asked)
    }

    fn id(ns: &str, sa: &str) -> WorkloadId {
        WorkloadId::new(ns, sa).unwrap()
    }

    async fn certificate(lease: &mut Lease) -> Arc<Credential> {
        lease
            .served
            .wait_for(Option::is_some)
            .await
            .unwrap()
            .clone()
            .unwrap()
    }

    #[tokio::test]
    async fn each_identity_gets_its_own_key_asked_for_as_a_node_agent() {
        let (pool, asked) = pool(8, Duration::from_secs(60));
        let mut web = pool.acquire(&id("web", "web")).unwrap();
        let mut api = pool.acquire(&id("api", "api")).unwrap();
        let mut web_again = pool.acquire(&id("web", "web")).unwrap();
        let web_cert = certificate(&mut web).await;
        let api_cert = certificate(&mut api).await;
        assert_eq!(web_cert.spiffe_id, "spiffe://cluster.local/ns/web/sa/web");
        assert_eq!(api_cert.spiffe_id, "spiffe://cluster.local/ns/api/sa/api");
        assert_ne!(web_cert.key_pem, api_cert.key_pem);
        // Two streams of one identity share its key and its one rotation loop.
        assert_eq!(certificate(&mut web_again).await.key_pem, web_cert.key_pem);
        let mut seen = asked.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                Some("spiffe://cluster.local/ns/api/sa/api".to_string()),
                Some("spiffe://cluster.local/ns/web/sa/web".to_string()),
            ]
        );
        let held = pool.held();
        assert_eq!(
            held.iter()
                .map(|h| (h.id.to_string(), h.streams))
                .collect::<Vec<_>>(),
            [("api/api".to_string(), 1), ("web/web".to_string(), 2)]
        );
    }

    #[tokio::test]
    async fn an_identity_is_dropped_a_grace_period_after_its_last_stream() {
        let (pool, asked) = pool(8, Duration::from_millis(200));
        let first = pool.acquire(&id("web", "web")).unwrap();
        let second = pool.acquire(&id("web", "web")).unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(pool.held().len(), 1, "a stream still holds it");
        drop(second);
        // Taken again within the grace period: the same key, no new request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut back = pool.acquire(&id("web", "web")).unwrap();
        let kept = certificate(&mut back).await;
        let calls = asked.lock().unwrap().len();
        drop(back);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(pool.held().is_empty(), "{:?}", pool.held());
        // After that, a new key.
        let mut fresh = pool.acquire(&id("web", "web")).unwrap();
        assert_ne!(certificate(&mut fresh).await.key_pem, kept.key_pem);
        assert_eq!(asked.lock().unwrap().len(), calls + 1);
    }

    #[tokio::test]
    async fn a_full_pool_makes_room_only_from_idle_identities() {
        let (pool, _) = pool(2, Duration::from_secs(60));
        let a = pool.acquire(&id("a", "a")).unwrap();
        let _b = pool.acquire(&id("b", "b")).unwrap();
        assert_eq!(
            pool.acquire(&id("c", "c")).unwrap_err(),
            PoolError::Full { max: 2 }
        );
        drop(a);
        let _c = pool.acquire(&id("c", "c")).unwrap();
        let held: Vec<String> = pool.held().iter().map(|h| h.id.to_string()).collect();
        assert_eq!(held, ["b/b", "c/c"]);
    }

    #[tokio::test]
    async fn a_refused_identity_says_so_until_it_is_issued() {
        let (pool, _) = pool(8, Duration::from_secs(60));
        let mut far = pool.acquire(&id("far", "far")).unwrap();
        let reason = far.refused.wait_for(Option::is_some).await.unwrap().clone();
        assert!(
            reason.unwrap().contains("no pod of far/far on this node"),
            "the RA's own words reach the clients"
        );
        let mut web = pool.acquire(&id("web", "web")).unwrap();
        certificate(&mut web).await;
        let metrics = render_metrics(&pool.held());
        for line in [
            "meshca_agent_identity_refused{identity=\"far/far\"} 1",
            "meshca_agent_identity_refused{identity=\"web/web\"} 0",
            "meshca_agent_identity_certified{identity=\"far/far\"} 0",
            "meshca_agent_identity_certified{identity=\"web/web\"} 1",
            "meshca_agent_identity_streams{identity=\"web/web\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
    }
}
