//! Istio ambient against the real binary: a ztunnel-shaped client (tonic and prost, as ztunnel
//! is) asks `meshca server --dev` for the identities of pods on its node with
//! `ImpersonatedIdentity`, and meshca authorizes it against the pods the in-test API server
//! lists and watches (core/v1 JSON). Its tokens come from the dev issuer with pod and node
//! claims (jwks mode), or are reviewed with TokenReview's `extra` (tokenreview mode).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use meshca_ca::x509::ParsedCert;
use meshca_proto::istio::v1::auth::IstioCertificateRequest;
use meshca_ra::dev::BoundPod;
use tonic::Code;

use crate::credentials::WorkloadKey;
use crate::harness::*;
use crate::peers::{self, ApiServerState, REVIEWER_TOKEN};

const ZTUNNEL: &str = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
const WEB: &str = "spiffe://cluster.local/ns/web/sa/web";
const API: &str = "spiffe://cluster.local/ns/api/sa/api";
/// ztunnel's `SECRET_TTL` default.
const ZTUNNEL_TTL: i64 = 24 * 3600;

/// One dev server trusting `istio-system/ztunnel`, with two clusters on one API server:
/// `Kubernetes` (the dev issuer's tokens, jwks) and `tr` (TokenReview).
struct Ambient {
    server: MeshcaProcess,
    api: Arc<ApiServerState>,
    data: PathBuf,
    /// ztunnel-a's pod uid (worker-1).
    ztunnel_a_uid: String,
    _runtime: std::thread::JoinHandle<()>,
    _tmp: tempfile::TempDir,
}

fn ambient() -> &'static Ambient {
    static AMBIENT: OnceLock<Ambient> = OnceLock::new();
    AMBIENT.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (runtime, runtime_thread) = third_party_runtime();
        let api = Arc::new(ApiServerState::default());
        let (api_addr, api_ca) = peers::start_api_server(&runtime, api.clone());
        std::fs::write(dir.join("apiserver-ca.pem"), api_ca.pem()).unwrap();
        std::fs::write(dir.join("reviewer-token"), REVIEWER_TOKEN).unwrap();

        let cluster = api.cluster();
        for ns in ["istio-system", "web", "api"] {
            cluster.add_namespace(ns, &[]);
        }
        let ztunnel_a_uid =
            cluster.add_pod("istio-system", "ztunnel-a", "ztunnel", Some("worker-1"));
        cluster.add_pod("istio-system", "ztunnel-b", "ztunnel", Some("worker-2"));
        cluster.add_pod("web", "web-1", "web", Some("worker-1"));
        cluster.add_pod("api", "api-1", "api", Some("worker-2"));

        // The trusted account and the second cluster come from a file, cluster Kubernetes's
        // API server from the environment: `--dev` keeps both.
        let d = dir.display();
        std::fs::write(
            dir.join("ambient.toml"),
            format!(
                r#"
[auth]
trusted_node_accounts = ["istio-system/ztunnel"]

[auth.clusters.tr]
mode = "tokenreview"
api_server_url = "https://{api_addr}"
api_server_ca_file = "{d}/apiserver-ca.pem"
api_server_token_file = "{d}/reviewer-token"
"#
            ),
        )
        .unwrap();
        let data = dir.join("meshca-dev");
        let server = start_dev_server(
            &dir,
            &data,
            &[
                (
                    "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_URL",
                    format!("https://{api_addr}"),
                ),
                (
                    "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_CA_FILE",
                    dir.join("apiserver-ca.pem").display().to_string(),
                ),
                (
                    "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_TOKEN_FILE",
                    dir.join("reviewer-token").display().to_string(),
                ),
            ],
            Some(&dir.join("ambient.toml")),
        );
        Ambient {
            server,
            api,
            data,
            ztunnel_a_uid,
            _runtime: runtime_thread,
            _tmp: tmp,
        }
    })
}

/// `meshca server --dev` on free ports, with `env` and, when given, `--config`.
fn start_dev_server(
    dir: &Path,
    data: &Path,
    env: &[(&str, String)],
    config: Option<&Path>,
) -> MeshcaProcess {
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut all_env = vec![
        ("MESHCA_GRPC_LISTEN", grpc.to_string()),
        ("MESHCA_METRICS_LISTEN", metrics.to_string()),
    ];
    all_env.extend(env.iter().cloned());
    let mut args = vec!["server", "--dev", "--data-dir", data.to_str().unwrap()];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().unwrap()]);
    }
    MeshcaProcess::start(&args, &all_env, dir, grpc, metrics)
}

