//! The decision table of node authorization, over a real pod index.

use super::*;
use crate::auth::AuthMethod;
use meshca_kube::pods::{PodSpec, PodStatus};
use meshca_kube::{Cache, ObjectKey, ObjectMeta};

const WEB: &str = "spiffe://cluster.local/ns/web/sa/web";

fn policy() -> NodePolicy {
    NodePolicy {
        trust_domain: TrustDomain::new("cluster.local").unwrap(),
        trusted: ["istio-system/ztunnel".to_string().try_into().unwrap()].into(),
    }
}

fn pod(ns: &str, name: &str, uid: &str, sa: &str, node: Option<&str>, phase: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        spec: PodSpec {
            node_name: node.map(Into::into),
            service_account_name: Some(sa.into()),
        },
        status: PodStatus {
            phase: Some(phase.into()),
            ..PodStatus::default()
        },
    }
}

/// ztunnel on worker-1, web on worker-1, api on worker-2.
fn cluster() -> PodIndex {
    let mut index = PodIndex::default();
    for p in [
        pod(
            "istio-system",
            "ztunnel-a",
            "zt-a",
            "ztunnel",
            Some("worker-1"),
            "Running",
        ),
        pod(
            "istio-system",
            "ztunnel-b",
            "zt-b",
            "ztunnel",
            Some("worker-2"),
            "Running",
        ),
        pod("web", "web-1", "w1", "web", Some("worker-1"), "Running"),
        pod("api", "api-1", "a1", "api", Some("worker-2"), "Running"),
        pod(
            "batch",
            "job-1",
            "j1",
            "batch",
            Some("worker-1"),
            "Succeeded",
        ),
    ] {
        index.insert(ObjectKey::of(&p), p);
    }
    index
}

fn reason(caller: &Caller, requested: &str, index: &PodIndex) -> &'static str {
    match decide(&policy(), caller, requested, PodView::Synced(index)) {
        Ok(_) => "allowed",
        Err(e) => e.reason(),
    }
}

