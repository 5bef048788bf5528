//! The certificate pages: the inventory with every filter of `/v1/certificates` in a form,
//! keyset pages and export links; one certificate decoded, with its chain, requester, audit
//! events and PEM; and (admin) revocation behind a confirmation page. Each reads and writes
//! through the same functions as the API, so the two cannot disagree.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use meshca_ca::crl::RevocationReason;
use meshca_ca::store::AuditFilter;
use serde::Deserialize;

use super::decode::{decoded_fields, ChainLink, DecodedField};
use super::form::FormValues;
use super::page::{render, Chrome, Rejection};
use super::session::{AdminViewer, Viewer};
use crate::rest::views::{AuditEventView, CertificateView};
use crate::rest::{audit_view, certificates, ApiError, RestState};

/// Audit events shown on a certificate's page (its issuance, revocation, refused renewals).
const EVENTS_SHOWN: i64 = 50;

#[derive(askama::Template)]
#[template(path = "console/certificates.html")]
struct ListPage {
    chrome: Chrome,
    form: FormValues,
    certificates: Vec<CertificateView>,
    /// Query string of the next page, if there is one.
    next: Option<String>,
    /// Query strings of the two exports of this filter.
    export_csv: String,
    export_ndjson: String,
    statuses: [&'static str; 3],
    error: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "console/certificate.html")]
struct DetailPage {
    chrome: Chrome,
    certificate: CertificateView,
    fields: Vec<DecodedField>,
    chain: Vec<ChainLink>,
    /// Why the chain is not shown, if it is not.
    chain_note: Option<String>,
    events: Vec<AuditEventView>,
}

#[derive(askama::Template)]
#[template(path = "console/revoke.html")]
struct RevokePage {
    chrome: Chrome,
    certificate: CertificateView,
    reasons: Vec<&'static str>,
}

/// Missing fields are empty, so a forged form is refused for its token (403), not its shape.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn list(
    State(state): State<RestState>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Rejection> {
    let form = FormValues::parse(raw.as_deref())?;
    let listing = form
        .listing(|query: certificates::ListQuery| {
            let state = &state;
            async move {
                certificates::list_page(state, &query)
                    .await
                    .map(|page| (page.certificates, page.next_cursor))
            }
        })
        .await?;
    Ok(render(&ListPage {
        chrome: viewer.chrome("certificates"),
        export_csv: form.query(&["cursor", "limit"], &[("format", "csv")]),
        export_ndjson: form.query(&["cursor", "limit"], &[("format", "ndjson")]),
        form,
        certificates: listing.rows,
        next: listing.next,
        statuses: ["valid", "expired", "revoked"],
        error: listing.error,
    }))
}

/// The export of a filter, as `/v1/certificates/export` streams it (an attachment).
pub async fn export(
    State(state): State<RestState>,
    _viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Rejection> {
    let form = FormValues::parse(raw.as_deref())?;
    let query = form
        .to_query::<certificates::ExportQuery>(&[])
        .map_err(Rejection::BadRequest)?;
    let csv = form.get("format") == "csv";
    let mut response = certificates::export_response(&state, &query)?;
    let disposition = if csv {
        "attachment; filename=\"certificates.csv\""
    } else {
        "attachment; filename=\"certificates.ndjson\""
    };
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(disposition),
    );
    Ok(response)
}

pub async fn show(
    State(state): State<RestState>,
    viewer: Viewer,
    Path(serial): Path<String>,
) -> Result<Response, Rejection> {
    let (certificate, der) = certificates::detail(&state, &serial).await?;
    let (chain, chain_note) = match state.ca.authorities().get(&certificate.authority) {
        Some(entry) => (ChainLink::of_pems(entry.authority.issuer_chain_pem()), None),
        None => (
            Vec::new(),
            Some(format!(
                "authority {} is no longer in the CA's set",
                certificate.authority
            )),
        ),
    };
    let filter = AuditFilter {
        target: Some(certificate.serial.clone()),
        ..AuditFilter::default()
    };
    let events = state
        .ca
        .store()
        .audit_events(&filter, None, EVENTS_SHOWN)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(render(&DetailPage {
        chrome: viewer.chrome("certificates"),
        fields: decoded_fields(&der),
        certificate,
        chain,
        chain_note,
        events: events.iter().map(audit_view).collect(),
    }))
}

/// The certificate as a PEM file.
pub async fn pem(
    State(state): State<RestState>,
    _viewer: Viewer,
    Path(serial): Path<String>,
) -> Result<Response, Rejection> {
    let (certificate, _) = certificates::detail(&state, &serial).await?;
    let disposition = format!("attachment; filename=\"{}.pem\"", certificate.serial);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).map_err(|e| ApiError::internal(&e))?,
            ),
        ],
        certificate.pem.unwrap_or_default(),
    )
        .into_response())
}

/// The confirmation step: what will be revoked, and why.
pub async fn confirm_revoke(
    State(state): State<RestState>,
    AdminViewer(viewer): AdminViewer,
    Path(serial): Path<String>,
) -> Result<Response, Rejection> {
    let (certificate, _) = certificates::detail(&state, &serial).await?;
    Ok(render(&RevokePage {
        chrome: viewer.chrome("certificates"),
        certificate,
        reasons: RevocationReason::names(),
    }))
}

pub async fn revoke(
    State(state): State<RestState>,
    AdminViewer(viewer): AdminViewer,
    Path(serial): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, Rejection> {
    viewer.check_csrf(&form.csrf)?;
    let reason = RevocationReason::parse(&form.reason).ok_or_else(|| {
        Rejection::BadRequest(format!(
            "{:?} is not a revocation reason; one of {}",
            form.reason,
            RevocationReason::names().join(", ")
        ))
    })?;
    let revoked = certificates::revoke_as(&state, &viewer.actor, &serial, reason).await?;
    Ok(Redirect::to(&format!("/ui/certificates/{}", revoked.serial)).into_response())
}
