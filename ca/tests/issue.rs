//! Issuing workload certificates: the leaf profile, TTL rules, chains OpenSSL accepts, the
//! record written before the cert is returned, self-signed roots kept sealed in the store, and
//! hot reload of a plugged-in directory. Runs on SQLite, and on PostgreSQL when configured.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use common::*;
use meshca_ca::keys::KeyType;
use meshca_ca::store::IssuanceWriter;
use meshca_ca::testing::{issuance_event, issuance_record};
use meshca_ca::x509::ParsedCert;
use meshca_ca::{
    CaConfig, CaSettings, CertificateAuthority, IssueError, IssueRequest, Requester, SpiffeId,
    StoreConfig, TrustDomain, VerifiedCsr,
};
use x509_cert::ext::pkix::KeyUsages;

const TD: &str = "cluster.local";

fn settings(data_dir: &Path, store_url: &str, cacerts: Option<&Path>) -> CaSettings {
    CaSettings {
        trust_domain: TrustDomain::new(TD).unwrap(),
        data_dir: data_dir.to_path_buf(),
        store: StoreConfig {
            url: Some(store_url.to_string()),
        },
        ca: CaConfig {
            cacerts_dir: cacerts.map(Path::to_path_buf),
            cacerts_poll_interval: Duration::from_millis(100),
            ..CaConfig::default()
        },
    }
}

fn requester() -> Requester {
    Requester {
        method: "jwt".into(),
        principal: "system:serviceaccount:default:web".into(),
        peer_address: Some("10.0.0.7:41234".into()),
        cluster_id: Some("Kubernetes".into()),
    }
}

fn web_id() -> SpiffeId {
    TrustDomain::new(TD)
        .unwrap()
        .workload_id("default", "web")
        .unwrap()
}

async fn issue(
    ca: &CertificateAuthority,
    csr_pem: &str,
    ttl: i64,
) -> Result<meshca_ca::IssuedCertificate, IssueError> {
    let csr = VerifiedCsr::from_pem(csr_pem).unwrap();
    ca.issue(IssueRequest {
        csr: &csr,
        spiffe_id: &web_id(),
        requested_ttl_secs: ttl,
        requester: &requester(),
    })
    .await
}

/// Checks every field of the SPIFFE leaf profile.
fn assert_leaf_profile(leaf: &ParsedCert, signer_key_id: &[u8], rsa_key: bool) {
    assert_eq!(leaf.subject().0.len(), 0, "subject must be empty");
    assert_eq!(leaf.uri_sans(), vec![web_id().to_string()]);
    let exts = leaf.tbs().extensions.as_ref().unwrap();
    let critical = |oid: &str| {
        exts.iter()
            .find(|e| e.extn_id.to_string() == oid)
            .unwrap_or_else(|| panic!("extension {oid} missing"))
            .critical
    };
    assert!(critical("2.5.29.17"), "SAN must be critical");
    assert!(critical("2.5.29.19"), "basicConstraints must be critical");
    assert!(critical("2.5.29.15"), "keyUsage must be critical");
    assert!(!critical("2.5.29.37"));
    assert!(!leaf.ca_constraints().unwrap().ca);
    let ku = leaf.key_usage().unwrap().0;
    assert!(ku.contains(KeyUsages::DigitalSignature));
    assert_eq!(ku.contains(KeyUsages::KeyEncipherment), rsa_key);
    assert!(!ku.contains(KeyUsages::KeyCertSign));
    assert_eq!(leaf.authority_key_id().unwrap(), signer_key_id);
    assert_eq!(
        leaf.subject_key_id().unwrap(),
        meshca_ca::keys::key_identifier(leaf.public_key_bits())
    );
    let serial = leaf.serial();
    assert_eq!(serial.as_bytes().len(), 16);
    assert!(serial.as_bytes()[0] < 0x80);
}

