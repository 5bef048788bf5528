//! Certificate revocation lists (RFC 5280 §5): the certificates an administrator revoked,
//! signed by the authority that issued them, with a reason code per entry.

use std::time::SystemTime;

use der::asn1::{BitString, OctetString};
use der::Encode;
use serde::{Deserialize, Serialize};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlReason};
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use crate::authority::{Authority, AuthoritySignError};
use crate::x509::{extension, x509_time};

/// An RFC 5280 revocation reason, spelled as in the RFC's ASN.1.
// The REST API takes and documents this enum itself: its serde names are the API's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = "keyCompromise"))]
pub enum RevocationReason {
    #[serde(rename = "unspecified")]
    Unspecified,
    #[serde(rename = "keyCompromise")]
    KeyCompromise,
    #[serde(rename = "cACompromise")]
    CaCompromise,
    #[serde(rename = "affiliationChanged")]
    AffiliationChanged,
    #[serde(rename = "superseded")]
    Superseded,
    #[serde(rename = "cessationOfOperation")]
    CessationOfOperation,
    #[serde(rename = "privilegeWithdrawn")]
    PrivilegeWithdrawn,
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntry {
    /// Big-endian hex, as stored.
    pub serial_hex: String,
    pub revoked_at: SystemTime,
    pub reason: RevocationReason,
}

const REASONS: [(RevocationReason, &str); 7] = [
    (RevocationReason::Unspecified, "unspecified"),
    (RevocationReason::KeyCompromise, "keyCompromise"),
    (RevocationReason::CaCompromise, "cACompromise"),
    (RevocationReason::AffiliationChanged, "affiliationChanged"),
    (RevocationReason::Superseded, "superseded"),
    (
        RevocationReason::CessationOfOperation,
        "cessationOfOperation",
    ),
    (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn"),
];

// === impl RevocationReason ===

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        REASONS
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("unspecified", |(_, name)| name)
    }

    pub fn parse(name: &str) -> Option<Self> {
        REASONS.iter().find(|(_, n)| *n == name).map(|(r, _)| *r)
    }

    /// Every accepted name, for error messages.
    pub fn names() -> Vec<&'static str> {
        REASONS.iter().map(|(_, n)| *n).collect()
    }

    fn code(self) -> CrlReason {
        match self {
            Self::Unspecified => CrlReason::Unspecified,
            Self::KeyCompromise => CrlReason::KeyCompromise,
            Self::CaCompromise => CrlReason::CaCompromise,
            Self::AffiliationChanged => CrlReason::AffiliationChanged,
            Self::Superseded => CrlReason::Superseded,
            Self::CessationOfOperation => CrlReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        }
    }
}

/// A v2 CRL from `authority` listing `entries`, valid from `this_update` to `next_update`,
/// with CRL number `number` (must grow with every new CRL of this authority).
pub fn build_crl(
    authority: &Authority,
    entries: &[CrlEntry],
    this_update: SystemTime,
    next_update: SystemTime,
    number: u64,
) -> Result<Vec<u8>, AuthoritySignError> {
    let key = authority
        .key()
        .ok_or_else(|| AuthoritySignError::NoKey(authority.id().clone()))?;
    let mut revoked = Vec::with_capacity(entries.len());
    for entry in entries {
        let bytes = hex::decode(&entry.serial_hex).map_err(|_| {
            der::Error::from(der::ErrorKind::Value {
                tag: der::Tag::Integer,
            })
        })?;
        revoked.push(RevokedCert {
            serial_number: SerialNumber::new(&bytes)?,
            revocation_date: x509_time(entry.revoked_at)?,
            crl_entry_extensions: Some(vec![extension(false, &entry.reason.code())?]),
        });
    }
    let signature_algorithm = key.signature_algorithm();
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(authority.key_id())?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let tbs = TbsCertList {
        version: Version::V2,
        signature: signature_algorithm.clone(),
        issuer: authority.signing_cert().tbs().subject.clone(),
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(vec![
            extension(false, &aki)?,
            extension(
                false,
                &CrlNumber(der::asn1::Uint::new(&number.to_be_bytes())?),
            )?,
        ]),
    };
    let signature = key.sign(&tbs.to_der()?);
    Ok(CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(&signature)?,
    }
    .to_der()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_round_trip() {
        for name in RevocationReason::names() {
            assert_eq!(RevocationReason::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(RevocationReason::parse("KeyCompromise"), None);
    }

    #[test]
    fn serde_names_are_the_reason_names() {
        for name in RevocationReason::names() {
            let reason = RevocationReason::parse(name).unwrap();
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(name)
            );
            let parsed: RevocationReason = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(parsed, reason);
        }
        assert!(
            serde_json::from_value::<RevocationReason>(serde_json::json!("KeyCompromise")).is_err()
        );
    }
}
