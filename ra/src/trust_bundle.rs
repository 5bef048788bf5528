//! `meshca.v1.TrustBundleService/Watch`: the trust bundle at connect and on every change, so
//! agents pick up new roots (a reloaded `root-cert.pem`, a rotation) without waiting for their
//! next certificate.

use std::pin::Pin;
use std::sync::Arc;

use meshca_ca::{Authority, CertificateAuthority};
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
}

/// The bundle as agents see it. The version is a hash of the content, so replicas agree on
/// it and a change that leaves the roots alone (a new intermediate) sends nothing.
pub fn bundle_of(authority: &Authority) -> TrustBundle {
    let roots_pem: Vec<String> = authority.roots().iter().map(|r| r.to_pem()).collect();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for root in authority.roots() {
        digest.update(root.der());
    }
    TrustBundle {
        version: hex_prefix(digest.finish().as_ref()),
        roots_pem,
        tainted_authority_ids: Vec::new(),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

// === impl TrustBundleWatch ===

impl TrustBundleWatch {
    pub fn new(
        ca: CertificateAuthority,
        auth: Arc<Authenticator>,
        metrics: Arc<RaMetrics>,
    ) -> Self {
        Self { ca, auth, metrics }
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
        let stream = WatchStream::new(self.ca.watch_authority()).filter_map(move |authority| {
            let bundle = bundle_of(&authority);
            if last_version.as_deref() == Some(bundle.version.as_str()) {
                return None;
            }
            last_version = Some(bundle.version.clone());
            Some(Ok(bundle))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
