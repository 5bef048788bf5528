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
use sqlx::{ConnectOptions, Connection};

use crate::audit::{verify_chain, AuditEvent, AuditRecord, BrokenLink, GENESIS_HASH};
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
    /// From the SQLite issuance writer ([`crate::sqlite_writer`]).
    #[error("store query failed: {0}")]
    Sqlite(#[source] rusqlite::Error),
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

/// Appends `$event` to the audit chain inside transaction `$tx`: bump the head (this takes the
/// row lock that serializes writers), read the previous hash, insert, move the head.
macro_rules! append_audit_in {
    ($tx:ident, $event:expr) => {{
        sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1")
            .execute(&mut *$tx)
            .await?;
        let (seq, prev): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(&mut *$tx)
                .await?;
        let record = $event.chained(seq, &prev);
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor_method, actor_principal, action, target, \
             outcome, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(record.seq)
        .bind(record.at)
        .bind(&record.actor_method)
        .bind(&record.actor_principal)
        .bind(&record.action)
        .bind(&record.target)
        .bind(&record.outcome)
        .bind(&record.details)
        .bind(&record.prev_hash)
        .bind(&record.hash)
        .execute(&mut *$tx)
        .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
            .bind(&record.hash)
            .execute(&mut *$tx)
            .await?;
        record
    }};
}

/// Binds one issuance row's values, in [`ISSUANCE_COLUMNS`] order, in a multi-row insert.
macro_rules! bind_issuance_row {
    ($row:ident, $r:expr) => {
        $row.push_bind(&$r.serial)
            .push_bind(&$r.spiffe_id)
            .push_bind(&$r.trust_domain)
            .push_bind(&$r.namespace)
            .push_bind(&$r.service_account)
            .push_bind($r.not_before)
            .push_bind($r.not_after)
            .push_bind($r.issued_at)
            .push_bind(&$r.authority_id)
            .push_bind(&$r.requester_method)
            .push_bind(&$r.requester_principal)
            .push_bind(&$r.peer_address)
            .push_bind(&$r.cluster_id)
            .push_bind(&$r.public_key_sha256)
            .push_bind(&$r.cert_der)
    };
}

/// Binds one audit record's values, in [`AUDIT_COLUMNS`] order, in a multi-row insert.
macro_rules! bind_audit_row {
    ($row:ident, $record:expr) => {
        $row.push_bind($record.seq)
            .push_bind($record.at)
            .push_bind(&$record.actor_method)
            .push_bind(&$record.actor_principal)
            .push_bind(&$record.action)
            .push_bind(&$record.target)
            .push_bind(&$record.outcome)
            .push_bind(&$record.details)
            .push_bind(&$record.prev_hash)
            .push_bind(&$record.hash)
    };
}

/// The body of a group commit, inside the caller's write transaction `$tx`: a handful of
/// multi-row statements per batch, not a handful per certificate, because each statement is a
/// round trip (to SQLite's worker thread or to PostgreSQL). Yields which items went in.
macro_rules! insert_issuances_in {
    ($tx:ident, $items:expr) => {{
        let items: &[(&IssuanceRecord, &AuditEvent)] = $items;
        let mut new_serials = std::collections::HashSet::new();
        for chunk in items.chunks(ISSUANCE_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(format!(
                "INSERT INTO issued_certificates ({ISSUANCE_COLUMNS}) "
            ));
            insert.push_values(chunk, |mut row, (r, _)| {
                bind_issuance_row!(row, r);
            });
            insert.push(" ON CONFLICT (serial) DO NOTHING RETURNING serial");
            let serials: Vec<String> = insert.build_query_scalar().fetch_all(&mut *$tx).await?;
            new_serials.extend(serials);
        }
        // A serial twice in one batch went in once: the first holder has it.
        let inserted: Vec<bool> = items
            .iter()
            .map(|(r, _)| new_serials.remove(&r.serial))
            .collect();
        let events: Vec<&AuditEvent> = items
            .iter()
            .zip(&inserted)
            .filter(|(_, ok)| **ok)
            .map(|((_, audit), _)| *audit)
            .collect();
        if !events.is_empty() {
            let count = events.len() as i64;
            let (last_seq, prev): (i64, String) = sqlx::query_as(
                "UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash",
            )
            .bind(count)
            .fetch_one(&mut *$tx)
            .await?;
            let records = crate::audit::chain(events, last_seq - count + 1, &prev);
            for chunk in records.chunks(AUDIT_ROWS_PER_STATEMENT) {
                let mut insert =
                    sqlx::QueryBuilder::new(format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) "));
                insert.push_values(chunk, |mut row, record| {
                    bind_audit_row!(row, record);
                });
                insert.build().execute(&mut *$tx).await?;
            }
            let head_hash = &records.last().expect("at least one event").hash;
            sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
                .bind(head_hash)
                .execute(&mut *$tx)
                .await?;
        }
        inserted
    }};
}

/// An `audit_events` row in [`AUDIT_COLUMNS`] order, as sqlx reads it ([`AuditRecord`] is
/// I/O-free and knows no database).
type AuditRow = (
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

fn audit_record(row: AuditRow) -> AuditRecord {
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

const AUDIT_COLUMNS: &str = "seq, at, actor_method, actor_principal, action, target, outcome, \
    details, prev_hash, hash";

/// Filters for `GET /v1/audit`; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    pub target: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
}

/// Write transactions. SQLite's default deferred transaction takes the write lock only at its
/// first write, and a reader that then wants to write fails at once with "database is locked"
/// when another writer got there first; `BEGIN IMMEDIATE` queues for the lock up front.
trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
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
enum Param {
    Text(String),
    Int(i64),
}

/// A WHERE clause under construction: `?` in each condition becomes the next `$n`.
#[derive(Debug, Default)]
struct Conditions {
    sql: String,
    params: Vec<Param>,
}

impl Conditions {
    fn push(&mut self, condition: &str, param: Param) {
        self.params.push(param);
        let placeholder = format!("${}", self.params.len());
        self.sql.push_str(" AND ");
        self.sql.push_str(&condition.replace('?', &placeholder));
    }

    fn push_fixed(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }
}

/// Binds `$params` to `$query` in order.
macro_rules! bind_params {
    ($query:ident, $params:expr) => {
        for param in $params {
            $query = match param {
                Param::Text(t) => $query.bind(t.clone()),
                Param::Int(i) => $query.bind(*i),
            };
        }
    };
}

/// What an auditor can filter certificates by; all optional, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct CertificateFilter {
    pub serial: Option<String>,
    /// Exact, or a prefix when it ends with `*`.
    pub spiffe_id: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub authority: Option<String>,
    /// The requester's principal (service account, Athenz CN, SPIFFE id).
    pub requester: Option<String>,
    pub issued_after: Option<i64>,
    pub issued_before: Option<i64>,
    pub expires_after: Option<i64>,
    pub expires_before: Option<i64>,
    pub status: Option<CertificateStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Unexpired and not revoked.
    Valid,
    Expired,
    Revoked,
}

/// A certificate in the inventory (without its DER).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CertificateRow {
    pub id: i64,
    pub serial: String,
    pub spiffe_id: String,
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
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
}

