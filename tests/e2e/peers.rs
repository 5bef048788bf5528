//! The third parties meshca talks to, on loopback: a Kubernetes API server that answers
//! TokenReview exactly as `authentication.k8s.io/v1` does and serves core/v1 namespaces and
//! ConfigMaps through meshca-ra's fake (the one test double: no API server runs here), and an
//! OIDC issuer serving discovery and JWKS documents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshca_ca::testing::{CaSpec, LeafSpec, TestCa};
use meshca_kube::fake::FakeApiServer;
use serde_json::{json, Value};

pub const REVIEWER_TOKEN: &str = "meshca-reviewer-token";

/// Counts TokenReview calls per token, to see the cache at work, and holds the cluster's
/// namespaces and ConfigMaps.
#[derive(Debug)]
pub struct ApiServerState {
    reviews: Mutex<HashMap<String, usize>>,
    /// Tokens bound to a pod: the `user` a review of each answers with.
    bound: Mutex<HashMap<String, Value>>,
    cluster: FakeApiServer,
}

impl Default for ApiServerState {
    fn default() -> Self {
        Self {
            reviews: Mutex::default(),
            bound: Mutex::default(),
            cluster: FakeApiServer::new(REVIEWER_TOKEN),
        }
    }
}

impl ApiServerState {
    /// The core/v1 side of the same API server: namespaces and ConfigMaps, with test hooks.
    pub fn cluster(&self) -> &FakeApiServer {
        &self.cluster
    }

    /// From now on `token` reviews as a token the kubelet projected into pod
    /// `namespace/pod` (uid `pod_uid`) of service account `service_account` on `node`: the
    /// `extra` fields of a Kubernetes 1.30+ API server.
    pub fn bind_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        pod: &str,
        pod_uid: &str,
        node: &str,
    ) {
        let user = json!({
            "username": format!("system:serviceaccount:{namespace}:{service_account}"),
            "uid": "3b1f7c2e-5d4a-4e8b-9c1d-2f3e4a5b6c7d",
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"],
                "authentication.kubernetes.io/node-name": [node],
                "authentication.kubernetes.io/node-uid": ["8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"],
                "authentication.kubernetes.io/pod-name": [pod],
                "authentication.kubernetes.io/pod-uid": [pod_uid],
            },
        });
        self.bound.lock().unwrap().insert(token.to_string(), user);
    }

    pub fn reviews_of(&self, token: &str) -> usize {
        self.reviews
            .lock()
            .unwrap()
            .get(token)
            .copied()
            .unwrap_or(0)
    }
}

/// A TLS API server on loopback; returns its address and the CA that signed its cert.
pub fn start_api_server(
    runtime: &tokio::runtime::Handle,
    state: Arc<ApiServerState>,
) -> (SocketAddr, TestCa) {
    let ca = TestCa::new(&CaSpec::new("CN=kubernetes,O=test cluster"), None);
    let serving = ca.issue_leaf(&LeafSpec {
        dns_names: vec!["kubernetes.default.svc".into()],
        ip_addrs: vec!["127.0.0.1".parse().unwrap()],
        ..LeafSpec::new("CN=kube-apiserver")
    });
    let core = state.cluster.router();
    let app = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .with_state(state)
        .merge(core);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(serving.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(serving.key.pkcs8_der().to_vec().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, ca)
}

/// TokenReview as the API server answers it. The test tokens say what the answer is.
async fn token_review(
    State(state): State<Arc<ApiServerState>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {REVIEWER_TOKEN}"));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401}),
            ),
        );
    }
    if review["apiVersion"] != "authentication.k8s.io/v1" || review["kind"] != "TokenReview" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"kind": "Status", "code": 400})),
        );
    }
    let token = review["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    *state
        .reviews
        .lock()
        .unwrap()
        .entry(token.clone())
        .or_default() += 1;
    let audiences = review["spec"]["audiences"].clone();
    let bound = state.bound.lock().unwrap().get(&token).cloned();
    let status = if let Some(user) = bound {
        json!({"authenticated": true, "user": user, "audiences": audiences})
    } else if let Some(rest) = token.strip_prefix("tr-good-") {
        let (ns, sa) = rest.split_once('-').unwrap();
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{sa}"),
                "uid": "0d3e6f1c-2b7a-4c8e-9f00-5a1b2c3d4e5f",
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["web-7d9f8"]},
            },
            "audiences": audiences,
        })
    } else if token == "tr-node" {
        json!({
            "authenticated": true,
            "user": {"username": "system:node:worker-1", "groups": ["system:nodes", "system:authenticated"]},
            "audiences": audiences,
        })
    } else if token == "tr-malformed-user" {
        json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:only-namespace", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "audiences": audiences,
        })
    } else {
        json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]", "user": {}})
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        })),
    )
}

/// An OIDC issuer at `http://<addr>` serving discovery and `jwks`.
pub fn start_oidc_issuer(runtime: &tokio::runtime::Handle, jwks: Value) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let issuer = format!("http://{addr}");
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route("/openid/v1/jwks", get(move || async move { Json(jwks) }));
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    addr
}
