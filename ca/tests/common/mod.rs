//! Fixtures for the CA tests: certificate chains with whatever flaw a test needs, CSRs of every
//! key type, stores on SQLite and (when configured) PostgreSQL.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use der::asn1::OctetString;
use meshca_ca::keys::{KeyType, SigningKey};
use meshca_ca::x509::{self, CertTemplate, ParsedCert};
use meshca_ca::Store;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::name::Name;

pub const DAY: Duration = Duration::from_secs(86400);

pub fn istio_samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio-samples-certs")
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(istio_samples().join(name)).unwrap()
}

/// A CA certificate and its key.
pub struct TestCa {
    pub cert: ParsedCert,
    pub key: SigningKey,
}

/// What a generated CA certificate looks like; defaults are a healthy CA.
#[derive(Clone)]
pub struct CaSpec {
    pub subject: String,
    pub key_type: KeyType,
    pub ca: Option<bool>,
    pub path_len: Option<u8>,
    pub key_usage: Option<KeyUsage>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CaSpec {
    pub fn new(subject: &str) -> Self {
        let now = SystemTime::now();
        Self {
            subject: subject.into(),
            key_type: KeyType::EcP256,
            ca: Some(true),
            path_len: None,
            key_usage: Some(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)),
            not_before: now - DAY,
            not_after: now + 365 * DAY,
        }
    }
}

impl TestCa {
    /// Issues `spec` under `issuer`, or self-signed when `issuer` is None.
    pub fn new(spec: &CaSpec, issuer: Option<&TestCa>) -> TestCa {
        let key = SigningKey::generate(spec.key_type).unwrap();
        let subject = Name::from_str(&spec.subject).unwrap();
        let mut extensions = Vec::new();
        if let Some(ca) = spec.ca {
            extensions.push(
                x509::extension(
                    true,
                    &BasicConstraints {
                        ca,
                        path_len_constraint: spec.path_len,
                    },
                )
                .unwrap(),
            );
        }
        if let Some(ku) = spec.key_usage {
            extensions.push(x509::extension(true, &ku).unwrap());
        }
        extensions.push(
            x509::extension(
                false,
                &SubjectKeyIdentifier(
                    OctetString::new(meshca_ca::keys::key_identifier(key.public_key_bits()))
                        .unwrap(),
                ),
            )
            .unwrap(),
        );
        let template = CertTemplate {
            serial: x509::random_serial(),
            subject: subject.clone(),
            not_before: spec.not_before,
            not_after: spec.not_after,
            spki: key.subject_public_key_info(),
            extensions,
        };
        let der = match issuer {
            Some(parent) => x509::sign_certificate(template, parent.cert.subject(), &parent.key),
            None => x509::sign_certificate(template, &subject, &key),
        }
        .unwrap();
        TestCa {
            cert: ParsedCert::from_der(&der).unwrap(),
            key,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.to_pem()
    }
}

/// Writes an Istio `cacerts` directory.
pub fn write_istio_dir(dir: &Path, ca_cert: &str, ca_key: &str, root_cert: &str, cert_chain: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert).unwrap();
    std::fs::write(dir.join("ca-key.pem"), ca_key).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root_cert).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), cert_chain).unwrap();
}

/// Copies Istio's sample set (optionally the `-alt` variants) into `dir`.
pub fn write_sample_dir(dir: &Path, cert: &str, key: &str, root: &str, chain: &str) {
    let read = |n: &str| String::from_utf8(sample(n)).unwrap();
    write_istio_dir(dir, &read(cert), &read(key), &read(root), &read(chain));
}

/// A root → intermediate → signing-CA chain of `key_type` keys.
pub struct GeneratedChain {
    pub root: TestCa,
    pub intermediate: TestCa,
    pub signing: TestCa,
}

impl GeneratedChain {
    pub fn new(key_type: KeyType) -> Self {
        let spec = |s: &str| CaSpec {
            key_type,
            ..CaSpec::new(s)
        };
        let root = TestCa::new(&spec("CN=Generated Root,O=meshca tests"), None);
        let intermediate = TestCa::new(
            &spec("CN=Generated Intermediate,O=meshca tests"),
            Some(&root),
        );
        let signing = TestCa::new(
            &spec("CN=Generated Signing CA,O=meshca tests"),
            Some(&intermediate),
        );
        Self {
            root,
            intermediate,
            signing,
        }
    }

    pub fn write(&self, dir: &Path) {
        write_istio_dir(
            dir,
            &self.signing.pem(),
            &self.signing.key.pkcs8_pem(),
            &self.root.pem(),
            &format!("{}{}", self.signing.pem(), self.intermediate.pem()),
        );
    }
}

/// Key types a workload may use in a CSR, as rcgen key pairs.
pub fn csr_key(kind: &str) -> rcgen::KeyPair {
    match kind {
        "ec-p256" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        "ec-p384" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        "ed25519" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        rsa => {
            let bits = match rsa {
                "rsa-2048" => aws_lc_rs::rsa::KeySize::Rsa2048,
                "rsa-3072" => aws_lc_rs::rsa::KeySize::Rsa3072,
                "rsa-4096" => aws_lc_rs::rsa::KeySize::Rsa4096,
                "rsa-8192" => aws_lc_rs::rsa::KeySize::Rsa8192,
                other => panic!("no such test key {other}"),
            };
            use aws_lc_rs::encoding::AsDer;
            let pair = aws_lc_rs::rsa::KeyPair::generate(bits).unwrap();
            let der = pair.as_der().unwrap();
            rcgen::KeyPair::try_from(der.as_ref()).unwrap()
        }
    }
}

/// A CSR in Istio's shape (URI SAN only) signed by `key`.
pub fn csr_pem(key: &rcgen::KeyPair, uri_sans: &[&str]) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = uri_sans
        .iter()
        .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u.to_string()).unwrap()))
        .collect();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// Every store the tests run against: SQLite always, PostgreSQL when
/// `MESHCA_TEST_POSTGRES_URL` is set (each call gets a fresh schema).
pub async fn stores(dir: &Path) -> Vec<(String, String)> {
    let mut urls = vec![(
        "sqlite".to_string(),
        format!("sqlite://{}", dir.join("meshca.db").display()),
    )];
    if let Some(url) = postgres_url().await {
        urls.push(("postgres".to_string(), url));
    }
    urls
}

/// A PostgreSQL URL whose connections land in a new, empty schema.
pub async fn postgres_url() -> Option<String> {
    let base = std::env::var("MESHCA_TEST_POSTGRES_URL").ok()?;
    let schema = format!("meshca_test_{}", hex::encode(random_bytes::<6>()));
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("MESHCA_TEST_POSTGRES_URL reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

pub async fn open_store(url: &str) -> Store {
    Store::connect(url).await.unwrap()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

/// `openssl verify -CAfile root -untrusted chain leaf`; returns openssl's output on failure.
pub fn openssl_verify(
    dir: &Path,
    root_pem: &str,
    untrusted_pem: &str,
    leaf_pem: &str,
) -> Result<(), String> {
    let root = dir.join("verify-root.pem");
    let chain = dir.join("verify-chain.pem");
    let leaf = dir.join("verify-leaf.pem");
    std::fs::write(&root, root_pem).unwrap();
    std::fs::write(&chain, untrusted_pem).unwrap();
    std::fs::write(&leaf, leaf_pem).unwrap();
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&root);
    if !untrusted_pem.is_empty() {
        cmd.arg("-untrusted").arg(&chain);
    }
    let out = cmd.arg(&leaf).output().expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}
