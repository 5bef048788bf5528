//! The rotation gates' counters, kept in the issuance and revocation transactions (by the
//! SQLite issuance writer per batch, by triggers otherwise): live certificates per authority, and live identities by the bundle their
//! newest certificate carried, through renewal, batching, revocation, expiry and pruning. Runs
//! on SQLite, and on PostgreSQL when configured (always in CI).

mod common;

use std::time::SystemTime;

use common::*;
use meshca_ca::store::RevocationRecord;
use meshca_ca::{CertificateAuthority, IssueRequest, IssuedCertificate, SpiffeId, TrustDomain};
use meshca_pki::time::unix_seconds;

fn workload(name: &str) -> SpiffeId {
    TrustDomain::new(TD)
        .unwrap()
        .workload_id("default", name)
        .unwrap()
}

async fn issue_for(ca: &CertificateAuthority, name: &str, bundle_as_of: i64) -> IssuedCertificate {
    let csr = meshca_ca::VerifiedCsr::from_pem(&csr_pem(&csr_key("ec-p256"), &[])).unwrap();
    ca.issue(IssueRequest {
        csr: &csr,
        spiffe_id: &workload(name),
        requested_ttl_secs: 3600,
        requester: &requester(),
        bundle_as_of: Some(bundle_as_of),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn counters_follow_renewal_batches_revocation_and_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let ca = CertificateAuthority::start(&settings(tmp.path(), &url, None))
            .await
            .unwrap();
        let store = ca.store();
        let authority = ca.current_authority().id().to_string();
        let now = unix_seconds(SystemTime::now());
        let live = || store.count_live_certificates(&authority, now);
        let renewal = |since| store.identity_renewal(since, now);

        let a_first = issue_for(&ca, "a", 100).await;
        issue_for(&ca, "b", 100).await;
        let a_renewed = issue_for(&ca, "a", 200).await;
        assert_eq!(live().await.unwrap(), 3, "{dialect}: every certificate");
        let r = renewal(200).await.unwrap();
        assert_eq!((r.live, r.renewed), (2, 1), "{dialect}: a renewed, b not");
        let r = renewal(100).await.unwrap();
        assert_eq!((r.live, r.renewed), (2, 2), "{dialect}");
        // Per certificate, a's first one (another pod of the same identity) still counts.
        let c = store.certificate_renewal(200, now).await.unwrap();
        assert_eq!((c.live, c.renewed), (3, 1), "{dialect}");

        // Concurrent renewals of one identity go through the group commit together: the
        // identity is still counted once, by its newest certificate.
        let many = (0..16).map(|_| issue_for(&ca, "c", 300));
        futures_util::future::join_all(many).await;
        let r = renewal(300).await.unwrap();
        assert_eq!((r.live, r.renewed), (3, 1), "{dialect}: c once");
        assert_eq!(live().await.unwrap(), 19, "{dialect}");
        let c = store.certificate_renewal(300, now).await.unwrap();
        assert_eq!(
            (c.live, c.renewed),
            (19, 16),
            "{dialect}: every c certificate"
        );

        let revoke = |certificate: &IssuedCertificate| RevocationRecord {
            serial: certificate.serial.to_hex(),
            reason: "keyCompromise".into(),
            revoked_at: now,
            actor: "test".into(),
        };
        // Revoking an identity's older certificate leaves the identity counted by its newest.
        assert!(store.insert_revocation(&revoke(&a_first)).await.unwrap());
        assert_eq!(live().await.unwrap(), 18, "{dialect}");
        let r = renewal(200).await.unwrap();
        assert_eq!((r.live, r.renewed), (3, 2), "{dialect}: a still counted");

        // Revoking an identity's newest certificate takes it out of both counts.
        assert!(store.insert_revocation(&revoke(&a_renewed)).await.unwrap());
        assert_eq!(live().await.unwrap(), 17, "{dialect}");
        let r = renewal(200).await.unwrap();
        assert_eq!(
            (r.live, r.renewed),
            (2, 1),
            "{dialect}: b and c live, c renewed"
        );
        let c = store.certificate_renewal(200, now).await.unwrap();
        assert_eq!(
            (c.live, c.renewed),
            (17, 16),
            "{dialect}: the revoked ones left"
        );

        // Past their expiry nothing is live; pruning then leaves the sums as they were.
        let later = now + 3600 + 20;
        assert_eq!(
            store
                .count_live_certificates(&authority, later)
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.identity_renewal(0, later).await.unwrap().live, 0);
        assert_eq!(store.certificate_renewal(0, later).await.unwrap().live, 0);
        store.prune_counters(later + 3600).await.unwrap();
        assert_eq!(live().await.unwrap(), 0, "{dialect}: pruned rows are gone");
        // A new certificate after pruning counts from zero again.
        issue_for(&ca, "a", 400).await;
        assert_eq!(live().await.unwrap(), 1, "{dialect}");
        assert_eq!(renewal(400).await.unwrap().renewed, 1, "{dialect}");
    }
}
