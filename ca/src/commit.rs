//! Group commit of issuance records. Every certificate must be on record, durably, before it
//! is returned; with one transaction per certificate the store's commit (an fsync for SQLite,
//! a WAL flush for PostgreSQL) bounds throughput. One writer instead takes whatever
//! issuances queued up while the previous commit ran and commits them together, then answers
//! each caller. An idle server commits a lone issuance at once (no timer, no added latency);
//! under load batches grow by themselves.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditEvent;
use crate::issuer::CaMetrics;
use crate::sqlite_writer::SqliteIssuanceWriter;
use crate::store::{IssuanceRecord, Store, StoreError};

/// The most issuances one transaction takes; the rest wait for the next.
const MAX_BATCH: usize = 512;
/// Issuances waiting for the writer before callers queue on the channel itself.
const QUEUE: usize = 4096;

/// Why an issuance could not be recorded.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    #[error("serial {0} is already on record")]
    DuplicateSerial(String),
    /// The batch's transaction failed; nothing in it was recorded.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the issuance writer has stopped")]
    Stopped,
}

struct Pending {
    record: IssuanceRecord,
    audit: AuditEvent,
    done: oneshot::Sender<Result<(), CommitError>>,
}

/// The handle callers record through; cheap to clone. The writer task stops when the last
/// handle is dropped, after committing what was queued.
#[derive(Clone, Debug)]
pub struct IssuanceCommitter {
    queue: mpsc::Sender<Pending>,
}

impl IssuanceCommitter {
    /// Starts the writer: a thread of its own for a SQLite database file, a task on the
    /// current Tokio runtime for PostgreSQL (or an in-memory SQLite database).
    pub fn start(store: Store, metrics: Arc<CaMetrics>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        match &store {
            // A database file gets a writer thread of its own (see `sqlite_writer`); an
            // in-memory one can only be reached through its pool.
            Store::Sqlite(pool) if pool.connect_options().get_filename().is_file() => {
                let writer = SqliteIssuanceWriter::new(pool.clone());
                std::thread::Builder::new()
                    .name("meshca-issuance-writer".into())
                    .spawn(move || write_batches_on_thread(writer, receiver, metrics))
                    .expect("the issuance writer thread could not be started");
            }
            _ => {
                tokio::spawn(write_batches(store, receiver, metrics));
            }
        }
        IssuanceCommitter { queue }
    }

    /// False once the writer task is gone (it only ends with its last handle, so this means
    /// it panicked): nothing can be issued, and readiness says so.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Records `record` and its audit event; returns once the transaction that holds them is
    /// committed.
    pub async fn commit(
        &self,
        record: IssuanceRecord,
        audit: AuditEvent,
    ) -> Result<(), CommitError> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                record,
                audit,
                done,
            })
            .await
            .map_err(|_| CommitError::Stopped)?;
        answer.await.map_err(|_| CommitError::Stopped)?
    }
}

async fn write_batches(
    store: Store,
    mut receiver: mpsc::Receiver<Pending>,
    metrics: Arc<CaMetrics>,
) {
    let mut writer = store.issuance_writer();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let items: Vec<_> = batch.iter().map(|p| (&p.record, &p.audit)).collect();
        let outcome = writer.insert_issuances(&items).await;
        drop(items);
        answer(&mut batch, outcome, &metrics);
    }
}

/// [`write_batches`] on a thread: waits for one issuance, takes whatever else queued.
fn write_batches_on_thread(
    mut writer: SqliteIssuanceWriter,
    mut receiver: mpsc::Receiver<Pending>,
    metrics: Arc<CaMetrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let items: Vec<_> = batch.iter().map(|p| (&p.record, &p.audit)).collect();
        let outcome = writer.insert_issuances(&items);
        drop(items);
        answer(&mut batch, outcome, &metrics);
    }
}

/// Tells each caller in `batch` how its issuance fared, and empties it.
fn answer(batch: &mut Vec<Pending>, outcome: Result<Vec<bool>, StoreError>, metrics: &CaMetrics) {
    match outcome {
        Ok(inserted) => {
            metrics.issuance_commits.fetch_add(1, Ordering::Relaxed);
            let recorded = inserted.iter().filter(|i| **i).count() as u64;
            metrics
                .issuances_committed
                .fetch_add(recorded, Ordering::Relaxed);
            for (pending, inserted) in batch.drain(..).zip(inserted) {
                let answer = if inserted {
                    Ok(())
                } else {
                    Err(CommitError::DuplicateSerial(pending.record.serial.clone()))
                };
                // A caller that gave up is not an error: its record is kept all the same.
                let _ = pending.done.send(answer);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, issuances = batch.len(), "recording a batch of issuances failed");
            let e = Arc::new(e);
            for pending in batch.drain(..) {
                let _ = pending.done.send(Err(CommitError::Store(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_writer_refuses_and_says_so() {
        let (queue, receiver) = mpsc::channel(1);
        drop(receiver);
        let committer = IssuanceCommitter { queue };
        assert!(!committer.is_running());
        let record = IssuanceRecord {
            serial: "01".into(),
            spiffe_id: "spiffe://cluster.local/ns/a/sa/b".into(),
            trust_domain: "cluster.local".into(),
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
            cert_der: Vec::new(),
        };
        let audit = AuditEvent::new(
            ("jwt", "p"),
            "certificate.issue",
            "01",
            crate::audit::Outcome::Success,
            serde_json::Value::Null,
        );
        assert!(matches!(
            committer.commit(record, audit).await,
            Err(CommitError::Stopped)
        ));
    }
}
