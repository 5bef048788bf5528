//! One call of the load and what it came to: answered (and whether the answer holds), shed by
//! an overloaded server, or failed under a name the report counts.

use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::answer::chain_names;
use super::http1::{JsonConnection, PeerFailure};
use super::setup::Prepared;
use super::{cfssl, stepca};

/// What one attempt came to.
pub(super) enum Attempt {
    Answered {
        valid: bool,
    },
    /// RESOURCE_EXHAUSTED: nothing was done; the caller may send it again.
    Shed,
    /// The run's one-time tokens are used up (`--step-ca-tokens`): nothing was sent, and
    /// this caller stops rather than spin.
    OutOfTokens,
    /// gRPC code name (or `http_<status>`, `transport`).
    Failed(String),
}

/// One request in flight at a time, to meshca over a shared HTTP/2 channel or to a peer CA
/// over its own HTTP/1.1 connection.
pub(super) enum Caller {
    Grpc {
        client: IstioCertificateServiceClient<Channel>,
        cluster_id: Option<MetadataValue<Ascii>>,
        ttl: i64,
    },
    Peer {
        ca: PeerCa,
        connection: JsonConnection,
    },
}

/// Which peer CA's API a `--cfssl` or `--step-ca` run speaks.
#[derive(Clone, Copy, Debug)]
pub(super) enum PeerCa {
    Cfssl,
    StepCa,
}

// === impl Caller ===

impl Caller {
    pub(super) async fn call(&mut self, item: &Prepared) -> Attempt {
        match self {
            Caller::Grpc {
                client,
                cluster_id,
                ttl,
            } => {
                let request = item.grpc_request(*ttl, cluster_id.as_ref());
                match client.create_certificate(request).await {
                    Ok(response) => Attempt::Answered {
                        valid: chain_names(&response.into_inner().cert_chain, &item.spiffe_id),
                    },
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => Attempt::Shed,
                    Err(status) => Attempt::Failed(code_name(status.code())),
                }
            }
            Caller::Peer { ca, connection } => peer_attempt(match ca {
                PeerCa::Cfssl => cfssl::sign(connection, &item.request.csr_pem).await,
                PeerCa::StepCa => {
                    let (csr, tokens) = (&item.request.csr_pem, &item.one_time_tokens);
                    stepca::sign(connection, csr, tokens, &item.spiffe_id).await
                }
            }),
        }
    }
}

/// A peer's answer (valid or not) or what failed; peers do not shed.
fn peer_attempt(outcome: Result<bool, PeerFailure>) -> Attempt {
    match outcome {
        Ok(valid) => Attempt::Answered { valid },
        Err(PeerFailure::OutOfTokens) => Attempt::OutOfTokens,
        Err(PeerFailure::Failed(failure)) => Attempt::Failed(failure),
    }
}

/// `InvalidArgument` → `invalid_argument`, as gRPC spells codes.
pub(super) fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_spelling() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "invalid_argument");
        assert_eq!(code_name(tonic::Code::Unavailable), "unavailable");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "resource_exhausted"
        );
    }
}
