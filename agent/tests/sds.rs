//! Envoy SDS over a real Unix socket, with a client built from Envoy's generated types acting
//! as Envoy does: subscriptions, ACK, NACK, stale nonces, pushes on rotation only to the
//! streams that subscribe to what changed, and certificates mounted as files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{data_source, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshca_agent::authority::StackAuthority;
use meshca_agent::credential::Credential;
use meshca_agent::metrics::AgentMetrics;
use meshca_agent::sds::{self, SdsService, SECRET_TYPE_URL};
use meshca_agent::workload_api::{unix_channel, unix_channel_as};
use meshca_ca::{Authority, TrustDomain};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

mod common;
use common::credential;

/// Long enough for a response that is coming to arrive on loopback; used to assert silence.
const QUIET: Duration = Duration::from_millis(700);

fn authority() -> Authority {
    let td = TrustDomain::new("cluster.local").unwrap();
    Authority::generate_self_signed(&td, meshca_ca::KeyType::EcP256, SystemTime::now()).unwrap()
}

struct Server {
    socket: PathBuf,
    credential: watch::Sender<Option<Arc<Credential>>>,
    metrics: Arc<AgentMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(initial: Option<Credential>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent/sds.sock");
        // A stale file left by a crashed agent is replaced.
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        std::fs::write(&socket, "stale").unwrap();
        let (tx, rx) = watch::channel(initial.map(Arc::new));
        let metrics = Arc::new(AgentMetrics::default());
        let service = SdsService::new(rx, metrics.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let socket = socket.clone();
            async move {
                sds::serve(
                    service,
                    &socket,
                    meshca_agent::workload_api::PRIVATE_SOCKET_MODE,
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            }
        });
        common::accepting(&socket).await;
        Self {
            socket,
            credential: tx,
            metrics,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn client(&self) -> SecretDiscoveryServiceClient<Channel> {
        SecretDiscoveryServiceClient::new(unix_channel(self.socket.clone()).await.unwrap())
    }

    async fn stream(&self) -> EnvoyStream {
        self.stream_on(self.client().await).await
    }

    async fn stream_on(&self, mut client: SecretDiscoveryServiceClient<Channel>) -> EnvoyStream {
        let (tx, rx) = mpsc::channel(8);
        let responses = client
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        EnvoyStream { tx, responses }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!self.socket.exists(), "socket removed at exit");
    }
}

/// One SDS stream, driven the way Envoy drives it.
struct EnvoyStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

fn request(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    }
}

fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.7~web-0.default~default.svc.cluster.local".into(),
        cluster: "web.default".into(),
        ..Default::default()
    }
}

impl EnvoyStream {
    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn subscribe(&self, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: Some(node()),
            ..request(names)
        })
        .await;
    }

    async fn ack(&self, names: &[&str], last: &DiscoveryResponse) {
        self.send(DiscoveryRequest {
            version_info: last.version_info.clone(),
            response_nonce: last.nonce.clone(),
            ..request(names)
        })
        .await;
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    async fn expect_silence(&mut self, why: &str) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("{why}: expected no response, got {message:?}");
        }
    }
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, SECRET_TYPE_URL);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    secrets(response).into_iter().map(|s| s.name).collect()
}

fn inline(source: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(bytes)) => {
            String::from_utf8(bytes.clone()).unwrap()
        }
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// (certificate chain, private key) of a `tls_certificate` secret.
fn tls_certificate(secret: &Secret) -> (String, String) {
    match &secret.r#type {
        Some(secret::Type::TlsCertificate(tls)) => {
            (inline(&tls.certificate_chain), inline(&tls.private_key))
        }
        other => panic!("{}: expected tls_certificate, got {other:?}", secret.name),
    }
}

fn trusted_ca(secret: &Secret) -> String {
    match &secret.r#type {
        Some(secret::Type::ValidationContext(v)) => inline(&v.trusted_ca),
        other => panic!(
            "{}: expected validation_context, got {other:?}",
            secret.name
        ),
    }
}

