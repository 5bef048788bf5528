//! What the rotation gates cost at fleet size: 1,000,000 live certificates (24 h certificates
//! issued over the last day, 50,000 workloads renewing every ~1.2 h, two authorities), on
//! SQLite and (when `MESHCA_TEST_POSTGRES_URL` is set) PostgreSQL. Compares the count
//! `GET /v1/authorities` made before (a scan of the unexpired certificates) with the counters
//! kept now (by the issuance writer on SQLite, by triggers on PostgreSQL), and times the
//! renewed-identity share.
//!
//! `cargo bench -p meshca-ca --bench gates [-- ROWS]` (default 1,000,000)

mod common;

use std::time::{Duration, Instant};

use meshca_ca::store::Store;

const DAY: i64 = 86_400;
/// "Now": every generated certificate is live.
const NOW: i64 = 1_795_000_000;
const WORKLOADS: i64 = 50_000;
const ITERATIONS: usize = 50;

const COLUMNS: &str = "serial, spiffe_id, trust_domain, namespace, service_account, not_before, \
    not_after, issued_at, authority_id, requester_method, requester_principal, peer_address, \
    cluster_id, public_key_sha256, cert_der, bundle_as_of";

/// `rows` certificates issued evenly over the day before [`NOW`], oldest first; the newest
/// tenth carried a bundle as of the second authority's root.
fn values(rows: i64, n: &str, hex32: &str, hex64: &str, der: &str) -> String {
    format!(
        "{hex32}, 'spiffe://cluster.local/ns/ns-' || ({n} % 1000) || '/sa/w-' || ({n} % {WORKLOADS}), \
         'cluster.local', 'ns-' || ({n} % 1000), 'w-' || ({n} % {WORKLOADS}), \
         {NOW} - {DAY} + {n} * {DAY} / {rows} - 120, {NOW} + {n} * {DAY} / {rows}, \
         {NOW} - {DAY} + {n} * {DAY} / {rows}, \
         CASE WHEN {n} * 10 < {rows} * 9 THEN 'authority-old' ELSE 'authority-new' END, \
         'jwt', 'p', '10.0.0.1:40000', 'Kubernetes', {hex64}, {der}, \
         CASE WHEN {n} * 10 < {rows} * 9 THEN 1 ELSE 2 END"
    )
}

async fn load(store: &Store, rows: i64) -> Duration {
    let started = Instant::now();
    match store {
        Store::Sqlite(pool) => {
            let sql = format!(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {rows}) \
                 INSERT INTO issued_certificates ({COLUMNS}) SELECT {} FROM seq",
                values(rows, "n", "printf('%032x', n)", "printf('%064x', n)", "randomblob(600)")
            );
            sqlx::query(&sql).execute(pool).await.unwrap();
            meshca_ca::testing::count_synthetic_load(store).await;
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "INSERT INTO issued_certificates ({COLUMNS}) SELECT {} \
                 FROM generate_series(1::bigint, {rows}::bigint) AS n",
                values(
                    rows,
                    "n",
                    "lpad(to_hex(n), 32, '0')",
                    "lpad(to_hex(n), 64, '0')",
                    "decode(repeat(md5(n::text), 38), 'hex')"
                )
            );
            sqlx::query(&sql).execute(pool).await.unwrap();
            sqlx::query("ANALYZE").execute(pool).await.unwrap();
        }
    }
    started.elapsed()
}

async fn measure<F, Fut>(name: &str, mut query: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let mut times = Vec::with_capacity(ITERATIONS);
    let mut answer = 0;
    for _ in 0..ITERATIONS {
        let started = Instant::now();
        answer = query().await;
        times.push(started.elapsed());
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "  {name:<52} p50 {:>9.2} ms  p99 {:>9.2} ms  (= {answer})",
        p(0.5),
        p(0.99)
    );
}

async fn run(label: &str, store: Store, rows: i64) {
    let loaded = load(&store, rows).await;
    println!(
        "{label}: {rows} live certificates loaded and counted in {:.1} s",
        loaded.as_secs_f64()
    );
    let s = &store;
    measure("live certificates, scanned (before)", || async {
        let sql = "SELECT COUNT(*) FROM issued_certificates c \
                   WHERE c.authority_id = $1 AND c.not_after > $2 AND NOT EXISTS \
                   (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)";
        match s {
            Store::Sqlite(pool) => sqlx::query_scalar(sql)
                .bind("authority-old")
                .bind(NOW)
                .fetch_one(pool)
                .await
                .unwrap(),
            Store::Postgres(pool) => sqlx::query_scalar(sql)
                .bind("authority-old")
                .bind(NOW)
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    })
    .await;
    measure("live certificates, from the counters (now)", || async {
        s.count_live_certificates("authority-old", NOW)
            .await
            .unwrap()
    })
    .await;
    measure("identities renewed since the new root (now)", || async {
        s.identity_renewal(2, NOW).await.unwrap().renewed
    })
    .await;
    measure(
        "certificates answered with the new root (the gate)",
        || async { s.certificate_renewal(2, NOW).await.unwrap().renewed },
    )
    .await;
}

fn main() {
    let rows: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        run(
            "SQLite",
            Store::connect(&sqlite("bench.db")).await.unwrap(),
            rows,
        )
        .await;

        common::on_postgres("gates", |store| run("PostgreSQL", store, rows)).await;
    });
}
