//! `meshca bench --cfssl`: the peer in the comparison. cfssl's `serve` gets the same CSRs as
//! meshca, `POST /api/v1/cfssl/sign` over plain HTTP/1.1, one keep-alive connection per request
//! in flight.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use meshca_pki::x509::ParsedCert;
use serde::Deserialize;

use super::setup::BenchError;

/// One HTTP/1.1 connection to cfssl.
pub(super) struct CfsslConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// cfssl's answer to a sign request: `{"success": true, "result": {"certificate": "<PEM>"}}`.
#[derive(Deserialize)]
struct SignAnswer {
    success: bool,
    result: Option<SignResult>,
}

#[derive(Deserialize)]
struct SignResult {
    certificate: Option<String>,
}

// === impl CfsslConnection ===

impl CfsslConnection {
    pub(super) async fn connect(addr: &str) -> Result<Self, BenchError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::Setup(format!("connecting to cfssl at {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| BenchError::Setup(format!("cfssl at {addr}: {e}")))?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// Has cfssl sign `csr_pem`: whether its answer holds a certificate, or what failed, as
    /// the report names it (`transport`, `http_<status>`, `invalid_request`).
    pub(super) async fn sign(&mut self, csr_pem: &str) -> Result<bool, String> {
        let body = serde_json::json!({ "certificate_request": csr_pem }).to_string();
        let request = hyper::Request::post("/api/v1/cfssl/sign")
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "invalid_request".to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|_| "transport".to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|_| "transport".to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "transport".to_string())?;
        if !status.is_success() {
            return Err(format!("http_{}", status.as_u16()));
        }
        Ok(answer_is_valid(&body.to_bytes()))
    }
}

/// Whether cfssl's answer succeeded with a certificate that parses (its SANs are cfssl's
/// business: it drops URI SANs).
fn answer_is_valid(body: &[u8]) -> bool {
    let Ok(answer) = serde_json::from_slice::<SignAnswer>(body) else {
        return false;
    };
    let pem_text = answer
        .result
        .and_then(|r| r.certificate)
        .unwrap_or_default();
    answer.success
        && pem::parse(pem_text)
            .ok()
            .is_some_and(|p| ParsedCert::from_der(p.contents()).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfssl_answers_must_carry_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = serde_json::json!({"success": true, "result": {"certificate": cert.pem()}});
        assert!(answer_is_valid(good.to_string().as_bytes()));
        let failed = serde_json::json!({"success": false, "result": {"certificate": cert.pem()}});
        assert!(!answer_is_valid(failed.to_string().as_bytes()));
        let garbage = serde_json::json!({"success": true, "result": {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}});
        assert!(!answer_is_valid(garbage.to_string().as_bytes()));
        assert!(!answer_is_valid(b"<html>"));
    }
}
