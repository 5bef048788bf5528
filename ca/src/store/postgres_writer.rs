//! The PostgreSQL half of the group commit ([`crate::commit`]): a connection of its own outside
//! the pool, so its prepared statements stay warm and readers never wait behind it for a pooled
//! connection. A batch goes in as a handful of multi-row statements, not a handful per
//! certificate, since each statement is a round trip; while this writer knows the audit head,
//! as one statement (see [`insert_in_one_statement`]).

use std::collections::{HashMap, HashSet};

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use super::records::{BatchEntry, EntryOutcome, StoreError};
use super::sql::{
    append_audit_events_in, bind_audit_row, bind_issuance_row, AUDIT_COLUMNS, ISSUANCE_COLUMNS,
    ISSUANCE_ROWS_PER_STATEMENT, READ_AUDIT_HEAD,
};
use crate::audit::AuditEvent;

/// How many batches the writer sends the ordinary way after a guessed audit head missed.
const HEAD_GUESS_PAUSE: u32 = 32;

/// The store's writer for issuances on PostgreSQL. A connection that fails is dropped and a new
/// one opened for the next batch.
#[derive(Debug)]
pub struct PostgresIssuanceWriter {
    pool: PgPool,
    connection: Option<PgConnection>,
    /// The audit head this writer's last batch left, while batches go in one statement; `None`
    /// until one is known or after a guessed head turned out stale.
    audit_head: Option<(i64, String)>,
    /// Batches to send the ordinary way before guessing the head again: with other replicas
    /// appending to the same log a guess mostly misses, and a miss costs a statement.
    guesses_paused: u32,
}

impl PostgresIssuanceWriter {
    /// A writer for the database `pool` opened (and migrated); it connects when first used.
    pub(crate) fn new(pool: PgPool) -> Self {
        PostgresIssuanceWriter {
            pool,
            connection: None,
            audit_head: None,
            guesses_paused: 0,
        }
    }

    /// Records a batch in one transaction (see [`super::IssuanceWriter`]).
    pub async fn insert_issuances(
        &mut self,
        items: &[BatchEntry<'_>],
    ) -> Result<Vec<EntryOutcome>, StoreError> {
        StoreError::refuse_when_closed(self.pool.is_closed(), &mut self.connection)?;
        let outcome = self.insert_on_connection(items).await;
        if outcome.is_err() {
            self.connection = None;
            self.audit_head = None;
        }
        outcome.map_err(StoreError::Query)
    }

    async fn insert_on_connection(
        &mut self,
        items: &[BatchEntry<'_>],
    ) -> Result<Vec<EntryOutcome>, sqlx::Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot @ None => slot.insert(self.pool.connect_options().connect().await?),
        };
        if self.guesses_paused > 0 {
            self.guesses_paused -= 1;
        } else if let Some(head) = self.audit_head.take() {
            let mut tx = connection.begin().await?;
            // A batch that renews a revoked certificate takes the ordinary path, which leaves
            // that issuance out.
            if revoked_renewals(&mut tx, items).await?.is_empty() {
                match insert_in_one_statement(&mut tx, items, &head).await? {
                    Some(moved_to) => {
                        tx.commit().await?;
                        self.audit_head = Some(moved_to);
                        return Ok(vec![EntryOutcome::Recorded; items.len()]);
                    }
                    None => self.guesses_paused = HEAD_GUESS_PAUSE,
                }
            }
            tx.rollback().await?;
        }
        let mut tx = connection.begin().await?;
        let revoked = revoked_renewals(&mut tx, items).await?;
        let renews_revoked =
            |item: &BatchEntry<'_>| item.renewal_of.and_then(|serial| revoked.get(serial));
        let kept: Vec<&BatchEntry<'_>> = items
            .iter()
            .filter(|item| renews_revoked(item).is_none())
            .collect();
        let mut new_serials = HashSet::new();
        for chunk in kept.chunks(ISSUANCE_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(format!(
                "INSERT INTO issued_certificates ({ISSUANCE_COLUMNS}) "
            ));
            insert.push_values(chunk, |mut row, item| {
                bind_issuance_row!(row, item.record);
            });
            insert.push(" ON CONFLICT (serial) DO NOTHING RETURNING serial");
            let serials: Vec<String> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
            new_serials.extend(serials);
        }
        // A serial twice in one batch went in once: the first holder has it.
        let outcomes: Vec<EntryOutcome> = items
            .iter()
            .map(|item| match (item.renewal_of, renews_revoked(item)) {
                (Some(serial), Some(reason)) => EntryOutcome::RenewalRevoked {
                    serial: serial.to_string(),
                    reason: reason.clone(),
                },
                _ if new_serials.remove(&item.record.issuance.serial) => EntryOutcome::Recorded,
                _ => EntryOutcome::SerialTaken,
            })
            .collect();
        let events: Vec<&AuditEvent> = items
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == EntryOutcome::Recorded)
            .map(|(item, _)| item.audit)
            .collect();
        if !events.is_empty() {
            append_audit_events_in!(tx, &events);
        }
        let head: (i64, String) = sqlx::query_as(READ_AUDIT_HEAD).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        self.audit_head = Some(head);
        Ok(outcomes)
    }
}

/// The revoked among the certificates the batch's renewals presented, serial to reason, read in
/// the batch's transaction; no round trip when the batch renews nothing.
async fn revoked_renewals(
    tx: &mut PgConnection,
    items: &[BatchEntry<'_>],
) -> Result<HashMap<String, String>, sqlx::Error> {
    let renewed: Vec<&str> = items.iter().filter_map(|item| item.renewal_of).collect();
    if renewed.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT serial, reason FROM certificate_revocations WHERE serial = ANY($1)")
            .bind(renewed)
            .fetch_all(&mut *tx)
            .await?;
    Ok(rows.into_iter().collect())
}

/// A batch in one statement, three round trips with begin and commit instead of six: the
/// issuances, their audit events chained from `head` as this writer last left it, and the
/// head's move, guarded by that head. The statement's counts say whether it all applied; if a
/// serial was already on record or another writer (a REST action, another replica) moved the
/// head since, it gives `None` and the caller rolls back and takes the ordinary path.
async fn insert_in_one_statement(
    tx: &mut PgConnection,
    items: &[BatchEntry<'_>],
    head: &(i64, String),
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let records = crate::audit::chain(items.iter().map(|item| item.audit), head.0 + 1, &head.1);
    let count = items.len() as i64;
    let last_hash = records
        .last()
        .map_or_else(|| head.1.clone(), |r| r.hash.clone());
    let moved_to = (head.0 + count, last_hash);
    let mut statement = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
        "WITH ins AS (INSERT INTO issued_certificates ({ISSUANCE_COLUMNS}) "
    ));
    statement.push_values(items, |mut row, item| {
        bind_issuance_row!(row, item.record);
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
