//! `meshca workload fetch`: a client of a node agent's SPIFFE Workload API socket, as
//! `spire-agent api fetch x509` is. It prints the X509-SVID the agent serves the calling
//! process, which is what attestation made of it: the quickest way for an operator on a node
//! to see which identity a user or binary gets, and why one gets none.

use std::path::PathBuf;
use std::time::Duration;

use meshca_agent::workload_api::{unix_channel, SECURITY_HEADER};
use meshca_pki::x509::ParsedCert;
use meshca_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshca_proto::workload::X509svidRequest;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct WorkloadArgs {
    #[command(subcommand)]
    pub command: WorkloadCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkloadCommand {
    /// Fetch this process's X509-SVID once and print its identity and validity.
    Fetch(FetchArgs),
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The Workload API socket: a path, or `unix://` + path as `SPIFFE_ENDPOINT_SOCKET` holds.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "/var/run/meshca/spiffe.sock"
    )]
    pub socket: String,
    /// Give up waiting for the first SVID after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What was served.
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("connecting to {socket}: {source}")]
    Connect {
        socket: String,
        source: tonic::transport::Error,
    },
    /// The agent's answer, e.g. PERMISSION_DENIED with the attestation failure.
    #[error("the Workload API answered {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("no X509-SVID within {0:?}")]
    Timeout(Duration),
    #[error("the Workload API ended the stream without an X509-SVID")]
    Ended,
    #[error("the served certificate does not parse: {0}")]
    Certificate(String),
}

// === impl FetchArgs ===

impl FetchArgs {
    fn socket_path(&self) -> PathBuf {
        PathBuf::from(self.socket.strip_prefix("unix://").unwrap_or(&self.socket))
    }
}

/// Fetches the first X509-SVID the agent serves this process.
pub async fn fetch(args: &FetchArgs) -> Result<Fetched, FetchError> {
    let first = async {
        let channel =
            unix_channel(args.socket_path())
                .await
                .map_err(|source| FetchError::Connect {
                    socket: args.socket.clone(),
                    source,
                })?;
        let mut request = tonic::Request::new(X509svidRequest {});
        request.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream = SpiffeWorkloadApiClient::new(channel)
            .fetch_x509svid(request)
            .await
            .map_err(FetchError::Status)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(FetchError::Status)?
            .ok_or(FetchError::Ended)
    };
    let response = tokio::time::timeout(args.timeout, first)
        .await
        .map_err(|_| FetchError::Timeout(args.timeout))??;
    let svid = response.svids.first().ok_or(FetchError::Ended)?;
    let leaf = ParsedCert::first_of_der(&svid.x509_svid)
        .map_err(|e| FetchError::Certificate(e.to_string()))?;
    Ok(Fetched {
        spiffe_id: svid.spiffe_id.clone(),
        serial: leaf.serial().to_hex(),
        not_after: humantime::format_rfc3339_seconds(leaf.not_after()).to_string(),
    })
}

/// `meshca workload …`: what it prints.
pub async fn run(args: &WorkloadArgs) -> Result<String, FetchError> {
    match &args.command {
        WorkloadCommand::Fetch(fetch_args) => {
            let fetched = fetch(fetch_args).await?;
            Ok(if fetch_args.json {
                serde_json::json!(fetched).to_string()
            } else {
                format!(
                    "{}  serial {}  not after {}",
                    fetched.spiffe_id, fetched.serial, fetched.not_after
                )
            })
        }
    }
}
