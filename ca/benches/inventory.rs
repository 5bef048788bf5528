//! Auditor queries over a large inventory, on SQLite and (when `MESHCA_TEST_POSTGRES_URL` is
//! set) PostgreSQL: p50/p99 of the queries the REST API runs, and export throughput.
//!
//! `cargo bench -p meshca-ca --bench inventory [-- ROWS]` (default 1,000,000)
//!
//! Rows are generated inside the database (a recursive CTE / generate_series) in two shapes:
//! 90 days of 24 h certificates for 7,000 workloads in 1,000 namespaces (mostly expired), and a
//! fleet's busy day (every certificate live, 50 identities in 10 namespaces); two authorities,
//! each row with a ~600-byte DER, 0.1 % revoked. Queries go through `Store`, the same calls the
//! REST handlers make.

mod common;

use std::time::{Duration, Instant};

use meshca_ca::store::{CertificateFilter, CertificateStatus, Store};
use meshca_ca::testing::{load_synthetic_inventory, prune_counters_after_load, InventoryShape};

const DAY: i64 = 86_400;
/// 2026-08-28T00:00:00Z: the first generated issuance.
const BASE: i64 = 1_787_875_200;
const ITERATIONS: usize = 200;

async fn load(store: &Store, rows: i64, shape: InventoryShape) -> Duration {
    let started = Instant::now();
    load_synthetic_inventory(store, rows, BASE, shape).await;
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure<F, Fut>(name: &str, mut query: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times = Vec::with_capacity(ITERATIONS);
    let mut rows = 0;
    for i in 0..ITERATIONS {
        let started = Instant::now();
        rows += query(i).await;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "  {name:<58} p50 {:>8.2} ms  p99 {:>8.2} ms  ({:.0} rows/query)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        rows as f64 / ITERATIONS as f64
    );
}

async fn run(label: &str, store: Store, rows: i64, shape: InventoryShape) {
    let loaded = load(&store, rows, shape).await;
    println!(
        "{label}, {shape:?}: {rows} certificates loaded in {:.1} s",
        loaded.as_secs_f64()
    );
    // "Now" is half a day before the newest issuance: in 90 days, about a day's worth of
    // certificates (1 %) are valid, as with 24 h certificates in steady state; on a busy day,
    // all of them.
    let now = BASE + shape.span_secs - DAY / 2;
    // What the CA's periodic pruning keeps of the counters: live buckets only.
    prune_counters_after_load(&store, now).await;
    let (namespaces, accounts) = (shape.namespaces, shape.accounts_per_namespace());
    let hours = shape.span_secs / 3600 - 1;
    let page = 100;
    let s = &store;
    let list = |filter: CertificateFilter, before: Option<i64>| async move {
        s.certificates(&filter, now, before, page)
            .await
            .unwrap()
            .len()
    };

    measure("by serial", |i| {
        list(
            CertificateFilter {
                serial: Some(format!("{:032x}", (i as i64 * 4999) % rows + 1)),
                ..Default::default()
            },
            None,
        )
    })
    .await;
    measure("spiffe_id exact, newest 100", |i| {
        list(
            CertificateFilter {
                spiffe_id: Some(format!(
                    "spiffe://cluster.local/ns/ns-{}/sa/sa-{}",
                    i as i64 % namespaces,
                    i as i64 % accounts
                )),
                ..Default::default()
            },
            None,
        )
    })
    .await;
    measure("spiffe_id prefix (a namespace), newest 100", |i| {
        list(
            CertificateFilter {
                spiffe_id: Some(format!(
                    "spiffe://cluster.local/ns/ns-{}/*",
                    i as i64 % namespaces
                )),
                ..Default::default()
            },
            None,
        )
    })
    .await;
    measure("namespace + service_account + status=valid", |i| {
        list(
            CertificateFilter {
                namespace: Some(format!("ns-{}", i as i64 % namespaces)),
                service_account: Some(format!("sa-{}", i as i64 % accounts)),
                status: Some(CertificateStatus::Valid),
                ..Default::default()
            },
            None,
        )
    })
    .await;
    measure("issued in a one-hour window, newest 100", |i| {
        let from = BASE + (i as i64 * 37 % hours) * 3600;
        list(
            CertificateFilter {
                issued_after: Some(from),
                issued_before: Some(from + 3600),
                ..Default::default()
            },
            None,
        )
    })
    .await;
    measure("status=revoked, newest 100", |_| {
        list(
            CertificateFilter {
                status: Some(CertificateStatus::Revoked),
                ..Default::default()
            },
            None,
        )
    })
    .await;
    measure("everything, a page deep in the keyset (cursor)", |i| {
        list(
            CertificateFilter::default(),
            Some(rows - (i as i64 * 3001) % rows),
        )
    })
    .await;
    measure(
        "live certificates of an authority (GET /v1/authorities)",
        |_| async {
            s.count_live_certificates("authority-new", now)
                .await
                .unwrap() as usize
        },
    )
    .await;
    measure(
        "identities and certificates renewed since a root joined (root reach)",
        |_| async {
            let since = now - 3600;
            let identities = s.identity_renewal(since, now).await.unwrap();
            let certificates = s.certificate_renewal(since, now).await.unwrap();
            std::hint::black_box((identities, certificates));
            1
        },
    )
    .await;

    // Export: one authority's certificates, pages of 1000, serialized as the API streams them.
    let started = Instant::now();
    let mut exported = 0usize;
    let mut bytes = 0usize;
    let mut before = None;
    let filter = CertificateFilter {
        authority: Some("authority-old".into()),
        ..Default::default()
    };
    loop {
        let batch = store
            .certificates(&filter, now, before, 1000)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for row in &batch {
            bytes += format!("{row:?}").len();
        }
        exported += batch.len();
        before = batch.last().map(|r| r.id);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  export of one authority: {exported} rows in {secs:.1} s = {:.0} rows/s ({:.1} MB/s formatted)",
        exported as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

fn main() {
    let rows: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for (name, shape) in [
            ("ninety-days", InventoryShape::NINETY_DAYS),
            ("busy-day", InventoryShape::BUSY_DAY),
        ] {
            let url = format!("sqlite://{}", dir.path().join(name).display());
            run("SQLite", Store::connect(&url).await.unwrap(), rows, shape).await;
            common::on_postgres("bench", |store| run("PostgreSQL", store, rows, shape)).await;
        }
    });
}
