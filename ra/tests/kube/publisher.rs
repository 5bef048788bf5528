//! The root-ConfigMap publisher as a cluster operator sees it: `istio-ca-root-cert` with the
//! bundle and label in every namespace that should have one, repaired after edits and
//! deletions, updated on a bundle change, written only by the leader and only when different,
//! and a status that counts how far each root has spread.

use std::sync::Arc;
use std::time::Duration;

use meshca_kube::fake::FakeApiServer;
use meshca_kube::{ConfigMap, KubeError};
use meshca_pki::keys::sha256_hex;
use meshca_ra::{RootCertPublisher, RootConfigMapSettings};
use serde_json::json;
use tokio::sync::watch;

use crate::{cluster, eventually, throughout, Cluster};

const NAME: &str = "istio-ca-root-cert";

/// A self-signed root: its PEM and its fingerprint (hex SHA-256 of the DER).
fn root(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), sha256_hex(cert.der()))
}

struct Running {
    publisher: RootCertPublisher,
    desired: watch::Sender<Arc<str>>,
    leader: watch::Sender<bool>,
}

fn start(c: &Cluster, settings: RootConfigMapSettings, bundle: &str, leader: bool) -> Running {
    let (desired, desired_rx) = watch::channel(Arc::<str>::from(bundle));
    let (leader, leader_rx) = watch::channel(leader);
    Running {
        publisher: RootCertPublisher::start(c.client.clone(), settings, desired_rx, leader_rx),
        desired,
        leader,
    }
}

fn settings() -> RootConfigMapSettings {
    RootConfigMapSettings {
        namespace_selector: None,
        resync: Duration::from_secs(600),
    }
}

fn root_cert(api: &FakeApiServer, namespace: &str) -> Option<String> {
    api.configmap(namespace, NAME)
        .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_string))
}

fn holds(api: &FakeApiServer, namespace: &str, bundle: &str) -> bool {
    root_cert(api, namespace).as_deref() == Some(bundle)
}

#[tokio::test]
async fn every_active_namespace_gets_the_bundle_and_label_and_system_ones_do_not() {
    let c = cluster().await;
    for ns in [
        "default",
        "web",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "local-path-storage",
    ] {
        c.api.add_namespace(ns, &[]);
    }
    c.api.add_namespace("leaving", &[]);
    c.api.mark_terminating("leaving");
    let (bundle, fingerprint) = root("root A");
    let run = start(&c, settings(), &bundle, true);
    eventually("every selected namespace is up to date", || {
        let s = run.publisher.status();
        s.synced && s.namespaces == 3 && s.up_to_date == 3
    })
    .await;
    for ns in ["default", "web", "kube-system"] {
        let cm = c.api.configmap(ns, NAME).unwrap();
        assert_eq!(cm["data"], json!({"root-cert.pem": bundle}), "{ns}");
        assert_eq!(
            cm["metadata"]["labels"],
            json!({"istio.io/config": "true"}),
            "{ns}"
        );
    }
    // Skipped as istiod skips them (kube-system is served, for ztunnel), and a terminating
    // namespace is not written to.
    for ns in [
        "kube-public",
        "kube-node-lease",
        "local-path-storage",
        "leaving",
    ] {
        assert!(c.api.configmap(ns, NAME).is_none(), "{ns}");
        assert_eq!(c.api.writes(ns), 0, "{ns}");
    }
    assert_eq!(run.publisher.holding(&fingerprint), 3);
}

