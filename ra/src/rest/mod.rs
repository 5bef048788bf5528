//! The admin and audit REST API (axum over HTTPS): root rotation with visible propagation, the
//! trust bundle, the certificate inventory, revocation and the CRL, and the audit log. Callers are bearer tokens (configured by SHA-256) or mesh client
//! certificates whose SPIFFE id is listed; anonymous callers get only the trust bundle and
//! health.

mod audit;
pub mod auth;
mod authorities;
mod certificates;
mod pagination;
pub mod views;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meshca_ca::audit::{AuditEvent, Outcome};
use meshca_ca::CertificateAuthority;
use serde_json::json;
use tokio_stream::StreamExt;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::RestConfig;
use crate::tls::{PeerInfo, TlsConn};
use crate::trust_bundle::BundleWatchers;

use auth::Auditor;
pub use auth::{Actor, TokenTable};
use views::ErrorBody;

/// Everything the handlers share.
#[derive(Clone, Debug)]
pub struct RestState {
    pub ca: CertificateAuthority,
    pub watchers: Arc<BundleWatchers>,
    tokens: Arc<TokenTable>,
    admins: Arc<HashSet<String>>,
    auditors: Arc<HashSet<String>>,
}

/// An error as the API shows it: a status and a JSON body `{"error", "message"}`; never the
/// internals (those are logged).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

// === impl RestState ===

impl RestState {
    pub fn new(
        config: &RestConfig,
        ca: CertificateAuthority,
        watchers: Arc<BundleWatchers>,
    ) -> Result<Self, auth::TokenConfigError> {
        Ok(Self {
            ca,
            watchers,
            tokens: Arc::new(TokenTable::new(&config.tokens)?),
            admins: Arc::new(config.admins.iter().cloned().collect()),
            auditors: Arc::new(config.auditors.iter().cloned().collect()),
        })
    }
}

impl RestState {
    /// Appends an audit event without holding up the response (used for denials, which an
    /// attacker controls the rate of).
    pub fn audit_in_background(&self, event: AuditEvent) {
        let store = self.ca.store().clone();
        tokio::spawn(async move {
            if let Err(error) = store.append_audit(&event).await {
                tracing::error!(%error, "recording an audit event failed");
            }
        });
    }

    /// Records what an admin did (or tried), before answering.
    pub async fn audit_action(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        result: Result<serde_json::Value, &ApiError>,
    ) {
        let (outcome, details) = match result {
            Ok(details) => (Outcome::Success, details),
            Err(e) => (
                Outcome::Refused,
                json!({ "status": e.status.as_u16(), "reason": e.message }),
            ),
        };
        let event = AuditEvent::new(
            (actor.method, &actor.principal),
            action,
            target,
            outcome,
            details,
        );
        if let Err(error) = self.ca.store().append_audit(&event).await {
            tracing::error!(%error, action, target, "recording an admin action in the audit log failed");
        }
    }
}

// === impl ApiError ===

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// What the CA service (split deployment) answered, in HTTP terms. Its messages are the
    /// service's own caller-facing ones, so they are passed on; internal ones are not.
    pub fn from_remote(error: meshca_ca::remote::RemoteError) -> Self {
        use meshca_ca::remote::RemoteErrorKind as Kind;
        match error.kind {
            Kind::NotFound => Self::not_found(error.message),
            Kind::Conflict => Self::conflict(error.message),
            Kind::InvalidArgument => Self::bad_request(error.message),
            Kind::Unavailable => {
                tracing::warn!(%error, "CA service unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the CA service is unavailable; nothing was changed",
                )
            }
            Kind::Denied | Kind::Internal => Self::internal(&error),
        }
    }

    /// A failure the caller cannot fix: logged in full, answered in general terms.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "REST request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = match self.status {
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::BAD_REQUEST => "invalid_argument",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        let body = ErrorBody {
            error: error.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"meshca\""),
            );
        }
        response
    }
}

