//! Node authorization through its pod cache, fed by the fake API server: a node agent whose
//! own watch saw a pod before the RA's did is served once the RA's cache catches up, within
//! `auth.pod_cache_catch_up`, and refused after it.

use std::collections::BTreeMap;
use std::time::Duration;

use meshca_ca::TrustDomain;
use meshca_ra::auth::node::{ImpersonationError, NodeAuthorizer};
use meshca_ra::auth::{Caller, PodBinding};
use meshca_ra::config::{AuthConfig, ClusterConfig};
use tokio::time::Instant;

use crate::{cluster, eventually, within, Cluster};

const SHOP: &str = "spiffe://cluster.local/ns/shop/sa/shop";

/// An authorizer over `cluster`'s pods, synced, and ztunnel's caller on worker-1.
async fn authorizer(cluster: &Cluster, catch_up: Duration) -> (NodeAuthorizer, Caller) {
    let ztunnel_uid = cluster
        .api
        .add_pod("istio-system", "ztunnel-a", "ztunnel", Some("worker-1"));
    let config = AuthConfig {
        clusters: BTreeMap::from([(
            "Kubernetes".to_string(),
            ClusterConfig {
                api_server_url: Some(format!("http://{}", cluster.addr)),
                api_server_token_file: Some(cluster.token_file.clone()),
                ..ClusterConfig::default()
            },
        )]),
        trusted_node_accounts: vec!["istio-system/ztunnel".to_string().try_into().unwrap()],
        pod_cache_catch_up: catch_up,
        ..AuthConfig::default()
    };
    let authorizer = NodeAuthorizer::start(&config, TrustDomain::new("cluster.local").unwrap())
        .unwrap()
        .unwrap();
    eventually("the pod cache syncs", || authorizer.status()[0].synced).await;
    let caller = Caller::ztunnel("ztunnel-a", &ztunnel_uid, Some("worker-1"));
    (authorizer, caller)
}

#[tokio::test]
async fn a_pod_our_watch_has_not_brought_yet_is_waited_for() {
    let cluster = cluster().await;
    let (authorizer, caller) = authorizer(&cluster, Duration::from_secs(3)).await;
    cluster.api.add_pod("shop", "shop-1", "shop", None);

    // ztunnel asks while the pod is still pending, as it does when its own watch is ahead of
    // ours; the scheduler binds the pod to worker-1 a moment later.
    let asked = Instant::now();
    let (decision, ()) = within(async {
        tokio::join!(authorizer.authorize(&caller, SHOP), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(cluster.api.schedule_pod("shop", "shop-1", "worker-1"));
        })
    })
    .await;
    let granted = decision.expect("served once the cache shows shop-1 on worker-1");
    assert_eq!(granted.spiffe_id.as_str(), SHOP);
    assert_eq!(granted.node, "worker-1");
    assert!(asked.elapsed() >= Duration::from_millis(300));
}

/// The negative control: without the catch-up the same request is refused.
#[tokio::test]
async fn without_a_catch_up_the_late_pod_is_refused() {
    let cluster = cluster().await;
    let (authorizer, caller) = authorizer(&cluster, Duration::ZERO).await;
    cluster.api.add_pod("shop", "shop-1", "shop", None);
    let (decision, ()) = within(async {
        tokio::join!(authorizer.authorize(&caller, SHOP), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(cluster.api.schedule_pod("shop", "shop-1", "worker-1"));
        })
    })
    .await;
    assert!(
        matches!(decision, Err(ImpersonationError::NotOnNode { .. })),
        "{decision:?}"
    );
}

#[tokio::test]
async fn a_pod_that_never_comes_is_refused_when_the_catch_up_ends() {
    let cluster = cluster().await;
    let catch_up = Duration::from_millis(400);
    let (authorizer, caller) = authorizer(&cluster, catch_up).await;
    // Other pods come and go meanwhile: each change is decided again, none is shop's.
    let asked = Instant::now();
    let (decision, ()) = within(async {
        tokio::join!(authorizer.authorize(&caller, SHOP), async {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cluster
                    .api
                    .add_pod("web", &format!("web-{i}"), "web", Some("worker-1"));
            }
        })
    })
    .await;
    assert!(
        matches!(decision, Err(ImpersonationError::NotOnNode { .. })),
        "{decision:?}"
    );
    assert!(asked.elapsed() >= catch_up, "{:?}", asked.elapsed());
}

/// What no later event can change is refused at once: a pod's service account is fixed.
#[tokio::test]
async fn a_refusal_the_cache_cannot_be_late_for_does_not_wait() {
    let cluster = cluster().await;
    let (authorizer, mut caller) = authorizer(&cluster, Duration::from_secs(30)).await;
    // A pod of another account, and a token bound to it that names ztunnel's account.
    let uid = cluster
        .api
        .add_pod("istio-system", "impostor", "default", Some("worker-1"));
    eventually("the cache has the impostor pod", || {
        authorizer.status()[0].pods == 2
    })
    .await;
    if let Some(k8s) = &mut caller.kubernetes {
        k8s.pod = Some(PodBinding {
            name: "impostor".into(),
            uid,
        });
    }
    // `within` gives up after 5 s, long before the 30 s catch-up would end.
    let decision = within(authorizer.authorize(&caller, SHOP)).await;
    assert!(
        matches!(
            decision,
            Err(ImpersonationError::ServiceAccountMismatch { .. })
        ),
        "{decision:?}"
    );
}