#[tokio::test]
async fn late_namespaces_edits_and_deletions_are_repaired() {
    let c = cluster().await;
    c.api.add_namespace("web", &[]);
    let (bundle, _) = root("root A");
    let run = start(&c, settings(), &bundle, true);
    eventually("web has it", || holds(&c.api, "web", &bundle)).await;

    c.api.add_namespace("late", &[]);
    eventually("a new namespace gets it", || holds(&c.api, "late", &bundle)).await;

    // A user replaces the bundle, adds a key and a label, and drops ours.
    assert!(c.api.edit_configmap("web", NAME, |cm| {
        cm["data"]["root-cert.pem"] = "tampered".into();
        cm["data"]["note"] = "mine".into();
        cm["metadata"]["labels"] = json!({"team": "a"});
    }));
    eventually("the edit is repaired", || {
        let cm = c.api.configmap("web", NAME).unwrap();
        cm["data"]["root-cert.pem"] == bundle.as_str()
            && cm["metadata"]["labels"]["istio.io/config"] == "true"
    })
    .await;
    // As istiod does: only root-cert.pem and our label are ours; the rest is left alone.
    let cm = c.api.configmap("web", NAME).unwrap();
    assert_eq!(cm["data"]["note"], "mine");
    assert_eq!(cm["metadata"]["labels"]["team"], "a");

    assert!(c.api.delete_configmap("late", NAME));
    eventually("a deleted one is re-created", || {
        holds(&c.api, "late", &bundle)
    })
    .await;
    eventually("status agrees", || run.publisher.status().up_to_date == 2).await;
}

#[tokio::test]
async fn a_bundle_change_reaches_every_namespace_and_the_status_counts_it() {
    let c = cluster().await;
    let namespaces = ["a", "b", "c", "d"];
    for ns in namespaces {
        c.api.add_namespace(ns, &[]);
    }
    let (pem_a, root_a) = root("root A");
    let (pem_b, root_b) = root("root B");
    let run = start(&c, settings(), &pem_a, true);
    eventually("A everywhere", || run.publisher.status().up_to_date == 4).await;
    let before = run.publisher.status();
    assert_eq!(
        (
            before.namespaces,
            before.holding(&root_a),
            before.holding(&root_b)
        ),
        (4, 4, 0)
    );

    // A rotation's first step: both roots.
    let both = format!("{pem_a}{pem_b}");
    run.desired.send_replace(Arc::from(both.as_str()));
    eventually("A+B everywhere", || {
        namespaces.iter().all(|ns| holds(&c.api, ns, &both))
    })
    .await;
    eventually("status counts A+B", || {
        let s = run.publisher.status();
        s.up_to_date == 4 && s.holding(&root_a) == 4 && s.holding(&root_b) == 4
    })
    .await;

    // The last step: B alone. While it spreads, up_to_date never exceeds what holds B.
    run.desired.send_replace(Arc::from(pem_b.as_str()));
    eventually("only B remains", || {
        let s = run.publisher.status();
        s.up_to_date == 4 && s.holding(&root_a) == 0 && s.holding(&root_b) == 4
    })
    .await;
    assert!(namespaces.iter().all(|ns| holds(&c.api, ns, &pem_b)));
}

#[tokio::test]
async fn a_stale_version_conflict_is_retried_to_success_keeping_the_other_writer() {
    let c = cluster().await;
    c.api.add_namespace("web", &[]);
    let (pem_a, _) = root("root A");
    let (pem_b, _) = root("root B");
    let run = start(&c, settings(), &pem_a, true);
    eventually("A written", || holds(&c.api, "web", &pem_a)).await;
    eventually("the cache saw it", || {
        run.publisher.status().up_to_date == 1
    })
    .await;
    let writes = c.api.writes("web");

    // The publisher's cache goes stale: a user's edit is held back from its watch.
    c.api.pause_watches();
    assert!(c.api.edit_configmap("web", NAME, |cm| {
        cm["data"]["note"] = "added meanwhile".into();
    }));
    // Negative control: the fake refuses a write with the cached (old) version.
    let mut stale: ConfigMap =
        serde_json::from_value(c.api.configmap("web", NAME).unwrap()).unwrap();
    stale.metadata.resource_version = Some((c.api.resource_version() - 1).to_string());
    assert!(matches!(
        c.client.update(&stale).await,
        Err(KubeError::Conflict(_))
    ));
    let writes = writes + 1;

    run.desired.send_replace(Arc::from(pem_b.as_str()));
    eventually("B written despite the stale cache", || {
        holds(&c.api, "web", &pem_b)
    })
    .await;
    let cm = c.api.configmap("web", NAME).unwrap();
    assert_eq!(
        cm["data"]["note"], "added meanwhile",
        "the other writer's change survives"
    );
    // One refused PUT with the cached version, then one with the re-read one.
    assert_eq!(c.api.writes("web"), writes + 2);
    c.api.resume_watches();
    eventually("status catches up", || {
        run.publisher.status().up_to_date == 1
    })
    .await;
}

