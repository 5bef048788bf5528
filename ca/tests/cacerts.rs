//! Loading plugged-in CA directories: Istio's samples as they are, every refusal with its
//! message, and the response chain built by path building whatever order the files use.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use meshca_ca::cacerts::{load_dir, LoadCacertsError};
use meshca_ca::keys::KeyType;
use x509_cert::ext::pkix::{KeyUsage, KeyUsages};

fn load_err(dir: &std::path::Path) -> String {
    load_dir(dir, SystemTime::now()).unwrap_err().to_string()
}

#[test]
fn istio_default_sample_loads_unmodified() {
    let dir = istio_samples();
    // The samples directory has every Istio file at its top level.
    let authority = load_dir(&dir, SystemTime::now()).unwrap();
    assert!(authority
        .signing_cert()
        .subject()
        .to_string()
        .contains("CN=Istio CA"));
    // Istio's sample CA has no SKI: the AKI we stamp is derived from its public key.
    assert!(authority.signing_cert().subject_key_id().is_none());
    assert_eq!(
        authority.key_id(),
        meshca_ca::keys::key_identifier(authority.signing_cert().public_key_bits())
    );
    let root = String::from_utf8(sample("root-cert.pem")).unwrap();
    let ca_cert = String::from_utf8(sample("ca-cert.pem")).unwrap();
    let issuers = authority.issuer_chain_pem();
    assert_eq!(issuers.len(), 1);
    assert_eq!(normalize(&issuers[0]), normalize(&ca_cert));
    assert_eq!(normalize(&authority.roots_pem()), normalize(&root));
    assert!(issuers[0].ends_with('\n') && authority.roots_pem().ends_with('\n'));
}

#[test]
fn istio_alt_sample_loads_with_its_chain() {
    let tmp = tempfile::tempdir().unwrap();
    for root in [
        "root-cert-alt.pem",
        "root-cert-combined.pem",
        "root-cert-combined-2.pem",
    ] {
        write_sample_dir(
            tmp.path(),
            "ca-cert-alt.pem",
            "ca-key-alt.pem",
            root,
            "cert-chain-alt.pem",
        );
        let authority = load_dir(tmp.path(), SystemTime::now()).unwrap();
        assert!(authority
            .signing_cert()
            .subject_string()
            .contains("Intermediate CA"));
        assert_eq!(authority.root().subject().to_string(), "CN=Root CA,O=Istio");
        // The signing cert only: cert-chain-alt.pem carries the root, which is never repeated.
        assert_eq!(authority.issuer_chain_pem().len(), 1, "{root}");
        assert_eq!(authority.roots().len(), pem_count(&sample(root)));
    }
}

#[test]
fn istio_alt_2_pair_fails_with_key_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample_dir(
        tmp.path(),
        "ca-cert-alt-2.pem",
        "ca-key-alt-2.pem",
        "root-cert-alt.pem",
        "cert-chain-alt-2.pem",
    );
    let err = load_dir(tmp.path(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, LoadCacertsError::KeyMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ca-key.pem: key does not match certificate"),
        "{msg}"
    );
    assert!(msg.contains("ca-cert.pem"), "{msg}");
}

#[test]
fn partial_directory_names_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ca-cert.pem"), sample("ca-cert.pem")).unwrap();
    std::fs::write(tmp.path().join("ca-key.pem"), sample("ca-key.pem")).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("incomplete CA directory"), "{msg}");
    assert!(
        msg.contains("\"root-cert.pem\", \"cert-chain.pem\""),
        "{msg}"
    );

    let tls = tempfile::tempdir().unwrap();
    std::fs::write(tls.path().join("tls.crt"), sample("ca-cert.pem")).unwrap();
    let msg = load_err(tls.path());
    assert!(msg.contains("\"tls.key\", \"ca.crt\""), "{msg}");

    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("no CA files found"));
}

#[test]
fn unparsable_pem_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_sample_dir(
        tmp.path(),
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    );
    std::fs::write(
        tmp.path().join("root-cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.starts_with(&tmp.path().join("root-cert.pem").display().to_string()),
        "{msg}"
    );

    write_sample_dir(
        tmp.path(),
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    );
    std::fs::write(tmp.path().join("ca-cert.pem"), "hello").unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("ca-cert.pem"), "{msg}");

    write_sample_dir(
        tmp.path(),
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    );
    std::fs::write(tmp.path().join("ca-key.pem"), sample("ca-cert.pem")).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("ca-key.pem"), "{msg}");
    assert!(msg.contains("not a private key"), "{msg}");
}

