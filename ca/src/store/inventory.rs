//! The certificate inventory in the store: issuance records by serial, identity or key, the
//! auditor's filtered listing, and revocations.

use super::records::{
    CertificateFilter, CertificateRow, CertificateStatus, IssuanceRecord, RevocationRecord,
    StoreError,
};
use super::sql::{bind_params, Conditions, Param, CERTIFICATE_ROW_SELECT, ISSUANCE_COLUMNS};
use super::Store;
use crate::identity::Serial;

impl Store {
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
            "SELECT {ISSUANCE_COLUMNS} FROM issued_certificates c WHERE {} = $1 \
             ORDER BY id DESC LIMIT $2",
            self.spiffe_id_column()
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

    /// Issuances of certificates for one public key (SHA-256 of its SPKI, hex). A scan: no API
    /// asks this, and an index keyed by a hash would cost every commit a page per issuance.
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

    /// The inventory, newest first: certificates matching `filter` (status relative to `now`)
    /// with an id below `before_id` (the cursor), at most `limit`.
    pub async fn certificates(
        &self,
        filter: &CertificateFilter,
        now: i64,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CertificateRow>, StoreError> {
        let mut conditions = Conditions::default();
        if let Some(serial) = &filter.serial {
            conditions.push("c.serial = ?", Param::Text(serial.to_ascii_lowercase()));
        }
        match filter.spiffe_id.as_deref() {
            Some(id) if id.ends_with('*') => {
                // A prefix as a byte-wise range, which an index serves (LIKE would not, on
                // SQLite or under a linguistic PostgreSQL collation).
                let prefix = &id[..id.len() - 1];
                let column = self.spiffe_id_column();
                conditions.push(&format!("{column} >= ?"), Param::Text(prefix.to_string()));
                if let Some(upper) = prefix_upper_bound(prefix) {
                    conditions.push(&format!("{column} < ?"), Param::Text(upper));
                }
            }
            Some(id) => conditions.push(
                &format!("{} = ?", self.spiffe_id_column()),
                Param::Text(id.to_string()),
            ),
            None => {}
        }
        for (condition, value) in [
            ("c.namespace = ?", &filter.namespace),
            ("c.service_account = ?", &filter.service_account),
            ("c.authority_id = ?", &filter.authority),
            ("c.requester_principal = ?", &filter.requester),
            ("c.requester_node = ?", &filter.requester_node),
        ] {
            if let Some(v) = value {
                conditions.push(condition, Param::Text(v.clone()));
            }
        }
        match filter.impersonated_by.as_deref() {
            Some("*") => conditions.push_fixed("c.impersonated_by IS NOT NULL"),
            Some(agent) => conditions.push("c.impersonated_by = ?", Param::Text(agent.to_string())),
            None => {}
        }
        for (condition, value) in [
            ("c.issued_at >= ?", filter.issued_after),
            ("c.issued_at < ?", filter.issued_before),
            ("c.not_after >= ?", filter.expires_after),
            ("c.not_after < ?", filter.expires_before),
            ("c.id < ?", before_id),
        ] {
            if let Some(v) = value {
                conditions.push(condition, Param::Int(v));
            }
        }
        match filter.status {
            Some(CertificateStatus::Valid) => {
                conditions.push("c.not_after > ?", Param::Int(now));
                conditions.push_fixed("r.serial IS NULL");
            }
            Some(CertificateStatus::Expired) => {
                conditions.push("c.not_after <= ?", Param::Int(now));
            }
            // Driven from the (small) revocations table rather than a scan of every row.
            Some(CertificateStatus::Revoked) => {
                conditions.push_fixed("c.serial IN (SELECT serial FROM certificate_revocations)")
            }
            None => {}
        }
        let sql = format!(
            "{CERTIFICATE_ROW_SELECT}{} ORDER BY c.id DESC LIMIT {}",
            conditions.sql,
            limit.max(0)
        );
        with_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, CertificateRow>(&sql);
            bind_params!(query, &conditions.params);
            query.fetch_all(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// Revocations of certificates `authority_id` issued: the entries of its CRL.
    pub async fn revocations_for_authority(
        &self,
        authority_id: &str,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let sql = "SELECT r.serial, r.reason, r.revoked_at, r.actor \
                   FROM certificate_revocations r \
                   JOIN issued_certificates c ON c.serial = r.serial \
                   WHERE c.authority_id = $1 ORDER BY r.revoked_at, r.serial";
        with_pool!(self, pool => {
            sqlx::query_as::<_, RevocationRecord>(sql).bind(authority_id).fetch_all(pool).await
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

    /// `issued_certificates c`'s SPIFFE id as its index has it: in byte order, which PostgreSQL
    /// gives only under the "C" collation (the one index there), so that both exact ids and
    /// prefixes as ranges use it.
    fn spiffe_id_column(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "c.spiffe_id",
            Store::Postgres(_) => "c.spiffe_id COLLATE \"C\"",
        }
    }
}

/// The least string above every string starting with `prefix` (in code-point order, which
/// is UTF-8 byte order): the prefix with its last character incremented. `None` when there is
/// no bound (empty prefix, or only `char::MAX`).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(
            prefix_upper_bound("spiffe://td/ns/a/").as_deref(),
            Some("spiffe://td/ns/a0")
        );
        assert_eq!(prefix_upper_bound("ns_").as_deref(), Some("ns`"));
        assert_eq!(prefix_upper_bound(""), None);
        let top = format!("a{}", char::MAX);
        assert_eq!(prefix_upper_bound(&top).as_deref(), Some("b"));
    }
}
