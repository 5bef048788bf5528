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
        let minutes = WindowMinutes::of(filter.issued_after, filter.issued_before);
        push_conditions(&mut conditions, filter, minutes, now, before_id);
        let limit = limit.max(0);
        let column = self.spiffe_id_column();
        let from = match filter.status {
            // Only "valid" looks at the revocation; the other queries leave it out, so that an
            // index holding every column they look at answers them without reading a row.
            Some(CertificateStatus::Valid) => CERTIFICATES_WITH_REVOCATIONS,
            _ => CERTIFICATES,
        };
        let ids = match filter.spiffe_id.as_deref() {
            // A prefix as a byte-wise range, which an index serves (LIKE would not, on SQLite or
            // under a linguistic PostgreSQL collation).
            Some(id) if id.ends_with('*') => {
                let prefix = &id[..id.len() - 1];
                match self.prefix_plan(prefix).await? {
                    PrefixPlan::NoIdentity => return Ok(Vec::new()),
                    PrefixPlan::PerIdentity(identities) => newest_ids_per_key(
                        &mut conditions,
                        from,
                        column,
                        identities.into_iter().map(Param::Text),
                        limit,
                    ),
                    PrefixPlan::Range { upper } => {
                        conditions.push(&format!("{column} >= ?"), Param::Text(prefix.to_string()));
                        if let Some(upper) = upper {
                            conditions.push(&format!("{column} < ?"), Param::Text(upper));
                        }
                        newest_ids_in_window(&mut conditions, from, minutes, limit)
                    }
                }
            }
            Some(id) => {
                conditions.push(&format!("{column} = ?"), Param::Text(id.to_string()));
                newest_ids(&conditions, from, limit)
            }
            None => newest_ids_in_window(&mut conditions, from, minutes, limit),
        };
        // The rows are read only for the ids chosen: a query that must look at many
        // candidates (an hour of a busy day is 40,000 certificates) reads them from an index,
        // not as ~1 KB rows.
        let sql = format!("{CERTIFICATE_ROW_SELECT} AND c.id IN ({ids}) ORDER BY c.id DESC");
        with_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, CertificateRow>(&sql);
            bind_params!(query, &conditions.params);
            query.fetch_all(pool).await
        })
        .map_err(StoreError::Query)
    }

    /// How to list the certificates whose SPIFFE id starts with `prefix`: the distinct ids
    /// under it, when there are at most [`PER_IDENTITY_PLAN_MAX`], found by a skip scan (one
    /// seek in the SPIFFE id index each, however many certificates each identity has); else
    /// one range scan.
    async fn prefix_plan(&self, prefix: &str) -> Result<PrefixPlan, StoreError> {
        let Some(upper) = prefix_upper_bound(prefix) else {
            return Ok(PrefixPlan::Range { upper: None });
        };
        let column = self.spiffe_id_column();
        let sql = format!(
            "WITH RECURSIVE ids(spiffe_id, k) AS ( \
               SELECT (SELECT MIN({column}) FROM issued_certificates c \
                       WHERE {column} >= $1 AND {column} < $2), 1 \
               UNION ALL \
               SELECT (SELECT MIN({column}) FROM issued_certificates c \
                       WHERE {column} > ids.spiffe_id AND {column} < $2), ids.k + 1 \
               FROM ids WHERE ids.spiffe_id IS NOT NULL AND ids.k <= $3) \
             SELECT spiffe_id FROM ids WHERE spiffe_id IS NOT NULL"
        );
        let identities: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar(&sql)
                .bind(prefix)
                .bind(&upper)
                .bind(PER_IDENTITY_PLAN_MAX as i64)
                .fetch_all(pool)
                .await
        })
        .map_err(StoreError::Query)?;
        Ok(match identities.len() {
            0 => PrefixPlan::NoIdentity,
            n if n <= PER_IDENTITY_PLAN_MAX => PrefixPlan::PerIdentity(identities),
            _ => PrefixPlan::Range { upper: Some(upper) },
        })
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

