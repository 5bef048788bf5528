//! The issued-certificate and authority store: SQLite (embedded default) or PostgreSQL
//! (replicas). Both run the same SQL ([`sql`]); migrations live in `migrations/<dialect>/`.
//!
//! Queries are built at run time rather than with `query!`: one code path serves two dialects,
//! and both are exercised by the tests (PostgreSQL with `MESHCA_TEST_POSTGRES_URL`, which CI
//! sets). Issuances are written by one writer per dialect ([`IssuanceWriter`]), everything
//! else through the pool.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Runs the same body against whichever pool the store holds.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

mod audit_log;
mod authorities;
pub mod authority_changes;
mod console;
mod counters;
mod inventory;
mod leadership;
mod migrations;
mod postgres_writer;
mod records;
pub(crate) mod sql;
pub(crate) mod sqlite_counters;
mod sqlite_writer;

use migrations::Embedded;
pub use postgres_writer::PostgresIssuanceWriter;
pub use records::{
    AuditFilter, BatchEntry, BundleDelivery, CertificateFilter, CertificateRow, CertificateStatus,
    ConsoleSession, EntryOutcome, Issuance, IssuanceRecord, Renewal, RevocationRecord, StoreError,
    StoredAuthority, TransitionError,
};
pub use sqlite_writer::SqliteIssuanceWriter;

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The one writer of issuance records for a store, by dialect; the group commit
/// ([`crate::commit`]) runs the SQLite one on a thread of its own and the PostgreSQL one as a
/// task. Both record a batch in one transaction: each issuance unless its serial is on record
/// already (or earlier in the batch: the first holder has it) or it renews a revoked
/// certificate, then the audit events of those that went in, chained onto the log's head. They
/// say per item what became of it ([`EntryOutcome`]); an error means nothing of the batch was
/// committed, and once the store is closed they refuse.
#[derive(Debug)]
pub enum IssuanceWriter {
    Sqlite(SqliteIssuanceWriter),
    Postgres(PostgresIssuanceWriter),
}

// === impl Store ===

impl Store {
    /// The embedded default: `<data_dir>/meshca.db`.
    pub fn default_sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("meshca.db").display())
    }

    /// Opens the store at `url` and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Every issuance must survive a crash once the caller holds the cert.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            Embedded(migrations::SQLITE)
                .migrator()
                .await?
                .run(&pool)
                .await?;
            // The issuance writer opens the database file beside the pool (see `sqlite_writer`):
            // an in-memory database would be a second, empty one.
            if !pool.connect_options().get_filename().is_file() {
                return Err(StoreError::InMemory);
            }
            Store::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(StoreError::Connect)?;
            Embedded(migrations::POSTGRES)
                .migrator()
                .await?
                .run(&pool)
                .await?;
            Store::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        Ok(store)
    }

    pub fn dialect(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Whether this connection to PostgreSQL is TLS-encrypted (`sslmode` in the URL; sqlx's
    /// default `prefer` uses TLS when the server offers it). `None` for SQLite, a local file.
    pub async fn connection_encrypted(&self) -> Result<Option<bool>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(pool) => {
                let ssl: Option<bool> =
                    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                        .fetch_optional(pool)
                        .await
                        .map_err(StoreError::Query)?;
                Ok(Some(ssl.unwrap_or(false)))
            }
        }
    }

    /// Whether the store was closed (background tasks on it end).
    pub fn is_closed(&self) -> bool {
        with_pool!(self, pool => pool.is_closed())
    }

    /// Cheap liveness probe for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(StoreError::Query)
    }

    /// The store's issuance writer, with a connection of its own (opened when first needed).
    pub fn issuance_writer(&self) -> IssuanceWriter {
        match self {
            Store::Sqlite(pool) => IssuanceWriter::Sqlite(SqliteIssuanceWriter::new(pool.clone())),
            Store::Postgres(pool) => {
                IssuanceWriter::Postgres(PostgresIssuanceWriter::new(pool.clone()))
            }
        }
    }
}

/// A store URL safe to print: any password replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://meshca:s3cret@db:5432/meshca"),
            "postgres://meshca:***@db:5432/meshca"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/meshca/meshca.db"),
            "sqlite:///var/lib/meshca/meshca.db"
        );
    }

    /// An in-memory database cannot be shared with the issuance writer's own connection.
    #[tokio::test]
    async fn an_in_memory_sqlite_store_is_refused() {
        let error = Store::connect("sqlite::memory:").await.unwrap_err();
        assert!(matches!(error, StoreError::InMemory), "{error}");
    }
}
