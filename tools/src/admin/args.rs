//! `meshca admin`'s command line: where the API is, the caller's credentials (beside a dev
//! server, its own), and one subcommand per REST operation.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use meshca_pki::crl::RevocationReason;
use meshca_pki::keys::KeyType;

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
        key_type: KeyType,
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
        /// Activate even though its root has not reached everything (audited as forced).
        #[arg(long)]
        force: bool,
    },
    /// old → tainted: agents holding its certificates rotate now.
    Taint {
        /// Authority id.
        id: String,
    },
    /// The whole rotation, each step once its gate holds: prepare a new root, activate it once
    /// it has reached everything (and --settle passed), taint the old one once it has no live
    /// certificates or --drain passed, revoke it once nothing it signed is live. Resumable: run
    /// again, it continues from the state the server holds.
    Rotate(RotateArgs),
    /// tainted → revoked: its root leaves the trust bundle.
    Revoke {
        /// Authority id.
        id: String,
        /// Revoke even though certificates it signed are still live (audited as forced).
        #[arg(long)]
        force: bool,
    },
}

/// `meshca admin authorities rotate`'s waits.
#[derive(Clone, Debug, Args)]
pub struct RotateArgs {
    /// Key type of the new root: ec-p256, ec-p384, rsa-2048 or rsa-4096.
    #[arg(long, default_value = "ec-p256")]
    pub key_type: KeyType,
    /// At least this long between prepare and activate (the server's rotation.settle applies
    /// too).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub settle: std::time::Duration,
    /// After activation, how long to let the old authority's certificates be renewed as usual
    /// before tainting it (agents then rotate at once).
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    pub drain: std::time::Duration,
    /// Give up a wait after this long: exit non-zero, leaving the rotation where it is.
    #[arg(long, default_value = "48h", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// How often to ask the server.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll: std::time::Duration,
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
    /// Issued to a node agent (ztunnel) on behalf of a pod: the agent's SPIFFE id, or `*`
    /// for any agent.
    #[arg(long)]
    pub impersonated_by: Option<String>,
    /// The node the requester runs on.
    #[arg(long)]
    pub requester_node: Option<String>,
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
        #[arg(long, default_value = "unspecified", value_parser = revocation_reason)]
        reason: RevocationReason,
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

/// A dev server's token file that is there but could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct DevDefaultsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

// === impl AdminArgs ===

impl AdminArgs {
    /// Beside a dev server (`<dir>/meshca-dev` exists), what the caller left unset by flag
    /// and environment is taken from it: its admin token (unless a token or a client
    /// certificate was given) and its root, so the README's first `meshca admin` command
    /// works as it stands. Returns the line that says so, naming the files, for stderr.
    pub fn apply_dev_defaults(&mut self, dir: &Path) -> Result<Option<String>, DevDefaultsError> {
        let dev = dir.join(DEV_DIR);
        if !dev.is_dir() {
            return Ok(None);
        }
        let mut used = Vec::new();
        let token_file = dev.join("dev").join("admin-token");
        if self.token.is_none() && self.identity.is_none() && token_file.is_file() {
            let token = std::fs::read(&token_file).map_err(|source| DevDefaultsError {
                path: token_file.clone(),
                source,
            })?;
            let token = String::from_utf8_lossy(&token).trim().to_string();
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

// === impl CertFilters ===

impl CertFilters {
    pub(super) fn query(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("spiffe_id", self.spiffe_id.clone()),
            ("namespace", self.namespace.clone()),
            ("service_account", self.service_account.clone()),
            ("authority", self.authority.clone()),
            ("requester", self.requester.clone()),
            ("impersonated_by", self.impersonated_by.clone()),
            ("requester_node", self.requester_node.clone()),
            ("issued_after", self.issued_after.clone()),
            ("issued_before", self.issued_before.clone()),
            ("expires_after", self.expires_after.clone()),
            ("expires_before", self.expires_before.clone()),
            ("status", self.status.clone()),
        ]
    }
}

/// A revocation reason by its RFC 5280 name, as the API takes it.
fn revocation_reason(name: &str) -> Result<RevocationReason, String> {
    RevocationReason::parse(name)
        .ok_or_else(|| format!("expected one of {}", RevocationReason::names().join(", ")))
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

    /// The request bodies are typed: an unknown key type or reason is refused before anything
    /// is sent, naming what is accepted.
    #[test]
    fn key_types_and_reasons_are_checked_before_sending() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            admin: AdminArgs,
        }
        let parse = |args: &[&str]| <Cli as clap::Parser>::try_parse_from(args);
        let cli = parse(&[
            "admin",
            "certs",
            "revoke",
            "0a",
            "--reason",
            "keyCompromise",
        ])
        .unwrap();
        match cli.admin.command {
            AdminCommand::Certs(CertCommand::Revoke { reason, .. }) => {
                assert_eq!(reason, RevocationReason::KeyCompromise)
            }
            other => panic!("parsed as {other:?}"),
        }
        let error = parse(&["admin", "certs", "revoke", "0a", "--reason", "bored"]).unwrap_err();
        assert!(error.to_string().contains("keyCompromise"), "{error}");
        let error = parse(&["admin", "authorities", "prepare", "--key-type", "dsa"]).unwrap_err();
        assert!(error.to_string().contains("ec-p256"), "{error}");
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
}
