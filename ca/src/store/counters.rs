//! What the rotation gates count, read from counters kept in the same transaction as each
//! issuance and revocation (sums over a few thousand small rows, not scans of every
//! certificate, so `GET /v1/authorities` costs the same at a million certificates as at ten),
//! and the replicas' reports of what their agents were sent. On SQLite the issuance writer
//! keeps the issuance side per batch ([`super::sqlite_counters`]); on PostgreSQL, and for
//! revocations on both, the migrations' triggers do.

use super::records::{BundleDelivery, Renewal, StoreError};
use super::Store;

/// How long counter rows of expired buckets are kept before [`Store::prune_counters`] drops
/// them: a late revocation or renewal of a just-expired certificate still finds its row.
const EXPIRED_KEPT_SECS: i64 = 3600;

impl Store {
    /// Records (replacing its previous one) `delivery`, as of `now`.
    pub async fn report_bundle_delivery(
        &self,
        delivery: &BundleDelivery,
        now: i64,
    ) -> Result<(), StoreError> {
        let received = serde_json::to_string(&delivery.received).unwrap_or_else(|_| "{}".into());
        let sql = "INSERT INTO bundle_deliveries (replica, reported_at, connected, received) \
                   VALUES ($1, $2, $3, $4) ON CONFLICT (replica) DO UPDATE SET \
                   reported_at = excluded.reported_at, connected = excluded.connected, \
                   received = excluded.received";
        with_pool!(self, pool => {
            sqlx::query(sql)
                .bind(&delivery.replica)
                .bind(now)
                .bind(delivery.connected)
                .bind(&received)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(StoreError::Query)
    }

    /// Every replica's report made at or after `since`; older ones (a replica that stopped)
    /// are left out.
    pub async fn bundle_deliveries(&self, since: i64) -> Result<Vec<BundleDelivery>, StoreError> {
        let sql = "SELECT replica, connected, received FROM bundle_deliveries \
                   WHERE reported_at >= $1 ORDER BY replica";
        let rows: Vec<(String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(since).fetch_all(pool).await
        })
        .map_err(StoreError::Query)?;
        Ok(rows
            .into_iter()
            .map(|(replica, connected, received)| BundleDelivery {
                replica,
                connected,
                received: serde_json::from_str(&received).unwrap_or_default(),
            })
            .collect())
    }

    /// Certificates from `authority_id` that are neither revoked nor expired at `now` (counted
    /// up to 10 s, the expiry bucket, past their expiry).
    pub async fn count_live_certificates(
        &self,
        authority_id: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let sql = "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM live_certificate_counts \
                   WHERE authority_id = $1 AND expires_bucket > $2";
        with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(sql).bind(authority_id).bind(now).fetch_one(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// Live identities at `now`, and those whose newest certificate's answer carried a bundle
    /// as of `since` or later (so it held every root that had joined by then).
    pub async fn identity_renewal(&self, since: i64, now: i64) -> Result<Renewal, StoreError> {
        self.renewal("identity_counts", since, now).await
    }

    /// Live workload certificates at `now`, and those whose answer carried a bundle as of
    /// `since` or later. Unlike identities this counts every pod: the replicas of a Deployment
    /// share one SPIFFE id, and one of them renewing says nothing of the others.
    pub async fn certificate_renewal(&self, since: i64, now: i64) -> Result<Renewal, StoreError> {
        self.renewal("bundle_counts", since, now).await
    }

    async fn renewal(&self, table: &str, since: i64, now: i64) -> Result<Renewal, StoreError> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN bundle_as_of >= $1 THEN n ELSE 0 END), 0) AS BIGINT) \
             FROM {table} WHERE expires_bucket > $2"
        );
        let (live, renewed): (i64, i64) = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(since).bind(now).fetch_one(pool).await
        })
        .map_err(StoreError::Query)?;
        Ok(Renewal { live, renewed })
    }

    /// Drops counter rows of buckets that expired more than an hour before `now`, so the sums
    /// stay over live buckets only. `identity_latest` is scanned (one row per identity, every
    /// ten minutes) rather than indexed by expiry, which would cost every issuance a page.
    pub async fn prune_counters(&self, now: i64) -> Result<(), StoreError> {
        let before = now - EXPIRED_KEPT_SECS;
        for sql in [
            "DELETE FROM live_certificate_counts WHERE expires_bucket <= $1",
            "DELETE FROM identity_counts WHERE expires_bucket <= $1",
            "DELETE FROM bundle_counts WHERE expires_bucket <= $1",
            "DELETE FROM identity_latest WHERE expires_bucket <= $1",
            "DELETE FROM bundle_deliveries WHERE reported_at <= $1",
        ] {
            with_pool!(self, pool => sqlx::query(sql).bind(before).execute(pool).await.map(drop))
                .map_err(StoreError::Query)?;
        }
        Ok(())
    }
}
