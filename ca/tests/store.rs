//! The CA's store: self-signed roots kept sealed and reused, concurrent bootstraps, hot reload
//! of a plugged-in directory, rotation steps reaching other processes on the same store, the
//! group commit and its writers, and the audit chain under concurrent appends. Runs on SQLite,
//! and on PostgreSQL when configured (always in CI).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use meshca_ca::keys::KeyType;
use meshca_ca::store::EntryOutcome::{Recorded, RenewalRevoked, SerialTaken};
use meshca_ca::store::{BatchEntry, EntryOutcome, IssuanceWriter, RevocationRecord};
use meshca_ca::testing::{issuance_event, issuance_record};
use meshca_ca::{CertificateAuthority, IssueError, IssueRequest, SpiffeId, VerifiedCsr};

#[tokio::test]
async fn foreign_trust_domain_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let ca = CertificateAuthority::start(&settings(tmp.path(), &store, Some(&istio_samples())))
        .await
        .unwrap();
    let csr = VerifiedCsr::from_pem(&csr_pem(&csr_key("ec-p256"), &[])).unwrap();
    let other = SpiffeId::new("spiffe://other.example/ns/a/sa/b").unwrap();
    let err = ca
        .issue(IssueRequest {
            csr: &csr,
            spiffe_id: &other,
            requested_ttl_secs: 0,
            requester: &requester(),
            bundle_as_of: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, IssueError::ForeignTrustDomain { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn self_signed_root_is_sealed_in_the_store_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let data = tmp.path().join(format!("data-{dialect}"));
        let mut s = settings(&data, &url, None);
        s.ca.self_signed_key_type = KeyType::EcP384;
        let first = CertificateAuthority::start(&s).await.unwrap();
        let root = first.current_authority().root().clone();
        assert_eq!(root.subject().to_string(), "O=cluster.local");
        assert_eq!(first.current_authority().key_description(), "ec-p384");

        // The KEK was generated 0600 in the data dir; the store holds only the sealed key.
        use std::os::unix::fs::PermissionsExt;
        let kek_path = data.join("key-encryption-key");
        assert_eq!(
            std::fs::metadata(&kek_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let stored = first.store().active_authority().await.unwrap().unwrap();
        let pkcs8 = first
            .current_authority()
            .key()
            .unwrap()
            .pkcs8_der()
            .to_vec();
        assert!(!stored
            .sealed_key
            .windows(pkcs8.len())
            .any(|w| w == pkcs8.as_slice()));
        let secret_tail = &pkcs8[pkcs8.len() - 32..];
        assert!(!stored.sealed_key.windows(32).any(|w| w == secret_tail));

        // A restart reuses the root.
        let second = CertificateAuthority::start(&s).await.unwrap();
        assert_eq!(second.current_authority().root(), &root, "{dialect}");
        let issued = issue(&second, &csr_pem(&csr_key("ec-p256"), &[]), 0)
            .await
            .unwrap();
        assert_eq!(
            issued.chain_pem.len(),
            1,
            "[leaf]: the root signs, the RA adds the bundle"
        );
        openssl_verify(tmp.path(), &root.to_pem(), "", &issued.chain_pem[0]).unwrap();

        // Another KEK cannot open it, and says so.
        std::fs::write(&kek_path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
        let err = CertificateAuthority::start(&s)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("key-encryption key"), "{dialect}: {err}");
    }
}

#[tokio::test]
async fn configured_kek_file_must_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let mut s = settings(tmp.path(), &url, None);
    s.ca.key_encryption_key_file = Some(tmp.path().join("mounted/kek"));
    let err = CertificateAuthority::start(&s)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mounted/kek: configured key_encryption_key_file does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bootstraps_agree_on_one_root() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let data = tmp.path().join(format!("race-{dialect}"));
        // Every process shares the KEK file, as replicas share a Secret.
        meshca_ca::kek::KeyEncryptionKey::load_or_generate(&data.join("key-encryption-key"))
            .unwrap();
        let s = settings(&data, &url, None);
        let starts = (0..6).map(|_| {
            let s = s.clone();
            tokio::spawn(async move { CertificateAuthority::start(&s).await })
        });
        let mut roots = Vec::new();
        for handle in starts {
            let ca = handle.await.unwrap().unwrap();
            roots.push(ca.current_authority().root().der().to_vec());
        }
        roots.dedup();
        assert_eq!(roots.len(), 1, "{dialect}: replicas disagree on the root");
    }
}

#[tokio::test]
async fn hot_reload_swaps_valid_material_and_keeps_old_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    // Kubernetes layout: files are symlinks through `..data` to a timestamped directory.
    let dir = tmp.path().join("cacerts");
    std::fs::create_dir_all(&dir).unwrap();
    let first = GeneratedChain::new(KeyType::EcP256);
    let second = GeneratedChain::new(KeyType::EcP256);
    let v1 = dir.join("..2026_01_01");
    first.write(&v1);
    std::os::unix::fs::symlink("..2026_01_01", dir.join("..data")).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
    }
    let url = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let ca = CertificateAuthority::start(&settings(tmp.path(), &url, Some(&dir)))
        .await
        .unwrap();
    assert_eq!(ca.current_authority().root(), &first.root.cert);

    let swap = |target: &str| {
        let tmp_link = dir.join("..data_tmp");
        std::os::unix::fs::symlink(target, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, dir.join("..data")).unwrap();
    };
    // Istio's root change: the new chain with a root-cert.pem listing both roots.
    let v2 = dir.join("..2026_02_01");
    second.write(&v2);
    std::fs::write(
        v2.join("root-cert.pem"),
        format!("{}{}", first.root.pem(), second.root.pem()),
    )
    .unwrap();
    swap("..2026_02_01");
    let mut watch = ca.watch_authorities();
    let changed = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
    assert!(
        changed.is_ok(),
        "no reload; failures={}",
        ca.metrics().cacerts_reload_failures.load(Ordering::Relaxed)
    );
    assert_eq!(ca.current_authority().root(), &second.root.cert);
    // The first authority stays trusted as `old` while root-cert.pem lists its root: its
    // certificates verify until they rotate.
    let set = ca.authorities();
    let states: Vec<_> = set.entries().iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            meshca_ca::AuthorityState::Old,
            meshca_ca::AuthorityState::Active
        ]
    );
    let bundle: Vec<_> = set.bundle().into_iter().cloned().collect();
    assert_eq!(bundle, [first.root.cert.clone(), second.root.cert.clone()]);
    let issued = issue(&ca, &csr_pem(&csr_key("ec-p256"), &[]), 0)
        .await
        .unwrap();
    assert_eq!(
        issued.authority_id,
        meshca_ca::AuthorityId::from_key_id(&second.signing.cert.key_id())
    );

    // A broken update (key from another chain) is refused; the second chain keeps signing.
    let broken = dir.join("..2026_03_01");
    second.write(&broken);
    std::fs::write(broken.join("ca-key.pem"), first.signing.key.pkcs8_pem()).unwrap();
    swap("..2026_03_01");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ca.metrics().cacerts_reload_failures.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reload failure never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ca.current_authority().root(), &second.root.cert);
    assert!(issue(&ca, &csr_pem(&csr_key("ec-p256"), &[]), 0)
        .await
        .is_ok());
}

