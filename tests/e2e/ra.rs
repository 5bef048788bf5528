//! `meshca server` as istio-agent sees it: CreateCertificate over TLS gRPC with each
//! authentication method, Istio's chain, and every refusal with its code, no certificate,
//! nothing recorded and the failure counted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meshca_ca::keys::KeyType;
use meshca_ca::testing::{CaSpec, GeneratedChain, LeafSpec, TestCa, DAY};
use meshca_ca::x509::ParsedCert;
use meshca_ca::Store;
use tonic::Code;

use crate::harness::*;
use crate::peers::{self, ApiServerState, REVIEWER_TOKEN};

/// One server for this file's tests, with every authentication method configured.
pub(crate) struct World {
    pub(crate) server: MeshcaProcess,
    pub(crate) dir: PathBuf,
    pub(crate) chain: GeneratedChain,
    pub(crate) store_url: String,
    pub(crate) es256: JwtKey,
    pub(crate) rs256: JwtKey,
    pub(crate) stranger: JwtKey,
    pub(crate) remote_key: JwtKey,
    pub(crate) remote_issuer: String,
    pub(crate) athenz_ca: TestCa,
    pub(crate) api_server: Arc<ApiServerState>,
    pub(crate) _runtime: std::thread::JoinHandle<()>,
    pub(crate) _tmp: tempfile::TempDir,
}

pub(crate) fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (runtime, runtime_thread) = third_party_runtime();

        let chain = GeneratedChain::new(KeyType::EcP256);
        chain.write(&dir.join("cacerts"));
        let es256 = JwtKey::es256("es-key-1");
        let rs256 = JwtKey::rs256("rsa-key-1");
        let stranger = JwtKey::es256("not-published");
        std::fs::write(dir.join("jwks.json"), jwks(&[&es256, &rs256]).to_string()).unwrap();
        let remote_key = JwtKey::rs256("remote-1");
        let oidc = peers::start_oidc_issuer(&runtime, jwks(&[&remote_key]));
        let remote_issuer = format!("http://{oidc}");
        let api_server = Arc::new(ApiServerState::default());
        let (api_addr, api_ca) = peers::start_api_server(&runtime, api_server.clone());
        std::fs::write(dir.join("apiserver-ca.pem"), api_ca.pem()).unwrap();
        std::fs::write(dir.join("reviewer-token"), REVIEWER_TOKEN).unwrap();
        let athenz_ca = TestCa::new(&CaSpec::new("CN=Athenz CA,O=Athenz"), None);
        std::fs::write(dir.join("athenz-ca.pem"), athenz_ca.pem()).unwrap();

        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let down = free_port();
        let d = dir.display();
        let config = format!(
            r#"
trust_domain = "cluster.local"
data_dir = "{d}/data"

[ca]
cacerts_dir = "{d}/cacerts"
max_ttl = "48h"

[grpc]
listen = "{grpc}"
ip_sans = ["127.0.0.1"]

[metrics]
listen = "{metrics}"

[auth.athenz]
ca_bundle = "{d}/athenz-ca.pem"
namespace_map = {{ "sports.prod" = "sports" }}

[auth.clusters.Kubernetes]
mode = "jwks"
issuer = "{K8S_ISSUER}"
jwks_file = "{d}/jwks.json"
jwks_min_refresh = "1h"

[auth.clusters.remote]
mode = "jwks"
issuer = "{remote_issuer}"

[auth.clusters.tr]
mode = "tokenreview"
api_server_url = "https://{api_addr}"
api_server_ca_file = "{d}/apiserver-ca.pem"
api_server_token_file = "{d}/reviewer-token"

[auth.clusters.down]
mode = "tokenreview"
api_server_url = "https://127.0.0.1:{down}"
api_server_ca_file = "{d}/apiserver-ca.pem"
api_server_token_file = "{d}/reviewer-token"
request_timeout = "2s"
"#
        );
        std::fs::write(dir.join("meshca.toml"), config).unwrap();
        let config_path = dir.join("meshca.toml").display().to_string();
        let server = MeshcaProcess::start(
            &["server", "--config", &config_path],
            &[("MESHCA_LOG", "info".into())],
            &dir,
            grpc,
            metrics,
        );
        World {
            server,
            store_url: format!("sqlite://{d}/data/meshca.db"),
            dir,
            chain,
            es256,
            rs256,
            stranger,
            remote_key,
            remote_issuer,
            athenz_ca,
            api_server,
            _runtime: runtime_thread,
            _tmp: tmp,
        }
    })
}

