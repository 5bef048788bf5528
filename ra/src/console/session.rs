//! Console sessions: a random id in an `HttpOnly; Secure; SameSite=Strict` `__Host-` cookie,
//! stored by its SHA-256 with who signed in and with which role. Every request checks the
//! session again against the configuration (a token taken out, or a SPIFFE id no longer
//! listed, ends it) and, for a client-certificate session, against the connection's
//! certificate, so a copied cookie is worth nothing without the credential behind it.

use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshca_ca::audit::{AuditEvent, Outcome};
use meshca_ca::store::ConsoleSession;
use meshca_pki::time::unix_seconds;
use serde_json::json;

use super::page::{Chrome, Rejection, COOKIE};
use crate::config::RestRole;
use crate::rest::{Actor, ApiError, RestPeer, RestState};

/// How long a sign-in lasts: a working day.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The id in a browser's cookie: 32 random bytes, base64url.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

/// A signed-in browser, checked on this request.
#[derive(Clone, Debug)]
pub struct Viewer {
    /// Who, as the audit log names them.
    pub actor: Actor,
    pub role: RestRole,
    /// What the session's forms carry back (see [`SessionId::csrf_token`]).
    pub csrf: String,
    /// SHA-256 (hex) of the session id, the stored row's key.
    pub id_sha256: String,
}

// === impl Viewer ===

impl Viewer {
    /// What the layout shows of this viewer, on a page of `section`.
    pub fn chrome(&self, section: &'static str) -> Chrome {
        Chrome {
            principal: self.actor.principal.clone(),
            role: role_name(self.role),
            admin: self.role == RestRole::Admin,
            csrf: self.csrf.clone(),
            section,
        }
    }

    /// Refuses a form that does not carry this session's CSRF token (403).
    pub fn check_csrf(&self, given: &str) -> Result<(), Rejection> {
        if csrf_matches(&self.csrf, given) {
            Ok(())
        } else {
            Err(Rejection::Forbidden(
                "the form's token is not this session's; reload the page and try again".into(),
            ))
        }
    }
}

/// A signed-in browser whose role is `admin`.
#[derive(Clone, Debug)]
pub struct AdminViewer(pub Viewer);

// === impl SessionId ===

impl SessionId {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The session cookie of a request, if it has one of the right shape.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.to_string())
            .filter(|v| v.len() == 43 && URL_SAFE_NO_PAD.decode(v).is_ok())
            .map(Self)
    }

    /// What is stored: the id itself never is.
    pub fn digest(&self) -> String {
        meshca_pki::keys::sha256_hex(self.0.as_bytes())
    }

    /// The token every form of this session carries (CSRF): derived from the secret id, so a
    /// page on another origin cannot know it, and nothing more needs storing.
    pub fn csrf_token(&self) -> String {
        let mut input = b"meshca console csrf\0".to_vec();
        input.extend_from_slice(self.0.as_bytes());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// `Set-Cookie` that hands this session to the browser.
    pub fn set_cookie(&self) -> HeaderValue {
        let value = format!(
            "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            self.0,
            SESSION_TTL.as_secs()
        );
        HeaderValue::from_str(&value).expect("base64url is a valid header value")
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(…)")
    }
}

/// Whether the form's CSRF token is this session's, compared in constant time.
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes()).is_ok()
}

pub fn role_name(role: RestRole) -> &'static str {
    match role {
        RestRole::Admin => "admin",
        RestRole::Auditor => "auditor",
    }
}

fn role_of_name(name: &str) -> Option<RestRole> {
    match name {
        "admin" => Some(RestRole::Admin),
        "auditor" => Some(RestRole::Auditor),
        _ => None,
    }
}

/// Opens a session for `actor` (who holds `role`), stored before the cookie is handed out.
pub async fn open(
    state: &RestState,
    actor: &Actor,
    role: RestRole,
    token_sha256: Option<String>,
) -> Result<SessionId, ApiError> {
    let id = SessionId::generate();
    let now = unix_seconds(SystemTime::now());
    // Expired sessions go when new ones come, so the table stays as small as the sign-ins of
    // one session lifetime.
    if let Err(error) = state.ca.store().sweep_console_sessions(now).await {
        tracing::warn!(%error, "dropping expired console sessions failed");
    }
    let row = ConsoleSession {
        id_sha256: id.digest(),
        method: actor.method.to_string(),
        principal: actor.principal.clone(),
        role: role_name(role).to_string(),
        token_sha256,
        created_at: now,
        expires_at: now + SESSION_TTL.as_secs() as i64,
    };
    state
        .ca
        .store()
        .insert_console_session(&row)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(id)
}

