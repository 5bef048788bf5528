//! The `k8s` attestor: a socket peer's pid → its container and pod (`/proc/<pid>/cgroup`) → that
//! pod among this node's pods → its namespace and service account. The node's pods come from a
//! watch of the API server limited to the node, or from the kubelet's pod list; a pod or
//! container the source has not reported yet (a workload that connects as soon as it starts)
//! is waited for, up to `pod_wait`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshca_kube::{
    Endpoint, KubeClient, KubeClientError, ListParams, LocalPod, Pod, PodsByUid, Reflector,
    ReflectorSettings,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::cgroup::{read_container, ContainerRef};
use super::error::AttestError;
use super::workload::{PeerCredentials, WorkloadId};

/// The kubelet is asked again at most this often while a pod is awaited (SPIRE's k8s
/// attestor polls every 500 ms too).
const KUBELET_MIN_REFRESH: Duration = Duration::from_millis(500);

/// Where this node's pods are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodSource {
    /// A list + watch of the API server with `fieldSelector=spec.nodeName=<node>`: needs
    /// `get`, `list` and `watch` on pods.
    ApiServer(Endpoint),
    /// The kubelet's `GET /pods`, fetched when a pod is not known yet; the API server is not
    /// involved at all.
    Kubelet(Endpoint),
}

/// `attestation = "k8s"`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sSettings {
    /// This node's name (the DaemonSet's `spec.nodeName`): only its pods can be peers.
    pub node_name: String,
    pub source: PodSource,
    /// How long a peer whose pod or container is not reported yet is waited for.
    pub pod_wait: Duration,
    /// `/proc`, or a fake tree in tests.
    pub proc_root: PathBuf,
}

/// The running `k8s` attestor.
#[derive(Debug)]
pub struct K8sAttestor {
    settings: K8sSettings,
    pods: NodePods,
}

#[derive(Debug)]
enum NodePods {
    Watched(Reflector<Pod, PodsByUid>),
    Kubelet {
        client: KubeClient,
        list: Mutex<KubeletList>,
    },
}

/// The kubelet's last answer.
#[derive(Debug, Default)]
struct KubeletList {
    pods: Arc<PodsByUid>,
    fetched_at: Option<Instant>,
    /// Why the last fetch failed, if it did.
    error: Option<String>,
}

/// What one look at the node's pods found.
enum Lookup {
    Found(Arc<LocalPod>),
    /// Not (yet) there: the refusal if it stays so.
    Missing(AttestError),
}

// === impl K8sAttestor ===

impl K8sAttestor {
    /// Starts following the node's pods (the watch begins at once).
    pub fn start(settings: K8sSettings) -> Result<Self, KubeClientError> {
        let pods = match &settings.source {
            PodSource::ApiServer(endpoint) => NodePods::Watched(Reflector::start(
                KubeClient::new(endpoint)?,
                ReflectorSettings {
                    namespace: None,
                    params: ListParams {
                        label_selector: None,
                        field_selector: Some(format!("spec.nodeName={}", settings.node_name)),
                    },
                    relist_every: None,
                },
            )),
            PodSource::Kubelet(endpoint) => NodePods::Kubelet {
                client: KubeClient::new(endpoint)?,
                list: Mutex::new(KubeletList::default()),
            },
        };
        Ok(Self { settings, pods })
    }

    pub async fn attest(&self, peer: &PeerCredentials) -> Result<WorkloadId, AttestError> {
        let pid = peer.pid.ok_or(AttestError::NoPid)?;
        let container = match read_container(&self.settings.proc_root, pid) {
            Ok(Some(container)) => container,
            Ok(None) => return Err(AttestError::NotInPod { pid }),
            Err(_) => return Err(AttestError::ProcessGone { pid }),
        };
        let pod = self.find(&container).await?;
        if pod.finished {
            return Err(AttestError::PodFinished {
                pod: format!("{}/{}", pod.namespace, pod.name),
            });
        }
        WorkloadId::new(&pod.namespace, &pod.service_account).map_err(|e| {
            AttestError::InvalidIdentity {
                pod: format!("{}/{}", pod.namespace, pod.name),
                reason: e.to_string(),
            }
        })
    }

