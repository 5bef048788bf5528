//! Shared helpers: build and run the real `meshca` binary, talk to it with real clients, and
//! stand up the third parties it talks to (a Kubernetes API server's TokenReview, an OIDC
//! issuer) on loopback.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use crate::credentials::*;

/// Environment that turns the per-caller rate limits off: a load generator is one caller
/// asking thousands of times a second, which the limits exist to stop.
pub fn no_rate_limits() -> Vec<(&'static str, String)> {
    vec![
        ("MESHCA_GRPC_RATE_LIMIT_PER_IDENTITY_RATE", "0".into()),
        ("MESHCA_GRPC_RATE_LIMIT_PER_ADDRESS_RATE", "0".into()),
    ]
}

/// Runs `meshca bench` with `args` (a load, or `--write-credential`); it must succeed.
/// Returns what it printed.
pub fn meshca_bench<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let out = Command::new(meshca_bin())
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `meshca bench --json` with `args`: its report.
pub fn bench_report<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Value {
    let args: Vec<std::ffi::OsString> = std::iter::once("--json".into())
        .chain(args.into_iter().map(|a| a.as_ref().to_os_string()))
        .collect();
    serde_json::from_str(&meshca_bench(args)).unwrap()
}

/// The `meshca` binary, built once per test run with the same feature set as the tests (so
/// under `cargo test --workspace` this is a no-op check).
pub fn meshca_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--workspace",
                "--bins",
                "--tests",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(out.status.success(), "building meshca failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            // `--tests` also builds the binary's unit-test harness; we want the real binary.
            .filter(|v| {
                v["reason"] == "compiler-artifact"
                    && v["target"]["name"] == "meshca"
                    && v["profile"]["test"] == false
            })
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the meshca executable")
    })
}

/// `meshca server --dev` with its state in `<dir>/meshca-dev`, every port free, plus
/// `extra_env`.
pub fn dev_server(dir: &Path, extra_env: &[(&str, String)]) -> MeshcaProcess {
    let data = dir.join("meshca-dev");
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = vec![
        ("MESHCA_GRPC_LISTEN", grpc.to_string()),
        ("MESHCA_METRICS_LISTEN", metrics.to_string()),
    ];
    env.extend(extra_env.iter().cloned());
    MeshcaProcess::start(
        &["server", "--dev", "--data-dir", data.to_str().unwrap()],
        &env,
        dir,
        grpc,
        metrics,
    )
}

/// A service-account token from the dev issuer of the dev server whose state is in `data`, for
/// `namespace/service_account`, audience `istio-ca`, valid an hour, as the kubelet projects one
/// into a pod (bound to `pod` when given).
pub fn dev_issuer_token(
    data: &Path,
    namespace: &str,
    service_account: &str,
    pod: Option<meshca_ra::dev::BoundPod<'_>>,
) -> String {
    use meshca_ra::dev::{ServiceAccountToken, TokenSigner, DEV_ISSUER};
    let dev = data.join("dev");
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(dev.join("jwks.json")).unwrap()).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
    let key = std::fs::read_to_string(dev.join("issuer-key.pem")).unwrap();
    TokenSigner::from_pem(&key, kid)
        .unwrap()
        .mint(&ServiceAccountToken {
            issuer: DEV_ISSUER,
            audience: "istio-ca",
            namespace,
            service_account,
            lifetime: Duration::from_secs(3600),
            kubernetes_claim: true,
            bound_to: pod,
        })
        .unwrap()
}

/// A runtime of its own for the third parties a test talks to (API server, OIDC issuer),
/// alive for the whole test binary, whichever test's runtime comes and goes.
pub fn third_party_runtime() -> (tokio::runtime::Handle, std::thread::JoinHandle<()>) {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        handle_tx.send(rt.handle().clone()).unwrap();
        rt.block_on(std::future::pending::<()>());
    });
    (handle_rx.recv().unwrap(), thread)
}

