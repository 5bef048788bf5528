//! Group commit of issuance records. Every certificate must be on record, durably, before it
//! is returned; with one transaction per certificate the store's commit (an fsync for SQLite,
//! a WAL flush for PostgreSQL) bounds throughput. One writer instead takes whatever
//! issuances queued up while the previous commit ran and commits them together, then answers
//! each caller. An idle server commits a lone issuance at once (no timer, no added latency);
//! under load batches grow by themselves, and with many callers on their way the writer waits
//! a moment for them (see [`commit_delay`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditEvent;
use crate::metrics::CaMetrics;
use crate::store::{
    BatchEntry, EntryOutcome, IssuanceRecord, IssuanceWriter, PostgresIssuanceWriter,
    SqliteIssuanceWriter, Store, StoreError,
};

/// The most issuances one transaction takes; the rest wait for the next.
const MAX_BATCH: usize = 512;
/// Issuances waiting for the writer before callers queue on the channel itself.
const QUEUE: usize = 4096;
/// With at least this many admitted callers not yet queued, the writer waits for them
/// (PostgreSQL's `commit_siblings`). An open loop of 1,000 calls a second keeps one or two in
/// flight; sixteen means a backlog is already there.
const COMMIT_SIBLINGS: usize = 16;
/// The longest the writer holds a batch back for them (PostgreSQL's `commit_delay`). Under
/// saturation a commit cycle is otherwise about one fsync long and takes three or four
/// issuances; each commit rewrites the last page of every table and index, so fewer, larger
/// commits write fewer pages per certificate (a quarter less at 64 in flight).
const COMMIT_DELAY: Duration = Duration::from_millis(1);
/// How often the waiting writer looks for new arrivals.
const COMMIT_POLL: Duration = Duration::from_micros(100);
/// How long a failed commit makes the CA unready (see [`IssuanceCommitter::failing`]). A
/// replica taken out of a Service's endpoints gets no more calls, so it could never see a
/// commit succeed again; after this it is ready again and the next call tells.
pub const FAILED_COMMIT_HOLD: Duration = Duration::from_secs(10);

/// Why an issuance could not be recorded.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Another certificate on record has the serial; the record comes back, to be signed
    /// again under a new one.
    #[error("serial {} is already on record", .0.issuance.serial)]
    DuplicateSerial(Box<IssuanceRecord>),
    /// The renewal's presented certificate is revoked; nothing was recorded.
    #[error("certificate {serial} was revoked ({reason})")]
    RenewalRevoked { serial: String, reason: String },
    /// The batch's transaction failed; nothing in it was recorded.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the issuance writer has stopped")]
    Stopped,
}

struct Pending {
    record: IssuanceRecord,
    audit: AuditEvent,
    /// For a renewal, the serial of the certificate presented (see [`BatchEntry`]).
    renewal_of: Option<String>,
    /// Once committed, the record and its event go back, to be freed on the caller's thread
    /// rather than the writer's (glibc's allocator takes the slow path for a block freed by a
    /// thread other than the one that allocated it, once that thread's cache is full).
    done: oneshot::Sender<Result<(IssuanceRecord, AuditEvent), CommitError>>,
}

/// When the last commit failed and why, while no commit has succeeded since; shared by the
/// writer and the handles.
type LastFailure = Arc<Mutex<Option<(Instant, Arc<StoreError>)>>>;

/// The handle callers record through; cheap to clone. The writer task stops when the last
/// handle is dropped, after committing what was queued.
#[derive(Clone, Debug)]
pub struct IssuanceCommitter {
    queue: mpsc::Sender<Pending>,
    /// Callers admitted (see [`IssuanceCommitter::admit`]) and not yet done.
    admitted: Arc<AtomicUsize>,
    /// The last commit's failure, while no commit has succeeded since.
    last_failure: LastFailure,
}

