//! `meshca admin`: the REST API from a terminal. Tables by default, `--json` for scripts;
//! server URL, token and CA from flags or `MESHCA_ADMIN_URL`, `MESHCA_ADMIN_TOKEN`,
//! `MESHCA_ADMIN_CA`, else, beside `meshca server --dev`, from its `./meshca-dev`.

mod args;
mod client;
mod rotate;
mod table;

use std::io::Write;
use std::path::PathBuf;

use meshca_ra::rest::views::{
    AuditEventView, AuditPage, AuthorityList, AuthorityView, CertificatePage, CertificateView,
    GenerateBody, GenerateRequest, PrepareBody, RevokeBody, UploadRequest, Verdict,
};
use serde_json::json;

pub use args::{
    AdminArgs, AdminCommand, AuditCommand, AuthorityCommand, CertCommand, CertFilters,
    DevDefaultsError, RotateArgs, DEV_DIR,
};
pub use client::{AdminClient, AdminError, Answer};

use client::read;
use table::{print, Column};

/// A table's columns: each header with the field of the view shown under it.
macro_rules! columns {
    ($view:ty { $($header:literal: $($field:ident).+),* $(,)? }) => {
        &[$(($header, |row: &$view| Some(row.$($field).+.to_string()))),*]
    };
}

const AUTHORITY_COLUMNS: &[Column<AuthorityView>] = columns!(AuthorityView {
    "ID": id, "STATE": state, "SOURCE": source, "KEY": key_type, "NOT AFTER": not_after,
    "LIVE": live_certificates, "AGENTS": propagation.agents,
    "CERTS": propagation.certificates, "IDENTITIES": propagation.identities, "SUBJECT": subject,
});

const CERT_COLUMNS: &[Column<CertificateView>] = columns!(CertificateView {
    "SERIAL": serial, "SPIFFE ID": spiffe_id, "STATUS": status, "NOT AFTER": not_after,
    "AUTHORITY": authority, "REQUESTER": requester.principal,
});

const AUDIT_COLUMNS: &[Column<AuditEventView>] = columns!(AuditEventView {
    "SEQ": seq, "AT": at, "ACTOR": actor.principal, "VIA": actor.method, "ACTION": action,
    "TARGET": target, "OUTCOME": outcome,
});

/// Runs one admin command, writing its result to `out`.
pub async fn run(args: &AdminArgs, out: &mut impl Write) -> Result<(), AdminError> {
    let mut client = AdminClient::new(args)?;
    let json = args.json;
    match &args.command {
        AdminCommand::Authorities(command) => authorities(&mut client, command, json, out).await,
        AdminCommand::Certs(command) => certs(&client, command, json, out).await,
        AdminCommand::Crl { authority } => {
            let url = client.url("/v1/crl", &[("authority", authority.clone())]);
            let pem = client.text(url, "application/x-pem-file").await?;
            write!(out, "{pem}")?;
            Ok(())
        }
        AdminCommand::Audit(command) => audit(&client, command, json, out).await,
    }
}

async fn authorities(
    client: &mut AdminClient,
    command: &AuthorityCommand,
    json: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let answer: Answer<AuthorityView> = match command {
        AuthorityCommand::List => {
            let list: Answer<AuthorityList> = client.get("/v1/authorities", &[]).await?;
            print(
                out,
                json,
                &list.json,
                &list.view.authorities,
                AUTHORITY_COLUMNS,
            )?;
            return Ok(());
        }
        AuthorityCommand::Show { id } => client.get(&format!("/v1/authorities/{id}"), &[]).await?,
        AuthorityCommand::Prepare {
            key_type,
            ca_cert,
            ca_key,
            root_cert,
            cert_chain,
        } => {
            let body = match ca_cert {
                None => PrepareBody::Generate(GenerateRequest {
                    generate: GenerateBody {
                        key_type: *key_type,
                    },
                }),
                Some(ca_cert) => {
                    let text =
                        |p: &PathBuf| read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
                    // clap requires both with --ca-cert.
                    let required =
                        |p: &Option<PathBuf>| text(p.as_ref().expect("required by clap"));
                    PrepareBody::Upload(UploadRequest {
                        ca_cert: text(ca_cert)?,
                        ca_key: required(ca_key)?,
                        root_cert: required(root_cert)?,
                        cert_chain: cert_chain.as_ref().map(text).transpose()?,
                    })
                }
            };
            client.post("/v1/authorities", &[], &body).await?
        }
        AuthorityCommand::Activate { id, force } => step(client, id, "activate", *force).await?,
        AuthorityCommand::Taint { id } => step(client, id, "taint", false).await?,
        AuthorityCommand::Revoke { id, force } => step(client, id, "revoke", *force).await?,
        AuthorityCommand::Rotate(rotate_args) => {
            return rotate::rotate(client, rotate_args, json, out).await;
        }
    };
    print(
        out,
        json,
        &answer.json,
        std::slice::from_ref(&answer.view),
        AUTHORITY_COLUMNS,
    )?;
    Ok(())
}

