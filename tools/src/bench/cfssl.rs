//! `meshca bench --cfssl`: a peer in the comparison. cfssl's `serve` gets the same CSRs as
//! meshca, `POST /api/v1/cfssl/sign` over plain HTTP/1.1, one keep-alive connection per request
//! in flight.

use meshca_pki::x509::ParsedCert;
use serde::Deserialize;

use super::http1::{JsonConnection, PeerFailure};

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

/// Has cfssl sign `csr_pem`: whether its answer holds a certificate, or what failed.
pub(super) async fn sign(
    connection: &mut JsonConnection,
    csr_pem: &str,
) -> Result<bool, PeerFailure> {
    let body = serde_json::json!({ "certificate_request": csr_pem }).to_string();
    let answer = connection.post("/api/v1/cfssl/sign", body).await?;
    Ok(answer_is_valid(&answer))
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
