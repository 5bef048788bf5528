//! The REST router through `oneshot`: who may call (401 and 403 with the documented body, each
//! refusal audited), what a bad request gets (400 and 404 with the same body), keyset pages
//! that list every row exactly once while rows are added, and the rotation gates.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use meshca_ca::{CertificateAuthority, IssueRequest, Requester, SpiffeId, VerifiedCsr};
use meshca_pki::keys::sha256_hex;
use meshca_ra::rest::{self, RestState};
use meshca_ra::trust::deliveries::AgentDeliveries;
use meshca_ra::trust::stream::BundleWatchers;
use meshca_ra::trust::TrustBundles;
use meshca_ra::{RestConfig, RestRole, RestToken};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{audit_events, csr_pem, start_ca, TRUST_DOMAIN};

const ADMIN: &str = "Bearer admin-secret";
const AUDITOR: &str = "Bearer auditor-secret";

/// The router over a fresh CA, with an `admin` and an `audit` token.
pub struct Api {
    pub router: Router,
    pub ca: CertificateAuthority,
    /// The client address requests come from, as the TLS listener reports it (none: unknown).
    pub peer: Option<std::net::SocketAddr>,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers and the body as JSON (`Value::Null` when it is not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

// === impl Api ===

impl Api {
    pub async fn start() -> Self {
        Self::start_limiting(None).await
    }

    /// With `rest.failed_auth_limit = limit`, requests coming from 10.0.0.66.
    pub async fn start_limiting(limit: Option<meshca_ra::limits::RateLimit>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = start_ca(dir.path()).await;
        let token = |name: &str, secret: &str, role| RestToken {
            name: name.into(),
            sha256: sha256_hex(secret.as_bytes()),
            role,
        };
        let config = RestConfig {
            tokens: vec![
                token("ops", "admin-secret", RestRole::Admin),
                token("audit", "auditor-secret", RestRole::Auditor),
            ],
            ..RestConfig::default()
        };
        let mut state = rest_state(&ca, &config);
        if let Some(limit) = limit {
            state.failed_auth = meshca_ra::rest::FailedAuthLimit::new(limit, 100, Arc::default());
        }
        Self {
            router: rest::router(state, meshca_ra::console::router()),
            ca,
            peer: limit.map(|_| "10.0.0.66:50000".parse().unwrap()),
            _dir: dir,
        }
    }

    /// A router over the same CA whose configuration no longer holds any token.
    pub async fn without_tokens(&self) -> Api {
        Self {
            router: rest::router(
                rest_state(&self.ca, &RestConfig::default()),
                meshca_ra::console::router(),
            ),
            ca: self.ca.clone(),
            peer: self.peer,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `method uri` with `authorization` as the whole header value, and a JSON body.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        authorization: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = match body {
            Some(json) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let mut request = request;
        if let Some(remote_addr) = self.peer {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(rest::RestPeer(
                    meshca_ra::tls::PeerInfo {
                        remote_addr,
                        certs: Arc::default(),
                    },
                )));
        }
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str, authorization: &str) -> Answer {
        self.call(Method::GET, uri, Some(authorization), None).await
    }

    async fn revoke(&self, serial: &str, authorization: &str) -> Answer {
        let uri = format!("/v1/certificates/{serial}/revoke");
        let body = json!({ "reason": "keyCompromise" });
        self.call(Method::POST, &uri, Some(authorization), Some(body))
            .await
    }

    /// Issues a certificate for `default/<service_account>`; returns its serial.
    pub async fn issue(&self, service_account: &str) -> String {
        let id = SpiffeId::new(&format!(
            "spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}"
        ))
        .unwrap();
        let csr = VerifiedCsr::from_pem(&csr_pem(&[])).unwrap();
        let requester = Requester {
            method: "jwt".into(),
            principal: format!("system:serviceaccount:default:{service_account}"),
            ..Requester::default()
        };
        let request = IssueRequest {
            csr: &csr,
            spiffe_id: &id,
            requested_ttl_secs: 3600,
            requester: &requester,
            bundle_as_of: None,
        };
        self.ca.issue(request).await.unwrap().serial.to_hex()
    }
}

/// The REST state over `ca` with `config`.
fn rest_state(ca: &CertificateAuthority, config: &RestConfig) -> RestState {
    let bundles = TrustBundles::start(ca.clone(), &Default::default()).unwrap();
    let watchers = Arc::new(BundleWatchers::default());
    let agents = AgentDeliveries::start(watchers, ca.store().clone());
    let mut state =
        RestState::new(config, ca.clone(), bundles, agents).expect("valid token hashes");
    // The gates' propagation counts are what these tests look at, not the wait.
    state.rotation.settle = std::time::Duration::ZERO;
    state
}

/// The API's error body, exactly.
fn error(kind: &str, message: &str) -> Value {
    json!({ "error": kind, "message": message })
}

#[tokio::test]
async fn callers_need_a_known_bearer_token_with_the_role() {
    let api = Api::start().await;
    let serial = api.issue("web").await;

    for (authorization, message) in [
        (
            None,
            "a bearer token or a mesh client certificate is required",
        ),
        (
            Some("Basic b3BzOnNlY3JldA=="),
            "Authorization must be \"Bearer <token>\"",
        ),
        (Some("Bearer admin-secreT"), "unknown token"),
    ] {
        let answer = api
            .call(Method::GET, "/v1/certificates", authorization, None)
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{message}");
        assert_eq!(answer.body, error("unauthenticated", message));
        let challenge = &answer.headers[header::WWW_AUTHENTICATE];
        assert_eq!(challenge, "Bearer realm=\"meshca\"");
    }

    // An auditor reads, but may not change anything.
    let listed = api.get("/v1/certificates", AUDITOR).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["certificates"][0]["serial"], serial);
    let refused = api.revoke(&serial, AUDITOR).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.body,
        error("forbidden", "token audit lacks the admin role")
    );
    let shown = api
        .get(&format!("/v1/certificates/{serial}"), AUDITOR)
        .await;
    assert_eq!(shown.body["status"], "valid", "the 403 changed nothing");

    // An admin may.
    let revoked = api.revoke(&serial, ADMIN).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
    assert_eq!(revoked.body["revocation"]["reason"], "keyCompromise");

    let health = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "health needs no credential");

