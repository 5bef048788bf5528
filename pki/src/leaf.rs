//! Workload certificates written straight into DER. Every issuance signs one; built through
//! `x509-cert`'s structures it took an allocation per extension value and per octet string,
//! a clone of the issuer's name, nested length computations at every level, and a second
//! encoding of the whole TBS inside the certificate (~25 allocations per certificate, and
//! `der` was the largest item of the issuance profile after cryptography, kernel and malloc).
//!
//! What an authority's certificates share (its name and signature algorithm, the leading
//! extensions, its AKI) is encoded once, by the same profile functions the generic template
//! uses ([`profile::leading_extensions`], [`profile::authority_key_id_extension`]); a
//! certificate is those bytes with its serial, validity, key, SKI and SAN written around them
//! into one buffer of the right size. Tests compare the result byte for byte with
//! [`profile::workload_template`] signed by [`x509::sign_certificate`].

use std::time::SystemTime;

use der::asn1::Ia5StringRef;
use der::oid::db::rfc5280::{ID_CE_SUBJECT_ALT_NAME, ID_CE_SUBJECT_KEY_IDENTIFIER};
use der::oid::ObjectIdentifier;
use der::{Encode, Tag};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::keys;
use crate::profile;
use crate::x509::{self, push_header, tlv_len, URI_TAG};

/// `version [0] EXPLICIT Version` with v3 (2).
const VERSION_3: [u8; 5] = [0xa0, 0x03, 0x02, 0x01, 0x02];
/// The empty subject of every end-entity certificate (an empty RDNSequence).
const EMPTY_NAME: [u8; 2] = [0x30, 0x00];
/// `critical BOOLEAN TRUE`.
const CRITICAL: [u8; 3] = [0x01, 0x01, 0xff];
/// `extensions [3] EXPLICIT`.
const EXTENSIONS_TAG: Tag = Tag::ContextSpecific {
    constructed: true,
    number: der::TagNumber::N3,
};

/// What every workload certificate an authority signs has in common, encoded once.
#[derive(Clone, Debug)]
pub struct WorkloadCertWriter {
    /// The TBS's `signature` and `issuer`, which follow the serial.
    signature_and_issuer: Vec<u8>,
    /// The certificate's `signatureAlgorithm`, after the TBS.
    signature_algorithm: Vec<u8>,
    /// basicConstraints, keyUsage and extendedKeyUsage for a key that only signs.
    leading_extensions: Vec<u8>,
    /// The same with keyEncipherment, for an RSA key.
    leading_extensions_rsa: Vec<u8>,
    /// The authorityKeyIdentifier extension.
    authority_key_id: Vec<u8>,
}

impl WorkloadCertWriter {
    /// For the authority named `issuer` whose key identifier is `issuer_key_id` and whose key
    /// signs with `signature_algorithm`.
    pub fn new(
        issuer: &Name,
        signature_algorithm: &AlgorithmIdentifierOwned,
        issuer_key_id: &[u8],
    ) -> Result<Self, der::Error> {
        let encode_all = |extensions: [x509_cert::ext::Extension; 3]| {
            let mut der = Vec::new();
            for extension in &extensions {
                extension.encode_to_vec(&mut der)?;
            }
            Ok::<_, der::Error>(der)
        };
        let signature_algorithm = signature_algorithm.to_der()?;
        let mut signature_and_issuer = signature_algorithm.clone();
        issuer.encode_to_vec(&mut signature_and_issuer)?;
        Ok(Self {
            signature_and_issuer,
            signature_algorithm,
            leading_extensions: encode_all(profile::leading_extensions(false)?)?,
            leading_extensions_rsa: encode_all(profile::leading_extensions(true)?)?,
            authority_key_id: profile::authority_key_id_extension(issuer_key_id)?.to_der()?,
        })
    }

