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
    _lease: Option<Lease>,
}

// === impl Workloads ===

impl Workloads {
    /// The credential `request`'s client is to be served: `PERMISSION_DENIED` with the reason
    /// when it cannot be attested, `RESOURCE_EXHAUSTED` when the agent holds as many
    /// identities as it may and all are in use.
    pub async fn assign<T>(&self, request: &Request<T>) -> Result<Assigned, Status> {
        match self {
            Self::Itself(served) => Ok(Assigned {
                served: served.clone(),
                workload: None,
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
                Ok(Assigned {
                    served: lease.served.clone(),
                    workload: Some(workload),
                    _lease: Some(lease),
                })
            }
        }
    }
}
