//! The trust bundle the agent serves: the roots from the last CA response together with the
//! RA's trust-bundle stream, so a root added during a rotation reaches workloads before their
//! next certificate does.

use std::sync::Arc;

use meshca_proto::meshca::v1::trust_bundle_service_client::TrustBundleServiceClient;
use meshca_proto::meshca::v1::WatchTrustBundleRequest;
use tokio::sync::watch;

use crate::client::CaClient;
use crate::credential::Credential;
use crate::timing::FAST_RETRY;
use meshca_pki::time::random_unit;

/// What the RA's trust-bundle stream last said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamBundle {
    pub roots_pem: Vec<String>,
    /// Authorities (hex key ids) whose certificates must be replaced now.
    pub tainted_authority_ids: Vec<String>,
}

/// Whether a credential must be replaced before its rotation time: its issuer was tainted.
pub fn issued_by_tainted(credential: &Credential, bundle: &StreamBundle) -> bool {
    credential.authority_key_id.as_ref().is_some_and(|aki| {
        let id = hex::encode(aki);
        bundle
            .tainted_authority_ids
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&id))
    })
}

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

/// Follows the RA's trust-bundle stream, reconnecting with backoff, and publishes each bundle
/// on `tx` until every receiver is gone.
pub async fn follow_trust_bundle(client: CaClient, tx: watch::Sender<Arc<StreamBundle>>) {
    let mut attempt = 0u32;
    loop {
        let mut request = tonic::Request::new(WatchTrustBundleRequest {});
        let failure = match client.authorize(&mut request).await {
            Err(e) => e.to_string(),
            Ok(()) => {
                let mut rpc = TrustBundleServiceClient::new(client.service());
                match rpc.watch(request).await {
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            tokio::select! {
                                message = stream.message() => match message {
                                    Ok(Some(bundle)) => {
                                        attempt = 0;
                                        tracing::info!(version = %bundle.version, roots = bundle.roots_pem.len(), tainted = ?bundle.tainted_authority_ids, "trust bundle received");
                                        client.trust_roots(&bundle.roots_pem);
                                        tx.send_replace(Arc::new(StreamBundle {
                                            roots_pem: bundle.roots_pem,
                                            tainted_authority_ids: bundle.tainted_authority_ids,
                                        }));
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
        let delay = FAST_RETRY.delay(attempt, random_unit());
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
    mut stream_roots: watch::Receiver<Arc<StreamBundle>>,
    served: watch::Sender<Option<Arc<Credential>>>,
) {
    loop {
        let current = credential.borrow_and_update().clone();
        let extra = stream_roots.borrow_and_update().clone();
        let next = current.map(|c| {
            let mut merged = (*c).clone();
            merged.roots_pem = merge_roots(&c.roots_pem, &extra.roots_pem);
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

    #[test]
    fn tainted_issuer_means_rotate_now() {
        let credential = Credential {
            spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
            key_pem: String::new(),
            chain_pem: Vec::new(),
            roots_pem: Vec::new(),
            not_before: std::time::SystemTime::UNIX_EPOCH,
            not_after: std::time::SystemTime::UNIX_EPOCH,
            received_at: std::time::SystemTime::UNIX_EPOCH,
            authority_key_id: Some(vec![0xab, 0xcd]),
        };
        let bundle = |ids: &[&str]| StreamBundle {
            roots_pem: Vec::new(),
            tainted_authority_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        assert!(issued_by_tainted(&credential, &bundle(&["00", "abcd"])));
        assert!(issued_by_tainted(&credential, &bundle(&["ABCD"])));
        assert!(!issued_by_tainted(&credential, &bundle(&["abce"])));
        assert!(!issued_by_tainted(&credential, &bundle(&[])));
        let no_aki = Credential {
            authority_key_id: None,
            ..credential
        };
        assert!(!issued_by_tainted(&no_aki, &bundle(&["abcd"])));
    }

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
