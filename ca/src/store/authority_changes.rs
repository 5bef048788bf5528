//! Word that the authorities changed, pushed rather than polled where the database can: on
//! PostgreSQL every write to `authorities` notifies the `meshca_authorities` channel (a trigger,
//! migration 0008, so no writer can forget it), and a listener wakes the replicas' followers
//! within milliseconds of the commit. Polling stays as the fallback, for SQLite (one process)
//! and for notifications lost while the listener's connection was down.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use super::Store;

/// The channel the `authorities` trigger notifies.
const CHANNEL: &str = "meshca_authorities";

/// How long the listener waits before trying again after its connection failed (the poll
/// fallback covers the gap).
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// A follower's wake-up: a change notified by the database, or the poll interval passing.
/// Dropping it ends the listener (and releases its connection).
#[derive(Debug)]
pub struct AuthorityChanges {
    notified: Option<mpsc::Receiver<()>>,
}

impl Store {
    /// Starts listening for authority changes made by any process sharing this store. On
    /// SQLite, or if PostgreSQL refuses the listener now, the result only polls.
    pub async fn authority_changes(&self) -> AuthorityChanges {
        let Store::Postgres(pool) = self else {
            return AuthorityChanges { notified: None };
        };
        match listen(pool).await {
            Ok((listener, schema)) => {
                // One pending wake-up is enough: the follower reads the whole state.
                let (wake, notified) = mpsc::channel(1);
                tokio::spawn(forward(listener, schema, pool.clone(), wake));
                AuthorityChanges {
                    notified: Some(notified),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "LISTEN for authority changes failed; polling only");
                AuthorityChanges { notified: None }
            }
        }
    }
}

// === impl AuthorityChanges ===

impl AuthorityChanges {
    /// Returns at the next notified change, or after `poll` at the latest. A change notified
    /// while the caller was busy is not lost: it returns at once.
    pub async fn next(&mut self, poll: Duration) {
        match &mut self.notified {
            Some(notified) => {
                let _ = tokio::time::timeout(poll, notified.recv()).await;
            }
            None => tokio::time::sleep(poll).await,
        }
    }

    /// Whether changes are pushed (PostgreSQL's `LISTEN` is up), not only polled.
    pub fn pushed(&self) -> bool {
        self.notified.is_some()
    }
}

/// A listener on the channel, and the schema of the `authorities` table this store uses (the
/// payload of the notifications that are ours).
async fn listen(pool: &PgPool) -> Result<(PgListener, String), sqlx::Error> {
    let schema: String = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = 'authorities'::regclass",
    )
    .fetch_one(pool)
    .await?;
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok((listener, schema))
}

/// Turns notifications into wake-ups until the follower is gone or the store is closed. A
/// lost connection is re-established (by the listener, or here after a failure) and counts
/// as a change: notifications sent meanwhile are gone, so the follower looks.
async fn forward(mut listener: PgListener, schema: String, pool: PgPool, wake: mpsc::Sender<()>) {
    loop {
        let received = tokio::select! {
            received = listener.try_recv() => received,
            () = wake.closed() => return,
        };
        match received {
            Ok(Some(notification)) if notification.payload() != schema => {}
            // `None`: the connection was lost and re-established.
            Ok(_) => {
                let _ = wake.try_send(());
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "the authority change listener lost its connection");
                tokio::select! {
                    () = tokio::time::sleep(RELISTEN_DELAY) => {}
                    () = wake.closed() => return,
                }
                if pool.is_closed() {
                    return;
                }
                if let Ok((fresh, _)) = listen(&pool).await {
                    listener = fresh;
                    let _ = wake.try_send(());
                }
            }
        }
    }
}
