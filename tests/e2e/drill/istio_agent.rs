//! Workload B's proxy, behaving as istio-agent: it verifies the RA with a root-cert file that
//! a "kubelet" copies from its namespace's `istio-ca-root-cert` ConfigMap, makes a key and CSR,
//! calls CreateCertificate with its service-account token, renews at half the lifetime, and
//! trusts the last element of each answer (the bundle), presenting the rest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::traffic::{clock, Credential, Current};
use crate::harness::{create_certificate, WorkloadKey};
use crate::peers::ApiServerState;

const KEPT_FAILURES: usize = 8;
/// How often the kubelet looks at the ConfigMap (it syncs within about a minute; the drill
/// keeps it short).
const KUBELET_SYNC: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(1);

/// Who B is and where it runs.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub spiffe_id: String,
    pub token: String,
    pub ra: SocketAddr,
    pub ttl: Duration,
    /// Where the root-cert file lives (the ConfigMap volume).
    pub dir: PathBuf,
}

/// The running agent and its record.
#[derive(Debug)]
pub struct IstioAgent {
    pub current: Current,
    root_file: PathBuf,
    record: Arc<Mutex<Record>>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Record {
    issued: u64,
    failed: u64,
    failures: Vec<String>,
    /// The bundle (last element) of the latest answer.
    last_bundle: Option<String>,
    /// Times the kubelet wrote a changed root-cert file.
    root_file_updates: u64,
}

// === impl IstioAgent ===

impl IstioAgent {
    pub fn start(pod: Pod, api: Arc<ApiServerState>) -> Self {
        std::fs::create_dir_all(&pod.dir).unwrap();
        let root_file = pod.dir.join("root-cert.pem");
        let (tx, current) = watch::channel(None);
        let record = Arc::new(Mutex::new(Record::default()));
        let tasks = vec![
            tokio::spawn(kubelet(
                api,
                pod.namespace.clone(),
                root_file.clone(),
                record.clone(),
            )),
            tokio::spawn(renew(pod, root_file.clone(), tx, record.clone())),
        ];
        Self {
            current,
            root_file,
            record,
            tasks,
        }
    }

    /// The root-cert file the kubelet keeps (what B verifies the RA with).
    pub fn root_file(&self) -> PathBuf {
        self.root_file.clone()
    }

    /// Certificates issued to B (the first one and every renewal).
    pub fn issued(&self) -> u64 {
        self.record.lock().unwrap().issued
    }

    pub fn failed(&self) -> u64 {
        self.record.lock().unwrap().failed
    }

    pub fn failures(&self) -> Vec<String> {
        self.record.lock().unwrap().failures.clone()
    }

    pub fn last_bundle(&self) -> Option<String> {
        self.record.lock().unwrap().last_bundle.clone()
    }

    pub fn root_file_updates(&self) -> u64 {
        self.record.lock().unwrap().root_file_updates
    }
}

impl Drop for IstioAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Copies `root-cert.pem` of the namespace's `istio-ca-root-cert` into `root_file` whenever it
/// changed, atomically (the kubelet swaps a ConfigMap volume's files in one rename).
async fn kubelet(
    api: Arc<ApiServerState>,
    namespace: String,
    root_file: PathBuf,
    record: Arc<Mutex<Record>>,
) {
    let mut written: Option<String> = None;
    loop {
        let published = api
            .cluster()
            .configmap(&namespace, "istio-ca-root-cert")
            .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_string));
        if let Some(pem) = published.filter(|pem| written.as_ref() != Some(pem)) {
            let staged = root_file.with_extension("pem.new");
            std::fs::write(&staged, &pem).unwrap();
            std::fs::rename(&staged, &root_file).unwrap();
            written = Some(pem);
            record.lock().unwrap().root_file_updates += 1;
        }
        tokio::time::sleep(KUBELET_SYNC).await;
    }
}

/// Gets a certificate, then renews at half its lifetime; a failure is counted and retried
/// after a second.
async fn renew(
    pod: Pod,
    root_file: PathBuf,
    tx: watch::Sender<Option<Arc<Credential>>>,
    record: Arc<Mutex<Record>>,
) {
    // Before the ConfigMap is mounted the pod does not start: waiting is not a failure.
    while !root_file.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        match fetch(&pod, &root_file).await {
            Ok((credential, bundle, lifetime)) => {
                {
                    let mut record = record.lock().unwrap();
                    record.issued += 1;
                    record.last_bundle = Some(bundle);
                }
                tx.send_replace(Some(Arc::new(credential)));
                tokio::time::sleep(lifetime / 2).await;
            }
            Err(e) => {
                {
                    let mut record = record.lock().unwrap();
                    record.failed += 1;
                    if record.failures.len() < KEPT_FAILURES {
                        record.failures.push(format!("{}: {e}", clock()));
                    }
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// One CreateCertificate over a fresh connection that trusts the root-cert file as it is now:
/// the credential, the bundle, and how long the certificate lives from now.
async fn fetch(
    pod: &Pod,
    root_file: &std::path::Path,
) -> Result<(Credential, String, Duration), String> {
    let roots = std::fs::read_to_string(root_file).map_err(|e| format!("root-cert file: {e}"))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&roots))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", pod.ra.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .map_err(|e| format!("tls config: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connecting to the RA: {}", error_chain(&e)))?;
    let mut client = IstioCertificateServiceClient::new(channel);
    let key = WorkloadKey::ec();
    let answer = create_certificate(
        &mut client,
        &key.csr(&[&pod.spiffe_id]),
        pod.ttl.as_secs() as i64,
        Some(&pod.token),
        None,
    )
    .await
    .map_err(|status| format!("CreateCertificate: {status}"))?;
    let Some((bundle, chain)) = answer.cert_chain.split_last() else {
        return Err("an empty answer".into());
    };
    if chain.is_empty() {
        return Err("an answer without a certificate before the bundle".into());
    }
    let credential = Credential::from_pem(&chain.concat(), &key.key_pem(), bundle)?;
    let lifetime = credential
        .leaf()
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Ok((credential, bundle.clone(), lifetime))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
