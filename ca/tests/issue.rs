//! Issuing workload certificates: the leaf profile, TTL rules, CSR checks, chains OpenSSL
//! accepts, and the record written before the cert is returned. Runs on SQLite, and on
//! PostgreSQL when configured (always in CI).

mod common;

use std::time::SystemTime;

use common::*;
use meshca_ca::keys::KeyType;
use meshca_ca::x509::ParsedCert;
use meshca_ca::{CertificateAuthority, IssueError, VerifiedCsr};
use x509_cert::ext::pkix::KeyUsages;

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
        // No root: whoever answers appends the trust bundle.
        assert_eq!(issued.chain_pem.len(), 2, "[leaf, ca-cert]");
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
            [chain.signing.pem(), chain.intermediate.pem()]
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
        assert_eq!(row.issuance.serial, issued.serial.to_hex());
        assert_eq!(
            row.issuance.spiffe_id,
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert_eq!(row.trust_domain, TD);
        assert_eq!(row.issuance.namespace.as_deref(), Some("default"));
        assert_eq!(row.issuance.service_account.as_deref(), Some("web"));
        assert_eq!(
            row.issuance.authority_id,
            ca.current_authority().id().to_string()
        );
        assert_eq!(row.issuance.requester_method, "jwt");
        assert_eq!(
            row.issuance.requester_principal,
            "system:serviceaccount:default:web"
        );
        assert_eq!(row.issuance.peer_address.as_deref(), Some("10.0.0.7:41234"));
        assert_eq!(row.issuance.cluster_id.as_deref(), Some("Kubernetes"));
        assert_eq!(row.issuance.not_after - row.issuance.not_before, 600 + 120);
        assert_eq!(
            row.issuance.public_key_sha256,
            meshca_ca::keys::sha256_hex(&meshca_ca::keys::spki_der(leaf.spki()))
        );
        let listed = ca
            .store()
            .issuances_for(&row.issuance.spiffe_id, 5)
            .await
            .unwrap();
        assert_eq!(listed.len(), 5);
        assert_eq!(
            listed[0].issuance.serial, row.issuance.serial,
            "newest first"
        );
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
