//! The audit log page (every filter of `/v1/audit`, keyset pages, "verify the chain") and the
//! CRL page (the list the active authority signs now, decoded).

use std::str::FromStr;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use der::Decode;
use meshca_ca::issuer::CrlError;
use meshca_ca::Serial;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::CrlReason;

use super::form::FormValues;
use super::page::{render, Chrome, Rejection};
use super::session::Viewer;
use crate::rest::pagination::unix_to_rfc3339;
use crate::rest::views::{AuditEventView, Verdict};
use crate::rest::{audit_page, audit_verdict, ApiError, AuditQuery, RestState};

#[derive(askama::Template)]
#[template(path = "console/audit.html")]
struct AuditLogPage {
    chrome: Chrome,
    form: FormValues,
    outcomes: [&'static str; 3],
    events: Vec<AuditEventView>,
    next: Option<String>,
    verdict: Option<Verdict>,
    error: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "console/crl.html")]
struct CrlPage {
    chrome: Chrome,
    crl: DecodedCrl,
}

/// A CRL as the page shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedCrl {
    pub issuer: String,
    pub this_update: String,
    pub next_update: String,
    pub entries: Vec<CrlRow>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct CrlRow {
    /// As the inventory spells it, so it links to the certificate's page.
    pub serial: String,
    pub revoked_at: String,
    pub reason: String,
}

async fn log_page(
    state: &RestState,
    viewer: &Viewer,
    raw: Option<&str>,
    verdict: Option<Verdict>,
) -> Result<Response, Rejection> {
    let form = FormValues::parse(raw)?;
    let listing = form
        .listing(|query: AuditQuery| async move {
            audit_page(state, query)
                .await
                .map(|page| (page.events, page.next_cursor))
        })
        .await?;
    Ok(render(&AuditLogPage {
        chrome: viewer.chrome("audit"),
        form,
        outcomes: ["success", "refused", "denied"],
        events: listing.rows,
        next: listing.next,
        verdict,
        error: listing.error,
    }))
}

pub async fn list(
    State(state): State<RestState>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Rejection> {
    log_page(&state, &viewer, raw.as_deref(), None).await
}

/// Walks the whole chain (read-only, so a GET) and shows the verdict above the newest events.
pub async fn verify(State(state): State<RestState>, viewer: Viewer) -> Result<Response, Rejection> {
    let verdict = audit_verdict(&state).await?;
    log_page(&state, &viewer, None, Some(verdict)).await
}

pub async fn crl(State(state): State<RestState>, viewer: Viewer) -> Result<Response, Rejection> {
    let der = state.ca.crl(None).await.map_err(|e| match e {
        CrlError::Remote(e) => ApiError::from_remote(e),
        other => ApiError::internal(&other),
    })?;
    let crl = decode_crl(&der).map_err(|e| ApiError::internal(&e))?;
    Ok(render(&CrlPage {
        chrome: viewer.chrome("crl"),
        crl,
    }))
}

/// The fields of a DER CRL the page shows.
pub fn decode_crl(der: &[u8]) -> Result<DecodedCrl, der::Error> {
    use der::oid::AssociatedOid;
    let list = CertificateList::from_der(der)?;
    let time = |t: x509_cert::time::Time| {
        unix_to_rfc3339(meshca_pki::time::unix_seconds(t.to_system_time()))
    };
    let entries = list
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|entry| {
            let bytes = entry.serial_number.as_bytes();
            let serial = Serial::from_str(&hex::encode(bytes))
                .map(|s| s.to_hex())
                .unwrap_or_else(|_| hex::encode(bytes));
            let reason = entry
                .crl_entry_extensions
                .iter()
                .flatten()
                .find(|e| e.extn_id == CrlReason::OID)
                .and_then(|e| CrlReason::from_der(e.extn_value.as_bytes()).ok())
                .map_or_else(|| "unspecified".to_string(), |r| format!("{r:?}"));
            CrlRow {
                serial,
                revoked_at: time(entry.revocation_date),
                reason,
            }
        })
        .collect();
    Ok(DecodedCrl {
        issuer: list.tbs_cert_list.issuer.to_string(),
        this_update: time(list.tbs_cert_list.this_update),
        next_update: list
            .tbs_cert_list
            .next_update
            .map_or_else(|| "—".to_string(), time),
        entries,
    })
}
