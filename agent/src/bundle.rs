//! The trust bundle the agent serves: the RA's trust-bundle stream once it has delivered (it is
//! pushed on every change, so a root added or removed during a rotation reaches workloads
//! before their next certificate does), the last CA response's until then.

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
    /// The same roots by trust domain.
    pub by_trust_domain: Vec<(String, Vec<String>)>,
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

/// The credential as served: its roots are the stream's bundle once the stream has delivered
/// one (it is always at least as new as the answer: the RA pushes every change, and an answer
/// composed just before a change may arrive just after it), the answer's until then.
pub fn with_stream_roots(credential: &Credential, stream: &StreamBundle) -> Credential {
    let mut served = credential.clone();
    if !stream.roots_pem.is_empty() {
        served.roots_pem = stream.roots_pem.clone();
        served.roots_by_trust_domain = stream.by_trust_domain.clone();
    }
    served
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
                                            by_trust_domain: bundle
                                                .by_trust_domain
                                                .into_iter()
                                                .map(|d| (d.trust_domain, d.roots_pem))
                                                .collect(),
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

/// Publishes on `served` the current credential with the roots to serve
/// ([`with_stream_roots`]), whenever either changes.
pub async fn combine(
    mut credential: watch::Receiver<Option<Arc<Credential>>>,
    mut stream_roots: watch::Receiver<Arc<StreamBundle>>,
    served: watch::Sender<Option<Arc<Credential>>>,
) {
    loop {
        let current = credential.borrow_and_update().clone();
        let extra = stream_roots.borrow_and_update().clone();
        let next = current.map(|c| Arc::new(with_stream_roots(&c, &extra)));
        served.send_if_modified(|old| {
            let changed = match (old.as_ref(), next.as_ref()) {
                (Some(a), Some(b)) => {
                    a.chain_pem != b.chain_pem
                        || a.roots_pem != b.roots_pem
                        || a.roots_by_trust_domain != b.roots_by_trust_domain
                }
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
            roots_by_trust_domain: Vec::new(),
            not_before: std::time::SystemTime::UNIX_EPOCH,
            not_after: std::time::SystemTime::UNIX_EPOCH,
            received_at: std::time::SystemTime::UNIX_EPOCH,
            authority_key_id: Some(vec![0xab, 0xcd]),
        };
        let bundle = |ids: &[&str]| StreamBundle {
            roots_pem: Vec::new(),
            by_trust_domain: Vec::new(),
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

    /// After a revocation the stream drops the old root while the last answer still holds
    /// it: what is served follows the stream, not the union of the two.
    #[test]
    fn the_streams_bundle_replaces_the_answers_once_it_has_arrived() {
        let (old, new, athenz) = (cert(1), cert(2), cert(3));
        let credential = Credential {
            spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
            key_pem: String::new(),
            chain_pem: Vec::new(),
            roots_pem: vec![old.clone(), new.clone()],
            roots_by_trust_domain: Vec::new(),
            not_before: std::time::SystemTime::UNIX_EPOCH,
            not_after: std::time::SystemTime::UNIX_EPOCH,
            received_at: std::time::SystemTime::UNIX_EPOCH,
            authority_key_id: None,
        };
        let nothing_yet = with_stream_roots(&credential, &StreamBundle::default());
        assert_eq!(nothing_yet.roots_pem, [old.clone(), new.clone()]);
        let stream = StreamBundle {
            roots_pem: vec![new.clone(), athenz.clone()],
            by_trust_domain: vec![
                ("athenz.example".into(), vec![athenz.clone()]),
                ("cluster.local".into(), vec![new.clone()]),
            ],
            tainted_authority_ids: Vec::new(),
        };
        let served = with_stream_roots(&credential, &stream);
        assert_eq!(served.roots_pem, [new, athenz]);
        assert_eq!(served.roots_by_trust_domain, stream.by_trust_domain);
    }
}
