//! Certificate signing requests: parsed, proof-of-possession checked, key type policed, and
//! checked against the caller's identity. Only the public key and the requested URI SANs ever
//! leave this module; the identity always comes from authentication, never from the CSR.

use der::oid::AssociatedOid;
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::CertReq;

use crate::identity::SpiffeId;
use crate::keys::{self, PublicKeyKind, VerifyError};
use crate::x509::first_element_range;

/// Istio's CSRs are under 2 KiB; 64 KiB leaves room for RSA-8192 and still bounds parsing work.
pub const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

/// PKCS#9 extensionRequest attribute.
const OID_EXTENSION_REQUEST: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// A CSR whose signature verified under its own key, with an allowed key.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    /// As received, so a keyless RA can forward it for the CA service to verify itself.
    der: Vec<u8>,
    spki: SubjectPublicKeyInfoOwned,
    key_kind: PublicKeyKind,
    uri_sans: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR is {0} bytes, more than the {MAX_CSR_PEM_BYTES} allowed")]
    TooLarge(usize),
    #[error("CSR is not PEM: {0}")]
    NotPem(String),
    #[error("PEM block is {0:?}, expected CERTIFICATE REQUEST")]
    WrongPemLabel(String),
    #[error("CSR does not parse: {0}")]
    Malformed(String),
    #[error("CSR signature: {0}")]
    Signature(VerifyError),
    #[error("CSR key not allowed: {0}")]
    KeyNotAllowed(String),
}

/// A CSR that asks for an identity the caller did not prove. The message is the caller's
/// (both the RA and the CA service send it as `INVALID_ARGUMENT`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("CSR requests identity {requested} but the caller is authenticated as {authenticated}")]
pub struct IdentityMismatch {
    /// The first URI SAN that is not the caller's identity.
    pub requested: String,
    pub authenticated: SpiffeId,
}

// === impl VerifiedCsr ===

impl VerifiedCsr {
    pub fn from_pem(pem_text: &str) -> Result<Self, CsrError> {
        if pem_text.len() > MAX_CSR_PEM_BYTES {
            return Err(CsrError::TooLarge(pem_text.len()));
        }
        let block = pem::parse(pem_text).map_err(|e| CsrError::NotPem(e.to_string()))?;
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::WrongPemLabel(block.tag().to_string()));
        }
        Self::from_der(block.contents())
    }

    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_PEM_BYTES {
            return Err(CsrError::TooLarge(der.len()));
        }
        let req = CertReq::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
        let (start, end) =
            first_element_range(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
        let spki = req.info.public_key.clone();
        let key_kind = keys::classify_public_key(&spki).map_err(CsrError::KeyNotAllowed)?;
        if let PublicKeyKind::Rsa { bits } = key_kind {
            if !(2048..=8192).contains(&bits) {
                return Err(CsrError::KeyNotAllowed(format!(
                    "RSA-{bits} (allowed: RSA 2048-8192, ECDSA P-256/P-384, Ed25519)"
                )));
            }
        }
        keys::verify_signature(
            &spki,
            &req.algorithm,
            &der[start..end],
            req.signature.raw_bytes(),
        )
        .map_err(CsrError::Signature)?;
        let uri_sans = requested_uri_sans(&req)?;
        Ok(Self {
            der: der.to_vec(),
            spki,
            key_kind,
            uri_sans,
        })
    }

    pub fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    /// The CSR exactly as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn key_kind(&self) -> PublicKeyKind {
        self.key_kind
    }

    /// URI SANs the CSR asks for. Never an identity source: [`Self::check_identity`] only
    /// checks they agree with the authenticated caller.
    pub fn requested_uri_sans(&self) -> &[String] {
        &self.uri_sans
    }

    /// Refuses a CSR that names any URI but `authenticated`, the identity the caller proved.
    /// Naming none is fine: the certificate's identity is written by the CA, not copied from
    /// here. The RA checks this, and the CA service checks it again for what an RA forwards.
    pub fn check_identity(&self, authenticated: &SpiffeId) -> Result<(), IdentityMismatch> {
        match self
            .uri_sans
            .iter()
            .find(|uri| *uri != authenticated.as_str())
        {
            Some(other) => Err(IdentityMismatch {
                requested: other.clone(),
                authenticated: authenticated.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn requested_uri_sans(req: &CertReq) -> Result<Vec<String>, CsrError> {
    let mut uris = Vec::new();
    for attr in req.info.attributes.iter() {
        if attr.oid != OID_EXTENSION_REQUEST {
            continue;
        }
        for value in attr.values.iter() {
            let exts: Vec<x509_cert::ext::Extension> = value
                .decode_as()
                .map_err(|e| CsrError::Malformed(format!("extensionRequest: {e}")))?;
            for ext in exts.iter().filter(|e| e.extn_id == SubjectAltName::OID) {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| CsrError::Malformed(format!("subjectAltName: {e}")))?;
                uris.extend(san.0.iter().filter_map(|n| match n {
                    GeneralName::UniformResourceIdentifier(u) => Some(u.as_str().to_string()),
                    _ => None,
                }));
            }
        }
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

    /// A CSR (signed, as a workload would send it) whose SAN lists `uris`.
    fn csr(uris: &[&str]) -> VerifiedCsr {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()))
            .collect();
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        VerifiedCsr::from_pem(&pem).unwrap()
    }

    #[test]
    fn a_csr_may_name_only_the_authenticated_identity() {
        let web = SpiffeId::new(WEB).unwrap();
        assert_eq!(csr(&[WEB]).check_identity(&web), Ok(()));
        assert_eq!(
            csr(&[]).check_identity(&web),
            Ok(()),
            "no SAN: the CA names it"
        );

        let other = "spiffe://cluster.local/ns/default/sa/admin";
        for uris in [vec![other], vec![WEB, other], vec![other, WEB]] {
            let refused = csr(&uris).check_identity(&web).unwrap_err();
            assert_eq!(refused.requested, other, "{uris:?}");
            assert_eq!(
                refused.to_string(),
                format!("CSR requests identity {other} but the caller is authenticated as {WEB}")
            );
        }
        // Not only other SPIFFE ids: any URI the caller did not prove.
        let refused = csr(&["https://example.com/web"]).check_identity(&web);
        assert_eq!(refused.unwrap_err().requested, "https://example.com/web");
        // Another trust domain with the same path is another identity.
        let foreign = "spiffe://other.example/ns/default/sa/web";
        assert!(csr(&[foreign]).check_identity(&web).is_err());
    }
}
