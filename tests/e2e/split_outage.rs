//! The CA service of a split deployment down for longer than a certificate's half-life, with
//! twenty agents' rotation loops on the keyless RA: every agent keeps serving its certificate,
//! retries with capped backoff (a handful of attempts, not hundreds), and recovers when the
//! service returns, the renewals spread out by jitter rather than arriving as one herd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_agent::client::{CaClient, CaClientConfig, WorkloadIdentity};
use meshca_agent::credential::{Credential, KeyType};
use meshca_agent::metrics::AgentMetrics;
use meshca_agent::refresh::keep_fresh;
use tokio::sync::watch;

use crate::harness::*;
use crate::split::Layout;

const AGENTS: usize = 20;
/// Certificates live 20 s (plus the two-minute backdating); agents renew at half-life.
const TTL: Duration = Duration::from_secs(20);

struct Agent {
    served: watch::Receiver<Option<Arc<Credential>>>,
    metrics: Arc<AgentMetrics>,
}

fn serial(credential: &Credential) -> String {
    credential.chain_pem[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_ride_out_a_ca_service_outage_and_return_without_a_herd() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = JwtKey::es256("split");
    let layout = Layout::write(dir.path(), &issuer);
    let mut ca = layout.start_ca();
    let ra = layout.start_ra();
    let token_file = dir.path().join("agent-token");
    std::fs::write(
        &token_file,
        issuer.mint(&sa_claims(K8S_ISSUER, "default", "web")),
    )
    .unwrap();

    let mut agents = Vec::new();
    for _ in 0..AGENTS {
        let client = CaClient::new(&CaClientConfig {
            ca_addr: ra.grpc.to_string(),
            ca_root_pem: layout.root(),
            token_file: Some(token_file.clone()),
            client_identity: None,
            cluster_id: "Kubernetes".into(),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let identity = WorkloadIdentity {
            spiffe_id: "spiffe://cluster.local/ns/default/sa/web".into(),
            key_type: KeyType::EcP256,
            ttl: TTL,
            grace_ratio: 0.5,
            grace_jitter: 0.01,
            asked_as: Default::default(),
        };
        let (tx, served) = watch::channel(None);
        let (_bundle_tx, bundle) = watch::channel(Default::default());
        std::mem::forget(_bundle_tx);
        let metrics = Arc::new(AgentMetrics::default());
        tokio::spawn(keep_fresh(
            client,
            identity,
            tx,
            metrics.clone(),
            bundle,
            watch::Sender::new(None),
        ));
        agents.push(Agent { served, metrics });
    }
    for agent in &mut agents {
        tokio::time::timeout(
            Duration::from_secs(20),
            agent.served.wait_for(Option::is_some),
        )
        .await
        .expect("a first certificate")
        .unwrap();
    }

    // The service goes away for 15 s, past every certificate's half-life (10 s).
    ca.stop();
    let held: Vec<String> = agents
        .iter()
        .map(|a| serial(a.served.borrow().as_deref().unwrap()))
        .collect();
    let attempts_before: Vec<u64> = agents.iter().map(|a| a.metrics.csr_failures()).collect();
    tokio::time::sleep(Duration::from_secs(15)).await;
    for (i, agent) in agents.iter().enumerate() {
        let served = agent.served.borrow();
        let current = served.as_deref().expect("still serving during the outage");
        assert_eq!(
            serial(current),
            held[i],
            "agent {i} still serves what it had"
        );
        let failed = agent.metrics.csr_failures() - attempts_before[i];
        eprintln!("agent {i}: {failed} failed renewals during the outage");
        // 200 ms doubling to 30 s, each wait in [½, 1] of its ceiling: at most ~9 in 15 s.
        assert!(
            (1..=10).contains(&failed),
            "agent {i}: {failed} failed renewals in 15 s"
        );
    }

    // It returns: every agent renews by itself, at its own backoff's next turn.
    let returned = Instant::now();
    let _ca = layout.start_ca();
    let mut waits = tokio::task::JoinSet::new();
    for (i, agent) in agents.iter().enumerate() {
        let (mut served, previous) = (agent.served.clone(), held[i].clone());
        waits.spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(40),
                served.wait_for(|c| c.as_deref().is_some_and(|c| serial(c) != previous)),
            )
            .await
            .map(|_| returned.elapsed())
            .map_err(|_| i)
        });
    }
    let mut renewed_after = Vec::new();
    while let Some(result) = waits.join_next().await {
        match result.unwrap() {
            Ok(after) => renewed_after.push(after),
            Err(i) => panic!("agent {i} did not recover: {}", ra.output()),
        }
    }
    let first = renewed_after.iter().min().unwrap();
    let last = renewed_after.iter().max().unwrap();
    eprintln!("{AGENTS} agents renewed {first:?} to {last:?} after the CA service returned");
    assert!(
        *last - *first >= Duration::from_secs(1),
        "all {AGENTS} renewals within {:?} of each other: a herd",
        *last - *first
    );
}
