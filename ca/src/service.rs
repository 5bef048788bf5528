//! `meshca ca`: the standalone signing service (`meshca.ca.v1.CertificateAuthority`). It holds
//! the keys; keyless RAs call it over mTLS. Only RAs whose client certificate chains to the
//! configured roots and names a SPIFFE id in `ca.allowed_ras` get an answer. It trusts the RA
//! for who the workload is, and nothing else: CSR, identity, trust domain and TTL are checked
//! here again, and the record is written here before the certificate leaves.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::Decode;
use meshca_proto::meshca::ca::v1 as pb;
use pb::certificate_authority_server::{CertificateAuthority as CaRpc, CertificateAuthorityServer};
use pb::change_authority_request::Step;
use spki::SubjectPublicKeyInfoOwned;
use tokio::net::TcpListener;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::cacerts::{CacertsMaterial, NamedPem};
use crate::chain;
use crate::config::CaConfig;
use crate::csr::VerifiedCsr;
use crate::identity::SpiffeId;
use crate::issued::IssuedCertificate;
use crate::issuer::{
    CertificateAuthority, CrlError, IssueError, IssueRequest, PrepareRequest, Refusal, Requester,
    RotationError,
};
use crate::keys::KeyType;
use crate::remote::snapshot_of;
use crate::rotation::RotationStep;
use crate::store::TransitionError;
use crate::tls::{self, PeerInfo, TlsSetupError};
use crate::x509::ParsedCert;

/// The gRPC message limit (Istio's too).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("ca.allowed_ras is empty: no RA could call the signing service")]
    NoAllowedRas,
    #[error("ca.allowed_ras: {0}")]
    AllowedRa(String),
    #[error("ca.service_client_ca_file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error(
        "ca.remote_addr is set: this process is a keyless RA and cannot be the signing service"
    )]
    Keyless,
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("signing service: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// The service's gRPC handlers.
#[derive(Clone, Debug)]
pub struct SigningService {
    ca: CertificateAuthority,
    allowed_ras: Arc<BTreeSet<String>>,
    /// Roots RA client certificates must reach; `None`: the mesh trust bundle of the moment.
    client_roots: Option<Arc<Vec<ParsedCert>>>,
}

/// A started signing service: its address and the future that runs it.
pub struct RunningSigningService {
    pub addr: SocketAddr,
    serve: Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>,
}

impl std::fmt::Debug for RunningSigningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSigningService")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

// === impl RunningSigningService ===

impl RunningSigningService {
    /// Checks the configuration, issues the service's own serving certificate (renewed at
    /// half-life), and binds `ca.service_listen`.
    pub async fn start(
        ca: CertificateAuthority,
        config: &CaConfig,
        serving_cert_ttl: Duration,
        settle: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, ServiceError> {
        let service = SigningService::new(ca.clone(), config)?;
        let spec = tls::ServingCertSpec {
            dns_names: config.service_dns_names.clone(),
            ip_sans: config.service_ip_sans.clone(),
            ttl: serving_cert_ttl,
            principal: "meshca-ca".into(),
            // Keyless RAs verify it with a root file their agent keeps: the same rule as the
            // RA's own serving certificate.
            settle,
        };
        let certs = tls::serving_certificate(&ca, &spec, None).await?;
        let listener = TcpListener::bind(config.service_listen)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: config.service_listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: config.service_listen,
            source,
        })?;
        let incoming = tls::incoming(listener, tls::mtls_server_config(certs));
        let server =
            CertificateAuthorityServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let serve = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, shutdown);
        Ok(Self {
            addr,
            serve: Box::pin(async move { Ok(serve.await?) }),
        })
    }

    pub async fn run(self) -> Result<(), ServiceError> {
        self.serve.await
    }
}

// === impl SigningService ===

