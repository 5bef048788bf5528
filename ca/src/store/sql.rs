//! The SQL of the store, written once: each table's column list, the audit chain's head
//! protocol, and the helpers that build filtered queries. sqlx runs these statements on both
//! SQLite and PostgreSQL (`$n` placeholders work on both), and the SQLite issuance writer runs
//! the same texts through rusqlite, so no column list or head step is spelled twice.

use std::sync::LazyLock;

use crate::audit::AuditRecord;

pub(crate) const ISSUANCE_COLUMNS: &str = "serial, spiffe_id, trust_domain, namespace, \
    service_account, not_before, not_after, issued_at, authority_id, requester_method, \
    requester_principal, peer_address, cluster_id, public_key_sha256, cert_der, bundle_as_of, \
    impersonated_by, requester_pod, requester_node";

pub(crate) const AUDIT_COLUMNS: &str = "seq, at, actor_method, actor_principal, action, target, \
    outcome, details, prev_hash, hash";

pub(crate) const AUTHORITY_COLUMNS: &str = "id, state, source, key_type, cert_der, chain_pem, \
    roots_pem, sealed_key, kek_id, created_at, updated_at";

/// The inventory's rows: certificates with their revocation, if any. Conditions follow as
/// `AND …`.
pub(crate) const CERTIFICATE_ROW_SELECT: &str = "SELECT c.id, c.serial, c.spiffe_id, \
    c.namespace, c.service_account, c.not_before, c.not_after, c.issued_at, c.authority_id, \
    c.requester_method, c.requester_principal, c.peer_address, c.cluster_id, \
    c.public_key_sha256, c.impersonated_by, c.requester_pod, c.requester_node, r.revoked_at, \
    r.reason AS revocation_reason \
    FROM issued_certificates c LEFT JOIN certificate_revocations r ON r.serial = c.serial \
    WHERE 1 = 1";

/// One issuance; a serial already on record changes no row (the caller signs again).
pub(crate) static INSERT_ISSUANCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO issued_certificates ({ISSUANCE_COLUMNS}) VALUES ({}) \
         ON CONFLICT (serial) DO NOTHING",
        placeholders(19)
    )
});

/// The revocation of the certificate a renewal presented, read inside the transaction that
/// would record the renewed one.
pub(crate) const RENEWED_REVOCATION: &str =
    "SELECT reason FROM certificate_revocations WHERE serial = $1";

/// One authority, in the state bound to `$2`, created and last updated at `$10`.
pub(crate) static INSERT_AUTHORITY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO authorities ({AUTHORITY_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
    )
});

/// One chained audit event.
pub(crate) static INSERT_AUDIT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ({})",
        placeholders(10)
    )
});

// The audit chain's head protocol. Every writer appends events the same way, inside its write
// transaction: advance the head by the number of events (this takes the row lock that
// serializes writers) and learn where it stood, chain the events from there, insert them, and
// set the head's hash to the last one's.

/// Advances the head by `$1` events; answers the new last sequence number and the hash the
/// chain continues from.
pub(crate) const ADVANCE_AUDIT_HEAD: &str =
    "UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash";
/// Moves the head's hash to the last event appended.
pub(crate) const SET_AUDIT_HEAD_HASH: &str = "UPDATE audit_head SET hash = $1 WHERE id = 1";
pub(crate) const READ_AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";

/// Rows per multi-row INSERT, keeping the bound parameters (19 and 10 per row) well under
/// SQLite's and PostgreSQL's limits.
pub(crate) const ISSUANCE_ROWS_PER_STATEMENT: usize = 64;
pub(crate) const AUDIT_ROWS_PER_STATEMENT: usize = 96;