#[tokio::test]
async fn a_terminating_namespace_is_skipped_quietly_without_a_retry_loop() {
    let c = cluster().await;
    c.api.add_namespace("doomed", &[]);
    c.api.add_namespace("web", &[]);
    let (pem_a, _) = root("root A");
    let (pem_b, _) = root("root B");
    let run = start(&c, settings(), &pem_a, true);
    eventually("A written", || run.publisher.status().up_to_date == 2).await;
    let before = c.api.writes("doomed");

    // Held back from the cache: the ConfigMap is deleted and the namespace starts terminating.
    // The publisher's update finds it gone (404), its create is refused (403
    // NamespaceTerminating), and that is the end of it.
    c.api.pause_watches();
    assert!(c.api.delete_configmap("doomed", NAME));
    c.api.mark_terminating("doomed");
    run.desired.send_replace(Arc::from(pem_b.as_str()));
    eventually("web gets B", || holds(&c.api, "web", &pem_b)).await;
    eventually("doomed was tried once", || {
        c.api.writes("doomed") == before + 2
    })
    .await;
    throughout(
        "no retries into a terminating namespace",
        Duration::from_millis(400),
        || c.api.writes("doomed") == before + 2,
    )
    .await;
    c.api.resume_watches();
    eventually("status no longer counts it", || {
        let s = run.publisher.status();
        s.namespaces == 1 && s.up_to_date == 1
    })
    .await;
    assert!(c.api.configmap("doomed", NAME).is_none());
}

#[tokio::test]
async fn a_watch_resumed_after_compaction_relists_and_converges() {
    let c = cluster().await;
    c.api.add_namespace("web", &[]);
    let (bundle, _) = root("root A");
    let run = start(&c, settings(), &bundle, true);
    eventually("web has it", || holds(&c.api, "web", &bundle)).await;

    // A namespace appears while the watches are held back, then history is compacted and the
    // watches cut: only a relist can find it.
    c.api.pause_watches();
    c.api.add_namespace("unseen", &[]);
    c.api.compact();
    c.api.cut_watches();
    c.api.resume_watches();
    eventually("the relisted namespace gets it", || {
        holds(&c.api, "unseen", &bundle)
    })
    .await;
    eventually("status counts it", || {
        run.publisher.status().up_to_date == 2
    })
    .await;
}

#[tokio::test]
async fn a_follower_writes_nothing_but_reports_and_converges_once_leader() {
    let c = cluster().await;
    for ns in ["a", "b"] {
        c.api.add_namespace(ns, &[]);
    }
    let (pem_old, root_old) = root("old root");
    let (pem_new, root_new) = root("new root");
    // The previous leader left the old bundle in `a`.
    c.api
        .create_configmap(
            "a",
            json!({"metadata": {"name": NAME, "labels": {"istio.io/config": "true"}},
                   "data": {"root-cert.pem": pem_old}}),
        )
        .unwrap();
    let run = start(&c, settings(), &pem_new, false);
    eventually("the follower's caches sync", || {
        run.publisher.status().synced
    })
    .await;
    let status = run.publisher.status();
    assert_eq!(
        (
            status.namespaces,
            status.up_to_date,
            status.holding(&root_old),
            status.holding(&root_new)
        ),
        (2, 0, 1, 0)
    );
    throughout(
        "a follower writes nothing",
        Duration::from_millis(300),
        || c.api.total_writes() == 0,
    )
    .await;

    run.leader.send_replace(true);
    eventually("the new leader converges", || {
        let s = run.publisher.status();
        s.up_to_date == 2 && s.holding(&root_new) == 2 && s.holding(&root_old) == 0
    })
    .await;
    assert!(holds(&c.api, "a", &pem_new) && holds(&c.api, "b", &pem_new));
}

