//! `meshca bench`'s command line: where the RA (or a peer CA) is, how callers authenticate, and the
//! shape of the load.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// The RA, host:port.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub addr: String,
    /// PEM roots that verify the RA's (or step-ca's) serving certificate.
    #[arg(long, required_unless_present = "cfssl")]
    pub ca_cert: Option<PathBuf>,
    /// Load a cfssl `serve` at this host:port instead (`POST /api/v1/cfssl/sign` over plain
    /// HTTP/1.1, one keep-alive connection per request in flight) with the same CSRs: the peer
    /// in the comparison. cfssl drops URI SANs, so answers are checked only to be a certificate.
    #[arg(long, conflicts_with_all = ["client_cert", "token_file", "jwt_key"])]
    pub cfssl: Option<String>,
    /// Load a smallstep step-ca at this host:port instead (`POST /1.0/sign` over HTTPS/1.1,
    /// verified with `--ca-cert` and `--server-name`, one keep-alive connection per request in
    /// flight): the peer that authenticates and records as meshca does. Every request carries
    /// its own one-time token from a JWK provisioner, minted before the clock starts with
    /// `--jwt-key` and `--jwt-kid`, `--jwt-issuer` as the provisioner's name and
    /// `--jwt-audience` as its sign URL (`https://<dns name>/1.0/sign`).
    #[arg(long, conflicts_with_all = ["cfssl", "client_cert", "token_file"], requires = "jwt_key")]
    pub step_ca: Option<String>,
    /// How many one-time tokens to mint for a `--step-ca` run (spread over the prepared
    /// requests): more than it will send, or it ends in `tokens_exhausted` errors.
    #[arg(long, default_value_t = 40_000)]
    pub step_ca_tokens: usize,
    /// TLS server name to expect.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// One service-account token for every request (all requests are then one identity,
    /// `--namespace`/`--service-account`).
    #[arg(long, conflicts_with = "jwt_key")]
    pub token_file: Option<PathBuf>,
    /// Mint a token per identity with this private key (PKCS#8 PEM, EC P-256 → ES256 or RSA →
    /// RS256); the server must trust its JWKS.
    #[arg(long, requires = "jwt_issuer")]
    pub jwt_key: Option<PathBuf>,
    /// The `kid` header of the minted tokens. A base64url kid may begin with `-`, so the value
    /// is taken as is rather than read as another flag.
    #[arg(long, allow_hyphen_values = true)]
    pub jwt_kid: Option<String>,
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    #[arg(long, default_value = "istio-ca")]
    pub jwt_audience: String,
    /// Renewal profile: authenticate every call with this workload certificate (PEM, leaf
    /// first) over mTLS instead of a token, as an agent renewing does; CSRs name its SPIFFE id.
    #[arg(long, requires = "client_key", conflicts_with_all = ["token_file", "jwt_key"])]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Distinct identities (`ns-<i>/sa-<i>`) with `--jwt-key`.
    #[arg(long, default_value_t = 16)]
    pub identities: usize,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// CSR key type: ec-p256, ec-p384, rsa-2048, rsa-4096.
    #[arg(long, default_value = "ec-p256")]
    pub key_type: String,
    /// Pre-generated keys (and CSRs) per identity, reused round-robin.
    #[arg(long, default_value_t = 4)]
    pub keys_per_identity: usize,
    /// TCP/TLS connections (HTTP/2 multiplexes the requests over them).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stop after this many requests…
    #[arg(long)]
    pub requests: Option<u64>,
    /// …or after this long (default 10 s when neither is given).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: start requests at this many per second in total, whatever the answers'
    /// pace. Latency then counts from each request's scheduled start, so a server that falls
    /// behind cannot hide its queue (no coordinated omission); `--concurrency` caps how many
    /// are in flight.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requested certificate lifetime, seconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub ttl_secs: i64,
    /// The server's PID, to report its CPU seconds per issuance.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How long one request keeps being resent while the server sheds it with
    /// RESOURCE_EXHAUSTED before it counts as failed. A deadline rather than a count: under a
    /// storm a call's turn depends on how long the queue is, not on how often it knocked.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub shed_retry_for: Duration,
    /// Instead of a load: get one certificate with these credentials (the first identity)
    /// and write `key.pem` (0600), `cert-chain.pem` and `root-cert.pem` into DIR, as
    /// istio-agent's `OUTPUT_CERTS` does; e.g. the workload certificate `--client-cert` needs.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cfssl", "step_ca"])]
    pub write_credential: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_beginning_with_a_hyphen_is_a_value_not_a_flag() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "bench",
            "--ca-cert",
            "root.pem",
            "--jwt-key",
            "key.pem",
            "--jwt-issuer",
            "https://issuer",
            "--jwt-kid",
            "-8Qx_Yz",
            "--requests",
            "10",
        ])
        .unwrap();
        assert_eq!(cli.bench.jwt_kid.as_deref(), Some("-8Qx_Yz"));
        assert_eq!(cli.bench.requests, Some(10));
    }
}
