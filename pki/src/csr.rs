//! Certificate signing requests: parsed, proof-of-possession checked, key type policed. Only the
//! public key (and, for the RA's cross-check, the requested URI SANs) ever leave this module.

use der::oid::AssociatedOid;
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::CertReq;

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

    /// URI SANs the CSR asks for. Never an identity source: the RA only checks they agree
    /// with the authenticated caller.
    pub fn requested_uri_sans(&self) -> &[String] {
        &self.uri_sans
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
