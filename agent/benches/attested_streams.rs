//! A node agent serving attested workloads: 200 identities (one client process each, under its
//! own uid, `attestation = "unix"`), first with one SDS stream each and then with five. The
//! server's RSS gives the memory per held identity (its key, certificate, rotation task and
//! rendered secrets) and per extra stream of an identity.
//!
//! `cargo bench -p meshca-agent --bench attested_streams [-- IDENTITIES STREAMS]` (as root:
//! the clients run as uids 20000 and up)
//!
//! The agent runs in a child process (this binary re-executed with `serve`) with an RA in
//! process that signs every `ImpersonatedIdentity`, so its RSS is the agent's alone; each client
//! is this binary re-executed with `client` under its uid.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use meshca_agent::attest::{validate_rules, Attestor, UnixMatcher, UnixRuleConfig, UnixTarget};
use meshca_agent::client::{impersonated_identity, AskedAs, CaClient, WorkloadIdentity};
use meshca_agent::credential::KeyType;
use meshca_agent::identities::{IdentityPool, PoolSettings};
use meshca_agent::sds::{self, SdsService, SECRET_TYPE_URL};
use meshca_agent::workloads::Workloads;
use meshca_ca::issuer::sign_leaf;
use meshca_ca::{Authority, SpiffeId, TrustDomain, VerifiedCsr};
use meshca_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use meshca_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const FIRST_UID: u32 = 20_000;

/// An RA in process that grants every `ImpersonatedIdentity` for a day.
struct GrantingRa {
    authority: Authority,
}

