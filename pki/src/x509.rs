//! Reading certificates (the facts path building and authentication need) and writing them
//! (a TBS we assemble field by field, signed by a [`SigningKey`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{GeneralizedTime, Ia5String, OctetString, UtcTime};
use der::{Decode, Encode, Header, Reader, SliceReader};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::identity::Serial;
use crate::keys::{self, SigningKey, VerifyError};

/// A certificate kept with its DER and the facts we look at often.
#[derive(Clone, Debug)]
pub struct ParsedCert {
    der: Vec<u8>,
    cert: Certificate,
    tbs_range: (usize, usize),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// The parts of basicConstraints we act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaConstraints {
    pub ca: bool,
    pub path_len: Option<u8>,
}

// === impl ParsedCert ===

impl ParsedCert {
    pub fn from_der(der: &[u8]) -> Result<Self, ParseError> {
        let cert = Certificate::from_der(der).map_err(|e| ParseError(e.to_string()))?;
        let tbs_range = first_element_range(der).map_err(|e| ParseError(e.to_string()))?;
        Ok(Self {
            der: der.to_vec(),
            cert,
            tbs_range,
        })
    }

    /// The first certificate of concatenated DER (the Workload API's `x509_svid`: leaf, then
    /// intermediates).
    pub fn first_of_der(der: &[u8]) -> Result<Self, ParseError> {
        let bad = |e: der::Error| ParseError(e.to_string());
        let mut reader = SliceReader::new(der).map_err(bad)?;
        let outer = Header::decode(&mut reader).map_err(bad)?;
        let header_len: usize = reader.position().try_into().map_err(bad)?;
        let body_len: usize = outer.length.try_into().map_err(bad)?;
        let end = header_len
            .checked_add(body_len)
            .filter(|end| *end <= der.len())
            .ok_or_else(|| ParseError("truncated certificate".into()))?;
        Self::from_der(&der[..end])
    }

