//! Who is calling the REST API, and may they: bearer tokens looked up by SHA-256 (the config
//! never holds a token), or a mesh client certificate whose SPIFFE id is listed.

use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use meshca_ca::audit::{AuditEvent, Outcome};
use meshca_ca::chain;
use meshca_ca::x509::ParsedCert;

use super::callers::Actor;
use super::error::ApiError;
use super::listener::RestPeer;
use super::state::RestState;
use crate::config::RestRole;
use crate::tls::PeerInfo;

/// A caller with the `admin` role.
#[derive(Debug)]
pub struct Admin(pub Actor);

/// A caller with at least the `auditor` role.
#[derive(Debug)]
pub struct Auditor(pub Actor);

/// Authenticates the request: an `Authorization: Bearer` header decides when present (a bad
/// token is 401 even with a client certificate); otherwise the client certificate.
fn authenticate(parts: &Parts, state: &RestState) -> Result<Actor, ApiError> {
    let unauthenticated = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why.to_string());
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("Authorization must be \"Bearer <token>\""))?;
        let (name, role) = state
            .tokens
            .lookup(token)
            .ok_or_else(|| unauthenticated("unknown token"))?;
        return Ok(Actor {
            method: "token",
            principal: name.to_string(),
            role: Some(role),
        });
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<RestPeer>>()
        .map(|c| c.0 .0.clone());
    let Some(peer) = peer.filter(|p| !p.certs.is_empty()) else {
        return Err(unauthenticated(
            "a bearer token or a mesh client certificate is required",
        ));
    };
    let spiffe_id = verify_client_cert(&peer, state)
        .map_err(|why| unauthenticated(&format!("client certificate: {why}")))?;
    let role = state.role_of_spiffe_id(&spiffe_id);
    Ok(Actor {
        method: "mtls",
        principal: spiffe_id,
        role,
    })
}

/// The SPIFFE id of a client chain that verifies to the mesh's trust bundle.
pub(crate) fn verify_client_cert(peer: &PeerInfo, state: &RestState) -> Result<String, String> {
    let mut certs = peer.certs.iter().map(|c| ParsedCert::from_der(c.as_ref()));
    let leaf = certs
        .next()
        .ok_or("none sent")?
        .map_err(|e| format!("does not parse: {e}"))?;
    let pool: Vec<ParsedCert> = certs.filter_map(Result::ok).collect();
    let set = state.ca.authorities();
    let roots: Vec<ParsedCert> = set.bundle().into_iter().cloned().collect();
    chain::verify_leaf(&leaf, &pool, &roots, SystemTime::now()).map_err(|e| e.to_string())?;
    match leaf.uri_sans().as_slice() {
        [id] if id.starts_with("spiffe://") => Ok(id.clone()),
        _ => Err("no single SPIFFE id".into()),
    }
}

fn require(actor: Actor, role: RestRole) -> Result<Actor, ApiError> {
    if actor.role.is_some_and(|r| r >= role) {
        return Ok(actor);
    }
    let needed = match role {
        RestRole::Admin => "admin",
        RestRole::Auditor => "auditor",
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{} {} lacks the {needed} role",
            actor.method, actor.principal
        ),
    ))
}

/// Authenticates and authorizes; every failure is an audit event (`rest.authenticate`,
/// outcome `denied`).
fn admit(parts: &Parts, state: &RestState, role: RestRole) -> Result<Actor, ApiError> {
    let address = parts
        .extensions
        .get::<ConnectInfo<RestPeer>>()
        .map(|c| c.0 .0.remote_addr.ip());
    if let Some(address) = address {
        // Not audited: a guesser held back here would otherwise flood the audit log.
        state
            .failed_auth
            .admit(address, Instant::now())
            .map_err(ApiError::rate_limited)?;
    }
    let actor = authenticate(parts, state).inspect_err(|e| {
        // Only a credential that was presented and refused is a guess; a request with none
        // (a browser before sign-in, a probe) spends nothing.
        if let Some(address) = address.filter(|_| presents_credentials(parts)) {
            state.failed_auth.failed(address, Instant::now());
        }
        record_denial(parts, state, None, e)
    })?;
    require(actor.clone(), role).inspect_err(|e| record_denial(parts, state, Some(&actor), e))
}

/// Whether the request carries a bearer token or a client certificate.
fn presents_credentials(parts: &Parts) -> bool {
    parts.headers.contains_key(header::AUTHORIZATION)
        || parts
            .extensions
            .get::<ConnectInfo<RestPeer>>()
            .is_some_and(|c| !c.0 .0.certs.is_empty())
}

fn record_denial(parts: &Parts, state: &RestState, actor: Option<&Actor>, error: &ApiError) {
    let (method, principal) = actor.map_or(("anonymous", String::new()), |a| {
        (a.method, a.principal.clone())
    });
    let peer = parts
        .extensions
        .get::<ConnectInfo<RestPeer>>()
        .map(|c| c.0 .0.remote_addr.to_string());
    let event = AuditEvent::new(
        (method, &principal),
        "rest.authenticate",
        parts.uri.path(),
        Outcome::Denied,
        serde_json::json!({
            "http_method": parts.method.as_str(),
            "status": error.status.as_u16(),
            "reason": error.message,
            "peer_address": peer,
        }),
    );
    state.audit_in_background(event);
}

impl FromRequestParts<RestState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, ApiError> {
        admit(parts, state, RestRole::Admin).map(Admin)
    }
}

impl FromRequestParts<RestState> for Auditor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, ApiError> {
        admit(parts, state, RestRole::Auditor).map(Auditor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_can_audit_but_not_the_reverse() {
        let actor = |role| Actor {
            method: "token",
            principal: "x".into(),
            role,
        };
        assert!(require(actor(Some(RestRole::Admin)), RestRole::Auditor).is_ok());
        assert!(require(actor(Some(RestRole::Auditor)), RestRole::Auditor).is_ok());
        let denied = require(actor(Some(RestRole::Auditor)), RestRole::Admin).unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(
            require(actor(None), RestRole::Auditor).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }
}