impl SigningService {
    pub fn new(ca: CertificateAuthority, config: &CaConfig) -> Result<Self, ServiceError> {
        if ca.is_keyless() {
            return Err(ServiceError::Keyless);
        }
        if config.allowed_ras.is_empty() {
            return Err(ServiceError::NoAllowedRas);
        }
        for id in &config.allowed_ras {
            SpiffeId::new(id).map_err(|e| ServiceError::AllowedRa(format!("{id:?}: {e}")))?;
        }
        let client_roots = match &config.service_client_ca_file {
            None => None,
            Some(path) => {
                let bad = |reason: String| ServiceError::ClientCa {
                    path: path.clone(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let roots = ParsedCert::many_from_pem(&pem).map_err(|e| bad(e.to_string()))?;
                if roots.is_empty() {
                    return Err(bad("no certificate".into()));
                }
                Some(Arc::new(roots))
            }
        };
        Ok(Self {
            ca,
            allowed_ras: Arc::new(config.allowed_ras.iter().cloned().collect()),
            client_roots,
        })
    }

    /// The calling RA's SPIFFE id, once its chain verifies and the id is allowed.
    fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let denied = |reason: String| {
            tracing::warn!(
                peer = ?request.extensions().get::<PeerInfo>().map(|p| p.remote_addr),
                %reason,
                "signing service refused a caller"
            );
            Status::unauthenticated("client certificate not accepted")
        };
        let certs = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.certs.clone())
            .unwrap_or_default();
        let mut parsed = certs.iter().map(|c| ParsedCert::from_der(c.as_ref()));
        let leaf = match parsed.next() {
            Some(Ok(leaf)) => leaf,
            Some(Err(e)) => return Err(denied(format!("client certificate: {e}"))),
            None => return Err(denied("no client certificate".into())),
        };
        let pool = parsed
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| denied(format!("client chain: {e}")))?;
        let bundle: Vec<ParsedCert>;
        let roots: &[ParsedCert] = match &self.client_roots {
            Some(roots) => roots,
            None => {
                bundle = self
                    .ca
                    .authorities()
                    .bundle()
                    .into_iter()
                    .cloned()
                    .collect();
                &bundle
            }
        };
        chain::verify_leaf(&leaf, &pool, roots, SystemTime::now())
            .map_err(|e| denied(format!("client certificate does not verify: {e}")))?;
        let id = leaf
            .uri_sans()
            .into_iter()
            .find(|u| u.starts_with("spiffe://"))
            .ok_or_else(|| denied("client certificate has no SPIFFE id".into()))?;
        if !self.allowed_ras.contains(&id) {
            tracing::warn!(ra = %id, "caller is not in ca.allowed_ras");
            return Err(Status::permission_denied(format!(
                "{id} is not in ca.allowed_ras"
            )));
        }
        Ok(id)
    }
}

fn signed(issued: IssuedCertificate) -> pb::SignResponse {
    pb::SignResponse {
        renewal_of_checked: false,
        cert_chain_pem: issued.chain_pem,
        serial_hex: issued.serial.to_hex(),
        authority_id: issued.authority_id.to_string(),
        not_after_unix: issued
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        leaf_der: issued.leaf_der,
    }
}

/// Caller-facing statuses for a failed issuance ([`IssueError::refusal`]); internals go to
/// the log.
fn issue_status(error: IssueError) -> Status {
    let refusal = error.refusal();
    if !matches!(
        refusal,
        Refusal::Invalid { .. } | Refusal::RenewalRevoked { .. }
    ) {
        tracing::error!(%error, "issuance failed");
    }
    refusal.into()
}