/// Up to this many identities, a SPIFFE id prefix is answered identity by identity (see
/// [`newest_ids_per_key`]); beyond, by one range scan, and a prefix that broad matches a large
/// share of the rows, so the newest of them are found near the top of the id order.
const PER_IDENTITY_PLAN_MAX: usize = 32;

/// How a SPIFFE id prefix is listed (see [`Store::prefix_plan`]).
enum PrefixPlan {
    /// No certificate has an id under the prefix.
    NoIdentity,
    /// These identities, each one's newest read on its own and merged.
    PerIdentity(Vec<String>),
    /// One scan of the ids from the prefix up to `upper` (none: every id above the prefix).
    Range { upper: Option<String> },
}

/// Every filter but the SPIFFE id, as conditions on `c` (the certificate) and `r` (its
/// revocation); the window of issue times also as the `minutes` it touches, which the
/// issue-time index is keyed by (migration 0010).
fn push_conditions(
    conditions: &mut Conditions,
    filter: &CertificateFilter,
    minutes: WindowMinutes,
    now: i64,
    before_id: Option<i64>,
) {
    if let Some(serial) = &filter.serial {
        conditions.push("c.serial = ?", Param::Text(serial.to_ascii_lowercase()));
    }
    conditions.push_texts([
        ("c.namespace = ?", &filter.namespace),
        ("c.service_account = ?", &filter.service_account),
        ("c.authority_id = ?", &filter.authority),
        ("c.requester_principal = ?", &filter.requester),
        ("c.requester_node = ?", &filter.requester_node),
    ]);
    match filter.impersonated_by.as_deref() {
        Some("*") => conditions.push_fixed("c.impersonated_by IS NOT NULL"),
        Some(agent) => conditions.push("c.impersonated_by = ?", Param::Text(agent.to_string())),
        None => {}
    }
    for (condition, value) in [
        (&format!("{ISSUED_MINUTE} >= ?")[..], minutes.first),
        (&format!("{ISSUED_MINUTE} <= ?")[..], minutes.last),
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
}

/// Certificates, as the inner queries of [`Store::certificates`] name them.
const CERTIFICATES: &str = "issued_certificates c";
/// Certificates with their revocation, if any.
const CERTIFICATES_WITH_REVOCATIONS: &str =
    "issued_certificates c LEFT JOIN certificate_revocations r ON r.serial = c.serial";

/// The ids of the newest `limit` certificates matching `conditions`.
fn newest_ids(conditions: &Conditions, from: &str, limit: i64) -> String {
    format!(
        "SELECT c.id FROM {from} WHERE 1 = 1{} ORDER BY c.id DESC LIMIT {limit}",
        conditions.sql
    )
}

/// The ids of the newest `limit` certificates matching `conditions`, whose window of issue
/// times touches `minutes`: minute by minute (see [`newest_ids_per_key`]) when the window is
/// bounded and spans at most [`PER_MINUTE_PLAN_MAX`] minutes, else one scan.
fn newest_ids_in_window(
    conditions: &mut Conditions,
    from: &str,
    minutes: WindowMinutes,
    limit: i64,
) -> String {
    match minutes.few() {
        Some(minutes) => newest_ids_per_key(
            conditions,
            from,
            ISSUED_MINUTE,
            minutes.map(Param::Int),
            limit,
        ),
        None => newest_ids(conditions, from, limit),
    }
}

/// The ids of the newest `limit` certificates matching `conditions` and `key = k` for one of
/// `keys` (the identities of a prefix, the minutes of a window): each key's newest `limit`, read
/// backwards along an index on `(key, id)`, then merged. One scan would read and sort every
/// certificate under all the keys (100,000 for a namespace of a busy day, 41,667 for an hour) to
/// keep 100; this reads at most `limit` per key. `keys` is not empty.
fn newest_ids_per_key(
    conditions: &mut Conditions,
    from: &str,
    key: &str,
    keys: impl IntoIterator<Item = Param>,
    limit: i64,
) -> String {
    let shared = conditions.sql.clone();
    let branches: Vec<String> = keys
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            conditions.params.push(value);
            format!(
                "SELECT id FROM (SELECT c.id FROM {from} WHERE 1 = 1{shared} AND {key} = ${} \
                 ORDER BY c.id DESC LIMIT {limit}) AS key_{i}",
                conditions.params.len()
            )
        })
        .collect();
    format!(
        "{} ORDER BY id DESC LIMIT {limit}",
        branches.join(" UNION ALL ")
    )
}

