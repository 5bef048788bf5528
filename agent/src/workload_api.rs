//! The SPIFFE Workload API on a Unix socket, for workloads that are not Envoy (go-spiffe,
//! rust `spiffe`, py-spiffe): the current X509-SVID and bundle, and a new message on every
//! rotation.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use meshca_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use meshca_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::authority::AuthorityRewrite;
use crate::credential::Credential;
use crate::metrics::{AgentMetrics, StreamKind};
use crate::workloads::Workloads;

/// Every Workload API request must carry this metadata (SPIFFE Workload Endpoint spec), so a
/// browser or SSRF cannot reach the socket through an HTTP proxy.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves each client its workload's credential, as its rotation loop publishes it.
#[derive(Clone, Debug)]
pub struct WorkloadApi {
    workloads: Workloads,
    metrics: Arc<AgentMetrics>,
}

// === impl WorkloadApi ===

impl WorkloadApi {
    /// Serves the agent's own credential to every client.
    pub fn new(
        credential: watch::Receiver<Option<Arc<Credential>>>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Self::serving(Workloads::Itself(credential), metrics)
    }

    pub fn serving(workloads: Workloads, metrics: Arc<AgentMetrics>) -> Self {
        Self { workloads, metrics }
    }

    /// The client's published credentials, skipping the gaps where none is held; the
    /// identity is held for as long as the stream lives.
    async fn credentials<T>(
        &self,
        request: &Request<T>,
    ) -> Result<impl Stream<Item = Arc<Credential>> + Send + 'static, Status> {
        let assigned = self.workloads.assign(request).await?;
        let served = assigned.served.clone();
        Ok(WatchStream::new(served).filter_map(move |c| {
            let _held = &assigned;
            c
        }))
    }
}

fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// PEM certificates → their DER, concatenated (the Workload API's encoding).
fn concat_der<'a>(pems: impl IntoIterator<Item = &'a String>) -> Vec<u8> {
    pems.into_iter()
        .filter_map(|p| pem::parse_many(p).ok())
        .flatten()
        .flat_map(pem::Pem::into_contents)
        .collect()
}

fn trust_domain(spiffe_id: &str) -> String {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Each trust domain's roots, DER: as the stream labelled them, or all ours before it has.
fn bundles_by_trust_domain(c: &Credential) -> HashMap<String, Vec<u8>> {
    if c.roots_by_trust_domain.is_empty() {
        return HashMap::from([(trust_domain(&c.spiffe_id), concat_der(&c.roots_pem))]);
    }
    c.roots_by_trust_domain
        .iter()
        .map(|(domain, roots)| (domain.clone(), concat_der(roots)))
        .collect()
}

fn x509_svid_response(c: &Credential) -> X509svidResponse {
    let key = pem::parse(&c.key_pem)
        .map(pem::Pem::into_contents)
        .unwrap_or_default();
    let mut bundles = bundles_by_trust_domain(c);
    let ours = bundles
        .remove(&trust_domain(&c.spiffe_id))
        .unwrap_or_default();
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: c.spiffe_id.clone(),
            x509_svid: concat_der(&c.chain_pem),
            x509_svid_key: key,
            bundle: ours,
            hint: String::new(),
        }],
        crl: Vec::new(),
        // Extra anchors of other trust domains (e.g. Athenz): trusted, served as federated.
        federated_bundles: bundles,
    }
}

fn x509_bundles_response(c: &Credential) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: bundles_by_trust_domain(c),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_security_header(&request)?;
        let credentials = self.credentials(&request).await?;
        let connected = self.metrics.stream_opened(StreamKind::WorkloadApi);
        let stream = credentials.map(move |c| {
            let _counted = &connected;
            Ok(x509_svid_response(&c))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_security_header(&request)?;
        let credentials = self.credentials(&request).await?;
        let mut last: Option<Vec<u8>> = None;
        let connected = self.metrics.stream_opened(StreamKind::WorkloadApi);
        // Only bundle changes make a message; a rotation under the same roots does not.
        let stream = credentials.filter_map(move |c| {
            let _counted = &connected;
            let response = x509_bundles_response(&c);
            let bundle = response.bundles.values().next().cloned();
            if bundle == last {
                return None;
            }
            last = bundle;
            Some(Ok(response))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_security_header(&request)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not served by meshca yet",
        ))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_security_header(&request)?;
        Err(Status::unimplemented(
            "JWT bundles are not served by meshca yet",
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_security_header(&request)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not served by meshca yet",
        ))
    }
}

