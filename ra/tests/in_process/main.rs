//! The RA's two front doors driven in process, without a socket: the REST router (and the web
//! console's pages on it) through `tower::ServiceExt::oneshot`, and `CreateCertificate` called
//! on the service with the peer a TLS connection would have attached. Each test runs a real CA
//! on a temp-dir SQLite store.

mod console;
mod create_certificate;
mod rest;

use std::path::Path;
use std::time::Duration;

use meshca_ca::audit::AuditRecord;
use meshca_ca::store::AuditFilter;
use meshca_ca::{CaConfig, CaSettings, CertificateAuthority, StoreConfig, TrustDomain};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A CA with a self-signed root, recording into SQLite under `dir`.
pub async fn start_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::start(&CaSettings {
        trust_domain: TrustDomain::new(TRUST_DOMAIN).unwrap(),
        data_dir: dir.to_path_buf(),
        store: StoreConfig::default(),
        ca: CaConfig::default(),
    })
    .await
    .expect("CA starts on a temp-dir store")
}

/// A CSR with a fresh P-256 key that asks for `uris`, PEM.
pub fn csr_pem(uris: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    let uri = |u: &&str| rcgen::SanType::URI(u.to_string().try_into().unwrap());
    params.subject_alt_names = uris.iter().map(uri).collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// The `action` events of the audit log, newest first, once there are at least `count` of
/// them (denials and refusals are recorded in the background, after the answer); fails after
/// 5 s.
pub async fn audit_events(
    ca: &CertificateAuthority,
    action: &str,
    count: usize,
) -> Vec<AuditRecord> {
    let filter = AuditFilter {
        action: Some(action.to_string()),
        ..AuditFilter::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = ca.store().audit_events(&filter, None, 100).await.unwrap();
        if events.len() >= count {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {action} events after 5 s, expected {count}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
