//! `/v1/authorities` (root rotation: prepare → activate → taint → revoke) and
//! `/v1/trust-bundle`.

use std::time::SystemTime;

use meshca_pki::keys::sha256_hex;
use meshca_pki::time::unix_seconds;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use meshca_ca::cacerts::{CacertsMaterial, NamedPem};
use meshca_ca::rotation::RotationStep;
use meshca_ca::store::TransitionError;
use meshca_ca::x509::ParsedCert;
use meshca_ca::{AuthorityEntry, AuthorityState, PrepareRequest, RotationError};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::auth::{Admin, Auditor};
use super::callers::Actor;
use super::error::{path_of, ApiError};
use super::gates::{activation_waits_for, revocation_waits_for, ConfigMapReach, RootReach};
use super::pagination::{rfc3339, unix_to_rfc3339};
use super::state::RestState;
use super::views::{
    AgentPropagation, AuthorityList, AuthorityView, CertificatePropagation, ConfigMapPropagation,
    ErrorBody, GateView, GenerateRequest, IdentityPropagation, PrepareBody, Propagation, RootView,
};
use crate::jwk::public_key_jwk;

/// How far `entry`'s root has reached, from this replica's view of agents and ConfigMaps and
/// the store's counters of identities.
async fn reach_of(
    state: &RestState,
    entry: &AuthorityEntry,
    now: i64,
) -> Result<RootReach, ApiError> {
    reach_of_root(state, &sha256_hex(entry.authority.root().der()), now).await
}

/// How far the root with `fingerprint` has reached.
async fn reach_of_root(
    state: &RestState,
    fingerprint: &str,
    now: i64,
) -> Result<RootReach, ApiError> {
    let bundle = state.bundles.current();
    let root_since = bundle.authorities().root_since(fingerprint);
    let store = state.ca.store();
    let internal = |e: meshca_ca::store::StoreError| ApiError::internal(&e);
    let (identities, certificates) = match root_since {
        Some(since) => (
            store.identity_renewal(since, now).await.map_err(internal)?,
            store
                .certificate_renewal(since, now)
                .await
                .map_err(internal)?,
        ),
        None => Default::default(),
    };
    let (agents_received, agents_connected) = state
        .agents
        .propagation(fingerprint)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let configmaps = state.root_configmaps.as_ref().map(|publisher| {
        let status = publisher.status();
        ConfigMapReach {
            holding: status.holding(fingerprint),
            namespaces: status.namespaces,
            synced: status.synced,
        }
    });
    Ok(RootReach {
        root_since,
        agents_received,
        agents_connected,
        identities,
        certificates,
        configmaps,
    })
}

/// What the gate of `entry`'s next gated step waits for, if it has one.
fn gate_of(
    state: &RestState,
    entry: &AuthorityEntry,
    reach: &RootReach,
    live: i64,
    now: i64,
) -> Option<(RotationStep, Vec<String>)> {
    match entry.state {
        AuthorityState::Prepared => Some((
            RotationStep::Activate,
            activation_waits_for(reach, now, state.rotation.settle),
        )),
        AuthorityState::Tainted => Some((RotationStep::Revoke, revocation_waits_for(live))),
        _ => None,
    }
}

/// An authority as the API shows it.
async fn view(state: &RestState, entry: &AuthorityEntry) -> Result<AuthorityView, ApiError> {
    let authority = &entry.authority;
    let signing = authority.signing_cert();
    let root_fingerprint = sha256_hex(authority.root().der());
    let now = unix_seconds(SystemTime::now());
    let live = state
        .ca
        .store()
        .count_live_certificates(authority.id().as_str(), now)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let reach = reach_of(state, entry, now).await?;
    let gate = gate_of(state, entry, &reach, live, now).map(|(step, waiting_for)| GateView {
        step: step_name(step).to_string(),
        open: waiting_for.is_empty(),
        waiting_for,
    });
    Ok(AuthorityView {
        id: authority.id().to_string(),
        state: entry.state.to_string(),
        source: entry.source.clone(),
        subject: signing.subject_string(),
        key_type: authority.key_description().to_string(),
        not_before: rfc3339(signing.not_before()),
        not_after: rfc3339(signing.not_after()),
        root_subject: authority.root().subject_string(),
        root_fingerprint_sha256: root_fingerprint,
        live_certificates: live,
        propagation: propagation_view(&reach),
        gate,
        created_at: unix_to_rfc3339(entry.created_at),
        updated_at: unix_to_rfc3339(entry.updated_at),
    })
}