    /// The TBS of a workload certificate for `spki` with `uri` (the SPIFFE id) as its only SAN.
    pub fn tbs(
        &self,
        spki: &SubjectPublicKeyInfoOwned,
        uri: &str,
        serial: &SerialNumber,
        validity: (SystemTime, SystemTime),
    ) -> Result<Vec<u8>, der::Error> {
        // An IA5String, as `x509::uri_san` requires.
        Ia5StringRef::new(uri)?;
        let validity = Validity {
            not_before: x509::x509_time(validity.0)?,
            not_after: x509::x509_time(validity.1)?,
        };
        let leading = if spki.algorithm.oid == keys::OID_RSA_ENCRYPTION {
            &self.leading_extensions_rsa
        } else {
            &self.leading_extensions
        };
        let key_id = keys::key_identifier(spki.subject_public_key.raw_bytes());

        // subjectKeyIdentifier: SEQUENCE { OID, OCTET STRING { OCTET STRING keyId } }
        let ski_value = tlv_len(key_id.len());
        let ski = oid_len(&ID_CE_SUBJECT_KEY_IDENTIFIER) + tlv_len(ski_value);
        // subjectAltName: SEQUENCE { OID, TRUE, OCTET STRING { SEQUENCE { [6] uri } } }
        let general_names = tlv_len(uri.len());
        let san_value = tlv_len(general_names);
        let san = oid_len(&ID_CE_SUBJECT_ALT_NAME) + CRITICAL.len() + tlv_len(san_value);
        let extensions = leading.len() + tlv_len(ski) + self.authority_key_id.len() + tlv_len(san);

        let serial_len = usize::try_from(serial.encoded_len()?)?;
        let validity_len = usize::try_from(validity.encoded_len()?)?;
        let spki_len = usize::try_from(spki.encoded_len()?)?;
        let body = VERSION_3.len()
            + serial_len
            + self.signature_and_issuer.len()
            + validity_len
            + EMPTY_NAME.len()
            + spki_len
            + tlv_len(tlv_len(extensions));

        let mut tbs = Vec::with_capacity(tlv_len(body));
        push_header(&mut tbs, Tag::Sequence, body);
        tbs.extend_from_slice(&VERSION_3);
        serial.encode_to_vec(&mut tbs)?;
        tbs.extend_from_slice(&self.signature_and_issuer);
        validity.encode_to_vec(&mut tbs)?;
        tbs.extend_from_slice(&EMPTY_NAME);
        spki.encode_to_vec(&mut tbs)?;
        push_header(&mut tbs, EXTENSIONS_TAG, tlv_len(extensions));
        push_header(&mut tbs, Tag::Sequence, extensions);
        tbs.extend_from_slice(leading);

        push_header(&mut tbs, Tag::Sequence, ski);
        push_oid(&mut tbs, &ID_CE_SUBJECT_KEY_IDENTIFIER);
        push_header(&mut tbs, Tag::OctetString, ski_value);
        push_header(&mut tbs, Tag::OctetString, key_id.len());
        tbs.extend_from_slice(&key_id);

        tbs.extend_from_slice(&self.authority_key_id);

        push_header(&mut tbs, Tag::Sequence, san);
        push_oid(&mut tbs, &ID_CE_SUBJECT_ALT_NAME);
        tbs.extend_from_slice(&CRITICAL);
        push_header(&mut tbs, Tag::OctetString, san_value);
        push_header(&mut tbs, Tag::Sequence, general_names);
        push_header(&mut tbs, URI_TAG, uri.len());
        tbs.extend_from_slice(uri.as_bytes());

        debug_assert_eq!(tbs.len(), tlv_len(body));
        Ok(tbs)
    }

    /// The certificate: `tbs` (from [`Self::tbs`]) and the authority's `signature` of it.
    pub fn certificate(&self, tbs: &[u8], signature: &[u8]) -> Vec<u8> {
        x509::certificate_der(tbs, &self.signature_algorithm, signature)
    }
}

fn oid_len(oid: &ObjectIdentifier) -> usize {
    tlv_len(oid.as_bytes().len())
}

