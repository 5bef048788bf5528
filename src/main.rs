//! The `meshca` binary: parses the command line and config, sets up logging, and hands over to
//! the crates.

mod config;

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
    /// Print the effective configuration and validate the CA material it names.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.common.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshca: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = load_config(&cli.common)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let config = loaded.config;
    match cli.command {
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

fn load_config(flags: &CommonFlags) -> Result<config::Loaded, config::ConfigError> {
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
    config::load(flags.config.as_deref(), std::env::vars(), &overrides)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
