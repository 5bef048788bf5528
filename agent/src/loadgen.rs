//! `meshca bench`: a CreateCertificate load generator acting like many istio-agents. Keys,
//! CSRs and tokens are prepared before the clock starts (client crypto is not what is being
//! measured); every answer is checked (the chain parses, the leaf names the expected SPIFFE
//! id); the report has throughput, latency percentiles, errors by gRPC code and, given the
//! server's PID, its CPU seconds per issuance read from /proc.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use der::Decode;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_proto::istio::v1::auth::IstioCertificateRequest;
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credential::{uri_sans, KeyAndCsr, KeyType};

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// The RA, host:port.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub addr: String,
    /// PEM roots that verify the RA's serving certificate.
    #[arg(long, required_unless_present = "cfssl")]
    pub ca_cert: Option<PathBuf>,
    /// Load a cfssl `serve` at this host:port instead (`POST /api/v1/cfssl/sign` over plain
    /// HTTP/1.1, one keep-alive connection per request in flight) with the same CSRs: the peer
    /// in the comparison. cfssl drops URI SANs, so answers are checked only to be a certificate.
    #[arg(long, conflicts_with_all = ["client_cert", "token_file", "jwt_key"])]
    pub cfssl: Option<String>,
    /// TLS server name to expect.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// One service-account token for every request (all requests are then one identity,
    /// `--namespace`/`--service-account`).
    #[arg(long, conflicts_with = "jwt_key")]
    pub token_file: Option<PathBuf>,
    /// Mint a token per identity with this private key (PKCS#8 PEM, EC P-256 → ES256 or RSA →
    /// RS256); the server must trust its JWKS.
    #[arg(long, requires = "jwt_issuer")]
    pub jwt_key: Option<PathBuf>,
    /// The `kid` header of the minted tokens. A base64url kid may begin with `-`, so the value
    /// is taken as is rather than read as another flag.
    #[arg(long, allow_hyphen_values = true)]
    pub jwt_kid: Option<String>,
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    #[arg(long, default_value = "istio-ca")]
    pub jwt_audience: String,
    /// Renewal profile: authenticate every call with this workload certificate (PEM, leaf
    /// first) over mTLS instead of a token, as an agent renewing does; CSRs name its SPIFFE id.
    #[arg(long, requires = "client_key", conflicts_with_all = ["token_file", "jwt_key"])]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Distinct identities (`ns-<i>/sa-<i>`) with `--jwt-key`.
    #[arg(long, default_value_t = 16)]
    pub identities: usize,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// CSR key type: ec-p256, ec-p384, rsa-2048, rsa-4096.
    #[arg(long, default_value = "ec-p256")]
    pub key_type: String,
    /// Pre-generated keys (and CSRs) per identity, reused round-robin.
    #[arg(long, default_value_t = 4)]
    pub keys_per_identity: usize,
    /// TCP/TLS connections (HTTP/2 multiplexes the requests over them).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stop after this many requests…
    #[arg(long)]
    pub requests: Option<u64>,
    /// …or after this long (default 10 s when neither is given).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: start requests at this many per second in total, whatever the answers'
    /// pace. Latency then counts from each request's scheduled start, so a server that falls
    /// behind cannot hide its queue (no coordinated omission); `--concurrency` caps how many
    /// are in flight.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requested certificate lifetime, seconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub ttl_secs: i64,
    /// The server's PID, to report its CPU seconds per issuance.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How long one request keeps being resent while the server sheds it with
    /// RESOURCE_EXHAUSTED before it counts as failed. A deadline rather than a count: under a
    /// storm a call's turn depends on how long the queue is, not on how often it knocked.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub shed_retry_for: Duration,
    /// Instead of a load: get one certificate with these credentials (the first identity)
    /// and write `key.pem` (0600), `cert-chain.pem` and `root-cert.pem` into DIR, as
    /// istio-agent's `OUTPUT_CERTS` does; e.g. the workload certificate `--client-cert` needs.
    #[arg(long, value_name = "DIR", conflicts_with = "cfssl")]
    pub write_credential: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub requests: u64,
    pub ok: u64,
    /// gRPC code name (or `invalid_response`) → count.
    pub errors: BTreeMap<String, u64>,
    /// Attempts the server shed with RESOURCE_EXHAUSTED and the client sent again.
    pub shed_retries: u64,
    pub seconds: f64,
    pub throughput_per_sec: f64,
    pub latency_ms: Percentiles,
    /// Server CPU (user + system) per successful issuance, when `--server-pid` was given.
    pub server_cpu_ms_per_issuance: Option<f64>,
    /// This load generator's own CPU per successful call: on a shared machine, what the
    /// measurement itself takes from the server.
    pub client_cpu_ms_per_request: Option<f64>,
    /// Bytes the server caused to be written to storage per successful issuance (its
    /// `write_bytes` in /proc, KiB), when `--server-pid` was given: what a disk's throughput
    /// limit must allow. A separate database server's writes are not in it.
    pub server_disk_kib_per_issuance: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// One prepared request: key and CSR, token and the identity the answer must name.
