//! `meshca server` refusing what istio-agent must not get: every bad credential and every bad
//! request answered with Istio's code, no certificate, nothing recorded, the failure counted.
//! Shares the server of [`crate::ra`].

use meshca_ca::testing::{CaSpec, TestCa};
use serde_json::json;
use tonic::Code;

use crate::harness::*;
use crate::ra::world;

/// Each refusal: the right code, no certificate, nothing on record, the failure counted.
#[tokio::test]
async fn refusals_issue_nothing_and_are_counted() {
    let w = world();
    let root = w.root();
    let now = now_secs();
    let claims = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = sa_claims(K8S_ISSUER, "default", "web");
        f(&mut c);
        c
    };
    let good = w.es256.mint(&sa_claims(K8S_ISSUER, "default", "web"));
    let (h, p, s) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            sa_claims(K8S_ISSUER, "default", "web")
                .to_string()
                .as_bytes()
        )
    );
    let hs256_with_public_key = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(w.rs256.kid.clone());
        jsonwebtoken::encode(
            &header,
            &sa_claims(K8S_ISSUER, "default", "web"),
            &jsonwebtoken::EncodingKey::from_secret(w.rs256.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let tampered = format!(
        "{h}.{}.{s}",
        b64url(
            sa_claims(K8S_ISSUER, "kube-system", "admin")
                .to_string()
                .as_bytes()
        )
    );
    let _ = p;
    let unknown_ca = TestCa::new(&CaSpec::new("CN=Rogue Athenz CA"), None);

    struct Case {
        name: &'static str,
        token: Option<String>,
        cluster: Option<&'static str>,
        client_cert: Option<TestCa>,
    }
    let token_case = |name, token: String| Case {
        name,
        token: Some(token),
        cluster: None,
        client_cert: None,
    };
    let tr_case = |name, token: &str, cluster| Case {
        name,
        token: Some(token.into()),
        cluster: Some(cluster),
        client_cert: None,
    };
    let cert_case = |name, cert| Case {
        name,
        token: None,
        cluster: None,
        client_cert: Some(cert),
    };
    let cases = vec![
        Case {
            name: "no credential",
            token: None,
            cluster: None,
            client_cert: None,
        },
        token_case("malformed token", "not.a.jwt".into()),
        token_case("alg none", alg_none),
        token_case("HS256 keyed with the RSA public key", hs256_with_public_key),
        token_case(
            "wrong iss",
            w.es256
                .mint(&claims(&|c| c["iss"] = json!("https://evil.example"))),
        ),
        token_case(
            "wrong aud",
            w.es256.mint(&claims(&|c| c["aud"] = json!(["kubernetes"]))),
        ),
        token_case(
            "expired",
            w.es256.mint(&claims(&|c| {
                c["iat"] = json!(now - 7200);
                c["nbf"] = json!(now - 7200);
                c["exp"] = json!(now - 3600);
            })),
        ),
        token_case(
            "nbf in the future",
            w.es256.mint(&claims(&|c| c["nbf"] = json!(now + 600))),
        ),
        token_case(
            "unknown kid",
            w.stranger.mint(&sa_claims(K8S_ISSUER, "default", "web")),
        ),
        token_case("tampered payload", tampered),
        token_case(
            "sub is not a service account",
            w.es256.mint(&claims(&|c| c["sub"] = json!("admin"))),
        ),
        Case {
            name: "unknown cluster id",
            token: Some(good.clone()),
            cluster: Some("elsewhere"),
            client_cert: None,
        },
        tr_case("TokenReview unauthenticated", "tr-revoked-token", "tr"),
        tr_case("TokenReview not a service account", "tr-node", "tr"),
        tr_case("TokenReview malformed username", "tr-malformed-user", "tr"),
        tr_case("TokenReview API server down", "tr-good-default-web", "down"),
        cert_case(
            "Athenz cert from an unknown CA",
            w.athenz_cert(
                &unknown_ca,
                "sports.prod.api",
                "spiffe://sports.prod/sa/api",
                false,
            ),
        ),
        cert_case(
            "expired Athenz cert",
            w.athenz_cert(
                &w.athenz_ca,
                "sports.prod.api",
                "spiffe://sports.prod/sa/api",
                true,
            ),
        ),
        cert_case(
            "Athenz CN and URI disagree",
            w.athenz_cert(
                &w.athenz_ca,
                "sports.prod.api",
                "spiffe://sports.prod/sa/admin",
                false,
            ),
        ),
    ];
    for case in cases {
        let before = w
            .server
            .metric("citadel_server_authentication_failure_count");
        let mut client = match &case.client_cert {
            Some(cert) => {
                ca_client(w.server.grpc, &root, Some((&cert.pem(), &cert.key_pem()))).await
            }
            None => w.client().await,
        };
        let key = WorkloadKey::ec();
        let err = create_certificate(
            &mut client,
            &key.csr(&[]),
            0,
            case.token.as_deref(),
            case.cluster,
        )
        .await
        .expect_err(case.name);
        assert_eq!(err.code(), Code::Unauthenticated, "{}: {err:?}", case.name);
        assert_eq!(
            err.message(),
            "request authenticate failure",
            "{}",
            case.name
        );
        let after = w
            .server
            .metric("citadel_server_authentication_failure_count");
        assert_eq!(after - before, 1.0, "{}: failure counted once", case.name);
        let records = w
            .store()
            .await
            .issuances_for_public_key(&key.public_key_sha256())
            .await
            .unwrap();
        assert!(records.is_empty(), "{}: nothing recorded", case.name);
    }
}

/// CSR and policy refusals after a successful authentication: INVALID_ARGUMENT naming what
/// was wrong, nothing issued.
#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let w = world();
    let mut client = w.client().await;
    let token = w.es256.mint(&sa_claims(K8S_ISSUER, "default", "web"));
    let key = WorkloadKey::ec();

    let err = create_certificate(
        &mut client,
        &key.csr(&["spiffe://cluster.local/ns/kube-system/sa/admin"]),
        0,
        Some(&token),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("spiffe://cluster.local/ns/kube-system/sa/admin"),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("spiffe://cluster.local/ns/default/sa/web"),
        "{}",
        err.message()
    );

    let mut der = pem::parse(key.csr(&[])).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0xff;
    let bad_sig = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = create_certificate(&mut client, &bad_sig, 0, Some(&token), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("signature"), "{}", err.message());

    let weak = openssl_csr(&["-newkey", "rsa:1024"]);
    let err = create_certificate(&mut client, &weak, 0, Some(&token), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("RSA-1024"), "{}", err.message());

    let oversized = format!("{}{}", key.csr(&[]), " ".repeat(70 * 1024));
    let err = create_certificate(&mut client, &oversized, 0, Some(&token), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("65536"), "{}", err.message());

    let err = create_certificate(&mut client, &key.csr(&[]), 49 * 3600, Some(&token), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "requested TTL 49h is greater than the max allowed TTL 2d"
    );

    // Above the transport's 4 MiB limit the message never reaches the handler.
    let huge = "A".repeat(5 * 1024 * 1024);
    let err = create_certificate(&mut client, &huge, 0, Some(&token), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );

    let records = w
        .store()
        .await
        .issuances_for_public_key(&key.public_key_sha256())
        .await
        .unwrap();
    assert!(records.is_empty());
    assert!(
        w.server
            .metric("citadel_server_csr_sign_err_count{error=\"identity_mismatch\"}")
            >= 1.0
    );
    assert!(
        w.server
            .metric("citadel_server_csr_sign_err_count{error=\"csr_error\"}")
            >= 3.0
    );
    assert!(
        w.server
            .metric("citadel_server_csr_sign_err_count{error=\"ttl_error\"}")
            >= 1.0
    );
}