    // Each refusal is in the audit log, with the status the caller got.
    let denials = audit_events(&api.ca, "rest.authenticate", 4).await;
    let mut seen: Vec<(String, String, i64)> = denials
        .iter()
        .map(|e| {
            let details: Value = serde_json::from_str(&e.details).unwrap();
            assert_eq!(e.outcome, "denied");
            let status = details["status"].as_i64().unwrap();
            (e.actor_principal.clone(), e.target.clone(), status)
        })
        .collect();
    seen.sort();
    let revoke_path = format!("/v1/certificates/{serial}/revoke");
    assert_eq!(
        seen,
        [
            ("".to_string(), "/v1/certificates".to_string(), 401),
            ("".to_string(), "/v1/certificates".to_string(), 401),
            ("".to_string(), "/v1/certificates".to_string(), 401),
            ("audit".to_string(), revoke_path, 403),
        ]
    );
}

#[tokio::test]
async fn bad_requests_get_the_documented_error_body() {
    let api = Api::start().await;
    api.issue("web").await;

    // `None`: axum's query parser refused it, in its own words but in the same body.
    for (uri, message) in [
        (
            "/v1/certificates?limit=0",
            Some("limit must be between 1 and 1000, not 0"),
        ),
        (
            "/v1/certificates?limit=1001",
            Some("limit must be between 1 and 1000, not 1001"),
        ),
        (
            "/v1/certificates?cursor=audit.5",
            Some("cursor is not one this listing returned"),
        ),
        (
            "/v1/certificates?cursor=certificates.-5",
            Some("cursor is not one this listing returned"),
        ),
        (
            "/v1/certificates?issued_after=yesterday",
            Some("issued_after: \"yesterday\" is not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)"),
        ),
        (
            "/v1/certificates/not-hex",
            Some("\"not-hex\" is not a hex serial number"),
        ),
        (
            "/v1/audit?cursor=certificates.1",
            Some("cursor is not one this listing returned"),
        ),
        (
            "/v1/audit?limit=0",
            Some("limit must be between 1 and 1000, not 0"),
        ),
        ("/v1/certificates?limit=ten", None),
        ("/v1/certificates?colour=blue", None),
        ("/v1/certificates?status=lost", None),
        ("/v1/certificates/export?cursor=certificates.1", None),
    ] {
        let answer = api.get(uri, AUDITOR).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri}");
        let body = answer.body.as_object().expect("a JSON object");
        let keys: Vec<&str> = body.keys().map(String::as_str).collect();
        assert_eq!(keys, ["error", "message"], "{uri}");
        assert_eq!(body["error"], "invalid_argument", "{uri}");
        match message {
            Some(message) => assert_eq!(body["message"], message, "{uri}"),
            None => assert!(body["message"].as_str().is_some_and(|m| !m.is_empty())),
        }
    }

    let missing = api.get("/v1/certificates/0abc", AUDITOR).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.body,
        error("not_found", "no certificate with serial 0abc")
    );
    let missing = api.revoke("0abc", ADMIN).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.body,
        error("not_found", "no certificate with serial 0abc")
    );
    let nowhere = api.call(Method::GET, "/v2/certificates", None, None).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.body, error("not_found", "no such endpoint"));
}

