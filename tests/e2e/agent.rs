//! The agent's certificate loop against a real `meshca server`: fresh keys, validated answers,
//! rotation before expiry, and riding out a server outage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_agent::client::{keep_fresh, CaClient, CaClientConfig, WorkloadIdentity};
use meshca_agent::credential::{Credential, KeyType};
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
    };
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(keep_fresh(client, identity, tx));

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

    // The server goes away: the agent keeps what it has.
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rx
        .borrow()
        .clone()
        .expect("still serving the last good cert");
    assert_eq!(held.not_after, second.not_after);

    // It comes back (same data dir, same root): the agent recovers on its own.
    let _server = MeshcaProcess::start(&args, &env, tmp.path(), grpc, metrics);
    let recovered = next_credential(&mut rx, Duration::from_secs(30)).await;
    assert!(recovered.not_after > second.not_after);
}
