//! The split deployment: `meshca ca` holds the keys; a keyless `meshca server` authenticates
//! workloads and forwards to it over mTLS. Both share one store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshca_ca::keys::KeyType;
use meshca_ca::testing::{CaSpec, GeneratedChain, LeafSpec, TestCa};
use meshca_proto::meshca::ca::v1::certificate_authority_client::CertificateAuthorityClient;
use meshca_proto::meshca::ca::v1::WatchAuthoritiesRequest;
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::*;
use crate::peers::{self, ApiServerState, REVIEWER_TOKEN};

pub(crate) const RA_ID: &str = "spiffe://cluster.local/ns/meshca/sa/meshca-ra";
const ADMIN: &str = "admin-token-for-the-split-test";

/// The files both processes are configured with.
pub(crate) struct Layout {
    dir: PathBuf,
    /// Issues RA client certificates (`ca.service_client_ca_file`).
    internal: TestCa,
    service: SocketAddr,
    ca_metrics: SocketAddr,
}

impl Layout {
    /// Writes the plugged-in chain, an internal CA for RA client certificates, the RA's client
    /// certificate, and both configs.
    pub(crate) fn write(dir: &Path, issuer: &JwtKey) -> Self {
        let d = dir.display();
        GeneratedChain::new(KeyType::EcP256).write(&dir.join("cacerts"));
        let internal = TestCa::new(&CaSpec::new("CN=meshca internal CA"), None);
        let ra = internal.issue_leaf(&LeafSpec {
            uris: vec![RA_ID.into()],
            ..LeafSpec::new("CN=meshca-ra")
        });
        std::fs::write(dir.join("internal-ca.pem"), internal.pem()).unwrap();
        std::fs::write(dir.join("ra.pem"), ra.pem()).unwrap();
        std::fs::write(dir.join("ra-key.pem"), ra.key_pem()).unwrap();
        std::fs::write(dir.join("jwks.json"), jwks(&[issuer]).to_string()).unwrap();

        let service: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let ca_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::write(
            dir.join("ca.toml"),
            format!(
                r#"
data_dir = "{d}/ca-data"
[store]
url = "sqlite://{d}/shared.db"
[ca]
cacerts_dir = "{d}/cacerts"
allowed_ras = ["{RA_ID}"]
service_listen = "{service}"
service_ip_sans = ["127.0.0.1"]
service_client_ca_file = "{d}/internal-ca.pem"
[metrics]
listen = "{ca_metrics}"
"#
            ),
        )
        .unwrap();
        let admin = sha256_hex(ADMIN);
        std::fs::write(
            dir.join("ra.toml"),
            format!(
                r#"
data_dir = "{d}/ra-data"
[store]
url = "sqlite://{d}/shared.db"
[ca]
remote_addr = "https://{service}"
remote_ca_file = "{d}/cacerts/root-cert.pem"
remote_cert_file = "{d}/ra.pem"
remote_key_file = "{d}/ra-key.pem"
[grpc]
ip_sans = ["127.0.0.1"]
[rest]
tokens = [{{ name = "ops", sha256 = "{admin}", role = "admin" }}]
[auth.clusters.Kubernetes]
mode = "jwks"
issuer = "{K8S_ISSUER}"
jwks_file = "{d}/jwks.json"
"#
            ),
        )
        .unwrap();
        Self {
            dir: dir.to_path_buf(),
            internal,
            service,
            ca_metrics,
        }
    }

    pub(crate) fn start_ca(&self) -> MeshcaProcess {
        let config = self.dir.join("ca.toml").display().to_string();
        MeshcaProcess::start(
            &["ca", "--config", &config],
            &[],
            &self.dir.join("ca-logs"),
            self.service,
            self.ca_metrics,
        )
    }

    pub(crate) fn start_ra(&self) -> MeshcaProcess {
        self.start_ra_with(&[])
    }

