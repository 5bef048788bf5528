//! Envoy's Secret Discovery Service (v3, state of the world) on a Unix socket, as istio-agent
//! serves it: `default` (the workload certificate and key), `ROOTCA` (the trust bundle), and
//! `file-cert:<cert>~<key>` / `file-root:<ca>` for certificates mounted as files.
//!
//! Per stream the server follows the xDS rules Envoy relies on: the node comes with the first
//! request; an ACK (our last nonce, no error) and a NACK (our last nonce with `error_detail`)
//! get no response; a request carrying an older nonce is stale and ignored; a change is pushed
//! only to streams subscribed to the changed resource, with a new `version_info` and `nonce`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use der::Decode;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::credential::Credential;
use crate::metrics::{AgentMetrics, StreamKind};
use crate::workload_api::serve_unix;

/// The only resource type this server answers for.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Istio's name for the workload certificate and key.
pub const WORKLOAD_CERT: &str = "default";
/// Istio's name for the trust bundle.
pub const ROOT_CA: &str = "ROOTCA";
const FILE_CERT_PREFIX: &str = "file-cert:";
const FILE_ROOT_PREFIX: &str = "file-root:";

/// How often mounted certificate files are re-read. Polling (rather than inotify) also sees a
/// Kubernetes Secret volume's `..data` symlink swap, and a few small reads a second cost nothing.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A resource name Envoy may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceName {
    WorkloadCert,
    RootCa,
    File(FileResource),
}

/// A secret read from files the workload mounts (istio-agent's `file-cert:` / `file-root:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileResource {
    Cert { cert: PathBuf, key: PathBuf },
    Root { ca: PathBuf },
}

/// One secret, encoded once and shared by every stream that serves it.
#[derive(Debug, PartialEq)]
pub struct RenderedSecret {
    name: String,
    encoded: Vec<u8>,
    /// When the certificate (or, for a bundle, the first root) expires; exported as a metric.
    pub not_after: Option<SystemTime>,
}

/// `default` and `ROOTCA`, rendered from one credential.
#[derive(Debug)]
pub struct CredentialSecrets {
    workload_cert: Arc<RenderedSecret>,
    root_ca: Arc<RenderedSecret>,
}

// === impl ResourceName ===

impl ResourceName {
    /// `None` for a name this server does not know.
    pub fn parse(name: &str) -> Option<Self> {
        if name == WORKLOAD_CERT {
            return Some(Self::WorkloadCert);
        }
        if name == ROOT_CA {
            return Some(Self::RootCa);
        }
        if let Some(paths) = name.strip_prefix(FILE_CERT_PREFIX) {
            let (cert, key) = paths.split_once('~')?;
            if cert.is_empty() || key.is_empty() {
                return None;
            }
            return Some(Self::File(FileResource::Cert {
                cert: cert.into(),
                key: key.into(),
            }));
        }
        let ca = name.strip_prefix(FILE_ROOT_PREFIX)?;
        (!ca.is_empty()).then(|| Self::File(FileResource::Root { ca: ca.into() }))
    }
}

// === impl RenderedSecret ===

impl RenderedSecret {
    fn new(name: &str, kind: secret::Type, not_after: Option<SystemTime>) -> Self {
        let secret = Secret {
            name: name.to_string(),
            r#type: Some(kind),
        };
        Self {
            name: name.to_string(),
            encoded: secret.encode_to_vec(),
            not_after,
        }
    }

    fn tls_certificate(name: &str, chain_pem: &[u8], key_pem: &[u8]) -> Self {
        let kind = secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        });
        Self::new(name, kind, first_not_after(chain_pem))
    }

    fn validation_context(name: &str, roots_pem: &[u8]) -> Self {
        let kind = secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(roots_pem)),
            ..Default::default()
        });
        Self::new(name, kind, first_not_after(roots_pem))
    }

    fn to_any(&self) -> Any {
        Any {
            type_url: SECRET_TYPE_URL.to_string(),
            value: self.encoded.clone(),
        }
    }
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

fn certificates(pem_bytes: &[u8]) -> Vec<x509_cert::Certificate> {
    pem::parse_many(pem_bytes)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .filter_map(|p| x509_cert::Certificate::from_der(p.contents()).ok())
        .collect()
}

fn first_not_after(pem_bytes: &[u8]) -> Option<SystemTime> {
    certificates(pem_bytes)
        .first()
        .map(|c| c.tbs_certificate.validity.not_after.to_system_time())
}

// === impl CredentialSecrets ===

impl CredentialSecrets {
    pub fn render(credential: &Credential) -> Self {
        Self {
            workload_cert: Arc::new(RenderedSecret::tls_certificate(
                WORKLOAD_CERT,
                credential.chain_pem.concat().as_bytes(),
                credential.key_pem.as_bytes(),
            )),
            root_ca: Arc::new(RenderedSecret::validation_context(
                ROOT_CA,
                credential.roots_pem.concat().as_bytes(),
            )),
        }
    }
}

