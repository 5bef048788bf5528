//! Certificate signing requests: parsed, proof-of-possession checked, key type policed, and
//! checked against the caller's identity. Only the public key and the requested URI SANs ever
//! leave this module; the identity always comes from authentication, never from the CSR.

use der::asn1::{AnyRef, BitStringRef, Ia5StringRef, ObjectIdentifier, OctetStringRef};
use der::oid::AssociatedOid;
use der::referenced::RefToOwned;
use der::{Decode, Encode, Header, Reader, Sequence, SliceReader, Tag, Tagged};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::Name;
use x509_cert::request::Version;

use crate::identity::SpiffeId;
use crate::keys::{self, PublicKeyKind, VerifyError};
use crate::pem_block;
use crate::x509::{first_element_range, URI_TAG};

/// Istio's CSRs are under 2 KiB; 64 KiB leaves room for RSA-8192 and still bounds parsing work.
pub const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

/// PKCS#9 extensionRequest attribute.
const OID_EXTENSION_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

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
        let block = pem_block::first(pem_text).map_err(|e| CsrError::NotPem(e.to_string()))?;
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::WrongPemLabel(block.label.to_string()));
        }
        Self::verify_owned(block.contents)
    }

    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_PEM_BYTES {
            return Err(CsrError::TooLarge(der.len()));
        }
        Self::verify_owned(der.to_vec())
    }

    /// Checks `der` and keeps it: a CSR decoded from PEM is moved in, not copied again.
    fn verify_owned(der: Vec<u8>) -> Result<Self, CsrError> {
        let request = CsrParts::decode(&der).map_err(|e| CsrError::Malformed(e.to_string()))?;
        let spki: SubjectPublicKeyInfoOwned = request.public_key.ref_to_owned();
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
            request.algorithm.oid,
            request.info,
            request.signature.raw_bytes(),
        )
        .map_err(CsrError::Signature)?;
        let uri_sans = request.uri_sans;
        Ok(Self {
            der,
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

/// What a CSR's checks read, borrowed from its DER (RFC 2986 §4): the signed
/// `CertificationRequestInfo` as received, its key, the signature, and the URI SANs its
/// extensionRequest asks for. Read in place: decoding it into `x509-cert`'s owned `CertReq`
/// and its extensions took ~30 allocations per issuance.
struct CsrParts<'a> {
    info: &'a [u8],
    public_key: SubjectPublicKeyInfoRef<'a>,
    algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
    uri_sans: Vec<String>,
}

/// An extension as `x509-cert` defines it, with its value borrowed.
#[derive(Sequence)]
struct ExtensionRef<'a> {
    extn_id: ObjectIdentifier,
    #[asn1(default = "Default::default")]
    critical: bool,
    extn_value: OctetStringRef<'a>,
}

impl<'a> CsrParts<'a> {
    fn decode(der: &'a [u8]) -> der::Result<Self> {
        let (start, end) = first_element_range(der)?;
        let mut reader = SliceReader::new(der)?;
        let parts = reader.sequence(|request| {
            let (public_key, uri_sans) = request.sequence(|info| {
                Version::decode(info)?;
                // Not used, but a CSR is refused unless it is well-formed as a whole.
                Name::decode(info)?;
                let public_key = SubjectPublicKeyInfoRef::decode(info)?;
                // attributes [0] IMPLICIT SET OF Attribute
                let attributes = Header::decode(info)?;
                attributes.tag.assert_eq(ATTRIBUTES_TAG)?;
                let uri_sans = info.read_nested(attributes.length, requested_uri_sans)?;
                Ok((public_key, uri_sans))
            })?;
            Ok(CsrParts {
                info: &der[start..end],
                public_key,
                algorithm: AlgorithmIdentifierRef::decode(request)?,
                signature: BitStringRef::decode(request)?,
                uri_sans,
            })
        })?;
        reader.finish(parts)
    }
}

/// `[0]` in a `CertificationRequestInfo`: its attributes.
const ATTRIBUTES_TAG: Tag = Tag::ContextSpecific {
    constructed: true,
    number: der::TagNumber::N0,
};