fn root(data: &Path) -> String {
    std::fs::read_to_string(data.join("root-cert.pem")).unwrap()
}

/// What ztunnel keeps of an answer: the leaf (whose only URI SAN must be the identity it asked
/// for), intermediates one per element, and every root of the last element.
#[derive(Debug)]
pub(crate) struct WorkloadCertificate {
    pub(crate) leaf: ParsedCert,
    leaf_pem: String,
    key_pem: String,
    roots: Vec<Vec<u8>>,
}

/// ztunnel's `fetch_certificate`: a fresh P-256 key and CSR for `identity`, its token and
/// cluster id as headers, `ImpersonatedIdentity` in the metadata, and the answer parsed (and
/// refused) as ztunnel parses it.
pub(crate) async fn ztunnel_fetch(
    grpc: SocketAddr,
    root_pem: &str,
    token: &str,
    cluster_id: &str,
    identity: &str,
) -> Result<WorkloadCertificate, tonic::Status> {
    let key = WorkloadKey::ec();
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: key.csr(&[identity]),
        validity_duration: ZTUNNEL_TTL,
        metadata: Some(prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.into())),
                },
            )]
            .into(),
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .metadata_mut()
        .insert("clusterid", cluster_id.parse().unwrap());
    let mut client = ca_client(grpc, root_pem, None).await;
    let answer = client.create_certificate(request).await?.into_inner();
    let chain = answer.cert_chain;
    assert!(
        chain.len() >= 2,
        "ztunnel refuses an answer without a root: {chain:?}"
    );
    let leaf = ParsedCert::from_der(pem::parse(&chain[0]).unwrap().contents()).unwrap();
    for middle in &chain[1..chain.len() - 1] {
        assert_eq!(
            pem::parse_many(middle).unwrap().len(),
            1,
            "one cert per element"
        );
    }
    let roots: Vec<Vec<u8>> = pem::parse_many(chain.last().unwrap())
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    assert!(!roots.is_empty());
    assert_eq!(
        leaf.uri_sans(),
        [identity.to_string()],
        "ztunnel checks the leaf names exactly the identity it asked for"
    );
    Ok(WorkloadCertificate {
        leaf,
        leaf_pem: chain[0].clone(),
        key_pem: key.key_pem(),
        roots,
    })
}

fn bound<'a>(name: &'a str, uid: &'a str, node: &'a str) -> Option<BoundPod<'a>> {
    Some(BoundPod {
        name,
        uid,
        node: Some(node),
    })
}

fn assert_refused(result: Result<WorkloadCertificate, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(
        status.message(),
        "request impersonation authentication failure",
        "{what}: Istio's message, no reason"
    );
}