impl World {
    pub(crate) fn root(&self) -> String {
        self.chain.root.pem()
    }

    pub(crate) async fn client(&self) -> meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient<tonic::transport::Channel>{
        ca_client(self.server.grpc, &self.root(), None).await
    }

    pub(crate) async fn store(&self) -> Store {
        Store::connect(&self.store_url).await.unwrap()
    }

    pub(crate) fn athenz_cert(&self, ca: &TestCa, cn: &str, spiffe: &str, expired: bool) -> TestCa {
        let (domain, service) = cn.rsplit_once('.').unwrap();
        let mut spec = LeafSpec {
            dns_names: vec![format!(
                "{service}.{}.athenz.cloud",
                domain.replace('.', "-")
            )],
            uris: vec![
                spiffe.to_string(),
                "athenz://instanceid/sys.k8s/pod-1234".to_string(),
            ],
            ..LeafSpec::new(&format!("CN={cn},O=Athenz"))
        };
        if expired {
            spec.not_before = std::time::SystemTime::now() - 10 * DAY;
            spec.not_after = std::time::SystemTime::now() - DAY;
        }
        ca.issue_leaf(&spec)
    }
}

fn leaf_of(chain: &[String]) -> ParsedCert {
    ParsedCert::from_der(pem::parse(&chain[0]).unwrap().contents()).unwrap()
}

#[tokio::test]
async fn es256_jwt_gets_istio_chain_and_is_recorded() {
    let w = world();
    let mut client = w.client().await;
    let key = WorkloadKey::ec();
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let token = w.es256.mint(&sa_claims(K8S_ISSUER, "default", "web"));
    let response = create_certificate(&mut client, &key.csr(&[id]), 0, Some(&token), None)
        .await
        .unwrap();
    let chain = &response.cert_chain;
    // [leaf, signing CA, intermediate, root bundle], each its own PEM element ending in "\n".
    assert_eq!(chain.len(), 4);
    assert!(chain
        .iter()
        .all(|e| e.ends_with('\n') && e.starts_with("-----BEGIN CERTIFICATE-----")));
    assert_eq!(chain[1], w.chain.signing.pem());
    assert_eq!(chain[2], w.chain.intermediate.pem());
    assert_eq!(chain[3], w.root());
    let leaf = leaf_of(chain);
    assert_eq!(leaf.uri_sans(), vec![id.to_string()]);
    openssl_verify(
        &w.dir,
        &w.root(),
        &format!("{}{}", chain[1], chain[2]),
        &chain[0],
    )
    .unwrap();

    let records = w
        .store()
        .await
        .issuances_for_public_key(&key.public_key_sha256())
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0].issuance;
    assert_eq!(r.serial, leaf.serial().to_hex());
    assert_eq!(r.requester_method, "jwt");
    assert_eq!(r.requester_principal, "system:serviceaccount:default:web");
    assert_eq!(r.cluster_id.as_deref(), Some("Kubernetes"));
    assert!(r.peer_address.as_deref().unwrap().starts_with("127.0.0.1:"));

    // The log (a file here, as a collector's pipe would be) is plain text, and at info it has
    // no line per certificate: istiod logs a signed CSR at debug, the audit log has them all.
    let log = w.server.output();
    assert!(log.contains("meshca server ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
    assert!(!log.contains("issued certificate"), "{log}");
}

#[tokio::test]
async fn rs256_jwt_with_explicit_cluster_id_and_requested_ttl() {
    let w = world();
    let mut client = w.client().await;
    let key = WorkloadKey::ec();
    let token = w.rs256.mint(&sa_claims(K8S_ISSUER, "payments", "api"));
    let response = create_certificate(
        &mut client,
        &key.csr(&[]),
        3600,
        Some(&token),
        Some("Kubernetes"),
    )
    .await
    .unwrap();
    let leaf = leaf_of(&response.cert_chain);
    assert_eq!(
        leaf.uri_sans(),
        vec!["spiffe://cluster.local/ns/payments/sa/api".to_string()]
    );
    let lifetime = leaf.not_after().duration_since(leaf.not_before()).unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600 + 120));
}