fn placeholders(count: usize) -> String {
    (1..=count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds one issuance row's values, in [`ISSUANCE_COLUMNS`] order, in a multi-row insert.
macro_rules! bind_issuance_row {
    ($row:ident, $r:expr) => {
        $row.push_bind(&$r.issuance.serial)
            .push_bind(&$r.issuance.spiffe_id)
            .push_bind(&$r.trust_domain)
            .push_bind(&$r.issuance.namespace)
            .push_bind(&$r.issuance.service_account)
            .push_bind($r.issuance.not_before)
            .push_bind($r.issuance.not_after)
            .push_bind($r.issuance.issued_at)
            .push_bind(&$r.issuance.authority_id)
            .push_bind(&$r.issuance.requester_method)
            .push_bind(&$r.issuance.requester_principal)
            .push_bind(&$r.issuance.peer_address)
            .push_bind(&$r.issuance.cluster_id)
            .push_bind(&$r.issuance.public_key_sha256)
            .push_bind(&$r.cert_der)
            .push_bind($r.bundle_as_of)
            .push_bind(&$r.issuance.impersonated_by)
            .push_bind(&$r.issuance.requester_pod)
            .push_bind(&$r.issuance.requester_node)
    };
}
pub(crate) use bind_issuance_row;

/// Binds one chained audit event's values ([`crate::audit::ChainedEvent`]), in
/// [`AUDIT_COLUMNS`] order, in a multi-row insert.
macro_rules! bind_audit_row {
    ($row:ident, $record:expr) => {
        $row.push_bind($record.seq)
            .push_bind($record.event.at)
            .push_bind(&$record.event.actor_method)
            .push_bind(&$record.event.actor_principal)
            .push_bind(&$record.event.action)
            .push_bind(&$record.event.target)
            .push_bind($record.event.outcome.as_str())
            .push_bind($record.event.details.as_str())
            .push_bind(&$record.prev_hash)
            .push_bind(&$record.hash)
    };
}
pub(crate) use bind_audit_row;

/// The head protocol on sqlx, for either dialect: appends `$events` (`&[&AuditEvent]`, at least
/// one) inside transaction `$tx` and yields them chained ([`crate::audit::ChainedEvent`]).
/// (A macro rather than a function: sqlx's executor bounds for a transaction of either
/// database do not fit one signature.)
macro_rules! append_audit_events_in {
    ($tx:ident, $events:expr) => {{
        let events: &[&crate::audit::AuditEvent] = $events;
        let count = events.len() as i64;
        let (last_seq, prev): (i64, String) =
            sqlx::query_as($crate::store::sql::ADVANCE_AUDIT_HEAD)
                .bind(count)
                .fetch_one(&mut *$tx)
                .await?;
        let records = crate::audit::chain(events.iter().copied(), last_seq - count + 1, &prev);
        for chunk in records.chunks($crate::store::sql::AUDIT_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(format!(
                "INSERT INTO audit_events ({}) ",
                $crate::store::sql::AUDIT_COLUMNS
            ));
            insert.push_values(chunk, |mut row, record| {
                $crate::store::sql::bind_audit_row!(row, record);
            });
            insert.build().execute(&mut *$tx).await?;
        }
        let head_hash = &records.last().expect("at least one event").hash;
        sqlx::query($crate::store::sql::SET_AUDIT_HEAD_HASH)
            .bind(head_hash)
            .execute(&mut *$tx)
            .await?;
        records
    }};
}
pub(crate) use append_audit_events_in;

/// An `audit_events` row in [`AUDIT_COLUMNS`] order, as sqlx reads it ([`AuditRecord`] is
/// I/O-free and knows no database).
pub(crate) type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

pub(crate) fn audit_record(row: AuditRow) -> AuditRecord {
    let (seq, at, actor_method, actor_principal, action, target, outcome, details, prev_hash, hash) =
        row;
    AuditRecord {
        seq,
        at,
        actor_method,
        actor_principal,
        action,
        target,
        outcome,
        details,
        prev_hash,
        hash,
    }
}

/// Write transactions. SQLite's default deferred transaction takes the write lock only at its
/// first write, and a reader that then wants to write fails at once with "database is locked"
/// when another writer got there first; `BEGIN IMMEDIATE` queues for the lock up front.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send {
        self.begin()
    }
}

/// One query parameter of a dynamically built query.
#[derive(Clone, Debug)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// A WHERE clause under construction: `?` in each condition becomes the next `$n`.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    pub(crate) sql: String,
    pub(crate) params: Vec<Param>,
}

impl Conditions {
    pub(crate) fn push(&mut self, condition: &str, param: Param) {
        self.params.push(param);
        let placeholder = format!("${}", self.params.len());
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition.replace('?', &placeholder));
    }

    /// Each condition whose text value is set, with that value.
    pub(crate) fn push_texts<'a>(
        &mut self,
        conditions: impl IntoIterator<Item = (&'a str, &'a Option<String>)>,
    ) {
        for (condition, value) in conditions {
            if let Some(v) = value {
                self.push(condition, Param::Text(v.clone()));
            }
        }
    }

    pub(crate) fn push_fixed(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }
}

/// Binds `$params` to `$query` in order.
macro_rules! bind_params {
    ($query:ident, $params:expr) => {
        for param in $params {
            $query = match param {
                $crate::store::sql::Param::Text(t) => $query.bind(t.clone()),
                $crate::store::sql::Param::Int(i) => $query.bind(*i),
            };
        }
    };
}
pub(crate) use bind_params;

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements rusqlite prepares name every column once, in order, with a placeholder
    /// each.
    #[test]
    fn single_row_inserts_bind_every_column() {
        assert!(INSERT_ISSUANCE.contains("requester_node) VALUES ($1, $2,"));
        assert!(INSERT_ISSUANCE.contains("$19) ON CONFLICT (serial) DO NOTHING"));
        assert_eq!(ISSUANCE_COLUMNS.split(',').count(), 19);
        assert!(INSERT_AUDIT_EVENT.ends_with("$9, $10)"));
        assert_eq!(AUDIT_COLUMNS.split(',').count(), 10);
    }
}
