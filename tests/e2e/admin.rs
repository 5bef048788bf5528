//! The admin REST API against a real `meshca server --dev` with a real `meshca agent --dev`
//! connected: a full root rotation (prepare → activate → taint → revoke) seen from the API and
//! from the workload, across a server restart; authentication and roles; illegal steps.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meshca_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshca_proto::workload::{X509BundlesRequest, X509BundlesResponse, X509svidRequest};
use serde_json::{json, Value};
use tonic::Streaming;

use crate::harness::*;

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// A dev server's REST token (`admin-token`, `auditor-token`).
pub(crate) fn read_token(data: &Path, name: &str) -> String {
    std::fs::read_to_string(data.join("dev").join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// Roots (DER, concatenated) in the workload's next bundle message, waiting at most `within`.
async fn next_bundle(stream: &mut Streaming<X509BundlesResponse>, within: Duration) -> Vec<u8> {
    let message = tokio::time::timeout(within, stream.message())
        .await
        .expect("a bundle update in time")
        .unwrap()
        .unwrap();
    message.bundles["cluster.local"].clone()
}

fn state_of(list: &Value, id: &str) -> String {
    list["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

#[tokio::test]
async fn root_rotation_end_to_end_with_a_connected_agent() {
    use reqwest::Method;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let data_arg = data.to_str().unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rest_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server_args = ["server", "--dev", "--data-dir", data_arg];
    let server_env = [
        ("MESHCA_GRPC_LISTEN", grpc.to_string()),
        ("MESHCA_METRICS_LISTEN", metrics.to_string()),
        ("MESHCA_REST_LISTEN", rest_addr.to_string()),
        ("MESHCA_ROTATION_SETTLE", "0s".to_string()),
    ];
    let mut server = MeshcaProcess::start(&server_args, &server_env, tmp.path(), grpc, metrics);
    let first_root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let admin = read_token(&data, "admin-token");
    let auditor = read_token(&data, "auditor-token");
    let rest = Rest::new(rest_addr, &first_root);

    // Authentication and roles.
    let (status, body) = rest.call(Method::GET, "/v1/authorities", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthenticated");
    assert_eq!(rest.get("/v1/authorities", "not-a-token").await.0, 401);
    let (status, body) = rest
        .post("/v1/authorities", &auditor, json!({"generate": {}}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("admin"),
        "{body}"
    );
    let (status, pem_bundle) = rest.call(Method::GET, "/v1/trust-bundle", None, None).await;
    assert_eq!(status, 200, "the trust bundle is public");
    assert_eq!(pem_bundle, Value::String(first_root.clone()));

    // A workload beside the agent watches its bundle.
    let agent_health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = MeshcaProcess::start(
        &["agent", "--dev", "--data-dir", data_arg],
        &[
            ("MESHCA_AGENT_CA_ADDR", grpc.to_string()),
            ("MESHCA_AGENT_METRICS_LISTEN", agent_health.to_string()),
        ],
        tmp.path(),
        agent_health,
        agent_health,
    );
    let channel = meshca_agent::workload_api::unix_channel(data.join("agent/spiffe.sock"))
        .await
        .unwrap();
    let mut workload = SpiffeWorkloadApiClient::new(channel);
    let mut bundles = workload
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_bundle(&mut bundles, Duration::from_secs(10)).await,
        der_of(&first_root)
    );
    let mut svids = workload
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first_svid = svids.message().await.unwrap().unwrap().svids.remove(0);

    let (status, list) = rest.get("/v1/authorities", &auditor).await;
    assert_eq!(status, 200, "{list}");
    let old_id = list["authorities"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["authorities"][0]["state"], "active");
    assert!(
        list["authorities"][0]["live_certificates"]
            .as_i64()
            .unwrap()
            >= 1
    );

    // Prepare: the new root reaches the workload within 5 s; propagation shows it.
    let (status, prepared) = rest
        .post(
            "/v1/authorities",
            &admin,
            json!({"generate": {"key_type": "ec-p256"}}),
        )
        .await;
    assert_eq!(status, 201, "{prepared}");
    assert_eq!(prepared["state"], "prepared");
    let new_id = prepared["id"].as_str().unwrap().to_string();
    let widened = next_bundle(&mut bundles, Duration::from_secs(5)).await;
    assert!(widened.starts_with(&der_of(&first_root)) && widened.len() > first_root.len() / 2);
    let new_root_der = widened[der_of(&first_root).len()..].to_vec();
    let (_, shown) = rest
        .get(&format!("/v1/authorities/{new_id}"), &auditor)
        .await;
    assert_eq!(
        shown["propagation"]["agents"],
        json!({"received": 1, "connected": 1}),
        "{shown}"
    );
    assert_eq!(shown["live_certificates"], 0);
    // The agent's certificate predates the new root: an istio-agent in its place would not
    // hold it yet, so the activation gate is closed.
    assert_eq!(shown["propagation"]["identities"]["renewed"], 0, "{shown}");
    assert_eq!(shown["gate"]["open"], false, "{shown}");

    // Illegal steps name the state they need; unknown ids are 404.
    let (status, body) = rest
        .post(
            &format!("/v1/authorities/{new_id}/taint"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("needs it old"),
        "{body}"
    );
    let (status, _) = rest
        .post(
            &format!("/v1/authorities/{new_id}/revoke"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = rest
        .post(
            &format!("/v1/authorities/{old_id}/activate"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "the active authority is not prepared");
    let (status, _) = rest
        .post("/v1/authorities/00ff/activate", &admin, json!({}))
        .await;
    assert_eq!(status, 404);

    // Activate (forced past the identity the agent holds; the drill tests the gated way):
    // new certificates chain to the new root; the old one is `old`.
    let (status, body) = rest
        .post(
            &format!("/v1/authorities/{new_id}/activate"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("answered before its root joined the bundle"),
        "{body}"
    );
    let (status, body) = rest
        .post(
            &format!("/v1/authorities/{new_id}/activate?force=true"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");
    let token = std::fs::read_to_string(data.join("dev/token")).unwrap();
    // The RA now serves a certificate from the new authority: trust the whole bundle.
    let (_, bundle_pem) = rest
        .call(reqwest::Method::GET, "/v1/trust-bundle", None, None)
        .await;
    let bundle_pem = bundle_pem.as_str().unwrap().to_string();
    let rest = Rest::new(rest_addr, &bundle_pem);
    let mut ca = ca_client(grpc, &bundle_pem, None).await;
    let key = WorkloadKey::ec();
    let response = create_certificate(
        &mut ca,
        &key.csr(&["spiffe://cluster.local/ns/default/sa/default"]),
        0,
        Some(token.trim()),
        None,
    )
    .await
    .expect("issued under the new authority");
    // The answer ends in the whole bundle (both roots), not just the signer's.
    assert_eq!(response.cert_chain.last().unwrap(), &bundle_pem);

    // Restart between steps: nothing is lost.
    server.stop();
    server = MeshcaProcess::start(&server_args, &server_env, tmp.path(), grpc, metrics);
    let (_, list) = rest.get("/v1/authorities", &auditor).await;
    assert_eq!(state_of(&list, &old_id), "old");
    assert_eq!(state_of(&list, &new_id), "active");

    // Taint the old authority: the agent rotates onto the new one without waiting for
    // half-life (its certificate lives 24 h).
    let (status, body) = rest
        .post(
            &format!("/v1/authorities/{old_id}/taint"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rotated = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let message = svids.message().await.unwrap().unwrap();
            if message.svids[0].x509_svid != first_svid.x509_svid {
                return message.svids[0].clone();
            }
        }
    })
    .await
    .expect("the agent rotated after the taint");
    let leaf = meshca_ca::x509::ParsedCert::from_der(&rotated.x509_svid).unwrap();
    assert_eq!(hex(&leaf.authority_key_id().unwrap()), new_id);

    // Renewal with a certificate from the tainted authority is refused.
    let old_leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", first_svid.x509_svid.clone()));
    let old_key_pem = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        first_svid.x509_svid_key.clone(),
    ));
    let mut renewing = ca_client(grpc, &bundle_pem, Some((&old_leaf_pem, &old_key_pem))).await;
    let refused = create_certificate(
        &mut renewing,
        &key.csr(&["spiffe://cluster.local/ns/default/sa/default"]),
        0,
        None,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Revoke (its certificates live 24 h, so forced): the old root leaves the workload's
    // bundle and the public bundle.
    let (status, body) = rest
        .post(
            &format!("/v1/authorities/{old_id}/revoke"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("still live"),
        "{body}"
    );
    let (status, body) = rest
        .post(
            &format!("/v1/authorities/{old_id}/revoke?force=true"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let narrowed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let roots = next_bundle(&mut bundles, Duration::from_secs(10)).await;
            if roots == new_root_der {
                return roots;
            }
        }
    })
    .await
    .expect("the old root left the bundle");
    assert_eq!(narrowed, new_root_der);
    let (status, pem_bundle) = rest.call(Method::GET, "/v1/trust-bundle", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(der_of(pem_bundle.as_str().unwrap()), new_root_der);
    let (_, list) = rest.get("/v1/authorities", &auditor).await;
    assert_eq!(state_of(&list, &old_id), "revoked");
    drop(server);
}

#[tokio::test]
async fn trust_bundle_formats_and_etag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let server = dev_server(tmp.path(), &[]);
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let rest = Rest::new(server.rest, &root);
    let url = format!("{}/v1/trust-bundle", rest.base);

    let response = rest.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(response.text().await.unwrap(), root);

    let cached = rest
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    // The SPIFFE bundle format: a JWK set, one x509-svid key per root, x5c = the root.
    let response = rest
        .client
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let bundle: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let keys = bundle["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["use"], "x509-svid");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    use base64::Engine;
    let x5c = base64::engine::general_purpose::STANDARD
        .decode(keys[0]["x5c"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(x5c, der_of(&root));

    // Unknown endpoints are JSON 404s, not HTML.
    let (status, body) = rest.get("/v1/nope", "x").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
}

/// Every endpoint answers 401 without credentials and 403 to a role below the one it needs;
/// a mesh client certificate listed in `rest.admins` is an admin.
#[tokio::test]
async fn every_endpoint_requires_its_role() {
    use reqwest::Method;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("meshca-dev");
    let admin_id = "spiffe://cluster.local/ns/default/sa/default";
    // Every endpoint is probed with a wrong token: more failures than an address may spend
    // (rest.failed_auth_limit), which is not what this test is about.
    let server = dev_server(
        tmp.path(),
        &[
            ("MESHCA_REST_ADMINS", admin_id.to_string()),
            ("MESHCA_REST_FAILED_AUTH_LIMIT_RATE", "0".into()),
        ],
    );
    let grpc = server.grpc;
    let root = std::fs::read_to_string(data.join("root-cert.pem")).unwrap();
    let rest = Rest::new(server.rest, &root);
    let admin = read_token(&data, "admin-token");
    let auditor = read_token(&data, "auditor-token");

    let endpoints: [(Method, &str, bool); 16] = [
        (Method::GET, "/v1/authorities", false),
        (Method::GET, "/v1/authorities/00ff", false),
        (Method::POST, "/v1/authorities", true),
        (Method::POST, "/v1/authorities/00ff/activate", true),
        (Method::POST, "/v1/authorities/00ff/taint", true),
        (Method::POST, "/v1/authorities/00ff/revoke", true),
        (Method::GET, "/v1/certificates", false),
        (Method::GET, "/v1/certificates/export", false),
        (Method::GET, "/v1/certificates/00ff", false),
        (Method::POST, "/v1/certificates/00ff/revoke", true),
        (Method::GET, "/v1/crl", false),
        (Method::GET, "/v1/audit", false),
        (Method::GET, "/v1/audit/verify", false),
        (Method::GET, "/openapi.json", false),
        (Method::GET, "/v1/authorities?x=1", false),
        (Method::GET, "/v1/certificates?status=valid", false),
    ];
    for (method, path, admin_only) in &endpoints {
        let body = (*method == Method::POST).then(|| json!({}));
        let (status, answer) = rest.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} anonymous: {answer}");
        let (status, _) = rest
            .call(method.clone(), path, Some("wrong"), body.clone())
            .await;
        assert_eq!(status, 401, "{method} {path} unknown token");
        let (status, answer) = rest
            .call(method.clone(), path, Some(&auditor), body.clone())
            .await;
        if *admin_only {
            assert_eq!(status, 403, "{method} {path} as auditor: {answer}");
        } else {
            assert!(
                ![401, 403].contains(&status),
                "{method} {path} as auditor: {status} {answer}"
            );
        }
        let (status, answer) = rest.call(method.clone(), path, Some(&admin), body).await;
        assert!(
            ![401, 403].contains(&status),
            "{method} {path} as admin: {status} {answer}"
        );
    }

    // The OpenAPI document describes exactly these endpoints (plus the public bundle).
    let (status, document) = rest.get("/openapi.json", &auditor).await;
    assert_eq!(status, 200);
    assert_eq!(
        document["openapi"].as_str().unwrap().chars().next(),
        Some('3')
    );
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut expected: Vec<String> = endpoints
        .iter()
        .filter(|(_, path, _)| !path.contains('?') && *path != "/openapi.json")
        .map(|(method, path, _)| {
            let path = path
                .replace("/v1/authorities/00ff", "/v1/authorities/{id}")
                .replace("/v1/certificates/00ff", "/v1/certificates/{serial}");
            format!("{method} {path}")
        })
        .chain(["GET /v1/trust-bundle".to_string()])
        .collect();
    expected.sort();
    assert_eq!(documented, expected);
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .unwrap();
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["mtls"]["type"], "mutualTLS");

    // A mesh certificate listed in rest.admins: admin over mTLS, no token.
    let token = std::fs::read_to_string(data.join("dev/token")).unwrap();
    let key = WorkloadKey::ec();
    let mut ca = ca_client(grpc, &root, None).await;
    let chain = create_certificate(&mut ca, &key.csr(&[admin_id]), 0, Some(token.trim()), None)
        .await
        .unwrap()
        .cert_chain;
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", chain[0], key.key_pem()).as_bytes()).unwrap();
    let mtls = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .identity(identity)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = mtls
        .post(format!("{}/v1/authorities", rest.base))
        .header("content-type", "application/json")
        .body(json!({"generate": {"key_type": "ec-p384"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (_, events) = rest
        .get("/v1/audit?action=authority.prepare", &auditor)
        .await;
    assert_eq!(
        events["events"][0]["actor"],
        json!({"method": "mtls", "principal": admin_id})
    );
    // The same certificate signs in to the web console; the session is worth nothing on a
    // connection without it.
    let signed_in = mtls
        .post(format!("{}/ui/sign-in", rest.base))
        .header("origin", &rest.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("with=certificate&next=%2Fui%2Fauthorities")
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = mtls
        .get(format!("{}/ui/authorities", rest.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(admin_id) && html.contains("id=\"prepare\""),
        "an admin's page"
    );
    let elsewhere = rest
        .client
        .get(format!("{}/ui/authorities", rest.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.url().path(),
        "/ui/sign-in",
        "the cookie without the certificate leads back to sign-in"
    );
    // The failed attempts above are on record too (written without holding up the answers).
    let expected = 2 * endpoints.len();
    let recorded = rest
        .audit_events_until("action=rest.authenticate&limit=1000", &auditor, |n| {
            n >= expected
        })
        .await;
    assert!(
        recorded >= expected,
        "{recorded} denials on record, expected {expected}"
    );
}