#[tokio::test]
async fn oidc_discovered_issuer_in_another_cluster() {
    let w = world();
    let mut client = w.client().await;
    let token = w
        .remote_key
        .mint(&sa_claims(&w.remote_issuer, "shop", "cart"));
    let response = create_certificate(
        &mut client,
        &WorkloadKey::ec().csr(&[]),
        0,
        Some(&token),
        Some("remote"),
    )
    .await
    .unwrap();
    assert_eq!(
        leaf_of(&response.cert_chain).uri_sans(),
        vec!["spiffe://cluster.local/ns/shop/sa/cart".to_string()]
    );
}

#[tokio::test]
async fn tokenreview_success_is_cached() {
    let w = world();
    let mut client = w.client().await;
    let token = "tr-good-billing-invoicer";
    for _ in 0..2 {
        let response = create_certificate(
            &mut client,
            &WorkloadKey::ec().csr(&[]),
            0,
            Some(token),
            Some("tr"),
        )
        .await
        .unwrap();
        assert_eq!(
            leaf_of(&response.cert_chain).uri_sans(),
            vec!["spiffe://cluster.local/ns/billing/sa/invoicer".to_string()]
        );
    }
    assert_eq!(
        w.api_server.reviews_of(token),
        1,
        "second call served from cache"
    );
}

#[tokio::test]
async fn athenz_identities_map_to_namespaces() {
    let w = world();
    for (cn, expected) in [
        ("sports.prod.api", "spiffe://cluster.local/ns/sports/sa/api"),
        (
            "media.web.frontend",
            "spiffe://cluster.local/ns/media-web/sa/frontend",
        ),
    ] {
        let (domain, service) = cn.rsplit_once('.').unwrap();
        let cert = w.athenz_cert(
            &w.athenz_ca,
            cn,
            &format!("spiffe://{domain}/sa/{service}"),
            false,
        );
        let mut client = ca_client(
            w.server.grpc,
            &w.root(),
            Some((&cert.pem(), &cert.key_pem())),
        )
        .await;
        let key = WorkloadKey::ec();
        let response = create_certificate(&mut client, &key.csr(&[]), 0, None, None)
            .await
            .unwrap();
        assert_eq!(
            leaf_of(&response.cert_chain).uri_sans(),
            vec![expected.to_string()],
            "{cn}"
        );
        let records = w
            .store()
            .await
            .issuances_for_public_key(&key.public_key_sha256())
            .await
            .unwrap();
        assert_eq!(records[0].issuance.requester_method, "athenz");
        assert_eq!(records[0].issuance.requester_principal, cn);
    }
}

#[tokio::test]
async fn renewal_with_the_current_workload_cert() {
    let w = world();
    let mut client = w.client().await;
    let first_key = WorkloadKey::ec();
    let token = w.es256.mint(&sa_claims(K8S_ISSUER, "default", "renewer"));
    let first = create_certificate(&mut client, &first_key.csr(&[]), 0, Some(&token), None)
        .await
        .unwrap();
    let cert_chain: String = first.cert_chain[..first.cert_chain.len() - 1].concat();

    // No token: the client certificate alone authenticates.
    let mut mtls = ca_client(
        w.server.grpc,
        &w.root(),
        Some((&cert_chain, &first_key.key_pem())),
    )
    .await;
    let second_key = WorkloadKey::ec();
    let second = create_certificate(
        &mut mtls,
        &second_key.csr(&["spiffe://cluster.local/ns/default/sa/renewer"]),
        0,
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        leaf_of(&second.cert_chain).uri_sans(),
        vec!["spiffe://cluster.local/ns/default/sa/renewer".to_string()]
    );
    let records = w
        .store()
        .await
        .issuances_for_public_key(&second_key.public_key_sha256())
        .await
        .unwrap();
    assert_eq!(records[0].issuance.requester_method, "renewal");
    assert_eq!(
        records[0].issuance.requester_principal,
        "spiffe://cluster.local/ns/default/sa/renewer"
    );
}