    /// `container`'s pod once the source reports it with that container, waiting at most
    /// `pod_wait`.
    async fn find(&self, container: &ContainerRef) -> Result<Arc<LocalPod>, AttestError> {
        let deadline = Instant::now() + self.settings.pod_wait;
        match &self.pods {
            NodePods::Watched(reflector) => {
                let mut snapshots = reflector.subscribe();
                loop {
                    let missing = {
                        let snapshot = snapshots.borrow_and_update();
                        match self.look_up(&snapshot.objects, container) {
                            Lookup::Found(pod) => return Ok(pod),
                            Lookup::Missing(_) if !snapshot.synced => {
                                AttestError::PodsUnavailable {
                                    node: self.settings.node_name.clone(),
                                    reason: "the API server has not listed them yet".into(),
                                }
                            }
                            Lookup::Missing(error) => error,
                        }
                    };
                    match tokio::time::timeout_at(deadline, snapshots.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => return Err(missing),
                    }
                }
            }
            NodePods::Kubelet { client, list } => loop {
                let (pods, fetched_at, error) = {
                    let list = list.lock().await;
                    (list.pods.clone(), list.fetched_at, list.error.clone())
                };
                let missing = match self.look_up(&pods, container) {
                    Lookup::Found(pod) => return Ok(pod),
                    Lookup::Missing(_) if error.is_some() => AttestError::PodsUnavailable {
                        node: self.settings.node_name.clone(),
                        reason: error.unwrap_or_default(),
                    },
                    Lookup::Missing(error) => error,
                };
                if Instant::now() >= deadline {
                    return Err(missing);
                }
                // One more fetch right at the deadline, if the pace allows none before.
                let next = fetched_at
                    .map_or_else(Instant::now, |at| (at + KUBELET_MIN_REFRESH).min(deadline));
                tokio::time::sleep_until(next).await;
                let mut list = list.lock().await;
                if list.fetched_at != fetched_at {
                    // Another attestation fetched meanwhile: look at its answer first.
                    continue;
                }
                list.fetched_at = Some(Instant::now());
                match client.kubelet_pods().await {
                    Ok(answer) => {
                        list.pods = Arc::new(PodsByUid::from_pods(answer.items));
                        list.error = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the kubelet's pod list could not be read");
                        list.error = Some(format!("kubelet: {error}"));
                    }
                }
            },
        }
    }

