//! The web console under `/ui/` on the REST listener: the same TLS, callers and roles as the
//! API, server-rendered pages (askama templates under `ra/templates/console/`, escaped by
//! default) with one small script for live updates, and every asset compiled into the binary
//! so it works offline. Pages read and act through the REST handlers' own functions; what is
//! the console's own is sessions ([`session`]), the security headers and same-origin check
//! ([`page`]), and the layout.

mod audit;
mod authorities;
mod certificates;
mod decode;
mod form;
mod overview;
mod page;
mod session;
mod sign_in;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

pub use page::CONTENT_SECURITY_POLICY;
pub use page::COOKIE;
pub use session::SESSION_TTL;

use crate::rest::RestState;

const STYLESHEET: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

/// The console's routes, for the REST router to merge.
pub fn router() -> Router<RestState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview::page))
        .route("/ui/sign-in", get(sign_in::page).post(sign_in::sign_in))
        .route("/ui/sign-out", post(sign_in::sign_out))
        .route("/ui/certificates", get(certificates::list))
        .route("/ui/certificates/export", get(certificates::export))
        .route("/ui/certificates/{serial}", get(certificates::show))
        .route("/ui/certificates/{serial}/pem", get(certificates::pem))
        .route(
            "/ui/certificates/{serial}/revoke",
            get(certificates::confirm_revoke).post(certificates::revoke),
        )
        .route("/ui/authorities", get(authorities::page))
        .route("/ui/authorities/prepare", post(authorities::prepare))
        .route("/ui/authorities/{id}/{step}", post(authorities::step))
        .route("/ui/audit", get(audit::list))
        .route("/ui/audit/verify", get(audit::verify))
        .route("/ui/crl", get(audit::crl))
        .route(
            "/ui/assets/console.css",
            get(|| asset(STYLESHEET, "text/css")),
        )
        .route(
            "/ui/assets/console.js",
            get(|| asset(SCRIPT, "text/javascript")),
        )
        .route("/ui/{*rest}", get(not_found))
        .layer(axum::middleware::from_fn(page::guard))
}

async fn not_found() -> page::Rejection {
    page::Rejection::Api(crate::rest::ApiError::not_found("no such console page"))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("{content_type}; charset=utf-8"))
                    .expect("a valid content type"),
            ),
            // Unversioned URLs: revalidate, so an upgrade's assets are picked up at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
