//! Faults with nothing lost. `kill -9` under load, on SQLite and on PostgreSQL: every
//! certificate a client received before the kill is in the inventory after the restart, and
//! the audit chain verifies. A broken `cacerts` update leaves the old CA signing. A peer whose
//! clock is behind accepts a fresh certificate (the two-minute backdating).

use std::time::Duration;

use meshca_ca::x509::ParsedCert;

use crate::harness::*;
use crate::load::{all_on_record, serials, until, Load};

async fn nothing_received_is_lost(store_env: Vec<(&'static str, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let mut env = no_rate_limits();
    env.extend(store_env);
    let mut server = dev_server(tmp.path(), &env);
    // 16 callers issue until the server is killed under them, mid-stream for most.
    let load = Load::start(server.grpc, &data, 16, true).await;
    until("load under way", Duration::from_secs(30), &|| {
        load.issued_since(0) >= 300
    })
    .await;
    server.stop();
    let outcomes = load.finish().await;

    let restarted = dev_server(tmp.path(), &env);
    all_on_record(restarted.rest, &data, &serials(&outcomes)).await;
    // Issuance goes on after the restart.
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let mut client = ca_client(restarted.grpc, &root, None).await;
    let token = std::fs::read_to_string(data.join("dev/token")).unwrap();
    let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/default"]);
    create_certificate(&mut client, &csr, 3600, Some(token.trim()), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_under_load_loses_nothing_on_sqlite() {
    nothing_received_is_lost(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_under_load_loses_nothing_on_postgresql() {
    let Some(url) = meshca_ca::testing::postgres_url("kill_nine_postgresql").await else {
        return;
    };
    nothing_received_is_lost(vec![("MESHCA_STORE_URL", url)]).await;
}

/// A client of a plugged-in server, with a token and a CSR for `default/web`.
async fn web_caller(
    server: &MeshcaProcess,
    chain: &meshca_ca::testing::GeneratedChain,
    issuer: &JwtKey,
) -> (
    meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient<
        tonic::transport::Channel,
    >,
    String,
    String,
) {
    let client = ca_client(server.grpc, &chain.root.pem(), None).await;
    let token = issuer.mint(&sa_claims(K8S_ISSUER, "default", "web"));
    let csr = WorkloadKey::ec().csr(&["spiffe://cluster.local/ns/default/sa/web"]);
    (client, token, csr)
}

/// A broken `cacerts` update (half-written files, a key that is not the certificate's, an
/// expired signing certificate) is refused: the previous material keeps signing and
/// `meshca_cacerts_reload_failure_count` counts each; the next good update is taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_cacerts_update_keeps_the_old_ca_signing() {
    use meshca_ca::testing::{write_istio_dir, CaSpec, GeneratedChain, TestCa};
    use meshca_ca::KeyType;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cacerts = dir.join("cacerts");
    let chain = GeneratedChain::new(KeyType::EcP256);
    let issuer = JwtKey::es256("k1");
    let server = plugged_in_server(dir, &chain, &issuer);
    let (mut client, token, csr) = web_caller(&server, &chain, &issuer).await;
    let mut signer = async || {
        let answer = create_certificate(&mut client, &csr, 3600, Some(&token), None)
            .await
            .unwrap();
        let leaf = ParsedCert::from_der(&der_of(&answer.cert_chain[0])).unwrap();
        hex(&leaf.authority_key_id().unwrap())
    };
    let key_id = |ca: &TestCa| {
        let cert = ParsedCert::many_from_pem(ca.pem().as_bytes())
            .unwrap()
            .remove(0);
        hex(&cert.subject_key_id().unwrap())
    };
    let original = key_id(&chain.signing);
    assert_eq!(signer().await, original);
    let failures = || server.metric("meshca_cacerts_reload_failure_count");
    let after_a_failure = async |before: f64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while failures() <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reload failure counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // The next signing CA, under the same root and intermediate (an intermediate rotation).
    let spec = |subject: &str| CaSpec::new(subject);
    let next = TestCa::new(
        &spec("CN=Next Signing CA,O=meshca tests"),
        Some(&chain.intermediate),
    );
    let next_chain = format!("{}{}", next.pem(), chain.intermediate.pem());
    let root = chain.root.pem();

    // 1. Half-written: the copy was cut off in the middle of the certificate.
    let before = failures();
    let cert = next.pem();
    write_istio_dir(
        &cacerts,
        &cert[..cert.len() / 2],
        &next.key_pem(),
        &root,
        &next_chain,
    );
    after_a_failure(before).await;
    assert_eq!(signer().await, original, "half-written files");

    // 2. A key that is not the certificate's.
    let before = failures();
    let other = TestCa::new(&spec("CN=Other,O=meshca tests"), Some(&chain.intermediate));
    write_istio_dir(&cacerts, &next.pem(), &other.key_pem(), &root, &next_chain);
    after_a_failure(before).await;
    assert_eq!(signer().await, original, "mismatched key");

    // 3. An expired signing certificate.
    let before = failures();
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = TestCa::new(
        &CaSpec {
            not_before: now - 10 * day,
            not_after: now - day,
            ..spec("CN=Expired Signing CA,O=meshca tests")
        },
        Some(&chain.intermediate),
    );
    let expired_chain = format!("{}{}", expired.pem(), chain.intermediate.pem());
    write_istio_dir(
        &cacerts,
        &expired.pem(),
        &expired.key_pem(),
        &root,
        &expired_chain,
    );
    after_a_failure(before).await;
    assert_eq!(signer().await, original, "expired signing certificate");

    // 4. The good update is taken (negative control: the checks above could see a change).
    write_istio_dir(&cacerts, &next.pem(), &next.key_pem(), &root, &next_chain);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while signer().await != key_id(&next) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the good update was not taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clock steps: a certificate's notBefore is its issuance minus two minutes (`BACKDATE`), so a
/// peer whose clock is up to two minutes behind the CA's accepts a fresh certificate at once.
/// OpenSSL, told its clock is 90 s behind, accepts it; 150 s behind, it says "not yet valid".
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_whose_clock_is_behind_accepts_a_fresh_certificate() {
    use meshca_ca::testing::GeneratedChain;
    use meshca_ca::KeyType;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let chain = GeneratedChain::new(KeyType::EcP256);
    let issuer = JwtKey::es256("k1");
    let server = plugged_in_server(dir, &chain, &issuer);
    let (mut client, token, csr) = web_caller(&server, &chain, &issuer).await;
    let answer = create_certificate(&mut client, &csr, 3600, Some(&token), None)
        .await
        .unwrap();
    let issued_at = now_secs();
    let chain_pem = answer.cert_chain[1..answer.cert_chain.len() - 1].concat();
    let verify_at = |behind: u64| {
        let files = dir.join(format!("skew-{behind}"));
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("root.pem"), chain.root.pem()).unwrap();
        std::fs::write(files.join("chain.pem"), &chain_pem).unwrap();
        std::fs::write(files.join("leaf.pem"), &answer.cert_chain[0]).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-attime", &(issued_at - behind).to_string()])
            .arg("-CAfile")
            .arg(files.join("root.pem"))
            .arg("-untrusted")
            .arg(files.join("chain.pem"))
            .arg(files.join("leaf.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = verify_at(90);
    assert!(ok, "a clock 90 s behind: {text}");
    let (ok, text) = verify_at(150);
    assert!(!ok, "a clock 150 s behind accepted it: {text}");
    assert!(text.contains("not yet valid"), "{text}");
}