/// A caller on its way to an issuance, counted from admission until dropped.
#[derive(Debug)]
#[must_use = "the caller counts as coming only while this is held"]
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long the writer should wait before committing the `queued` issuances it holds, when
/// `coming` more callers have been admitted and are still authenticating or signing.
pub fn commit_delay(queued: usize, coming: usize) -> Option<Duration> {
    (queued < MAX_BATCH && coming >= COMMIT_SIBLINGS).then_some(COMMIT_DELAY)
}

impl IssuanceCommitter {
    /// Starts the store's writer: on a thread of its own for SQLite (see
    /// [`crate::store::SqliteIssuanceWriter`]), as a task on the current Tokio runtime for
    /// PostgreSQL.
    pub fn start(store: &Store, metrics: Arc<CaMetrics>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let admitted = Arc::new(AtomicUsize::new(0));
        let last_failure = Arc::new(Mutex::new(None));
        let batches = Batches {
            receiver,
            admitted: admitted.clone(),
            batch: Vec::with_capacity(MAX_BATCH),
            last_failure: last_failure.clone(),
        };
        match store.issuance_writer() {
            IssuanceWriter::Sqlite(writer) => {
                std::thread::Builder::new()
                    .name("meshca-issuance-writer".into())
                    .spawn(move || write_batches_on_thread(writer, batches, metrics))
                    .expect("the issuance writer thread could not be started");
            }
            IssuanceWriter::Postgres(writer) => {
                tokio::spawn(write_batches(writer, batches, metrics));
            }
        }
        IssuanceCommitter {
            queue,
            admitted,
            last_failure,
        }
    }

    /// Why commits are failing (a full disk, a store that refuses writes), if the last one
    /// failed less than [`FAILED_COMMIT_HOLD`] ago and none has succeeded since: readiness
    /// reports it, since a store that answers reads may still take no writes.
    pub fn failing(&self, now: Instant) -> Option<Arc<StoreError>> {
        let last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < FAILED_COMMIT_HOLD)
            .map(|(_, error)| error.clone())
    }

    /// Counts a caller from the moment it is admitted (before authentication and CSR checks,
    /// where its time goes) until the returned guard is dropped, so the writer knows how many
    /// issuances are on their way.
    pub fn admit(&self) -> Admission {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Admission(self.admitted.clone())
    }

    /// False once the writer task is gone (it only ends with its last handle, so this means
    /// it panicked): nothing can be issued, and readiness says so.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Records `record` and its audit event; returns the record once the transaction that
    /// holds them is committed. A renewal names the serial it presented (`renewal_of`): if
    /// that certificate is revoked by then, nothing is recorded.
    pub async fn commit(
        &self,
        record: IssuanceRecord,
        audit: AuditEvent,
        renewal_of: Option<String>,
    ) -> Result<IssuanceRecord, CommitError> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                record,
                audit,
                renewal_of,
                done,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        let (record, _event) = answer.await.map_err(|_| CommitError::Stopped)??;
        Ok(record)
    }
}

/// The writer's side of the queue: the batch being gathered and who is still coming.
struct Batches {
    receiver: mpsc::Receiver<Pending>,
    admitted: Arc<AtomicUsize>,
    batch: Vec<Pending>,
    last_failure: LastFailure,
}

impl Batches {
    /// Admitted callers whose issuance is not in the batch yet (the batch's own callers hold
    /// their admission while they wait for this commit).
    fn coming(&self) -> usize {
        self.admitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.batch.len())
    }

    /// Whether to keep gathering before the deadline of a [`commit_delay`].
    fn worth_waiting(&self) -> bool {
        self.batch.len() < MAX_BATCH && self.coming() > 0
    }

    /// Moves what is queued into the batch, up to [`MAX_BATCH`].
    fn take_queued(&mut self) {
        while self.batch.len() < MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(next) => self.batch.push(next),
                Err(_) => break,
            }
        }
    }
}

