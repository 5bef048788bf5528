//! The issued-certificate and authority store: SQLite (embedded default) or PostgreSQL
//! (replicas). Both run the same SQL; migrations live in `migrations/<dialect>/`.
//!
//! Queries are built at run time rather than with `query!`: one code path serves two dialects,
//! and both are exercised by the tests (PostgreSQL when `MESHCA_TEST_POSTGRES_URL` is set).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::identity::Serial;

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store URL {0:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl(String),
    #[error("opening the store: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("serial {0} is already on record")]
    DuplicateSerial(String),
    #[error("store query failed: {0}")]
    Query(#[source] sqlx::Error),
}

/// Why an authority could not change state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    #[error("no authority {0}")]
    NotFound(String),
    #[error("authority {id} is {state}; this step needs it {required}")]
    WrongState {
        id: String,
        state: String,
        required: &'static str,
    },
    #[error("another activation happened at the same time; retry")]
    Raced,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A certificate revocation as recorded.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RevocationRecord {
    pub serial: String,
    pub reason: String,
    pub revoked_at: i64,
    pub actor: String,
}

/// One issued certificate, as the audit trail keeps it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IssuanceRecord {
    pub serial: String,
    pub spiffe_id: String,
    pub trust_domain: String,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    pub authority_id: String,
    pub requester_method: String,
    pub requester_principal: String,
    pub peer_address: Option<String>,
    pub cluster_id: Option<String>,
    pub public_key_sha256: String,
    pub cert_der: Vec<u8>,
}

/// An authority as persisted; the key only ever sealed.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAuthority {
    pub id: String,
    pub state: String,
    pub source: String,
    pub key_type: String,
    pub cert_der: Vec<u8>,
    pub chain_pem: String,
    pub roots_pem: String,
    pub sealed_key: Vec<u8>,
    pub kek_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("source", &self.source)
            .field("key_type", &self.key_type)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// Runs the same body against whichever pool the store holds.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

const ISSUANCE_COLUMNS: &str = "serial, spiffe_id, trust_domain, namespace, service_account, \
    not_before, not_after, issued_at, authority_id, requester_method, requester_principal, \
    peer_address, cluster_id, public_key_sha256, cert_der";