    fn start_ra_with(&self, extra_env: &[(&str, String)]) -> MeshcaProcess {
        let config = self.dir.join("ra.toml").display().to_string();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut env = vec![
            ("MESHCA_GRPC_LISTEN", grpc.to_string()),
            ("MESHCA_METRICS_LISTEN", metrics.to_string()),
        ];
        env.extend(extra_env.iter().cloned());
        MeshcaProcess::start(
            &["server", "--config", &config],
            &env,
            &self.dir.join("ra-logs"),
            grpc,
            metrics,
        )
    }

    pub(crate) fn root(&self) -> String {
        std::fs::read_to_string(self.dir.join("cacerts/root-cert.pem")).unwrap()
    }
}

/// Every file under `dir` that holds private key material.
fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(key_files(&path));
        } else if std::fs::read(&path).is_ok_and(|b| {
            String::from_utf8_lossy(&b).contains("PRIVATE KEY")
                || path.file_name().is_some_and(|n| n == "key-encryption-key")
        }) {
            found.push(path);
        }
    }
    found
}

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

async fn issue(ra: &MeshcaProcess, root: &str, token: &str) -> Result<Vec<String>, tonic::Status> {
    issue_keyed(ra, root, token).await.map(|(chain, _)| chain)
}

/// [`issue`], keeping the key for a renewal with the certificate.
async fn issue_keyed(
    ra: &MeshcaProcess,
    root: &str,
    token: &str,
) -> Result<(Vec<String>, WorkloadKey), tonic::Status> {
    let mut client = ca_client(ra.grpc, root, None).await;
    let key = WorkloadKey::ec();
    let chain = create_certificate(&mut client, &key.csr(&[WEB]), 3600, Some(token), None)
        .await?
        .cert_chain;
    Ok((chain, key))
}

/// Renews over mTLS with `chain` (leaf and intermediates; its last element, the bundle, left
/// out) and its key.
async fn renew(
    ra: &MeshcaProcess,
    root: &str,
    (chain, key): &(Vec<String>, WorkloadKey),
) -> Result<Vec<String>, tonic::Status> {
    let presented = chain[..chain.len() - 1].concat();
    let mut client = ca_client(ra.grpc, root, Some((&presented, &key.key_pem()))).await;
    create_certificate(&mut client, &key.csr(&[WEB]), 3600, None, None)
        .await
        .map(|r| r.cert_chain)
}

/// How many certificates the inventory lists (the tests here issue a handful).
async fn listed(rest: &Rest) -> usize {
    let (status, page) = rest.get("/v1/certificates?limit=100", ADMIN).await;
    assert_eq!(status, 200, "{page}");
    page["certificates"].as_array().unwrap().len()
}