#[test]
fn a_node_agent_gets_the_identity_of_a_pod_on_its_node() {
    let index = cluster();
    let allowed = decide(
        &policy(),
        &Caller::ztunnel("ztunnel-a", "zt-a", Some("worker-1")),
        WEB,
        PodView::Synced(&index),
    )
    .unwrap();
    assert_eq!(allowed.spiffe_id.as_str(), WEB);
    assert_eq!(
        (allowed.agent_pod.as_str(), allowed.node.as_str()),
        ("istio-system/ztunnel-a", "worker-1")
    );
    assert_eq!(
        allowed.agent.as_str(),
        "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    );
    // A token without the node claim (before Kubernetes 1.30) relies on the pod's node.
    assert_eq!(
        reason(&Caller::ztunnel("ztunnel-a", "zt-a", None), WEB, &index),
        "allowed"
    );
}

#[test]
fn the_decision_table() {
    let index = cluster();
    let zt_a = Caller::ztunnel("ztunnel-a", "zt-a", Some("worker-1"));
    let mut web_caller = Caller::ztunnel("web-1", "w1", Some("worker-1"));
    web_caller.spiffe_id = SpiffeId::new(WEB).unwrap();
    if let Some(k) = &mut web_caller.kubernetes {
        k.namespace = "web".into();
        k.service_account = "web".into();
    }
    let mut renewal = zt_a.clone();
    renewal.method = AuthMethod::Renewal;
    renewal.kubernetes = None;
    let mut unbound = zt_a.clone();
    if let Some(k) = &mut unbound.kubernetes {
        k.pod = None;
    }
    let mut wrong_sa_pod = index.clone();
    let impostor = pod(
        "istio-system",
        "ztunnel-a",
        "zt-a",
        "default",
        Some("worker-1"),
        "Running",
    );
    wrong_sa_pod.insert(ObjectKey::of(&impostor), impostor);
    let mut unscheduled = index.clone();
    let pending = pod(
        "istio-system",
        "ztunnel-a",
        "zt-a",
        "ztunnel",
        None,
        "Pending",
    );
    unscheduled.insert(ObjectKey::of(&pending), pending);

    let cases: &[(&str, &Caller, &str, &PodIndex, &str)] = &[
        (
            "not a trusted account",
            &web_caller,
            WEB,
            &index,
            "not_trusted",
        ),
        (
            "a certificate caller",
            &renewal,
            WEB,
            &index,
            "not_kubernetes",
        ),
        (
            "caller pod missing",
            &Caller::ztunnel("ztunnel-gone", "zt-x", None),
            WEB,
            &index,
            "caller_pod_missing",
        ),
        (
            "pod recreated under the same name",
            &Caller::ztunnel("ztunnel-a", "zt-old", None),
            WEB,
            &index,
            "uid_mismatch",
        ),
        (
            "pod runs as another account",
            &zt_a,
            WEB,
            &wrong_sa_pod,
            "service_account_mismatch",
        ),
        (
            "caller pod not scheduled",
            &zt_a,
            WEB,
            &unscheduled,
            "caller_not_scheduled",
        ),
        (
            "token node is not the pod's",
            &Caller::ztunnel("ztunnel-a", "zt-a", Some("worker-2")),
            WEB,
            &index,
            "node_mismatch",
        ),
        (
            "no pod of that account anywhere",
            &zt_a,
            "spiffe://cluster.local/ns/web/sa/admin",
            &index,
            "not_on_node",
        ),
        (
            "that account's pod is on another node",
            &zt_a,
            "spiffe://cluster.local/ns/api/sa/api",
            &index,
            "not_on_node",
        ),
        (
            "that account's pod has finished",
            &zt_a,
            "spiffe://cluster.local/ns/batch/sa/batch",
            &index,
            "not_on_node",
        ),
        (
            "outside our trust domain",
            &zt_a,
            "spiffe://evil.example/ns/web/sa/web",
            &index,
            "foreign_trust_domain",
        ),
        (
            "not a SPIFFE id",
            &zt_a,
            "web/web",
            &index,
            "malformed_identity",
        ),
        (
            "not a workload path",
            &zt_a,
            "spiffe://cluster.local/ns/web",
            &index,
            "malformed_identity",
        ),
        (
            "extra path segments",
            &zt_a,
            "spiffe://cluster.local/ns/web/sa/web/x",
            &index,
            "malformed_identity",
        ),
        (
            "token not bound to a pod",
            &unbound,
            WEB,
            &index,
            "no_pod_binding",
        ),
    ];
    for (what, caller, requested, pods, expected) in cases {
        assert_eq!(reason(caller, requested, pods), *expected, "{what}");
    }
    // The other node's agent gets api, not web.
    let zt_b = Caller::ztunnel("ztunnel-b", "zt-b", Some("worker-2"));
    assert_eq!(
        reason(&zt_b, "spiffe://cluster.local/ns/api/sa/api", &index),
        "allowed"
    );
    assert_eq!(reason(&zt_b, WEB, &index), "not_on_node");
}

#[test]
fn before_the_first_list_only_pod_checks_wait() {
    let zt_a = Caller::ztunnel("ztunnel-a", "zt-a", None);
    let unsynced = PodView::NotSynced {
        cluster: "Kubernetes",
    };
    let error = decide(&policy(), &zt_a, WEB, unsynced).unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.reason(), "not_synced");
    // An untrusted caller is refused for good, synced or not.
    let mut other = zt_a.clone();
    if let Some(k) = &mut other.kubernetes {
        k.service_account = "default".into();
    }
    let error = decide(&policy(), &other, WEB, unsynced).unwrap_err();
    assert!(!error.is_retryable());
    assert_eq!(error.reason(), "not_trusted");
}

#[test]
fn nobody_impersonates_without_trusted_accounts() {
    let none = NodePolicy {
        trusted: BTreeSet::new(),
        ..policy()
    };
    let error = decide(
        &none,
        &Caller::ztunnel("ztunnel-a", "zt-a", None),
        WEB,
        PodView::Synced(&cluster()),
    )
    .unwrap_err();
    assert_eq!(error, ImpersonationError::NotConfigured);
}

#[test]
fn the_logged_reason_names_what_was_wrong() {
    let index = cluster();
    let error = decide(
        &policy(),
        &Caller::ztunnel("ztunnel-a", "zt-a", None),
        "spiffe://cluster.local/ns/api/sa/api",
        PodView::Synced(&index),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no running pod of api/api on node worker-1"
    );
}