const CERTIFICATE_ROW_SELECT: &str = "SELECT c.id, c.serial, c.spiffe_id, c.namespace, \
    c.service_account, c.not_before, c.not_after, c.issued_at, c.authority_id, \
    c.requester_method, c.requester_principal, c.peer_address, c.cluster_id, \
    c.public_key_sha256, r.revoked_at, r.reason AS revocation_reason \
    FROM issued_certificates c LEFT JOIN certificate_revocations r ON r.serial = c.serial \
    WHERE 1 = 1";

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

/// Rows per multi-row INSERT, keeping the bound parameters (15 and 10 per row) well under
/// SQLite's and PostgreSQL's limits.
const ISSUANCE_ROWS_PER_STATEMENT: usize = 64;
const AUDIT_ROWS_PER_STATEMENT: usize = 96;

const AUTHORITY_COLUMNS: &str = "id, state, source, key_type, cert_der, chain_pem, roots_pem, \
    sealed_key, kek_id, created_at, updated_at";

/// A connection of its own for the group-commit writer ([`crate::commit`]) on PostgreSQL (and
/// on an in-memory SQLite database; a database file gets [`crate::sqlite_writer`]), outside the
/// pool: its prepared statements stay warm and readers never wait behind it for a pooled
/// connection. A connection that fails is dropped and a new one opened for the next batch.
#[derive(Debug)]
pub struct IssuanceWriter {
    store: Store,
    connection: Option<WriterConnection>,
    /// The audit head this writer's last batch left, while batches on PostgreSQL go in one
    /// statement (see [`insert_issuances_in_one_statement`]); `None` until one is known or
    /// after a guessed head turned out stale.
    audit_head: Option<(i64, String)>,
    /// Batches to send the ordinary way before guessing the head again: with other replicas
    /// appending to the same log a guess mostly misses, and a miss costs a statement.
    guesses_paused: u32,
}

