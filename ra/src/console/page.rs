//! What every console response shares: the headers that keep pages from being framed,
//! scripted from elsewhere or cached, the check that a state-changing request comes from the
//! console's own pages, and refusals shown as pages rather than JSON.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::rest::ApiError;

/// Only the binary's own script and stylesheet; no inline script, no eval, no framing, forms
/// post only back here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The session cookie. `__Host-`: the browser only keeps it from a secure origin, for `/`,
/// without a `Domain`.
pub const COOKIE: &str = "__Host-meshca-session";

/// `Set-Cookie` that makes the browser forget its session.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-meshca-session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// What the layout shows of the signed-in viewer.
#[derive(Clone, Debug)]
pub struct Chrome {
    pub principal: String,
    pub role: &'static str,
    pub admin: bool,
    pub csrf: String,
    /// Which navigation entry is current.
    pub section: &'static str,
}

/// Why a console request was not served, shown as a page (or a redirect to sign in).
#[derive(Debug)]
pub enum Rejection {
    /// No session, or one that ended: sign in, then come back to `next`.
    SignIn {
        next: String,
    },
    Forbidden(String),
    BadRequest(String),
    Api(ApiError),
}

/// The error page.
#[derive(askama::Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    status: u16,
    title: &'static str,
    message: String,
}

// === impl Rejection ===

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, message, retry_after) = match self {
            Rejection::SignIn { next } => {
                let query = serde_urlencoded::to_string([("next", sign_in_next(&next))])
                    .unwrap_or_default();
                let target = format!("/ui/sign-in?{query}");
                let mut response = Redirect::to(&target).into_response();
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, clear_cookie());
                return response;
            }
            Rejection::Forbidden(message) => (StatusCode::FORBIDDEN, message, None),
            Rejection::BadRequest(message) => (StatusCode::BAD_REQUEST, message, None),
            Rejection::Api(error) => {
                let retry_after = error.retry_after();
                (error.status(), error.message().to_string(), retry_after)
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        let mut response = (status, render(&page)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Where to return after signing in: a console path only, never another site.
pub fn sign_in_next(next: &str) -> String {
    let safe = next.starts_with("/ui/")
        && !next.contains("//")
        && !next.contains(['\\', '\r', '\n', '?', '#']);
    if safe { next } else { "/ui/" }.to_string()
}

/// A template as an HTML page; a template that fails to render is a 500, logged.
pub fn render<T: askama::Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// Whether a request that changes something comes from a page of this console: browsers send
/// `Sec-Fetch-Site` and `Origin` on every POST, and another site's page cannot forge either.
/// (The form's CSRF token is checked as well, by the handler.)
pub fn same_origin(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return false;
        }
    }
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(origin)) => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| origin == format!("https://{host}")),
        Some(Err(_)) => false,
    }
}

/// Applied to every console route: refuses cross-site state changes and sets the security
/// headers on every answer.
pub async fn guard(request: Request, next: Next) -> Response {
    let mut response = if same_origin(request.method(), request.headers()) {
        next.run(request).await
    } else {
        Rejection::Forbidden("this form must be sent from the console's own pages".into())
            .into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on the console's own forms.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        // Pages carry audit data and CSRF tokens: never from a shared or back-button cache.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn cross_site_posts_are_refused_and_reads_are_not() {
        let own = [
            ("host", "ca.example:8443"),
            ("origin", "https://ca.example:8443"),
        ];
        assert!(same_origin(&Method::POST, &headers(&own)));
        assert!(same_origin(
            &Method::POST,
            &headers(&[
                ("host", "ca.example:8443"),
                ("sec-fetch-site", "same-origin")
            ])
        ));
        assert!(!same_origin(
            &Method::POST,
            &headers(&[
                ("host", "ca.example:8443"),
                ("origin", "https://evil.example")
            ])
        ));
        assert!(!same_origin(
            &Method::POST,
            &headers(&[
                ("host", "ca.example:8443"),
                ("origin", "http://ca.example:8443")
            ])
        ));
        assert!(!same_origin(
            &Method::POST,
            &headers(&[
                ("host", "ca.example:8443"),
                ("sec-fetch-site", "cross-site")
            ])
        ));
        assert!(!same_origin(
            &Method::POST,
            &headers(&[("host", "ca.example:8443"), ("sec-fetch-site", "same-site")])
        ));
        assert!(same_origin(
            &Method::GET,
            &headers(&[("sec-fetch-site", "cross-site")])
        ));
    }

    #[test]
    fn templates_escape_what_they_are_given() {
        let page = ErrorPage {
            status: 400,
            title: "Bad Request",
            message: r#"<script>alert(1)</script><img src=x onerror="alert(2)"> & 'q'"#.into(),
        };
        let html = askama::Template::render(&page).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        // askama writes numeric character references.
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;&#60;img src=x onerror=&#34;alert(2)&#34;&#62; &#38; &#39;q&#39;"),
            "{html}"
        );
    }

    #[test]
    fn sign_in_returns_only_to_console_paths() {
        assert_eq!(sign_in_next("/ui/certificates"), "/ui/certificates");
        assert_eq!(sign_in_next("https://evil.example/"), "/ui/");
        assert_eq!(sign_in_next("//evil.example/ui/"), "/ui/");
        assert_eq!(sign_in_next("/v1/authorities"), "/ui/");
        assert_eq!(sign_in_next("/ui/a#c"), "/ui/");
        assert_eq!(sign_in_next("/ui/certificates/0a"), "/ui/certificates/0a");
    }
}
