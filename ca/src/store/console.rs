//! What the web console keeps and reads: its sign-in sessions (by the SHA-256 of the cookie's
//! id, so the table gives no session away), and the overview's numbers from the counters kept
//! in each issuance's transaction (hours and expiry buckets, never a scan of the inventory; see
//! [`super::counters`]).

use super::records::{ConsoleSession, StoreError};
use super::Store;

type SessionRow = (String, String, String, String, Option<String>, i64, i64);

impl Store {
    pub async fn insert_console_session(&self, s: &ConsoleSession) -> Result<(), StoreError> {
        let sql = "INSERT INTO console_sessions (id_sha256, method, principal, role, \
                   token_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        with_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&s.id_sha256)
                .bind(&s.method)
                .bind(&s.principal)
                .bind(&s.role)
                .bind(&s.token_sha256)
                .bind(s.created_at)
                .bind(s.expires_at)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(StoreError::Query)
    }

    /// The session whose id hashes to `id_sha256`, unless it expired by `now`.
    pub async fn console_session(
        &self,
        id_sha256: &str,
        now: i64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let sql = "SELECT id_sha256, method, principal, role, token_sha256, created_at, \
                   expires_at FROM console_sessions WHERE id_sha256 = $1 AND expires_at > $2";
        let row: Option<SessionRow> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(id_sha256).bind(now).fetch_optional(pool).await
        })
        .map_err(StoreError::Query)?;
        Ok(row.map(
            |(id_sha256, method, principal, role, token_sha256, created_at, expires_at)| {
                ConsoleSession {
                    id_sha256,
                    method,
                    principal,
                    role,
                    token_sha256,
                    created_at,
                    expires_at,
                }
            },
        ))
    }

    /// Ends a session (sign-out, or a session whose credential no longer holds its role).
    /// Returns whether there was one.
    pub async fn delete_console_session(&self, id_sha256: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM console_sessions WHERE id_sha256 = $1";
        with_pool!(self, pool => {
            sqlx::query(sql).bind(id_sha256).execute(pool).await.map(|done| done.rows_affected() > 0)
        })
        .map_err(StoreError::Query)
    }

    /// Drops sessions that expired by `now`; returns how many.
    pub async fn sweep_console_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let sql = "DELETE FROM console_sessions WHERE expires_at <= $1";
        with_pool!(self, pool => {
            sqlx::query(sql).bind(now).execute(pool).await.map(|done| done.rows_affected())
        })
        .map_err(StoreError::Query)
    }

    /// `(hour, certificates issued in it)` for hours at or after `since` (Unix seconds, any
    /// second of the first hour), oldest first; hours with none are left out.
    pub async fn issued_per_hour(&self, since: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let sql = "SELECT hour, n FROM issued_per_hour WHERE hour >= $1 ORDER BY hour";
        with_pool!(self, pool => {
            sqlx::query_as(sql).bind(since / 3600 * 3600).fetch_all(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// Unrevoked certificates live at `now` that expire by `until` (to the 10 s bucket).
    pub async fn count_expiring(&self, now: i64, until: i64) -> Result<i64, StoreError> {
        let sql = "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM live_certificate_counts \
                   WHERE expires_bucket > $1 AND expires_bucket <= $2";
        with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(now).bind(until).fetch_one(pool).await
        })
        .map_err(StoreError::Query)
    }
}
