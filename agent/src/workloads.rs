//! Which credential a socket client is served. With `attestation = "none"` every client gets
//! the agent's own; otherwise the client's peer credentials (taken by the kernel when it
//! connected, `SO_PEERCRED`) are attested and it gets its own identity from the pool, held for
//! as long as its stream lives. A client that cannot be attested is served nothing.

use std::sync::Arc;

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::attest::{Attestor, PeerCredentials, WorkloadId};
use crate::identities::{IdentityPool, Lease, Served};
use crate::metrics::AgentMetrics;

/// The credential source shared by the SDS and Workload API servers.
#[derive(Clone, Debug)]
pub enum Workloads {
    /// The agent's own identity, for every client.
    Itself(Served),
    /// Each client attested, and served its own identity.
    Attested {
        attestor: Arc<Attestor>,
        pool: IdentityPool,
        metrics: Arc<AgentMetrics>,
    },
}

/// What one stream is served; the identity's key is kept while this lives.
#[derive(Debug)]
pub struct Assigned {
    pub served: Served,
    /// Who the client was attested as (None: the agent's own identity).
    pub workload: Option<WorkloadId>,
    /// What the kernel said about an attested client.
    pub peer: Option<PeerCredentials>,
    _lease: Option<Lease>,
}

// === impl Workloads ===

impl Workloads {
    /// The credential `request`'s client is to be served: `PERMISSION_DENIED` with the reason
    /// when it cannot be attested or the CA refuses its identity (and no certificate of it is
    /// held), `RESOURCE_EXHAUSTED` when the agent holds as many identities as it may and all
    /// are in use. An attested client's identity without a certificate yet is waited for.
    pub async fn assign<T>(&self, request: &Request<T>) -> Result<Assigned, Status> {
        match self {
            Self::Itself(served) => Ok(Assigned {
                served: served.clone(),
                workload: None,
                peer: None,
                _lease: None,
            }),
            Self::Attested {
                attestor,
                pool,
                metrics,
            } => {
                let peer = request
                    .extensions()
                    .get::<UdsConnectInfo>()
                    .and_then(|info| info.peer_cred)
                    .map(PeerCredentials::from);
                let workload = attestor.attest(peer).await.map_err(|error| {
                    metrics.unattested(error.reason());
                    tracing::warn!(?peer, %error, "socket client not attested; serving nothing");
                    Status::permission_denied(format!("workload attestation failed: {error}"))
                })?;
                let lease = pool.acquire(&workload).map_err(|error| {
                    metrics.unattested("identity_limit");
                    tracing::warn!(%workload, %error, "no room for another identity");
                    Status::resource_exhausted(error.to_string())
                })?;
                if let Some(reason) = first_answer(&lease).await {
                    metrics.unattested("refused_by_ca");
                    return Err(Status::permission_denied(format!(
                        "the CA refuses identity {workload}: {reason}"
                    )));
                }
                Ok(Assigned {
                    served: lease.served.clone(),
                    workload: Some(workload),
                    peer,
                    _lease: Some(lease),
                })
            }
        }
    }
}

/// Waits until `lease`'s identity holds a certificate (None) or the CA refuses it (the
/// reason). A certificate still held wins over a refusal of its renewal: it stays valid.
async fn first_answer(lease: &Lease) -> Option<Arc<str>> {
    let (mut served, mut refused) = (lease.served.clone(), lease.refused.clone());
    let reason = tokio::select! {
        biased;
        _ = served.wait_for(Option::is_some) => return None,
        reason = refused.wait_for(Option::is_some) => reason.ok().and_then(|r| r.clone()),
    };
    if lease.served.borrow().is_some() {
        return None;
    }
    reason
}