/// POSTs rotation step `name` on authority `id`, forced past its gate when `force`.
async fn step(
    client: &AdminClient,
    id: &str,
    name: &str,
    force: bool,
) -> Result<Answer<AuthorityView>, AdminError> {
    let query = [("force", force.then(|| "true".to_string()))];
    client
        .post(&format!("/v1/authorities/{id}/{name}"), &query, &json!({}))
        .await
}

async fn certs(
    client: &AdminClient,
    command: &CertCommand,
    json: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match command {
        CertCommand::List {
            filters,
            limit,
            cursor,
        } => {
            let mut query = filters.query();
            query.push(("limit", Some(limit.to_string())));
            query.push(("cursor", cursor.clone()));
            let page: Answer<CertificatePage> = client.get("/v1/certificates", &query).await?;
            print(out, json, &page.json, &page.view.certificates, CERT_COLUMNS)?;
            if !json {
                if let Some(next) = &page.view.next_cursor {
                    writeln!(out, "# more: --cursor {next}")?;
                }
            }
        }
        CertCommand::Show { serial } => {
            let answer: Answer<CertificateView> = client
                .get(&format!("/v1/certificates/{serial}"), &[])
                .await?;
            let cert = std::slice::from_ref(&answer.view);
            print(out, json, &answer.json, cert, CERT_COLUMNS)?;
            if !json {
                write!(out, "{}", answer.view.pem.as_deref().unwrap_or_default())?;
            }
        }
        CertCommand::Revoke { serial, reason } => {
            let answer: Answer<CertificateView> = client
                .post(
                    &format!("/v1/certificates/{serial}/revoke"),
                    &[],
                    &RevokeBody { reason: *reason },
                )
                .await?;
            let cert = std::slice::from_ref(&answer.view);
            print(out, json, &answer.json, cert, CERT_COLUMNS)?;
        }
        CertCommand::Export { filters, format } => {
            let mut query = filters.query();
            query.push(("format", Some(format.clone())));
            let url = client.url("/v1/certificates/export", &query);
            client.stream(url, out).await?;
        }
    }
    Ok(())
}

async fn audit(
    client: &AdminClient,
    command: &AuditCommand,
    json: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match command {
        AuditCommand::List {
            action,
            actor,
            outcome,
            target,
            since,
            until,
            limit,
            cursor,
        } => {
            let query = [
                ("action", action.clone()),
                ("actor", actor.clone()),
                ("outcome", outcome.clone()),
                ("target", target.clone()),
                ("since", since.clone()),
                ("until", until.clone()),
                ("limit", Some(limit.to_string())),
                ("cursor", cursor.clone()),
            ];
            let page: Answer<AuditPage> = client.get("/v1/audit", &query).await?;
            print(out, json, &page.json, &page.view.events, AUDIT_COLUMNS)?;
        }
        AuditCommand::Verify => {
            let answer: Answer<Verdict> = client.get("/v1/audit/verify", &[]).await?;
            let verdict = answer.view;
            if json {
                writeln!(out, "{:#}", answer.json)?;
            }
            if !verdict.intact {
                let broken = verdict.first_broken;
                return Err(AdminError::AuditBroken {
                    seq: broken.as_ref().map_or(0, |b| b.seq),
                    reason: broken.map(|b| b.reason).unwrap_or_default(),
                });
            }
            if !json {
                writeln!(
                    out,
                    "audit log intact: {} events, head {}",
                    verdict.checked,
                    verdict.head.unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}