#[tokio::test]
async fn refuse_mode_keeps_the_running_authority_when_the_directory_changes_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cacerts");
    let first = GeneratedChain::new(KeyType::EcP256);
    first.write(&dir);
    let url = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let mut settings = settings(tmp.path(), &url, Some(&dir));
    settings.ca.cacerts_on_change = meshca_ca::config::CacertsChange::Refuse;
    let ca = CertificateAuthority::start(&settings).await.unwrap();

    GeneratedChain::new(KeyType::EcP256).write(&dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ca.metrics().cacerts_reload_failures.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "refusal never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ca.current_authority().root(), &first.root.cert);
    assert_eq!(ca.authorities().entries().len(), 1);
    let issued = issue(&ca, &csr_pem(&csr_key("ec-p256"), &[]), 0)
        .await
        .unwrap();
    assert_eq!(
        issued.authority_id,
        meshca_ca::AuthorityId::from_key_id(&first.signing.cert.key_id())
    );
}

#[tokio::test]
async fn a_rotation_through_one_process_reaches_another_sharing_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let data = tmp.path().join(format!("replicas-{dialect}"));
        let s = settings(&data, &url, None);
        let first = CertificateAuthority::start(&s).await.unwrap();
        let second = CertificateAuthority::start(&s).await.unwrap();
        assert_eq!(
            first.current_authority().id(),
            second.current_authority().id()
        );

        let prepared = first
            .prepare_authority(
                meshca_ca::PrepareRequest::Generate(KeyType::EcP384),
                ("token", "test"),
            )
            .await
            .unwrap();
        let id = prepared.authority.id().to_string();
        first
            .step_authority(
                &id,
                meshca_ca::rotation::RotationStep::Activate,
                ("token", "test"),
                &[],
            )
            .await
            .unwrap();

        let mut watch = second.watch_authorities();
        tokio::time::timeout(Duration::from_secs(5), async {
            while watch.borrow_and_update().active().id().as_str() != id {
                watch.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{dialect}: the other process still signs with the old root"));
        let set = second.authorities();
        assert_eq!(set.entries().len(), 2, "{dialect}");
        assert_eq!(set.bundle().len(), 2, "{dialect}: both roots trusted");
        let issued = issue(&second, &csr_pem(&csr_key("ec-p256"), &[]), 0)
            .await
            .unwrap();
        assert_eq!(issued.authority_id.as_str(), id, "{dialect}");

        // Both steps are in the audit log, chained, with their actor.
        let events = first
            .store()
            .audit_events(&Default::default(), None, 100)
            .await
            .unwrap();
        let steps: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.action.starts_with("authority."))
            .map(|e| (e.action.as_str(), e.actor_principal.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                ("authority.activate", "test"),
                ("authority.prepare", "test")
            ],
            "{dialect}"
        );
        let mut chain = events.clone();
        chain.reverse();
        meshca_ca::audit::verify_chain(&chain, 0, meshca_ca::audit::GENESIS_HASH.into()).unwrap();
    }
}

