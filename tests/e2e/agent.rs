//! The agent's certificate loop against a real `meshca server`: fresh keys, validated answers,
//! rotation before expiry, and riding out a server outage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_agent::client::{CaClient, CaClientConfig, WorkloadIdentity};
use meshca_agent::credential::{Credential, KeyType};
use meshca_agent::metrics::AgentMetrics;
use meshca_agent::refresh::keep_fresh;
use tokio::sync::watch;

use crate::harness::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/default";

async fn next_credential(
    rx: &mut watch::Receiver<Option<Arc<Credential>>>,
    within: Duration,
) -> Arc<Credential> {
    tokio::time::timeout(within, async {
        loop {
            rx.changed().await.expect("rotation loop alive");
            if let Some(c) = rx.borrow_and_update().clone() {
                return c;
            }
        }
    })
    .await
    .expect("a credential in time")
}

/// Returns once the rotation loop has counted a failed renewal.
async fn failed_renewal(metrics: &AgentMetrics, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while metrics.csr_failures() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal attempt failed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rotates_before_expiry_and_survives_a_server_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let args = ["server", "--dev", "--data-dir", data.to_str().unwrap()];
    let env = [
        ("MESHCA_GRPC_LISTEN", grpc.to_string()),
        ("MESHCA_METRICS_LISTEN", metrics.to_string()),
    ];
    let mut server = MeshcaProcess::start(&args, &env, tmp.path(), grpc, metrics);

    let client = CaClient::new(&CaClientConfig {
        ca_addr: grpc.to_string(),
        ca_root_pem: std::fs::read_to_string(data.join("root-cert.pem")).unwrap(),
        token_file: Some(data.join("dev/token")),
        client_identity: None,
        cluster_id: "Kubernetes".into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let identity = WorkloadIdentity {
        spiffe_id: ID.into(),
        key_type: KeyType::EcP256,
        ttl: Duration::from_secs(20),
        grace_ratio: 0.5,
        grace_jitter: 0.01,
        asked_as: Default::default(),
    };
    let (tx, mut rx) = watch::channel(None);
    // No trust-bundle stream here: the bundle never changes.
    let (_bundle_tx, bundle_rx) = watch::channel(Default::default());
    let agent_metrics = Arc::new(AgentMetrics::default());
    tokio::spawn(keep_fresh(
        client,
        identity,
        tx,
        agent_metrics.clone(),
        bundle_rx,
        watch::Sender::new(None),
    ));

    let first = next_credential(&mut rx, Duration::from_secs(15)).await;
    assert_eq!(first.spiffe_id, ID);
    let lifetime = first.not_after.duration_since(first.not_before).unwrap();
    assert_eq!(
        lifetime,
        Duration::from_secs(20 + 120),
        "20 s TTL, backdated 2 min"
    );

    // Rotation at half the lifetime (the 2-minute backdating counts): a new key and cert
    // well before the first expires.
    let second = next_credential(&mut rx, Duration::from_secs(20)).await;
    assert_ne!(second.key_pem, first.key_pem, "a fresh key per issuance");
    assert!(second.not_after > first.not_after);
    assert!(SystemTime::now() < first.not_after, "rotated before expiry");

    // The server goes away: at the next rotation time the agent asks, fails, and keeps what it
    // has (waiting for that failure, not for a while, is what makes "nothing changed" mean it).
    assert_eq!(
        agent_metrics.csr_failures(),
        0,
        "no failure while the server ran"
    );
    server.stop();
    failed_renewal(&agent_metrics, Duration::from_secs(30)).await;
    let held = rx
        .borrow()
        .clone()
        .expect("still serving the last good cert");
    assert_eq!(held.chain_pem, second.chain_pem);
    assert!(SystemTime::now() < held.not_after, "and it is still valid");

    // It comes back (same data dir, same root): the agent recovers on its own.
    let _server = MeshcaProcess::start(&args, &env, tmp.path(), grpc, metrics);
    let recovered = next_credential(&mut rx, Duration::from_secs(30)).await;
    assert!(recovered.not_after > second.not_after);
}

/// `meshca agent --dev` next to `meshca server --dev`: the README's second minute.
#[tokio::test]
async fn dev_agent_serves_the_workload_api_and_writes_files() {
    use meshca_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use meshca_proto::workload::X509svidRequest;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    let grpc = server.grpc;
    let out = tmp.path().join("certs");
    let agent = dev_agent(
        tmp.path(),
        grpc,
        &[("MESHCA_AGENT_OUTPUT_DIR", out.display().to_string())],
    );

    let mut client =
        SpiffeWorkloadApiClient::new(unix_channel(data.join("agent/spiffe.sock")).await);
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
    let svid = stream.message().await.unwrap().unwrap().svids.remove(0);
    assert_eq!(svid.spiffe_id, ID);
    assert_eq!(agent.metric("meshca_agent_workload_api_streams"), 1.0);
    assert!(agent.metric("meshca_agent_csr_count") >= 1.0);
    assert_eq!(agent.metric("meshca_agent_csr_failure_count"), 0.0);

    // OUTPUT_CERTS: the same certificate, the key private.
    let chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();
    assert_eq!(pem::parse(&chain).unwrap().into_contents(), svid.x509_svid);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(out.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(data.join("root-cert.pem")).unwrap()
    );
}

/// A gRPC channel over a Unix socket, as SPIFFE clients dial the Workload API.
async fn unix_channel(socket: std::path::PathBuf) -> tonic::transport::Channel {
    meshca_agent::workload_api::unix_channel(socket)
        .await
        .unwrap()
}

/// A root added on the CA side reaches workloads through the trust-bundle stream, before any
/// certificate rotation.
#[tokio::test]
async fn new_roots_reach_workloads_without_a_rotation() {
    use meshca_ca::keys::KeyType as CaKeyType;
    use meshca_ca::testing::{CaSpec, GeneratedChain, TestCa};
    use meshca_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use meshca_proto::workload::X509BundlesRequest;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = dir.display();
    let chain = GeneratedChain::new(CaKeyType::EcP256);
    std::fs::write(dir.join("root.pem"), chain.root.pem()).unwrap();
    let issuer = JwtKey::es256("k1");
    std::fs::write(
        dir.join("token"),
        issuer.mint(&sa_claims(K8S_ISSUER, "shop", "cart")),
    )
    .unwrap();
    let server = plugged_in_server(dir, &chain, &issuer);
    let grpc = server.grpc;

    let agent_health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let socket = dir.join("agent.sock");
    let _agent = MeshcaProcess::start(
        &["agent", "--data-dir", &format!("{d}/agent-data")],
        &[
            ("MESHCA_AGENT_CA_ADDR", grpc.to_string()),
            ("MESHCA_AGENT_CA_ROOT_CERT", format!("{d}/root.pem")),
            ("MESHCA_AGENT_TOKEN_FILE", format!("{d}/token")),
            ("MESHCA_AGENT_NAMESPACE", "shop".into()),
            ("MESHCA_AGENT_SERVICE_ACCOUNT", "cart".into()),
            (
                "MESHCA_AGENT_WORKLOAD_API_SOCKET",
                socket.display().to_string(),
            ),
            ("MESHCA_AGENT_METRICS_LISTEN", agent_health.to_string()),
        ],
        dir,
        agent_health,
        agent_health,
    );

    let mut client = SpiffeWorkloadApiClient::new(unix_channel(socket).await);
    let mut request = tonic::Request::new(X509BundlesRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut bundles = client
        .fetch_x509_bundles(request)
        .await
        .unwrap()
        .into_inner();
    let first = bundles.message().await.unwrap().unwrap();
    assert_eq!(first.bundles["cluster.local"], chain.root.cert.der());

    let next_root = TestCa::new(&CaSpec::new("CN=Next Root,O=meshca tests"), None);
    std::fs::write(
        dir.join("cacerts/root-cert.pem"),
        format!("{}{}", chain.root.pem(), next_root.pem()),
    )
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(15), bundles.message())
        .await
        .expect("the new root within 15 s")
        .unwrap()
        .unwrap();
    let expected: Vec<u8> = [chain.root.cert.der(), next_root.cert.der()].concat();
    assert_eq!(second.bundles["cluster.local"], expected);
}