#[test]
fn signing_cert_must_be_a_ca() {
    let root = TestCa::new(&CaSpec::new("CN=Root"), None);
    for (spec, reason) in [
        (
            CaSpec {
                ca: Some(false),
                ..CaSpec::new("CN=Leafish")
            },
            "basicConstraints CA:FALSE",
        ),
        (
            CaSpec {
                ca: None,
                ..CaSpec::new("CN=NoBC")
            },
            "no basicConstraints",
        ),
        (
            CaSpec {
                key_usage: Some(KeyUsage(KeyUsages::DigitalSignature.into())),
                ..CaSpec::new("CN=NoCertSign")
            },
            "keyUsage lacks keyCertSign",
        ),
    ] {
        let signing = TestCa::new(&spec, Some(&root));
        let tmp = tempfile::tempdir().unwrap();
        write_istio_dir(
            tmp.path(),
            &signing.pem(),
            &signing.key.pkcs8_pem(),
            &root.pem(),
            &signing.pem(),
        );
        let msg = load_err(tmp.path());
        assert!(msg.contains("ca-cert.pem: signing certificate"), "{msg}");
        assert!(msg.contains("is not a CA"), "{msg}");
        assert!(msg.contains(reason), "{msg}");
    }
}

#[test]
fn absent_key_usage_is_accepted_as_openssl_default_ca() {
    let root = TestCa::new(&CaSpec::new("CN=Root"), None);
    let signing = TestCa::new(
        &CaSpec {
            key_usage: None,
            ..CaSpec::new("CN=Signing")
        },
        Some(&root),
    );
    let tmp = tempfile::tempdir().unwrap();
    write_istio_dir(
        tmp.path(),
        &signing.pem(),
        &signing.key.pkcs8_pem(),
        &root.pem(),
        "",
    );
    load_dir(tmp.path(), SystemTime::now()).unwrap();
}

#[test]
fn must_chain_to_a_root_in_root_cert_pem() {
    let chain = GeneratedChain::new(KeyType::EcP256);
    let stranger = TestCa::new(&CaSpec::new("CN=Stranger Root"), None);
    let tmp = tempfile::tempdir().unwrap();
    chain.write(tmp.path());
    std::fs::write(tmp.path().join("root-cert.pem"), stranger.pem()).unwrap();
    let msg = load_err(tmp.path());
    assert!(msg.contains("does not chain to any root"), "{msg}");
    assert!(msg.contains("root-cert.pem"), "{msg}");

    // The intermediate missing from cert-chain.pem: no path either.
    chain.write(tmp.path());
    std::fs::write(tmp.path().join("cert-chain.pem"), chain.signing.pem()).unwrap();
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("no issuer found for \"CN=Generated Signing CA"),
        "{msg}"
    );

    // A self-signed cert in cert-chain.pem that is not in root-cert.pem is not trusted.
    chain.write(tmp.path());
    std::fs::write(
        tmp.path().join("cert-chain.pem"),
        format!(
            "{}{}{}",
            chain.signing.pem(),
            chain.intermediate.pem(),
            chain.root.pem()
        ),
    )
    .unwrap();
    std::fs::write(tmp.path().join("root-cert.pem"), stranger.pem()).unwrap();
    assert!(load_err(tmp.path()).contains("does not chain to any root"));
}

#[test]
fn expired_or_not_yet_valid_certs_on_the_path_are_refused() {
    let now = SystemTime::now();
    let root = TestCa::new(&CaSpec::new("CN=Root"), None);
    let expired = TestCa::new(
        &CaSpec {
            not_before: now - 30 * DAY,
            not_after: now - DAY,
            ..CaSpec::new("CN=Expired Intermediate")
        },
        Some(&root),
    );
    let signing = TestCa::new(&CaSpec::new("CN=Signing"), Some(&expired));
    let tmp = tempfile::tempdir().unwrap();
    write_istio_dir(
        tmp.path(),
        &signing.pem(),
        &signing.key.pkcs8_pem(),
        &root.pem(),
        &expired.pem(),
    );
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("\"CN=Expired Intermediate\" expired (notAfter"),
        "{msg}"
    );
    assert!(msg.contains("cert-chain.pem"), "{msg}");

    let future = TestCa::new(
        &CaSpec {
            not_before: now + DAY,
            ..CaSpec::new("CN=Future Signing")
        },
        Some(&root),
    );
    write_istio_dir(
        tmp.path(),
        &future.pem(),
        &future.key.pkcs8_pem(),
        &root.pem(),
        "",
    );
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("\"CN=Future Signing\" is not yet valid"),
        "{msg}"
    );
}

#[test]
fn path_len_constraint_is_enforced() {
    let root = TestCa::new(
        &CaSpec {
            path_len: Some(0),
            ..CaSpec::new("CN=Root pathlen 0")
        },
        None,
    );
    let intermediate = TestCa::new(&CaSpec::new("CN=Intermediate"), Some(&root));
    let signing = TestCa::new(&CaSpec::new("CN=Signing"), Some(&intermediate));
    let tmp = tempfile::tempdir().unwrap();
    write_istio_dir(
        tmp.path(),
        &signing.pem(),
        &signing.key.pkcs8_pem(),
        &root.pem(),
        &intermediate.pem(),
    );
    let msg = load_err(tmp.path());
    assert!(
        msg.contains(
            "\"CN=Root pathlen 0\" has pathLenConstraint 0 but 2 CA certificate(s) sit below it"
        ),
        "{msg}"
    );

    // pathlen:0 on the signing cert itself is fine: only leaves follow it.
    let signing0 = TestCa::new(
        &CaSpec {
            path_len: Some(0),
            ..CaSpec::new("CN=Signing0")
        },
        Some(&intermediate),
    );
    let root_ok = TestCa::new(&CaSpec::new("CN=Root2"), None);
    let _ = root_ok;
    write_istio_dir(
        tmp.path(),
        &signing0.pem(),
        &signing0.key.pkcs8_pem(),
        &root.pem(),
        &intermediate.pem(),
    );
    assert!(load_err(tmp.path()).contains("pathLenConstraint 0"));
}

