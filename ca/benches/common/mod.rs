//! What the store benches share: a PostgreSQL store in a schema of its own, dropped afterwards.

use std::future::Future;

use meshca_ca::store::Store;

/// Runs `bench` on a store in a fresh schema of `MESHCA_TEST_POSTGRES_URL`'s database (and drops
/// the schema after), or says it skipped PostgreSQL when that is unset.
pub async fn on_postgres<F, Fut>(name: &str, bench: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let Ok(base) = std::env::var("MESHCA_TEST_POSTGRES_URL") else {
        println!("PostgreSQL: skipped (MESHCA_TEST_POSTGRES_URL not set)");
        return;
    };
    let schema = format!("meshca_{name}_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    bench(Store::connect(&url).await.unwrap()).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
