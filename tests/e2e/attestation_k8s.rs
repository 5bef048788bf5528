//! The `k8s` attestor end to end: processes placed (in a fake proc tree) in the containers of
//! pods on the agent's node each get their pod's service account over the Workload API (one of
//! them through py-spiffe, a client we did not write); a process in a pod of another node, or
//! in no pod, is refused with the reason; a pod the API server reports only after its process
//! connected is waited for. The agent watches the in-test API server for its node's pods.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshca_kube::fake::FakeApiServer;
use serde_json::Value;

use crate::attestation::{NodeCluster, NODE};
use crate::harness::*;

/// Starts `program args`, placed in the fake proc tree's `cgroup` before it runs: a shell
/// waits on its stdin until the file is written and then execs the program, which keeps the
/// shell's pid (the one the agent reads from `SO_PEERCRED`).
fn spawn_in(proc_root: &Path, cgroup: &str, program: &Path, args: &[&str]) -> Child {
    let mut child = Command::new("sh")
        .args(["-c", "read _ && exec \"$0\" \"$@\""])
        .arg(program)
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = proc_root.join(child.id().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    child
}

/// The output of a spawned client: stdout on success, stderr (and stdout) on failure.
fn finish(child: Child) -> Result<String, String> {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// cgroup v1 under the cgroupfs driver with containerd, as on a kubeadm node of a few years ago.
fn cgroup_v1(pod_uid: &str, container: &str) -> String {
    ["12:pids", "11:memory", "4:cpu,cpuacct", "1:name=systemd"]
        .iter()
        .map(|h| format!("{h}:/kubepods/besteffort/pod{pod_uid}/{container}\n"))
        .collect()
}

/// cgroup v2 under the systemd driver with containerd, as on a current node.
fn cgroup_v2(pod_uid: &str, container: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
         cri-containerd-{container}.scope\n",
        pod_uid.replace('-', "_")
    )
}

fn pod_uid(api: &FakeApiServer, namespace: &str, name: &str) -> String {
    api.pod(namespace, name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_pod_on_the_node_gets_its_own_identity() {
    let cluster = NodeCluster::start(&[
        ("shop", "web-1", "web", NODE),
        ("shop", "api-1", "api", NODE),
        ("far", "far-1", "far", "worker-2"),
    ]);
    let proc_root = cluster.dir.join("proc");
    std::fs::create_dir(&proc_root).unwrap();
    let dir = &cluster.dir;
    let agent = cluster.start_agent(
        &format!(
            "attestation = \"k8s\"\nproc_root = \"{}\"",
            proc_root.display()
        ),
        &format!(
            "[agent.k8s]\nnode_name = \"{NODE}\"\napi_server_url = \"https://{}\"\n\
             api_server_ca_file = \"{}\"\napi_server_token_file = \"{}\"\npod_wait = \"3s\"",
            cluster.api_addr,
            dir.join("apiserver-ca.pem").display(),
            dir.join("reviewer-token").display()
        ),
    );
    let api = cluster.api.cluster();
    let socket = cluster.workload_socket();
    let socket_arg = socket.to_str().unwrap();
    let fetch = [
        "workload",
        "fetch",
        "--json",
        "--timeout",
        "20s",
        "--socket",
        socket_arg,
    ];

    // web-1's container: our own client, cgroup v1.
    let web = pod_uid(api, "shop", "web-1");
    let client = spawn_in(
        &proc_root,
        &cgroup_v1(&web, &FakeApiServer::container_id(&web)),
        &cluster.meshca,
        &fetch,
    );
    let served: Value = serde_json::from_str(&finish(client).unwrap_or_else(|e| {
        panic!("web-1: {e}\n{}", agent.output());
    }))
    .unwrap();
    assert_eq!(served["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web");

    // api-1's container: py-spiffe over grpcio, cgroup v2.
    if let Some(python) = third_party_python("each_pod_on_the_node_gets_its_own_identity") {
        let api_uid = pod_uid(api, "shop", "api-1");
        let script = python_script("workload_client.py");
        let client = spawn_in(
            &proc_root,
            &cgroup_v2(&api_uid, &FakeApiServer::container_id(&api_uid)),
            &python,
            &[
                script.to_str().unwrap(),
                "--socket",
                socket_arg,
                "--timeout",
                "20",
                "--svid-only",
            ],
        );
        let lines = finish(client).unwrap_or_else(|e| panic!("api-1: {e}\n{}", agent.output()));
        let svid: Value = lines
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|event| event["event"] == "svid")
            .unwrap_or_else(|| panic!("no SVID event in {lines}"));
        assert_eq!(svid["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/api");
    }

    // A pod of another node: not among the agent's pods, refused after pod_wait.
    let far = pod_uid(api, "far", "far-1");
    let client = spawn_in(
        &proc_root,
        &cgroup_v2(&far, &FakeApiServer::container_id(&far)),
        &cluster.meshca,
        &fetch,
    );
    let refused = finish(client).unwrap_err();
    assert!(refused.contains("PermissionDenied"), "{refused}");
    assert!(
        refused.contains(&format!("no pod with UID {far} on node {NODE}")),
        "{refused}"
    );

    // A process of the node itself, in no pod.
    let client = spawn_in(
        &proc_root,
        "0::/system.slice/sshd.service\n",
        &cluster.meshca,
        &fetch,
    );
    let refused = finish(client).unwrap_err();
    assert!(
        refused.contains("does not run in a pod's container"),
        "{refused}"
    );

    // A pod whose process connects before the API server reports it running on this node.
    let late = api.add_pod("shop", "late-1", "late", None);
    let client = spawn_in(
        &proc_root,
        &cgroup_v2(&late, &FakeApiServer::container_id(&late)),
        &cluster.meshca,
        &fetch,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(api.schedule_pod("shop", "late-1", NODE));
    let served: Value = serde_json::from_str(&finish(client).unwrap_or_else(|e| {
        panic!("late-1: {e}\n{}", agent.output());
    }))
    .unwrap();
    assert_eq!(
        served["spiffe_id"],
        "spiffe://cluster.local/ns/shop/sa/late"
    );

    assert!(agent.metric("meshca_agent_unattested_count{reason=\"pod_unknown\"}") >= 1.0);
    assert!(agent.metric("meshca_agent_unattested_count{reason=\"not_in_pod\"}") >= 1.0);
    assert_eq!(
        agent.metric("meshca_agent_identity_certified{identity=\"shop/late\"}"),
        1.0
    );
}
