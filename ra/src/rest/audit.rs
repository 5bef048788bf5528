//! `GET /v1/audit` (the log, newest first, with filters and a cursor) and
//! `GET /v1/audit/verify` (walks the hash chain and names the first broken link).

use axum::extract::{Query, State};
use axum::Json;
use meshca_ca::audit::{verify_chain, AuditRecord, GENESIS_HASH};
use meshca_ca::store::AuditFilter;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Auditor;
use super::authorities::unix_to_rfc3339;
use super::pagination::{self, Cursor};
use super::{ApiError, RestState};

/// Events checked per store round trip while verifying.
const VERIFY_PAGE: i64 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    outcome: Option<String>,
    target: Option<String>,
    /// RFC 3339 (UTC), inclusive.
    since: Option<String>,
    /// RFC 3339 (UTC), exclusive.
    until: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn view(record: &AuditRecord) -> Value {
    json!({
        "seq": record.seq,
        "at": unix_to_rfc3339(record.at),
        "actor": { "method": record.actor_method, "principal": record.actor_principal },
        "action": record.action,
        "target": record.target,
        "outcome": record.outcome,
        "details": serde_json::from_str::<Value>(&record.details).unwrap_or(Value::Null),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    })
}

pub async fn list(
    State(state): State<RestState>,
    _caller: Auditor,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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
    Ok(Json(json!({
        "events": page.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

pub async fn verify(
    State(state): State<RestState>,
    _caller: Auditor,
) -> Result<Json<Value>, ApiError> {
    let store = state.ca.store();
    let (head_seq, head_hash) = store
        .audit_head()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut tail = (0, GENESIS_HASH.to_string());
    loop {
        let page = store
            .audit_chain_page(tail.0, VERIFY_PAGE)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        if page.is_empty() {
            break;
        }
        match verify_chain(&page, tail.0, tail.1.clone()) {
            Ok(next) => tail = next,
            Err(broken) => {
                return Ok(Json(json!({
                    "intact": false,
                    "checked": broken.seq - 1,
                    "first_broken": broken,
                })))
            }
        }
    }
    // Rows cut from the end leave the chain consistent but shorter than its recorded head.
    if tail.0 != head_seq || tail.1 != head_hash {
        return Ok(Json(json!({
            "intact": false,
            "checked": tail.0,
            "first_broken": {
                "seq": tail.0 + 1,
                "reason": format!("the log ends at event {} but its head says {}", tail.0, head_seq),
            },
        })));
    }
    Ok(Json(
        json!({ "intact": true, "checked": tail.0, "head": tail.1 }),
    ))
}
