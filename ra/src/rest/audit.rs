//! `GET /v1/audit` (the log, newest first, with filters and a cursor) and
//! `GET /v1/audit/verify` (walks the hash chain and names the first broken link).

use axum::extract::{Query, State};
use axum::Json;
use meshca_ca::audit::AuditRecord;
use meshca_ca::store::AuditFilter;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::auth::Auditor;
use super::error::ApiError;
use super::pagination::{self, unix_to_rfc3339, Cursor};
use super::state::RestState;
use super::views::{ActorView, AuditEventView, AuditPage, BrokenLinkView, ErrorBody, Verdict};

/// Filters (combined with AND), a page size and a cursor; times are RFC 3339.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// e.g. `certificate.issue`, `certificate.revoke`, `authority.activate`, `rest.authenticate`.
    action: Option<String>,
    actor: Option<String>,
    /// `success`, `refused` or `denied`.
    outcome: Option<String>,
    target: Option<String>,
    /// Inclusive.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Exclusive.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^audit\\.[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// An audit record as the API (and the console) shows it.
pub(crate) fn audit_view(record: &AuditRecord) -> AuditEventView {
    AuditEventView {
        seq: record.seq,
        at: unix_to_rfc3339(record.at),
        actor: ActorView {
            method: record.actor_method.clone(),
            principal: record.actor_principal.clone(),
        },
        action: record.action.clone(),
        target: record.target.clone(),
        outcome: record.outcome.clone(),
        details: serde_json::from_str::<Value>(&record.details).unwrap_or(Value::Null),
        prev_hash: record.prev_hash.clone(),
        hash: record.hash.clone(),
    }
}

/// The audit log, newest first, in keyset pages.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    operation_id = "list_audit_events",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn list(
    State(state): State<RestState>,
    _caller: Auditor,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    audit_page(&state, query).await.map(Json)
}

/// One page of the log (the API's, and the console's).
pub(crate) async fn audit_page(
    state: &RestState,
    query: AuditQuery,
) -> Result<AuditPage, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| Cursor::decode(c, "audit"))
        .transpose()?;
    let filter = AuditFilter {
        action: query.action,
        actor: query.actor,
        outcome: query.outcome,
        unsuccessful: false,
        target: query.target,
        since: pagination::time_param("since", query.since.as_deref())?,
        until: pagination::time_param("until", query.until.as_deref())?,
    };
    let records = state
        .ca
        .store()
        .audit_events(&filter, before.map(|c| c.0), limit + 1)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let (page, next) = pagination::split_page(records, limit, |r| Cursor(r.seq).encode("audit"));
    Ok(AuditPage {
        events: page.iter().map(audit_view).collect(),
        next_cursor: next,
    })
}

/// Walks the chain up to its head as it stands when the walk starts and names the first event
/// that was altered, removed or inserted.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    operation_id = "verify_audit_log",
    responses(
        (status = 200, body = Verdict),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn verify(
    State(state): State<RestState>,
    _caller: Auditor,
) -> Result<Json<Verdict>, ApiError> {
    audit_verdict(&state).await.map(Json)
}

/// Walks the chain (the API's verify, and the console's).
pub(crate) async fn audit_verdict(state: &RestState) -> Result<Verdict, ApiError> {
    let verdict = state
        .ca
        .store()
        .verify_audit_log()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(match verdict {
        Ok((checked, head)) => Verdict {
            intact: true,
            checked,
            head: Some(head),
            first_broken: None,
        },
        Err(broken) => Verdict {
            intact: false,
            checked: broken.seq - 1,
            head: None,
            first_broken: Some(BrokenLinkView {
                seq: broken.seq,
                reason: broken.reason,
            }),
        },
    })
}