#[tokio::test]
async fn istio_sample_ca_signs_every_allowed_key_type_and_openssl_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let ca = CertificateAuthority::start(&settings(tmp.path(), &store, Some(&istio_samples())))
        .await
        .unwrap();
    let root = String::from_utf8(sample("root-cert.pem")).unwrap();
    for kind in [
        "ec-p256", "ec-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096",
    ] {
        let key = csr_key(kind);
        let issued = issue(&ca, &csr_pem(&key, &[]), 3600).await.unwrap();
        let leaf = ParsedCert::from_der(&issued.leaf_der).unwrap();
        // Only the CSR's public key was taken.
        assert_eq!(leaf.public_key_bits(), key.public_key_raw(), "{kind}");
        assert_leaf_profile(
            &leaf,
            ca.current_authority().key_id(),
            kind.starts_with("rsa"),
        );
        assert_eq!(issued.chain_pem.len(), 3, "[leaf, ca-cert, root bundle]");
        assert_eq!(
            leaf.cert().signature_algorithm.oid.to_string(),
            "1.2.840.113549.1.1.11"
        );
        openssl_verify(
            tmp.path(),
            &root,
            &issued.chain_pem[1],
            &issued.chain_pem[0],
        )
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[tokio::test]
async fn generated_p256_chain_signs_and_openssl_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = GeneratedChain::new(KeyType::EcP256);
    let cacerts = tmp.path().join("cacerts");
    chain.write(&cacerts);
    let store = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let ca = CertificateAuthority::start(&settings(tmp.path(), &store, Some(&cacerts)))
        .await
        .unwrap();
    for kind in ["ec-p256", "ec-p384", "ed25519", "rsa-2048"] {
        let issued = issue(&ca, &csr_pem(&csr_key(kind), &[]), 0).await.unwrap();
        assert_eq!(
            issued.chain_pem[1..],
            [
                chain.signing.pem(),
                chain.intermediate.pem(),
                chain.root.pem()
            ]
        );
        let leaf = ParsedCert::from_der(&issued.leaf_der).unwrap();
        assert_leaf_profile(&leaf, &chain.signing.cert.key_id(), kind.starts_with("rsa"));
        assert_eq!(
            leaf.cert().signature_algorithm.oid.to_string(),
            "1.2.840.10045.4.3.2"
        );
        let untrusted = format!("{}{}", issued.chain_pem[1], issued.chain_pem[2]);
        openssl_verify(
            tmp.path(),
            &chain.root.pem(),
            &untrusted,
            &issued.chain_pem[0],
        )
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[tokio::test]
async fn ttl_rules_default_explicit_clamped_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    // A signing CA that expires in 2 days: a 30-day leaf is clamped to it.
    let root = TestCa::new(&CaSpec::new("CN=Root"), None);
    let signing = TestCa::new(
        &CaSpec {
            not_after: now + 2 * DAY,
            ..CaSpec::new("CN=Short Signing")
        },
        Some(&root),
    );
    let cacerts = tmp.path().join("cacerts");
    write_istio_dir(
        &cacerts,
        &signing.pem(),
        &signing.key.pkcs8_pem(),
        &root.pem(),
        "",
    );
    let store_url = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let ca = CertificateAuthority::start(&settings(tmp.path(), &store_url, Some(&cacerts)))
        .await
        .unwrap();
    let csr = csr_pem(&csr_key("ec-p256"), &[]);
    let lifetime = |issued: &meshca_ca::IssuedCertificate| {
        let leaf = ParsedCert::from_der(&issued.leaf_der).unwrap();
        let nb = leaf
            .not_before()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let na = leaf
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (now - nb, na - now)
    };
    let (back, ahead) = lifetime(&issue(&ca, &csr, 0).await.unwrap());
    assert!((119..=125).contains(&back), "backdated 2 min, got {back}");
    assert!((86395..=86400).contains(&ahead), "default 24h, got {ahead}");
    let (_, ahead) = lifetime(&issue(&ca, &csr, -1).await.unwrap());
    assert!((86395..=86400).contains(&ahead));
    let (_, ahead) = lifetime(&issue(&ca, &csr, 600).await.unwrap());
    assert!((595..=600).contains(&ahead));
    let (_, ahead) = lifetime(&issue(&ca, &csr, 30 * 86400).await.unwrap());
    let signing_left = signing
        .cert
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs() as i64;
    assert!(
        (ahead - signing_left).abs() <= 2,
        "clamped to the signing cert: {ahead} vs {signing_left}"
    );

    let before = ca.store().count_issuances().await.unwrap();
    let err = issue(&ca, &csr, 91 * 86400).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "requested TTL 91d is greater than the max allowed TTL 90d"
    );
    assert_eq!(
        ca.store().count_issuances().await.unwrap(),
        before,
        "nothing recorded"
    );
}