/// Renders each published credential once, however many streams serve it.
pub fn render_credentials(
    mut credential: watch::Receiver<Option<Arc<Credential>>>,
) -> watch::Receiver<Option<Arc<CredentialSecrets>>> {
    let initial = credential
        .borrow_and_update()
        .as_deref()
        .map(|c| Arc::new(CredentialSecrets::render(c)));
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = credential.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let rendered = credential
                .borrow_and_update()
                .as_deref()
                .map(|c| Arc::new(CredentialSecrets::render(c)));
            tx.send_replace(rendered);
        }
    });
    rx
}

/// Secrets read from mounted files, loaded while at least one stream subscribes to them.
#[derive(Debug)]
struct FileSecrets {
    entries: Mutex<HashMap<FileResource, FileEntry>>,
    /// Bumped whenever a file-backed secret changes, to wake the streams.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct FileEntry {
    name: String,
    subscribers: usize,
    /// `None` while the files are missing or do not hold what the name promises.
    secret: Option<Arc<RenderedSecret>>,
}

#[derive(Debug, thiserror::Error)]
enum FileSecretError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key")]
    NoPrivateKey(PathBuf),
}

fn read_file(path: &Path) -> Result<Vec<u8>, FileSecretError> {
    std::fs::read(path).map_err(|source| FileSecretError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads what a file resource names, refusing files that are not what they claim to be (so a
/// mistyped path never ships, say, a CA key as a certificate chain).
fn load_file_secret(
    name: &str,
    resource: &FileResource,
) -> Result<RenderedSecret, FileSecretError> {
    match resource {
        FileResource::Cert { cert, key } => {
            let chain = read_file(cert)?;
            if certificates(&chain).is_empty() {
                return Err(FileSecretError::NoCertificate(cert.clone()));
            }
            let key_pem = read_file(key)?;
            let has_key = pem::parse_many(&key_pem)
                .unwrap_or_default()
                .iter()
                .any(|p| p.tag().ends_with("PRIVATE KEY"));
            if !has_key {
                return Err(FileSecretError::NoPrivateKey(key.clone()));
            }
            Ok(RenderedSecret::tls_certificate(name, &chain, &key_pem))
        }
        FileResource::Root { ca } => {
            let roots = read_file(ca)?;
            if certificates(&roots).is_empty() {
                return Err(FileSecretError::NoCertificate(ca.clone()));
            }
            Ok(RenderedSecret::validation_context(name, &roots))
        }
    }
}

fn load_logged(name: &str, resource: &FileResource) -> Option<Arc<RenderedSecret>> {
    match load_file_secret(name, resource) {
        Ok(secret) => Some(Arc::new(secret)),
        Err(error) => {
            tracing::warn!(resource = name, %error, "file secret not served");
            None
        }
    }
}

// === impl FileSecrets ===

impl FileSecrets {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        })
    }

    fn subscribe(&self, name: &str, resource: &FileResource) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(resource) {
            entry.subscribers += 1;
            return;
        }
        let secret = load_logged(name, resource);
        entries.insert(
            resource.clone(),
            FileEntry {
                name: name.to_string(),
                subscribers: 1,
                secret,
            },
        );
    }

    fn unsubscribe(&self, resource: &FileResource) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(resource) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                entries.remove(resource);
            }
        }
    }

    fn get(&self, resource: &FileResource) -> Option<Arc<RenderedSecret>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(resource).and_then(|e| e.secret.clone())
    }

    fn expiries(&self) -> Vec<(String, SystemTime)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .filter_map(|e| Some((e.name.clone(), e.secret.as_ref()?.not_after?)))
            .collect()
    }

    /// Re-reads every subscribed file set; wakes the streams if any secret changed.
    fn poll(&self) {
        let names: Vec<(FileResource, String)> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .map(|(r, e)| (r.clone(), e.name.clone()))
                .collect()
        };
        let mut changed = false;
        for (resource, name) in names {
            // Read outside the lock: a slow filesystem must not stall the streams.
            let fresh = load_file_secret(&name, &resource).ok().map(Arc::new);
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = entries.get_mut(&resource) else {
                continue;
            };
            if entry.secret != fresh {
                match &fresh {
                    Some(_) => tracing::info!(resource = name, "file secret changed"),
                    None => tracing::warn!(
                        resource = name,
                        "file secret unreadable; Envoy keeps the last one it was sent"
                    ),
                }
                // An unreadable file keeps what Envoy already has rather than pushing nothing.
                if fresh.is_some() {
                    changed = true;
                }
                entry.secret = fresh;
            }
        }
        if changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }
}