const AUTHORITY_COLUMNS: &str = "id, state, source, key_type, cert_der, chain_pem, roots_pem, \
    sealed_key, kek_id, created_at, updated_at";

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
            sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
            Store::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(StoreError::Connect)?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await?;
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

    /// Cheap liveness probe for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(StoreError::Query)
    }

    /// Commits one issuance. Returns only after the row is durable.
    pub async fn insert_issuance(&self, r: &IssuanceRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO issued_certificates ({ISSUANCE_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        let result = with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&r.serial)
                .bind(&r.spiffe_id)
                .bind(&r.trust_domain)
                .bind(&r.namespace)
                .bind(&r.service_account)
                .bind(r.not_before)
                .bind(r.not_after)
                .bind(r.issued_at)
                .bind(&r.authority_id)
                .bind(&r.requester_method)
                .bind(&r.requester_principal)
                .bind(&r.peer_address)
                .bind(&r.cluster_id)
                .bind(&r.public_key_sha256)
                .bind(&r.cert_der)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        });
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DuplicateSerial(r.serial.clone()))
            }
            Err(e) => Err(StoreError::Query(e)),
        }
    }

    pub async fn issuance_by_serial(
        &self,
        serial: &Serial,
    ) -> Result<Option<IssuanceRecord>, StoreError> {
        let sql = format!("SELECT {ISSUANCE_COLUMNS} FROM issued_certificates WHERE serial = $1");
        with_pool!(self, pool => {
            sqlx::query_as::<_, IssuanceRecord>(&sql)
                .bind(serial.to_hex())
                .fetch_optional(pool)
                .await
        })
        .map_err(StoreError::Query)
    }

    /// Issuances for one SPIFFE id, newest first.
    pub async fn issuances_for(
        &self,
        spiffe_id: &str,
        limit: i64,
    ) -> Result<Vec<IssuanceRecord>, StoreError> {
        let sql = format!(
            "SELECT {ISSUANCE_COLUMNS} FROM issued_certificates WHERE spiffe_id = $1 \
             ORDER BY id DESC LIMIT $2"
        );
        with_pool!(self, pool => {
            sqlx::query_as::<_, IssuanceRecord>(&sql)
                .bind(spiffe_id)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::Query)
    }

    /// Issuances of certificates for one public key (SHA-256 of its SPKI, hex): "what was
    /// issued for this key" is the first question after a key leaks.
    pub async fn issuances_for_public_key(
        &self,
        public_key_sha256: &str,
    ) -> Result<Vec<IssuanceRecord>, StoreError> {
        let sql = format!(
            "SELECT {ISSUANCE_COLUMNS} FROM issued_certificates WHERE public_key_sha256 = $1 \
             ORDER BY id DESC"
        );
        with_pool!(self, pool => {
            sqlx::query_as::<_, IssuanceRecord>(&sql)
                .bind(public_key_sha256)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::Query)
    }

    pub async fn count_issuances(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM issued_certificates";
        with_pool!(self, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await)
            .map_err(StoreError::Query)
    }

    pub async fn active_authority(&self) -> Result<Option<StoredAuthority>, StoreError> {
        let sql = format!("SELECT {AUTHORITY_COLUMNS} FROM authorities WHERE state = 'active'");
        with_pool!(self, pool => {
            sqlx::query_as::<_, StoredAuthority>(&sql).fetch_optional(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// Inserts `authority` as the active one unless another is active already. Returns whether
    /// this insert won; concurrent bootstraps on one database end with exactly one winner.
    pub async fn insert_active_authority(&self, a: &StoredAuthority) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO authorities ({AUTHORITY_COLUMNS}) VALUES \
             ($1, 'active', $2, $3, $4, $5, $6, $7, $8, $9, $9)"
        );
        let result = with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&a.id)
                .bind(&a.source)
                .bind(&a.key_type)
                .bind(&a.cert_der)
                .bind(&a.chain_pem)
                .bind(&a.roots_pem)
                .bind(&a.sealed_key)
                .bind(&a.kek_id)
                .bind(a.created_at)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        });
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(StoreError::Query(e)),
        }
    }

    /// Every authority ever recorded, oldest first.
    pub async fn authorities(&self) -> Result<Vec<StoredAuthority>, StoreError> {
        let sql = format!("SELECT {AUTHORITY_COLUMNS} FROM authorities ORDER BY created_at, id");
        with_pool!(self, pool => sqlx::query_as::<_, StoredAuthority>(&sql).fetch_all(pool).await)
            .map_err(StoreError::Query)
    }

    /// Records a new authority as `prepared`: its root joins the bundle, nothing is signed.
    pub async fn insert_prepared_authority(&self, a: &StoredAuthority) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO authorities ({AUTHORITY_COLUMNS}) VALUES \
             ($1, 'prepared', $2, $3, $4, $5, $6, $7, $8, $9, $9)"
        );
        with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&a.id)
                .bind(&a.source)
                .bind(&a.key_type)
                .bind(&a.cert_der)
                .bind(&a.chain_pem)
                .bind(&a.roots_pem)
                .bind(&a.sealed_key)
                .bind(&a.kek_id)
                .bind(a.created_at)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(StoreError::Query)
    }

    /// Moves authority `id` from state `from` to `to` in one transaction. Activating also
    /// demotes the current active authority to `old`, so exactly one stays active.
    pub async fn transition_authority(
        &self,
        id: &str,
        from: &'static str,
        to: &'static str,
        now: i64,
    ) -> Result<(), TransitionError> {
        let query_failed = |e| TransitionError::Store(StoreError::Query(e));
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(query_failed)?;
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM authorities WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_failed)?;
            match state {
                None => return Err(TransitionError::NotFound(id.to_string())),
                Some(state) if state != from => {
                    return Err(TransitionError::WrongState {
                        id: id.to_string(),
                        state,
                        required: from,
                    })
                }
                Some(_) => {}
            }
            if to == "active" {
                sqlx::query(
                    "UPDATE authorities SET state = 'old', updated_at = $1 WHERE state = 'active'",
                )
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(query_failed)?;
            }
            let updated = sqlx::query(
                "UPDATE authorities SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
            )
            .bind(to)
            .bind(now)
            .bind(id)
            .bind(from)
            .execute(&mut *tx)
            .await;
            match updated {
                Ok(done) if done.rows_affected() == 1 => {}
                Ok(_) => return Err(TransitionError::Raced),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(TransitionError::Raced)
                }
                Err(e) => return Err(query_failed(e)),
            }
            tx.commit().await.map_err(query_failed)
        })
    }

    /// Certificates from `authority_id` that are neither expired (at `now`) nor revoked.
    pub async fn count_live_certificates(
        &self,
        authority_id: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM issued_certificates c \
                   WHERE c.authority_id = $1 AND c.not_after > $2 AND NOT EXISTS \
                   (SELECT 1 FROM certificate_revocations r WHERE r.serial = c.serial)";
        with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(authority_id).bind(now).fetch_one(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// Records a revocation; revoking an already revoked serial keeps the first record.
    pub async fn insert_revocation(&self, r: &RevocationRecord) -> Result<bool, StoreError> {
        let sql = "INSERT INTO certificate_revocations (serial, reason, revoked_at, actor) \
                   VALUES ($1, $2, $3, $4) ON CONFLICT (serial) DO NOTHING";
        with_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&r.serial)
                .bind(&r.reason)
                .bind(r.revoked_at)
                .bind(&r.actor)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(StoreError::Query)
    }

    pub async fn revocation(&self, serial: &str) -> Result<Option<RevocationRecord>, StoreError> {
        let sql = "SELECT serial, reason, revoked_at, actor FROM certificate_revocations \
                   WHERE serial = $1";
        with_pool!(self, pool => {
            sqlx::query_as::<_, RevocationRecord>(sql).bind(serial).fetch_optional(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// Every revocation, oldest first (the CRL's content).
    pub async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        let sql = "SELECT serial, reason, revoked_at, actor FROM certificate_revocations \
                   ORDER BY revoked_at, serial";
        with_pool!(self, pool => sqlx::query_as::<_, RevocationRecord>(sql).fetch_all(pool).await)
            .map_err(StoreError::Query)
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
}