#[tokio::test]
async fn only_namespaces_matching_the_selector_are_served() {
    let c = cluster().await;
    c.api
        .add_namespace("meshed", &[("istio-injection", "enabled")]);
    c.api.add_namespace("plain", &[]);
    let (bundle, _) = root("root A");
    let run = start(
        &c,
        RootConfigMapSettings {
            namespace_selector: Some("istio-injection=enabled".into()),
            resync: Duration::from_secs(600),
        },
        &bundle,
        true,
    );
    eventually("the selected namespace has it", || {
        holds(&c.api, "meshed", &bundle)
    })
    .await;
    assert_eq!(run.publisher.status().namespaces, 1);
    assert!(c.api.configmap("plain", NAME).is_none());

    c.api
        .label_namespace("plain", "istio-injection", Some("enabled"));
    eventually("a namespace labelled later gets it", || {
        holds(&c.api, "plain", &bundle)
    })
    .await;
    eventually("and is counted", || run.publisher.status().namespaces == 2).await;
}

#[tokio::test]
async fn a_resync_of_an_up_to_date_cluster_writes_nothing() {
    let c = cluster().await;
    for ns in ["a", "b", "c"] {
        c.api.add_namespace(ns, &[]);
    }
    let (bundle, _) = root("root A");
    let run = start(
        &c,
        RootConfigMapSettings {
            namespace_selector: None,
            resync: Duration::from_millis(30),
        },
        &bundle,
        true,
    );
    eventually("converged", || run.publisher.status().up_to_date == 3).await;
    let writes = c.api.total_writes();
    assert_eq!(writes, 3, "one create per namespace");
    throughout("resyncs write nothing", Duration::from_millis(300), || {
        c.api.total_writes() == writes
    })
    .await;
    // Control: the resyncing publisher does write when something differs.
    assert!(c
        .api
        .edit_configmap("b", NAME, |cm| cm["data"]["root-cert.pem"] = "x".into()));
    eventually("repaired", || holds(&c.api, "b", &bundle)).await;
    throughout(
        "exactly one write for it",
        Duration::from_millis(200),
        || c.api.total_writes() == writes + 1,
    )
    .await;
}

#[tokio::test]
async fn a_namespace_that_refuses_writes_neither_blocks_the_others_nor_is_hammered() {
    let c = cluster().await;
    c.api.add_namespace("locked", &[]);
    for ns in ["a", "b", "c", "d", "e", "f"] {
        c.api.add_namespace(ns, &[]);
    }
    c.api.forbid_writes("locked", true);
    let (bundle, _) = root("root A");
    let run = start(
        &c,
        RootConfigMapSettings {
            namespace_selector: None,
            resync: Duration::from_millis(1500),
        },
        &bundle,
        true,
    );
    eventually("every other namespace converges", || {
        run.publisher.status().up_to_date == 6
    })
    .await;
    assert_eq!(c.api.writes("locked"), 1);
    throughout(
        "a 403 is not retried before the next resync",
        Duration::from_millis(300),
        || c.api.writes("locked") == 1,
    )
    .await;
    // Permission granted: the next resync writes it.
    c.api.forbid_writes("locked", false);
    eventually("the resync writes it", || holds(&c.api, "locked", &bundle)).await;
    // The status follows the ConfigMap watch, a moment after the write.
    eventually("the status counts it", || {
        run.publisher.status().up_to_date == 7
    })
    .await;
}