#[tokio::test]
async fn csr_checks_refuse_bad_signatures_and_keys() {
    let key = csr_key("ec-p256");
    let good = csr_pem(&key, &[]);
    // Flip a bit inside the signed part: the signature no longer verifies.
    let mut der = pem::parse(&good).unwrap().contents().to_vec();
    let n = der.len();
    der[n / 2] ^= 0x01;
    let err = VerifiedCsr::from_der(&der).unwrap_err().to_string();
    assert!(err.contains("signature") || err.contains("parse"), "{err}");

    // RSA-1024 and P-521 are refused, naming the type and size.
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/",
        ])
        .output()
        .unwrap();
    let err = VerifiedCsr::from_pem(&String::from_utf8(out.stdout).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("RSA-1024"), "{err}");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-521",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/",
        ])
        .output()
        .unwrap();
    let err = VerifiedCsr::from_pem(&String::from_utf8(out.stdout).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("P-521"), "{err}");

    let err = VerifiedCsr::from_pem(&"A".repeat(70_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("70000 bytes"), "{err}");

    // The requested SANs are reported, never used.
    let with_san =
        VerifiedCsr::from_pem(&csr_pem(&key, &["spiffe://evil.example/ns/x/sa/y"])).unwrap();
    assert_eq!(
        with_san.requested_uri_sans(),
        ["spiffe://evil.example/ns/x/sa/y"]
    );
}

#[tokio::test]
async fn csr_asking_for_ca_true_still_gets_a_leaf() {
    // openssl adds basicConstraints CA:TRUE to the request; the CA ignores all of it.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=admin",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local/ns/kube-system/sa/admin,DNS:evil.example",
        ])
        .output()
        .unwrap();
    let store = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let ca = CertificateAuthority::start(&settings(tmp.path(), &store, Some(&istio_samples())))
        .await
        .unwrap();
    let issued = issue(&ca, &String::from_utf8(out.stdout).unwrap(), 0)
        .await
        .unwrap();
    let leaf = ParsedCert::from_der(&issued.leaf_der).unwrap();
    assert!(!leaf.ca_constraints().unwrap().ca);
    assert_eq!(leaf.uri_sans(), vec![web_id().to_string()]);
    assert_eq!(leaf.subject().0.len(), 0);
}

#[tokio::test]
async fn every_issuance_is_on_record_with_unique_serials() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let ca = CertificateAuthority::start(&settings(tmp.path(), &url, Some(&istio_samples())))
            .await
            .unwrap();
        let key = csr_key("ec-p256");
        let csr = csr_pem(&key, &[]);
        let mut serials = std::collections::HashSet::new();
        for _ in 0..100 {
            let issued = issue(&ca, &csr, 0).await.unwrap();
            assert!(
                serials.insert(issued.serial.clone()),
                "{dialect}: duplicate serial"
            );
            let row = ca
                .store()
                .issuance_by_serial(&issued.serial)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.cert_der, issued.leaf_der);
        }
        assert_eq!(
            ca.store().count_issuances().await.unwrap(),
            100,
            "{dialect}"
        );

        let issued = issue(&ca, &csr, 600).await.unwrap();
        let row = ca
            .store()
            .issuance_by_serial(&issued.serial)
            .await
            .unwrap()
            .unwrap();
        let leaf = ParsedCert::from_der(&issued.leaf_der).unwrap();
        assert_eq!(row.serial, issued.serial.to_hex());
        assert_eq!(row.spiffe_id, "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(row.trust_domain, TD);
        assert_eq!(row.namespace.as_deref(), Some("default"));
        assert_eq!(row.service_account.as_deref(), Some("web"));
        assert_eq!(row.authority_id, ca.current_authority().id().to_string());
        assert_eq!(row.requester_method, "jwt");
        assert_eq!(row.requester_principal, "system:serviceaccount:default:web");
        assert_eq!(row.peer_address.as_deref(), Some("10.0.0.7:41234"));
        assert_eq!(row.cluster_id.as_deref(), Some("Kubernetes"));
        assert_eq!(row.not_after - row.not_before, 600 + 120);
        assert_eq!(
            row.public_key_sha256,
            meshca_ca::keys::sha256_hex(&meshca_ca::keys::spki_der(leaf.spki()))
        );
        let listed = ca.store().issuances_for(&row.spiffe_id, 5).await.unwrap();
        assert_eq!(listed.len(), 5);
        assert_eq!(listed[0].serial, row.serial, "newest first");
    }
}