/// The URIs in the subjectAltName extensions of every extensionRequest attribute.
fn requested_uri_sans<'a, R: Reader<'a>>(attributes: &mut R) -> der::Result<Vec<String>> {
    let mut uris = Vec::new();
    while !attributes.is_finished() {
        attributes.sequence(|attribute| {
            let oid = ObjectIdentifier::decode(attribute)?;
            let values = Header::decode(attribute)?;
            values.tag.assert_eq(Tag::Set)?;
            attribute.read_nested(values.length, |values| {
                while !values.is_finished() {
                    let value = AnyRef::decode(values)?;
                    if oid == OID_EXTENSION_REQUEST {
                        value.sequence(|extensions| {
                            while !extensions.is_finished() {
                                let extension = ExtensionRef::decode(extensions)?;
                                if extension.extn_id == SubjectAltName::OID {
                                    uri_sans(extension.extn_value.as_bytes(), &mut uris)?;
                                }
                            }
                            Ok(())
                        })?;
                    }
                }
                Ok(())
            })
        })?;
    }
    Ok(uris)
}

/// Appends the URIs of the GeneralNames in `san` to `uris`; any other name must still parse.
fn uri_sans(san: &[u8], uris: &mut Vec<String>) -> der::Result<()> {
    let mut reader = SliceReader::new(san)?;
    reader.sequence(|names| {
        while !names.is_finished() {
            let name = AnyRef::decode(names)?;
            if name.tag() == URI_TAG {
                uris.push(Ia5StringRef::new(name.value())?.as_str().to_string());
            } else {
                GeneralName::from_der(&name.to_der()?)?;
            }
        }
        Ok(())
    })?;
    reader.finish(())
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

    /// A CSR with every kind of SAN `rcgen` writes, as DER.
    fn csr_der_with_names() -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        let uri = |u: &str| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u).unwrap());
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName(rcgen::string::Ia5String::try_from("web.default").unwrap()),
            uri(WEB),
            rcgen::SanType::IpAddress([10, 0, 0, 7].into()),
            rcgen::SanType::Rfc822Name(rcgen::string::Ia5String::try_from("a@b.c").unwrap()),
            uri("https://example.com/web"),
        ];
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    /// The URIs, in order, whatever other names sit beside them.
    #[test]
    fn only_uri_sans_are_requested_identities() {
        let csr = VerifiedCsr::from_der(&csr_der_with_names()).unwrap();
        assert_eq!(csr.requested_uri_sans(), [WEB, "https://example.com/web"]);
        assert_eq!(csr.key_kind(), PublicKeyKind::EcP256);
    }

    /// Read in place, a CSR is accepted exactly when `x509-cert` decodes it, with the same key,
    /// algorithm and URIs: every byte of a CSR with a subject and five SANs, changed three ways
    /// (the signature then fails, but decoding is what is compared), and the CSR cut short or
    /// with a byte after it.
    #[test]
    fn decoding_in_place_agrees_with_x509_cert() {
        use x509_cert::request::CertReq;
        let der = csr_der_with_names();
        // What the CSR checks read through `x509-cert` before.
        let x509_cert_uris = |req: &CertReq| -> Option<Vec<String>> {
            let mut uris = Vec::new();
            for attr in req.info.attributes.iter() {
                if attr.oid != OID_EXTENSION_REQUEST {
                    continue;
                }
                for value in attr.values.iter() {
                    let exts: Vec<x509_cert::ext::Extension> = value.decode_as().ok()?;
                    for ext in exts.iter().filter(|e| e.extn_id == SubjectAltName::OID) {
                        let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).ok()?;
                        uris.extend(san.0.iter().filter_map(|n| match n {
                            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
                            _ => None,
                        }));
                    }
                }
            }
            Some(uris)
        };
        let mut variants = vec![der[..der.len() - 1].to_vec(), [&der[..], &[0]].concat()];
        variants.extend(crate::test_support::every_byte_changed(
            &der,
            &[0x01, 0x80, 0xff],
        ));
        let mut accepted = 0;
        for variant in std::iter::once(der.clone()).chain(variants) {
            let ours = CsrParts::decode(&variant);
            let theirs = CertReq::from_der(&variant)
                .ok()
                .and_then(|req| x509_cert_uris(&req).map(|uris| (req, uris)));
            match (ours, theirs) {
                (Ok(ours), Some((req, uris))) => {
                    accepted += 1;
                    assert_eq!(ours.public_key.ref_to_owned(), req.info.public_key);
                    assert_eq!(ours.algorithm.oid, req.algorithm.oid);
                    assert_eq!(ours.signature.raw_bytes(), req.signature.raw_bytes());
                    assert_eq!(ours.uri_sans, uris);
                }
                (Err(_), None) => {}
                (ours, theirs) => panic!(
                    "disagree on {}: ours {:?}, x509-cert {:?}",
                    hex::encode(&variant),
                    ours.map(|p| p.uri_sans),
                    theirs.map(|(_, uris)| uris)
                ),
            }
        }
        assert!(accepted > 1, "the unchanged CSR and some variants decode");
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
