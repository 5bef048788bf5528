//! Envoy's Secret Discovery Service (v3, state of the world) on a Unix socket, as istio-agent
//! serves it: `default` (the workload certificate and key), `ROOTCA` (the trust bundle), and
//! `file-cert:<cert>~<key>` / `file-root:<ca>` for certificates mounted as files.
//!
//! Per stream the server follows the xDS rules Envoy relies on: the node comes with the first
//! request; an ACK (our last nonce, no error) and a NACK (our last nonce with `error_detail`)
//! get no response; a request carrying an older nonce is stale and ignored; a change is pushed
//! only to streams subscribed to the changed resource, with a new `version_info` and `nonce`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::credential::Credential;
use crate::metrics::{AgentMetrics, StreamGuard, StreamKind};
use crate::workload_api::serve_unix;
use crate::workloads::{Assigned, Workloads};

mod access;
mod files;
mod grpc;
mod secrets;

use access::{may_read, FileReader};
pub use files::FILE_POLL_INTERVAL;
use files::{poll_files, FileSecrets};
pub use secrets::{
    render_credentials, CredentialSecrets, FileResource, RenderedSecret, ResourceName, ROOT_CA,
    SECRET_TYPE_URL, WORKLOAD_CERT,
};

/// The SDS service. Cheap to clone; serving the agent's own identity, every stream shares its
/// rendered secrets.
#[derive(Clone, Debug)]
pub struct SdsService {
    source: SecretSource,
    files: Arc<FileSecrets>,
    metrics: Arc<AgentMetrics>,
}

/// Where a stream's `default` and `ROOTCA` come from.
#[derive(Clone, Debug)]
enum SecretSource {
    /// The agent's own credential, rendered once for every stream.
    Itself(watch::Receiver<Option<Arc<CredentialSecrets>>>),
    /// Each client's attested identity, rendered per stream.
    Attested(Workloads),
}

/// A stream's rendered credential and, for an attested client, its hold on the identity.
type StreamCredential = (
    watch::Receiver<Option<Arc<CredentialSecrets>>>,
    Option<Assigned>,
);

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
    /// An attested client: served only the files its own uid could read.
    reader: Option<FileReader>,
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
    fn new(files: Arc<FileSecrets>, reader: Option<FileReader>) -> Self {
        Self {
            node: None,
            subscribed: BTreeSet::new(),
            resources: HashMap::new(),
            sent: HashMap::new(),
            last_nonce: None,
            files,
            reader,
        }
    }

    /// Whether this stream's client may be served `file` (always, without attestation).
    fn may_read(&self, file: &FileResource) -> bool {
        let Some(reader) = self.reader else {
            return true;
        };
        match file {
            FileResource::Cert { cert, key } => may_read(reader, cert) && may_read(reader, key),
            FileResource::Root { ca } => may_read(reader, ca),
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
                Some(ResourceName::File(file)) if !self.may_read(&file) => tracing::warn!(
                    node = self.node.as_deref().unwrap_or_default(),
                    resource = %added,
                    reader = ?self.reader,
                    "the client's uid cannot read these files; they are not served to it"
                ),
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

/// One `StreamSecrets` stream: its requests, what it is served and what it was sent.
struct StreamDriver {
    requests: Streaming<DiscoveryRequest>,
    credential: watch::Receiver<Option<Arc<CredentialSecrets>>>,
    files_changed: watch::Receiver<u64>,
    state: StreamState,
    /// An attested client's identity, held while the stream lives.
    _held: Option<Assigned>,
    _connected: StreamGuard,
}

/// What a stream does next.
enum Next {
    Send(DiscoveryResponse),
    /// End the stream with this status.
    Refuse(Status),
    End,
}

// === impl StreamDriver ===

impl StreamDriver {
    /// Waits for a request or a change that calls for a response.
    async fn next(&mut self) -> Next {
        loop {
            tokio::select! {
                request = self.requests.message() => match request {
                    Ok(Some(request)) => match self.state.on_request(request) {
                        Ok(RequestOutcome::Quiet) => continue,
                        Ok(RequestOutcome::Subscribe) => {}
                        Err(status) => return Next::Refuse(status),
                    },
                    Ok(None) => return Next::End,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "SDS stream closed by peer");
                        return Next::End;
                    }
                },
                changed = self.credential.changed() => if changed.is_err() { return Next::End },
                changed = self.files_changed.changed() => if changed.is_err() { return Next::End },
            }
            let secrets = self
                .state
                .changed(self.credential.borrow_and_update().as_deref());
            self.files_changed.borrow_and_update();
            if secrets.is_empty() {
                continue;
            }
            let response = self.state.respond(secrets);
            tracing::debug!(
                node = self.state.node.as_deref().unwrap_or_default(),
                version = %response.version_info,
                "SDS push"
            );
            return Next::Send(response);
        }
    }
}

