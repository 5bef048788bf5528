//! The admin and audit REST API (axum over HTTPS): root rotation with visible propagation, the
//! trust bundle, the certificate inventory, revocation and the CRL, and the audit log. Callers
//! are bearer tokens (configured by SHA-256) or mesh client certificates whose SPIFFE id is
//! listed; anonymous callers get only the trust bundle and health. This module holds the route
//! list and the OpenAPI document built from it; handlers, callers, state and errors are its
//! submodules, none of which depends on it. The handlers' bodies are functions of their own
//! (`list_page`, `revoke_as`, …) that the web console ([`crate::console`]) calls too.

mod audit;
pub mod auth;
mod authorities;
pub mod callers;
pub(crate) mod certificates;
mod error;
mod failed_auth;
pub mod gates;
mod listener;
pub(crate) mod pagination;
mod state;
pub mod views;

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use audit::{audit_page, audit_verdict, audit_view, AuditQuery};
use auth::Auditor;
pub(crate) use authorities::{authority_list, prepare_generated, take_step_as};
pub use callers::{Actor, TokenTable};
pub use error::ApiError;
pub use failed_auth::FailedAuthLimit;
pub use listener::{RestPeer, TlsListener};
pub use state::RestState;
use views::ErrorBody;

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

/// The API's routes, plus `/openapi.json` (auditors), `/healthz` (anonymous) and `pages`
/// (the web console, which the server adds; it is built on this module, not part of it).
pub fn router(state: RestState, pages: Router<RestState>) -> Router {
    let (routes, document) = api();
    let document = Arc::new(document);
    routes
        .merge(pages)
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
