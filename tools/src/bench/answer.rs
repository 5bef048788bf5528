//! What a good answer from any CA under load is: a chain whose leaf names the SPIFFE id asked
//! for (meshca's `cert_chain`, step-ca's `crt` + `ca`).

use meshca_pki::x509::ParsedCert;

/// Whether an answer is a chain whose leaf names `spiffe_id`.
pub(super) fn chain_names(chain: &[String], spiffe_id: &str) -> bool {
    let Some(leaf) = chain.first().and_then(|p| pem::parse(p).ok()) else {
        return false;
    };
    let Ok(cert) = ParsedCert::from_der(leaf.contents()) else {
        return false;
    };
    let uris = cert.uri_sans();
    chain.len() >= 2 && uris == [spiffe_id]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_must_name_the_identity() {
        assert!(!chain_names(&[], "spiffe://td/ns/a/sa/b"));
        assert!(!chain_names(
            &["not pem".into(), "x".into()],
            "spiffe://td/ns/a/sa/b"
        ));
    }
}