/// Serves the Workload API on `socket` (permissions `mode`) until `shutdown`; a stale socket
/// file is replaced and the socket is removed on exit.
pub async fn serve(
    api: WorkloadApi,
    socket: &Path,
    mode: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_unix(
        tonic::service::Routes::new(SpiffeWorkloadApiServer::new(api)),
        socket,
        mode,
        shutdown,
    )
    .await
}

/// Serves gRPC `routes` on the Unix socket `socket` until `shutdown`: a stale socket file is
/// replaced, and the socket is removed on exit. Shared by the Workload API and SDS.
pub async fn serve_unix(
    routes: tonic::service::Routes,
    socket: &Path,
    mode: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = bind_unix(socket, mode)?;
    // Every gRPC stack's `:authority` must get through, not only Go's and Rust's.
    let connections =
        UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityRewrite::server));
    let result = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(connections, shutdown)
        .await
        .map_err(std::io::Error::other);
    let _ = std::fs::remove_file(socket);
    result
}

/// Permissions of the agent's sockets when only its own identity is served: its pod or its
/// group. With attestation every local process may connect (as to SPIRE's agent socket) and
/// is served only what it is attested as.
pub const PRIVATE_SOCKET_MODE: u32 = 0o660;
pub const ATTESTED_SOCKET_MODE: u32 = 0o777;

/// Binds a Unix socket at `path` with permissions `mode` (connecting needs write permission),
/// removing a stale one first (a previous agent that died leaves its file behind, and bind
/// would fail on it).
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(listener)
}

/// A gRPC channel to a Workload API socket, as SPIFFE clients dial it (for probes and tests).
pub async fn unix_channel(
    socket: std::path::PathBuf,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A gRPC channel to a Unix socket that sends the `:authority` another gRPC stack would, so a
/// Rust test cannot pass where that stack's clients fail.
#[cfg(any(test, feature = "testing"))]
pub async fn unix_channel_as(
    socket: std::path::PathBuf,
    stack: crate::authority::StackAuthority,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let authority = stack.for_socket(&socket);
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let (socket, authority) = (socket.clone(), authority.clone());
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                let stream = AuthorityRewrite::client(stream, authority.as_deref());
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn cert(byte: u8) -> (String, Vec<u8>) {
        let der = vec![0x30, 0x03, 0x02, 0x01, byte];
        (pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())), der)
    }

    /// Extra anchors of another trust domain (e.g. Athenz) are that domain's bundle, not ours;
    /// before the stream has labelled the roots, all of them are ours.
    #[test]
    fn bundles_are_served_per_trust_domain() {
        let ((ours_pem, ours), (athenz_pem, athenz)) = (cert(1), cert(2));
        let mut credential = Credential {
            spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
            key_pem: String::new(),
            chain_pem: Vec::new(),
            roots_pem: vec![ours_pem.clone(), athenz_pem.clone()],
            roots_by_trust_domain: Vec::new(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            received_at: SystemTime::UNIX_EPOCH,
            authority_key_id: None,
        };
        let unlabelled = x509_bundles_response(&credential).bundles;
        assert_eq!(
            unlabelled,
            HashMap::from([(
                "cluster.local".into(),
                [ours.clone(), athenz.clone()].concat()
            )])
        );
        credential.roots_by_trust_domain = vec![
            ("athenz.example".into(), vec![athenz_pem]),
            ("cluster.local".into(), vec![ours_pem]),
        ];
        let bundles = x509_bundles_response(&credential).bundles;
        assert_eq!(bundles["cluster.local"], ours);
        assert_eq!(bundles["athenz.example"], athenz);
        let svid = x509_svid_response(&credential);
        assert_eq!(svid.svids[0].bundle, ours);
        assert_eq!(
            svid.federated_bundles,
            HashMap::from([("athenz.example".into(), athenz)])
        );
    }
}
