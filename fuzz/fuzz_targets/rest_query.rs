//! Query strings (filters, cursors, limits, times) into the REST API's listing endpoints, through
//! the real router on a real CA over SQLite: never a panic, never a 500; a query is answered
//! 200 or refused 400 with the API's error body.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: std::path::PathBuf,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("meshca-fuzz-rest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let router = runtime.block_on(async {
            let ca = meshca_ca::CertificateAuthority::start(&meshca_ca::CaSettings {
                trust_domain: meshca_ca::TrustDomain::new("cluster.local").unwrap(),
                data_dir: dir.clone(),
                store: meshca_ca::StoreConfig::default(),
                ca: meshca_ca::CaConfig::default(),
            })
            .await
            .unwrap();
            let config = meshca_ra::RestConfig {
                tokens: vec![meshca_ra::RestToken {
                    name: "fuzz".into(),
                    sha256: meshca_pki::keys::sha256_hex(b"fuzz-auditor"),
                    role: meshca_ra::RestRole::Auditor,
                }],
                ..meshca_ra::RestConfig::default()
            };
            let bundles =
                meshca_ra::trust::TrustBundles::start(ca.clone(), &Default::default()).unwrap();
            let watchers = std::sync::Arc::new(meshca_ra::trust::stream::BundleWatchers::default());
            let agents =
                meshca_ra::trust::deliveries::AgentDeliveries::start(watchers, ca.store().clone());
            let state = meshca_ra::rest::RestState::new(&config, ca, bundles, agents).unwrap();
            meshca_ra::rest::router(state, axum::Router::new())
        });
        Api {
            runtime,
            router,
            _dir: dir,
        }
    })
}

const PATHS: [&str; 4] = [
    "/v1/certificates",
    "/v1/audit",
    "/v1/certificates/export",
    "/v1/crl",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, query)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let uri = format!("{}?{query}", PATHS[usize::from(which) % PATHS.len()]);
    let Ok(request) = Request::get(&uri)
        .header(header::AUTHORIZATION, "Bearer fuzz-auditor")
        .body(Body::empty())
    else {
        return; // not a URI a client could send
    };
    let api = api();
    let status = api
        .runtime
        .block_on(api.router.clone().oneshot(request))
        .unwrap()
        .status();
    assert!(
        status == StatusCode::OK
            || status == StatusCode::BAD_REQUEST
            || status == StatusCode::NOT_FOUND,
        "{uri} answered {status}"
    );
});