#[tonic::async_trait]
impl IstioCertificateService for GrantingRa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let body = request.into_inner();
        let id = impersonated_identity(&body)
            .ok_or_else(|| Status::unauthenticated("not a node agent"))?;
        let csr = VerifiedCsr::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = SystemTime::now();
        let validity = (now, now + Duration::from_secs(24 * 3600));
        let (_, der) = sign_leaf(
            &self.authority,
            &csr,
            &SpiffeId::new(&id).unwrap(),
            validity,
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let mut cert_chain = vec![pem::encode(&pem::Pem::new("CERTIFICATE", der))];
        cert_chain.extend(self.authority.issuer_chain_pem().iter().cloned());
        cert_chain.push(self.authority.roots_pem());
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// Child: the agent's SDS server, attesting each client by uid (`FIRST_UID + i` is `ns-i/sa-i`).
async fn serve(socket: PathBuf, identities: u32) {
    let td = TrustDomain::new("cluster.local").unwrap();
    let authority =
        Authority::generate_self_signed(&td, meshca_ca::KeyType::EcP256, SystemTime::now())
            .unwrap();
    let client = CaClient::with_service(
        IstioCertificateServiceServer::new(GrantingRa { authority }),
        None,
        "Kubernetes",
    );
    let rules: Vec<UnixRuleConfig> = (0..identities)
        .map(|i| UnixRuleConfig {
            matcher: UnixMatcher {
                uid: Some(FIRST_UID + i),
                ..UnixMatcher::default()
            },
            target: UnixTarget::Workload {
                namespace: format!("ns-{i}"),
                service_account: format!("sa-{i}"),
            },
        })
        .collect();
    let metrics = Arc::new(meshca_agent::metrics::AgentMetrics::default());
    let (_bundle_tx, bundle) = watch::channel(Arc::default());
    let pool = IdentityPool::new(
        PoolSettings {
            trust_domain: td.clone(),
            template: WorkloadIdentity {
                spiffe_id: String::new(),
                key_type: KeyType::EcP256,
                ttl: Duration::from_secs(24 * 3600),
                grace_ratio: 0.5,
                grace_jitter: 0.01,
                asked_as: AskedAs::NodeAgent,
            },
            grace: Duration::from_secs(60),
            max_identities: identities as usize,
        },
        client,
        bundle,
        metrics.clone(),
    );
    let workloads = Workloads::Attested {
        attestor: Arc::new(Attestor::Unix {
            rules: validate_rules(&rules, &td).unwrap(),
            proc_root: PathBuf::from("/proc"),
        }),
        pool,
        metrics: metrics.clone(),
    };
    let service = SdsService::serving(workloads, metrics);
    let server = tokio::spawn(async move {
        sds::serve(
            service,
            &socket,
            meshca_agent::workload_api::ATTESTED_SOCKET_MODE,
            std::future::pending(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("ready");
    // Runs until the parent kills it.
    server.await.unwrap().unwrap();
}

/// Child: one workload; opens `streams` SDS streams, says `ready` once each has its first
/// answer, and on each stdin line opens as many more as the line says.
async fn client(socket: PathBuf, streams: usize) {
    let mut open = Vec::new();
    let mut lines = std::io::stdin().lines();
    let mut batch = streams;
    loop {
        for i in 0..batch {
            open.push(stream(&socket, open.len() + i).await);
        }
        println!("ready");
        match lines.next() {
            Some(Ok(line)) => batch = line.trim().parse().unwrap(),
            _ => return,
        }
    }
}

/// An Envoy stream on `default` + `ROOTCA` that has had its first answer and ACKed it; kept
/// open (and ACKing) by a task.
async fn stream(socket: &Path, i: usize) -> tokio::task::JoinHandle<()> {
    let channel = meshca_agent::workload_api::unix_channel(socket.to_path_buf())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut responses = SecretDiscoveryServiceClient::new(channel)
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = vec!["default".into(), "ROOTCA".into()];
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("sidecar~10.0.0.1~pod-{i}"),
            ..Default::default()
        }),
        resource_names: names.clone(),
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = responses.message().await.unwrap().expect("a first answer");
    let ack = move |r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse| {
        DiscoveryRequest {
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.clone(),
            type_url: SECRET_TYPE_URL.into(),
            ..Default::default()
        }
    };
    tx.send(ack(&first)).await.unwrap();
    tokio::spawn(async move {
        while let Ok(Some(response)) = responses.message().await {
            let _ = tx.send(ack(&response)).await;
        }
    })
}

/// RSS of a process in KiB, from /proc.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Process {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn ready(&mut self) {
        assert_eq!(self.lines.next().unwrap().unwrap(), "ready");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drive(identities: u32, streams: usize) {
    // Clients run as other users: the socket's directory and this binary must be theirs too.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("attested_streams");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("sds.sock");

    let mut server = Process::start(
        Command::new(&exe)
            .arg("serve")
            .arg(&socket)
            .arg(identities.to_string()),
    );
    server.ready();
    let pid = server.child.id();
    let rss_idle = rss(pid);

    let started = Instant::now();
    let mut clients: Vec<Process> = (0..identities)
        .map(|i| {
            Process::start(
                Command::new(&exe)
                    .args(["client", socket.to_str().unwrap(), "1"])
                    .uid(FIRST_UID + i)
                    .gid(FIRST_UID + i),
            )
        })
        .collect();
    for c in &mut clients {
        c.ready();
    }
    let first_answers = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss_one = rss(pid);

    for c in &mut clients {
        writeln!(c.stdin, "{}", streams - 1).unwrap();
    }
    for c in &mut clients {
        c.ready();
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_all = rss(pid);
    let _ = server.stdin.flush();

    let n = identities as f64;
    let extra_streams = n * (streams - 1) as f64;
    let per_stream = (rss_all as f64 - rss_one as f64) / extra_streams;
    let per_identity = (rss_one as f64 - rss_idle as f64) / n - per_stream;
    println!("attested SDS, {identities} identities (one client process and uid each):");
    println!("  RSS idle                          {rss_idle:>8} KiB");
    println!("  RSS, {identities} identities × 1 stream   {rss_one:>8} KiB");
    println!("  RSS, {identities} identities × {streams} streams  {rss_all:>8} KiB");
    println!("  per held identity (key, certificate, rotation, secrets)  {per_identity:>6.1} KiB");
    println!("  per further stream of an identity                        {per_stream:>6.1} KiB");
    println!(
        "  first answer on all {identities} identities (each signed by the in-process RA): {:.0} ms",
        first_answers.as_secs_f64() * 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(serve(PathBuf::from(&args[1]), args[2].parse().unwrap()));
        }
        Some("client") => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(client(PathBuf::from(&args[1]), args[2].parse().unwrap()));
        }
        _ => {
            // `cargo bench` passes `--bench`; numbers are the optional positional arguments.
            let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
            let identities = numbers.first().copied().unwrap_or(200) as u32;
            let streams = numbers.get(1).copied().unwrap_or(5).max(2);
            drive(identities, streams);
        }
    }
}
