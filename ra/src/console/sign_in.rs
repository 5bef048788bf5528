//! Signing in (a pasted bearer token, or the mesh client certificate the browser presented)
//! and out. A failed sign-in spends the address's failed-authentication budget, as a refused
//! API credential does; both outcomes are in the audit log, never the token.

use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, Extensions};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use meshca_ca::audit::{AuditEvent, Outcome};
use serde::Deserialize;
use serde_json::json;

use super::page::{clear_cookie, render, sign_in_next, Rejection};
use super::session::{self, role_name, Viewer};
use crate::config::RestRole;
use crate::rest::{Actor, ApiError, RestPeer, RestState};
use crate::tls::PeerInfo;

#[derive(askama::Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    next: String,
    /// The SPIFFE id of the client certificate on this connection, if it verifies.
    certificate: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Missing fields are empty: an empty form is a failed sign-in like any other.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    with: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

/// The TLS peer of the request's connection (absent in tests that call the router directly).
fn peer_of(extensions: &Extensions) -> Option<&PeerInfo> {
    extensions
        .get::<ConnectInfo<RestPeer>>()
        .map(|connect| &connect.0 .0)
}

/// The SPIFFE id of the connection's client certificate, if it verifies to the mesh.
fn certificate_id(extensions: &Extensions, state: &RestState) -> Option<String> {
    let peer = peer_of(extensions).filter(|p| !p.certs.is_empty())?;
    crate::rest::auth::verify_client_cert(peer, state).ok()
}

pub async fn page(
    State(state): State<RestState>,
    extensions: Extensions,
    Query(query): Query<NextQuery>,
) -> Response {
    render(&SignInPage {
        next: sign_in_next(query.next.as_deref().unwrap_or("/ui/")),
        certificate: certificate_id(&extensions, &state),
        message: None,
    })
}

pub async fn sign_in(
    State(state): State<RestState>,
    extensions: Extensions,
    Form(form): Form<SignInForm>,
) -> Result<Response, Rejection> {
    let peer = peer_of(&extensions);
    let address = peer.map(|p| p.remote_addr.ip());
    if let Some(address) = address {
        state
            .failed_auth
            .admit(address, Instant::now())
            .map_err(ApiError::rate_limited)?;
    }
    let next = sign_in_next(&form.next);
    let attempt = match form.with.as_str() {
        "certificate" => match certificate_id(&extensions, &state) {
            Some(id) => match state.role_of_spiffe_id(&id) {
                Some(role) => Ok((actor("mtls", id, role), role, None)),
                None => Err(format!("{id} is in neither rest.admins nor rest.auditors")),
            },
            None => Err("no mesh client certificate that verifies was presented".to_string()),
        },
        _ => match state.tokens.lookup_with_sha256(form.token.trim()) {
            Some((name, role, token_sha256)) => Ok((
                actor("token", name.to_string(), role),
                role,
                Some(token_sha256),
            )),
            None => Err("unknown token".to_string()),
        },
    };
    let (actor, role, token_sha256) = match attempt {
        Ok(signed_in) => signed_in,
        Err(reason) => {
            if let Some(address) = address {
                state.failed_auth.failed(address, Instant::now());
            }
            state.audit_in_background(AuditEvent::new(
                ("anonymous", ""),
                "console.sign_in",
                "/ui/sign-in",
                Outcome::Denied,
                json!({
                    "reason": reason,
                    "with": if form.with == "certificate" { "certificate" } else { "token" },
                    "peer_address": peer.map(|p| p.remote_addr.to_string()),
                }),
            ));
            let page = SignInPage {
                next,
                certificate: certificate_id(&extensions, &state),
                message: Some(format!("Not signed in: {reason}.")),
            };
            return Ok((axum::http::StatusCode::UNAUTHORIZED, render(&page)).into_response());
        }
    };
    let id = session::open(&state, &actor, role, token_sha256).await?;
    state
        .audit_action(
            &actor,
            "console.sign_in",
            "/ui/sign-in",
            Ok(json!({ "role": role_name(role), "session": &id.digest()[..16] })),
        )
        .await;
    let mut response = Redirect::to(&next).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, id.set_cookie());
    Ok(response)
}

fn actor(method: &'static str, principal: String, role: RestRole) -> Actor {
    Actor {
        method,
        principal,
        role: Some(role),
    }
}

pub async fn sign_out(
    State(state): State<RestState>,
    viewer: Viewer,
    Form(form): Form<SignOutForm>,
) -> Result<Response, Rejection> {
    viewer.check_csrf(&form.csrf)?;
    state
        .ca
        .store()
        .delete_console_session(&viewer.id_sha256)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    state
        .audit_action(
            &viewer.actor,
            "console.sign_out",
            "/ui/sign-out",
            Ok(json!({ "session": &viewer.id_sha256[..16] })),
        )
        .await;
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie());
    Ok(response)
}