/// `meshca agent --dev` beside a dev server whose state is in `<dir>/meshca-dev` and whose RA
/// listens on `grpc`, its health port free, plus `extra_env`. Sockets: `meshca-dev/agent/`.
pub fn dev_agent(dir: &Path, grpc: SocketAddr, extra_env: &[(&str, String)]) -> MeshcaProcess {
    let data = dir.join("meshca-dev");
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = vec![
        ("MESHCA_AGENT_CA_ADDR", grpc.to_string()),
        ("MESHCA_AGENT_METRICS_LISTEN", health.to_string()),
    ];
    env.extend(extra_env.iter().cloned());
    MeshcaProcess::start(
        &["agent", "--dev", "--data-dir", data.to_str().unwrap()],
        &env,
        dir,
        health,
        health,
    )
}

/// Kills `pid` once this test binary has exited: a process held by a `static` (a server shared
/// by a file's tests) is never dropped, and must not outlive the run. Stops watching when `pid`
/// exits first, so a recycled pid is never signalled.
pub fn reap_with_this_process(pid: u32) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             kill -0 {me} 2>/dev/null || kill {pid} 2>/dev/null"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A loopback port nobody listens on right now.
///
/// Ports come from one counter below the kernel's ephemeral range (32768+), so two tests never
/// get the same port and no outgoing connection can take one between the check and the
/// server's bind (asking the kernel for port 0 can hand the same port to two tests in turn).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    // A per-run offset keeps parallel test runs on one machine apart too.
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1000) as u16 * 12,
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(port < 32_768, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `meshca` process; killed on drop. Its output goes to `log`.
pub struct MeshcaProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The admin REST API of a `server` (a free port unless the test set one).
    pub rest: SocketAddr,
    pub log: PathBuf,
}

impl MeshcaProcess {
    /// Starts `meshca <args>` and waits until `/readyz` answers 200. A server's REST API gets
    /// a free port unless `MESHCA_REST_LISTEN` is given, so servers can run side by side.
    pub fn start(
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
        grpc: SocketAddr,
        metrics: SocketAddr,
    ) -> Self {
        std::fs::create_dir_all(log_dir).unwrap();
        let log = log_dir.join(format!("meshca-{}.log", grpc.port()));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(meshca_bin());
        cmd.args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null());
        let mut rest: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        for (k, v) in env {
            cmd.env(k, v);
            if *k == "MESHCA_REST_LISTEN" {
                rest = v.parse().unwrap();
            }
        }
        if !env.iter().any(|(k, _)| *k == "MESHCA_REST_LISTEN") {
            cmd.env("MESHCA_REST_LISTEN", rest.to_string());
        }
        let child = cmd.spawn().expect("meshca starts");
        reap_with_this_process(child.id());
        let mut process = Self {
            child,
            grpc,
            metrics,
            rest,
            log,
        };
        process.wait_ready();
        process
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("meshca exited with {status}:\n{}", self.output());
            }
            if http_get(self.metrics, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "meshca not ready:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        metric_value(
            &http_get(self.metrics, "/metrics").unwrap().1,
            name_and_labels,
        )
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MeshcaProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sample value from Prometheus text; 0 when the series is absent.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET over plain TCP (for the metrics port).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A gRPC client for the RA, trusting `root_pem`, optionally presenting a client cert.
pub async fn ca_client(
    addr: SocketAddr,
    root_pem: &str,
    identity: Option<(&str, &str)>,
) -> IstioCertificateServiceClient<Channel> {
    IstioCertificateServiceClient::new(tls_channel(addr, root_pem, identity).await)
        .max_decoding_message_size(8 * 1024 * 1024)
}

/// A TLS channel to the RA's port, as an agent dials it (server name `localhost`).
pub async fn tls_channel(
    addr: SocketAddr,
    root_pem: &str,
    identity: Option<(&str, &str)>,
) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connects to the RA")
}

/// Sends CreateCertificate with an optional bearer token and cluster id.
pub async fn create_certificate(
    client: &mut IstioCertificateServiceClient<Channel>,
    csr: &str,
    ttl_secs: i64,
    token: Option<&str>,
    cluster_id: Option<&str>,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: ttl_secs,
        metadata: None,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(id) = cluster_id {
        request
            .metadata_mut()
            .insert("clusterid", id.parse().unwrap());
    }
    client
        .create_certificate(request)
        .await
        .map(tonic::Response::into_inner)
}