#[tokio::test]
async fn failed_store_write_returns_no_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    for (dialect, url) in stores(tmp.path()).await {
        let ca = CertificateAuthority::start(&settings(tmp.path(), &url, Some(&istio_samples())))
            .await
            .unwrap();
        match ca.store() {
            meshca_ca::Store::Sqlite(p) => p.close().await,
            meshca_ca::Store::Postgres(p) => p.close().await,
        }
        let err = issue(&ca, &csr_pem(&csr_key("ec-p256"), &[]), 0)
            .await
            .unwrap_err();
        assert!(matches!(err, IssueError::Store(_)), "{dialect}: {err}");
    }
}

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
        assert_eq!(issued.chain_pem.len(), 2, "[leaf, root bundle]");
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
    second.write(&dir.join("..2026_02_01"));
    swap("..2026_02_01");
    let mut watch = ca.watch_authorities();
    let changed = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
    assert!(
        changed.is_ok(),
        "no reload; failures={}",
        ca.metrics().cacerts_reload_failures.load(Ordering::Relaxed)
    );
    assert_eq!(ca.current_authority().root(), &second.root.cert);
    // The first authority stays trusted as `old`: its certificates verify until they rotate.
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
    assert_eq!(issued.chain_pem.last().unwrap(), &second.root.pem());

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
    assert_eq!(issued.chain_pem.last().unwrap(), &first.root.pem());
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
            .activate_authority(&id, ("token", "test"))
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
        let recorded: std::collections::HashSet<_> = rows.into_iter().map(|r| r.serial).collect();
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
        assert_eq!(write_batch(&mut writer, &["01"]).await, [true], "{dialect}");
        let inserted = write_batch(&mut writer, &["01", "02"]).await;
        assert_eq!(inserted, [false, true], "{dialect}");
        assert_eq!(store.count_issuances().await.unwrap(), 2, "{dialect}");
        let targets = meshca_ca::testing::audit_targets(&store, 10).await;
        assert_eq!(targets, ["02", "01"], "{dialect}");
        // Twice in one batch: the first holder has it.
        let inserted = write_batch(&mut writer, &["03", "03"]).await;
        assert_eq!(inserted, [true, false], "{dialect}");
        assert_eq!(store.count_issuances().await.unwrap(), 3, "{dialect}");
    }
}

/// One batch through whichever writer the store has (the SQLite one is synchronous: the group
/// commit runs it on a thread of its own).
async fn write_batch(writer: &mut IssuanceWriter, serials: &[&str]) -> Vec<bool> {
    let records: Vec<_> = serials
        .iter()
        .map(|s| (issuance_record(s), issuance_event(s)))
        .collect();
    let items: Vec<_> = records.iter().map(|(r, a)| (r, a)).collect();
    match writer {
        IssuanceWriter::Sqlite(writer) => writer.insert_issuances(&items),
        IssuanceWriter::Postgres(writer) => writer.insert_issuances(&items).await,
    }
    .unwrap()
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
            [true, true],
            "{dialect}"
        );
        assert_eq!(write_batch(&mut writer, &["03"]).await, [true], "{dialect}");
        // A serial on record: the batch cannot go in whole, the other one still does.
        assert_eq!(
            write_batch(&mut writer, &["01", "04"]).await,
            [false, true],
            "{dialect}"
        );
        let mut expected: Vec<String> = ["01", "02", "03", "04"].map(String::from).to_vec();
        for n in 5..45 {
            let serial = format!("{n:02}");
            assert_eq!(
                write_batch(&mut writer, &[&serial]).await,
                [true],
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
