//! The `meshca` binary: parses the command line and config, sets up logging, and hands over to
//! the crates.

mod ca;
mod config;
mod server;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "meshca", version, about = "A PKI for service meshes")]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes; each overrides the config key named in its help.
#[derive(Debug, Args)]
struct CommonFlags {
    /// TOML config file.
    #[arg(long, global = true, env = "MESHCA_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `trust_domain`.
    #[arg(long, global = true)]
    trust_domain: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Overrides `store.url`.
    #[arg(long, global = true)]
    store_url: Option<String>,
    /// Overrides `ca.cacerts_dir`.
    #[arg(long, global = true)]
    cacerts_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MESHCA_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the RA (Istio's CreateCertificate on gRPC/TLS) with the CA in-process, or keyless
    /// in front of `meshca ca` when `ca.remote_addr` is set.
    Server(ServerArgs),
    /// Run the standalone signing service keyless RAs call (mTLS, `ca.allowed_ras`).
    Ca,
    /// Run the node agent: keep a workload certificate fresh and serve it over the SPIFFE
    /// Workload API (and to `agent.output_dir`).
    Agent(AgentArgs),
    /// Print the effective configuration and validate the CA material it names.
    Config,
    /// Administer a running server through its REST API: authorities and root rotation,
    /// the certificate inventory, revocation, the CRL and the audit log.
    Admin(Box<meshca_ra::admin_client::AdminArgs>),
    /// Load-test a running RA with CreateCertificate calls, as many istio-agents would.
    Bench(Box<meshca_agent::loadgen::BenchArgs>),
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Development mode: talk to `meshca server --dev` on 127.0.0.1:15012 with its root and
    /// token from ./meshca-dev, as default/default; sockets under ./meshca-dev/agent.
    #[arg(long)]
    dev: bool,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Development mode: state in ./meshca-dev, listeners on 127.0.0.1, a self-signed CA (unless
    /// ca.cacerts_dir is set) and a local JWT issuer with a ready-made service-account token.
    #[arg(long)]
    dev: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.common.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshca: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dev = match &cli.command {
        Command::Server(args) => args.dev,
        Command::Agent(args) => args.dev,
        Command::Ca | Command::Config | Command::Admin(_) | Command::Bench(_) => false,
    };
    if let Command::Bench(args) = &cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        if let Some(dir) = &args.write_credential {
            let id = runtime.block_on(meshca_agent::loadgen::write_credential(args, dir))?;
            println!("{id}: {}", dir.display());
            return Ok(());
        }
        let report = runtime.block_on(meshca_agent::loadgen::run(args))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
        return Ok(());
    }
    if let Command::Admin(args) = &cli.command {
        // A client of a running server: no configuration of its own.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut stdout = std::io::stdout().lock();
        runtime.block_on(meshca_ra::admin_client::run(args, &mut stdout))?;
        return Ok(());
    }
    let loaded = load_config(&cli.common, dev)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let config = loaded.config;
    match cli.command {
        Command::Server(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(server::run(config, args.dev))
        }
        Command::Agent(args) => {
            let settings = meshca_agent::run::AgentSettings::resolve(
                &config.trust_domain,
                &config.data_dir,
                &config.agent,
                args.dev,
            )?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(meshca_agent::run::run(settings, server::shutdown_signal()))?;
            Ok(())
        }
        Command::Ca => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(ca::run(config))
        }
        Command::Admin(_) | Command::Bench(_) => Ok(()),
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            match &config.ca.cacerts_dir {
                Some(dir) => {
                    let authority = meshca_ca::cacerts::load_dir(dir, SystemTime::now())?;
                    println!(
                        "# CA: plugged-in {} (authority {}, signing cert {:?}, {} root(s) in the bundle)",
                        dir.display(),
                        authority.id(),
                        authority.signing_cert().subject_string(),
                        authority.roots().len()
                    );
                }
                None => {
                    println!("# CA: self-signed root, kept in the store (generated on first start)")
                }
            }
            Ok(())
        }
    }
}

fn load_config(flags: &CommonFlags, dev: bool) -> Result<config::Loaded, config::ConfigError> {
    let mut overrides: Vec<(&str, Value)> = Vec::new();
    if let Some(td) = &flags.trust_domain {
        overrides.push(("trust_domain", Value::from(td.clone())));
    }
    if let Some(dir) = &flags.data_dir {
        overrides.push(("data_dir", Value::from(dir.display().to_string())));
    }
    if let Some(url) = &flags.store_url {
        overrides.push(("store.url", Value::from(url.clone())));
    }
    if let Some(dir) = &flags.cacerts_dir {
        overrides.push(("ca.cacerts_dir", Value::from(dir.display().to_string())));
    }
    config::load(flags.config.as_deref(), dev, std::env::vars(), &overrides)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: a log collector reading a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `e` and its causes on one line, leaving out a cause whose text the message before it
/// already carries (many of our errors spell their source out in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("listening on 127.0.0.1:15012: {0}")]
        struct Listen(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Listen(io)).context("starting the server");
        assert_eq!(
            error_chain(&e),
            "starting the server: listening on 127.0.0.1:15012: Address already in use"
        );
        let plain = anyhow::anyhow!("no such file").context("reading ca-key.pem");
        assert_eq!(error_chain(&plain), "reading ca-key.pem: no such file");
    }
}
