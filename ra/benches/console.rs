//! The web console's pages over a large store, on SQLite and (when `MESHCA_TEST_POSTGRES_URL`
//! is set) PostgreSQL: server time (p50/p99 from request to the last byte of the body, through
//! the real router with a signed-in session) and page weight.
//!
//! `cargo bench -p meshca-ra --bench console [-- ROWS]` (default 1,000,000)
//!
//! The store gets the inventory bench's certificates (`load_synthetic_inventory`: 90 days of
//! 24 h certificates for 7,000 workloads) and one audit event per certificate.

use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use meshca_ca::testing::{
    load_synthetic_audit_log, load_synthetic_inventory, prune_counters_after_load, InventoryShape,
};
use meshca_ca::{
    CaConfig, CaSettings, CertificateAuthority, IssueRequest, Requester, SpiffeId, StoreConfig,
    TrustDomain, VerifiedCsr,
};
use meshca_pki::keys::sha256_hex;
use meshca_pki::time::unix_seconds;
use meshca_ra::rest::{self, RestState};
use meshca_ra::trust::deliveries::AgentDeliveries;
use meshca_ra::trust::stream::BundleWatchers;
use meshca_ra::trust::TrustBundles;
use meshca_ra::{RestConfig, RestRole, RestToken};
use tower::ServiceExt;

const DAY: i64 = 86_400;
const ITERATIONS: usize = 50;

async fn get(router: &Router, cookie: &str, path: &str) -> (StatusCode, usize) {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, "bench")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body.len())
}

async fn sign_in(router: &Router) -> String {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/ui/sign-in")
        .header(header::HOST, "bench")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("with=token&token=bench-admin"))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(label: &str, ca: CertificateAuthority, rows: i64) {
    let now = unix_seconds(SystemTime::now());
    // The newest certificates were issued in the last day, so the overview's week is full.
    let base = now - 90 * DAY;
    let started = Instant::now();
    load_synthetic_inventory(ca.store(), rows, base, InventoryShape::NINETY_DAYS).await;
    load_synthetic_audit_log(ca.store(), rows, base, 90 * DAY).await;
    // What the CA's periodic pruning keeps of the counters: live buckets only.
    prune_counters_after_load(ca.store(), now).await;
    println!(
        "{label}: {rows} certificates and audit events loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = RestConfig {
        tokens: vec![RestToken {
            name: "bench".into(),
            sha256: sha256_hex(b"bench-admin"),
            role: RestRole::Admin,
        }],
        ..RestConfig::default()
    };
    let bundles = TrustBundles::start(ca.clone(), &Default::default()).unwrap();
    let watchers = std::sync::Arc::new(BundleWatchers::default());
    let agents = AgentDeliveries::start(watchers, ca.store().clone());
    let state = RestState::new(&config, ca.clone(), bundles, agents).unwrap();
    let router = rest::router(state, meshca_ra::console::router());
    let cookie = sign_in(&router).await;
    let serial = issue_one(&ca).await;
    let pages = [
        ("overview", "/ui/".to_string()),
        ("certificates, newest 100", "/ui/certificates".to_string()),
        (
            "certificates, SPIFFE id prefix",
            "/ui/certificates?spiffe_id=spiffe%3A%2F%2Fcluster.local%2Fns%2Fns-3%2F*".to_string(),
        ),
        (
            "certificates, namespace + service account, valid",
            "/ui/certificates?namespace=ns-3&service_account=sa-3&status=valid".to_string(),
        ),
        (
            "certificate (its audit events)",
            format!("/ui/certificates/{serial}"),
        ),
        ("authorities", "/ui/authorities".to_string()),
        ("audit log, newest 100", "/ui/audit".to_string()),
        (
            "audit log, refusals",
            "/ui/audit?outcome=refused".to_string(),
        ),
        ("CRL", "/ui/crl".to_string()),
    ];
    println!(
        "  {:<50} {:>9} {:>9} {:>9}",
        "page", "p50 ms", "p99 ms", "KB"
    );
    for (name, path) in pages {
        let mut times = Vec::with_capacity(ITERATIONS);
        let mut bytes = 0;
        for _ in 0..ITERATIONS {
            let started = Instant::now();
            let (status, size) = get(&router, &cookie, &path).await;
            times.push(started.elapsed());
            assert_eq!(status, StatusCode::OK, "{path}");
            bytes = size;
        }
        times.sort();
        println!(
            "  {name:<50} {:>9.2} {:>9.2} {:>9.1}",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            bytes as f64 / 1024.0
        );
    }
}

/// One certificate issued the way CreateCertificate issues it, for the certificate page.
async fn issue_one(ca: &CertificateAuthority) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let csr = VerifiedCsr::from_pem(&csr).unwrap();
    let id = SpiffeId::new("spiffe://cluster.local/ns/ns-3/sa/sa-3").unwrap();
    let requester = Requester {
        method: "jwt".into(),
        principal: "system:serviceaccount:ns-3:sa-3".into(),
        ..Requester::default()
    };
    let request = IssueRequest {
        csr: &csr,
        spiffe_id: &id,
        requested_ttl_secs: 3600,
        requester: &requester,
        bundle_as_of: None,
    };
    ca.issue(request).await.unwrap().serial.to_hex()
}

async fn start_ca(dir: &std::path::Path, store: StoreConfig) -> CertificateAuthority {
    CertificateAuthority::start(&CaSettings {
        trust_domain: TrustDomain::new("cluster.local").unwrap(),
        data_dir: dir.to_path_buf(),
        store,
        ca: CaConfig::default(),
    })
    .await
    .unwrap()
}

fn main() {
    let rows: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        run(
            "SQLite",
            start_ca(dir.path(), StoreConfig::default()).await,
            rows,
        )
        .await;

        match meshca_ca::testing::postgres_url("console_bench").await {
            Some(url) => {
                let dir = tempfile::tempdir().unwrap();
                let store = StoreConfig { url: Some(url) };
                run("PostgreSQL", start_ca(dir.path(), store).await, rows).await;
            }
            None => println!("PostgreSQL: skipped (MESHCA_TEST_POSTGRES_URL not set)"),
        }
    });
}
