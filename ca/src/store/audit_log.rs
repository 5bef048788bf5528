//! The audit log in the store: appending events on the chain's head, reading them back with
//! filters, and walking the chain to verify it.

use super::records::{AuditFilter, StoreError};
use super::sql::{
    append_audit_events_in, audit_record, bind_params, AuditRow, BeginWrite, Conditions, Param,
    AUDIT_COLUMNS, READ_AUDIT_HEAD,
};
use super::Store;
use crate::audit::{verify_chain, AuditEvent, AuditRecord, BrokenLink, GENESIS_HASH};

impl Store {
    /// Appends one event to the audit chain.
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<AuditRecord, StoreError> {
        with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let record = append_audit_events_in!(tx, &[event])
                    .pop()
                    .expect("one event appended")
                    .to_record();
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
        conditions.push_texts([
            ("action = ?", &filter.action),
            ("actor_principal = ?", &filter.actor),
            ("outcome = ?", &filter.outcome),
            ("target = ?", &filter.target),
        ]);
        let refusals_only = filter.outcome.as_deref().is_some_and(|o| o != "success");
        if filter.unsuccessful || refusals_only {
            // Word for word the partial index's condition, so both dialects use it (neither
            // infers it from `outcome = 'refused'`).
            conditions.push_fixed("outcome <> 'success'");
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
            sqlx::query_as::<_, (i64, String)>(READ_AUDIT_HEAD)
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
}
