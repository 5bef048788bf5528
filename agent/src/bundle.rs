//! The trust bundle the agent serves: the roots from the last CA response together with the
//! RA's trust-bundle stream, so a root added during a rotation reaches workloads before their
//! next certificate does.

use std::sync::Arc;

use meshca_proto::meshca::v1::trust_bundle_service_client::TrustBundleServiceClient;
use meshca_proto::meshca::v1::WatchTrustBundleRequest;
use tokio::sync::watch;

use crate::client::CaClient;
use crate::credential::Credential;
use crate::timing::{self, Backoff};

/// Roots from the CA response, then any the stream adds, each once (compared by DER), in that
/// stable order so unchanged inputs give byte-identical bundles.
pub fn merge_roots(response_roots: &[String], stream_roots: &[String]) -> Vec<String> {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut merged = Vec::new();
    for root in response_roots.iter().chain(stream_roots) {
        let der = pem::parse(root)
            .map(pem::Pem::into_contents)
            .unwrap_or_default();
        if !seen.contains(&der) {
            seen.push(der);
            merged.push(root.clone());
        }
    }
    merged
}

/// Follows the RA's trust-bundle stream, reconnecting with backoff, and publishes each bundle's
/// roots on `tx` until every receiver is gone.
pub async fn follow_trust_bundle(client: CaClient, tx: watch::Sender<Arc<Vec<String>>>) {
    let mut attempt = 0u32;
    loop {
        let mut request = tonic::Request::new(WatchTrustBundleRequest {});
        let failure = match client.authorize(&mut request).await {
            Err(e) => e.to_string(),
            Ok(()) => {
                let mut rpc = TrustBundleServiceClient::new(client.channel());
                match rpc.watch(request).await {
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            tokio::select! {
                                message = stream.message() => match message {
                                    Ok(Some(bundle)) => {
                                        attempt = 0;
                                        tracing::info!(version = %bundle.version, roots = bundle.roots_pem.len(), "trust bundle received");
                                        tx.send_replace(Arc::new(bundle.roots_pem));
                                    }
                                    Ok(None) => break "stream ended".to_string(),
                                    Err(status) => break format!("{:?}: {}", status.code(), status.message()),
                                },
                                _ = tx.closed() => return,
                            }
                        }
                    }
                }
            }
        };
        let delay = Backoff::FAST.delay(attempt, timing::random_unit());
        attempt = attempt.saturating_add(1);
        tracing::warn!(error = %failure, ?delay, "trust-bundle stream interrupted; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Publishes on `served` the current credential with its roots merged with the stream's,
/// whenever either changes.
pub async fn combine(
    mut credential: watch::Receiver<Option<Arc<Credential>>>,
    mut stream_roots: watch::Receiver<Arc<Vec<String>>>,
    served: watch::Sender<Option<Arc<Credential>>>,
) {
    loop {
        let current = credential.borrow_and_update().clone();
        let extra = stream_roots.borrow_and_update().clone();
        let next = current.map(|c| {
            let mut merged = (*c).clone();
            merged.roots_pem = merge_roots(&c.roots_pem, &extra);
            Arc::new(merged)
        });
        served.send_if_modified(|old| {
            let changed = match (old.as_ref(), next.as_ref()) {
                (Some(a), Some(b)) => a.chain_pem != b.chain_pem || a.roots_pem != b.roots_pem,
                (None, None) => false,
                _ => true,
            };
            if changed {
                *old = next.clone();
            }
            changed
        });
        tokio::select! {
            changed = credential.changed() => if changed.is_err() { return },
            changed = stream_roots.changed() => if changed.is_err() { return },
            _ = served.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(byte: u8) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", vec![byte; 8]))
    }

    #[test]
    fn merge_keeps_response_order_then_adds_new_roots_once() {
        let (a, b, c) = (cert(1), cert(2), cert(3));
        assert_eq!(merge_roots(std::slice::from_ref(&a), &[]), vec![a.clone()]);
        assert_eq!(
            merge_roots(&[a.clone(), b.clone()], &[b.clone(), c.clone(), a.clone()]),
            vec![a.clone(), b.clone(), c.clone()]
        );
        // Same certificate, different PEM line endings: still one root.
        let a_crlf = a.replace('\n', "\r\n");
        assert_eq!(merge_roots(std::slice::from_ref(&a), &[a_crlf]), vec![a]);
    }
}
