//! Permissions in the cluster. The server's: TokenReview through `system:auth-delegator`, and
//! the namespace and ConfigMap rules the root-ConfigMap publisher needs (istiod's namespace
//! controller and istio-csr hold the same), bound to the account the Deployment runs as. The
//! agent's: read-only pods, for the `k8s` attestor's watch of its node's pods.

use serde_json::Value;

use crate::{config_map_toml, object, objects, toml_str, NAMESPACE};

/// The service account the server Deployment runs as.
fn server_account() -> &'static str {
    let account = object("Deployment", "meshca")["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the Deployment names its service account");
    object("ServiceAccount", account);
    account
}

/// Whether `binding` grants its role to the server's account.
fn binds_server(binding: &Value) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == server_account()
                && s["namespace"] == NAMESPACE
        })
}

/// The verbs `role` grants on core-group `resource`.
fn core_verbs<'a>(role: &'a Value, resource: &str) -> Vec<&'a str> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["apiGroups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == ""))
                && r["resources"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|x| x == resource))
        })
        .flat_map(|r| r["verbs"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn tokenreview_is_allowed_for_the_server_account() {
    let binding = objects()
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRoleBinding" && o["roleRef"]["name"] == "system:auth-delegator"
        })
        .expect("a ClusterRoleBinding to system:auth-delegator");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert!(binds_server(binding), "{}", binding["subjects"]);
    let config = config_map_toml("meshca");
    assert_eq!(
        toml_str(&config, &["auth", "clusters", "Kubernetes", "mode"]),
        "tokenreview"
    );
}

#[test]
fn the_server_may_publish_the_root_configmap() {
    // Every ClusterRole in deploy/ that is bound to the server's account.
    let roles: Vec<&Value> = objects()
        .iter()
        .filter(|b| b["kind"] == "ClusterRoleBinding" && binds_server(b))
        .filter_map(|b| {
            objects().iter().find(|r| {
                r["kind"] == "ClusterRole" && r["metadata"]["name"] == b["roleRef"]["name"]
            })
        })
        .collect();
    let granted = |resource: &str| -> Vec<&str> {
        roles.iter().flat_map(|r| core_verbs(r, resource)).collect()
    };
    for verb in ["get", "list", "watch"] {
        assert!(granted("namespaces").contains(&verb), "namespaces: {verb}");
    }
    for verb in ["get", "list", "watch", "create", "update"] {
        assert!(granted("configmaps").contains(&verb), "configmaps: {verb}");
    }
    // Nothing it does not use: it never deletes, and touches no other resource.
    assert!(!granted("configmaps").contains(&"delete"));
    for role in &roles {
        for rule in role["rules"].as_array().unwrap() {
            assert_ne!(rule["resources"], serde_json::json!(["*"]), "{rule}");
        }
    }
}

#[test]
fn the_agent_may_watch_pods_and_nothing_else() {
    let account = object("DaemonSet", "meshca-agent")["spec"]["template"]["spec"]
        ["serviceAccountName"]
        .as_str()
        .unwrap();
    let roles: Vec<&Value> = objects()
        .iter()
        .filter(|b| {
            b["kind"] == "ClusterRoleBinding"
                && b["subjects"].as_array().into_iter().flatten().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account
                        && s["namespace"] == NAMESPACE
                })
        })
        .filter_map(|b| {
            objects().iter().find(|r| {
                r["kind"] == "ClusterRole" && r["metadata"]["name"] == b["roleRef"]["name"]
            })
        })
        .collect();
    let pods: Vec<&str> = roles.iter().flat_map(|r| core_verbs(r, "pods")).collect();
    for verb in ["get", "list", "watch"] {
        assert!(pods.contains(&verb), "pods: {verb}");
    }
    for role in &roles {
        for rule in role["rules"].as_array().unwrap() {
            assert_eq!(rule["resources"], serde_json::json!(["pods"]), "{rule}");
            assert_eq!(
                rule["verbs"],
                serde_json::json!(["get", "list", "watch"]),
                "{rule}"
            );
        }
    }
}
