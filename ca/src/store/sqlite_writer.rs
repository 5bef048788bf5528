//! The SQLite half of the group commit ([`crate::commit`]), on a thread of its own and through
//! rusqlite rather than sqlx (the statements are the store's own, from [`super::sql`]). sqlx runs each SQLite connection on a worker thread, so every
//! statement is a hand-off to that thread and back — six per batch (begin, two inserts, two
//! audit-head updates, commit). At a steady 1,000 issuances/s batches hold one or two
//! issuances, and those hand-offs and their context switches were 40 % of the server's CPU
//! (perf). Here a batch is one pass on one thread with statements prepared once; the rest of
//! the store (queries, rotation, audit reads) stays on sqlx. The batch's transaction also adds
//! it to the rotation gates' and the console's counters ([`super::sqlite_counters`]).
//!
//! Beside it runs a [`Checkpointer`]: SQLite's own checkpoint runs in the committing
//! connection once the WAL passes 1,000 pages, copying them into the database file and
//! fsyncing it while every issuance queued behind waits. That was the p99 at a steady
//! 1,000 issuances/s (5–7 ms against 3.5 ms with the checkpointer, on a 150,000-row store).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::SqlitePool;

use super::records::{BatchEntry, EntryOutcome, StoreError};
use super::sql::{
    ADVANCE_AUDIT_HEAD, INSERT_AUDIT_EVENT, INSERT_ISSUANCE, RENEWED_REVOCATION,
    SET_AUDIT_HEAD_HASH,
};
use super::sqlite_counters::BatchCounts;

/// Page cache of the writer's connection, in KiB (SQLite's default is 2,000): the indexes keyed
/// by serial and public key take inserts all over, so their pages are better kept than read
/// again.
const CACHE_KIB: i64 = 32 * 1024;

/// How often, at most, the checkpointer copies committed pages into the database file while
/// issuances are being recorded.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);

/// The store's writer for issuances. It opens its connection when first needed and drops it
/// after a failure, to open a new one for the next batch.
pub struct SqliteIssuanceWriter {
    pool: SqlitePool,
    path: PathBuf,
    connection: Option<Connection>,
    checkpointer: Checkpointer,
}

impl std::fmt::Debug for SqliteIssuanceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIssuanceWriter")
            .field("path", &self.path)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl SqliteIssuanceWriter {
    /// A writer for the database `pool` opened (and migrated).
    pub(crate) fn new(pool: SqlitePool) -> Self {
        let path = pool.connect_options().get_filename().to_path_buf();
        SqliteIssuanceWriter {
            checkpointer: Checkpointer::start(path.clone()),
            pool,
            path,
            connection: None,
        }
    }

    fn connection(&mut self) -> rusqlite::Result<&mut Connection> {
        match &mut self.connection {
            Some(connection) => Ok(connection),
            slot @ None => {
                // The file exists: the store created and migrated it before the writer starts.
                let connection = open(&self.path)?;
                connection.pragma_update(None, "foreign_keys", true)?;
                connection.pragma_update(None, "cache_size", -CACHE_KIB)?;
                Ok(slot.insert(connection))
            }
        }
    }

    /// Records a batch in one transaction (see [`super::IssuanceWriter`]).
    pub fn insert_issuances(
        &mut self,
        items: &[BatchEntry<'_>],
    ) -> Result<Vec<EntryOutcome>, StoreError> {
        StoreError::refuse_when_closed(self.pool.is_closed(), &mut self.connection)?;
        let outcome = self
            .connection()
            .and_then(|connection| insert_in_one_transaction(connection, items));
        match &outcome {
            Ok(_) => self.checkpointer.committed(),
            Err(_) => self.connection = None,
        }
        outcome.map_err(StoreError::Sqlite)
    }
}

/// A connection to the store's database file, which exists: the store created and migrated it
/// before any writer starts. The same durability as the store's own connections: WAL, and a
/// commit is on disk before the caller gets its certificate.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "journal_mode", "wal")?;
    connection.pragma_update(None, "synchronous", "full")?;
    Ok(connection)
}

/// Copies the WAL into the database file off the writer's path: a thread on a connection of
/// its own that, while commits come in, runs a PASSIVE checkpoint (which never holds a writer
/// up) every [`CHECKPOINT_INTERVAL`] at most. When the writer's own checkpoint comes due there
/// is little left to copy and fsync, and the WAL starts over; that automatic checkpoint stays
/// the bound on the WAL's size if this thread falls behind or fails. An idle store wakes it
/// not at all; it ends with its writer.
#[derive(Debug)]
struct Checkpointer {
    due: SyncSender<()>,
}

