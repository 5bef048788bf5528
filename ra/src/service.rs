//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate, check the CSR,
//! have the CA sign and record, answer with Istio's chain ending in the whole trust bundle. Errors become gRPC statuses here and
//! only here, with Istio's codes and without internals.

use std::sync::Arc;
use std::time::Instant;

use meshca_ca::audit::{AuditEvent, Outcome};
use meshca_ca::{
    CertificateAuthority, IssueError, IssueRequest, Refusal, Requester, SpiffeId, VerifiedCsr,
};
use meshca_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use meshca_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::auth::node::{Impersonation, ImpersonationError};
use crate::auth::{Authenticator, Caller, Credentials, KubernetesCaller};
use crate::limits::{CallerLimits, RateLimited};
use crate::metrics::RaMetrics;
use crate::tls::PeerInfo;
use crate::trust::TrustBundles;

/// Istio's message for every authentication failure; the reason is logged, not sent.
pub const AUTHENTICATION_FAILURE: &str = "request authenticate failure";

/// Istio's message for a refused `ImpersonatedIdentity` request; the reason is logged.
pub const IMPERSONATION_FAILURE: &str = "request impersonation authentication failure";

/// The answer to an `ImpersonatedIdentity` request while the caller's cluster's pods are not
/// known yet (the first list has not completed): nothing was issued; retry.
pub const NODE_AUTHORIZATION_PENDING: &str =
    "node authorization is not ready (the cluster's pods are still being listed); retry";

/// The answer to a shed call; nothing was done, so retrying it is always safe.
pub const OVERLOADED: &str = "too many certificate requests in flight; retry with backoff";

#[derive(Clone, Debug)]
pub struct CertificateService {
    ca: CertificateAuthority,
    bundles: TrustBundles,
    auth: Arc<Authenticator>,
    metrics: Arc<RaMetrics>,
    /// One permit per call being handled (`grpc.max_in_flight_issuances`).
    in_flight: Arc<Semaphore>,
    /// `grpc.rate_limit`; none unless set with [`CertificateService::with_limits`].
    limits: Option<Arc<CallerLimits>>,
}

// === impl CertificateService ===

impl CertificateService {
    pub fn new(
        ca: CertificateAuthority,
        bundles: TrustBundles,
        auth: Arc<Authenticator>,
        metrics: Arc<RaMetrics>,
        max_in_flight: usize,
    ) -> Self {
        Self {
            ca,
            bundles,
            auth,
            metrics,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            limits: None,
        }
    }

    /// The same service, limiting each caller as `limits` says.
    pub fn with_limits(self, limits: Arc<CallerLimits>) -> Self {
        Self {
            limits: Some(limits),
            ..self
        }
    }

    /// A call over its caller's limit: counted and logged at debug (a flood must not flood
    /// the log), not audited (nothing was attempted on the caller's behalf).
    fn limited(&self, limited: RateLimited, caller: &dyn std::fmt::Display) -> Status {
        self.metrics.rate_limited(limited.kind.as_str());
        tracing::debug!(%caller, limit = limited.kind.as_str(), retry_after = ?limited.retry_after, "rate limited");
        limited.status()
    }
}

/// Authenticates a gRPC request from its TLS peer chain and its `authorization` and
/// `clusterid` headers. Failures are logged and counted here; callers see Istio's message.
pub async fn authenticate_request<T>(
    auth: &Authenticator,
    metrics: &RaMetrics,
    request: &Request<T>,
) -> Result<(Caller, Option<PeerInfo>), Status> {
    authenticate_explained(auth, metrics, request)
        .await
        .map_err(|_| Status::unauthenticated(AUTHENTICATION_FAILURE))
}