/// The SDS service. Cheap to clone; every stream shares the rendered secrets.
#[derive(Clone, Debug)]
pub struct SdsService {
    credential: watch::Receiver<Option<Arc<CredentialSecrets>>>,
    files: Arc<FileSecrets>,
    metrics: Arc<AgentMetrics>,
}

/// One stream's view: what it subscribes to and what it was last sent.
struct StreamState {
    node: Option<String>,
    subscribed: BTreeSet<String>,
    /// Parsed names among `subscribed`; unknown names are logged once and never served.
    resources: HashMap<String, ResourceName>,
    /// What each resource looked like when last sent, so only changes are pushed.
    sent: HashMap<String, Arc<RenderedSecret>>,
    last_nonce: Option<String>,
    files: Arc<FileSecrets>,
}

/// What the stream does after a request.
#[derive(Debug, PartialEq, Eq)]
enum RequestOutcome {
    /// Subscriptions (possibly) changed: send what is new.
    Subscribe,
    /// ACK, NACK or a stale request: send nothing.
    Quiet,
}

// === impl StreamState ===

impl StreamState {
    fn new(files: Arc<FileSecrets>) -> Self {
        Self {
            node: None,
            subscribed: BTreeSet::new(),
            resources: HashMap::new(),
            sent: HashMap::new(),
            last_nonce: None,
            files,
        }
    }

    fn on_request(&mut self, request: DiscoveryRequest) -> Result<RequestOutcome, Status> {
        if !request.type_url.is_empty() && request.type_url != SECRET_TYPE_URL {
            return Err(Status::invalid_argument(format!(
                "this SDS server serves only {SECRET_TYPE_URL}, not {}",
                request.type_url
            )));
        }
        if self.node.is_none() {
            let node = request.node.as_ref().ok_or_else(|| {
                Status::invalid_argument("the first request on a stream must carry the node")
            })?;
            self.node = Some(node.id.clone());
            tracing::info!(node = %node.id, resources = ?request.resource_names, "SDS stream opened");
        }
        let node = self.node.as_deref().unwrap_or_default();
        if !request.response_nonce.is_empty() {
            if self.last_nonce.as_deref() != Some(request.response_nonce.as_str()) {
                tracing::debug!(node, nonce = %request.response_nonce, "stale SDS request ignored");
                return Ok(RequestOutcome::Quiet);
            }
            if let Some(error) = &request.error_detail {
                tracing::warn!(
                    node,
                    version = %request.version_info,
                    resources = ?request.resource_names,
                    code = error.code,
                    message = %error.message,
                    "Envoy rejected secrets (NACK)"
                );
                return Ok(RequestOutcome::Quiet);
            }
            let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
            if names == self.subscribed {
                tracing::debug!(node, version = %request.version_info, "SDS ACK");
                return Ok(RequestOutcome::Quiet);
            }
        }
        self.set_subscriptions(request.resource_names.into_iter().collect());
        Ok(RequestOutcome::Subscribe)
    }

    fn set_subscriptions(&mut self, names: BTreeSet<String>) {
        for gone in self.subscribed.difference(&names) {
            self.sent.remove(gone);
            if let Some(ResourceName::File(file)) = self.resources.remove(gone) {
                self.files.unsubscribe(&file);
            }
        }
        for added in names.difference(&self.subscribed) {
            match ResourceName::parse(added) {
                Some(resource) => {
                    if let ResourceName::File(file) = &resource {
                        self.files.subscribe(added, file);
                    }
                    self.resources.insert(added.clone(), resource);
                }
                None => tracing::warn!(
                    node = self.node.as_deref().unwrap_or_default(),
                    resource = %added,
                    "unknown SDS resource requested; it is not served"
                ),
            }
        }
        self.subscribed = names;
    }

    /// Subscribed secrets that exist and differ from what this stream was last sent.
    fn changed(&self, credential: Option<&CredentialSecrets>) -> Vec<Arc<RenderedSecret>> {
        let mut out = Vec::new();
        for name in &self.subscribed {
            let Some(resource) = self.resources.get(name) else {
                continue;
            };
            let current = match resource {
                ResourceName::WorkloadCert => credential.map(|c| c.workload_cert.clone()),
                ResourceName::RootCa => credential.map(|c| c.root_ca.clone()),
                ResourceName::File(file) => self.files.get(file),
            };
            if let Some(current) = current {
                if self.sent.get(name) != Some(&current) {
                    out.push(current);
                }
            }
        }
        out
    }

    fn respond(&mut self, secrets: Vec<Arc<RenderedSecret>>) -> DiscoveryResponse {
        let response = discovery_response(&secrets);
        for secret in secrets {
            self.sent.insert(secret.name.clone(), secret);
        }
        self.last_nonce = Some(response.nonce.clone());
        response
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        for resource in self.resources.values() {
            if let ResourceName::File(file) = resource {
                self.files.unsubscribe(file);
            }
        }
    }
}

