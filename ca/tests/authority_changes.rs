//! Replicas sharing PostgreSQL hear of a rotation step when it commits (LISTEN/NOTIFY from a
//! trigger on `authorities`), not at their next poll; other writes, and other schemas' steps,
//! wake nobody. SQLite's one process only polls.

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshca_ca::keys::KeyType;
use meshca_ca::{CertificateAuthority, PrepareRequest};

/// Far longer than any notification takes: a wake-up before it is a push, not the poll.
const LONG_POLL: Duration = Duration::from_secs(60);
/// How long a listener is watched to show that nothing woke it.
const QUIET: Duration = Duration::from_millis(400);

/// Whether `changes` stays asleep for `QUIET` (it returns early only on a wake-up).
async fn stays_quiet(changes: &mut meshca_ca::store::authority_changes::AuthorityChanges) -> bool {
    let started = Instant::now();
    changes.next(QUIET).await;
    started.elapsed() >= QUIET
}

#[tokio::test]
async fn a_rotation_step_wakes_the_other_replicas_when_it_commits() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let ca = CertificateAuthority::start(&settings(&tmp.path().join(&dialect), &url, None))
            .await
            .unwrap();
        let replica = open_store(&url).await;
        let mut changes = replica.authority_changes().await;
        if dialect == "sqlite" {
            assert!(!changes.pushed(), "SQLite has one process: it polls");
            assert!(stays_quiet(&mut changes).await);
            continue;
        }
        assert!(changes.pushed(), "the listener is up on PostgreSQL");

        // Negative controls: issuing writes other tables, and a deployment in another schema
        // of the same database rotating its own authorities, wake nobody here.
        issue(&ca, &csr_pem(&csr_key("ec-p256"), &[]), 0)
            .await
            .unwrap();
        assert!(
            stays_quiet(&mut changes).await,
            "an issuance woke the listener"
        );
        let neighbour_url = meshca_ca::testing::postgres_url("neighbour").await.unwrap();
        let neighbour = CertificateAuthority::start(&settings(
            &tmp.path().join("neighbour"),
            &neighbour_url,
            None,
        ))
        .await
        .unwrap();
        neighbour
            .prepare_authority(PrepareRequest::Generate(KeyType::EcP256), ("token", "test"))
            .await
            .unwrap();
        assert!(
            stays_quiet(&mut changes).await,
            "another schema's rotation woke the listener"
        );

        // The step itself: pushed within milliseconds, not at the next poll.
        let stepped = Instant::now();
        ca.prepare_authority(PrepareRequest::Generate(KeyType::EcP256), ("token", "test"))
            .await
            .unwrap();
        changes.next(LONG_POLL).await;
        let heard = stepped.elapsed();
        eprintln!("{dialect}: the other replica heard of the step after {heard:?}");
        assert!(
            heard < Duration::from_secs(5),
            "no notification: woke only after {heard:?}"
        );
        assert!(
            stays_quiet(&mut changes).await,
            "one step, one wake-up: nothing else is pending"
        );
    }
}
