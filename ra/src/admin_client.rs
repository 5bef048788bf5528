//! `meshca admin`: the REST API from a terminal. Tables by default, `--json` for scripts;
//! server URL, token and CA from flags or `MESHCA_ADMIN_URL`, `MESHCA_ADMIN_TOKEN`,
//! `MESHCA_ADMIN_CA`, else, beside `meshca server --dev`, from its `./meshca-dev`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where `meshca server --dev` keeps its state, relative to the directory it was started in.
pub const DEV_DIR: &str = "meshca-dev";

/// Where the API is and who is calling.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Base URL of the REST API.
    #[arg(
        long,
        env = "MESHCA_ADMIN_URL",
        default_value = "https://127.0.0.1:8443"
    )]
    pub url: String,
    /// Bearer token (admin or auditor). Without one, a client certificate is needed; beside a
    /// dev server, its `meshca-dev/dev/admin-token`. Tokens are base64url and may begin with
    /// `-`: the value is taken as is, not read as a flag.
    #[arg(
        long,
        env = "MESHCA_ADMIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<String>,
    /// PEM roots that verify the server (meshca's trust bundle); beside a dev server, its
    /// `meshca-dev/root-cert.pem`.
    #[arg(long, env = "MESHCA_ADMIN_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM, one file) instead of a token.
    #[arg(long, env = "MESHCA_ADMIN_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Signing authorities and root rotation.
    #[command(subcommand)]
    Authorities(AuthorityCommand),
    /// The certificate inventory.
    #[command(subcommand)]
    Certs(CertCommand),
    /// The CRL of an authority (default: the active one), PEM.
    Crl {
        /// Authority id (default: the active one).
        #[arg(long)]
        authority: Option<String>,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuthorityCommand {
    /// Every authority: state, live certificates, propagation to agents.
    List,
    /// One authority.
    Show {
        /// Authority id.
        id: String,
    },
    /// Prepare a new authority: a generated root (default), or a plug-in set from files.
    Prepare {
        /// For a generated root: ec-p256, ec-p384, rsa-2048 or rsa-4096.
        #[arg(long, default_value = "ec-p256", conflicts_with = "ca_cert")]
        key_type: String,
        /// Plug-in set: the signing certificate (Istio's ca-cert.pem), instead of a generated root.
        #[arg(long, requires_all = ["ca_key", "root_cert"])]
        ca_cert: Option<PathBuf>,
        /// Plug-in set: the signing certificate's private key (ca-key.pem).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Plug-in set: the root(s) the signing certificate chains to (root-cert.pem).
        #[arg(long, requires = "ca_cert")]
        root_cert: Option<PathBuf>,
        /// Plug-in set: intermediates between the signing certificate and the root
        /// (cert-chain.pem; optional).
        #[arg(long, requires = "ca_cert")]
        cert_chain: Option<PathBuf>,
    },
    /// prepared → active: new certificates come from it; the previous one becomes old.
    Activate {
        /// Authority id.
        id: String,
    },
    /// old → tainted: agents holding its certificates rotate now.
    Taint {
        /// Authority id.
        id: String,
    },
    /// tainted → revoked: its root leaves the trust bundle.
    Revoke {
        /// Authority id.
        id: String,
    },
}

/// Inventory filters, as the API names them.
#[derive(Debug, Default, Args)]
pub struct CertFilters {
    /// Exact SPIFFE id, or a prefix ending in `*`.
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Kubernetes service account.
    #[arg(long)]
    pub service_account: Option<String>,
    /// Issuing authority id.
    #[arg(long)]
    pub authority: Option<String>,
    /// The requester's principal.
    #[arg(long)]
    pub requester: Option<String>,
    /// Issued at or after (RFC 3339, e.g. 2026-11-26T10:00:00Z).
    #[arg(long)]
    pub issued_after: Option<String>,
    /// Issued before (RFC 3339).
    #[arg(long)]
    pub issued_before: Option<String>,
    /// Expiring at or after (RFC 3339).
    #[arg(long)]
    pub expires_after: Option<String>,
    /// Expiring before (RFC 3339).
    #[arg(long)]
    pub expires_before: Option<String>,
    /// valid, expired or revoked.
    #[arg(long)]
    pub status: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// One page of the inventory, newest first.
    List {
        #[command(flatten)]
        filters: CertFilters,
        /// Certificates per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The previous page's `next_cursor` (opaque; taken as is).
        #[arg(long, allow_hyphen_values = true)]
        cursor: Option<String>,
    },
    /// One certificate, with its PEM.
    Show {
        /// Hex serial (colons allowed).
        serial: String,
    },
    /// Revoke a certificate: renewal with it is refused and its authority's CRL lists it.
    Revoke {
        /// Hex serial (colons allowed).
        serial: String,
        /// keyCompromise, superseded, cessationOfOperation, affiliationChanged, …
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Every matching certificate, streamed to stdout.
    Export {
        #[command(flatten)]
        filters: CertFilters,
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// One page of the log, newest first.
    List {
        /// e.g. certificate.issue, certificate.revoke, authority.activate, rest.authenticate.
        #[arg(long)]
        action: Option<String>,
        /// The actor's principal.
        #[arg(long)]
        actor: Option<String>,
        /// success, refused or denied.
        #[arg(long)]
        outcome: Option<String>,
        /// What the action was on (a serial, an authority id, a path).
        #[arg(long)]
        target: Option<String>,
        /// At or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Events per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The previous page's `next_cursor` (opaque; taken as is).
        #[arg(long, allow_hyphen_values = true)]
        cursor: Option<String>,
    },
    /// Walk the hash chain; exits non-zero naming the first broken link.
    Verify,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("the audit log is broken at event {seq}: {reason}")]
    AuditBroken { seq: i64, reason: String },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// A REST client with the caller's credentials.
#[derive(Debug)]
pub struct AdminClient {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, AdminError> {
    std::fs::read(path).map_err(|source| AdminError::Read {
        path: path.clone(),
        source,
    })
}

// === impl AdminArgs ===

impl AdminArgs {
    /// Beside a dev server (`<dir>/meshca-dev` exists), what the caller left unset by flag
    /// and environment is taken from it: its admin token (unless a token or a client
    /// certificate was given) and its root, so the README's first `meshca admin` command
    /// works as it stands. Returns the line that says so, naming the files, for stderr.
    pub fn apply_dev_defaults(&mut self, dir: &Path) -> Result<Option<String>, AdminError> {
        let dev = dir.join(DEV_DIR);
        if !dev.is_dir() {
            return Ok(None);
        }
        let mut used = Vec::new();
        let token_file = dev.join("dev").join("admin-token");
        if self.token.is_none() && self.identity.is_none() && token_file.is_file() {
            let token = String::from_utf8_lossy(&read(&token_file)?)
                .trim()
                .to_string();
            self.token = Some(token);
            used.push(format!("token {}", token_file.display()));
        }
        let root = dev.join("root-cert.pem");
        if self.ca.is_none() && root.is_file() {
            used.push(format!("CA {}", root.display()));
            self.ca = Some(root);
        }
        Ok((!used.is_empty()).then(|| {
            format!(
                "beside a dev server: {} (for {})",
                used.join(", "),
                self.url
            )
        }))
    }
}

// === impl AdminClient ===

impl AdminClient {
    pub fn new(args: &AdminArgs) -> Result<Self, AdminError> {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &args.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
                .map_err(|e| AdminError::Setup(format!("{}: {e}", ca.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(identity) = &args.identity {
            let identity = reqwest::Identity::from_pem(&read(identity)?)
                .map_err(|e| AdminError::Setup(format!("{}: {e}", identity.display())))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| AdminError::Setup(e.to_string()))?;
        let base = reqwest::Url::parse(&args.url)
            .map_err(|e| AdminError::Setup(format!("--url {}: {e}", args.url)))?;
        Ok(Self {
            base,
            token: args.token.clone(),
            http,
        })
    }

    fn url(&self, path: &str, query: &[(&str, Option<String>)]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_path(path);
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                if let Some(value) = value {
                    pairs.append_pair(key, value);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &reqwest::Url,
    ) -> Result<reqwest::Response, AdminError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(AdminError::Api { status, message })
    }

    async fn text(&self, url: reqwest::Url, accept: &str) -> Result<String, AdminError> {
        let response = self
            .send(self.http.get(url.clone()).header("accept", accept), &url)
            .await?;
        response.text().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })
    }

    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<Value, AdminError> {
        let text = self.text(self.url(path, query), "application/json").await?;
        serde_json::from_str(&text).map_err(|e| AdminError::Setup(format!("{path}: {e}")))
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        let url = self.url(path, &[]);
        let request = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body.to_string());
        let response = self.send(request, &url).await?;
        let text = response.text().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| AdminError::Setup(format!("{path}: {e}")))
    }
}

impl CertFilters {
    fn query(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("spiffe_id", self.spiffe_id.clone()),
            ("namespace", self.namespace.clone()),
            ("service_account", self.service_account.clone()),
            ("authority", self.authority.clone()),
            ("requester", self.requester.clone()),
            ("issued_after", self.issued_after.clone()),
            ("issued_before", self.issued_before.clone()),
            ("expires_after", self.expires_after.clone()),
            ("expires_before", self.expires_before.clone()),
            ("status", self.status.clone()),
        ]
    }
}

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
                let mut response = client.send(client.http.get(url.clone()), &url).await?;
                while let Some(chunk) =
                    response.chunk().await.map_err(|source| AdminError::Http {
                        url: url.to_string(),
                        source,
                    })?
                {
                    out.write_all(&chunk)?;
                }
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

/// The JSON as is, or a table of `rows` with `columns` (header, JSON pointer).
fn print(
    out: &mut impl Write,
    json: bool,
    value: &Value,
    rows: &[Value],
    columns: &[(&str, &str)],
) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{value:#}");
    }
    let cell = |row: &Value, pointer: &str| match row.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, p)| cell(row, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(columns.iter().map(|(h, _)| h.to_string()).collect())
    )?;
    for row in table {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_cursors_beginning_with_a_hyphen_are_values() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            admin: AdminArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "admin", "--token", "-Xy_9", "certs", "list", "--cursor", "-Ab",
        ])
        .unwrap();
        assert_eq!(cli.admin.token.as_deref(), Some("-Xy_9"));
        match cli.admin.command {
            AdminCommand::Certs(CertCommand::List { cursor, .. }) => {
                assert_eq!(cursor.as_deref(), Some("-Ab"))
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn beside_a_dev_server_its_token_and_root_are_the_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            admin: AdminArgs,
        }
        let parse = |flags: &[&str]| {
            let args = ["admin"].iter().chain(flags).chain(&["crl"]);
            <Cli as clap::Parser>::try_parse_from(args).unwrap().admin
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();

        let mut args = parse(&[]);
        assert_eq!(
            args.apply_dev_defaults(dir).unwrap(),
            None,
            "no ./meshca-dev"
        );
        assert_eq!((args.token, args.ca), (None, None));

        let dev = dir.join("meshca-dev");
        std::fs::create_dir_all(dev.join("dev")).unwrap();
        std::fs::write(dev.join("dev/admin-token"), "s3cret\n").unwrap();
        std::fs::write(dev.join("root-cert.pem"), "roots").unwrap();
        let (token_file, root) = (dev.join("dev/admin-token"), dev.join("root-cert.pem"));

        let mut args = parse(&[]);
        let note = args.apply_dev_defaults(dir).unwrap().unwrap();
        assert_eq!(args.token.as_deref(), Some("s3cret"));
        assert_eq!(args.ca.as_deref(), Some(root.as_path()));
        assert_eq!(
            note,
            format!(
                "beside a dev server: token {}, CA {} (for https://127.0.0.1:8443)",
                token_file.display(),
                root.display()
            )
        );

        // Flags (and so the environment, which clap reads into the same fields) win.
        let mut args = parse(&[
            "--token",
            "mine",
            "--ca",
            "/etc/ca.pem",
            "--url",
            "https://x",
        ]);
        assert_eq!(args.apply_dev_defaults(dir).unwrap(), None);
        assert_eq!(args.token.as_deref(), Some("mine"));
        assert_eq!(args.ca.as_deref(), Some(Path::new("/etc/ca.pem")));

        // A client certificate is a credential too: no dev token beside it.
        let mut args = parse(&["--identity", "me.pem", "--url", "https://x"]);
        let note = args.apply_dev_defaults(dir).unwrap().unwrap();
        assert_eq!(args.token, None);
        assert_eq!(
            note,
            format!("beside a dev server: CA {} (for https://x)", root.display())
        );
    }

    #[test]
    fn tables_align_and_show_missing_values() {
        let rows = vec![
            json!({"id": "abcd", "state": "active", "propagation": {"received": 3}}),
            json!({"id": "ef", "state": null}),
        ];
        let mut out = Vec::new();
        print(
            &mut out,
            false,
            &Value::Null,
            &rows,
            &[
                ("ID", "/id"),
                ("STATE", "/state"),
                ("RECEIVED", "/propagation/received"),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID    STATE   RECEIVED\nabcd  active  3\nef    -       -\n"
        );
    }
}