/// Like [`authenticate_request`], but a failure keeps its reason (for the audit log; never
/// for the caller).
async fn authenticate_explained<T>(
    auth: &Authenticator,
    metrics: &RaMetrics,
    request: &Request<T>,
) -> Result<(Caller, Option<PeerInfo>), String> {
    let peer = request.extensions().get::<PeerInfo>().cloned();
    let bearer = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let cluster_id = request
        .metadata()
        .get("clusterid")
        .and_then(|v| v.to_str().ok());
    let no_certs = Vec::new();
    let creds = Credentials {
        peer_certs: peer.as_ref().map_or(&no_certs, |p| p.certs.as_ref()),
        bearer_token: bearer,
        cluster_id,
        peer_addr: peer.as_ref().map(|p| p.remote_addr),
    };
    match auth.authenticate(&creds).await {
        Ok(caller) => Ok((caller, peer)),
        Err(error) => {
            metrics.authentication_failed(error.reason());
            tracing::warn!(
                peer = ?creds.peer_addr,
                cluster_id = ?creds.cluster_id,
                %error,
                "authentication failed"
            );
            Err(error.to_string())
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        self.metrics.csr_received();
        // Shed before any work: a refused call costs the server next to nothing.
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.metrics.shed();
            return Err(Status::resource_exhausted(OVERLOADED));
        };
        let peer_ip = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.remote_addr.ip());
        if let (Some(limits), Some(ip)) = (&self.limits, peer_ip) {
            limits
                .check_address(ip, Instant::now())
                .map_err(|limited| self.limited(limited, &ip))?;
        }
        let _admission = self.ca.admit();
        let peer_addr = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.remote_addr.to_string());
        let (caller, _) = match authenticate_explained(&self.auth, &self.metrics, &request).await {
            Ok(ok) => ok,
            Err(reason) => {
                self.audit_refusal(
                    ("anonymous", peer_addr.as_deref().unwrap_or("unknown")),
                    "",
                    Outcome::Denied,
                    json!({ "reason": reason, "peer_address": peer_addr }),
                );
                return Err(Status::unauthenticated(AUTHENTICATION_FAILURE));
            }
        };
        if let Some(limits) = &self.limits {
            limits
                .check_identity(caller.spiffe_id.as_str(), Instant::now())
                .map_err(|limited| self.limited(limited, &caller.spiffe_id))?;
        }
        let body = request.into_inner();
        let impersonation = match impersonated_identity(&body) {
            None => None,
            Some(requested) => match self.auth.impersonate(&caller, requested).await {
                Ok(allowed) => Some(allowed),
                Err(error) => {
                    return Err(self.refuse_impersonation(&caller, requested, &error, peer_addr));
                }
            },
        };
        // A node agent's certificate names the pod's identity, and nothing else.
        let subject = impersonation
            .as_ref()
            .map_or(&caller.spiffe_id, |i| &i.spiffe_id);
        let refused = |status: Status| {
            self.audit_refusal(
                (caller.method.as_str(), &caller.principal),
                subject.as_str(),
                Outcome::Refused,
                json!({ "reason": status.message(), "peer_address": peer_addr }),
            );
            status
        };

        let csr = VerifiedCsr::from_pem(&body.csr).map_err(|error| {
            self.metrics.sign_error("csr_error");
            tracing::info!(spiffe_id = %subject, %error, "CSR refused");
            refused(Status::invalid_argument(format!("CSR refused: {error}")))
        })?;
        csr.check_identity(subject).map_err(|mismatch| {
            self.metrics.sign_error("identity_mismatch");
            tracing::warn!(spiffe_id = %subject, requested = %mismatch.requested, "CSR names another identity");
            refused(Status::invalid_argument(mismatch.to_string()))
        })?;

        let requester = requester_of(&caller, impersonation.as_ref(), peer_addr.clone());
        // The bundle is taken before signing, so the record says which roots the answer holds.
        let mut bundle = self.bundles.current();
        let issued = self
            .ca
            .issue(IssueRequest {
                csr: &csr,
                spiffe_id: subject,
                requested_ttl_secs: body.validity_duration,
                requester: &requester,
                bundle_as_of: Some(bundle.authorities().bundle_as_of()),
            })
            .await
            .map_err(|error| match error.refusal() {
                // Found where the issuance would have been committed: the credential is no
                // longer good, and the caller hears what any failed authentication gets.
                Refusal::RenewalRevoked { message } => {
                    self.metrics.authentication_failed("client_cert");
                    tracing::warn!(peer = ?peer_addr, reason = %message, "authentication failed");
                    self.audit_refusal(
                        (caller.method.as_str(), &caller.principal),
                        subject.as_str(),
                        Outcome::Denied,
                        json!({ "reason": message, "peer_address": peer_addr }),
                    );
                    Status::unauthenticated(AUTHENTICATION_FAILURE)
                }
                _ => refused(self.issue_status(subject, error)),
            })?;
        if !bundle.authorities().trusts(issued.authority_id.as_str()) {
            // The signer is newer than the bundle taken (a directory switched roots at once):
            // the answer must still hold the root its own chain ends at.
            bundle = self.bundles.current();
        }

        self.metrics.issued(started.elapsed());
        // Debug, as istiod logs a signed CSR: every issuance is already in the audit log and the
        // metrics, and a line per certificate at info cost ~6 % of throughput when saturated.
        tracing::debug!(
            serial = %issued.serial,
            spiffe_id = %subject,
            method = caller.method.as_str(),
            principal = %caller.principal,
            impersonated_by = impersonation.as_ref().map(|i| i.agent.as_str()),
            "issued certificate"
        );
        // Istio's layout: leaf, signing cert and intermediates, then the whole bundle as one
        // element, which istio-agent takes as its ROOTCA and ztunnel splits into roots.
        let mut cert_chain = issued.chain_pem;
        cert_chain.push(bundle.pem().to_string());
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// Who asked, for the issuance record: the caller's credential, where it runs, and, for a node
/// agent acting for a pod, the agent's own identity.
fn requester_of(
    caller: &Caller,
    impersonation: Option<&Impersonation>,
    peer_address: Option<String>,
) -> Requester {
    let kubernetes = caller.kubernetes.as_ref();
    let (pod, node) = match impersonation {
        // The node authorizer checked the pod and read its node from the API server.
        Some(i) => (Some(i.agent_pod.clone()), Some(i.node.clone())),
        None => (
            kubernetes.and_then(KubernetesCaller::pod_name),
            kubernetes.and_then(|k| k.node.clone()),
        ),
    };
    Requester {
        method: caller.method.as_str().to_string(),
        principal: caller.principal.clone(),
        peer_address,
        cluster_id: caller.cluster_id.clone(),
        impersonated_by: impersonation.map(|i| i.agent.to_string()),
        pod,
        node,
        renewal_of: caller.renewal_of.clone(),
    }
}