    fn look_up(&self, pods: &PodsByUid, container: &ContainerRef) -> Lookup {
        let waited = self.settings.pod_wait;
        match pods.get(container.pod_uid.as_str()) {
            Some(pod) if pod.has_container(container.container_id.as_str()) => Lookup::Found(pod),
            Some(pod) => Lookup::Missing(AttestError::ContainerUnknown {
                pod: format!("{}/{}", pod.namespace, pod.name),
                container: container.container_id.as_str().to_string(),
                waited,
            }),
            None => Lookup::Missing(AttestError::PodUnknown {
                uid: container.pod_uid.as_str().to_string(),
                node: self.settings.node_name.clone(),
                waited,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use meshca_kube::fake::FakeApiServer;

    use super::*;

    const TOKEN: &str = "agent-token";
    const NODE: &str = "worker-1";

    /// A fake cluster, the `k8s` attestor on `NODE` reading it from `source`, and a proc tree
    /// the test fills.
    struct Fixture {
        api: FakeApiServer,
        attestor: K8sAttestor,
        proc_root: tempfile::TempDir,
        _token: tempfile::TempDir,
    }

    async fn fixture(kubelet: bool, pod_wait: Duration) -> Fixture {
        let api = FakeApiServer::new(TOKEN);
        let addr = if kubelet {
            api.serve_kubelet_http(NODE).await.unwrap()
        } else {
            api.serve_http().await.unwrap()
        };
        let token = tempfile::tempdir().unwrap();
        std::fs::write(token.path().join("token"), TOKEN).unwrap();
        let endpoint = Endpoint {
            url: Some(format!("http://{addr}")),
            ca_file: None,
            token_file: Some(token.path().join("token")),
            request_timeout: Duration::from_secs(2),
        };
        let proc_root = tempfile::tempdir().unwrap();
        let attestor = K8sAttestor::start(K8sSettings {
            node_name: NODE.into(),
            source: if kubelet {
                PodSource::Kubelet(endpoint)
            } else {
                PodSource::ApiServer(endpoint)
            },
            pod_wait,
            proc_root: proc_root.path().to_path_buf(),
        })
        .unwrap();
        Fixture {
            api,
            attestor,
            proc_root,
            _token: token,
        }
    }

    impl Fixture {
        /// Puts process `pid` in container `container` of the pod with `uid`, as the systemd
        /// cgroup driver and containerd write it (cgroup v2).
        fn process_in(&self, pid: u32, uid: &str, container: &str) {
            let dir = self.proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let cgroup = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope\n",
                uid.replace('-', "_")
            );
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        /// A pod on `node` (running) and the id of its one container.
        fn pod(&self, ns: &str, name: &str, sa: &str, node: &str) -> (String, String) {
            let uid = self.api.add_pod(ns, name, sa, Some(node));
            let pod = self.api.pod(ns, name).unwrap();
            let reported = pod["status"]["containerStatuses"][0]["containerID"].clone();
            let id = FakeApiServer::container_id(&uid);
            assert_eq!(reported, format!("containerd://{id}"));
            (uid, id)
        }

        async fn attest(&self, pid: u32) -> Result<String, AttestError> {
            let peer = PeerCredentials {
                pid: Some(pid),
                uid: 1000,
                gid: 1000,
            };
            self.attestor.attest(&peer).await.map(|id| id.to_string())
        }
    }

    async fn each_source(test: impl AsyncFn(Fixture)) {
        for kubelet in [false, true] {
            test(fixture(kubelet, Duration::from_millis(1500)).await).await;
        }
    }

    #[tokio::test]
    async fn a_process_gets_its_pods_service_account() {
        each_source(async |f: Fixture| {
            let (uid, container) = f.pod("shop", "web-7d9f8-x2x7q", "web", NODE);
            f.pod("shop", "api-5c6b7-q8w9e", "api", NODE);
            f.process_in(4242, &uid, &container);
            assert_eq!(f.attest(4242).await, Ok("shop/web".into()));
        })
        .await;
    }

    #[tokio::test]
    async fn a_pod_reported_while_its_process_waits_is_found() {
        each_source(async |f: Fixture| {
            // The container runs, but the scheduler's binding (and so the kubelet's report of
            // the container) reaches the source only after the process has connected.
            let uid = f.api.add_pod("shop", "web-7d9f8-x2x7q", "web", None);
            f.process_in(4242, &uid, &FakeApiServer::container_id(&uid));
            let schedule = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(f.api.schedule_pod("shop", "web-7d9f8-x2x7q", NODE));
            };
            let (result, ()) = tokio::join!(f.attest(4242), schedule);
            assert_eq!(result, Ok("shop/web".into()));
        })
        .await;
    }

    #[tokio::test]
    async fn pods_of_other_nodes_and_unknown_containers_are_refused_after_the_wait() {
        each_source(async |f: Fixture| {
            let (elsewhere, container) = f.pod("shop", "web-7d9f8-x2x7q", "web", "worker-2");
            f.process_in(1, &elsewhere, &container);
            let started = Instant::now();
            let refused = f.attest(1).await.unwrap_err();
            assert_eq!(refused.reason(), "pod_unknown", "{refused}");
            assert!(started.elapsed() >= Duration::from_millis(1500));
            assert!(
                refused.to_string().contains("on node worker-1"),
                "{refused}"
            );

            let (here, _) = f.pod("shop", "api-5c6b7-q8w9e", "api", NODE);
            f.process_in(2, &here, &"f".repeat(64));
            let refused = f.attest(2).await.unwrap_err();
            assert_eq!(refused.reason(), "container_unknown", "{refused}");
            assert!(refused.to_string().contains("shop/api-5c6b7-q8w9e"));
        })
        .await;
    }

    #[tokio::test]
    async fn finished_pods_and_processes_outside_pods_are_refused_at_once() {
        each_source(async |f: Fixture| {
            let (uid, container) = f.pod("batch", "job-x-abcde", "runner", NODE);
            assert!(f.api.set_pod_phase("batch", "job-x-abcde", "Succeeded"));
            f.process_in(7, &uid, &container);
            let started = Instant::now();
            let refused = f.attest(7).await.unwrap_err();
            assert_eq!(refused.reason(), "pod_finished", "{refused}");
            assert!(started.elapsed() < Duration::from_millis(1500));

            let host = f.proc_root.path().join("8");
            std::fs::create_dir_all(&host).unwrap();
            std::fs::write(host.join("cgroup"), "0::/system.slice/sshd.service\n").unwrap();
            assert_eq!(f.attest(8).await, Err(AttestError::NotInPod { pid: 8 }));
            assert_eq!(f.attest(9).await, Err(AttestError::ProcessGone { pid: 9 }));
            let hidden = PeerCredentials {
                pid: None,
                uid: 0,
                gid: 0,
            };
            assert_eq!(f.attestor.attest(&hidden).await, Err(AttestError::NoPid));
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreachable_source_is_named_in_the_refusal() {
        let mut f = fixture(true, Duration::from_millis(600)).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        f.attestor = K8sAttestor::start(K8sSettings {
            node_name: NODE.into(),
            source: PodSource::Kubelet(Endpoint {
                url: Some(url),
                ca_file: None,
                token_file: Some(f._token.path().join("token")),
                request_timeout: Duration::from_secs(1),
            }),
            pod_wait: Duration::from_millis(600),
            proc_root: f.proc_root.path().to_path_buf(),
        })
        .unwrap();
        f.process_in(3, "1b4e28ba-2fa1-11d2-883f-0016d3cca427", &"a".repeat(64));
        let refused = f.attest(3).await.unwrap_err();
        assert_eq!(refused.reason(), "pods_unavailable", "{refused}");
        assert!(refused.to_string().contains("kubelet"), "{refused}");
    }
}