fn find<'a>(secrets: &'a [Secret], name: &str) -> &'a Secret {
    secrets.iter().find(|s| s.name == name).unwrap()
}

/// Envoy with `google_grpc` (grpc-core) sends the percent-encoded socket path as `:authority`,
/// a grpc-java client the raw path: h2 alone resets such streams, the agent must serve them.
#[tokio::test]
async fn every_grpc_stacks_authority_is_served() {
    let authority = authority();
    let first = credential(&authority);
    let server = Server::start(Some(first.clone())).await;
    for stack in StackAuthority::ALL {
        let channel = unix_channel_as(server.socket.clone(), stack).await.unwrap();
        let mut envoy = server
            .stream_on(SecretDiscoveryServiceClient::new(channel))
            .await;
        envoy.subscribe(&["default", "ROOTCA"]).await;
        let served = secrets(&envoy.next().await);
        assert_eq!(
            tls_certificate(find(&served, "default")).0,
            first.chain_pem.concat(),
            "{stack:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn subscribe_ack_nack_stale_and_push_on_rotation() {
    let authority = authority();
    let first = credential(&authority);
    let server = Server::start(Some(first.clone())).await;
    let mut envoy = server.stream().await;

    envoy.subscribe(&["default", "ROOTCA"]).await;
    let initial = envoy.next().await;
    assert!(!initial.version_info.is_empty() && !initial.nonce.is_empty());
    let served = secrets(&initial);
    assert_eq!(served.len(), 2);
    let (chain, key) = tls_certificate(find(&served, "default"));
    assert_eq!(
        chain,
        first.chain_pem.concat(),
        "leaf + intermediates, no root"
    );
    assert_eq!(key, first.key_pem);
    assert_eq!(
        trusted_ca(find(&served, "ROOTCA")),
        first.roots_pem.concat()
    );
    assert_eq!(
        server
            .metrics
            .render(&[])
            .lines()
            .find(|l| l.starts_with("meshca_agent_sds_streams ")),
        Some("meshca_agent_sds_streams 1")
    );

    // ACK: no response.
    envoy.ack(&["default", "ROOTCA"], &initial).await;
    envoy.expect_silence("ACK").await;

    // NACK: logged, no response, and the rejected secret is not re-sent.
    envoy
        .send(DiscoveryRequest {
            version_info: String::new(),
            response_nonce: initial.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "Failed to load private key".into(),
                details: vec![],
            }),
            ..request(&["default", "ROOTCA"])
        })
        .await;
    envoy.expect_silence("NACK").await;

    // A request carrying an old nonce is stale: even a subscription change in it is ignored.
    envoy
        .send(DiscoveryRequest {
            response_nonce: "not-the-last-nonce".into(),
            ..request(&["default", "ROOTCA", "file-root:/etc/ssl/certs/ca.pem"])
        })
        .await;
    envoy.expect_silence("stale nonce").await;

    // A second stream on the bundle only.
    let mut roots_only = server.stream().await;
    roots_only.subscribe(&["ROOTCA"]).await;
    let roots_initial = roots_only.next().await;
    assert_eq!(names(&roots_initial), ["ROOTCA"]);
    roots_only.ack(&["ROOTCA"], &roots_initial).await;

    // Rotation under the same root: `default` is pushed with a new version and nonce; the
    // bundle did not change, so neither stream hears about ROOTCA.
    let second = credential(&authority);
    server
        .credential
        .send_replace(Some(Arc::new(second.clone())));
    let pushed = envoy.next().await;
    assert_eq!(names(&pushed), ["default"]);
    assert_ne!(pushed.version_info, initial.version_info);
    assert_ne!(pushed.nonce, initial.nonce);
    assert_eq!(tls_certificate(&secrets(&pushed)[0]).1, second.key_pem);
    roots_only
        .expect_silence("rotation under the same roots")
        .await;
    envoy.ack(&["default", "ROOTCA"], &pushed).await;
    envoy.expect_silence("ACK of the push").await;

    // A second root joins the bundle: both streams get ROOTCA, and only ROOTCA.
    let next_root = authority_root_pem(&self::authority());
    let mut widened = second.clone();
    widened.roots_pem.push(next_root.clone());
    server.credential.send_replace(Some(Arc::new(widened)));
    for stream in [&mut envoy, &mut roots_only] {
        let pushed = stream.next().await;
        assert_eq!(names(&pushed), ["ROOTCA"]);
        let bundle = trusted_ca(&secrets(&pushed)[0]);
        assert!(bundle.ends_with(&next_root) && bundle.starts_with(&second.roots_pem[0]));
    }

    drop(envoy);
    drop(roots_only);
    server.stop().await;
}