/// The stream state machine alone, for the fuzz target: `requests` in order on one stream
/// with `credential` published (each flagged `true` answers the last response's nonce, as an
/// ACK or NACK does). Returns how many responses went out, or the status that ended the
/// stream. Panics if a response held a resource the stream is not subscribed to, or reused a
/// nonce: what Envoy relies on.
#[cfg(any(test, feature = "testing"))]
pub fn drive_stream(
    requests: impl IntoIterator<Item = (bool, DiscoveryRequest)>,
    credential: &Credential,
) -> Result<usize, Status> {
    let secrets = CredentialSecrets::render(credential);
    let mut state = StreamState::new(FileSecrets::new(), None);
    let mut nonces = BTreeSet::new();
    let mut sent = 0;
    for (answers_last, mut request) in requests {
        if answers_last {
            request.response_nonce = state.last_nonce.clone().unwrap_or_default();
        }
        if state.on_request(request)? == RequestOutcome::Quiet {
            continue;
        }
        let changed = state.changed(Some(&secrets));
        for secret in &changed {
            assert!(
                state.subscribed.contains(&secret.name),
                "{} sent unasked",
                secret.name
            );
        }
        if changed.is_empty() {
            continue;
        }
        let response = state.respond(changed);
        assert!(nonces.insert(response.nonce.clone()), "a nonce was reused");
        sent += 1;
    }
    Ok(sent)
}