/// Waits until `call` gives what `done` wants (a watch event takes a moment to arrive).
async fn until<T>(what: &str, mut call: impl AsyncFnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let result = call().await;
        if done(&result) {
            return result;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_synced(server: &MeshcaProcess, cluster: &str) {
    let series = format!("meshca_pod_cache_synced{{cluster=\"{cluster}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric(&series) != 1.0 {
        assert!(Instant::now() < deadline, "{series} never turned 1");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn ztunnel_gets_the_identities_of_pods_on_its_node_only() {
    let a = ambient();
    wait_synced(&a.server, "Kubernetes");
    let root = root(&a.data);
    let token = dev_issuer_token(
        &a.data,
        "istio-system",
        "ztunnel",
        bound("ztunnel-a", &a.ztunnel_a_uid, "worker-1"),
    );
    let grpc = a.server.grpc;

    // web-1 runs on worker-1, as ztunnel-a does.
    let web = ztunnel_fetch(grpc, &root, &token, "Kubernetes", WEB)
        .await
        .unwrap();
    let lifetime = web
        .leaf
        .not_after()
        .duration_since(web.leaf.not_before())
        .unwrap();
    assert!(
        lifetime > Duration::from_secs(3600),
        "the TTL policy of any caller: {lifetime:?}"
    );
    let dev_root = pem::parse(&root).unwrap().into_contents();
    assert!(web.roots.contains(&dev_root));

    // api-1 runs on worker-2: refused, and said so nowhere but in the log, audit and metrics.
    assert_refused(
        ztunnel_fetch(grpc, &root, &token, "Kubernetes", API).await,
        "a pod on another node",
    );
    assert_refused(
        ztunnel_fetch(
            grpc,
            &root,
            &token,
            "Kubernetes",
            "spiffe://cluster.local/ns/web/sa/admin",
        )
        .await,
        "an account with no pod",
    );

    // A pod scheduled onto worker-1 later is served once the watch brings it; deleted, it is
    // not any more.
    let cluster = a.api.cluster();
    cluster.add_pod("api", "api-2", "api", Some("worker-1"));
    let served = until(
        "the new pod on worker-1 is seen",
        async || ztunnel_fetch(grpc, &root, &token, "Kubernetes", API).await,
        Result::is_ok,
    )
    .await;
    assert_eq!(served.unwrap().leaf.uri_sans(), [API.to_string()]);
    assert!(cluster.delete_pod("api", "api-2"));
    let after = until(
        "the deletion is seen",
        async || ztunnel_fetch(grpc, &root, &token, "Kubernetes", API).await,
        Result::is_err,
    )
    .await;
    assert_refused(after, "the pod was deleted");

    // The inventory knows who asked, for whom, from where.
    let rest = Rest::new(a.server.rest, &root);
    let auditor = std::fs::read_to_string(a.data.join("dev/auditor-token")).unwrap();
    let auditor = auditor.trim();
    let serial = web.leaf.serial().to_hex();
    let (status, page) = rest
        .get(
            &format!("/v1/certificates?impersonated_by={ZTUNNEL}"),
            auditor,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let listed = page["certificates"].as_array().unwrap();
    let ours = listed
        .iter()
        .find(|c| c["serial"] == serial.as_str())
        .unwrap_or_else(|| panic!("{serial} not in {page}"));
    assert_eq!(ours["spiffe_id"], WEB);
    assert_eq!(ours["requester"]["impersonated_by"], ZTUNNEL);
    assert_eq!(ours["requester"]["pod"], "istio-system/ztunnel-a");
    assert_eq!(ours["requester"]["node"], "worker-1");
    assert_eq!(
        ours["requester"]["principal"],
        "system:serviceaccount:istio-system:ztunnel"
    );
    let (_, any) = rest
        .get("/v1/certificates?impersonated_by=*", auditor)
        .await;
    assert!(any["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| !c["requester"]["impersonated_by"].is_null()));
    let (_, on_node) = rest
        .get("/v1/certificates?requester_node=worker-2", auditor)
        .await;
    assert!(
        on_node["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["serial"] != serial.as_str()),
        "{on_node}"
    );

    // The refusal is on record with its reason; the caller never saw it.
    let listed = rest
        .audit_events_until(
            &format!("action=certificate.issue&outcome=denied&target={API}"),
            auditor,
            |n| n >= 1,
        )
        .await;
    assert!(listed >= 1);
    let (_, events) = rest
        .get(
            &format!("/v1/audit?action=certificate.issue&outcome=denied&target={API}"),
            auditor,
        )
        .await;
    let reasons: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["details"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r == "no running pod of api/api on node worker-1"),
        "{reasons:?}"
    );
    assert!(
        a.server
            .metric("meshca_impersonation_refusal_count{reason=\"not_on_node\"}")
            >= 3.0
    );

    // Renewal over mTLS with the certificate ztunnel holds for web stays web's.
    let mut renewing = ca_client(grpc, &root, Some((&web.leaf_pem, &web.key_pem))).await;
    let renewed = create_certificate(&mut renewing, &WorkloadKey::ec().csr(&[WEB]), 0, None, None)
        .await
        .unwrap();
    let renewed =
        ParsedCert::from_der(pem::parse(&renewed.cert_chain[0]).unwrap().contents()).unwrap();
    assert_eq!(renewed.uri_sans(), [WEB.to_string()]);
}

#[tokio::test]
async fn callers_that_are_not_node_agents_are_refused() {
    let a = ambient();
    wait_synced(&a.server, "Kubernetes");
    let root = root(&a.data);
    let grpc = a.server.grpc;
    let web_uid = a.api.cluster().pod("web", "web-1").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    // web's own, pod-bound token, asking for api's identity, or for its own through the field.
    let web_token = dev_issuer_token(&a.data, "web", "web", bound("web-1", &web_uid, "worker-1"));
    assert_refused(
        ztunnel_fetch(grpc, &root, &web_token, "Kubernetes", API).await,
        "a workload is not a node agent",
    );
    assert_refused(
        ztunnel_fetch(grpc, &root, &web_token, "Kubernetes", WEB).await,
        "not even for its own identity",
    );
    // ztunnel's account with a token bound to no pod cannot say which node it is on.
    let unbound = dev_issuer_token(&a.data, "istio-system", "ztunnel", None);
    assert_refused(
        ztunnel_fetch(grpc, &root, &unbound, "Kubernetes", WEB).await,
        "a token bound to no pod",
    );
    // A token still bound to ztunnel-a's name after the pod was replaced (new uid) is stale.
    let stale = dev_issuer_token(
        &a.data,
        "istio-system",
        "ztunnel",
        bound(
            "ztunnel-a",
            "00000000-dead-beef-0000-000000000000",
            "worker-1",
        ),
    );
    assert_refused(
        ztunnel_fetch(grpc, &root, &stale, "Kubernetes", WEB).await,
        "a token of an earlier pod of that name",
    );
    // Without the field, web's token gets web's certificate as ever.
    let mut client = ca_client(grpc, &root, None).await;
    create_certificate(
        &mut client,
        &WorkloadKey::ec().csr(&[WEB]),
        0,
        Some(&web_token),
        None,
    )
    .await
    .unwrap();
    for reason in ["not_trusted", "no_pod_binding", "uid_mismatch"] {
        let series = format!("meshca_impersonation_refusal_count{{reason=\"{reason}\"}}");
        assert!(a.server.metric(&series) >= 1.0, "{series}");
    }
}

#[tokio::test]
async fn tokenreview_extra_names_the_pod_and_node() {
    let a = ambient();
    wait_synced(&a.server, "tr");
    let root = root(&a.data);
    let uid = a.api.cluster().pod("istio-system", "ztunnel-b").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    a.api.bind_token(
        "ztunnel-b-token",
        "istio-system",
        "ztunnel",
        "ztunnel-b",
        &uid,
        "worker-2",
    );
    let grpc = a.server.grpc;
    let api = ztunnel_fetch(grpc, &root, "ztunnel-b-token", "tr", API)
        .await
        .unwrap();
    assert_eq!(api.leaf.uri_sans(), [API.to_string()]);
    assert_refused(
        ztunnel_fetch(grpc, &root, "ztunnel-b-token", "tr", WEB).await,
        "web runs on worker-1",
    );
}

/// Until a cluster's pods have been listed, impersonation is answered UNAVAILABLE (retry), not
/// guessed; everything else is served.
#[tokio::test]
async fn before_the_pods_are_listed_impersonation_is_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // An API server that is not there: the pod cache never syncs.
    let nowhere = free_port();
    let any_ca = meshca_ca::testing::GeneratedChain::new(meshca_ca::KeyType::EcP256)
        .root
        .pem();
    std::fs::write(dir.join("ca.pem"), any_ca).unwrap();
    std::fs::write(dir.join("token"), "t").unwrap();
    let data = dir.join("meshca-dev");
    let server = start_dev_server(
        dir,
        &data,
        &[
            // The environment spelling: comma-separated.
            (
                "MESHCA_AUTH_TRUSTED_NODE_ACCOUNTS",
                "istio-system/ztunnel, kube-system/node-agent".into(),
            ),
            (
                "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_URL",
                format!("https://127.0.0.1:{nowhere}"),
            ),
            (
                "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_CA_FILE",
                dir.join("ca.pem").display().to_string(),
            ),
            (
                "MESHCA_AUTH_CLUSTERS_KUBERNETES_API_SERVER_TOKEN_FILE",
                dir.join("token").display().to_string(),
            ),
        ],
        None,
    );
    let root = root(&data);
    let token = dev_issuer_token(
        &data,
        "kube-system",
        "node-agent",
        bound("node-agent-x", "1234", "worker-1"),
    );
    let status = ztunnel_fetch(server.grpc, &root, &token, "Kubernetes", WEB)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    assert_eq!(
        server.metric("meshca_pod_cache_synced{cluster=\"Kubernetes\"}"),
        0.0
    );
    // An untrusted caller is refused outright, synced or not.
    let other = dev_issuer_token(&data, "web", "web", bound("web-1", "1", "worker-1"));
    assert_refused(
        ztunnel_fetch(server.grpc, &root, &other, "Kubernetes", WEB).await,
        "not a trusted account",
    );
    // Nothing was issued for web; a workload's own request still is.
    let store = meshca_ca::Store::connect(&format!("sqlite://{}/meshca.db", data.display()))
        .await
        .unwrap();
    let filter = meshca_ca::store::CertificateFilter {
        spiffe_id: Some(WEB.into()),
        ..Default::default()
    };
    assert!(store
        .certificates(&filter, 0, None, 10)
        .await
        .unwrap()
        .is_empty());
    let mut client = ca_client(server.grpc, &root, None).await;
    create_certificate(
        &mut client,
        &WorkloadKey::ec().csr(&[WEB]),
        0,
        Some(&other),
        None,
    )
    .await
    .unwrap();
}
