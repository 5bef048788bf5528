//! Root distribution against the end-to-end API server: the same TLS server that answers
//! TokenReview also serves core/v1 namespaces and ConfigMaps, and meshca's publisher reaches it
//! as it would a real cluster (https, the cluster CA file, a token file), writing
//! `istio-ca-root-cert` where istio-agent reads it.

use std::sync::Arc;
use std::time::Duration;

use meshca_ra::config::ClusterConfig;
use meshca_ra::{RootCertPublisher, RootConfigMapSettings};
use tokio::sync::watch;

use crate::peers::{self, ApiServerState, REVIEWER_TOKEN};

#[tokio::test]
async fn the_publisher_writes_through_the_tls_api_server() {
    let state = Arc::new(ApiServerState::default());
    let (addr, ca) = peers::start_api_server(&tokio::runtime::Handle::current(), state.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("token"), REVIEWER_TOKEN).unwrap();
    let cluster = state.cluster();
    cluster.add_namespace("default", &[]);
    cluster.add_namespace("kube-public", &[]);

    let client = meshca_kube::KubeClient::new(
        &ClusterConfig {
            api_server_url: Some(format!("https://{addr}")),
            api_server_ca_file: Some(dir.path().join("ca.crt")),
            api_server_token_file: Some(dir.path().join("token")),
            ..ClusterConfig::default()
        }
        .api_server(),
    )
    .unwrap();
    let bundle = meshca_ca::testing::GeneratedChain::new(meshca_ca::KeyType::EcP256)
        .root
        .pem();
    let (_desired, desired_rx) = watch::channel(Arc::<str>::from(bundle.as_str()));
    let (_leader, leader_rx) = watch::channel(true);
    let publisher = RootCertPublisher::start(
        client,
        RootConfigMapSettings {
            namespace_selector: None,
            resync: Duration::from_secs(600),
        },
        desired_rx,
        leader_rx,
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while publisher.status().up_to_date < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            publisher.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cm = cluster.configmap("default", "istio-ca-root-cert").unwrap();
    assert_eq!(cm["data"]["root-cert.pem"], bundle.as_str());
    assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");
    assert!(cluster
        .configmap("kube-public", "istio-ca-root-cert")
        .is_none());
    // The TokenReview route is still there, and the publisher's calls were not reviews.
    assert_eq!(state.reviews_of(REVIEWER_TOKEN), 0);
}
