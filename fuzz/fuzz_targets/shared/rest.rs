//! The REST listener's router (API and console) on a real CA over SQLite in a scratch
//! directory, built once per fuzzing process, with one auditor token.

use std::sync::OnceLock;

pub struct Api {
    pub runtime: tokio::runtime::Runtime,
    pub router: axum::Router,
    _dir: std::path::PathBuf,
}

/// The bearer secret the router accepts, for the auditor role.
pub const AUDITOR_TOKEN: &str = "fuzz-auditor";

pub fn api() -> &'static Api {
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
                    sha256: meshca_pki::keys::sha256_hex(AUDITOR_TOKEN.as_bytes()),
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
            meshca_ra::rest::router(state, meshca_ra::console::router())
        });
        Api {
            runtime,
            router,
            _dir: dir,
        }
    })
}

/// The input as a request target: its first byte picks one of `paths`, the rest (UTF-8 only) is
/// the query string.
pub fn query_uri(data: &[u8], paths: &[&str]) -> Option<String> {
    let (&which, query) = data.split_first()?;
    let query = std::str::from_utf8(query).ok()?;
    Some(format!(
        "{}?{query}",
        paths[usize::from(which) % paths.len()]
    ))
}

/// What every query must get: an answer (200), a refusal of the query (400) or of the path
/// (404), never a server error.
pub fn assert_answered(uri: &str, status: axum::http::StatusCode) {
    use axum::http::StatusCode;
    assert!(
        matches!(
            status,
            StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND
        ),
        "{uri} answered {status}"
    );
}
