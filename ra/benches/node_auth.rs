//! Node authorization at ambient scale: 10,000 pods on 1,000 nodes, ten per node (a ztunnel
//! among them). What one `ImpersonatedIdentity` check costs through the running authorizer,
//! what a watch event costs the index, how much memory the index holds, and how long the first
//! list of such a cluster takes from an API server (the fake one, over loopback HTTP, in pages
//! of 500, with pods shaped as a real server returns them).
//!
//! `cargo bench -p meshca-ra --bench node_auth`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use meshca_ca::TrustDomain;
use meshca_kube::fake::FakeApiServer;
use meshca_kube::pods::{PodSpec, PodStatus};
use meshca_kube::{Cache, ObjectKey, ObjectMeta, Pod, PodIndex, Reflector, ReflectorSettings};
use meshca_ra::auth::node::{decide, NodeAuthorizer, NodePolicy, PodView};
use meshca_ra::auth::{Caller, PodBinding};
use meshca_ra::config::{AuthConfig, ClusterConfig};

const NODES: usize = 1_000;
const PODS_PER_NODE: usize = 10;
/// Service accounts per namespace; pods of one account spread over many nodes, as a
/// Deployment's replicas do.
const ACCOUNTS: usize = 50;

/// This process's resident set and its high-water mark, KiB (`/proc/self/status`).
fn rss_kib() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .expect("field in /proc/self/status")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// (namespace, name, service account, node) of every pod: on node `n`, ztunnel and nine
/// workloads of accounts spread so that each account has pods on many nodes.
fn cluster_pods() -> Vec<(String, String, String, Option<String>)> {
    let mut pods = Vec::with_capacity(NODES * PODS_PER_NODE);
    for n in 0..NODES {
        let node = format!("worker-{n}");
        pods.push((
            "istio-system".to_string(),
            format!("ztunnel-{n}"),
            "ztunnel".to_string(),
            Some(node.clone()),
        ));
        for i in 1..PODS_PER_NODE {
            let k = n * PODS_PER_NODE + i;
            let ns = format!("team-{}", k % 20);
            let sa = format!("svc-{}", (k / 7) % ACCOUNTS);
            pods.push((ns, format!("{sa}-{k:06x}"), sa, Some(node.clone())));
        }
    }
    pods
}

fn pod(ns: &str, name: &str, sa: &str, node: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            uid: Some(format!(
                "{:08x}-1111-4222-8333-{:012x}",
                name.len(),
                name.len() * 7919
            )),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        spec: PodSpec {
            node_name: node.map(Into::into),
            service_account_name: Some(sa.into()),
        },
        status: PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        },
    }
}

fn index_of(pods: &[(String, String, String, Option<String>)]) -> PodIndex {
    let mut index = PodIndex::default();
    for (ns, name, sa, node) in pods {
        let p = pod(ns, name, sa, node.as_deref());
        index.insert(ObjectKey::of(&p), p);
    }
    index
}

fn ztunnel_on(n: usize, index: &PodIndex) -> Caller {
    let name = format!("ztunnel-{n}");
    let uid = index
        .pod("istio-system", &name)
        .expect("ztunnel pod")
        .uid
        .to_string();
    Caller::ztunnel(&name, &uid, Some(&format!("worker-{n}")))
}

