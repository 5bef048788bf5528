//! `meshca agent` beside a real `meshca server`, seen by its two kinds of clients: Envoy (an
//! SDS client built from Envoy's generated types) and a workload using the crates.io `spiffe`
//! Workload API client. Certificates live 20 s, so both see a rotation, an outage and the
//! recovery within one test.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshca_agent::sds::SECRET_TYPE_URL;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::harness::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/default";
const NAMES: [&str; 2] = ["default", "ROOTCA"];

fn request(response: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: response.map(|r| r.nonce.clone()).unwrap_or_default(),
        node: response.is_none().then(|| Node {
            id: "sidecar~10.0.0.7~web-0.default~default.svc.cluster.local".into(),
            ..Default::default()
        }),
        resource_names: NAMES.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    }
}

fn bytes(source: &Option<DataSource>) -> String {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// The certificate chain and key of `default`, and the bundle of `ROOTCA`, as far as present.
#[derive(Debug, Default)]
struct Served {
    chain: Option<String>,
    key: Option<String>,
    roots: Option<String>,
}

fn served(response: &DiscoveryResponse) -> Served {
    assert_eq!(response.type_url, SECRET_TYPE_URL);
    let mut out = Served::default();
    for any in &response.resources {
        let secret = Secret::decode(any.value.as_slice()).unwrap();
        match (secret.name.as_str(), secret.r#type) {
            ("default", Some(secret::Type::TlsCertificate(tls))) => {
                out.chain = Some(bytes(&tls.certificate_chain));
                out.key = Some(bytes(&tls.private_key));
            }
            ("ROOTCA", Some(secret::Type::ValidationContext(v))) => {
                out.roots = Some(bytes(&v.trusted_ca));
            }
            other => panic!("unexpected secret {other:?}"),
        }
    }
    out
}

/// The leaf's public key equals the private key's, via openssl.
fn key_matches(dir: &Path, chain: &str, key: &str) -> bool {
    let pubkey = |args: &[&str], file: &str, contents: &str| {
        let path = dir.join(file);
        std::fs::write(&path, contents).unwrap();
        let out = std::process::Command::new("openssl")
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        out.stdout
    };
    let from_cert = pubkey(&["x509", "-noout", "-pubkey", "-in"], "leaf.pem", chain);
    let from_key = pubkey(&["pkey", "-pubout", "-in"], "key.pem", key);
    !from_cert.is_empty() && from_cert == from_key
}

async fn next(
    responses: &mut tonic::Streaming<DiscoveryResponse>,
    within: Duration,
) -> DiscoveryResponse {
    tokio::time::timeout(within, responses.message())
        .await
        .expect("an SDS response in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn envoy_and_spiffe_clients_through_rotation_and_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let data_arg = data.to_str().unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server_args = ["server", "--dev", "--data-dir", data_arg];
    let server_env = [
        ("MESHCA_GRPC_LISTEN", grpc.to_string()),
        ("MESHCA_METRICS_LISTEN", metrics.to_string()),
    ];
    let mut server = MeshcaProcess::start(&server_args, &server_env, tmp.path(), grpc, metrics);
    let agent = dev_agent(tmp.path(), grpc, &[("MESHCA_AGENT_CERT_TTL", "20s".into())]);
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();

    // Envoy subscribes to the workload certificate and the bundle on one stream. Its
    // `google_grpc` client (grpc-core) sends the socket path, percent-encoded, as `:authority`.
    let sds_socket = data.join("agent/sds.sock");
    let channel = meshca_agent::workload_api::unix_channel_as(
        sds_socket,
        meshca_agent::authority::StackAuthority::PercentEncodedPath,
    )
    .await
    .unwrap();
    let mut sds = SecretDiscoveryServiceClient::new(channel);
    let (envoy, requests) = mpsc::channel(8);
    let mut responses = sds
        .stream_secrets(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    envoy.send(request(None)).await.unwrap();
    let initial = next(&mut responses, Duration::from_secs(10)).await;
    let first = served(&initial);
    let (chain, key) = (first.chain.clone().unwrap(), first.key.clone().unwrap());
    assert_eq!(first.roots.as_deref(), Some(root.as_str()));
    assert!(key_matches(tmp.path(), &chain, &key));
    openssl_verify(tmp.path(), &root, &chain, &chain).expect("the chain verifies to ROOTCA");
    assert_eq!(agent.metric("meshca_agent_sds_streams"), 1.0);

    // ACK, then NACK: neither gets an answer.
    envoy.send(request(Some(&initial))).await.unwrap();
    let nack = DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 13,
            message: "rejected by the test".into(),
            details: vec![],
        }),
        ..request(Some(&initial))
    };
    envoy.send(nack).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), responses.message())
            .await
            .is_err(),
        "no response to an ACK or a NACK"
    );

    // A workload with the crates.io `spiffe` client: its own SVID validation accepts ours.
    let workload_api = format!("unix:{}", data.join("agent/spiffe.sock").display());
    let workload = spiffe::WorkloadApiClient::connect_to(&workload_api)
        .await
        .unwrap();
    let svid = workload.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert_eq!(
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", svid.leaf().as_ref().to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
        ),
        chain,
        "SDS and the Workload API serve the same certificate"
    );
    let context = workload.fetch_x509_context().await.unwrap();
    let bundle = context
        .bundle_set()
        .get(&spiffe::TrustDomain::new("cluster.local").unwrap())
        .expect("a bundle for the trust domain");
    assert_eq!(bundle.authorities().len(), 1);
    let mut svids = workload.stream_x509_svids().await.unwrap();
    let streamed = svids.next().await.unwrap().unwrap();
    assert_eq!(streamed.leaf().as_ref(), svid.leaf().as_ref());

    // Rotation at half of the 20 s lifetime: Envoy gets `default` (the bundle did not change)
    // with a new version and nonce, and the workload a new SVID.
    let pushed = next(&mut responses, Duration::from_secs(25)).await;
    assert_ne!(pushed.version_info, initial.version_info);
    assert_ne!(pushed.nonce, initial.nonce);
    let rotated = served(&pushed);
    assert!(rotated.roots.is_none(), "ROOTCA unchanged, so not re-sent");
    let (chain2, key2) = (rotated.chain.unwrap(), rotated.key.unwrap());
    assert_ne!(chain2, chain);
    assert_ne!(key2, key, "a fresh key per rotation");
    assert!(key_matches(tmp.path(), &chain2, &key2));
    envoy.send(request(Some(&pushed))).await.unwrap();
    let next_svid = tokio::time::timeout(Duration::from_secs(5), svids.next())
        .await
        .expect("the rotated SVID")
        .unwrap()
        .unwrap();
    assert_ne!(next_svid.leaf().as_ref(), svid.leaf().as_ref());

    // The server goes away: Envoy and the workload keep the current certificate.
    server.stop();
    let fetched = sds
        .fetch_secrets(request(None))
        .await
        .expect("SDS still answers")
        .into_inner();
    assert_eq!(served(&fetched).chain.as_deref(), Some(chain2.as_str()));
    let still = workload.fetch_x509_svid().await.unwrap();
    assert_eq!(still.leaf().as_ref(), next_svid.leaf().as_ref());

    // It returns (same data dir, same root): the next rotation reaches Envoy.
    let _server = MeshcaProcess::start(&server_args, &server_env, tmp.path(), grpc, metrics);
    let recovered = next(&mut responses, Duration::from_secs(40)).await;
    let chain3 = served(&recovered).chain.unwrap();
    assert_ne!(chain3, chain2);
    openssl_verify(tmp.path(), &root, &chain3, &chain3).expect("the new chain verifies");
}
