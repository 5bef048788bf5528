//! The agent DaemonSet as a node agent: it attests the pods of its node (`attestation = "k8s"`),
//! sees their pids (`hostPID`), knows its node from the downward API, has the token its pod
//! watch uses, and the server trusts its account to ask for its node's pods.

use crate::{config_map_toml, meshca_config_as, object, toml_str, NAMESPACE};

#[test]
fn the_agent_attests_the_pods_of_its_node() {
    let ds = object("DaemonSet", "meshca-agent");
    let run = meshca_config_as(ds, "agent", &[]);
    let c = &run.effective;
    assert_eq!(toml_str(c, &["agent", "attestation"]), "k8s");
    // The node comes from the downward API, the pids from the node's pid namespace.
    assert_eq!(toml_str(c, &["agent", "k8s", "node_name"]), "worker-1");
    assert_eq!(toml_str(c, &["agent", "k8s", "pod_source"]), "api_server");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "without hostPID no peer's /proc entry is visible"
    );
    // The API-server token the pod watch uses is mounted.
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_ne!(
        object("ServiceAccount", "meshca-agent")["automountServiceAccountToken"],
        false
    );
    // The server trusts the agent's account to ask for its node's pods.
    let agent_account = format!(
        "{NAMESPACE}/{}",
        pod["serviceAccountName"].as_str().unwrap()
    );
    let server = config_map_toml("meshca");
    let trusted = server["auth"]["trusted_node_accounts"].as_array().unwrap();
    assert!(
        trusted.iter().any(|a| a.as_str() == Some(&agent_account)),
        "{agent_account} not in {trusted:?}"
    );
}