struct Prepared {
    request: KeyAndCsr,
    authorization: Option<String>,
    spiffe_id: String,
}

impl Prepared {
    /// CreateCertificate as istio-agent sends it: the CSR, the token as `authorization`, the
    /// cluster as `clusterid`.
    fn grpc_request(
        &self,
        ttl_secs: i64,
        cluster_id: Option<&MetadataValue<Ascii>>,
    ) -> tonic::Request<IstioCertificateRequest> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: self.request.csr_pem.clone(),
            validity_duration: ttl_secs,
            metadata: None,
        });
        if let Some(value) = self.authorization.as_ref().and_then(|a| a.parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(value) = cluster_id {
            request.metadata_mut().insert("clusterid", value.clone());
        }
        request
    }
}

fn read(path: &PathBuf) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.clone(),
        source,
    })
}

fn key_type(name: &str) -> Result<KeyType, BenchError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| BenchError::Setup(format!("unknown key type {name:?}")))
}

fn mint(
    key_pem: &str,
    kid: Option<&str>,
    issuer: &str,
    audience: &str,
    namespace: &str,
    service_account: &str,
) -> Result<String, BenchError> {
    let (algorithm, key) =
        if let Ok(key) = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()) {
            (jsonwebtoken::Algorithm::ES256, key)
        } else {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes())
                .map_err(|e| BenchError::Setup(format!("--jwt-key: {e}")))?;
            (jsonwebtoken::Algorithm::RS256, key)
        };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": issuer,
        "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    });
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| BenchError::Setup(e.to_string()))
}

fn prepare(args: &BenchArgs) -> Result<Vec<Prepared>, BenchError> {
    let key_type = key_type(&args.key_type)?;
    if let Some(path) = &args.client_cert {
        let pem_text = read(path)?;
        let leaf = pem::parse(&pem_text)
            .ok()
            .and_then(|p| x509_cert::Certificate::from_der(p.contents()).ok())
            .ok_or_else(|| BenchError::Setup(format!("{}: no certificate", path.display())))?;
        let spiffe_id = uri_sans(&leaf)
            .into_iter()
            .find(|u| u.starts_with("spiffe://"))
            .ok_or_else(|| BenchError::Setup(format!("{}: no SPIFFE id", path.display())))?;
        return (0..args.keys_per_identity.max(1))
            .map(|_| {
                let request = KeyAndCsr::generate(key_type, &spiffe_id)
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                Ok(Prepared {
                    request,
                    authorization: None,
                    spiffe_id: spiffe_id.clone(),
                })
            })
            .collect();
    }
    let identities: Vec<(String, String)> = if args.jwt_key.is_some() {
        (0..args.identities.max(1))
            .map(|i| (format!("ns-{i}"), format!("sa-{i}")))
            .collect()
    } else {
        vec![(args.namespace.clone(), args.service_account.clone())]
    };
    let fixed_token = args
        .token_file
        .as_ref()
        .map(read)
        .transpose()?
        .map(|t| t.trim().to_string());
    let jwt_key = args.jwt_key.as_ref().map(read).transpose()?;
    let mut prepared = Vec::new();
    for (namespace, service_account) in identities {
        let spiffe_id = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            args.trust_domain
        );
        let token = match (&fixed_token, &jwt_key) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(key)) => Some(mint(
                key,
                args.jwt_kid.as_deref(),
                args.jwt_issuer.as_deref().unwrap_or_default(),
                &args.jwt_audience,
                &namespace,
                &service_account,
            )?),
            (None, None) => None,
        };
        for _ in 0..args.keys_per_identity.max(1) {
            let request = KeyAndCsr::generate(key_type, &spiffe_id)
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            prepared.push(Prepared {
                request,
                authorization: token.as_ref().map(|t| format!("Bearer {t}")),
                spiffe_id: spiffe_id.clone(),
            });
        }
    }
    Ok(prepared)
}

