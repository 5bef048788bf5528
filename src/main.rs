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
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MESHCA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The flags of the subcommands that read the config file (`server`, `ca`, `agent`, `config`);
/// each overrides the config key named in its help. `admin` and `bench` are clients of a
/// running server and take none of them.
#[derive(Debug, Args)]
struct ConfigFlags {
    /// TOML config file.
    #[arg(long, env = "MESHCA_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `trust_domain`.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `store.url`.
    #[arg(long)]
    store_url: Option<String>,
    /// Overrides `ca.cacerts_dir`.
    #[arg(long)]
    cacerts_dir: Option<PathBuf>,
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
    Ca(ConfigFlags),
    /// Run the node agent: keep a workload certificate fresh and serve it over the SPIFFE
    /// Workload API (and to `agent.output_dir`).
    Agent(AgentArgs),
    /// Print the effective configuration and validate the CA material it names.
    Config(ConfigFlags),
    /// Administer a running server through its REST API: authorities and root rotation,
    /// the certificate inventory, revocation, the CRL and the audit log.
    Admin(Box<meshca_tools::admin::AdminArgs>),
    /// Load-test a running RA with CreateCertificate calls, as many istio-agents would.
    Bench(Box<meshca_tools::bench::BenchArgs>),
    /// Ask a node agent's SPIFFE Workload API what it serves this process (`fetch`), as
    /// `spire-agent api fetch` does.
    Workload(meshca_tools::workload::WorkloadArgs),
}

#[derive(Debug, Args)]
struct AgentArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Development mode: talk to `meshca server --dev` on 127.0.0.1:15012 with its root and
    /// token from ./meshca-dev, as default/default; sockets under ./meshca-dev/agent.
    #[arg(long)]
    dev: bool,
}

#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Development mode: state in ./meshca-dev, listeners on 127.0.0.1, a self-signed CA (unless
    /// ca.cacerts_dir is set) and a local JWT issuer with a ready-made service-account token.
    #[arg(long)]
    dev: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshca: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (flags, dev) = match cli.command {
        Command::Admin(args) => return admin(*args),
        Command::Bench(args) => return bench(&args),
        Command::Workload(args) => return workload(&args),
        Command::Server(ref args) => (&args.config, args.dev),
        Command::Agent(ref args) => (&args.config, args.dev),
        Command::Ca(ref flags) | Command::Config(ref flags) => (flags, false),
    };
    let loaded = load_config(flags, dev)?;
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
        Command::Ca(_) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(ca::run(config))
        }
        Command::Admin(_) | Command::Bench(_) | Command::Workload(_) => Ok(()),
        Command::Config(_) => {
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

/// `meshca admin`: a client of a running server, with no configuration of its own; beside a
/// dev server it finds the dev server's token and root by itself.
fn admin(mut args: meshca_tools::admin::AdminArgs) -> anyhow::Result<()> {
    if let Some(note) = args.apply_dev_defaults(std::path::Path::new("."))? {
        eprintln!("meshca admin: {note}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(meshca_tools::admin::run(&args, &mut stdout))?;
    Ok(())
}

fn workload(args: &meshca_tools::workload::WorkloadArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("{}", runtime.block_on(meshca_tools::workload::run(args))?);
    Ok(())
}

fn bench(args: &meshca_tools::bench::BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(dir) = &args.write_credential {
        let id = runtime.block_on(meshca_tools::bench::write_credential(args, dir))?;
        println!("{id}: {}", dir.display());
        return Ok(());
    }
    let report = runtime.block_on(meshca_tools::bench::run(args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn load_config(flags: &ConfigFlags, dev: bool) -> Result<config::Loaded, config::ConfigError> {
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
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;

    /// The options that configure a server (`ConfigFlags`).
    const SERVER_OPTIONS: [&str; 5] = [
        "--config",
        "--trust-domain",
        "--data-dir",
        "--store-url",
        "--cacerts-dir",
    ];

    /// Every subcommand of `meshca admin`, each as its argument path, with the built command.
    fn admin_commands() -> Vec<(Vec<String>, clap::Command)> {
        fn walk(
            command: &clap::Command,
            path: Vec<String>,
            out: &mut Vec<(Vec<String>, clap::Command)>,
        ) {
            out.push((path.clone(), command.clone()));
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let mut path = path.clone();
                path.push(sub.get_name().to_string());
                walk(sub, path, out);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut out = Vec::new();
        walk(
            cli.find_subcommand("admin").unwrap(),
            vec!["admin".into()],
            &mut out,
        );
        out
    }

    #[test]
    fn admin_commands_take_no_server_options() {
        let commands = admin_commands();
        assert!(commands.len() > 15, "{}", commands.len());
        for (path, _) in &commands {
            let args = ["meshca"]
                .into_iter()
                .chain(path.iter().map(String::as_str));
            let help = Cli::command()
                .try_get_matches_from(args.chain(["--help"]))
                .unwrap_err();
            assert_eq!(help.kind(), ErrorKind::DisplayHelp, "{path:?}");
            let help = help.to_string();
            for option in SERVER_OPTIONS {
                assert!(
                    !help.contains(option),
                    "meshca {path:?} --help lists {option}:\n{help}"
                );
            }
        }
        let refused =
            Cli::try_parse_from(["meshca", "admin", "--store-url", "x", "crl"]).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::UnknownArgument);
        let refused =
            Cli::try_parse_from(["meshca", "admin", "crl", "--data-dir", "x"]).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::UnknownArgument);

        // The commands that read the config still take them, after the subcommand as always.
        for command in ["server", "ca", "agent", "config"] {
            let mut args = vec!["meshca", command];
            for option in SERVER_OPTIONS {
                args.extend([option, "x"]);
            }
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{command}: {e}"));
        }
    }

    #[test]
    fn every_admin_option_has_a_help_line() {
        for (path, command) in admin_commands() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                assert!(
                    arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                    "meshca {path:?}: {id} has no help line"
                );
            }
        }
        let prepare = admin_commands()
            .into_iter()
            .find(|(path, _)| path.ends_with(&["authorities".into(), "prepare".into()]))
            .unwrap()
            .1;
        let options: Vec<&str> = prepare
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        for id in ["key_type", "ca_cert", "ca_key", "cert_chain", "root_cert"] {
            assert!(options.contains(&id), "{options:?}");
        }
    }

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