impl Checkpointer {
    fn start(path: PathBuf) -> Self {
        let (due, wake) = sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("meshca-wal-checkpointer".into())
            .spawn(move || checkpoint_while_committing(&path, wake));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no background WAL checkpointer; SQLite's own checkpoints remain");
        }
        Checkpointer { due }
    }

    /// A commit went in: a checkpoint is due (at most one waits; more say nothing new).
    fn committed(&self) {
        let _ = self.due.try_send(());
    }
}

fn checkpoint_while_committing(path: &Path, wake: Receiver<()>) {
    let mut connection = None;
    while wake.recv().is_ok() {
        if connection.is_none() {
            connection = open(path)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "opening the WAL checkpointer's connection"),
                )
                .ok();
        }
        if let Some(c) = &connection {
            let checkpoint = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(0)
            });
            if let Err(e) = checkpoint {
                tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's own checkpoints remain");
                connection = None;
            }
        }
        std::thread::sleep(CHECKPOINT_INTERVAL);
    }
}

fn insert_in_one_transaction(
    connection: &mut Connection,
    items: &[BatchEntry<'_>],
) -> rusqlite::Result<Vec<EntryOutcome>> {
    // IMMEDIATE: the write lock is taken first, so no revocation can commit between the check
    // below and this transaction's commit.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(items.len());
    {
        let mut insert = tx.prepare_cached(&INSERT_ISSUANCE)?;
        for item in items {
            if let Some(renewed) = item.renewal_of {
                let revoked: Option<String> = tx
                    .prepare_cached(RENEWED_REVOCATION)?
                    .query_row([renewed], |row| row.get(0))
                    .optional()?;
                if let Some(reason) = revoked {
                    outcomes.push(EntryOutcome::RenewalRevoked {
                        serial: renewed.to_string(),
                        reason,
                    });
                    continue;
                }
            }
            let r = item.record;
            // A serial already on record (or twice in this batch: the first holder has it)
            // changes no row.
            let rows = insert.execute(params![
                r.issuance.serial,
                r.issuance.spiffe_id,
                r.trust_domain,
                r.issuance.namespace,
                r.issuance.service_account,
                r.issuance.not_before,
                r.issuance.not_after,
                r.issuance.issued_at,
                r.issuance.authority_id,
                r.issuance.requester_method,
                r.issuance.requester_principal,
                r.issuance.peer_address,
                r.issuance.cluster_id,
                r.issuance.public_key_sha256,
                r.cert_der,
                r.bundle_as_of,
                r.issuance.impersonated_by,
                r.issuance.requester_pod,
                r.issuance.requester_node,
            ])?;
            outcomes.push(if rows == 1 {
                EntryOutcome::Recorded
            } else {
                EntryOutcome::SerialTaken
            });
        }
    }
    let recorded: Vec<&BatchEntry<'_>> = items
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome == EntryOutcome::Recorded)
        .map(|(item, _)| item)
        .collect();
    let count = recorded.len() as i64;
    if count > 0 {
        let mut counts = BatchCounts::default();
        for item in &recorded {
            counts.add(item.record);
        }
        counts.write(&tx)?;
        let (last_seq, prev): (i64, String) = tx
            .prepare_cached(ADVANCE_AUDIT_HEAD)?
            .query_row([count], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let events = recorded.iter().map(|item| item.audit);
        let records = crate::audit::chain(events, last_seq - count + 1, &prev);
        let mut append = tx.prepare_cached(&INSERT_AUDIT_EVENT)?;
        for record in &records {
            append.execute(params![
                record.seq,
                record.event.at,
                record.event.actor_method,
                record.event.actor_principal,
                record.event.action,
                record.event.target,
                record.event.outcome.as_str(),
                record.event.details.as_str(),
                record.prev_hash,
                record.hash,
            ])?;
        }
        drop(append);
        let head_hash = &records.last().expect("count > 0 events").hash;
        tx.prepare_cached(SET_AUDIT_HEAD_HASH)?
            .execute([head_hash])?;
    }
    tx.commit()?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{verify_chain, GENESIS_HASH};
    use crate::store::EntryOutcome::{Recorded, SerialTaken};
    use crate::store::Store;
    use crate::testing::{issuance_event as event, issuance_record as record};

    async fn store_and_writer(dir: &std::path::Path) -> (Store, SqliteIssuanceWriter) {
        let store = Store::connect(&Store::default_sqlite_url(dir))
            .await
            .unwrap();
        let Store::Sqlite(pool) = &store else {
            unreachable!("a sqlite: URL")
        };
        let writer = SqliteIssuanceWriter::new(pool.clone());
        (store, writer)
    }

    /// What this writer records reads back through the store exactly as the store's own
    /// insert would have written it, and chains onto events the store appended.
    #[tokio::test]
    async fn records_read_back_through_the_store_and_the_chain_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, mut writer) = store_and_writer(tmp.path()).await;
        store.append_audit(&event("before")).await.unwrap();
        let (a, b) = (record("0a"), record("0b"));
        let (ea, eb) = (event("0a"), event("0b"));
        let inserted = writer
            .insert_issuances(&[BatchEntry::new(&a, &ea), BatchEntry::new(&b, &eb)])
            .unwrap();
        assert_eq!(inserted, [Recorded, Recorded]);
        store.append_audit(&event("after")).await.unwrap();

        let row = store
            .issuance_by_serial(&"0a".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row, a);
        let mut events = store
            .audit_events(&Default::default(), None, 10)
            .await
            .unwrap();
        let targets: Vec<_> = events.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["after", "0b", "0a", "before"]);
        events.reverse();
        verify_chain(&events, 0, GENESIS_HASH.into()).unwrap();
    }

    /// A serial already on record, or twice in one batch, is left out with its audit event;
    /// the rest of the batch is recorded.
    #[tokio::test]
    async fn a_serial_on_record_or_repeated_is_left_out_and_the_rest_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, mut writer) = store_and_writer(tmp.path()).await;
        let (first, first_event) = (record("01"), event("01"));
        assert_eq!(
            writer
                .insert_issuances(&[BatchEntry::new(&first, &first_event)])
                .unwrap(),
            [Recorded]
        );
        let (other, other_event) = (record("02"), event("02"));
        let inserted = writer
            .insert_issuances(&[
                BatchEntry::new(&first, &first_event),
                BatchEntry::new(&other, &other_event),
                BatchEntry::new(&other, &other_event),
            ])
            .unwrap();
        assert_eq!(inserted, [SerialTaken, Recorded, SerialTaken]);
        assert_eq!(store.count_issuances().await.unwrap(), 2);
        let targets = crate::testing::audit_targets(&store, 10).await;
        assert_eq!(targets, ["02", "01"]);
    }

    /// The counters the writer keeps one batch at a time are what counting every certificate
    /// afresh gives: through renewals in and across batches, a tie, a slow caller's older
    /// certificate, a duplicate serial, a certificate without a SPIFFE id, two authorities and a
    /// revocation between batches.
    #[tokio::test]
    async fn batch_counts_match_a_recount_of_every_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, mut writer) = store_and_writer(tmp.path()).await;
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        let issued = |serial: &str, id: &str, at: i64, bundle: i64, authority: &str| {
            let mut r = record(serial);
            r.issuance.spiffe_id = id.into();
            r.issuance.issued_at = at;
            r.issuance.not_after = at + 3600;
            r.issuance.authority_id = authority.into();
            r.bundle_as_of = bundle;
            r
        };
        let (a, b) = ("spiffe://td/ns/a/sa/a", "spiffe://td/ns/b/sa/b");
        let batches = [
            vec![
                issued("01", a, 1000, 1, "old"),
                issued("02", b, 1000, 1, "old"),
            ],
            vec![
                issued("03", a, 1010, 2, "old"),
                issued("04", a, 1010, 3, "new"),
                issued("05", b, 990, 2, "new"),
                issued("06", "", 1010, 3, "new"),
                issued("01", a, 9000, 9, "new"),
            ],
            vec![
                issued("07", b, 4700, 3, "new"),
                issued("08", a, 4701, 3, "new"),
            ],
        ];
        for (n, batch) in batches.iter().enumerate() {
            let events: Vec<_> = batch.iter().map(|r| event(&r.issuance.serial)).collect();
            let entries: Vec<_> = batch
                .iter()
                .zip(&events)
                .map(|(r, e)| BatchEntry::new(r, e))
                .collect();
            writer.insert_issuances(&entries).unwrap();
            if n == 0 {
                let revocation = crate::store::RevocationRecord {
                    serial: "02".into(),
                    reason: "keyCompromise".into(),
                    revoked_at: 1005,
                    actor: "test".into(),
                };
                assert!(store.insert_revocation(&revocation).await.unwrap());
            }
        }
        const COUNTERS: &str = "SELECT \
            (SELECT group_concat(authority_id || ':' || expires_bucket || '=' || n, ' ') \
             FROM (SELECT * FROM live_certificate_counts WHERE n <> 0 ORDER BY 1, 2)), \
            (SELECT group_concat(bundle_as_of || ':' || expires_bucket || '=' || n, ' ') \
             FROM (SELECT * FROM bundle_counts WHERE n <> 0 ORDER BY 1, 2)), \
            (SELECT group_concat(bundle_as_of || ':' || expires_bucket || '=' || n, ' ') \
             FROM (SELECT * FROM identity_counts WHERE n <> 0 ORDER BY 1, 2)), \
            (SELECT group_concat(spiffe_id || ':' || serial || '/' || counted, ' ') \
             FROM (SELECT * FROM identity_latest ORDER BY 1)), \
            (SELECT group_concat(hour || '=' || n, ' ') \
             FROM (SELECT * FROM issued_per_hour ORDER BY 1))";
        type Counters = (String, String, String, String, String);
        let kept: Counters = sqlx::query_as(COUNTERS).fetch_one(pool).await.unwrap();
        // What the gates and the console read: each identity's newest counts once (the
        // duplicate serial, issued "later", was not recorded and counts nowhere), b's revoked
        // certificate stopped counting, and every recorded certificate is in its hour.
        assert_eq!(kept.2, "3:8300=1 3:8310=1");
        assert_eq!(
            kept.3,
            "spiffe://td/ns/a/sa/a:08/1 spiffe://td/ns/b/sa/b:07/1"
        );
        assert_eq!(kept.4, "0=6 3600=2");

        crate::testing::count_synthetic_load(&store).await;
        let recounted: Counters = sqlx::query_as(COUNTERS).fetch_one(pool).await.unwrap();
        assert_eq!(kept, recounted);
    }

    /// Committed issuances reach the database file itself within moments, not only once the
    /// WAL has passed SQLite's 1,000-page checkpoint: the checkpointer copies them over.
    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (_store, mut writer) = store_and_writer(tmp.path()).await;
        let (a, ea) = (record("0a"), event("0a"));
        writer
            .insert_issuances(&[BatchEntry::new(&a, &ea)])
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // The database file alone, without its WAL: what a checkpoint has copied.
            let copy = tmp.path().join("copy.db");
            std::fs::copy(tmp.path().join("meshca.db"), &copy).unwrap();
            let _ = std::fs::remove_file(tmp.path().join("copy.db-wal"));
            let in_file: i64 = Connection::open(&copy)
                .unwrap()
                .query_row(
                    "SELECT count(*) FROM issued_certificates WHERE serial = '0a'",
                    [],
                    |row| row.get(0),
                )
                // Before any checkpoint even the schema is only in the WAL.
                .unwrap_or(0);
            if in_file == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the issuance never left the WAL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A failed transaction records nothing, not even part of the batch, and the writer
    /// recovers on a fresh connection once the store is usable again.
    #[tokio::test]
    async fn a_failed_batch_records_nothing_and_the_writer_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, mut writer) = store_and_writer(tmp.path()).await;
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        // Audit events cannot be written: the batch fails after its issuances went in.
        sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
            .execute(pool)
            .await
            .unwrap();
        let (a, ea) = (record("0a"), event("0a"));
        let err = writer
            .insert_issuances(&[BatchEntry::new(&a, &ea)])
            .unwrap_err();
        assert!(matches!(err, StoreError::Sqlite(_)), "{err}");
        assert_eq!(store.count_issuances().await.unwrap(), 0);

        sqlx::query("ALTER TABLE audit_events_away RENAME TO audit_events")
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(
            writer
                .insert_issuances(&[BatchEntry::new(&a, &ea)])
                .unwrap(),
            [Recorded]
        );
        assert_eq!(store.count_issuances().await.unwrap(), 1);

        // A closed store takes nothing more.
        pool.close().await;
        let (b, eb) = (record("0b"), event("0b"));
        assert!(writer
            .insert_issuances(&[BatchEntry::new(&b, &eb)])
            .is_err());
    }
}
