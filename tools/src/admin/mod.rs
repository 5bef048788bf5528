//! `meshca admin`: the REST API from a terminal. Tables by default, `--json` for scripts;
//! server URL, token and CA from flags or `MESHCA_ADMIN_URL`, `MESHCA_ADMIN_TOKEN`,
//! `MESHCA_ADMIN_CA`, else, beside `meshca server --dev`, from its `./meshca-dev`.

mod args;
mod client;
mod table;

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

pub use args::{
    AdminArgs, AdminCommand, AuditCommand, AuthorityCommand, CertCommand, CertFilters,
    DevDefaultsError, DEV_DIR,
};
pub use client::{AdminClient, AdminError};

use client::read;
use table::print;

/// Runs one admin command, writing its result to `out`.
pub async fn run(args: &AdminArgs, out: &mut impl Write) -> Result<(), AdminError> {
    let client = AdminClient::new(args)?;
    let json = args.json;
    match &args.command {
        AdminCommand::Authorities(command) => {
            let value = match command {
                AuthorityCommand::List => client.get("/v1/authorities", &[]).await?,
                AuthorityCommand::Show { id } => {
                    client.get(&format!("/v1/authorities/{id}"), &[]).await?
                }
                AuthorityCommand::Prepare {
                    key_type,
                    ca_cert,
                    ca_key,
                    root_cert,
                    cert_chain,
                } => {
                    let body = match ca_cert {
                        None => json!({ "generate": { "key_type": key_type } }),
                        Some(ca_cert) => {
                            let text = |p: &PathBuf| {
                                read(p).map(|b| String::from_utf8_lossy(&b).into_owned())
                            };
                            let mut body = json!({ "ca_cert": text(ca_cert)? });
                            for (name, path) in [
                                ("ca_key", ca_key),
                                ("root_cert", root_cert),
                                ("cert_chain", cert_chain),
                            ] {
                                if let Some(path) = path {
                                    body[name] = json!(text(path)?);
                                }
                            }
                            body
                        }
                    };
                    client.post("/v1/authorities", body).await?
                }
                AuthorityCommand::Activate { id } => {
                    client
                        .post(&format!("/v1/authorities/{id}/activate"), json!({}))
                        .await?
                }
                AuthorityCommand::Taint { id } => {
                    client
                        .post(&format!("/v1/authorities/{id}/taint"), json!({}))
                        .await?
                }
                AuthorityCommand::Revoke { id } => {
                    client
                        .post(&format!("/v1/authorities/{id}/revoke"), json!({}))
                        .await?
                }
            };
            let rows = value["authorities"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![value.clone()]);
            print(
                out,
                json,
                &value,
                &rows,
                &[
                    ("ID", "/id"),
                    ("STATE", "/state"),
                    ("SOURCE", "/source"),
                    ("KEY", "/key_type"),
                    ("NOT AFTER", "/not_after"),
                    ("LIVE", "/live_certificates"),
                    ("RECEIVED", "/propagation/received"),
                    ("CONNECTED", "/propagation/connected"),
                    ("SUBJECT", "/subject"),
                ],
            )?;
        }
        AdminCommand::Certs(command) => match command {
            CertCommand::List {
                filters,
                limit,
                cursor,
            } => {
                let mut query = filters.query();
                query.push(("limit", Some(limit.to_string())));
                query.push(("cursor", cursor.clone()));
                let value = client.get("/v1/certificates", &query).await?;
                let rows = value["certificates"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                print(out, json, &value, &rows, CERT_COLUMNS)?;
                if !json {
                    if let Some(next) = value["next_cursor"].as_str() {
                        writeln!(out, "# more: --cursor {next}")?;
                    }
                }
            }
            CertCommand::Show { serial } => {
                let value = client
                    .get(&format!("/v1/certificates/{serial}"), &[])
                    .await?;
                if json {
                    writeln!(out, "{value:#}")?;
                } else {
                    print(
                        out,
                        false,
                        &value,
                        std::slice::from_ref(&value),
                        CERT_COLUMNS,
                    )?;
                    write!(out, "{}", value["pem"].as_str().unwrap_or_default())?;
                }
            }
            CertCommand::Revoke { serial, reason } => {
                let value = client
                    .post(
                        &format!("/v1/certificates/{serial}/revoke"),
                        json!({ "reason": reason }),
                    )
                    .await?;
                print(
                    out,
                    json,
                    &value,
                    std::slice::from_ref(&value),
                    CERT_COLUMNS,
                )?;
            }
            CertCommand::Export { filters, format } => {
                let mut query = filters.query();
                query.push(("format", Some(format.clone())));
                let url = client.url("/v1/certificates/export", &query);
                client.stream(url, out).await?;
            }
        },
        AdminCommand::Crl { authority } => {
            let url = client.url("/v1/crl", &[("authority", authority.clone())]);
            let pem = client.text(url, "application/x-pem-file").await?;
            write!(out, "{pem}")?;
        }
        AdminCommand::Audit(command) => match command {
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
                let value = client.get("/v1/audit", &query).await?;
                let rows = value["events"].as_array().cloned().unwrap_or_default();
                print(
                    out,
                    json,
                    &value,
                    &rows,
                    &[
                        ("SEQ", "/seq"),
                        ("AT", "/at"),
                        ("ACTOR", "/actor/principal"),
                        ("VIA", "/actor/method"),
                        ("ACTION", "/action"),
                        ("TARGET", "/target"),
                        ("OUTCOME", "/outcome"),
                    ],
                )?;
            }
            AuditCommand::Verify => {
                let value = client.get("/v1/audit/verify", &[]).await?;
                if json {
                    writeln!(out, "{value:#}")?;
                }
                if value["intact"] == true {
                    if !json {
                        writeln!(
                            out,
                            "audit log intact: {} events, head {}",
                            value["checked"],
                            value["head"].as_str().unwrap_or_default()
                        )?;
                    }
                } else {
                    return Err(AdminError::AuditBroken {
                        seq: value["first_broken"]["seq"].as_i64().unwrap_or(0),
                        reason: value["first_broken"]["reason"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    });
                }
            }
        },
    }
    Ok(())
}

const CERT_COLUMNS: &[(&str, &str)] = &[
    ("SERIAL", "/serial"),
    ("SPIFFE ID", "/spiffe_id"),
    ("STATUS", "/status"),
    ("NOT AFTER", "/not_after"),
    ("AUTHORITY", "/authority"),
    ("REQUESTER", "/requester/principal"),
];
