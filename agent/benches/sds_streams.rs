//! The agent's SDS server under 1,000 concurrent Envoy streams on `default` + `ROOTCA`: its
//! RSS and CPU, and how long one rotation takes to reach every stream.
//!
//! `cargo bench -p meshca-agent --bench sds_streams [-- STREAMS ROTATIONS]`
//!
//! The server runs in a child process (this binary re-executed with `serve`), so its RSS and
//! CPU (from /proc) are the server's alone; the parent plays the Envoys, one connection each,
//! and triggers rotations through the child's stdin.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use meshca_agent::credential::{Credential, KeyAndCsr, KeyType};
use meshca_agent::sds::{self, SdsService, SECRET_TYPE_URL};
use meshca_ca::issuer::sign_leaf;
use meshca_ca::{Authority, SpiffeId, TrustDomain, VerifiedCsr};
use tokio::sync::{mpsc, watch, Barrier};
use tokio_stream::wrappers::ReceiverStream;

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

fn credential(authority: &Authority) -> Credential {
    let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
    let csr = VerifiedCsr::from_pem(&request.csr_pem).unwrap();
    let now = SystemTime::now();
    let validity = (now, now + Duration::from_secs(24 * 3600));
    let (_, der) = sign_leaf(authority, &csr, &SpiffeId::new(ID).unwrap(), validity).unwrap();
    let mut answer = vec![pem::encode(&pem::Pem::new("CERTIFICATE", der))];
    answer.extend(authority.issuer_chain_pem().iter().cloned());
    answer.push(authority.roots_pem());
    request.accept(ID, &answer, now).unwrap()
}

/// Child: an SDS server that rotates on every line of stdin.
async fn serve(socket: PathBuf) {
    let td = TrustDomain::new("cluster.local").unwrap();
    let authority =
        Authority::generate_self_signed(&td, meshca_ca::KeyType::EcP256, SystemTime::now())
            .unwrap();
    let (tx, rx) = watch::channel(Some(Arc::new(credential(&authority))));
    let service = SdsService::new(rx, Default::default());
    let server = tokio::spawn(async move {
        sds::serve(
            service,
            &socket,
            meshca_agent::workload_api::PRIVATE_SOCKET_MODE,
            std::future::pending(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("ready");
    // watch::Sender is usable from a plain thread; signing happens before the clock starts,
    // as in real life the RA signs and the agent only publishes.
    tokio::task::spawn_blocking(move || {
        for _ in std::io::stdin().lines().map_while(Result::ok) {
            tx.send_replace(Some(Arc::new(credential(&authority))));
            println!("rotated");
        }
    })
    .await
    .unwrap();
    server.abort();
}

/// (RSS in KiB, CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks as f64 / 100.0)
}

struct ServerProcess {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl ServerProcess {
    fn start(socket: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("serve")
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        Self { child, lines }
    }

    fn rotate(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap(), "rotate").unwrap();
        assert_eq!(self.lines.next().unwrap().unwrap(), "rotated");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn drive(streams: usize, rotations: usize) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let mut server = ServerProcess::start(&socket);
    let pid = server.child.id();
    let (rss_idle, cpu_idle) = usage(pid);

    // Each Envoy: connect, subscribe, ACK the first answer, then report every push.
    let (pushes, mut pushed) = mpsc::unbounded_channel::<Instant>();
    let connected = Arc::new(Barrier::new(streams + 1));
    let started = Instant::now();
    for i in 0..streams {
        let socket = socket.clone();
        let pushes = pushes.clone();
        let connected = connected.clone();
        tokio::spawn(async move {
            let channel = meshca_agent::workload_api::unix_channel(socket)
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
                    id: format!("sidecar~10.0.{}.{}~pod-{i}", i / 250, i % 250),
                    ..Default::default()
                }),
                resource_names: names.clone(),
                type_url: SECRET_TYPE_URL.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut first = true;
            while let Ok(Some(response)) = responses.message().await {
                tx.send(DiscoveryRequest {
                    version_info: response.version_info.clone(),
                    response_nonce: response.nonce.clone(),
                    resource_names: names.clone(),
                    type_url: SECRET_TYPE_URL.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
                if first {
                    first = false;
                    connected.wait().await;
                } else {
                    pushes.send(Instant::now()).unwrap();
                }
            }
        });
    }
    connected.wait().await;
    let connect_time = started.elapsed();
    let (rss_connected, cpu_connected) = usage(pid);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, cpu_after_idle) = usage(pid);

    let mut reach = Vec::new();
    let mut cpu_per_rotation = Vec::new();
    for _ in 0..rotations {
        let (_, cpu_before) = usage(pid);
        let t0 = Instant::now();
        server.rotate();
        let mut last = t0;
        for _ in 0..streams {
            last = tokio::time::timeout(Duration::from_secs(30), pushed.recv())
                .await
                .expect("every stream gets the rotation")
                .unwrap();
        }
        reach.push(last - t0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cpu_per_rotation.push(usage(pid).1 - cpu_before);
    }
    let (rss_end, _) = usage(pid);
    reach.sort();
    cpu_per_rotation.sort_by(f64::total_cmp);

    println!("SDS server, {streams} streams on default + ROOTCA (one connection each):");
    println!("  RSS idle (no streams)        {:>8} KiB", rss_idle);
    println!(
        "  RSS with {streams} streams       {:>8} KiB  (+{:.1} KiB per stream)",
        rss_connected,
        (rss_connected as f64 - rss_idle as f64) / streams as f64
    );
    println!(
        "  RSS after {rotations} rotations        {:>8} KiB",
        rss_end
    );
    println!(
        "  connect + first answer       {:>8.0} ms  (server CPU {:.2} s)",
        connect_time.as_secs_f64() * 1e3,
        cpu_connected - cpu_idle
    );
    println!(
        "  server CPU while idle, 5 s   {:>8.2} s",
        cpu_after_idle - cpu_connected
    );
    println!(
        "  rotation reaches all streams: median {:.0} ms, max {:.0} ms  (server CPU per rotation: median {:.2} s)",
        reach[reach.len() / 2].as_secs_f64() * 1e3,
        reach[reach.len() - 1].as_secs_f64() * 1e3,
        cpu_per_rotation[cpu_per_rotation.len() / 2]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if args.first().map(String::as_str) == Some("serve") {
        runtime.block_on(serve(PathBuf::from(&args[1])));
        return;
    }
    // `cargo bench` passes `--bench`; numbers are the optional positional arguments.
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let streams = numbers.first().copied().unwrap_or(1000);
    let rotations = numbers.get(1).copied().unwrap_or(5);
    runtime.block_on(drive(streams, rotations));
}