fn propagation_view(reach: &RootReach) -> Propagation {
    Propagation {
        trusted_since: reach.root_since.map(unix_to_rfc3339),
        agents: AgentPropagation {
            received: reach.agents_received,
            connected: reach.agents_connected,
        },
        identities: IdentityPropagation {
            renewed: reach.identities.renewed,
            live: reach.identities.live,
        },
        certificates: CertificatePropagation {
            holding: reach.certificates.renewed,
            live: reach.certificates.live,
        },
        configmaps: reach.configmaps.map(|c| ConfigMapPropagation {
            holding: c.holding,
            namespaces: c.namespaces,
            synced: c.synced,
        }),
        complete: reach.complete(),
    }
}

fn step_name(step: RotationStep) -> &'static str {
    match step {
        RotationStep::Activate => "activate",
        RotationStep::Taint => "taint",
        RotationStep::Revoke => "revoke",
    }
}

impl From<RotationError> for ApiError {
    fn from(error: RotationError) -> Self {
        match &error {
            RotationError::Transition(TransitionError::NotFound(_)) => {
                ApiError::not_found(error.to_string())
            }
            RotationError::Transition(TransitionError::WrongState { .. })
            | RotationError::Transition(TransitionError::Raced)
            | RotationError::ManagedByCacerts
            | RotationError::Exists(_) => ApiError::conflict(error.to_string()),
            RotationError::Invalid(_) => ApiError::bad_request(error.to_string()),
            RotationError::Remote(remote) => ApiError::from_remote(remote.clone()),
            _ => ApiError::internal(&error),
        }
    }
}