/// An identity with a pod on node `n`, and one with none there.
fn identities_for(n: usize, pods: &[(String, String, String, Option<String>)]) -> (String, String) {
    let (ns, _, sa, _) = &pods[n * PODS_PER_NODE + 1];
    let here = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    let node = format!("worker-{n}");
    let elsewhere = pods
        .iter()
        .find(|(pns, _, psa, _)| {
            !pods.iter().any(|(ons, _, osa, onode)| {
                ons == pns && osa == psa && onode.as_deref() == Some(&node)
            })
        })
        .map(|(ns, _, sa, _)| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"))
        .expect("an account with no pod on the node");
    (here, elsewhere)
}

fn node_authorization(c: &mut Criterion) {
    let pods = cluster_pods();

    // Memory: the index alone, built as the reflector builds it (resident set growth).
    let (before, _) = rss_kib();
    let index = index_of(&pods);
    let (after, _) = rss_kib();
    println!(
        "pod index: {} pods on {NODES} nodes, resident set +{:.1} MiB, {} bytes per pod",
        index.len(),
        (after - before) as f64 / 1024.0,
        (after - before) * 1024 / index.len() as i64
    );

    let policy = NodePolicy {
        trust_domain: TrustDomain::new("cluster.local").unwrap(),
        trusted: ["istio-system/ztunnel".to_string().try_into().unwrap()].into(),
    };
    let caller = ztunnel_on(417, &index);
    let (here, elsewhere) = identities_for(417, &pods);
    assert!(decide(&policy, &caller, &here, PodView::Synced(&index)).is_ok());
    assert!(decide(&policy, &caller, &elsewhere, PodView::Synced(&index)).is_err());
    c.bench_function("node authorization: decide, allowed (10k pods)", |b| {
        b.iter(|| decide(&policy, &caller, &here, PodView::Synced(&index)).is_ok())
    });
    c.bench_function("node authorization: decide, refused (10k pods)", |b| {
        b.iter(|| decide(&policy, &caller, &elsewhere, PodView::Synced(&index)).is_err())
    });

    // A watch event: one pod scheduled, one deleted.
    let extra = pod("team-3", "svc-9-new", "svc-9", Some("worker-5"));
    let key = ObjectKey::of(&extra);
    let mut live_index = index.clone();
    c.bench_function(
        "node authorization: apply ADDED + DELETED (10k pods)",
        |b| {
            b.iter_batched(
                || extra.clone(),
                |p| {
                    live_index.insert(key.clone(), p);
                    live_index.remove(&key);
                },
                BatchSize::SmallInput,
            )
        },
    );

    // The running authorizer over a cluster listed from an API server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = FakeApiServer::new("bench-token");
    api.add_pods_bulk(pods.iter().cloned());
    let addr = runtime.block_on(api.serve_http()).expect("fake API server");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "bench-token").expect("token file");
    let cluster = ClusterConfig {
        api_server_url: Some(format!("http://{addr}")),
        api_server_token_file: Some(dir.path().join("token")),
        request_timeout: Duration::from_secs(30),
        ..ClusterConfig::default()
    };

    // First sync through the reflector: time, and the resident set at its peak and after
    // (the fake server's answers are built in this process too, so the peak is an upper
    // bound for the client).
    let (sync, peak, kept) = runtime.block_on(async {
        let (before, high_before) = rss_kib();
        let started = Instant::now();
        let reflector = Reflector::<Pod, PodIndex>::start(
            meshca_kube::KubeClient::new(&cluster.api_server()).expect("client"),
            ReflectorSettings::default(),
        );
        let mut rx = reflector.subscribe();
        rx.wait_for(|s| s.synced).await.expect("synced");
        let sync = started.elapsed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (now, high) = rss_kib();
        drop(reflector);
        (sync, high - high_before.max(before), now - before)
    });
    println!(
        "first list of {} pods in pages of 500: {sync:?}; resident set: peak +{:.1} MiB, after +{:.1} MiB",
        pods.len(),
        peak as f64 / 1024.0,
        kept as f64 / 1024.0
    );

    let config = AuthConfig {
        clusters: BTreeMap::from([("Kubernetes".to_string(), cluster)]),
        trusted_node_accounts: vec!["istio-system/ztunnel".to_string().try_into().unwrap()],
        ..AuthConfig::default()
    };
    let authorizer = runtime.block_on(async {
        let authorizer = NodeAuthorizer::start(&config, TrustDomain::new("cluster.local").unwrap())
            .expect("authorizer")
            .expect("trusted accounts configured");
        while !authorizer.status()[0].synced {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        authorizer
    });
    // The API server gave ztunnel-417 its own uid.
    let mut caller = caller;
    if let Some(k) = &mut caller.kubernetes {
        let listed = api.pod("istio-system", "ztunnel-417").expect("ztunnel pod");
        k.pod = Some(PodBinding {
            name: "ztunnel-417".into(),
            uid: listed["metadata"]["uid"].as_str().expect("uid").to_string(),
        });
    }
    assert!(runtime
        .block_on(authorizer.authorize(&caller, &here))
        .is_ok());
    c.bench_function(
        "node authorization: authorize through the pod cache (10k pods)",
        |b| {
            b.iter(|| {
                runtime
                    .block_on(authorizer.authorize(&caller, &here))
                    .is_ok()
            })
        },
    );
    drop(authorizer);
    drop(runtime);
}

criterion_group!(benches, node_authorization);
criterion_main!(benches);