/// A path parameter, or axum's refusal of it as the API's JSON error.
fn path_of<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::new(e.status(), e.body_text()))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshca admin and audit API",
        description = "Root rotation (prepare → activate → taint → revoke) with propagation, the \
            trust bundle, the certificate inventory, revocation and CRLs, and the hash-chained \
            audit log. Callers: bearer tokens configured by SHA-256 with a role, or mesh client \
            certificates whose SPIFFE id is listed in rest.admins / rest.auditors.",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "mtls",
            SecurityScheme::MutualTls {
                description: Some(
                    "A mesh certificate whose SPIFFE id is listed in rest.admins or rest.auditors"
                        .into(),
                ),
                extensions: None,
            },
        );
    }
}

/// The routes and the OpenAPI document describing them, built from the same handler list so
/// they cannot drift apart.
pub fn api() -> (Router<RestState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(authorities::trust_bundle))
        .routes(routes!(authorities::list, authorities::prepare))
        .routes(routes!(authorities::show))
        .routes(routes!(authorities::activate))
        .routes(routes!(authorities::taint))
        .routes(routes!(authorities::revoke))
        .routes(routes!(certificates::list))
        .routes(routes!(certificates::export))
        .routes(routes!(certificates::show))
        .routes(routes!(certificates::revoke))
        .routes(routes!(certificates::crl))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .split_for_parts()
}

/// The API's routes, plus `/openapi.json` (auditors) and `/healthz` (anonymous).
pub fn router(state: RestState) -> Router {
    let (routes, document) = api();
    let document = Arc::new(document);
    routes
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/openapi.json",
            get(move |_caller: Auditor| {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// TLS connections for axum, carrying the client certificate chain to the handlers.
#[derive(Debug)]
pub struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn new(
        incoming: tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>>,
        local_addr: SocketAddr,
    ) -> Self {
        Self {
            incoming,
            local_addr,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let addr = conn.peer().remote_addr;
                    return (conn, addr);
                }
                Some(Err(error)) => tracing::debug!(%error, "REST accept failed"),
                // The acceptor only stops when this listener is dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// A REST connection's TLS peer, as handlers get it through `ConnectInfo`.
#[derive(Clone, Debug)]
pub struct RestPeer(pub PeerInfo);

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for RestPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(stream.io().peer().clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::to_value(api().1).unwrap()
    }

    fn parameter<'a>(document: &'a Value, path: &str, name: &str) -> Option<&'a Value> {
        document["paths"][path]["get"]["parameters"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
    }

    /// What schemathesis found when the document and the handlers disagreed (each a request the
    /// document allowed and the server refused), checked where it can be without a server.
    #[test]
    fn the_document_says_what_the_handlers_enforce() {
        let document = document();
        let mut ids = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                ids.push(operation["operationId"].as_str().unwrap().to_string());
                if operation.get("security").is_some() {
                    for status in ["401", "403"] {
                        assert!(
                            operation["responses"].get(status).is_some(),
                            "{method} {path} does not document {status}"
                        );
                    }
                }
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids must be unique: {ids:?}");

        for (path, listing) in [("/v1/certificates", "certificates"), ("/v1/audit", "audit")] {
            let limit = &parameter(&document, path, "limit").unwrap()["schema"];
            assert_eq!(limit["minimum"], 1, "{path}");
            assert_eq!(limit["maximum"], pagination::MAX_LIMIT, "{path}");
            let cursor = &parameter(&document, path, "cursor").unwrap()["schema"];
            assert_eq!(
                cursor["pattern"],
                format!("^{listing}\\.[0-9]{{1,18}}$"),
                "{path}: the pattern pagination::Cursor::decode takes"
            );
        }
        let export = "/v1/certificates/export";
        assert!(parameter(&document, "/v1/certificates", "format").is_none());
        assert!(parameter(&document, export, "limit").is_none());
        assert!(parameter(&document, export, "cursor").is_none());
        assert_eq!(
            parameter(&document, export, "format").unwrap()["schema"]["enum"],
            serde_json::json!(["ndjson", "csv"])
        );
        assert!(document["paths"]["/v1/crl"]["get"]["responses"]
            .get("400")
            .is_some());

        let prepare = &document["components"]["schemas"]["PrepareBody"]["oneOf"];
        assert_eq!(prepare.as_array().map(Vec::len), Some(2), "{prepare}");
    }
}