/// The `ImpersonatedIdentity` of the request metadata, when set (istio-agent's key).
fn impersonated_identity(body: &IstioCertificateRequest) -> Option<&str> {
    let value = body.metadata.as_ref()?.fields.get("ImpersonatedIdentity")?;
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(id)) if !id.is_empty() => Some(id),
        _ => None,
    }
}

impl CertificateService {
    /// Records a refused issuance without holding up the answer; a store that cannot take it
    /// is logged.
    fn audit_refusal(
        &self,
        actor: (&str, &str),
        target: &str,
        outcome: Outcome,
        details: serde_json::Value,
    ) {
        let event = AuditEvent::new(actor, "certificate.issue", target, outcome, details);
        let store = self.ca.store().clone();
        tokio::spawn(async move {
            if let Err(error) = store.append_audit(&event).await {
                tracing::error!(%error, "recording a refused issuance in the audit log failed");
            }
        });
    }

    fn issue_status(&self, subject: &SpiffeId, error: IssueError) -> Status {
        let refusal = error.refusal();
        let kind = refusal.kind();
        self.metrics.sign_error(kind);
        tracing::error!(spiffe_id = %subject, %error, "issuance failed");
        refusal.into()
    }

    /// Logs, counts and audits a refused `ImpersonatedIdentity`; the caller hears Istio's
    /// message, or UNAVAILABLE while the pods are not known yet (retrying will help).
    fn refuse_impersonation(
        &self,
        caller: &Caller,
        requested: &str,
        error: &ImpersonationError,
        peer_addr: Option<String>,
    ) -> Status {
        self.metrics.impersonation_refused(error.reason());
        tracing::warn!(
            caller = %caller.spiffe_id,
            cluster_id = ?caller.cluster_id,
            requested,
            %error,
            "impersonation refused"
        );
        let pod = caller
            .kubernetes
            .as_ref()
            .and_then(KubernetesCaller::pod_name);
        self.audit_refusal(
            (caller.method.as_str(), &caller.principal),
            requested,
            Outcome::Denied,
            json!({
                "reason": error.to_string(),
                "impersonated_by": caller.spiffe_id.as_str(),
                "requester_pod": pod,
                "cluster_id": caller.cluster_id,
                "peer_address": peer_addr,
            }),
        );
        if error.is_retryable() {
            Status::unavailable(NODE_AUTHORIZATION_PENDING)
        } else {
            Status::unauthenticated(IMPERSONATION_FAILURE)
        }
    }
}