/// `sslmode` in the store URL is honoured: `require` gets an encrypted connection (this
/// machine's PostgreSQL offers TLS), `disable` a plain one, and the store says which.
#[tokio::test]
async fn postgres_connections_use_tls_when_the_url_asks() {
    let Some(url) = meshca_ca::testing::postgres_url("postgres_connections_use_tls").await else {
        return;
    };
    let encrypted = open_store(&format!("{url}&sslmode=require")).await;
    assert_eq!(encrypted.connection_encrypted().await.unwrap(), Some(true));
    let plain = open_store(&format!("{url}&sslmode=disable")).await;
    assert_eq!(plain.connection_encrypted().await.unwrap(), Some(false));
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open_store(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
    assert_eq!(sqlite.connection_encrypted().await.unwrap(), None);
}

/// A storm of concurrent issuances is recorded in far fewer store transactions than
/// certificates (group commit), yet every certificate returned is on record with its audit
/// event, and the audit chain is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_issuances_share_commits_and_every_one_is_on_record() {
    const CALLS: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let ca = CertificateAuthority::start(&settings(tmp.path(), &url, Some(&istio_samples())))
            .await
            .unwrap();
        let csr = csr_pem(&csr_key("ec-p256"), &[]);
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                let (ca, csr) = (ca.clone(), csr.clone());
                tokio::spawn(async move { issue(&ca, &csr, 0).await })
            })
            .collect();
        let mut serials = std::collections::HashSet::new();
        for call in calls {
            let issued = call.await.unwrap().unwrap();
            serials.insert(issued.serial.to_hex());
        }
        assert_eq!(serials.len(), CALLS, "{dialect}");

        let rows = ca
            .store()
            .issuances_for("spiffe://cluster.local/ns/default/sa/web", 1000)
            .await
            .unwrap();
        let recorded: std::collections::HashSet<_> =
            rows.into_iter().map(|r| r.issuance.serial).collect();
        assert_eq!(
            recorded, serials,
            "{dialect}: exactly the returned certificates"
        );

        let mut events = ca
            .store()
            .audit_events(&Default::default(), None, 1000)
            .await
            .unwrap();
        let issue_events: std::collections::HashSet<_> = events
            .iter()
            .filter(|e| e.action == "certificate.issue")
            .map(|e| e.target.clone())
            .collect();
        assert_eq!(issue_events, serials, "{dialect}: one audit event each");
        events.reverse();
        meshca_ca::audit::verify_chain(&events, 0, meshca_ca::audit::GENESIS_HASH.into()).unwrap();

        let commits = ca.metrics().issuance_commits.load(Ordering::Relaxed);
        let committed = ca.metrics().issuances_committed.load(Ordering::Relaxed);
        assert_eq!(committed, CALLS as u64, "{dialect}");
        assert!(
            commits < CALLS as u64 / 2,
            "{dialect}: {CALLS} concurrent issuances took {commits} commits"
        );
    }
}