/// Follows `next_cursor` from `first` to the last page; returns each page's `field` values
/// (`serial` of certificates, `target` of audit events). `between` runs after the first page.
async fn walk(
    api: &Api,
    first: &str,
    list: &str,
    field: &str,
    between: impl AsyncFnOnce(),
) -> Vec<Vec<String>> {
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut uri = first.to_string();
    let mut between = Some(between);
    loop {
        let answer = api.get(&uri, AUDITOR).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.body);
        let values = answer.body[list].as_array().unwrap().iter();
        pages.push(values.map(|v| v[field].as_str().unwrap().into()).collect());
        if let Some(between) = between.take() {
            between().await;
        }
        let Some(cursor) = answer.body["next_cursor"].as_str() else {
            return pages;
        };
        assert!(pages.len() < 20, "paging does not end");
        uri = format!("{first}&cursor={cursor}");
    }
}

#[tokio::test]
async fn keyset_pages_list_every_row_once_while_rows_are_added() {
    let api = Api::start().await;
    let mut issued = Vec::new();
    for i in 0..7 {
        issued.push(api.issue(&format!("w{i}")).await);
    }
    let newest_first: Vec<String> = issued.iter().rev().cloned().collect();

    // A certificate issued after the first page is newer than every cursor: the pages that
    // follow neither repeat a row nor skip one because of it.
    let late = std::cell::OnceCell::new();
    let pages = walk(
        &api,
        "/v1/certificates?limit=3",
        "certificates",
        "serial",
        async || late.set(api.issue("late").await).unwrap(),
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(
        pages.concat(),
        newest_first,
        "no duplicate, no gap, newest first"
    );

    // From the start again the late one leads; a last page that is exactly full ends the walk.
    let pages = walk(
        &api,
        "/v1/certificates?limit=4",
        "certificates",
        "serial",
        async || {},
    )
    .await;
    let late = late.into_inner().expect("issued after the first page");
    let all: Vec<String> = std::iter::once(late).chain(newest_first).collect();
    assert_eq!(pages.concat(), all);
    assert_eq!(pages.len(), 2);

    // The audit log pages the same way: one certificate.issue event per certificate.
    let pages = walk(
        &api,
        "/v1/audit?action=certificate.issue&limit=3",
        "events",
        "target",
        async || {},
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
    assert_eq!(pages.concat(), all);
}

/// `activate` waits until every live identity has renewed since the new root joined the
/// bundle, `revoke` until the old authority has nothing live; each refusal is a 409 naming what
/// it waits for, and `force=true` takes the step anyway, audited as forced.
#[tokio::test]
async fn gated_steps_answer_409_naming_what_they_wait_for_unless_forced() {
    let api = Api::start().await;
    let first = api.ca.current_authority().id().to_string();
    let first_serial = api.issue("web").await;
    let prepared = api
        .call(
            Method::POST,
            "/v1/authorities",
            Some(ADMIN),
            Some(json!({"generate": {}})),
        )
        .await;
    assert_eq!(prepared.status, StatusCode::CREATED);
    let id = prepared.body["id"].as_str().unwrap().to_string();
    let waiting =
        "1 of 1 live workload certificates was answered before its root joined the bundle";
    assert_eq!(prepared.body["gate"]["step"], "activate");
    assert_eq!(prepared.body["gate"]["open"], false);
    assert_eq!(prepared.body["gate"]["waiting_for"], json!([waiting]));
    assert_eq!(prepared.body["propagation"]["identities"]["live"], 1);

    let activate = format!("/v1/authorities/{id}/activate");
    let refused = api.call(Method::POST, &activate, Some(ADMIN), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains(waiting) && message.contains("force=true"),
        "{message}"
    );
    assert_eq!(
        api.ca.authorities().get(&id).unwrap().state.as_str(),
        "prepared"
    );

    // The identity renews (its answer holds the new root), but that may be one pod of several
    // sharing it: the first certificate still counts until it expires or is revoked.
    api.issue("web").await;
    let shown = api.get(&format!("/v1/authorities/{id}"), AUDITOR).await;
    assert_eq!(
        shown.body["propagation"]["identities"],
        json!({"renewed": 1, "live": 1})
    );
    assert_eq!(
        shown.body["propagation"]["certificates"],
        json!({"holding": 1, "live": 2})
    );
    assert_eq!(shown.body["gate"]["open"], false, "{}", shown.body);
    assert_eq!(
        api.revoke(&first_serial, ADMIN).await.status,
        StatusCode::OK
    );
    let shown = api.get(&format!("/v1/authorities/{id}"), AUDITOR).await;
    assert_eq!(shown.body["gate"]["open"], true, "{}", shown.body);
    assert_eq!(shown.body["propagation"]["complete"], true);
    let activated = api.call(Method::POST, &activate, Some(ADMIN), None).await;
    assert_eq!(activated.status, StatusCode::OK, "{}", activated.body);

    let taint = format!("/v1/authorities/{first}/taint");
    let tainted = api.call(Method::POST, &taint, Some(ADMIN), None).await;
    assert_eq!(tainted.status, StatusCode::OK);
    let revoke = format!("/v1/authorities/{first}/revoke");
    let refused = api.call(Method::POST, &revoke, Some(ADMIN), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains("1 certificate it signed is still live"),
        "{message}"
    );
    let forced = format!("{revoke}?force=true");
    let revoked = api.call(Method::POST, &forced, Some(ADMIN), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["state"], "revoked");

    let events = audit_events(&api.ca, "authority.revoke", 2).await;
    let details: Value = serde_json::from_str(&events[0].details).unwrap();
    assert_eq!(events[0].outcome, "success");
    assert_eq!(details["forced"], true);
    assert_eq!(
        details["forced_past"],
        json!(["1 certificate it signed is still live"])
    );
    assert_eq!(events[1].outcome, "refused", "the refusal is on record too");
}

/// `rest.failed_auth_limit`: an address that keeps failing to authenticate is answered 429
/// with `Retry-After`, even with a good token, until its bucket refills; the failures before
/// that are audited, the 429s are not. Requests without any credential spend nothing.
#[tokio::test]
async fn an_address_guessing_tokens_is_held_back() {
    let limit = meshca_ra::limits::RateLimit { rate: 1, burst: 3 };
    let api = Api::start_limiting(Some(limit)).await;
    for _ in 0..5 {
        let anonymous = api.call(Method::GET, "/v1/certificates", None, None).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    }
    for guess in ["Bearer a", "Bearer b", "Bearer c"] {
        assert_eq!(
            api.get("/v1/certificates", guess).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let held = api.get("/v1/certificates", ADMIN).await;
    assert_eq!(held.status, StatusCode::TOO_MANY_REQUESTS, "{}", held.body);
    assert_eq!(held.body["error"], "rate_limited");
    assert_eq!(held.headers[header::RETRY_AFTER], "1");
    // The five anonymous requests and the three guesses; the held-back request is not there.
    assert_eq!(audit_events(&api.ca, "rest.authenticate", 8).await.len(), 8);
    // A second later the address has one failure to spend again, and the admin gets in
    // (a success spends nothing).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(
            api.get("/v1/certificates", ADMIN).await.status,
            StatusCode::OK
        );
    }

    // Negative control: the same calls from an address the listener did not report are
    // never held back.
    let unlimited = Api::start().await;
    for guess in ["Bearer a", "Bearer b", "Bearer c", "Bearer d"] {
        assert_eq!(
            unlimited.get("/v1/certificates", guess).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        unlimited.get("/v1/certificates", ADMIN).await.status,
        StatusCode::OK
    );
}
