//! One holder at a time of a role across replicas that share the store (e.g. writing the
//! `istio-ca-root-cert` ConfigMaps): on PostgreSQL a session advisory lock held on a connection
//! of its own, so it is released the moment that process or connection dies; on SQLite, whose
//! file one process owns, the process always holds it.

use std::time::Duration;

use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::watch;

use super::Store;

/// How often a holder checks its connection, and a waiter tries again.
const LEADERSHIP_CHECK: Duration = Duration::from_secs(5);

impl Store {
    /// Whether this process holds role `lock_id` now, kept up to date until every receiver is
    /// dropped.
    pub fn leadership(&self, lock_id: i64) -> watch::Receiver<bool> {
        match self {
            Store::Sqlite(_) => watch::channel(true).1,
            Store::Postgres(pool) => {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(hold_advisory_lock(pool.clone(), lock_id, tx));
                rx
            }
        }
    }
}

async fn hold_advisory_lock(pool: PgPool, lock_id: i64, tx: watch::Sender<bool>) {
    let mut connection: Option<PgConnection> = None;
    loop {
        let holding = *tx.borrow();
        let held = try_hold(&pool, &mut connection, lock_id, holding).await;
        if holding && !held {
            tracing::warn!(
                lock_id,
                "lost the leadership lock's connection; stepping down"
            );
        } else if held && !holding {
            tracing::info!(lock_id, "took the leadership lock");
        }
        tx.send_if_modified(|now| std::mem::replace(now, held) != held);
        tokio::select! {
            _ = tokio::time::sleep(LEADERSHIP_CHECK) => {}
            _ = tx.closed() => return,
        }
    }
}

/// One round: while holding, checks that the lock's connection still answers; otherwise
/// (re)connects when needed and asks for the lock. A failed connection is dropped, which
/// releases whatever it held.
async fn try_hold(
    pool: &PgPool,
    connection: &mut Option<PgConnection>,
    lock_id: i64,
    holding: bool,
) -> bool {
    if connection.is_none() {
        match pool.connect_options().connect().await {
            Ok(c) => *connection = Some(c),
            Err(_) => return false,
        }
    }
    let Some(c) = connection.as_mut() else {
        return false;
    };
    let answer = if holding {
        sqlx::query("SELECT 1").execute(&mut *c).await.map(|_| true)
    } else {
        sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(lock_id)
            .fetch_one(&mut *c)
            .await
    };
    answer.unwrap_or_else(|_| {
        *connection = None;
        false
    })
}
