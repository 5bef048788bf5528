//! The SPIFFE Workload API over a real Unix socket, with a tonic client as go-spiffe or the
//! rust `spiffe` crate would connect: the security header, the SVID and bundle encodings, and
//! a new message on rotation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_agent::authority::StackAuthority;
use meshca_agent::workload_api::{self, WorkloadApi};
use meshca_ca::x509::ParsedCert;
use meshca_ca::{Authority, TrustDomain};
use meshca_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshca_proto::workload::{X509BundlesRequest, X509svidRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

mod common;
use common::{credential, ID};

async fn connect(socket: std::path::PathBuf) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(workload_api::unix_channel(socket).await.unwrap())
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(workload_api::SECURITY_HEADER, "true".parse().unwrap());
    request
}

#[tokio::test]
async fn serves_svids_and_bundles_and_pushes_rotations() {
    let td = TrustDomain::new("cluster.local").unwrap();
    let authority =
        Authority::generate_self_signed(&td, meshca_ca::KeyType::EcP256, SystemTime::now())
            .unwrap();
    let first = credential(&authority);
    let (tx, rx) = watch::channel(Some(Arc::new(first.clone())));

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent/spiffe.sock");
    // A stale file from a crashed agent is replaced.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    std::fs::write(&socket, "stale").unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let socket = socket.clone();
        async move {
            workload_api::serve(
                WorkloadApi::new(rx, Default::default()),
                &socket,
                workload_api::PRIVATE_SOCKET_MODE,
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
        }
    });
    common::accepting(&socket).await;
    let mut client = connect(socket.clone()).await;

    // Without the security header: INVALID_ARGUMENT.
    let err = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Every gRPC stack's `:authority` on a Unix socket is served, and the header still checked.
    for stack in StackAuthority::ALL {
        let channel = workload_api::unix_channel_as(socket.clone(), stack)
            .await
            .unwrap();
        let mut other = SpiffeWorkloadApiClient::new(channel);
        let err = other.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{stack:?}");
        let mut answer = other
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let message = answer.message().await.unwrap().unwrap();
        assert_eq!(message.svids[0].spiffe_id, ID, "{stack:?}");
    }

    let mut svids = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let message = svids.message().await.unwrap().unwrap();
    let svid = &message.svids[0];
    assert_eq!(svid.spiffe_id, ID);
    // x509_svid: DER chain without the root, leaf first; key: PKCS#8 DER; bundle: DER roots.
    let leaf = ParsedCert::from_der(&svid.x509_svid).unwrap();
    assert_eq!(leaf.uri_sans(), vec![ID.to_string()]);
    assert_eq!(
        svid.x509_svid,
        pem::parse(&first.chain_pem[0]).unwrap().into_contents()
    );
    assert_eq!(svid.bundle, authority.root().der());
    let key = meshca_ca::keys::SigningKey::from_pkcs8(&svid.x509_svid_key).unwrap();
    assert_eq!(key.public_key_bits(), leaf.public_key_bits());

    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundle = bundles.message().await.unwrap().unwrap();
    assert_eq!(bundle.bundles["cluster.local"], authority.root().der());

    // Rotation: a new message with the new SVID.
    let second = credential(&authority);
    tx.send_replace(Some(Arc::new(second.clone())));
    let rotated = tokio::time::timeout(Duration::from_secs(5), svids.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        rotated.svids[0].x509_svid,
        pem::parse(&second.chain_pem[0]).unwrap().into_contents()
    );

    // JWT-SVIDs are not served yet, and say so.
    let err = client
        .fetch_jwtsvid(with_header(meshca_proto::workload::JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    drop(svids);
    drop(bundles);
    drop(client);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "socket removed at exit");
}