fn serial_of(chain: &[String]) -> String {
    meshca_ca::x509::ParsedCert::many_from_pem(chain[0].as_bytes())
        .unwrap()
        .remove(0)
        .serial()
        .to_hex()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_ra_issues_through_the_ca_service_and_survives_its_outage() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtKey::es256("split");
    let layout = Layout::write(dir.path(), &issuer);
    let root = layout.root();
    let token = issuer.mint(&sa_claims(K8S_ISSUER, "default", "web"));

    let mut ca = layout.start_ca();
    let ra = layout.start_ra();
    assert_eq!(
        key_files(&dir.path().join("ra-data")),
        Vec::<PathBuf>::new(),
        "the RA keeps no key material"
    );

    // Issued through the RA, signed by the plugged-in chain the RA never saw a key of.
    let chain = issue(&ra, &root, &token).await.expect("issued");
    assert!(chain.len() >= 3, "{chain:?}");
    let leaf = pem::parse(&chain[0]).unwrap();
    openssl_verify(
        dir.path(),
        &root,
        &chain[1..chain.len() - 1].concat(),
        &chain[0],
    )
    .expect("the chain verifies to the plugged-in root");

    // On record, through the RA's admin API, which reads the shared store.
    let rest = Rest::new(ra.rest, &root);
    // A keyless RA's answer ends in its whole trust bundle, as an in-process one does.
    let (_, bundle) = rest
        .call(reqwest::Method::GET, "/v1/trust-bundle", None, None)
        .await;
    assert_eq!(bundle.as_str(), chain.last().map(String::as_str));
    let serial = {
        let cert = meshca_ca::x509::ParsedCert::from_der(leaf.contents()).unwrap();
        cert.serial().to_hex()
    };
    let (status, record) = rest.get(&format!("/v1/certificates/{serial}"), ADMIN).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        record["spiffe_id"],
        "spiffe://cluster.local/ns/default/sa/web"
    );

    // Rotation steps go to the service, which refuses them for a cacerts-managed CA; the
    // answer keeps its meaning (409), and a CRL is signed there.
    let (status, body) = rest
        .post(
            "/v1/authorities",
            ADMIN,
            json!({ "generate": { "key_type": "ec-p256" } }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cacerts"),
        "{body}"
    );
    let (status, _) = rest.get("/v1/crl", ADMIN).await;
    assert_eq!(status, 200);

    // The CA goes away: callers get UNAVAILABLE and nothing is issued; the RA turns unready.
    ca.stop();
    let refused = issue(&ra, &root, &token).await.expect_err("no CA, no cert");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(ra.metrics, "/readyz").is_ok_and(|(code, _)| code == 200) {
        assert!(Instant::now() < deadline, "RA still ready without its CA");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It comes back: the RA reconnects by itself and issues again.
    let _ca = layout.start_ca();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match issue(&ra, &root, &token).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "RA did not recover: {}",
                    ra.output()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !http_get(ra.metrics, "/readyz").is_ok_and(|(code, _)| code == 200) {
        assert!(Instant::now() < deadline, "RA not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A keyless RA no longer looks up the revocation of a renewal's certificate itself: it sends
/// the serial along, and the CA service refuses in the transaction that would record the new
/// certificate. The workload hears what any failed authentication gets; nothing is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_ra_refuses_the_renewal_of_a_revoked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtKey::es256("split");
    let layout = Layout::write(dir.path(), &issuer);
    let root = layout.root();
    let token = issuer.mint(&sa_claims(K8S_ISSUER, "default", "web"));
    let _ca = layout.start_ca();
    let ra = layout.start_ra();
    let revoked = issue_keyed(&ra, &root, &token).await.expect("issued");
    let kept = issue_keyed(&ra, &root, &token).await.expect("issued");
    let rest = Rest::new(ra.rest, &root);
    let path = format!("/v1/certificates/{}/revoke", serial_of(&revoked.0));
    let (status, body) = rest
        .post(&path, ADMIN, json!({"reason": "keyCompromise"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let before = listed(&rest).await;

    let refused = renew(&ra, &root, &revoked).await.expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(listed(&rest).await, before, "nothing recorded");
    assert!(
        rest.audit_events_until("action=certificate.issue&outcome=denied", ADMIN, |n| n > 0)
            .await
            > 0,
        "the refused renewal is on record"
    );

    // The control: a certificate that was not revoked renews through the same path.
    let renewed = renew(&ra, &root, &kept).await.expect("renewed");
    let (status, record) = rest
        .get(&format!("/v1/certificates/{}", serial_of(&renewed)), ADMIN)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["requester"]["method"], "renewal");
    assert_eq!(listed(&rest).await, before + 1);
}

/// A node agent's request through a keyless RA: the RA authorizes it against the pods, and the
/// CA service records who asked for whom (the agent, its pod and node) as an in-process CA does.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_ra_forwards_who_asked_for_whom() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtKey::es256("split");
    let layout = Layout::write(dir.path(), &issuer);
    let (runtime, _runtime_thread) = third_party_runtime();
    let api = std::sync::Arc::new(ApiServerState::default());
    let (api_addr, api_ca) = peers::start_api_server(&runtime, api.clone());
    std::fs::write(dir.path().join("apiserver-ca.pem"), api_ca.pem()).unwrap();
    std::fs::write(dir.path().join("reviewer-token"), REVIEWER_TOKEN).unwrap();
    let uid = api
        .cluster()
        .add_pod("istio-system", "ztunnel-a", "ztunnel", Some("worker-1"));
    api.cluster()
        .add_pod("default", "web-1", "web", Some("worker-1"));
    let mut config = std::fs::read_to_string(dir.path().join("ra.toml")).unwrap();
    config.push_str("[auth]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\n");
    std::fs::write(dir.path().join("ra.toml"), config).unwrap();

    let _ca = layout.start_ca();
    let d = dir.path();
    let ra = layout.start_ra_with(&[
        (
            "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_URL",
            format!("https://{api_addr}"),
        ),
        (
            "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_CA_FILE",
            d.join("apiserver-ca.pem").display().to_string(),
        ),
        (
            "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_TOKEN_FILE",
            d.join("reviewer-token").display().to_string(),
        ),
    ]);
    let mut claims = sa_claims(K8S_ISSUER, "istio-system", "ztunnel");
    claims["kubernetes.io"]["pod"] = json!({"name": "ztunnel-a", "uid": uid});
    claims["kubernetes.io"]["node"] = json!({"name": "worker-1", "uid": "8e7d"});
    let token = issuer.mint(&claims);
    let root = layout.root();
    let web = "spiffe://cluster.local/ns/default/sa/web";
    let deadline = Instant::now() + Duration::from_secs(10);
    let cert = loop {
        match crate::ambient::ztunnel_fetch(ra.grpc, &root, &token, "Kubernetes", web).await {
            Ok(cert) => break cert,
            // Until the RA has listed the pods.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    let rest = Rest::new(ra.rest, &root);
    let serial = cert.leaf.serial().to_hex();
    let (status, record) = rest.get(&format!("/v1/certificates/{serial}"), ADMIN).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["spiffe_id"], web);
    assert_eq!(
        record["requester"]["impersonated_by"],
        "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    );
    assert_eq!(record["requester"]["pod"], "istio-system/ztunnel-a");
    assert_eq!(record["requester"]["node"], "worker-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_service_answers_only_allowed_ras() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtKey::es256("split");
    let layout = Layout::write(dir.path(), &issuer);
    let _ca = layout.start_ca();
    let root = layout.root();

    let connect = |identity: Option<(String, String)>| {
        let root = root.clone();
        let service = layout.service;
        async move {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&root));
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            let channel = Endpoint::from_shared(format!("https://{service}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_lazy();
            CertificateAuthorityClient::new(channel)
                .watch_authorities(WatchAuthoritiesRequest {})
                .await
        }
    };

    // The configured RA gets the authorities (public parts: certificates, no key).
    let ra_cert = std::fs::read_to_string(dir.path().join("ra.pem")).unwrap();
    let ra_key = std::fs::read_to_string(dir.path().join("ra-key.pem")).unwrap();
    let mut stream = connect(Some((ra_cert, ra_key))).await.unwrap().into_inner();
    let snapshot = stream.message().await.unwrap().unwrap();
    assert_eq!(snapshot.authorities.len(), 1);
    assert_eq!(snapshot.authorities[0].state, "active");

    // A certificate from the same internal CA for another identity is refused by name.
    let web = LeafSpec {
        uris: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
        ..LeafSpec::new("CN=web")
    };
    let stranger = layout.internal.issue_leaf(&web);
    let refused = connect(Some((stranger.pem(), stranger.key_pem())))
        .await
        .expect_err("an identity outside ca.allowed_ras is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("ca.allowed_ras"), "{refused:?}");

    // The allowed identity from a CA the service does not trust is refused too.
    let other_ca = TestCa::new(&CaSpec::new("CN=other internal CA"), None);
    let forged = other_ca.issue_leaf(&LeafSpec {
        uris: vec![RA_ID.into()],
        ..LeafSpec::new("CN=meshca-ra")
    });
    let refused = connect(Some((forged.pem(), forged.key_pem())))
        .await
        .expect_err("a certificate from an unknown CA is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // No client certificate: the handshake itself fails, so no call gets through.
    let refused = connect(None).await.expect_err("no client certificate");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        "{refused:?}"
    );
}