/// A response with a version naming its content (equal versions mean equal secrets) and a
/// fresh nonce.
fn discovery_response(secrets: &[Arc<RenderedSecret>]) -> DiscoveryResponse {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for secret in secrets {
        digest.update(&secret.encoded);
    }
    let version = hex::encode(&digest.finish().as_ref()[..8]);
    let mut nonce = [0u8; 12];
    // The system RNG failing is not something a nonce can recover from; zeros stay unique
    // enough per stream only if it never happens, so log it.
    if aws_lc_rs::rand::fill(&mut nonce).is_err() {
        tracing::error!("system random generator failed");
    }
    DiscoveryResponse {
        version_info: version,
        resources: secrets.iter().map(|s| s.to_any()).collect(),
        type_url: SECRET_TYPE_URL.to_string(),
        nonce: hex::encode(nonce),
        ..Default::default()
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

// === impl SdsService ===

impl SdsService {
    /// Serves the credentials published on `credential`; starts polling mounted files.
    pub fn new(
        credential: watch::Receiver<Option<Arc<Credential>>>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        let files = FileSecrets::new();
        tokio::spawn(poll_files(Arc::downgrade(&files), FILE_POLL_INTERVAL));
        Self {
            credential: render_credentials(credential),
            files,
            metrics,
        }
    }

    /// Expiry of every served certificate resource, for `/metrics`.
    pub fn expiries(&self) -> Vec<(String, SystemTime)> {
        let mut out = Vec::new();
        if let Some(c) = self.credential.borrow().as_deref() {
            for secret in [&c.workload_cert, &c.root_ca] {
                if let Some(t) = secret.not_after {
                    out.push((secret.name.clone(), t));
                }
            }
        }
        out.extend(self.files.expiries());
        out
    }

    async fn run_stream(
        self,
        mut requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let _connected = self.metrics.stream_opened(StreamKind::Sds);
        let mut state = StreamState::new(self.files.clone());
        let mut credential = self.credential.clone();
        let mut files_changed = self.files.changed.subscribe();
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => match state.on_request(request) {
                        Ok(RequestOutcome::Quiet) => continue,
                        Ok(RequestOutcome::Subscribe) => {}
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "SDS stream closed by peer");
                        return;
                    }
                },
                changed = credential.changed() => if changed.is_err() { return },
                changed = files_changed.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let secrets = state.changed(credential.borrow_and_update().as_deref());
            files_changed.borrow_and_update();
            if secrets.is_empty() {
                continue;
            }
            let response = state.respond(secrets);
            tracing::debug!(
                node = state.node.as_deref().unwrap_or_default(),
                version = %response.version_info,
                "SDS push"
            );
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}

async fn poll_files(files: Weak<FileSecrets>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(files) = files.upgrade() else {
            return;
        };
        tokio::task::spawn_blocking(move || files.poll())
            .await
            .unwrap_or_default();
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().run_stream(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "meshca serves SDS as state of the world (StreamSecrets): use api_type GRPC, not DELTA_GRPC",
        ))
    }

    /// One-shot fetch: whatever of the named secrets exists now.
    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        let mut state = StreamState::new(self.files.clone());
        state.on_request(request)?;
        let secrets = state.changed(self.credential.borrow().as_deref());
        Ok(Response::new(state.respond(secrets)))
    }
}

/// Serves SDS on `socket` until `shutdown`; a stale socket file is replaced and the socket is
/// removed on exit.
pub async fn serve(
    service: SdsService,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_unix(
        tonic::service::Routes::new(SecretDiscoveryServiceServer::new(service)),
        socket,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resource_names() {
        assert_eq!(
            ResourceName::parse("default"),
            Some(ResourceName::WorkloadCert)
        );
        assert_eq!(ResourceName::parse("ROOTCA"), Some(ResourceName::RootCa));
        assert_eq!(
            ResourceName::parse("file-cert:/etc/certs/cert.pem~/etc/certs/key.pem"),
            Some(ResourceName::File(FileResource::Cert {
                cert: "/etc/certs/cert.pem".into(),
                key: "/etc/certs/key.pem".into()
            }))
        );
        assert_eq!(
            ResourceName::parse("file-root:/etc/certs/root.pem"),
            Some(ResourceName::File(FileResource::Root {
                ca: "/etc/certs/root.pem".into()
            }))
        );
        for unknown in [
            "",
            "rootca",
            "file-cert:/only-a-cert.pem",
            "file-cert:~/key.pem",
            "file-cert:/cert.pem~",
            "file-root:",
            "spiffe://cluster.local/ns/a/sa/b",
        ] {
            assert_eq!(ResourceName::parse(unknown), None, "{unknown:?}");
        }
    }
}
