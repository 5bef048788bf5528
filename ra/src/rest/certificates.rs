//! The certificate inventory for auditors (`/v1/certificates`, filters, keyset pages, a
//! streamed export), revocation for admins, and the CRL.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshca_ca::crl::RevocationReason;
use meshca_ca::issuer::CrlError;
use meshca_ca::store::{
    CertificateFilter, CertificateRow, CertificateStatus, RevocationRecord, Store,
};
use meshca_ca::Serial;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admin, Auditor};
use super::callers::Actor;
use super::error::{path_of, ApiError};
use super::pagination::{self, unix_to_rfc3339, Cursor};
use super::state::RestState;
use super::views::{
    CertificatePage, CertificateView, ErrorBody, RequesterView, RevocationView, RevokeBody,
};

/// Rows per store round trip while exporting.
const EXPORT_PAGE: i64 = 1000;

/// Declares a query struct with the inventory filters (combined with AND) plus `extra` fields:
/// the list and the export take the same filters and each its own paging or format
/// parameters, and the document lists exactly the parameters each endpoint takes.
macro_rules! certificate_query {
    ($(#[$meta:meta])* $name:ident { $($(#[$extra_meta:meta])* $extra:ident: $extra_ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize, IntoParams)]
        #[serde(deny_unknown_fields)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            /// Hex serial (colons allowed).
            #[param(pattern = "^[0-9A-Fa-f:]*[0-9A-Fa-f][0-9A-Fa-f:]*$")]
            serial: Option<String>,
            /// Exact SPIFFE id, or a prefix ending in `*`.
            spiffe_id: Option<String>,
            namespace: Option<String>,
            service_account: Option<String>,
            /// Authority id.
            authority: Option<String>,
            /// The requester's principal.
            requester: Option<String>,
            /// Issued to a node agent on behalf of a pod on its node: the agent's SPIFFE id,
            /// or `*` for any agent.
            impersonated_by: Option<String>,
            /// The node the requester runs on.
            requester_node: Option<String>,
            /// Inclusive.
            #[param(format = DateTime)]
            issued_after: Option<String>,
            /// Exclusive.
            #[param(format = DateTime)]
            issued_before: Option<String>,
            /// Inclusive.
            #[param(format = DateTime)]
            expires_after: Option<String>,
            /// Exclusive.
            #[param(format = DateTime)]
            expires_before: Option<String>,
            #[param(inline)]
            status: Option<StatusParam>,
            $($(#[$extra_meta])* $extra: $extra_ty,)*
        }

        impl $name {
            fn filter(&self) -> Result<CertificateFilter, ApiError> {
                let time = pagination::time_param;
                Ok(CertificateFilter {
                    serial: self.serial.as_deref().map(normalize_serial).transpose()?,
                    spiffe_id: self.spiffe_id.clone(),
                    namespace: self.namespace.clone(),
                    service_account: self.service_account.clone(),
                    authority: self.authority.clone(),
                    requester: self.requester.clone(),
                    impersonated_by: self.impersonated_by.clone(),
                    requester_node: self.requester_node.clone(),
                    issued_after: time("issued_after", self.issued_after.as_deref())?,
                    issued_before: time("issued_before", self.issued_before.as_deref())?,
                    expires_after: time("expires_after", self.expires_after.as_deref())?,
                    expires_before: time("expires_before", self.expires_before.as_deref())?,
                    status: self.status.map(CertificateStatus::from),
                })
            }
        }
    };
}

certificate_query! {
    /// Filters (combined with AND), a page size and a cursor; times are RFC 3339.
    ListQuery {
        /// Default 100.
        #[param(minimum = 1, maximum = 1000)]
        limit: Option<i64>,
        /// `next_cursor` of the previous page.
        #[param(pattern = "^certificates\\.[0-9]{1,18}$")]
        cursor: Option<String>,
    }
}

certificate_query! {
    /// Filters (combined with AND) and the output format; times are RFC 3339.
    ExportQuery {
        #[param(inline)]
        format: Option<ExportFormat>,
    }
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusParam {
    Valid,
    Expired,
    Revoked,
}

/// Default `ndjson`.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Ndjson,
    Csv,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn normalize_serial(text: &str) -> Result<String, ApiError> {
    Serial::from_str(text)
        .map(|s| s.to_hex())
        .map_err(|_| ApiError::bad_request(format!("{text:?} is not a hex serial number")))
}

// === impl StatusParam ===

impl From<StatusParam> for CertificateStatus {
    fn from(status: StatusParam) -> Self {
        match status {
            StatusParam::Valid => Self::Valid,
            StatusParam::Expired => Self::Expired,
            StatusParam::Revoked => Self::Revoked,
        }
    }
}

fn status_of(row: &CertificateRow, now: i64) -> &'static str {
    if row.revoked_at.is_some() {
        "revoked"
    } else if row.issuance.not_after <= now {
        "expired"
    } else {
        "valid"
    }
}

fn view(row: &CertificateRow, now: i64) -> CertificateView {
    CertificateView {
        serial: row.issuance.serial.clone(),
        spiffe_id: row.issuance.spiffe_id.clone(),
        namespace: row.issuance.namespace.clone(),
        service_account: row.issuance.service_account.clone(),
        not_before: unix_to_rfc3339(row.issuance.not_before),
        not_after: unix_to_rfc3339(row.issuance.not_after),
        issued_at: unix_to_rfc3339(row.issuance.issued_at),
        authority: row.issuance.authority_id.clone(),
        requester: RequesterView {
            method: row.issuance.requester_method.clone(),
            principal: row.issuance.requester_principal.clone(),
            peer_address: row.issuance.peer_address.clone(),
            cluster_id: row.issuance.cluster_id.clone(),
            impersonated_by: row.issuance.impersonated_by.clone(),
            pod: row.issuance.requester_pod.clone(),
            node: row.issuance.requester_node.clone(),
        },
        public_key_sha256: row.issuance.public_key_sha256.clone(),
        status: status_of(row, now).to_string(),
        revocation: row.revoked_at.map(|at| RevocationView {
            at: unix_to_rfc3339(at),
            reason: row.revocation_reason.clone(),
        }),
        pem: None,
    }
}

fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The inventory, newest first, in keyset pages.
#[utoipa::path(get, path = "/v1/certificates", tag = "certificates",
    operation_id = "list_certificates",
    params(ListQuery),
    responses(
        (status = 200, body = CertificatePage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn list(
    State(state): State<RestState>,
    _caller: Auditor,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<CertificatePage>, ApiError> {
    list_page(&state, &query_of(query)?).await.map(Json)
}

/// One page of the inventory (the API's list, and the console's).
pub(crate) async fn list_page(
    state: &RestState,
    query: &ListQuery,
) -> Result<CertificatePage, ApiError> {
    let filter = query.filter()?;
    let limit = pagination::limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| Cursor::decode(c, "certificates"))
        .transpose()?;
    let now = now();
    let rows = state
        .ca
        .store()
        .certificates(&filter, now, before.map(|c| c.0), limit + 1)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let (page, next) = pagination::split_page(rows, limit, |r| Cursor(r.id).encode("certificates"));
    Ok(CertificatePage {
        certificates: page.iter().map(|r| view(r, now)).collect(),
        next_cursor: next,
    })
}

async fn find(store: &Store, serial: &str) -> Result<CertificateRow, ApiError> {
    let filter = CertificateFilter {
        serial: Some(normalize_serial(serial)?),
        ..Default::default()
    };
    store
        .certificates(&filter, now(), None, 1)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no certificate with serial {serial}")))
}

/// One certificate, with its PEM.
#[utoipa::path(get, path = "/v1/certificates/{serial}", tag = "certificates",
    operation_id = "show_certificate",
    params(("serial" = String, Path, description = "Hex serial (colons allowed)",
        pattern = "^[0-9A-Fa-f:]*[0-9A-Fa-f][0-9A-Fa-f:]*$", example = "18ecb7cbf900c99e3e2bcc016369a7b9")),
    responses(
        (status = 200, body = CertificateView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn show(
    State(state): State<RestState>,
    _caller: Auditor,
    serial: Result<Path<String>, PathRejection>,
) -> Result<Json<CertificateView>, ApiError> {
    let serial = path_of(serial)?;
    detail(&state, &serial).await.map(|(view, _)| Json(view))
}

/// One certificate's view with its PEM, and its DER.
pub(crate) async fn detail(
    state: &RestState,
    serial: &str,
) -> Result<(CertificateView, Vec<u8>), ApiError> {
    let row = find(state.ca.store(), serial).await?;
    let record = state
        .ca
        .store()
        .issuance_by_serial(
            &Serial::from_str(&row.issuance.serial).map_err(|e| ApiError::internal(&e))?,
        )
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no certificate with serial {serial}")))?;
    let mut body = view(&row, now());
    body.pem = Some(pem::encode_config(
        &pem::Pem::new("CERTIFICATE", record.cert_der.clone()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ));
    Ok((body, record.cert_der))
}

/// Revokes a certificate: renewal with it is refused and it is listed in its authority's CRL.
#[utoipa::path(post, path = "/v1/certificates/{serial}/revoke", tag = "certificates",
    operation_id = "revoke_certificate",
    params(("serial" = String, Path, description = "Hex serial (colons allowed)",
        pattern = "^[0-9A-Fa-f:]*[0-9A-Fa-f][0-9A-Fa-f:]*$", example = "18ecb7cbf900c99e3e2bcc016369a7b9")),
    request_body = RevokeBody,
    responses(
        (status = 200, body = CertificateView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody, description = "Not a hex serial, or not a revocation body"),
        (status = 409, body = ErrorBody, description = "Already revoked"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn revoke(
    State(state): State<RestState>,
    Admin(actor): Admin,
    serial: Result<Path<String>, PathRejection>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<CertificateView>, ApiError> {
    let serial = path_of(serial)?;
    match body {
        Ok(Json(body)) => revoke_as(&state, &actor, &serial, body.reason)
            .await
            .map(Json),
        Err(rejection) => {
            let error = ApiError::bad_request(rejection.body_text());
            state
                .audit_action(&actor, "certificate.revoke", &serial, Err(&error))
                .await;
            Err(error)
        }
    }
}

/// Revokes as `actor` (the API's caller, or a console session) and records it, or the
/// refusal, in the audit log before answering.
pub(crate) async fn revoke_as(
    state: &RestState,
    actor: &Actor,
    serial: &str,
    reason: RevocationReason,
) -> Result<CertificateView, ApiError> {
    let result = revoke_inner(state, &actor.principal, serial, reason).await;
    let details = result.as_ref().map(|v| {
        json!({
            "reason": v.revocation.as_ref().and_then(|r| r.reason.clone()),
            "spiffe_id": v.spiffe_id,
        })
    });
    state
        .audit_action(actor, "certificate.revoke", serial, details)
        .await;
    result
}

async fn revoke_inner(
    state: &RestState,
    actor: &str,
    serial: &str,
    reason: RevocationReason,
) -> Result<CertificateView, ApiError> {
    let row = find(state.ca.store(), serial).await?;
    let inserted = state
        .ca
        .store()
        .insert_revocation(&RevocationRecord {
            serial: row.issuance.serial.clone(),
            reason: reason.as_str().to_string(),
            revoked_at: now(),
            actor: actor.to_string(),
        })
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if !inserted {
        return Err(ApiError::conflict(format!(
            "certificate {} is already revoked",
            row.issuance.serial
        )));
    }
    tracing::info!(serial = %row.issuance.serial, spiffe_id = %row.issuance.spiffe_id, reason = reason.as_str(), "certificate revoked");
    let row = find(state.ca.store(), &row.issuance.serial).await?;
    Ok(view(&row, now()))
}

/// Streams every matching certificate, newest first, one store page at a time (constant
/// memory): NDJSON (the list's objects, one per line) or CSV.
#[utoipa::path(get, path = "/v1/certificates/export", tag = "certificates",
    operation_id = "export_certificates",
    params(ExportQuery),
    responses(
        (status = 200, content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn export(
    State(state): State<RestState>,
    _caller: Auditor,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    export_response(&state, &query_of(query)?)
}

/// The streamed export of `query` (the API's, and the console's download).
pub(crate) fn export_response(
    state: &RestState,
    query: &ExportQuery,
) -> Result<Response, ApiError> {
    let csv = matches!(query.format.unwrap_or_default(), ExportFormat::Csv);
    let filter = query.filter()?;
    let store = state.ca.store().clone();
    let now = now();
    let header_line = csv.then(|| format!("{}\n", CSV_COLUMNS.join(",")));
    let pages = futures_util::stream::unfold(
        (Some(None::<i64>), header_line),
        move |(cursor, header_line)| {
            let store = store.clone();
            let filter = filter.clone();
            async move {
                let before = cursor?;
                let rows = match store.certificates(&filter, now, before, EXPORT_PAGE).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        // The status line is gone already; cut the stream so the client sees
                        // a truncated body rather than a silently short export.
                        tracing::error!(%error, "certificate export failed midway");
                        return Some((Err(std::io::Error::other("export failed")), (None, None)));
                    }
                };
                let next = (rows.len() as i64 == EXPORT_PAGE).then(|| rows.last().map(|r| r.id));
                let mut chunk = header_line.unwrap_or_default();
                for row in &rows {
                    if csv {
                        chunk.push_str(&csv_line(row, now));
                    } else {
                        chunk.push_str(&serde_json::to_string(&view(row, now)).unwrap_or_default());
                        chunk.push('\n');
                    }
                }
                if chunk.is_empty() {
                    return None;
                }
                Some((Ok::<_, std::io::Error>(chunk), (next, None)))
            }
        },
    );
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(pages),
    )
        .into_response())
}

/// New columns go last, so a consumer reading by position keeps working.
const CSV_COLUMNS: [&str; 16] = [
    "serial",
    "spiffe_id",
    "namespace",
    "service_account",
    "not_before",
    "not_after",
    "issued_at",
    "authority",
    "requester_method",
    "requester_principal",
    "status",
    "revoked_at",
    "revocation_reason",
    "impersonated_by",
    "requester_pod",
    "requester_node",
];

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn csv_line(row: &CertificateRow, now: i64) -> String {
    let fields = [
        row.issuance.serial.clone(),
        row.issuance.spiffe_id.clone(),
        row.issuance.namespace.clone().unwrap_or_default(),
        row.issuance.service_account.clone().unwrap_or_default(),
        unix_to_rfc3339(row.issuance.not_before),
        unix_to_rfc3339(row.issuance.not_after),
        unix_to_rfc3339(row.issuance.issued_at),
        row.issuance.authority_id.clone(),
        row.issuance.requester_method.clone(),
        row.issuance.requester_principal.clone(),
        status_of(row, now).to_string(),
        row.revoked_at.map(unix_to_rfc3339).unwrap_or_default(),
        row.revocation_reason.clone().unwrap_or_default(),
        row.issuance.impersonated_by.clone().unwrap_or_default(),
        row.issuance.requester_pod.clone().unwrap_or_default(),
        row.issuance.requester_node.clone().unwrap_or_default(),
    ];
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// A CRL, DER.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Only describes the body in the document.
pub struct CrlDer(Vec<u8>);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CrlQuery {
    /// Default: the active authority.
    authority: Option<String>,
}

/// The revoked certificates of one authority (default: the active one), signed by it; DER, or
/// PEM for `Accept: application/x-pem-file`. Regenerated on every request, valid 24 h.
#[utoipa::path(get, path = "/v1/crl", tag = "certificates",
    operation_id = "crl",
    params(CrlQuery),
    responses(
        (status = 200, content((CrlDer = "application/pkix-crl"), (String = "application/x-pem-file"))),
        (status = 400, body = ErrorBody, description = "A parameter other than authority"),
        (status = 404, body = ErrorBody, description = "No such authority"),
        (status = 503, body = ErrorBody, description = "The CA service (split deployment) is unavailable"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []), ("mtls" = [])))]
pub async fn crl(
    State(state): State<RestState>,
    _caller: Auditor,
    headers: HeaderMap,
    query: Result<Query<CrlQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let der = state
        .ca
        .crl(query.authority.as_deref())
        .await
        .map_err(|e| match e {
            CrlError::NotFound(id) => ApiError::not_found(format!("no authority {id}")),
            CrlError::Remote(e) => ApiError::from_remote(e),
            other => ApiError::internal(&other),
        })?;
    let wants_pem = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-pem-file"));
    if wants_pem {
        let text = pem::encode_config(
            &pem::Pem::new("X509 CRL", der),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            )],
            text,
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pkix-crl"),
        )],
        der,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use meshca_ca::crl::RevocationReason;

    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn the_documented_reasons_are_the_crl_reasons() {
        use utoipa::PartialSchema;
        let names = RevocationReason::names();
        for name in &names {
            let reason: RevocationReason = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(reason.as_str(), *name);
        }
        let schema = serde_json::to_value(RevocationReason::schema()).unwrap();
        assert_eq!(schema["enum"], json!(names));
    }

    #[test]
    fn serials_are_normalized() {
        assert_eq!(normalize_serial("0A:BC").unwrap(), "0abc");
        assert!(normalize_serial("xyz").is_err());
    }
}