/// A server with a plugged-in CA (`<dir>/cacerts`, polled every 200 ms) and one JWKS-mode
/// cluster trusting `issuer`: the setup for tests that change the CA files underneath it.
pub fn plugged_in_server(
    dir: &Path,
    chain: &meshca_ca::testing::GeneratedChain,
    issuer: &JwtKey,
) -> MeshcaProcess {
    chain.write(&dir.join("cacerts"));
    std::fs::write(dir.join("jwks.json"), jwks(&[issuer]).to_string()).unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("meshca.toml"),
        format!(
            r#"
data_dir = "{d}/data"
[ca]
cacerts_dir = "{d}/cacerts"
cacerts_poll_interval = "200ms"
[grpc]
listen = "{grpc}"
ip_sans = ["127.0.0.1"]
[metrics]
listen = "{metrics}"
[auth.clusters.Kubernetes]
mode = "jwks"
issuer = "{K8S_ISSUER}"
jwks_file = "{d}/jwks.json"
"#
        ),
    )
    .unwrap();
    let config = dir.join("meshca.toml").display().to_string();
    MeshcaProcess::start(&["server", "--config", &config], &[], dir, grpc, metrics)
}

// === REST ===

/// An HTTPS client for the admin REST API that trusts `root_pem`.
pub struct Rest {
    pub base: String,
    pub client: reqwest::Client,
}

impl Rest {
    pub fn new(addr: SocketAddr, root_pem: &str) -> Self {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        Self {
            base: format!("https://{addr}"),
            client,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// How many events `GET /v1/audit?{query}` lists once `enough` says so, or after 10 s:
    /// denials are recorded without holding up the answer, so they may land a moment late.
    pub async fn audit_events_until(
        &self,
        query: &str,
        token: &str,
        enough: impl Fn(usize) -> bool,
    ) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(&format!("/v1/audit?{query}"), token).await;
            assert_eq!(status, 200, "{body}");
            let listed = body["events"].as_array().unwrap().len();
            if enough(listed) || Instant::now() > deadline {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The Python of the virtualenv holding the third-party clients (`tests/python/requirements.txt`:
/// grpcio, xds-protos, py-spiffe, schemathesis), from `MESHCA_TEST_PYTHON`, which `.ci/run` sets
/// after `scripts/test-venv.sh` builds the venv. Missing in CI (`CI` set) is a failure, since a
/// skipped interop test is how the socket bug went unnoticed; locally the test is skipped with
/// the reason printed.
pub fn third_party_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("MESHCA_TEST_PYTHON") {
        Some(python) => Some(PathBuf::from(python)),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: MESHCA_TEST_PYTHON is not set (scripts/test-venv.sh makes the venv)")
        }
        None => {
            eprintln!(
                "{test}: skipped: MESHCA_TEST_PYTHON is not set; \
                 export MESHCA_TEST_PYTHON=$(scripts/test-venv.sh | tail -1)"
            );
            None
        }
    }
}

/// A script of `tests/python/`, by file name.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// How `tests/python/ca_client.py` proves who it is: a bearer token, or a workload chain and
/// its key over mTLS (a renewal, as istio-agent makes one).
pub enum GrpcioCredential<'a> {
    Token(&'a Path),
    ClientCert { chain: &'a Path, key: &'a Path },
}

/// `CreateCertificate` through grpcio (gRPC's C core), `calls` times with the CSR in `csr`
/// against the server at `grpc`: each call's answer as the script reports it (`code`,
/// `details`, `pushback_ms`).
pub fn grpcio_create_certificate(
    python: &Path,
    grpc: SocketAddr,
    ca_cert: &Path,
    credential: GrpcioCredential<'_>,
    csr: &Path,
    calls: u32,
) -> Vec<Value> {
    let mut command = Command::new(python);
    command
        .arg(python_script("ca_client.py"))
        .args(["--addr", &format!("localhost:{}", grpc.port())])
        .arg("--ca-cert")
        .arg(ca_cert)
        .arg("--csr-file")
        .arg(csr)
        .args(["--calls", &calls.to_string()]);
    match credential {
        GrpcioCredential::Token(token) => command.arg("--token-file").arg(token),
        GrpcioCredential::ClientCert { chain, key } => command
            .arg("--client-cert")
            .arg(chain)
            .arg("--client-key")
            .arg(key),
    };
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
