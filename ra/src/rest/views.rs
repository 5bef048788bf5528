//! What the REST API answers and takes, as types: the handlers serialize the answers and read
//! the requests, `meshca admin` does the reverse, and the OpenAPI document describes both, so
//! the three cannot drift apart.

use meshca_ca::crl::RevocationReason;
use meshca_ca::keys::KeyType;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The error body of every 4xx/5xx answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthenticated`, `forbidden`, `not_found`, `conflict`, `invalid_argument`,
    /// `unavailable` or `internal`.
    pub error: String,
    pub message: String,
}

/// How far an authority's root has reached everything meshca feeds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Propagation {
    /// When its root joined the trust bundle (RFC 3339); null when it is not in it.
    pub trusted_since: Option<String>,
    pub agents: AgentPropagation,
    pub identities: IdentityPropagation,
    pub certificates: CertificatePropagation,
    /// Null when meshca does not publish the `istio-ca-root-cert` ConfigMaps.
    pub configmaps: Option<ConfigMapPropagation>,
    /// Every count above is complete.
    pub complete: bool,
}

/// meshca agents on the trust-bundle streams of every replica (others as of their last report,
/// a few seconds old at most).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentPropagation {
    /// Streams that were sent a bundle holding this root.
    pub received: usize,
    /// Streams connected now.
    pub connected: usize,
}

/// Workloads that learn their roots only from their answers, as istio-agent does.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentityPropagation {
    /// Live identities whose newest certificate's answer held this root.
    pub renewed: i64,
    /// Distinct SPIFFE ids holding an unexpired, unrevoked certificate.
    pub live: i64,
}

/// Every pod's certificate: the activation gate. Identities alone cannot tell the replicas of
/// one Deployment apart (they share a service account).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CertificatePropagation {
    /// Live workload certificates whose answer held this root.
    pub holding: i64,
    /// Workload certificates that are neither expired nor revoked.
    pub live: i64,
}

/// `holding/live`, for tables.
impl std::fmt::Display for CertificatePropagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.holding, self.live)
    }
}

/// The `istio-ca-root-cert` ConfigMaps istio-agent verifies meshca with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigMapPropagation {
    /// Namespaces whose ConfigMap holds this root.
    pub holding: usize,
    /// Namespaces that get the ConfigMap.
    pub namespaces: usize,
    /// Whether the namespaces and ConfigMaps have been listed yet.
    pub synced: bool,
}

/// `received/connected`, for tables.
impl std::fmt::Display for AgentPropagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.received, self.connected)
    }
}

/// `renewed/live`, for tables.
impl std::fmt::Display for IdentityPropagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.renewed, self.live)
    }
}

/// The gate of the authority's next gated step.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    /// `activate` (a prepared authority) or `revoke` (a tainted one).
    pub step: String,
    /// Whether the step would be taken without `force=true`.
    pub open: bool,
    /// What it still waits for, one phrase each.
    pub waiting_for: Vec<String>,
}

/// An authority and where it stands in the rotation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthorityView {
    /// Hex key identifier of the signing certificate.
    pub id: String,
    /// `prepared`, `active`, `old`, `tainted` or `revoked`.
    pub state: String,
    /// `self-signed`, `generated`, `uploaded` or `cacerts`.
    pub source: String,
    pub subject: String,
    pub key_type: String,
    pub not_before: String,
    pub not_after: String,
    pub root_subject: String,
    pub root_fingerprint_sha256: String,
    /// Issued by this authority, unexpired and unrevoked.
    pub live_certificates: i64,
    pub propagation: Propagation,
    /// Null unless the authority is `prepared` or `tainted`.
    pub gate: Option<GateView>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthorityList {
    pub authorities: Vec<AuthorityView>,
    /// Every authority root of the trust bundle and how far it has reached, including roots no
    /// authority signs under yet (a plugged-in `root-cert.pem` listing old + new); not the
    /// extra anchors, which no step waits for.
    pub bundle_roots: Vec<RootView>,
}

/// A root of the trust bundle.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RootView {
    pub fingerprint_sha256: String,
    pub subject: String,
    pub not_after: String,
    pub propagation: Propagation,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequesterView {
    /// `jwt`, `tokenreview`, `athenz`, `renewal` or `internal`.
    pub method: String,
    pub principal: String,
    pub peer_address: Option<String>,
    pub cluster_id: Option<String>,
    /// The node agent's own SPIFFE id when it asked for this certificate on behalf of a pod on
    /// its node (Istio ambient's ztunnel, `ImpersonatedIdentity`).
    pub impersonated_by: Option<String>,
    /// The requester's pod (`namespace/name`) and node, when its credential said.
    pub pod: Option<String>,
    pub node: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevocationView {
    pub at: String,
    pub reason: Option<String>,
}

/// A certificate on record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    pub serial: String,
    pub spiffe_id: String,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub not_before: String,
    pub not_after: String,
    pub issued_at: String,
    pub authority: String,
    pub requester: RequesterView,
    pub public_key_sha256: String,
    /// `valid`, `expired` or `revoked`.
    pub status: String,
    pub revocation: Option<RevocationView>,
    /// The certificate (single-certificate views only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

/// A page, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CertificatePage {
    pub certificates: Vec<CertificateView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActorView {
    /// `jwt`, `tokenreview`, `athenz`, `renewal`, `token`, `mtls`, `internal` or `anonymous`.
    pub method: String,
    pub principal: String,
}

/// One event of the hash-chained log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    pub seq: i64,
    pub at: String,
    pub actor: ActorView,
    pub action: String,
    pub target: String,
    /// `success`, `refused` or `denied`.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BrokenLinkView {
    pub seq: i64,
    pub reason: String,
}

/// The result of walking the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub intact: bool,
    /// Events verified before the first broken link (all of them when intact).
    pub checked: i64,
    /// The last hash, when intact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<BrokenLinkView>,
}

// Requests, sent by `meshca admin` and read by the handlers.

/// `POST /v1/authorities`: either `generate`, or an uploaded plug-in set (PEM), validated
/// like a `cacerts` directory.
// Read by its own `Deserialize`, which picks the variant by the `generate` key, so that a
// refusal names the field that was wrong rather than "no variant matched".
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[schema(example = json!({"generate": {"key_type": "ec-p256"}}))]
pub enum PrepareBody {
    Generate(GenerateRequest),
    Upload(UploadRequest),
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub generate: GenerateBody,
}

/// Istio's plug-in CA files.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// Istio's `ca-cert.pem`.
    pub ca_cert: String,
    /// Istio's `ca-key.pem`.
    pub ca_key: String,
    /// Istio's `cert-chain.pem` (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
    /// Istio's `root-cert.pem`.
    pub root_cert: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    #[serde(default)]
    #[schema(inline)]
    pub key_type: KeyType,
}

// === impl PrepareBody ===

impl<'de> Deserialize<'de> for PrepareBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let body = Value::deserialize(deserializer)?;
        let has = |key: &str| body.get(key).is_some();
        let uploads = ["ca_cert", "ca_key", "cert_chain", "root_cert"];
        match (has("generate"), uploads.iter().any(|k| has(k))) {
            (true, true) | (false, false) if body.is_object() => Err(D::Error::custom(
                "give either \"generate\" or the plug-in set (ca_cert, ca_key, root_cert, \
                 cert_chain)",
            )),
            (true, _) => GenerateRequest::deserialize(body)
                .map(Self::Generate)
                .map_err(D::Error::custom),
            _ => UploadRequest::deserialize(body)
                .map(Self::Upload)
                .map_err(D::Error::custom),
        }
    }
}

/// Why the certificate is revoked (an RFC 5280 reason name).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[schema(inline)]
    pub reason: RevocationReason,
}
