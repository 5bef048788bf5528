//! Authorities in the store: the bootstrap insert replicas race on, prepared authorities, and
//! state transitions, each rotation step in one transaction with its audit event.

use super::records::{StoreError, StoredAuthority, TransitionError};
use super::sql::{append_audit_events_in, BeginWrite, AUTHORITY_COLUMNS, INSERT_AUTHORITY};
use super::Store;
use crate::audit::AuditEvent;
use crate::rotation::AuthorityState;

impl Store {
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
        let result = with_pool!(self, pool => {
            insert_authority(a, AuthorityState::Active)
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
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                insert_authority(a, AuthorityState::Prepared)
                    .execute(&mut *tx)
                    .await?;
                append_audit_events_in!(tx, &[audit]);
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
        from: AuthorityState,
        to: AuthorityState,
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
                Some(state) if state != from.as_str() => {
                    return Err(TransitionError::WrongState {
                        id: id.to_string(),
                        state,
                        required: from,
                    })
                }
                Some(_) => {}
            }
            if to == AuthorityState::Active {
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
            .bind(to.as_str())
            .bind(now)
            .bind(id)
            .bind(from.as_str())
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
                append_audit_events_in!(tx, &[audit]);
                Ok::<_, sqlx::Error>(())
            }
            .await
            .map_err(query_failed)?;
            tx.commit().await.map_err(query_failed)
        })
    }
}

/// The insert of `a` in `state`, for whichever database runs it.
fn insert_authority<'q, DB>(
    a: &'q StoredAuthority,
    state: AuthorityState,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(INSERT_AUTHORITY.as_str())
        .bind(a.id.as_str())
        .bind(state.as_str())
        .bind(a.source.as_str())
        .bind(a.key_type.as_str())
        .bind(a.cert_der.as_slice())
        .bind(a.chain_pem.as_str())
        .bind(a.roots_pem.as_str())
        .bind(a.sealed_key.as_slice())
        .bind(a.kek_id.as_str())
        .bind(a.created_at)
}
