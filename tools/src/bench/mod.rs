//! `meshca bench`: a CreateCertificate load generator acting like many istio-agents. Keys,
//! CSRs and tokens are prepared before the clock starts (client crypto is not what is being
//! measured); every answer is checked (the chain parses, the leaf names the expected SPIFFE
//! id); the report has throughput, latency percentiles, errors by gRPC code and, given the
//! server's PID, its CPU seconds per issuance read from /proc.

mod answer;
mod args;
mod call;
mod cfssl;
mod error;
mod histogram;
mod http1;
mod pacing;
mod procfs;
mod report;
mod setup;
mod stepca;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;

pub use args::BenchArgs;
pub use error::BenchError;
pub use report::{BenchReport, Percentiles};

use call::{code_name, Attempt, Caller, PeerCa};
use histogram::LatencyHistogram;
use http1::{JsonConnection, PeerEndpoint};
use pacing::{pace, shed_retry_delay};
use procfs::{process_cpu_seconds, process_disk_write_bytes};
use setup::{connect, prepare};

/// Runs the load and measures it.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let prepared = Arc::new(prepare(args)?);
    let limit = args.requests;
    let deadline = match (limit, args.duration) {
        (_, Some(d)) => Some(Instant::now() + d),
        (None, None) => Some(Instant::now() + Duration::from_secs(10)),
        (Some(_), None) => None,
    };
    // A peer CA: how to reach it, and which API it speaks.
    let peer: Option<(PeerEndpoint, PeerCa)> = match (&args.cfssl, &args.step_ca) {
        (Some(addr), _) => Some((PeerEndpoint::plain(addr), PeerCa::Cfssl)),
        (None, Some(addr)) => {
            let roots = args.ca_cert.as_ref().map(setup::read).transpose()?;
            let roots =
                roots.ok_or_else(|| BenchError::Setup("--step-ca needs --ca-cert".into()))?;
            let endpoint = PeerEndpoint::tls(addr, &roots, &args.server_name)?;
            Some((endpoint, PeerCa::StepCa))
        }
        (None, None) => None,
    };
    let channels = match &peer {
        Some(_) => Vec::new(),
        None => connect(args).await?,
    };
    let mut callers = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        callers.push(match &peer {
            Some((endpoint, ca)) => Caller::Peer {
                ca: *ca,
                connection: JsonConnection::connect(endpoint).await?,
            },
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
            let mut latencies = LatencyHistogram::default();
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
                                meshca_pki::time::random_unit(),
                            ))
                            .await;
                            attempt = attempt.saturating_add(1);
                        }
                        other => break other,
                    }
                };
                match outcome {
                    Attempt::Answered { valid } => {
                        latencies.record(sent.elapsed());
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
                    Attempt::OutOfTokens => {
                        *errors.entry("tokens_exhausted".into()).or_default() += 1;
                        break;
                    }
                }
            }
            (latencies, errors, shed_retries)
        }));
    }
    let mut latencies = LatencyHistogram::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut shed_retries = 0;
    for worker in workers {
        let (l, e, r) = worker
            .await
            .map_err(|e| BenchError::Setup(format!("worker failed: {e}")))?;
        latencies.merge(&l);
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
    let answered = latencies.count();
    let ok = answered.saturating_sub(errors.get("invalid_response").copied().unwrap_or(0));
    let requests = answered + failed - errors.get("invalid_response").copied().unwrap_or(0);
    Ok(BenchReport {
        requests,
        ok,
        errors,
        shed_retries,
        seconds,
        throughput_per_sec: ok as f64 / seconds,
        latency_ms: latencies.percentiles(),
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
    meshca_agent::output::write_credentials(
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