#[derive(Debug)]
enum WriterConnection {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// How many batches the writer sends the ordinary way after a guessed audit head missed.
const HEAD_GUESS_PAUSE: u32 = 32;

impl IssuanceWriter {
    async fn connect(store: &Store) -> Result<WriterConnection, sqlx::Error> {
        Ok(match store {
            Store::Sqlite(pool) => {
                WriterConnection::Sqlite(pool.connect_options().connect().await?)
            }
            Store::Postgres(pool) => {
                WriterConnection::Postgres(pool.connect_options().connect().await?)
            }
        })
    }

    /// [`Store::insert_issuances`] on this writer's connection.
    pub async fn insert_issuances(
        &mut self,
        items: &[(&IssuanceRecord, &AuditEvent)],
    ) -> Result<Vec<bool>, StoreError> {
        // The writer's connection lives and dies with the store: once the pool is closed
        // (shutting down), nothing more is recorded.
        let closed = with_pool!(&self.store, pool => pool.is_closed());
        if closed {
            self.connection = None;
            return Err(StoreError::Query(sqlx::Error::PoolClosed));
        }
        let outcome = self.insert_on_connection(items).await;
        if outcome.is_err() {
            self.connection = None;
            self.audit_head = None;
        }
        outcome.map_err(StoreError::Query)
    }

    async fn insert_on_connection(
        &mut self,
        items: &[(&IssuanceRecord, &AuditEvent)],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot @ None => slot.insert(Self::connect(&self.store).await?),
        };
        match connection {
            WriterConnection::Sqlite(connection) => {
                let mut tx = connection.begin_with("BEGIN IMMEDIATE").await?;
                let inserted = insert_issuances_in!(tx, items);
                tx.commit().await?;
                Ok(inserted)
            }
            WriterConnection::Postgres(connection) => {
                if self.guesses_paused > 0 {
                    self.guesses_paused -= 1;
                } else if let Some(head) = self.audit_head.take() {
                    let mut tx = connection.begin().await?;
                    match insert_issuances_in_one_statement(&mut tx, items, &head).await? {
                        Some(moved_to) => {
                            tx.commit().await?;
                            self.audit_head = Some(moved_to);
                            return Ok(vec![true; items.len()]);
                        }
                        None => {
                            tx.rollback().await?;
                            self.guesses_paused = HEAD_GUESS_PAUSE;
                        }
                    }
                }
                let mut tx = connection.begin().await?;
                let inserted = insert_issuances_in!(tx, items);
                let head: (i64, String) =
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                self.audit_head = Some(head);
                Ok(inserted)
            }
        }
    }
}