async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, BenchError> {
    let roots = read(
        args.ca_cert
            .as_ref()
            .ok_or_else(|| BenchError::Setup("--ca-cert is needed to load meshca".into()))?,
    )?;
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
        _ => None,
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&roots))
            .domain_name(args.server_name.clone());
        if let Some(identity) = &identity {
            tls = tls.identity(identity.clone());
        }
        let channel = Endpoint::from_shared(format!("https://{}", args.addr))
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .connect()
            .await
            .map_err(|e| BenchError::Setup(format!("connecting to {}: {e}", args.addr)))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What one attempt came to.
enum Attempt {
    Answered {
        valid: bool,
    },
    /// RESOURCE_EXHAUSTED: nothing was done; the caller may send it again.
    Shed,
    /// gRPC code name (or `http_<status>`, `transport`).
    Failed(String),
}

/// One request in flight at a time, to meshca over a shared HTTP/2 channel or to cfssl over
/// its own HTTP/1.1 connection.
enum Caller {
    Grpc {
        client: IstioCertificateServiceClient<Channel>,
        cluster_id: Option<MetadataValue<Ascii>>,
        ttl: i64,
    },
    Cfssl {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        host: String,
    },
}

impl Caller {
    async fn cfssl(addr: &str) -> Result<Self, BenchError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::Setup(format!("connecting to cfssl at {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| BenchError::Setup(format!("cfssl at {addr}: {e}")))?;
        tokio::spawn(connection);
        Ok(Caller::Cfssl {
            sender,
            host: addr.to_string(),
        })
    }

    async fn call(&mut self, item: &Prepared) -> Attempt {
        match self {
            Caller::Grpc {
                client,
                cluster_id,
                ttl,
            } => {
                let request = item.grpc_request(*ttl, cluster_id.as_ref());
                match client.create_certificate(request).await {
                    Ok(response) => Attempt::Answered {
                        valid: answer_is_valid(&response.into_inner().cert_chain, &item.spiffe_id),
                    },
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => Attempt::Shed,
                    Err(status) => Attempt::Failed(code_name(status.code())),
                }
            }
            Caller::Cfssl { sender, host } => {
                let body =
                    serde_json::json!({ "certificate_request": item.request.csr_pem }).to_string();
                let request = hyper::Request::post("/api/v1/cfssl/sign")
                    .header(hyper::header::HOST, host.as_str())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(request) = request else {
                    return Attempt::Failed("invalid_request".into());
                };
                if sender.ready().await.is_err() {
                    return Attempt::Failed("transport".into());
                }
                let response = match sender.send_request(request).await {
                    Ok(response) => response,
                    Err(_) => return Attempt::Failed("transport".into()),
                };
                let status = response.status();
                let Ok(body) = response.into_body().collect().await else {
                    return Attempt::Failed("transport".into());
                };
                if !status.is_success() {
                    return Attempt::Failed(format!("http_{}", status.as_u16()));
                }
                Attempt::Answered {
                    valid: cfssl_answer_is_valid(&body.to_bytes()),
                }
            }
        }
    }
}

/// cfssl answers `{"success": true, "result": {"certificate": "<PEM>"}}`; the certificate
/// must parse (its SANs are cfssl's business: it drops URI SANs).
fn cfssl_answer_is_valid(body: &[u8]) -> bool {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let pem_text = answer["result"]["certificate"].as_str().unwrap_or_default();
    answer["success"] == true
        && pem::parse(pem_text)
            .ok()
            .is_some_and(|p| x509_cert::Certificate::from_der(p.contents()).is_ok())
}

/// Whether an answer is a chain whose leaf names `spiffe_id`.
fn answer_is_valid(chain: &[String], spiffe_id: &str) -> bool {
    let Some(leaf) = chain.first().and_then(|p| pem::parse(p).ok()) else {
        return false;
    };
    let Ok(cert) = x509_cert::Certificate::from_der(leaf.contents()) else {
        return false;
    };
    let uris = uri_sans(&cert);
    chain.len() >= 2 && uris == [spiffe_id]
}

/// `InvalidArgument` → `invalid_argument`, as gRPC spells codes.
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// CPU seconds (user + system) of a process so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// Bytes a process has caused to be written to storage so far (`write_bytes` in /proc).
pub fn process_disk_write_bytes(pid: u32) -> Option<u64> {
    write_bytes(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

/// `write_bytes` from the text of a `/proc/<pid>/io` file.
fn write_bytes(proc_io: &str) -> Option<u64> {
    proc_io
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at =
        |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// `--write-credential`: one checked certificate, written out; returns its SPIFFE id.
pub async fn write_credential(
    args: &BenchArgs,
    dir: &std::path::Path,
) -> Result<String, BenchError> {
    let first = prepare(&BenchArgs {
        identities: 1,
        keys_per_identity: 1,
        ..args.clone()
    })?
    .into_iter()
    .next()
    .ok_or_else(|| BenchError::Setup("no identity to request a certificate for".into()))?;
    let channel = connect(&BenchArgs {
        connections: 1,
        ..args.clone()
    })
    .await?
    .remove(0);
    let request = first.grpc_request(args.ttl_secs, args.cluster_id.parse().ok().as_ref());
    let response = IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map_err(|status| {
            BenchError::Setup(format!(
                "CreateCertificate: {:?}: {}",
                status.code(),
                status.message()
            ))
        })?
        .into_inner();
    let credential = first
        .request
        .accept(&first.spiffe_id, &response.cert_chain, SystemTime::now())
        .map_err(|e| BenchError::Setup(format!("the answer does not hold: {e}")))?;
    crate::output::write_credentials(
        dir,
        &credential.key_pem,
        &credential.chain_pem.concat(),
        &credential.roots_pem.concat(),
    )
    .map_err(|source| BenchError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(credential.spiffe_id)
}

/// How long a client waits before resending a call the server shed: 5 ms doubling to 2 s,
/// scaled by `jitter` ∈ [0, 1) into [½, 1½) of that, so shed callers come back spread out
/// rather than as the next burst.
pub fn shed_retry_delay(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(5).saturating_mul(1u32 << attempt.min(16));
    base.min(Duration::from_secs(2))
        .mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// When the `n`th call of an open loop at `rate` per second is due.
pub fn scheduled_start(started: Instant, rate: f64, n: u64) -> Instant {
    started + Duration::from_secs_f64(n as f64 / rate)
}

/// The open loop's clock: a thread of its own hands out `(n, scheduled start)` as each call
/// falls due, until `limit` calls or `deadline`. Not Tokio's timer: its 1 ms wheel would start
/// each call up to a millisecond late, and since latency counts from the scheduled start that
/// slack would be charged to the server. A thread sleep wakes within tens of microseconds.
/// Calls that find every worker busy wait in the channel with their start time already set,
/// so a server that falls behind still shows its queue.
fn pace(
    started: Instant,
    rate: f64,
    limit: Option<u64>,
    deadline: Option<Instant>,
) -> tokio::sync::mpsc::Receiver<(u64, Instant)> {
    let (due, schedule) = tokio::sync::mpsc::channel(1 << 16);
    std::thread::spawn(move || {
        for n in 0.. {
            let at = scheduled_start(started, rate, n);
            if limit.is_some_and(|l| n >= l) || deadline.is_some_and(|d| at >= d) {
                break;
            }
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if due.blocking_send((n, at)).is_err() {
                break;
            }
        }
    });
    schedule
}

/// Runs the load and measures it.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let prepared = Arc::new(prepare(args)?);
    let limit = args.requests;
    let deadline = match (limit, args.duration) {
        (_, Some(d)) => Some(Instant::now() + d),
        (None, None) => Some(Instant::now() + Duration::from_secs(10)),
        (Some(_), None) => None,
    };
    let channels = match &args.cfssl {
        Some(_) => Vec::new(),
        None => connect(args).await?,
    };
    let mut callers = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        callers.push(match &args.cfssl {
            Some(addr) => Caller::cfssl(addr).await?,
            None => Caller::Grpc {
                client: IstioCertificateServiceClient::new(
                    channels[worker % channels.len()].clone(),
                ),
                cluster_id: args.cluster_id.parse().ok(),
                ttl: args.ttl_secs,
            },
        });
    }
    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let disk_before = args.server_pid.and_then(process_disk_write_bytes);
    let own_cpu_before = process_cpu_seconds(std::process::id());
    let started = Instant::now();
    let schedule = args.rate.filter(|r| *r > 0.0).map(|rate| {
        Arc::new(tokio::sync::Mutex::new(pace(
            started, rate, limit, deadline,
        )))
    });
    let mut workers = Vec::new();
    for mut caller in callers {
        let prepared = prepared.clone();
        let issued = issued.clone();
        let shed_retry_for = args.shed_retry_for;
        let schedule = schedule.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut shed_retries = 0u64;
            loop {
                let (n, sent) = match &schedule {
                    Some(schedule) => match schedule.lock().await.recv().await {
                        Some(start) => start,
                        None => break,
                    },
                    None => {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if limit.is_some_and(|l| n >= l)
                            || deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            break;
                        }
                        (n, Instant::now())
                    }
                };
                let item = &prepared[n as usize % prepared.len()];
                let mut attempt = 0u32;
                // Latency is the caller's: from the first send to the answer, retries included.
                let outcome = loop {
                    match caller.call(item).await {
                        Attempt::Shed if sent.elapsed() < shed_retry_for => {
                            shed_retries += 1;
                            tokio::time::sleep(shed_retry_delay(
                                attempt,
                                crate::timing::random_unit(),
                            ))
                            .await;
                            attempt = attempt.saturating_add(1);
                        }
                        other => break other,
                    }
                };
                match outcome {
                    Attempt::Answered { valid } => {
                        latencies.push(sent.elapsed());
                        if !valid {
                            *errors.entry("invalid_response".into()).or_default() += 1;
                        }
                    }
                    Attempt::Shed => {
                        *errors
                            .entry(code_name(tonic::Code::ResourceExhausted))
                            .or_default() += 1;
                    }
                    Attempt::Failed(code) => *errors.entry(code).or_default() += 1,
                }
            }
            (latencies, errors, shed_retries)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut shed_retries = 0;
    for worker in workers {
        let (l, e, r) = worker
            .await
            .map_err(|e| BenchError::Setup(format!("worker failed: {e}")))?;
        latencies.extend(l);
        shed_retries += r;
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(process_cpu_seconds);
    let disk_after = args.server_pid.and_then(process_disk_write_bytes);
    let own_cpu_after = process_cpu_seconds(std::process::id());
    let failed: u64 = errors.values().sum();
    let answered = latencies.len() as u64;
    let ok = answered.saturating_sub(errors.get("invalid_response").copied().unwrap_or(0));
    let requests = answered + failed - errors.get("invalid_response").copied().unwrap_or(0);
    Ok(BenchReport {
        requests,
        ok,
        errors,
        shed_retries,
        seconds,
        throughput_per_sec: ok as f64 / seconds,
        latency_ms: percentiles(latencies),
        server_cpu_ms_per_issuance: match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if ok > 0 => Some((after - before) * 1e3 / ok as f64),
            _ => None,
        },
        client_cpu_ms_per_request: match (own_cpu_before, own_cpu_after) {
            (Some(before), Some(after)) if ok > 0 => Some((after - before) * 1e3 / ok as f64),
            _ => None,
        },
        server_disk_kib_per_issuance: match (disk_before, disk_after) {
            (Some(before), Some(after)) if ok > 0 => {
                Some(after.saturating_sub(before) as f64 / 1024.0 / ok as f64)
            }
            _ => None,
        },
    })
}

impl BenchReport {
    /// A few lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} requests in {:.2} s: {} ok ({:.0}/s)\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n",
            self.requests,
            self.seconds,
            self.ok,
            self.throughput_per_sec,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
        );
        if self.shed_retries > 0 {
            out.push_str(&format!(
                "shed with RESOURCE_EXHAUSTED and retried: {}\n",
                self.shed_retries
            ));
        }
        if let Some(cpu) = self.server_cpu_ms_per_issuance {
            out.push_str(&format!("server CPU per issuance: {cpu:.3} ms\n"));
        }
        if let Some(disk) = self.server_disk_kib_per_issuance {
            out.push_str(&format!("server disk writes per issuance: {disk:.1} KiB\n"));
        }
        if let Some(cpu) = self.client_cpu_ms_per_request {
            out.push_str(&format!("load generator CPU per call: {cpu:.3} ms\n"));
        }
        for (code, n) in &self.errors {
            out.push_str(&format!("errors {code}: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_beginning_with_a_hyphen_is_a_value_not_a_flag() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "bench",
            "--ca-cert",
            "root.pem",
            "--jwt-key",
            "key.pem",
            "--jwt-issuer",
            "https://issuer",
            "--jwt-kid",
            "-8Qx_Yz",
            "--requests",
            "10",
        ])
        .unwrap();
        assert_eq!(cli.bench.jwt_kid.as_deref(), Some("-8Qx_Yz"));
        assert_eq!(cli.bench.requests, Some(10));
    }

    #[test]
    fn open_loop_calls_are_spaced_by_the_rate() {
        let started = Instant::now();
        assert_eq!(scheduled_start(started, 1000.0, 0), started);
        assert_eq!(
            scheduled_start(started, 1000.0, 250),
            started + Duration::from_millis(250)
        );
        assert_eq!(
            scheduled_start(started, 4.0, 3),
            started + Duration::from_millis(750)
        );
    }

    #[tokio::test]
    async fn the_pacer_hands_out_each_call_once_in_order_and_never_early() {
        let started = Instant::now();
        let mut schedule = pace(started, 2000.0, Some(40), None);
        let mut seen = Vec::new();
        while let Some((n, at)) = schedule.recv().await {
            assert_eq!(at, scheduled_start(started, 2000.0, n));
            assert!(
                Instant::now() >= at,
                "call {n} was handed out before it was due"
            );
            seen.push(n);
        }
        assert_eq!(seen, (0..40).collect::<Vec<_>>());

        // A deadline ends it too: nothing due at or after it is handed out.
        let started = Instant::now();
        let deadline = started + Duration::from_micros(30_500);
        let mut schedule = pace(started, 1000.0, None, Some(deadline));
        let mut count = 0;
        while let Some((_, at)) = schedule.recv().await {
            assert!(at < deadline);
            count += 1;
        }
        assert_eq!(count, 31, "calls due at 0, 1, …, 30 ms");
    }

    #[test]
    fn shed_retries_back_off_to_a_cap_with_jitter() {
        assert_eq!(shed_retry_delay(0, 0.5), Duration::from_millis(5));
        assert_eq!(shed_retry_delay(2, 0.5), Duration::from_millis(20));
        assert_eq!(shed_retry_delay(20, 0.5), Duration::from_secs(2));
        assert_eq!(shed_retry_delay(0, 0.0), Duration::from_micros(2500));
        assert_eq!(
            shed_retry_delay(20, 0.999),
            Duration::from_secs(2).mul_f64(1.499)
        );
        assert_eq!(shed_retry_delay(u32::MAX, 5.0), Duration::from_secs(3));
    }

    #[test]
    fn cfssl_answers_must_carry_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = serde_json::json!({"success": true, "result": {"certificate": cert.pem()}});
        assert!(cfssl_answer_is_valid(good.to_string().as_bytes()));
        let failed = serde_json::json!({"success": false, "result": {"certificate": cert.pem()}});
        assert!(!cfssl_answer_is_valid(failed.to_string().as_bytes()));
        let garbage = serde_json::json!({"success": true, "result": {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}});
        assert!(!cfssl_answer_is_valid(garbage.to_string().as_bytes()));
        assert!(!cfssl_answer_is_valid(b"<html>"));
    }

    #[test]
    fn percentiles_of_a_known_sample() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(samples);
        assert_eq!(
            (p.p50.round(), p.p90.round(), p.p99.round(), p.max),
            (51.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(percentiles(Vec::new()).max, 0.0);
    }

    #[test]
    fn code_names_are_grpc_spelling() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "invalid_argument");
        assert_eq!(code_name(tonic::Code::Unavailable), "unavailable");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "resource_exhausted"
        );
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert!(process_cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn disk_writes_come_from_write_bytes() {
        let io = "rchar: 4096\nwchar: 123456\nsyscr: 9\nsyscw: 30\nread_bytes: 0\n\
                  write_bytes: 81920\ncancelled_write_bytes: 4096\n";
        assert_eq!(write_bytes(io), Some(81920));
        assert_eq!(write_bytes("rchar: 1\n"), None);
        assert!(process_disk_write_bytes(std::process::id()).is_some());
        assert!(process_disk_write_bytes(u32::MAX).is_none());
    }

    #[test]
    fn answers_must_name_the_identity() {
        assert!(!answer_is_valid(&[], "spiffe://td/ns/a/sa/b"));
        assert!(!answer_is_valid(
            &["not pem".into(), "x".into()],
            "spiffe://td/ns/a/sa/b"
        ));
    }
}