/// The server's per-stream buffers start small (src/sds/grpc.rs): a bundle of ~64 KiB (many
/// roots, as during a root rotation; more than the client's 64 KiB stream window) and a
/// request with a large node still get through, and so does a small push after them.
#[tokio::test]
async fn large_bundles_and_requests_get_through() {
    let authority = authority();
    let mut big = credential(&authority);
    while big.roots_pem.concat().len() < 64 * 1024 {
        big.roots_pem.push(authority_root_pem(&self::authority()));
    }
    let server = Server::start(Some(big.clone())).await;
    let mut envoy = server.stream().await;
    envoy
        .send(DiscoveryRequest {
            node: Some(Node {
                metadata: None,
                id: format!("sidecar~10.0.0.7~{}", "w".repeat(16 * 1024)),
                ..node()
            }),
            ..request(&["default", "ROOTCA"])
        })
        .await;
    let initial = envoy.next().await;
    assert!(initial.encoded_len() > 64 * 1024);
    let served = secrets(&initial);
    assert_eq!(trusted_ca(find(&served, "ROOTCA")), big.roots_pem.concat());
    envoy.ack(&["default", "ROOTCA"], &initial).await;

    // Back to one root: the small push after the large one.
    let small = credential(&authority);
    server
        .credential
        .send_replace(Some(Arc::new(small.clone())));
    let pushed = envoy.next().await;
    assert_eq!(
        trusted_ca(find(&secrets(&pushed), "ROOTCA")),
        small.roots_pem.concat()
    );
    assert_eq!(
        tls_certificate(find(&secrets(&pushed), "default")).1,
        small.key_pem
    );
    drop(envoy);
    server.stop().await;
}

fn authority_root_pem(authority: &Authority) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", authority.root().der().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[tokio::test]
async fn waits_for_the_first_certificate_and_leaves_out_unknown_names() {
    let server = Server::start(None).await;
    let mut envoy = server.stream().await;
    envoy
        .subscribe(&[
            "default",
            "no-such-secret",
            "file-cert:/missing-key-half.pem",
        ])
        .await;
    envoy.expect_silence("no certificate yet").await;

    let authority = authority();
    let first = credential(&authority);
    server
        .credential
        .send_replace(Some(Arc::new(first.clone())));
    let response = envoy.next().await;
    assert_eq!(names(&response), ["default"], "unknown names left out");
    assert_eq!(tls_certificate(&secrets(&response)[0]).1, first.key_pem);

    // Adding ROOTCA later (nonce of the last response) sends just the new resource.
    envoy
        .ack(&["default", "ROOTCA", "no-such-secret"], &response)
        .await;
    let added = envoy.next().await;
    assert_eq!(names(&added), ["ROOTCA"]);

    // Dropping and re-adding a resource sends it again.
    envoy.ack(&["ROOTCA"], &added).await;
    envoy
        .expect_silence("an unsubscription sends nothing")
        .await;
    envoy.ack(&["ROOTCA", "default"], &added).await;
    assert_eq!(names(&envoy.next().await), ["default"]);

    drop(envoy);
    server.stop().await;
}