/// A batch on PostgreSQL in one statement, three round trips with begin and commit instead of
/// six: the issuances, their audit events chained from `head` as this writer last left it, and
/// the head's move, guarded by that head. The statement's counts say whether it all applied;
/// if a serial was already on record or another writer (a REST action, another replica) moved
/// the head since, it gives `None` and the caller rolls back and takes the ordinary path.
async fn insert_issuances_in_one_statement(
    tx: &mut sqlx::PgConnection,
    items: &[(&IssuanceRecord, &AuditEvent)],
    head: &(i64, String),
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let records = crate::audit::chain(items.iter().map(|(_, event)| *event), head.0 + 1, &head.1);
    let count = items.len() as i64;
    let last_hash = records
        .last()
        .map_or_else(|| head.1.clone(), |r| r.hash.clone());
    let moved_to = (head.0 + count, last_hash);
    let mut statement = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
        "WITH ins AS (INSERT INTO issued_certificates ({ISSUANCE_COLUMNS}) "
    ));
    statement.push_values(items, |mut row, (r, _)| {
        bind_issuance_row!(row, r);
    });
    statement.push(
        " ON CONFLICT (serial) DO NOTHING RETURNING 1), head AS (UPDATE audit_head SET seq = ",
    );
    statement.push_bind(moved_to.0);
    statement.push(", hash = ");
    statement.push_bind(&moved_to.1);
    statement.push(" WHERE id = 1 AND seq = ");
    statement.push_bind(head.0);
    statement.push(" AND hash = ");
    statement.push_bind(&head.1);
    statement.push(format!(
        " RETURNING 1), events AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) SELECT * FROM ("
    ));
    statement.push_values(&records, |mut row, record| {
        bind_audit_row!(row, record);
    });
    statement.push(") AS v WHERE (SELECT count(*) FROM ins) = ");
    statement.push_bind(count);
    statement.push(
        " AND EXISTS (SELECT 1 FROM head) RETURNING 1) \
         SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM head), \
         (SELECT count(*) FROM events)",
    );
    let (issued, moved, appended): (i64, i64, i64) =
        statement.build_query_as().fetch_one(&mut *tx).await?;
    Ok((issued == count && moved == 1 && appended == count).then_some(moved_to))
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

    /// Cheap liveness probe for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(StoreError::Query)
    }

    /// Records an issuance and its audit event in one transaction: both or neither. Returns
    /// only after the transaction is durable.
    pub async fn insert_issuance(
        &self,
        r: &IssuanceRecord,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        match self.insert_issuances(&[(r, audit)]).await?[..] {
            [true] => Ok(()),
            _ => Err(StoreError::DuplicateSerial(r.serial.clone())),
        }
    }

    /// Records several issuances, each with its audit event, in one transaction: the group
    /// commit behind [`crate::commit::IssuanceCommitter`]. One durable commit then covers the
    /// whole batch instead of one per certificate. Per item, `false` means its serial was
    /// already on record: that item (and its audit event) was left out and the rest went in.
    /// An error means nothing of the batch was committed.
    pub async fn insert_issuances(
        &self,
        items: &[(&IssuanceRecord, &AuditEvent)],
    ) -> Result<Vec<bool>, StoreError> {
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let inserted = insert_issuances_in!(tx, items);
                tx.commit().await?;
                Ok(inserted)
            }
            .await
        })
        .map_err(StoreError::Query)
    }

    /// The issuance writer's own connection; see [`IssuanceWriter`].
    pub fn issuance_writer(&self) -> IssuanceWriter {
        IssuanceWriter {
            store: self.clone(),
            connection: None,
            audit_head: None,
            guesses_paused: 0,
        }
    }

    /// Appends one event to the audit chain.
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<AuditRecord, StoreError> {
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let record = append_audit_in!(tx, event);
                tx.commit().await?;
                Ok(record)
            }
            .await
        })
        .map_err(StoreError::Query)
    }

    /// Audit events newest first, matching `filter`, before `before_seq` (the cursor).
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut conditions = Conditions::default();
        for (column, value) in [
            ("action = ?", &filter.action),
            ("actor_principal = ?", &filter.actor),
            ("outcome = ?", &filter.outcome),
            ("target = ?", &filter.target),
        ] {
            if let Some(v) = value {
                conditions.push(column, Param::Text(v.clone()));
            }
        }
        for (condition, value) in [
            ("at >= ?", filter.since),
            ("at < ?", filter.until),
            ("seq < ?", before_seq),
        ] {
            if let Some(v) = value {
                conditions.push(condition, Param::Int(v));
            }
        }
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1{} ORDER BY seq DESC LIMIT {}",
            conditions.sql,
            limit.max(0)
        );
        with_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, AuditRow>(&sql);
            bind_params!(query, &conditions.params);
            query.fetch_all(pool).await
        })
        .map(|rows| rows.into_iter().map(audit_record).collect())
        .map_err(StoreError::Query)
    }

    /// The chain's head: the last sequence number and hash written.
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        with_pool!(self, pool => {
            sqlx::query_as::<_, (i64, String)>("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(pool)
                .await
        })
        .map_err(StoreError::Query)
    }

    /// Audit events in chain order after `after_seq` up to `through_seq`, for verification page
    /// by page.
    async fn audit_chain_page(
        &self,
        after_seq: i64,
        through_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 AND seq <= $2 \
             ORDER BY seq LIMIT $3"
        );
        with_pool!(self, pool => {
            sqlx::query_as::<_, AuditRow>(&sql)
                .bind(after_seq)
                .bind(through_seq)
                .bind(limit)
                .fetch_all(pool)
                .await
        })
        .map(|rows| rows.into_iter().map(audit_record).collect())
        .map_err(StoreError::Query)
    }

    /// Walks the audit chain from its genesis to the head as it stands now: `Ok((seq, hash))`
    /// of the head when every link holds, the first broken link otherwise.
    pub async fn verify_audit_log(&self) -> Result<Result<(i64, String), BrokenLink>, StoreError> {
        let head = self.audit_head().await?;
        self.verify_audit_log_through(head).await
    }

    /// Walks the audit chain from its genesis to `head`, a head read before the walk. Events
    /// appended while the walk runs lie past that head and are left to the next walk: reading
    /// them would compare a longer chain with an older head and report a cut that is not there.
    pub async fn verify_audit_log_through(
        &self,
        (head_seq, head_hash): (i64, String),
    ) -> Result<Result<(i64, String), BrokenLink>, StoreError> {
        /// Events checked per store round trip.
        const PAGE: i64 = 1000;
        let mut tail = (0, GENESIS_HASH.to_string());
        loop {
            let page = self.audit_chain_page(tail.0, head_seq, PAGE).await?;
            if page.is_empty() {
                break;
            }
            match verify_chain(&page, tail.0, tail.1) {
                Ok(next) => tail = next,
                Err(broken) => return Ok(Err(broken)),
            }
        }
        // Rows cut from the end leave the chain consistent but shorter than its recorded head.
        if tail.0 != head_seq || tail.1 != head_hash {
            return Ok(Err(BrokenLink {
                seq: tail.0 + 1,
                reason: format!(
                    "the log ends at event {} but its head says {head_seq}",
                    tail.0
                ),
            }));
        }
        Ok(Ok(tail))
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

    /// (id, state) of every authority, in the order [`Store::authorities`] returns them.
    pub async fn authority_states(&self) -> Result<Vec<(String, String)>, StoreError> {
        let sql = "SELECT id, state FROM authorities ORDER BY created_at, id";
        with_pool!(self, pool => sqlx::query_as::<_, (String, String)>(sql).fetch_all(pool).await)
            .map_err(StoreError::Query)
    }

    /// Records a new authority as `prepared`: its root joins the bundle, nothing is signed.
    /// With its audit event, in one transaction.
    pub async fn insert_prepared_authority(
        &self,
        a: &StoredAuthority,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO authorities ({AUTHORITY_COLUMNS}) VALUES \
             ($1, 'prepared', $2, $3, $4, $5, $6, $7, $8, $9, $9)"
        );
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
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
                    .execute(&mut *tx)
                    .await?;
                append_audit_in!(tx, audit);
                tx.commit().await
            }
            .await
        })
        .map_err(StoreError::Query)
    }

    /// Moves authority `id` from state `from` to `to` in one transaction, with its audit event.
    /// Activating also demotes the current active authority to `old`, so exactly one stays
    /// active.
    pub async fn transition_authority(
        &self,
        id: &str,
        from: &'static str,
        to: &'static str,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), TransitionError> {
        let query_failed = |e| TransitionError::Store(StoreError::Query(e));
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await.map_err(query_failed)?;
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
            async {
                append_audit_in!(tx, audit);
                Ok::<_, sqlx::Error>(())
            }
            .await
            .map_err(query_failed)?;
            tx.commit().await.map_err(query_failed)
        })
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
                let column = match self {
                    Store::Sqlite(_) => "c.spiffe_id",
                    Store::Postgres(_) => "c.spiffe_id COLLATE \"C\"",
                };
                conditions.push(&format!("{column} >= ?"), Param::Text(prefix.to_string()));
                if let Some(upper) = prefix_upper_bound(prefix) {
                    conditions.push(&format!("{column} < ?"), Param::Text(upper));
                }
            }
            Some(id) => conditions.push("c.spiffe_id = ?", Param::Text(id.to_string())),
            None => {}
        }
        for (condition, value) in [
            ("c.namespace = ?", &filter.namespace),
            ("c.service_account = ?", &filter.service_account),
            ("c.authority_id = ?", &filter.authority),
            ("c.requester_principal = ?", &filter.requester),
        ] {
            if let Some(v) = value {
                conditions.push(condition, Param::Text(v.clone()));
            }
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
