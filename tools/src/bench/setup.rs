//! What `meshca bench` does before the clock starts: keys, CSRs and tokens for every request
//! (client crypto is not what is being measured), and the TLS channels to the RA.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use meshca_agent::credential::{KeyAndCsr, KeyType};
use meshca_pki::time::unix_seconds;
use meshca_pki::x509::ParsedCert;
use meshca_proto::istio::v1::auth::IstioCertificateRequest;
use meshca_ra::dev::{ServiceAccountToken, TokenSigner};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::args::BenchArgs;
use super::error::BenchError;
use super::stepca::{OneTimeTokens, Provisioner};

/// How long a `--jwt-key` token is valid: longer than any run.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// One prepared request: key and CSR, token (or step-ca's one-time tokens) and the identity
/// the answer must name.
pub(super) struct Prepared {
    pub(super) request: KeyAndCsr,
    authorization: Option<String>,
    pub(super) one_time_tokens: OneTimeTokens,
    pub(super) spiffe_id: String,
}

// === impl Prepared ===

impl Prepared {
    /// CreateCertificate as istio-agent sends it: the CSR, the token as `authorization`, the
    /// cluster as `clusterid`.
    pub(super) fn grpc_request(
        &self,
        ttl_secs: i64,
        cluster_id: Option<&MetadataValue<Ascii>>,
    ) -> tonic::Request<IstioCertificateRequest> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: self.request.csr_pem.clone(),
            validity_duration: ttl_secs,
            metadata: None,
        });
        if let Some(value) = self.authorization.as_ref().and_then(|a| a.parse().ok()) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(value) = cluster_id {
            request.metadata_mut().insert("clusterid", value.clone());
        }
        request
    }
}

pub(super) fn read(path: &PathBuf) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.clone(),
        source,
    })
}

fn key_type(name: &str) -> Result<KeyType, BenchError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| BenchError::Setup(format!("unknown key type {name:?}")))
}

pub(super) fn prepare(args: &BenchArgs) -> Result<Vec<Prepared>, BenchError> {
    let key_type = key_type(&args.key_type)?;
    if let Some(path) = &args.client_cert {
        let pem_text = read(path)?;
        let leaf = pem::parse(&pem_text)
            .ok()
            .and_then(|p| ParsedCert::from_der(p.contents()).ok())
            .ok_or_else(|| BenchError::Setup(format!("{}: no certificate", path.display())))?;
        let spiffe_id = leaf
            .uri_sans()
            .into_iter()
            .find(|u| u.starts_with("spiffe://"))
            .ok_or_else(|| BenchError::Setup(format!("{}: no SPIFFE id", path.display())))?;
        return (0..args.keys_per_identity.max(1))
            .map(|_| {
                let request = KeyAndCsr::generate(key_type, &spiffe_id)
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                Ok(Prepared {
                    request,
                    authorization: None,
                    one_time_tokens: OneTimeTokens::default(),
                    spiffe_id: spiffe_id.clone(),
                })
            })
            .collect();
    }
    let identities: Vec<(String, String)> = if args.jwt_key.is_some() {
        (0..args.identities.max(1))
            .map(|i| (format!("ns-{i}"), format!("sa-{i}")))
            .collect()
    } else {
        vec![(args.namespace.clone(), args.service_account.clone())]
    };
    let fixed_token = args
        .token_file
        .as_ref()
        .map(read)
        .transpose()?
        .map(|t| t.trim().to_string());
    let signer = match &args.jwt_key {
        Some(path) => Some(
            TokenSigner::from_pem(&read(path)?, args.jwt_kid.clone())
                .map_err(|e| BenchError::Setup(format!("--jwt-key: {e}")))?,
        ),
        None => None,
    };
    let keys_per_identity = args.keys_per_identity.max(1);
    let step_ca_run = format!("{:x}", unix_seconds(SystemTime::now()));
    let tokens_per_request = args
        .step_ca_tokens
        .div_ceil(identities.len() * keys_per_identity);
    // With `--step-ca`, the JWK provisioner whose one-time tokens each request carries.
    let provisioner = match (&args.step_ca, &signer) {
        (Some(_), Some(signer)) => Some(Provisioner {
            signer,
            name: args.jwt_issuer.as_deref().unwrap_or_default(),
            sign_url: &args.jwt_audience,
        }),
        _ => None,
    };
    let mut prepared = Vec::new();
    for (namespace, service_account) in identities {
        let spiffe_id = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            args.trust_domain
        );
        let token = match (&fixed_token, &signer) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(_)) if provisioner.is_some() => None,
            (None, Some(signer)) => Some(
                signer
                    .mint(&ServiceAccountToken {
                        issuer: args.jwt_issuer.as_deref().unwrap_or_default(),
                        audience: &args.jwt_audience,
                        namespace: &namespace,
                        service_account: &service_account,
                        lifetime: TOKEN_LIFETIME,
                        kubernetes_claim: false,
                        bound_to: None,
                    })
                    .map_err(|e| BenchError::Setup(e.to_string()))?,
            ),
            (None, None) => None,
        };
        for _ in 0..keys_per_identity {
            let request = KeyAndCsr::generate(key_type, &spiffe_id)
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            let one_time_tokens = match &provisioner {
                Some(provisioner) => {
                    let run = format!("{step_ca_run}-{}", prepared.len());
                    OneTimeTokens::mint(provisioner, &spiffe_id, &run, tokens_per_request)?
                }
                None => OneTimeTokens::default(),
            };
            prepared.push(Prepared {
                request,
                authorization: token.as_ref().map(|t| format!("Bearer {t}")),
                one_time_tokens,
                spiffe_id: spiffe_id.clone(),
            });
        }
    }
    Ok(prepared)
}

pub(super) async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, BenchError> {
    let roots = read(
        args.ca_cert
            .as_ref()
            .ok_or_else(|| BenchError::Setup("--ca-cert is needed to load meshca".into()))?,
    )?;
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
        _ => None,
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&roots))
            .domain_name(args.server_name.clone());
        if let Some(identity) = &identity {
            tls = tls.identity(identity.clone());
        }
        let channel = Endpoint::from_shared(format!("https://{}", args.addr))
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .connect()
            .await
            .map_err(|e| BenchError::Setup(format!("connecting to {}: {e}", args.addr)))?;
        channels.push(channel);
    }
    Ok(channels)
}