/// In a batch, an issuance whose serial is already on record is left out (and reported),
/// while the others in the same transaction are recorded with their audit events.
#[tokio::test]
async fn a_duplicate_serial_in_a_batch_leaves_the_rest_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        let mut writer = store.issuance_writer();
        assert_eq!(
            write_batch(&mut writer, &["01"]).await,
            [Recorded],
            "{dialect}"
        );
        let inserted = write_batch(&mut writer, &["01", "02"]).await;
        assert_eq!(inserted, [SerialTaken, Recorded], "{dialect}");
        assert_eq!(store.count_issuances().await.unwrap(), 2, "{dialect}");
        let targets = meshca_ca::testing::audit_targets(&store, 10).await;
        assert_eq!(targets, ["02", "01"], "{dialect}");
        // Twice in one batch: the first holder has it.
        let inserted = write_batch(&mut writer, &["03", "03"]).await;
        assert_eq!(inserted, [Recorded, SerialTaken], "{dialect}");
        assert_eq!(store.count_issuances().await.unwrap(), 3, "{dialect}");
    }
}

/// One batch through whichever writer the store has (the SQLite one is synchronous: the group
/// commit runs it on a thread of its own).
async fn write_batch(writer: &mut IssuanceWriter, serials: &[&str]) -> Vec<EntryOutcome> {
    let entries: Vec<_> = serials.iter().map(|serial| (*serial, None)).collect();
    write_entries(writer, &entries).await
}

/// [`write_batch`] with, for each serial, the serial it renews, if any.
async fn write_entries(
    writer: &mut IssuanceWriter,
    entries: &[(&str, Option<&str>)],
) -> Vec<EntryOutcome> {
    let records: Vec<_> = entries
        .iter()
        .map(|(s, _)| (issuance_record(s), issuance_event(s)))
        .collect();
    let items: Vec<_> = records
        .iter()
        .zip(entries)
        .map(|((record, audit), (_, renewal_of))| BatchEntry {
            record,
            audit,
            renewal_of: *renewal_of,
        })
        .collect();
    match writer {
        IssuanceWriter::Sqlite(writer) => writer.insert_issuances(&items),
        IssuanceWriter::Postgres(writer) => writer.insert_issuances(&items).await,
    }
    .unwrap()
}

/// A renewal whose presented certificate is revoked is left out of its batch, with its audit
/// event, by the transaction that would have recorded it; the rest of the batch goes in. On
/// PostgreSQL the writer knows the audit head here, so the batch first meets the one-statement
/// path and must leave it.
#[tokio::test]
async fn a_renewal_of_a_revoked_certificate_is_not_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        let mut writer = store.issuance_writer();
        assert_eq!(
            write_batch(&mut writer, &["0a", "0b"]).await,
            [Recorded, Recorded],
            "{dialect}"
        );
        let revocation = RevocationRecord {
            serial: "0a".into(),
            reason: "keyCompromise".into(),
            revoked_at: 1_790_000_000,
            actor: "token:ops".into(),
        };
        assert!(store.insert_revocation(&revocation).await.unwrap());

        let outcomes = write_entries(
            &mut writer,
            &[("10", Some("0a")), ("11", Some("0b")), ("12", None)],
        )
        .await;
        assert_eq!(
            outcomes,
            [
                RenewalRevoked {
                    serial: "0a".into(),
                    reason: "keyCompromise".into()
                },
                Recorded,
                Recorded
            ],
            "{dialect}"
        );
        let targets = meshca_ca::testing::audit_targets(&store, 10).await;
        assert_eq!(targets, ["12", "11", "0b", "0a"], "{dialect}");
        // Renewals of good certificates alone take the fast path again.
        assert_eq!(
            write_entries(&mut writer, &[("13", Some("0b"))]).await,
            [Recorded],
            "{dialect}"
        );
        // The control: the same issuance renewing nothing is recorded, so the revocation is
        // what refused it.
        assert_eq!(
            write_batch(&mut writer, &["10"]).await,
            [Recorded],
            "{dialect}"
        );
        assert_eq!(store.count_issuances().await.unwrap(), 6, "{dialect}");
    }
}

