//! The REST client: the API server's refusals arrive as the variants callers act on, the token
//! file is read on every call, and TokenReview goes through the same client.

use std::sync::Arc;

use axum::routing::post;
use axum::Json;
use meshca_kube::{ConfigMap, KubeError, ListParams, Namespace, ObjectMeta};
use meshca_ra::auth::tokenreview::TokenReviewer;
use meshca_ra::config::ClusterConfig;
use serde_json::json;

use crate::{cluster, TOKEN};

fn configmap(namespace: &str, name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: [("k".to_string(), "v".to_string())].into(),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn refusals_are_decoded_into_what_callers_handle() {
    let c = cluster().await;
    c.api.add_namespace("web", &[("team", "a")]);

    let missing = c.client.get::<ConfigMap>("web", "nope").await.unwrap_err();
    assert!(matches!(missing, KubeError::NotFound(_)), "{missing}");

    let created = c.client.create(&configmap("web", "cm")).await.unwrap();
    let version = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    let again = c.client.create(&configmap("web", "cm")).await.unwrap_err();
    assert!(matches!(again, KubeError::AlreadyExists(_)), "{again}");

    let mut edit = created.clone();
    edit.data.insert("k".into(), "v2".into());
    let updated = c.client.update(&edit).await.unwrap();
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(version.as_str())
    );
    // The same edit again carries the old version: refused, with the real server's words.
    let KubeError::Conflict(status) = c.client.update(&edit).await.unwrap_err() else {
        panic!("a stale update must be a conflict")
    };
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on configmaps \"cm\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );

    c.api.mark_terminating("web");
    let refused = c
        .client
        .create(&configmap("web", "other"))
        .await
        .unwrap_err();
    assert!(refused.is_namespace_terminating(), "{refused}");
    let gone = c
        .client
        .create(&configmap("ghost", "cm"))
        .await
        .unwrap_err();
    assert!(matches!(gone, KubeError::NotFound(_)), "{gone}");

    let list = c
        .client
        .list::<Namespace>(
            None,
            &ListParams {
                label_selector: Some("team=a".into()),
                ..ListParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.items[0].is_terminating());
    assert_eq!(
        list.metadata.resource_version,
        c.api.resource_version().to_string()
    );
}

#[tokio::test]
async fn the_token_file_is_read_on_every_call() {
    let c = cluster().await;
    c.client
        .list::<Namespace>(None, &ListParams::default())
        .await
        .unwrap();
    std::fs::write(&c.token_file, "rotated-to-something-else").unwrap();
    let refused = c
        .client
        .list::<Namespace>(None, &ListParams::default())
        .await
        .unwrap_err();
    let KubeError::Api(status) = &refused else {
        panic!("{refused}")
    };
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));
    // The error names neither token.
    assert!(!refused.to_string().contains("rotated-to-something-else"));
    std::fs::write(&c.token_file, TOKEN).unwrap();
    c.client
        .list::<Namespace>(None, &ListParams::default())
        .await
        .unwrap();
}

/// TokenReview goes through the shared client: same URL, TLS and token handling as before.
#[tokio::test]
async fn token_review_uses_the_shared_client() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "reviewer").unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(
            move |headers: axum::http::HeaderMap, Json(review): Json<serde_json::Value>| {
                let record = record.clone();
                async move {
                    record
                        .lock()
                        .unwrap()
                        .push(headers["authorization"].to_str().unwrap().to_string());
                    (
                        axum::http::StatusCode::CREATED,
                        Json(json!({
                            "kind": "TokenReview",
                            "apiVersion": "authentication.k8s.io/v1",
                            "spec": review["spec"],
                            "status": {
                                "authenticated": true,
                                "user": {
                                    "username": "system:serviceaccount:web:frontend",
                                    "groups": ["system:serviceaccounts", "system:authenticated"],
                                },
                                "audiences": ["istio-ca"],
                            },
                        })),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let reviewer = TokenReviewer::new(&ClusterConfig {
        api_server_url: Some(format!("http://{addr}/")),
        api_server_token_file: Some(token_file),
        ..ClusterConfig::default()
    })
    .unwrap();
    assert_eq!(
        reviewer.review("workload-token").await.unwrap().username,
        "system:serviceaccount:web:frontend"
    );
    assert_eq!(*seen.lock().unwrap(), ["Bearer reviewer"]);
}
