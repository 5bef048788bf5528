//! Fixtures for the CA tests: certificate chains with whatever flaw a test needs, CSRs of every
//! key type, stores on SQLite and (when configured) PostgreSQL.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

use std::time::Duration;

use meshca_ca::{
    CaConfig, CaSettings, CertificateAuthority, IssueError, IssueRequest, Requester, SpiffeId,
    Store, StoreConfig, TrustDomain, VerifiedCsr,
};

pub use meshca_ca::testing::{write_istio_dir, CaSpec, GeneratedChain, TestCa, DAY};

pub fn istio_samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio-samples-certs")
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(istio_samples().join(name)).unwrap()
}

/// Copies Istio's sample files (e.g. the `-alt` variants) into `dir` under Istio's names.
pub fn write_sample_dir(dir: &Path, cert: &str, key: &str, root: &str, chain: &str) {
    let read = |n: &str| String::from_utf8(sample(n)).unwrap();
    write_istio_dir(dir, &read(cert), &read(key), &read(root), &read(chain));
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
/// `MESHCA_TEST_POSTGRES_URL` is set (each call gets a fresh schema; required in CI).
pub async fn stores(dir: &Path) -> Vec<(String, String)> {
    let mut urls = vec![(
        "sqlite".to_string(),
        format!("sqlite://{}", dir.join("meshca.db").display()),
    )];
    if let Some(url) = meshca_ca::testing::postgres_url("the PostgreSQL store").await {
        urls.push(("postgres".to_string(), url));
    }
    urls
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

pub const TD: &str = "cluster.local";

pub fn settings(data_dir: &Path, store_url: &str, cacerts: Option<&Path>) -> CaSettings {
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

pub fn requester() -> Requester {
    Requester {
        method: "jwt".into(),
        principal: "system:serviceaccount:default:web".into(),
        peer_address: Some("10.0.0.7:41234".into()),
        cluster_id: Some("Kubernetes".into()),
        ..Requester::default()
    }
}

pub fn web_id() -> SpiffeId {
    TrustDomain::new(TD)
        .unwrap()
        .workload_id("default", "web")
        .unwrap()
}

pub async fn issue(
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
        bundle_as_of: None,
    })
    .await
}