    /// All `CERTIFICATE` blocks of a PEM file, in order. Other block types are an error: a key
    /// pasted into a chain file is a mistake worth naming.
    pub fn many_from_pem(text: &[u8]) -> Result<Vec<Self>, ParseError> {
        let blocks = pem::parse_many(text).map_err(|e| ParseError(format!("bad PEM: {e}")))?;
        blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                if block.tag() != "CERTIFICATE" {
                    return Err(ParseError(format!(
                        "PEM block {} is {:?}, expected CERTIFICATE",
                        i + 1,
                        block.tag()
                    )));
                }
                Self::from_der(block.contents())
                    .map_err(|e| ParseError(format!("certificate {} does not parse: {e}", i + 1)))
            })
            .collect()
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn cert(&self) -> &Certificate {
        &self.cert
    }

    pub fn to_pem(&self) -> String {
        certificate_pem(&self.der)
    }

    pub fn tbs(&self) -> &TbsCertificate {
        &self.cert.tbs_certificate
    }

    pub fn subject(&self) -> &Name {
        &self.tbs().subject
    }

    pub fn issuer(&self) -> &Name {
        &self.tbs().issuer
    }

    pub fn subject_string(&self) -> String {
        let s = self.subject().to_string();
        if s.is_empty() {
            "<empty subject>".into()
        } else {
            s
        }
    }

    pub fn spki(&self) -> &SubjectPublicKeyInfoOwned {
        &self.tbs().subject_public_key_info
    }

    pub fn public_key_bits(&self) -> &[u8] {
        self.spki().subject_public_key.raw_bytes()
    }

    pub fn serial(&self) -> Serial {
        Serial::from_be_bytes(self.tbs().serial_number.as_bytes())
    }

    pub fn not_before(&self) -> SystemTime {
        self.tbs().validity.not_before.to_system_time()
    }

    pub fn not_after(&self) -> SystemTime {
        self.tbs().validity.not_after.to_system_time()
    }

    pub fn is_self_issued(&self) -> bool {
        self.subject() == self.issuer()
    }

    /// Validity check with the reason spelled out for operators.
    pub fn check_validity(&self, now: SystemTime) -> Result<(), String> {
        if now < self.not_before() {
            return Err(format!(
                "is not yet valid (notBefore {})",
                humantime::format_rfc3339_seconds(self.not_before())
            ));
        }
        if now > self.not_after() {
            return Err(format!(
                "expired (notAfter {})",
                humantime::format_rfc3339_seconds(self.not_after())
            ));
        }
        Ok(())
    }

    fn extension_value<T: for<'a> Decode<'a>>(
        &self,
        oid: der::asn1::ObjectIdentifier,
    ) -> Option<(bool, T)> {
        self.tbs()
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == oid)
            .and_then(|e| {
                T::from_der(e.extn_value.as_bytes())
                    .ok()
                    .map(|v| (e.critical, v))
            })
    }

    pub fn ca_constraints(&self) -> Option<CaConstraints> {
        use der::oid::AssociatedOid;
        self.extension_value::<BasicConstraints>(BasicConstraints::OID)
            .map(|(_, bc)| CaConstraints {
                ca: bc.ca,
                path_len: bc.path_len_constraint,
            })
    }

    pub fn key_usage(&self) -> Option<KeyUsage> {
        use der::oid::AssociatedOid;
        self.extension_value::<KeyUsage>(KeyUsage::OID)
            .map(|(_, ku)| ku)
    }

    pub fn subject_key_id(&self) -> Option<Vec<u8>> {
        use der::oid::AssociatedOid;
        self.extension_value::<SubjectKeyIdentifier>(SubjectKeyIdentifier::OID)
            .map(|(_, ski)| ski.0.as_bytes().to_vec())
    }

    pub fn authority_key_id(&self) -> Option<Vec<u8>> {
        use der::oid::AssociatedOid;
        self.extension_value::<AuthorityKeyIdentifier>(AuthorityKeyIdentifier::OID)
            .and_then(|(_, aki)| aki.key_identifier.map(|k| k.as_bytes().to_vec()))
    }

    /// The key id children of this certificate carry as AKI: its SKI, or (Istio's sample CA has
    /// none) the RFC 5280 method-1 hash of its public key.
    pub fn key_id(&self) -> Vec<u8> {
        self.subject_key_id()
            .unwrap_or_else(|| keys::key_identifier(self.public_key_bits()))
    }

    pub fn uri_sans(&self) -> Vec<String> {
        use der::oid::AssociatedOid;
        let Some((_, san)) = self.extension_value::<SubjectAltName>(SubjectAltName::OID) else {
            return Vec::new();
        };
        san.0
            .iter()
            .filter_map(|n| match n {
                GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Whether `issuer` signed this certificate: names chain and the signature verifies.
    pub fn is_signed_by(&self, issuer: &ParsedCert) -> Result<(), VerifyError> {
        if self.issuer() != issuer.subject() {
            return Err(VerifyError::BadSignature);
        }
        keys::verify_signature(
            issuer.spki(),
            self.cert.signature_algorithm.oid,
            &self.der[self.tbs_range.0..self.tbs_range.1],
            self.cert.signature.raw_bytes(),
        )
    }
}

impl PartialEq for ParsedCert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for ParsedCert {}

/// Byte range of the first element inside a DER SEQUENCE: the signed part of a certificate or
/// CSR, exactly as it was signed (re-encoding could differ for non-canonical input).
pub fn first_element_range(der: &[u8]) -> der::Result<(usize, usize)> {
    let mut reader = SliceReader::new(der)?;
    let outer = Header::decode(&mut reader)?;
    outer.tag.assert_eq(der::Tag::Sequence)?;
    let start: usize = reader.position().try_into()?;
    let inner = Header::decode(&mut reader)?;
    let after_header: usize = reader.position().try_into()?;
    let body_len: usize = inner.length.try_into()?;
    Ok((start, after_header + body_len))
}

// === writing certificates ===

/// `der` as a `CERTIFICATE` PEM block with LF line endings, as the `pem` crate writes it, in one
/// allocation: every issuance answers with its leaf in PEM, and the general encoder built it
/// from a copy of the DER, a base64 string and a string per line.
pub fn certificate_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----\n";
    const END: &str = "-----END CERTIFICATE-----\n";
    // 48 bytes are one 64-character line (RFC 7468 §2).
    let lines = der.len().div_ceil(48);
    let mut pem = String::with_capacity(BEGIN.len() + lines * 65 + END.len());
    pem.push_str(BEGIN);
    for line in der.chunks(48) {
        base64::engine::general_purpose::STANDARD.encode_string(line, &mut pem);
        pem.push('\n');
    }
    pem.push_str(END);
    pem
}

/// Encodes a point in time the way RFC 5280 §4.1.2.5 requires: UTCTime through 2049,
/// GeneralizedTime from 2050 on.
pub fn x509_time(t: SystemTime) -> Result<Time, der::Error> {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    // 2050-01-01T00:00:00Z
    if secs < 2_524_608_000 {
        Ok(Time::UtcTime(UtcTime::from_system_time(t)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_system_time(t)?))
    }
}

/// A fresh serial: the time of issue in nanoseconds since the Unix epoch (8 bytes, big-endian)
/// followed by 64 random bits.
///
/// Why not 128 random bits: the store keeps a unique index on the serial, and random keys put
/// every issuance of a group commit on a different leaf page of that B-tree, each one written
/// to the WAL and fsynced. Serials that grow with time land on the index's last page. The 64
/// random bits are the unpredictability the CA/Browser Forum asks of a serial; a collision
/// (two issuances in the same nanosecond drawing the same bits) is still only a retry, as the
/// unique index refuses the second.
pub fn new_serial() -> SerialNumber {
    serial_at(SystemTime::now())
}

fn serial_at(now: SystemTime) -> SerialNumber {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut bytes = [0u8; 16];
    // Until the year 2262 the time fills 63 bits with a non-zero first byte: the serial is
    // positive and 16 bytes long without padding, so serials compare as their hex strings do.
    bytes[..8].copy_from_slice(&(nanos & (u64::MAX >> 1)).to_be_bytes());
    aws_lc_rs::rand::fill(&mut bytes[8..]).expect("system RNG");
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    SerialNumber::new(&bytes).expect("16 bytes fit a serial")
}

pub fn extension<T: Encode + der::oid::AssociatedOid>(
    critical: bool,
    value: &T,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// Everything a certificate needs except what the signer adds (issuer and algorithm).
#[derive(Debug)]
pub struct CertTemplate {
    pub serial: SerialNumber,
    pub subject: Name,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub spki: SubjectPublicKeyInfoOwned,
    pub extensions: Vec<Extension>,
}

/// Signs `template` as `issuer` with `key`. The caller guarantees `key` belongs to `issuer`.
pub fn sign_certificate(
    template: CertTemplate,
    issuer: &Name,
    key: &SigningKey,
) -> Result<Vec<u8>, der::Error> {
    let signature_algorithm: AlgorithmIdentifierOwned = key.signature_algorithm();
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: template.serial,
        signature: signature_algorithm.clone(),
        issuer: issuer.clone(),
        validity: Validity {
            not_before: x509_time(template.not_before)?,
            not_after: x509_time(template.not_after)?,
        },
        subject: template.subject,
        subject_public_key_info: template.spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(template.extensions),
    };
    let tbs_der = tbs.to_der()?;
    let signature = key.sign(&tbs_der);
    Ok(certificate_der(
        &tbs_der,
        &signature_algorithm.to_der()?,
        &signature,
    ))
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }` around a
/// TBS already encoded (and signed): written once, not encoded a second time.
pub fn certificate_der(tbs: &[u8], signature_algorithm: &[u8], signature: &[u8]) -> Vec<u8> {
    // BIT STRING: a leading "0 unused bits" octet, then the signature.
    let bits = 1 + signature.len();
    let body = tbs.len() + signature_algorithm.len() + tlv_len(bits);
    let mut der = Vec::with_capacity(tlv_len(body));
    push_header(&mut der, der::Tag::Sequence, body);
    der.extend_from_slice(tbs);
    der.extend_from_slice(signature_algorithm);
    push_header(&mut der, der::Tag::BitString, bits);
    der.push(0);
    der.extend_from_slice(signature);
    der
}

/// `uniformResourceIdentifier [6] IMPLICIT IA5String` in a GeneralName: how a SPIFFE id is
/// written into a certificate and read from a CSR.
pub(crate) const URI_TAG: der::Tag = der::Tag::ContextSpecific {
    constructed: false,
    number: der::TagNumber::N6,
};

/// The encoded length of a TLV whose value is `len` bytes (definite form, X.690 §8.1.3).
pub(crate) fn tlv_len(len: usize) -> usize {
    1 + length_len(len) + len
}

fn length_len(len: usize) -> usize {
    match len {
        0..=0x7f => 1,
        _ => 1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize,
    }
}

/// Appends the tag and length of a TLV whose value is `len` bytes.
pub(crate) fn push_header(out: &mut Vec<u8>, tag: der::Tag, len: usize) {
    out.push(tag.into());
    if len <= 0x7f {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = (len.leading_zeros() / 8) as usize;
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The extensions of a CA certificate meshca generates.
pub fn ca_extensions(public_key_bits: &[u8]) -> Result<Vec<Extension>, der::Error> {
    Ok(vec![
        extension(
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
        )?,
        extension(true, &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))?,
        extension(
            false,
            &SubjectKeyIdentifier(OctetString::new(keys::key_identifier(public_key_bits))?),
        )?,
    ])
}

pub fn uri_san(uri: &str) -> Result<SubjectAltName, der::Error> {
    Ok(SubjectAltName(vec![
        GeneralName::UniformResourceIdentifier(Ia5String::new(uri)?),
    ]))
}

pub fn server_client_eku() -> ExtendedKeyUsage {
    use der::oid::db::rfc5280::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
    ExtendedKeyUsage(vec![ID_KP_SERVER_AUTH, ID_KP_CLIENT_AUTH])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers as the `der` crate writes them, around every length-form boundary.
    #[test]
    fn tlv_headers_are_ders() {
        for len in [
            0, 1, 0x7f, 0x80, 0xff, 0x100, 0x1234, 0xffff, 0x10000, 0x12_3456,
        ] {
            let value = OctetString::new(vec![0u8; len]).unwrap().to_der().unwrap();
            let mut header = Vec::new();
            push_header(&mut header, der::Tag::OctetString, len);
            assert_eq!(header, value[..value.len() - len], "{len}");
            assert_eq!(tlv_len(len), value.len(), "{len}");
        }
    }

    /// The same text as the `pem` crate's encoder, for every length around a line's 48 bytes.
    #[test]
    fn certificate_pem_is_the_pem_crates_text() {
        for len in (0..200).chain([470, 480, 1_000, 4_096]) {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let expected = pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            assert_eq!(certificate_pem(&der), expected, "{len} bytes");
            assert!(certificate_pem(&der).capacity() >= expected.len());
        }
    }

    #[test]
    fn time_encoding_switches_in_2050() {
        let y2049 = UNIX_EPOCH + Duration::from_secs(2_524_607_999);
        let y2050 = UNIX_EPOCH + Duration::from_secs(2_524_608_000);
        assert!(matches!(x509_time(y2049).unwrap(), Time::UtcTime(_)));
        assert!(matches!(x509_time(y2050).unwrap(), Time::GeneralTime(_)));
    }

    #[test]
    fn serials_are_positive_16_bytes_and_grow_with_time() {
        let mut previous = serial_at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        for step in 1..200u64 {
            let s = serial_at(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000 + step));
            assert_eq!(s.as_bytes().len(), 16);
            assert!(s.as_bytes()[0] < 0x80 && s.as_bytes()[0] > 0);
            assert!(hex::encode(s.as_bytes()) > hex::encode(previous.as_bytes()));
            previous = s;
        }
        // Same nanosecond: the random half tells them apart.
        let now = SystemTime::now();
        assert_ne!(serial_at(now).as_bytes(), serial_at(now).as_bytes());
        assert_eq!(new_serial().as_bytes().len(), 16);
    }
}