/// How a stored session signed in (`token` or `mtls`) and with which role, if the credential
/// behind it still holds that role (and, for a certificate, is on this connection).
fn still_entitled(
    parts: &Parts,
    state: &RestState,
    session: &ConsoleSession,
) -> Option<(&'static str, RestRole)> {
    let role = role_of_name(&session.role)?;
    let method = match (session.method.as_str(), &session.token_sha256) {
        ("token", Some(token_sha256)) => {
            let (name, configured) = state.tokens.by_sha256(token_sha256)?;
            (name == session.principal && configured == role).then_some("token")?
        }
        ("mtls", None) => {
            let peer = &parts.extensions.get::<ConnectInfo<RestPeer>>()?.0 .0;
            let spiffe_id = crate::rest::auth::verify_client_cert(peer, state).ok()?;
            (spiffe_id == session.principal && state.role_of_spiffe_id(&spiffe_id) == Some(role))
                .then_some("mtls")?
        }
        _ => return None,
    };
    Some((method, role))
}

impl FromRequestParts<RestState> for Viewer {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, Rejection> {
        let sign_in = || Rejection::SignIn {
            next: parts.uri.path().to_string(),
        };
        let id = SessionId::from_headers(&parts.headers).ok_or_else(sign_in)?;
        let digest = id.digest();
        let now = unix_seconds(SystemTime::now());
        let session = state
            .ca
            .store()
            .console_session(&digest, now)
            .await
            .map_err(|e| Rejection::Api(ApiError::internal(&e)))?
            .ok_or_else(sign_in)?;
        let Some((method, role)) = still_entitled(parts, state, &session) else {
            // The credential behind it lost its role (or, for a certificate, is not on this
            // connection): the session ends here rather than at its expiry.
            let _ = state.ca.store().delete_console_session(&digest).await;
            return Err(sign_in());
        };
        Ok(Viewer {
            actor: Actor {
                method,
                principal: session.principal,
                role: Some(role),
            },
            role,
            csrf: id.csrf_token(),
            id_sha256: digest,
        })
    }
}

impl FromRequestParts<RestState> for AdminViewer {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &RestState) -> Result<Self, Rejection> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        if viewer.role != RestRole::Admin {
            let message = format!(
                "{} {} is an auditor: this needs the admin role",
                viewer.actor.method, viewer.actor.principal
            );
            // Recorded as the API records a caller without the role.
            state.audit_in_background(AuditEvent::new(
                (viewer.actor.method, &viewer.actor.principal),
                "rest.authenticate",
                parts.uri.path(),
                Outcome::Denied,
                json!({
                    "http_method": parts.method.as_str(),
                    "status": 403,
                    "reason": message,
                }),
            ));
            return Err(Rejection::Forbidden(message));
        }
        Ok(AdminViewer(viewer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_checked_for_shape() {
        let id = SessionId::generate();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}; c=d", id.0)).unwrap(),
        );
        assert_eq!(SessionId::from_headers(&headers), Some(id.clone()));

        for bad in ["short", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", ""] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("{COOKIE}={bad}")).unwrap(),
            );
            assert_eq!(SessionId::from_headers(&headers), None, "{bad:?}");
        }
        let set = id.set_cookie();
        let set = set.to_str().unwrap();
        for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set.contains("Domain"), "a __Host- cookie has no Domain");
    }

    #[test]
    fn the_csrf_token_is_the_sessions_own() {
        let (a, b) = (SessionId::generate(), SessionId::generate());
        assert!(csrf_matches(&a.csrf_token(), &a.csrf_token()));
        assert!(!csrf_matches(&a.csrf_token(), &b.csrf_token()));
        assert!(!csrf_matches(&a.csrf_token(), ""));
        assert_ne!(
            a.csrf_token(),
            a.digest(),
            "the stored key is not the form token"
        );
        assert!(
            !format!("{a:?}").contains(&a.0),
            "Debug does not print the id"
        );
    }
}