fn push_oid(out: &mut Vec<u8>, oid: &ObjectIdentifier) {
    push_header(out, Tag::ObjectIdentifier, oid.as_bytes().len());
    out.extend_from_slice(oid.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::authority::Authority;
    use crate::csr::VerifiedCsr;
    use crate::identity::{SpiffeId, TrustDomain};
    use crate::keys::KeyType;
    use crate::x509::{first_element_range, ParsedCert};

    fn csr(key: &rcgen::KeyPair) -> VerifiedCsr {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        VerifiedCsr::from_pem(&params.serialize_request(key).unwrap().pem().unwrap()).unwrap()
    }

    fn rsa_key() -> rcgen::KeyPair {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        rcgen::KeyPair::try_from(pair.as_der().unwrap().as_ref()).unwrap()
    }

    fn tbs_of(der: &[u8]) -> &[u8] {
        let (start, end) = first_element_range(der).unwrap();
        &der[start..end]
    }

    /// The written certificate is the generic template's, byte for byte, for EC and RSA
    /// authorities and keys, ids whose lengths cross every DER length form, and validities on
    /// both sides of 2050 (UTCTime, GeneralizedTime). It verifies under the authority's key.
    #[test]
    fn written_certificates_are_the_templates_bytes() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let csrs = [
            csr(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()),
            csr(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()),
            csr(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()),
            csr(&rsa_key()),
        ];
        let validities = [
            (at, at + Duration::from_secs(86_400)),
            (at, UNIX_EPOCH + Duration::from_secs(2_600_000_000)),
        ];
        for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let authority = Authority::generate_self_signed(&td, key_type, at).unwrap();
            let key = authority.key().unwrap();
            let writer = WorkloadCertWriter::new(
                authority.signing_cert().subject(),
                &key.signature_algorithm(),
                authority.key_id(),
            )
            .unwrap();
            for (csr, validity) in csrs.iter().zip(validities.iter().cycle()) {
                for sa_len in [1, 90, 100, 200, 230, 300] {
                    let id = SpiffeId::new(&format!(
                        "spiffe://cluster.local/ns/default/sa/{}",
                        "w".repeat(sa_len)
                    ))
                    .unwrap();
                    let serial = x509::new_serial();
                    let template = profile::workload_template(
                        csr,
                        &id,
                        serial.clone(),
                        *validity,
                        authority.key_id(),
                    )
                    .unwrap();
                    let expected = authority.sign(template).unwrap();

                    let tbs = writer
                        .tbs(csr.public_key(), id.as_str(), &serial, *validity)
                        .unwrap();
                    let written = writer.certificate(&tbs, &key.sign(&tbs));
                    let what = format!("{key_type:?} CA, {:?}, {sa_len}", csr.key_kind());
                    assert_eq!(tbs_of(&written), tbs_of(&expected), "{what}");
                    assert_eq!(tbs, tbs_of(&expected), "{what}");
                    let parsed = ParsedCert::from_der(&written).unwrap();
                    assert_eq!(parsed.der(), written, "{what}: re-encodes to itself");
                    assert!(parsed.is_signed_by(authority.signing_cert()).is_ok());
                }
            }
        }
    }

    /// A URI that is not IA5 (ASCII) cannot be written, as with the generic template.
    #[test]
    fn a_non_ascii_uri_is_an_error() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let authority =
            Authority::generate_self_signed(&td, KeyType::EcP256, SystemTime::now()).unwrap();
        let writer = WorkloadCertWriter::new(
            authority.signing_cert().subject(),
            &authority.key().unwrap().signature_algorithm(),
            authority.key_id(),
        )
        .unwrap();
        let csr = csr(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
        let now = SystemTime::now();
        let written = writer.tbs(
            csr.public_key(),
            "spiffe://cluster.local/ns/d/sa/ü",
            &x509::new_serial(),
            (now, now),
        );
        assert!(written.is_err());
        assert!(x509::uri_san("spiffe://cluster.local/ns/d/sa/ü").is_err());
    }
}
