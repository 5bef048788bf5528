//! One call of the load and what it came to: answered (and whether the answer holds), shed by
//! an overloaded server, or failed under a name the report counts.

use meshca_pki::x509::ParsedCert;
use meshca_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::cfssl::CfsslConnection;
use super::setup::Prepared;

/// What one attempt came to.
pub(super) enum Attempt {
    Answered {
        valid: bool,
    },
    /// RESOURCE_EXHAUSTED: nothing was done; the caller may send it again.
    Shed,
    /// gRPC code name (or `http_<status>`, `transport`).
    Failed(String),
}

/// One request in flight at a time, to meshca over a shared HTTP/2 channel or to cfssl over
/// its own HTTP/1.1 connection.
pub(super) enum Caller {
    Grpc {
        client: IstioCertificateServiceClient<Channel>,
        cluster_id: Option<MetadataValue<Ascii>>,
        ttl: i64,
    },
    Cfssl(CfsslConnection),
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
                        valid: answer_is_valid(&response.into_inner().cert_chain, &item.spiffe_id),
                    },
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => Attempt::Shed,
                    Err(status) => Attempt::Failed(code_name(status.code())),
                }
            }
            Caller::Cfssl(connection) => match connection.sign(&item.request.csr_pem).await {
                Ok(valid) => Attempt::Answered { valid },
                Err(failure) => Attempt::Failed(failure),
            },
        }
    }
}

/// Whether an answer is a chain whose leaf names `spiffe_id`.
fn answer_is_valid(chain: &[String], spiffe_id: &str) -> bool {
    let Some(leaf) = chain.first().and_then(|p| pem::parse(p).ok()) else {
        return false;
    };
    let Ok(cert) = ParsedCert::from_der(leaf.contents()) else {
        return false;
    };
    let uris = cert.uri_sans();
    chain.len() >= 2 && uris == [spiffe_id]
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

    #[test]
    fn answers_must_name_the_identity() {
        assert!(!answer_is_valid(&[], "spiffe://td/ns/a/sa/b"));
        assert!(!answer_is_valid(
            &["not pem".into(), "x".into()],
            "spiffe://td/ns/a/sa/b"
        ));
    }
}