#[tokio::test]
async fn refuses_streams_without_a_node_or_for_another_type() {
    let server = Server::start(Some(credential(&authority()))).await;

    let mut envoy = server.stream().await;
    envoy.send(request(&["default"])).await;
    let status = tokio::time::timeout(Duration::from_secs(5), envoy.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());

    let mut envoy = server.stream().await;
    envoy
        .send(DiscoveryRequest {
            node: Some(node()),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..request(&["default"])
        })
        .await;
    let status = tokio::time::timeout(Duration::from_secs(5), envoy.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("Cluster"), "{}", status.message());

    // Delta xDS is not spoken, and the answer says what to configure instead.
    let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let status = server
        .client()
        .await
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("GRPC"), "{}", status.message());

    drop(envoy);
    server.stop().await;
}

#[tokio::test]
async fn fetch_secrets_answers_once() {
    let first = credential(&authority());
    let server = Server::start(Some(first.clone())).await;
    let response = server
        .client()
        .await
        .fetch_secrets(DiscoveryRequest {
            node: Some(node()),
            ..request(&["ROOTCA", "default", "unknown"])
        })
        .await
        .unwrap()
        .into_inner();
    let served = secrets(&response);
    assert_eq!(names(&response), ["ROOTCA", "default"]);
    assert_eq!(tls_certificate(find(&served, "default")).1, first.key_pem);
    server.stop().await;
}

fn write(path: &Path, contents: &str) {
    // Replace atomically, as a Secret volume update or `mv` does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn serves_mounted_files_and_pushes_their_changes() {
    let server = Server::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("cert-chain.pem"),
        dir.path().join("key.pem"),
        dir.path().join("root-cert.pem"),
    );
    let authority = authority();
    let one = credential(&authority);
    write(&cert, &one.chain_pem.concat());
    write(&key, &one.key_pem);
    write(&ca, &one.roots_pem.concat());
    let file_cert = format!("file-cert:{}~{}", cert.display(), key.display());
    let file_root = format!("file-root:{}", ca.display());

    let mut envoy = server.stream().await;
    envoy.subscribe(&[&file_cert, &file_root]).await;
    let initial = envoy.next().await;
    let served = secrets(&initial);
    assert_eq!(
        tls_certificate(find(&served, &file_cert)),
        (one.chain_pem.concat(), one.key_pem.clone())
    );
    assert_eq!(
        trusted_ca(find(&served, &file_root)),
        one.roots_pem.concat()
    );
    envoy.ack(&[&file_cert, &file_root], &initial).await;

    // The workload's files are replaced: the new pair is pushed, the unchanged root is not.
    let two = credential(&authority);
    write(&key, &two.key_pem);
    write(&cert, &two.chain_pem.concat());
    let pushed = loop {
        // The key may be seen before the cert; what matters is that the final pair arrives.
        let pushed = envoy.next().await;
        envoy.ack(&[&file_cert, &file_root], &pushed).await;
        assert_eq!(names(&pushed), std::slice::from_ref(&file_cert));
        if tls_certificate(&secrets(&pushed)[0]).0 == two.chain_pem.concat() {
            break pushed;
        }
    };
    assert_eq!(tls_certificate(&secrets(&pushed)[0]).1, two.key_pem);
    assert!(server
        .metrics
        .render(&[])
        .contains("meshca_agent_sds_streams 1"));

    // A file that stops being a certificate is not served; Envoy keeps what it has.
    write(&ca, "not a certificate\n");
    envoy.expect_silence("an unreadable root file").await;

    // A file that is not what its name claims is refused from the start.
    let mut other = server.stream().await;
    other
        .subscribe(&[&format!("file-cert:{}~{}", key.display(), key.display())])
        .await;
    other
        .expect_silence("a key file named as a certificate")
        .await;

    drop(envoy);
    drop(other);
    server.stop().await;
}