/// The PostgreSQL writer's loop: waits for one issuance, takes whatever else queued, and waits
/// up to [`commit_delay`] for more when many callers are on their way.
async fn write_batches(
    mut writer: PostgresIssuanceWriter,
    mut batches: Batches,
    metrics: Arc<CaMetrics>,
) {
    while let Some(first) = batches.receiver.recv().await {
        batches.batch.push(first);
        batches.take_queued();
        if let Some(delay) = commit_delay(batches.batch.len(), batches.coming()) {
            let deadline = tokio::time::Instant::now() + delay;
            while batches.worth_waiting() {
                match tokio::time::timeout_at(deadline, batches.receiver.recv()).await {
                    Ok(Some(next)) => {
                        batches.batch.push(next);
                        batches.take_queued();
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let items: Vec<_> = batches.batch.iter().map(Pending::entry).collect();
        let outcome = writer.insert_issuances(&items).await;
        drop(items);
        batches.answer(outcome, &metrics);
    }
}

/// The SQLite writer's loop, on its own thread: the same gathering as [`write_batches`], with
/// the thread polling for arrivals while it waits (Tokio's timer is too coarse here).
fn write_batches_on_thread(
    mut writer: SqliteIssuanceWriter,
    mut batches: Batches,
    metrics: Arc<CaMetrics>,
) {
    while let Some(first) = batches.receiver.blocking_recv() {
        batches.batch.push(first);
        batches.take_queued();
        if let Some(delay) = commit_delay(batches.batch.len(), batches.coming()) {
            let deadline = Instant::now() + delay;
            while batches.worth_waiting() && Instant::now() < deadline {
                std::thread::sleep(COMMIT_POLL);
                batches.take_queued();
            }
        }
        let items: Vec<_> = batches.batch.iter().map(Pending::entry).collect();
        let outcome = writer.insert_issuances(&items);
        drop(items);
        batches.answer(outcome, &metrics);
    }
}

impl Pending {
    fn entry(&self) -> BatchEntry<'_> {
        BatchEntry {
            record: &self.record,
            audit: &self.audit,
            renewal_of: self.renewal_of.as_deref(),
        }
    }
}

impl Batches {
    /// Tells each caller in the batch how its issuance fared, empties it, and keeps the
    /// outcome for readiness.
    fn answer(&mut self, outcome: Result<Vec<EntryOutcome>, StoreError>, metrics: &CaMetrics) {
        let failure = answer(&mut self.batch, outcome, metrics);
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            failure.map(|e| (Instant::now(), e));
    }
}

/// Tells each caller in `batch` how its issuance fared, and empties it; returns the store's
/// error if the batch failed.
fn answer(
    batch: &mut Vec<Pending>,
    outcome: Result<Vec<EntryOutcome>, StoreError>,
    metrics: &CaMetrics,
) -> Option<Arc<StoreError>> {
    match outcome {
        Ok(outcomes) => {
            metrics.issuance_commits.fetch_add(1, Ordering::Relaxed);
            let recorded = outcomes
                .iter()
                .filter(|o| **o == EntryOutcome::Recorded)
                .count() as u64;
            metrics
                .issuances_committed
                .fetch_add(recorded, Ordering::Relaxed);
            for (pending, outcome) in batch.drain(..).zip(outcomes) {
                let answer = match outcome {
                    EntryOutcome::Recorded => Ok((pending.record, pending.audit)),
                    EntryOutcome::SerialTaken => {
                        Err(CommitError::DuplicateSerial(Box::new(pending.record)))
                    }
                    EntryOutcome::RenewalRevoked { serial, reason } => {
                        Err(CommitError::RenewalRevoked { serial, reason })
                    }
                };
                // A caller that gave up is not an error: its record is kept all the same.
                let _ = pending.done.send(answer);
            }
            None
        }
        Err(e) => {
            tracing::error!(error = %e, issuances = batch.len(), "recording a batch of issuances failed");
            let e = Arc::new(e);
            for pending in batch.drain(..) {
                let _ = pending.done.send(Err(CommitError::Store(e.clone())));
            }
            Some(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_waits_only_when_many_callers_are_coming() {
        // An idle or lightly loaded server commits at once.
        assert_eq!(commit_delay(1, 0), None);
        assert_eq!(commit_delay(1, COMMIT_SIBLINGS - 1), None);
        // A crowd on its way: wait a moment, never long.
        assert_eq!(commit_delay(3, COMMIT_SIBLINGS), Some(COMMIT_DELAY));
        assert!(COMMIT_DELAY <= Duration::from_millis(1));
        // A full batch goes now.
        assert_eq!(commit_delay(MAX_BATCH, 10 * COMMIT_SIBLINGS), None);
    }

    #[test]
    fn admissions_count_until_dropped() {
        let (queue, _receiver) = mpsc::channel(1);
        let committer = IssuanceCommitter {
            queue,
            admitted: Arc::default(),
            last_failure: Arc::default(),
        };
        let first = committer.admit();
        let second = committer.clone().admit();
        assert_eq!(committer.admitted.load(Ordering::Relaxed), 2);
        drop(first);
        drop(second);
        assert_eq!(committer.admitted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_commit_makes_the_ca_unready_for_a_while() {
        let (queue, _receiver) = mpsc::channel(1);
        let committer = IssuanceCommitter {
            queue,
            admitted: Arc::default(),
            last_failure: Arc::default(),
        };
        let t0 = Instant::now();
        assert!(committer.failing(t0).is_none());
        let full = Arc::new(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        )));
        *committer.last_failure.lock().unwrap() = Some((t0, full));
        let reason = committer.failing(t0 + Duration::from_secs(1)).unwrap();
        assert!(reason.to_string().contains("disk is full"), "{reason}");
        // Past the hold it is ready again, so a replica out of rotation gets calls to retry.
        assert!(committer.failing(t0 + FAILED_COMMIT_HOLD).is_none());
    }

    #[tokio::test]
    async fn a_stopped_writer_refuses_and_says_so() {
        let (queue, receiver) = mpsc::channel(1);
        drop(receiver);
        let committer = IssuanceCommitter {
            queue,
            admitted: Arc::default(),
            last_failure: Arc::default(),
        };
        assert!(!committer.is_running());
        let record = IssuanceRecord {
            issuance: crate::store::Issuance {
                serial: "01".into(),
                spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
                namespace: None,
                service_account: None,
                not_before: 0,
                not_after: 1,
                issued_at: 0,
                authority_id: "x".into(),
                requester_method: "jwt".into(),
                requester_principal: "p".into(),
                peer_address: None,
                cluster_id: None,
                public_key_sha256: "00".into(),
                impersonated_by: None,
                requester_pod: None,
                requester_node: None,
            },
            trust_domain: "cluster.local".into(),
            cert_der: Vec::new(),
            bundle_as_of: 0,
        };
        let audit = AuditEvent::new(
            ("jwt", "p"),
            "certificate.issue",
            "01",
            crate::audit::Outcome::Success,
            serde_json::Value::Null,
        );
        assert!(matches!(
            committer.commit(record, audit, None).await,
            Err(CommitError::Stopped)
        ));
    }

    /// The committed record comes back to its caller; one whose serial is already on record
    /// comes back whole in the error, to be signed again, and only the first is stored.
    #[tokio::test]
    async fn a_record_comes_back_committed_or_with_its_serial_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::default_sqlite_url(tmp.path()))
            .await
            .unwrap();
        let committer = IssuanceCommitter::start(&store, Arc::default());
        let record = crate::testing::issuance_record("0a");
        let event = || crate::testing::issuance_event("0a");
        let committed = committer
            .commit(record.clone(), event(), None)
            .await
            .unwrap();
        assert_eq!(committed, record);
        match committer.commit(record.clone(), event(), None).await {
            Err(CommitError::DuplicateSerial(back)) => assert_eq!(*back, record),
            other => panic!("expected the serial to be taken, got {other:?}"),
        }
        assert_eq!(crate::testing::audit_targets(&store, 10).await, ["0a"]);
    }
}