/// The minute of a certificate's issue, as the issue-time index (migration 0010) keys it.
/// Integer division truncates the same way in SQLite, PostgreSQL and Rust.
const ISSUED_MINUTE: &str = "c.issued_at / 60";
const MINUTE_SECS: i64 = 60;

/// Up to this many minutes, a window of issue times is answered minute by minute: an hour,
/// however it is aligned (61 minutes). Each minute is a branch of the query to plan (≈ 0.1 ms
/// on PostgreSQL) and up to `limit` index entries to read; a longer window is one scan of its
/// minutes' index range.
const PER_MINUTE_PLAN_MAX: i64 = 64;

/// The minutes of issue a window `[after, before)` can hold, as the index keys them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WindowMinutes {
    first: Option<i64>,
    last: Option<i64>,
}

impl WindowMinutes {
    /// A time `t` with `after <= t < before` has `after / 60 <= t / 60 <= (before - 1) / 60`,
    /// since truncating division never decreases.
    fn of(after: Option<i64>, before: Option<i64>) -> Self {
        Self {
            first: after.map(|t| t / MINUTE_SECS),
            last: before
                .and_then(|t| t.checked_sub(1))
                .map(|t| t / MINUTE_SECS),
        }
    }

    /// Every minute, when both ends are known and there are at most [`PER_MINUTE_PLAN_MAX`].
    fn few(self) -> Option<std::ops::RangeInclusive<i64>> {
        let (first, last) = (self.first?, self.last?);
        let count = last.checked_sub(first)?.checked_add(1)?;
        (1..=PER_MINUTE_PLAN_MAX)
            .contains(&count)
            .then_some(first..=last)
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

    #[test]
    fn window_minutes() {
        let hour = WindowMinutes::of(Some(3_600), Some(7_200));
        assert_eq!(hour.few(), Some(60..=119));
        // Unaligned, an hour touches 61 minutes.
        assert_eq!(
            WindowMinutes::of(Some(3_630), Some(7_230)).few(),
            Some(60..=120)
        );
        // One second; a window of nothing.
        assert_eq!(WindowMinutes::of(Some(59), Some(60)).few(), Some(0..=0));
        assert_eq!(WindowMinutes::of(Some(60), Some(60)).few(), None);
        // Too long, or open at either end: a scan, still bounded by the minutes it has.
        let day = WindowMinutes::of(Some(0), Some(86_400));
        assert_eq!(
            (day.first, day.last, day.few()),
            (Some(0), Some(1_439), None)
        );
        let open = WindowMinutes::of(Some(120), None);
        assert_eq!((open.first, open.last, open.few()), (Some(2), None, None));
        assert_eq!(WindowMinutes::of(None, Some(i64::MIN)).last, None);
        assert_eq!(
            WindowMinutes::of(Some(i64::MIN), Some(i64::MAX)).few(),
            None
        );
    }

    /// Both dialects' index is keyed by the expression the queries name, or neither uses it.
    #[test]
    fn the_index_is_keyed_by_the_minute_the_queries_name() {
        let expression = format!("({})", ISSUED_MINUTE.trim_start_matches("c."));
        assert_eq!(expression, "(issued_at / 60)");
        assert_eq!(MINUTE_SECS, 60);
        let keyed = format!("({expression}, id");
        let tenth: Vec<_> = [
            super::super::migrations::SQLITE,
            super::super::migrations::POSTGRES,
        ]
        .into_iter()
        .flat_map(|migrations| migrations.iter())
        .filter(|(file, _)| file.starts_with("0010_"))
        .collect();
        assert_eq!(tenth.len(), 2);
        for (file, sql) in tenth {
            assert!(sql.contains(&keyed), "{file}");
        }
    }
}