/// Every authority, oldest first.
#[utoipa::path(get, path = "/v1/authorities", tag = "authorities",
    operation_id = "list_authorities",
    responses(
        (status = 200, body = AuthorityList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn list(
    State(state): State<RestState>,
    _caller: Auditor,
) -> Result<Json<AuthorityList>, ApiError> {
    authority_list(&state).await.map(Json)
}

/// Every authority and bundle root with its propagation (the API's list, and the console's).
pub(crate) async fn authority_list(state: &RestState) -> Result<AuthorityList, ApiError> {
    let set = state.ca.authorities();
    let mut authorities = Vec::new();
    for entry in set.entries() {
        authorities.push(view(state, entry).await?);
    }
    let now = unix_seconds(SystemTime::now());
    let mut bundle_roots = Vec::new();
    let bundle = state.bundles.current();
    for (root, fingerprint) in bundle.roots().iter().zip(bundle.fingerprints()) {
        if bundle.authorities().root_since(fingerprint).is_none() {
            continue;
        }
        let reach = reach_of_root(state, fingerprint, now).await?;
        bundle_roots.push(RootView {
            fingerprint_sha256: fingerprint.clone(),
            subject: root.subject_string(),
            not_after: rfc3339(root.not_after()),
            propagation: propagation_view(&reach),
        });
    }
    Ok(AuthorityList {
        authorities,
        bundle_roots,
    })
}

/// One authority.
#[utoipa::path(get, path = "/v1/authorities/{id}", tag = "authorities",
    operation_id = "show_authority",
    params(("id" = String, Path, description = "Authority id (hex key identifier)",
        example = "2f9acfd5c2b24b466de6126716c3e3a3fad80eb6")),
    responses(
        (status = 200, body = AuthorityView), (status = 404, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn show(
    State(state): State<RestState>,
    _caller: Auditor,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<AuthorityView>, ApiError> {
    let id = path_of(id)?;
    let set = state.ca.authorities();
    let entry = set
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no authority {id}")))?;
    Ok(Json(view(&state, entry).await?))
}

/// Prepares a new authority: its root joins the trust bundle at once; it signs nothing yet.
#[utoipa::path(post, path = "/v1/authorities", tag = "authorities",
    operation_id = "prepare_authority",
    request_body = PrepareBody,
    responses(
        (status = 201, body = AuthorityView),
        (status = 400, body = ErrorBody, description = "Invalid plug-in set or body"),
        (status = 409, body = ErrorBody, description = "Already known, or managed by a cacerts directory"),
        (status = 503, body = ErrorBody, description = "The CA service (split deployment) is unavailable; nothing was changed"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn prepare(
    State(state): State<RestState>,
    Admin(actor): Admin,
    body: Result<Json<PrepareBody>, JsonRejection>,
) -> Result<(StatusCode, Json<AuthorityView>), ApiError> {
    let prepared = async {
        let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
        prepare_request(body)
    }
    .await;
    match prepared {
        Ok(request) => prepare_as(&state, &actor, request)
            .await
            .map(|view| (StatusCode::CREATED, Json(view))),
        Err(e) => {
            state
                .audit_action(&actor, "authority.prepare", "", Err(&e))
                .await;
            Err(e)
        }
    }
}

/// Prepares a generated root of `key_type` as `actor` (the console's prepare).
pub(crate) async fn prepare_generated(
    state: &RestState,
    actor: &Actor,
    key_type: meshca_ca::keys::KeyType,
) -> Result<AuthorityView, ApiError> {
    prepare_as(state, actor, PrepareRequest::Generate(key_type)).await
}

/// A success is audited in the store's transaction; a refusal is recorded here.
async fn prepare_as(
    state: &RestState,
    actor: &Actor,
    request: PrepareRequest,
) -> Result<AuthorityView, ApiError> {
    let by = (actor.method, actor.principal.as_str());
    match state.ca.prepare_authority(request, by).await {
        Ok(entry) => view(state, &entry).await,
        Err(e) => {
            let e = ApiError::from(e);
            state
                .audit_action(actor, "authority.prepare", "", Err(&e))
                .await;
            Err(e)
        }
    }
}

fn prepare_request(body: PrepareBody) -> Result<PrepareRequest, ApiError> {
    Ok(match body {
        PrepareBody::Generate(GenerateRequest { generate }) => {
            PrepareRequest::Generate(generate.key_type)
        }
        PrepareBody::Upload(upload) => PrepareRequest::Upload(CacertsMaterial {
            signing_cert: NamedPem::field("ca_cert", &upload.ca_cert),
            key: NamedPem::field("ca_key", &upload.ca_key),
            roots: NamedPem::field("root_cert", &upload.root_cert),
            chain: upload
                .cert_chain
                .map(|pem| NamedPem::field("cert_chain", &pem)),
        }),
    })
}

/// `?force=true`: take a gated step although its gate does not hold (audited as forced).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StepParams {
    /// Take the step even though its gate does not hold; the audit log records what was
    /// skipped.
    #[serde(default)]
    pub force: bool,
}

/// Takes `step` on the authority in the path and answers with its view.
async fn take_step(
    state: RestState,
    actor: Actor,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<StepParams>, QueryRejection>,
    step: RotationStep,
) -> Result<Json<AuthorityView>, ApiError> {
    let id = path_of(id)?;
    match params {
        Ok(Query(params)) => take_step_as(&state, &actor, &id, step, params.force)
            .await
            .map(Json),
        Err(rejection) => {
            let e = ApiError::bad_request(rejection.body_text());
            state
                .audit_action(&actor, step.audit_action(), &id, Err(&e))
                .await;
            Err(e)
        }
    }
}

/// Takes `step` on authority `id` as `actor` (the API's caller, or a console session). A gated
/// step whose gate does not hold is refused with 409 naming what it waits for, unless forced.
/// A step that happened was audited in its own transaction; a refused one is recorded here.
pub(crate) async fn take_step_as(
    state: &RestState,
    actor: &Actor,
    id: &str,
    step: RotationStep,
    force: bool,
) -> Result<AuthorityView, ApiError> {
    let result = async {
        let waits = waits_for(state, id, step).await?;
        if !waits.is_empty() && !force {
            return Err(ApiError::conflict(format!(
                "authority {id} not {}: {}; force=true takes the step anyway",
                step.to().as_str(),
                waits.join("; ")
            )));
        }
        let by = (actor.method, actor.principal.as_str());
        state
            .ca
            .step_authority(id, step, by, &waits)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match result {
        Ok(entry) => view(state, &entry).await,
        Err(e) => {
            state
                .audit_action(actor, step.audit_action(), id, Err(&e))
                .await;
            Err(e)
        }
    }
}

/// What the gate of `step` on authority `id` waits for now (empty: it holds, or the step has
/// none).
async fn waits_for(
    state: &RestState,
    id: &str,
    step: RotationStep,
) -> Result<Vec<String>, ApiError> {
    let set = state.ca.authorities();
    let Some(entry) = set.get(id) else {
        // The step itself answers 404.
        return Ok(Vec::new());
    };
    if entry.state != step.from() {
        // The step itself answers 409 naming the state.
        return Ok(Vec::new());
    }
    let now = unix_seconds(SystemTime::now());
    let live = match step {
        RotationStep::Revoke => state
            .ca
            .store()
            .count_live_certificates(id, now)
            .await
            .map_err(|e| ApiError::internal(&e))?,
        _ => 0,
    };
    let reach = reach_of(state, entry, now).await?;
    Ok(gate_of(state, entry, &reach, live, now)
        .map(|(_, waits)| waits)
        .unwrap_or_default())
}

/// One documented endpoint per rotation step (each its own operation in the OpenAPI document),
/// all answered by [`take_step`].
macro_rules! step_endpoint {
    ($(#[doc = $doc:literal])* $name:ident, $step:expr, $path:literal, $operation:literal,
     $refused:literal) => {
        $(#[doc = $doc])*
        #[utoipa::path(post, path = $path, tag = "authorities", operation_id = $operation,
            params(("id" = String, Path, description = "Authority id (hex key identifier)",
                example = "2f9acfd5c2b24b466de6126716c3e3a3fad80eb6"), StepParams),
            responses(
                (status = 200, body = AuthorityView), (status = 404, body = ErrorBody),
                (status = 400, body = ErrorBody, description = "force is neither true nor false"),
                (status = 409, body = ErrorBody, description = $refused),
                (status = 503, body = ErrorBody, description = "The CA service (split deployment) is unavailable; nothing was changed"),
                (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
            ),
            security(("bearer" = []), ("mtls" = [])))]
        pub async fn $name(
            State(state): State<RestState>,
            Admin(actor): Admin,
            id: Result<Path<String>, PathRejection>,
            params: Result<Query<StepParams>, QueryRejection>,
        ) -> Result<Json<AuthorityView>, ApiError> {
            take_step(state, actor, id, params, $step).await
        }
    };
}

step_endpoint!(
    /// `prepared` → `active`: new certificates are signed by it; the previous active becomes `old`.
    /// Gated: its root must have reached every agent, live identity and root ConfigMap, and
    /// have been in the bundle for `rotation.settle`.
    activate, RotationStep::Activate, "/v1/authorities/{id}/activate", "activate_authority",
    "Not prepared, or its gate does not hold (the message names what has not propagated)"
);
step_endpoint!(
    /// `old` → `tainted`: agents holding its certificates rotate now; renewal with them is refused.
    taint, RotationStep::Taint, "/v1/authorities/{id}/taint", "taint_authority", "Not old"
);
step_endpoint!(
    /// `tainted` → `revoked`: its root leaves the trust bundle. Gated: none of its
    /// certificates may still be live.
    revoke, RotationStep::Revoke, "/v1/authorities/{id}/revoke", "revoke_authority",
    "Not tainted, or its gate does not hold (the message says how many certificates are live)"
);

/// The trust bundle (anonymous): PEM, or the SPIFFE bundle (a JWK set with
/// `use: x509-svid`) for `Accept: application/json`; the ETag is the bundle version.
#[utoipa::path(get, path = "/v1/trust-bundle", tag = "trust bundle",
    operation_id = "trust_bundle",
    responses(
        (status = 200, description = "PEM roots, or a SPIFFE bundle (JWK set) for Accept: application/json",
            content((String = "application/x-pem-file"), (Object = "application/json"))),
        (status = 304, description = "If-None-Match matched the ETag"),
    ))]
pub async fn trust_bundle(State(state): State<RestState>, headers: HeaderMap) -> Response {
    let bundle = state.bundles.current();
    let etag = format!("\"{}\"", bundle.version());
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag_header = (
        header::ETAG,
        HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
    );
    if not_modified {
        return (StatusCode::NOT_MODIFIED, [etag_header]).into_response();
    }
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        // A SPIFFE bundle is one trust domain's: ours.
        let ours = bundle
            .by_trust_domain()
            .get(state.ca.trust_domain().as_str());
        let keys: Vec<Value> = ours.into_iter().flatten().map(x509_svid_jwk).collect();
        let body = json!({
            "keys": keys,
            "spiffe_refresh_hint": 300,
        });
        return ([etag_header], Json(body)).into_response();
    }
    (
        [
            etag_header,
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            ),
        ],
        bundle.pem().to_string(),
    )
        .into_response()
}

/// A root as a JWK in a SPIFFE bundle: the key parameters plus `x5c` with the certificate.
fn x509_svid_jwk(root: &ParsedCert) -> Value {
    let mut jwk = public_key_jwk(root.spki());
    jwk["use"] = json!("x509-svid");
    jwk["x5c"] = json!([base64::engine::general_purpose::STANDARD.encode(root.der())]);
    jwk
}

#[cfg(test)]
mod tests {
    use meshca_ca::keys::KeyType;
    use utoipa::PartialSchema;

    use super::*;
    use crate::rest::views::GenerateBody;

    #[test]
    fn the_documented_key_types_are_the_cas() {
        let schema = serde_json::to_value(KeyType::schema()).unwrap();
        let names: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let ca = [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ];
        assert_eq!(names, ca.map(KeyType::as_str));
    }

    #[test]
    fn a_prepare_body_is_one_of_the_two_and_says_which_field_is_wrong() {
        let parse = |body: Value| serde_json::from_value::<PrepareBody>(body);
        assert!(matches!(
            parse(json!({"generate": {}})),
            Ok(PrepareBody::Generate(GenerateRequest {
                generate: GenerateBody {
                    key_type: KeyType::EcP256
                }
            }))
        ));
        assert!(matches!(
            parse(json!({"ca_cert": "c", "ca_key": "k", "root_cert": "r"})),
            Ok(PrepareBody::Upload(_))
        ));
        let error = |body: Value| parse(body).unwrap_err().to_string();
        assert!(error(json!({})).contains("give either"));
        assert!(error(json!({"generate": {}, "ca_cert": "c"})).contains("give either"));
        assert!(error(json!({"ca_cert": "c", "root_cert": "r"})).contains("ca_key"));
        assert!(error(json!({"generate": {"key_type": "dsa"}})).contains("rsa-4096"));
    }
}