/// An attested client's uid and gid, which decide the files it may be served.
fn file_reader(held: &Option<Assigned>) -> Option<FileReader> {
    let peer = held.as_ref()?.peer?;
    Some(FileReader {
        uid: peer.uid,
        gid: peer.gid,
    })
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
    /// Serves the credentials published on `credential` to every client; starts polling
    /// mounted files.
    pub fn new(
        credential: watch::Receiver<Option<Arc<Credential>>>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self::with_source(
            SecretSource::Itself(render_credentials(credential)),
            metrics,
        )
    }

    /// Serves each client what `workloads` assigns it.
    pub fn serving(workloads: Workloads, metrics: Arc<AgentMetrics>) -> Self {
        match workloads {
            Workloads::Itself(credential) => Self::new(credential, metrics),
            attested => Self::with_source(SecretSource::Attested(attested), metrics),
        }
    }

    fn with_source(source: SecretSource, metrics: Arc<AgentMetrics>) -> Self {
        let files = FileSecrets::new();
        tokio::spawn(poll_files(Arc::downgrade(&files), FILE_POLL_INTERVAL));
        Self {
            source,
            files,
            metrics,
        }
    }

    /// Expiry of every served certificate resource, for `/metrics` (with attestation, the
    /// mounted files only: each identity's certificate is its own).
    pub fn expiries(&self) -> Vec<(String, SystemTime)> {
        let mut out = Vec::new();
        if let SecretSource::Itself(credential) = &self.source {
            if let Some(c) = credential.borrow().as_deref() {
                for secret in [&c.workload_cert, &c.root_ca] {
                    if let Some(t) = secret.not_after {
                        out.push((secret.name.clone(), t));
                    }
                }
            }
        }
        out.extend(self.files.expiries());
        out
    }

    /// What `request`'s client is served; an attested client holds its identity until the
    /// returned value is dropped.
    async fn credential_for<T>(&self, request: &Request<T>) -> Result<StreamCredential, Status> {
        match &self.source {
            SecretSource::Itself(credential) => Ok((credential.clone(), None)),
            SecretSource::Attested(workloads) => {
                let assigned = workloads.assign(request).await?;
                Ok((render_credentials(assigned.served.clone()), Some(assigned)))
            }
        }
    }

    /// `requests`' responses, computed as the response body is polled: a stream costs no task
    /// and no channel of its own (at 1,000 streams they measured ≈ 8 KiB of RSS per stream).
    fn responses(
        &self,
        requests: Streaming<DiscoveryRequest>,
        (credential, held): StreamCredential,
    ) -> ResponseStream<DiscoveryResponse> {
        let stream = StreamDriver {
            state: StreamState::new(self.files.clone(), file_reader(&held)),
            files_changed: self.files.changed.subscribe(),
            requests,
            credential,
            _held: held,
            _connected: self.metrics.stream_opened(StreamKind::Sds),
        };
        Box::pin(futures_util::stream::unfold(
            Some(stream),
            |stream| async move {
                let mut stream = stream?;
                match stream.next().await {
                    Next::Send(response) => Some((Ok(response), Some(stream))),
                    Next::Refuse(status) => Some((Err(status), None)),
                    Next::End => None,
                }
            },
        ))
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
        let credential = self.credential_for(&request).await?;
        Ok(Response::new(
            self.responses(request.into_inner(), credential),
        ))
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
        let (credential, held) = self.credential_for(&request).await?;
        let request = request.into_inner();
        let mut state = StreamState::new(self.files.clone(), file_reader(&held));
        state.on_request(request)?;
        let secrets = state.changed(credential.borrow().as_deref());
        Ok(Response::new(state.respond(secrets)))
    }
}

/// Serves SDS on `socket` (permissions `mode`) until `shutdown`; a stale socket file is replaced and the socket is
/// removed on exit.
pub async fn serve(
    service: SdsService,
    socket: &Path,
    mode: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_unix(
        tonic::service::Routes::new(grpc::SdsServer::new(service)),
        socket,
        mode,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use envoy_types::pb::envoy::config::core::v3::Node;

    use super::*;
    use crate::credential::tests::{authority, response, ID};
    use crate::credential::{KeyAndCsr, KeyType};

    /// A certificate and key as a workload mounts them, readable by `mode`.
    fn mounted(dir: &Path, mode: u32) -> String {
        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let answer = response(&authority(), &request.csr_pem, ID);
        let chain = answer.concat();
        let credential = request.accept(ID, &answer, SystemTime::now()).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, chain).unwrap();
        std::fs::write(&key, &credential.key_pem).unwrap();
        for file in [&cert, &key] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        format!("file-cert:{}~{}", cert.display(), key.display())
    }

    fn served_to(reader: Option<FileReader>, name: &str) -> usize {
        let mut state = StreamState::new(FileSecrets::new(), reader);
        state
            .on_request(DiscoveryRequest {
                node: Some(Node {
                    id: "sidecar~10.0.0.7~web.shop~shop.svc.cluster.local".into(),
                    ..Node::default()
                }),
                resource_names: vec![name.into()],
                type_url: SECRET_TYPE_URL.into(),
                ..DiscoveryRequest::default()
            })
            .unwrap();
        state.changed(None).len()
    }

    #[test]
    fn attested_clients_get_only_files_their_uid_can_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let web = FileReader {
            uid: 1001,
            gid: 1001,
        };
        let private = mounted(dir.path(), 0o600);
        // The agent's own clients (no attestation) and root are served what the agent reads.
        assert_eq!(served_to(None, &private), 1);
        assert_eq!(served_to(Some(FileReader { uid: 0, gid: 0 }), &private), 1);
        assert_eq!(served_to(Some(web), &private), 0, "root's key, uid 1001");
        let shared = mounted(dir.path(), 0o644);
        assert_eq!(served_to(Some(web), &shared), 1);
    }
}