#[tokio::test]
async fn health_metrics_and_readiness() {
    let w = world();
    let channel = tls_channel(w.server.grpc, &w.root(), None).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "istio.v1.auth.IstioCertificateService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(http_get(w.server.metrics, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(w.server.metrics, "/readyz").unwrap().0, 200);
    let metrics = http_get(w.server.metrics, "/metrics").unwrap().1;
    let chain_expiry = metric_value(&metrics, "citadel_server_cert_chain_expiry_timestamp");
    let signing_expiry = w
        .chain
        .signing
        .cert
        .not_after()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(chain_expiry as u64, signing_expiry);
    assert!(metrics.contains("# TYPE meshca_csr_latency_seconds histogram"));
}

/// The README's first minute: `meshca server --dev`, then a cert with the token it wrote.
#[tokio::test]
async fn dev_mode_issues_with_its_own_token() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    let grpc = server.grpc;
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let token = std::fs::read_to_string(data.join("dev/token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for secret in ["dev/token", "dev/issuer-key.pem", "key-encryption-key"] {
        let mode = std::fs::metadata(data.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("dev/jwks.json")).unwrap())
            .unwrap();
    // As kube-apiserver signs: RS256.
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0]["kid"].is_string());

    let mut client = ca_client(grpc, &root, None).await;
    let response = create_certificate(
        &mut client,
        &WorkloadKey::ec().csr(&[]),
        0,
        Some(token.trim()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.cert_chain.len(), 2, "[leaf, root bundle]");
    assert_eq!(response.cert_chain[1], root);
    assert_eq!(
        leaf_of(&response.cert_chain).uri_sans(),
        vec!["spiffe://cluster.local/ns/default/sa/default".to_string()]
    );
    let dir = tmp.path();
    openssl_verify(dir, &root, "", &response.cert_chain[0]).unwrap();
}

/// The trust-bundle stream: the bundle at connect, a new message when `root-cert.pem` gains a
/// root, and nothing for unauthenticated callers.
#[tokio::test]
async fn trust_bundle_stream_follows_root_changes() {
    use meshca_proto::meshca::v1::trust_bundle_service_client::TrustBundleServiceClient;
    use meshca_proto::meshca::v1::WatchTrustBundleRequest;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let chain = GeneratedChain::new(KeyType::EcP256);
    let issuer = JwtKey::es256("k1");
    let server = plugged_in_server(dir, &chain, &issuer);
    let grpc = server.grpc;

    let channel = tls_channel(grpc, &chain.root.pem(), None).await;
    let mut client = TrustBundleServiceClient::new(channel);

    let err = client.watch(WatchTrustBundleRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let token = issuer.mint(&sa_claims(K8S_ISSUER, "istio-system", "meshca-agent"));
    let mut request = tonic::Request::new(WatchTrustBundleRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.roots_pem, vec![chain.root.pem()]);

    // The operator adds a second root (the first step of a manual rotation).
    let next_root = TestCa::new(&CaSpec::new("CN=Next Root,O=meshca tests"), None);
    std::fs::write(
        dir.join("cacerts/root-cert.pem"),
        format!("{}{}", chain.root.pem(), next_root.pem()),
    )
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a push within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(second.roots_pem, vec![chain.root.pem(), next_root.pem()]);
    assert_ne!(second.version, first.version);
}

/// `meshca bench`'s TokenReview profile: the load generator's token is reviewed by the API
/// server (the in-test double), every answer is checked, and the RA's review cache means the
/// API server sees the token once, not once per CSR.
#[tokio::test]
async fn bench_tokenreview_profile_reviews_the_token_once() {
    let w = world();
    let token = "tr-good-loadtest-agent";
    let token_file = w.dir.join("bench-tr-token");
    std::fs::write(&token_file, token).unwrap();
    let report = bench_report([
        "--addr",
        &w.server.grpc.to_string(),
        "--ca-cert",
        w.dir.join("cacerts/root-cert.pem").to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--cluster-id",
        "tr",
        "--namespace",
        "loadtest",
        "--service-account",
        "agent",
        "--requests",
        "200",
        "--concurrency",
        "16",
    ]);
    assert_eq!(report["ok"], 200, "{report}");
    assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
    let reviews = w.api_server.reviews_of(token);
    // Concurrent first calls may each miss the cache before it fills; later ones never do.
    assert!(
        (1..=16).contains(&reviews),
        "{reviews} reviews for 200 calls"
    );
}