/// The group-commit writer on its own connection, batch after batch: with a serial already on
/// record and audit events appended by others in between, each issuance goes in once, with its
/// event, and the audit chain holds. (On PostgreSQL it sends a batch as one statement while its
/// view of the audit head is current and the ordinary way when a guess misses: both are
/// crossed here.)
#[tokio::test]
async fn the_issuance_writer_keeps_the_chain_through_other_appends_and_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        let mut writer = store.issuance_writer();
        // The first batch learns the audit head; the next ones build on it.
        assert_eq!(
            write_batch(&mut writer, &["01", "02"]).await,
            [Recorded, Recorded],
            "{dialect}"
        );
        assert_eq!(
            write_batch(&mut writer, &["03"]).await,
            [Recorded],
            "{dialect}"
        );
        // A serial on record: the batch cannot go in whole, the other one still does.
        assert_eq!(
            write_batch(&mut writer, &["01", "04"]).await,
            [SerialTaken, Recorded],
            "{dialect}"
        );
        let mut expected: Vec<String> = ["01", "02", "03", "04"].map(String::from).to_vec();
        for n in 5..45 {
            let serial = format!("{n:02}");
            assert_eq!(
                write_batch(&mut writer, &[&serial]).await,
                [Recorded],
                "{dialect}"
            );
            expected.push(serial);
            if n % 10 == 0 {
                // Someone else moves the head (a REST action, another replica).
                let target = format!("other-{n}");
                store.append_audit(&issuance_event(&target)).await.unwrap();
                expected.push(target);
            }
        }

        assert_eq!(
            store.count_issuances().await.unwrap(),
            44,
            "{dialect}: each serial once"
        );
        let mut events = store
            .audit_events(&Default::default(), None, 100)
            .await
            .unwrap();
        events.reverse();
        let targets: Vec<_> = events.iter().map(|e| e.target.clone()).collect();
        assert_eq!(
            targets, expected,
            "{dialect}: one event per issuance, in order"
        );
        meshca_ca::audit::verify_chain(&events, 0, meshca_ca::audit::GENESIS_HASH.into()).unwrap();
    }
}

#[tokio::test]
async fn verifying_the_audit_log_while_others_append_finds_no_false_break() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let store = open_store(&url).await;
        for n in 0..3 {
            let event = issuance_event(&format!("before-{n}"));
            store.append_audit(&event).await.unwrap();
        }
        // A walk that read the head just before another replica appended.
        let head = store.audit_head().await.unwrap();
        store.append_audit(&issuance_event("during")).await.unwrap();
        assert_eq!(
            store.verify_audit_log_through(head.clone()).await.unwrap(),
            Ok(head.clone()),
            "{dialect}"
        );
        // The next walk covers the new event.
        let now = store.verify_audit_log().await.unwrap().unwrap();
        assert_eq!(now.0, head.0 + 1, "{dialect}");

        // Someone with raw database access cuts the last row: still a break.
        let cut = "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)";
        let drop_guard = match &store {
            meshca_ca::store::Store::Sqlite(_) => "DROP TRIGGER audit_events_no_delete",
            meshca_ca::store::Store::Postgres(_) => {
                "DROP TRIGGER audit_events_no_change ON audit_events"
            }
        };
        for sql in [drop_guard, cut] {
            match &store {
                meshca_ca::store::Store::Sqlite(pool) => {
                    sqlx::query(sql).execute(pool).await.map(drop)
                }
                meshca_ca::store::Store::Postgres(pool) => {
                    sqlx::query(sql).execute(pool).await.map(drop)
                }
            }
            .unwrap();
        }
        let broken = store.verify_audit_log().await.unwrap().unwrap_err();
        assert_eq!(broken.seq, now.0, "{dialect}: {}", broken.reason);
        assert!(
            broken.reason.contains("its head says"),
            "{dialect}: {}",
            broken.reason
        );
    }
}