#[test]
fn chain_file_order_and_repeats_do_not_matter() {
    let chain = GeneratedChain::new(KeyType::EcP256);
    let (s, i, r) = (
        chain.signing.pem(),
        chain.intermediate.pem(),
        chain.root.pem(),
    );
    let expected = vec![s.clone(), i.clone()];
    for cert_chain in [
        format!("{s}{i}"),    // Istio's usual shape
        i.clone(),            // omits ca-cert.pem
        format!("{s}{s}{i}"), // repeats it
        format!("{s}{i}{r}"), // includes the root
        format!("{r}{i}{s}"), // root first
    ] {
        let tmp = tempfile::tempdir().unwrap();
        write_istio_dir(
            tmp.path(),
            &s,
            &chain.signing.key.pkcs8_pem(),
            &r,
            &cert_chain,
        );
        let authority = load_dir(tmp.path(), SystemTime::now()).unwrap();
        assert_eq!(
            authority.issuer_chain_pem(),
            expected.as_slice(),
            "cert-chain.pem = {cert_chain}"
        );
        assert_eq!(authority.roots_pem(), r);
    }
}

#[test]
fn root_as_signing_cert_gives_leaf_then_bundle() {
    let root = TestCa::new(&CaSpec::new("CN=Only Root"), None);
    let tmp = tempfile::tempdir().unwrap();
    write_istio_dir(
        tmp.path(),
        &root.pem(),
        &root.key.pkcs8_pem(),
        &root.pem(),
        "",
    );
    let authority = load_dir(tmp.path(), SystemTime::now()).unwrap();
    assert!(authority.issuer_chain_pem().is_empty());
    assert_eq!(authority.roots_pem(), root.pem());
}

#[test]
fn kubernetes_tls_layout_loads() {
    let chain = GeneratedChain::new(KeyType::EcP384);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tls.crt"),
        format!("{}{}", chain.signing.pem(), chain.intermediate.pem()),
    )
    .unwrap();
    std::fs::write(tmp.path().join("tls.key"), chain.signing.key.pkcs8_pem()).unwrap();
    std::fs::write(tmp.path().join("ca.crt"), chain.root.pem()).unwrap();
    let authority = load_dir(tmp.path(), SystemTime::now()).unwrap();
    assert_eq!(
        authority.issuer_chain_pem(),
        &[chain.signing.pem(), chain.intermediate.pem()]
    );
    assert_eq!(authority.roots_pem(), chain.root.pem());
}

#[test]
fn key_encodings_and_sizes() {
    // PKCS#1 RSA (Istio's ca-key.pem) and PKCS#8 RSA (ca-key-alt.pem) are covered by the
    // samples; here SEC1 EC keys, and RSA keys outside 2048-8192.
    let root = TestCa::new(&CaSpec::new("CN=Root"), None);
    let signing = TestCa::new(&CaSpec::new("CN=Signing"), Some(&root));
    let sec1 = sec1_pem(&signing.key);
    let tmp = tempfile::tempdir().unwrap();
    write_istio_dir(tmp.path(), &signing.pem(), &sec1, &root.pem(), "");
    load_dir(tmp.path(), SystemTime::now()).unwrap();

    let out = std::process::Command::new("openssl")
        .args(["genrsa", "1024"])
        .output()
        .unwrap();
    write_istio_dir(
        tmp.path(),
        &signing.pem(),
        &String::from_utf8(out.stdout).unwrap(),
        &root.pem(),
        "",
    );
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("RSA key of 1024 bits is outside the allowed 2048-8192"),
        "{msg}"
    );
}

#[test]
fn expired_sample_root_would_be_refused_at_its_expiry() {
    // The alt root expires in December 2033: loading "then" must fail, naming it.
    let tmp = tempfile::tempdir().unwrap();
    write_sample_dir(
        tmp.path(),
        "ca-cert-alt.pem",
        "ca-key-alt.pem",
        "root-cert-alt.pem",
        "cert-chain-alt.pem",
    );
    let in_2034 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_020_000_000);
    let msg = load_dir(tmp.path(), in_2034).unwrap_err().to_string();
    assert!(msg.contains("expired"), "{msg}");
}

fn sec1_pem(key: &meshca_ca::keys::SigningKey) -> String {
    // openssl converts PKCS#8 to the traditional SEC1 "EC PRIVATE KEY" form.
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["ec", "-outform", "PEM"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.pkcs8_pem().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("BEGIN EC PRIVATE KEY"), "{text}");
    text
}

fn normalize(pem_text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect()
}

fn pem_count(bytes: &[u8]) -> usize {
    pem::parse_many(bytes).unwrap().len()
}
