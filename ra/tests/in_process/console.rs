//! The web console through the router: sessions (sign-in with a token, the cookie, sign-out,
//! a token taken out of the configuration), the CSRF and same-origin checks on every form, the
//! security headers, the auditor/admin split, and escaping of what callers control.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use meshca_ca::audit::{AuditEvent, Outcome};
use tower::ServiceExt;

use crate::rest::Api;

const HOST: &str = "meshca.test:8443";
const ORIGIN: &str = "https://meshca.test:8443";

/// A page: status, headers and the body as text.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers[header::LOCATION].to_str().unwrap()
    }
}

/// `method uri` as a browser on the console's own page sends it: the Host, the Origin on a
/// POST, the session cookie when given, and a form body.
async fn browse(
    api: &Api,
    method: Method,
    uri: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> Page {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(header::HOST, HOST);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let request = if method == Method::POST {
        request
            .header(header::ORIGIN, ORIGIN)
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
    } else {
        request.body(Body::empty())
    }
    .unwrap();
    send(api, request).await
}

async fn send(api: &Api, request: Request<Body>) -> Page {
    let response = api.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Signs in with `token`; returns the `Cookie` header value of the session.
async fn sign_in(api: &Api, token: &str) -> String {
    let page = browse(
        api,
        Method::POST,
        "/ui/sign-in",
        None,
        &[
            ("with", "token"),
            ("token", token),
            ("next", "/ui/certificates"),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/ui/certificates");
    let set_cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(token),
        "the token never reaches the browser"
    );
    set_cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token the page's forms carry.
fn csrf_of(page: &Page) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.body.find(marker).expect("the page has a form") + marker.len();
    page.body[start..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn a_token_signs_in_to_a_session_that_sign_out_ends() {
    let api = Api::start().await;
    let serial = api.issue("web").await;

    let anonymous = browse(&api, Method::GET, "/ui/certificates", None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.location(),
        "/ui/sign-in?next=%2Fui%2Fcertificates"
    );
    let form = browse(&api, Method::GET, anonymous.location(), None, &[]).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body.contains("value=\"/ui/certificates\""),
        "{}",
        form.body
    );

    let wrong = browse(
        &api,
        Method::POST,
        "/ui/sign-in",
        None,
        &[("with", "token"), ("token", "admin-secreT")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.body.contains("Not signed in: unknown token."),
        "{}",
        wrong.body
    );
    assert!(!wrong.headers.contains_key(header::SET_COOKIE));

    let cookie = sign_in(&api, "auditor-secret").await;
    let listed = browse(&api, Method::GET, "/ui/certificates", Some(&cookie), &[]).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.body.contains(&serial),
        "the inventory lists the certificate"
    );
    assert!(
        listed.body.contains("audit <em>auditor</em>"),
        "who is signed in is shown"
    );

    // The stored session is not the cookie: the table holds its hash only.
    let id = cookie.split_once('=').unwrap().1;
    let digest = meshca_pki::keys::sha256_hex(id.as_bytes());
    let now = meshca_pki::time::unix_seconds(std::time::SystemTime::now());
    let stored = api
        .ca
        .store()
        .console_session(&digest, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.principal.as_str(), stored.role.as_str()),
        ("audit", "auditor")
    );
    assert!(api
        .ca
        .store()
        .console_session(id, now)
        .await
        .unwrap()
        .is_none());

    let csrf = csrf_of(&listed);
    let forged = browse(
        &api,
        Method::POST,
        "/ui/sign-out",
        Some(&cookie),
        &[("csrf", "x")],
    )
    .await;
    assert_eq!(
        forged.status,
        StatusCode::FORBIDDEN,
        "sign-out needs the session's token"
    );
    let out = browse(
        &api,
        Method::POST,
        "/ui/sign-out",
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let after = browse(&api, Method::GET, "/ui/certificates", Some(&cookie), &[]).await;
    assert_eq!(
        after.status,
        StatusCode::SEE_OTHER,
        "the old cookie opens nothing"
    );

    let events = crate::audit_events(&api.ca, "console.sign_in", 2).await;
    // The refusal is written in the background, so the two may be in either order.
    let mut outcomes: Vec<_> = events.iter().map(|e| e.outcome.as_str()).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["denied", "success"]);
    assert!(
        events.iter().all(|e| !e.details.contains("secre")),
        "no token in the log"
    );
    let out = crate::audit_events(&api.ca, "console.sign_out", 1).await;
    assert_eq!(out[0].actor_principal, "audit");
}

#[tokio::test]
async fn an_auditor_reads_and_cannot_revoke_an_admin_revokes_after_confirming() {
    let api = Api::start().await;
    let serial = api.issue("web").await;
    let path = format!("/ui/certificates/{serial}");

    let auditor = sign_in(&api, "auditor-secret").await;
    let shown = browse(&api, Method::GET, &path, Some(&auditor), &[]).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(
        shown.body.contains("certificate.issue"),
        "its audit events are listed"
    );
    assert!(shown
        .body
        .contains("URI:spiffe://cluster.local/ns/default/sa/web"));
    assert!(
        !shown.body.contains("Revoke…"),
        "no revoke link for an auditor"
    );
    let csrf = csrf_of(&shown);
    let revoke = format!("{path}/revoke");
    let forged = browse(
        &api,
        Method::POST,
        &revoke,
        Some(&auditor),
        &[("csrf", &csrf), ("reason", "keyCompromise")],
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(
        forged.body.contains("needs the admin role"),
        "{}",
        forged.body
    );
    let confirm = browse(&api, Method::GET, &revoke, Some(&auditor), &[]).await;
    assert_eq!(confirm.status, StatusCode::FORBIDDEN);

    let admin = sign_in(&api, "admin-secret").await;
    let shown = browse(&api, Method::GET, &path, Some(&admin), &[]).await;
    assert!(shown.body.contains("Revoke…"));
    let confirm = browse(&api, Method::GET, &revoke, Some(&admin), &[]).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("This cannot be undone"));
    let csrf = csrf_of(&confirm);
    // Another session's token, and no token, are refused; nothing is revoked.
    let other_session = csrf_of(&browse(&api, Method::GET, &path, Some(&auditor), &[]).await);
    for token in [other_session.as_str(), ""] {
        let refused = browse(
            &api,
            Method::POST,
            &revoke,
            Some(&admin),
            &[("csrf", token), ("reason", "keyCompromise")],
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "csrf {token:?}");
    }
    let still = browse(&api, Method::GET, &path, Some(&admin), &[]).await;
    assert!(still.body.contains("status-valid"), "nothing was revoked");

    let bad_reason = browse(
        &api,
        Method::POST,
        &revoke,
        Some(&admin),
        &[("csrf", &csrf), ("reason", "because")],
    )
    .await;
    assert_eq!(bad_reason.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_reason.body.contains("keyCompromise"),
        "the reasons are named"
    );

    let done = browse(
        &api,
        Method::POST,
        &revoke,
        Some(&admin),
        &[("csrf", &csrf), ("reason", "keyCompromise")],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), path);
    let revoked = browse(&api, Method::GET, &path, Some(&admin), &[]).await;
    assert!(revoked.body.contains("status-revoked"));
    let crl = browse(&api, Method::GET, "/ui/crl", Some(&admin), &[]).await;
    assert!(crl.body.contains(&serial), "the CRL page lists it");
    assert!(crl.body.contains("KeyCompromise"));
    let events = crate::audit_events(&api.ca, "certificate.revoke", 1).await;
    assert_eq!(
        (
            events[0].actor_principal.as_str(),
            events[0].outcome.as_str()
        ),
        ("ops", "success"),
        "the session's identity is in the log"
    );
}

#[tokio::test]
async fn cross_site_forms_are_refused_and_every_page_sets_the_security_headers() {
    let api = Api::start().await;
    let admin = sign_in(&api, "admin-secret").await;
    let page = browse(&api, Method::GET, "/ui/authorities", Some(&admin), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = csrf_of(&page);
    for headers in [
        [(header::ORIGIN.as_str(), "https://evil.example")],
        [("sec-fetch-site", "cross-site")],
    ] {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/ui/authorities/prepare")
            .header(header::HOST, HOST)
            .header(header::COOKIE, &admin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let body = serde_urlencoded::to_string([("csrf", csrf.as_str()), ("key_type", "ec-p256")]);
        let refused = send(&api, request.body(Body::from(body.unwrap())).unwrap()).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert_eq!(
        api.ca.authorities().entries().len(),
        1,
        "nothing was prepared"
    );

    for path in [
        "/ui/",
        "/ui/sign-in",
        "/ui/certificates",
        "/ui/audit",
        "/ui/crl",
        "/ui/nope",
    ] {
        let page = browse(&api, Method::GET, path, Some(&admin), &[]).await;
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert_eq!(csp, meshca_ra::console::CONTENT_SECURITY_POLICY, "{path}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(page.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store", "{path}");
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
    }
    let missing = browse(&api, Method::GET, "/ui/nope", Some(&admin), &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("<h1>404 Not Found</h1>"));
}

#[tokio::test]
async fn what_callers_wrote_is_shown_as_text() {
    let api = Api::start().await;
    let payload = r#"<script>document.title='owned'</script><img src=x onerror="alert(1)">"#;
    api.ca
        .store()
        .append_audit(&AuditEvent::new(
            ("jwt", payload),
            "certificate.issue",
            payload,
            Outcome::Refused,
            serde_json::json!({ "reason": payload }),
        ))
        .await
        .unwrap();
    let cookie = sign_in(&api, "auditor-secret").await;
    for path in ["/ui/", "/ui/audit"] {
        let page = browse(&api, Method::GET, path, Some(&cookie), &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            !page.body.contains("<script>document"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<img src=x"), "{path}");
        assert!(
            page.body.contains("&#60;script&#62;document.title="),
            "{path}: shown, escaped"
        );
    }
}

#[tokio::test]
async fn a_token_taken_out_of_the_configuration_ends_its_sessions() {
    let api = Api::start().await;
    let cookie = sign_in(&api, "auditor-secret").await;
    assert_eq!(
        browse(&api, Method::GET, "/ui/", Some(&cookie), &[])
            .await
            .status,
        StatusCode::OK
    );
    // The same store behind a router whose configuration no longer has the token.
    let reconfigured = api.without_tokens().await;
    let ended = browse(&reconfigured, Method::GET, "/ui/", Some(&cookie), &[]).await;
    assert_eq!(ended.status, StatusCode::SEE_OTHER);
    let id = cookie.split_once('=').unwrap().1;
    let now = meshca_pki::time::unix_seconds(std::time::SystemTime::now());
    let digest = meshca_pki::keys::sha256_hex(id.as_bytes());
    assert!(
        api.ca
            .store()
            .console_session(&digest, now)
            .await
            .unwrap()
            .is_none(),
        "the session row is gone"
    );
}