fn rotation_status(error: RotationError) -> Status {
    match &error {
        RotationError::Transition(TransitionError::NotFound(_)) => {
            Status::not_found(error.to_string())
        }
        RotationError::Transition(TransitionError::WrongState { .. })
        | RotationError::ManagedByCacerts => Status::failed_precondition(error.to_string()),
        RotationError::Transition(TransitionError::Raced) => Status::aborted(error.to_string()),
        RotationError::Exists(_) => Status::already_exists(error.to_string()),
        RotationError::Invalid(_) => Status::invalid_argument(error.to_string()),
        _ => {
            tracing::error!(%error, "rotation step failed");
            Status::internal("rotation step failed")
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::AuthoritySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl CaRpc for SigningService {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let _admission = self.ca.admit();
        let ra = self.authorize(&request)?;
        let body = request.into_inner();
        let csr = VerifiedCsr::from_der(&body.csr_der)
            .map_err(|e| Status::invalid_argument(format!("CSR refused: {e}")))?;
        let spiffe_id = SpiffeId::new(&body.spiffe_id)
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        csr.check_identity(&spiffe_id).map_err(|mismatch| {
            tracing::warn!(%ra, spiffe_id = %spiffe_id, requested = %mismatch.requested, "RA forwarded a CSR for another identity");
            Status::invalid_argument(mismatch.to_string())
        })?;
        let requester = body.requester.unwrap_or_default();
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let requester = Requester {
            method: requester.method,
            principal: requester.principal,
            peer_address: non_empty(requester.peer_address),
            cluster_id: non_empty(requester.cluster_id),
            impersonated_by: non_empty(requester.impersonated_by),
            pod: non_empty(requester.pod),
            node: non_empty(requester.node),
            renewal_of: non_empty(requester.renewal_of),
        };
        let issued = self
            .ca
            .issue(IssueRequest {
                csr: &csr,
                spiffe_id: &spiffe_id,
                requested_ttl_secs: body.requested_ttl_seconds,
                requester: &requester,
                // The RA answers with its own bundle; one that does not say (an older RA) is
                // taken to hold this CA's.
                bundle_as_of: Some(body.bundle_as_of_unix).filter(|t| *t > 0),
            })
            .await
            .map_err(issue_status)?;
        // Debug: the issuance is in the audit log (see the RA's CreateCertificate).
        tracing::debug!(serial = %issued.serial, spiffe_id = %spiffe_id, %ra, "issued certificate for an RA");
        Ok(Response::new(pb::SignResponse {
            renewal_of_checked: requester.renewal_of.is_some(),
            ..signed(issued)
        }))
    }

    async fn issue_serving_certificate(
        &self,
        request: Request<pb::ServingCertificateRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let ra = self.authorize(&request)?;
        let body = request.into_inner();
        let spki = SubjectPublicKeyInfoOwned::from_der(&body.subject_public_key_info_der)
            .map_err(|e| Status::invalid_argument(format!("public key: {e}")))?;
        crate::keys::classify_public_key(&spki).map_err(Status::invalid_argument)?;
        let ip_addrs = body
            .ip_addresses
            .iter()
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| Status::invalid_argument(format!("not an IP address: {ip:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ttl = self
            .ca
            .ttl_policy()
            .resolve(body.ttl_seconds)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let signer = Some(body.authority_id.as_str()).filter(|id| !id.is_empty());
        let issued = self
            .ca
            .issue_server_certificate(&spki, &body.dns_names, &ip_addrs, ttl, &ra, signer)
            .await
            .map_err(issue_status)?;
        Ok(Response::new(signed(issued)))
    }

    type WatchAuthoritiesStream = SnapshotStream;

    async fn watch_authorities(
        &self,
        request: Request<pb::WatchAuthoritiesRequest>,
    ) -> Result<Response<Self::WatchAuthoritiesStream>, Status> {
        let ra = self.authorize(&request)?;
        tracing::info!(%ra, "RA follows the authorities");
        let stream = WatchStream::new(self.ca.watch_authorities()).map(|set| Ok(snapshot_of(&set)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn change_authority(
        &self,
        request: Request<pb::ChangeAuthorityRequest>,
    ) -> Result<Response<pb::ChangeAuthorityResponse>, Status> {
        let ra = self.authorize(&request)?;
        let body = request.into_inner();
        let actor = body.actor.unwrap_or_default();
        let actor = (actor.method.as_str(), actor.principal.as_str());
        tracing::info!(%ra, method = actor.0, principal = actor.1, "rotation step through an RA");
        let forced_past = body.forced_past_gates;
        let step = body
            .step
            .ok_or_else(|| Status::invalid_argument("no step given"))?;
        let entry = match step {
            Step::Generate(g) => {
                let key_type: KeyType = g
                    .key_type
                    .parse()
                    .map_err(|e: String| Status::invalid_argument(e))?;
                self.ca
                    .prepare_authority(PrepareRequest::Generate(key_type), actor)
                    .await
            }
            Step::Upload(u) => {
                let field = |name: &str, pem: &str| NamedPem::field(name, pem);
                let material = CacertsMaterial {
                    signing_cert: field("ca_cert", &u.ca_cert_pem),
                    key: field("ca_key", &u.ca_key_pem),
                    roots: field("root_cert", &u.root_cert_pem),
                    chain: (!u.cert_chain_pem.is_empty())
                        .then(|| field("cert_chain", &u.cert_chain_pem)),
                };
                self.ca
                    .prepare_authority(PrepareRequest::Upload(material), actor)
                    .await
            }
            Step::Activate(id) => {
                self.ca
                    .step_authority(&id, RotationStep::Activate, actor, &forced_past)
                    .await
            }
            Step::Taint(id) => {
                self.ca
                    .step_authority(&id, RotationStep::Taint, actor, &forced_past)
                    .await
            }
            Step::Revoke(id) => {
                self.ca
                    .step_authority(&id, RotationStep::Revoke, actor, &forced_past)
                    .await
            }
        }
        .map_err(rotation_status)?;
        Ok(Response::new(pb::ChangeAuthorityResponse {
            authority_id: entry.authority.id().to_string(),
            authorities: Some(snapshot_of(&self.ca.authorities())),
        }))
    }

    async fn sign_crl(
        &self,
        request: Request<pb::SignCrlRequest>,
    ) -> Result<Response<pb::SignCrlResponse>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().authority_id;
        let der = self
            .ca
            .crl((!id.is_empty()).then_some(id.as_str()))
            .await
            .map_err(|e| match e {
                CrlError::NotFound(id) => Status::not_found(format!("no authority {id}")),
                other => {
                    tracing::error!(error = %other, "CRL failed");
                    Status::internal("CRL failed")
                }
            })?;
        Ok(Response::new(pb::SignCrlResponse { crl_der: der }))
    }
}
