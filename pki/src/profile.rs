//! The SPIFFE workload-certificate profile and its TTL policy. Pure functions: the CA decides
//! every field here, and the CSR contributes nothing but its public key.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use der::asn1::Ia5String;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use der::asn1::OctetString;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::RdnSequence;
use x509_cert::serial_number::SerialNumber;

use crate::csr::VerifiedCsr;
use crate::identity::SpiffeId;
use crate::keys;
use crate::x509::{self, CertTemplate};

/// Clock skew allowance: a peer whose clock is a little behind still accepts a fresh cert.
pub const BACKDATE: Duration = Duration::from_secs(120);

/// How long workload certificates live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TtlError {
    /// Istio's wording, so operators searching the message find the same answers.
    #[error("requested TTL {requested} is greater than the max allowed TTL {max}", requested = format_duration(*.requested), max = format_duration(*.max))]
    AboveMax { requested: Duration, max: Duration },
}

// === impl TtlPolicy ===

impl TtlPolicy {
    /// `requested_secs` ≤ 0 means "the default", as in Istio's `validity_duration`. Above the
    /// maximum is refused rather than clamped, so a misconfigured client notices.
    pub fn resolve(&self, requested_secs: i64) -> Result<Duration, TtlError> {
        if requested_secs <= 0 {
            return Ok(self.default_ttl);
        }
        let requested = Duration::from_secs(requested_secs.unsigned_abs());
        if requested > self.max_ttl {
            return Err(TtlError::AboveMax {
                requested,
                max: self.max_ttl,
            });
        }
        Ok(requested)
    }
}

/// Spells a duration the way the config does (`90d`, `24h`, `15m`, `30s`), in the largest
/// unit that divides it; error messages then read like the setting they came from.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// notBefore = now − 2 min; notAfter = now + ttl, never past what the signing path allows.
pub fn leaf_validity(
    now: SystemTime,
    ttl: Duration,
    path_not_after: SystemTime,
) -> (SystemTime, SystemTime) {
    let not_after = (now + ttl).min(path_not_after);
    (now - BACKDATE, not_after)
}

/// The complete template of a workload certificate: the caller's SPIFFE id as the only SAN.
/// Issuance writes the same certificate with an authority's [`WorkloadCertWriter`], whose tests
/// compare it byte for byte with this template signed by [`x509::sign_certificate`].
///
/// [`WorkloadCertWriter`]: crate::leaf::WorkloadCertWriter
pub fn workload_template(
    csr: &VerifiedCsr,
    spiffe_id: &SpiffeId,
    serial: SerialNumber,
    validity: (SystemTime, SystemTime),
    issuer_key_id: &[u8],
) -> Result<CertTemplate, der::Error> {
    end_entity_template(
        csr.public_key(),
        x509::uri_san(spiffe_id.as_str())?,
        serial,
        validity,
        issuer_key_id,
    )
}

/// A TLS certificate for meshca's own endpoints: DNS and IP SANs.
pub fn server_template(
    spki: &SubjectPublicKeyInfoOwned,
    dns_names: &[String],
    ip_addrs: &[IpAddr],
    serial: SerialNumber,
    validity: (SystemTime, SystemTime),
    issuer_key_id: &[u8],
) -> Result<CertTemplate, der::Error> {
    let mut names = Vec::new();
    for dns in dns_names {
        names.push(GeneralName::DnsName(Ia5String::new(dns)?));
    }
    for ip in ip_addrs {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(GeneralName::IpAddress(OctetString::new(bytes)?));
    }
    end_entity_template(spki, SubjectAltName(names), serial, validity, issuer_key_id)
}

/// Every end-entity certificate meshca issues: empty subject, the SAN critical (RFC 5280
/// §4.2.1.6, since the subject is empty), CA:FALSE, digitalSignature (+keyEncipherment for
/// RSA keys), serverAuth+clientAuth, SKI, AKI. [`WorkloadCertWriter`] writes the same
/// extensions, in this order, from [`leading_extensions`] and [`authority_key_id_extension`].
///
/// [`WorkloadCertWriter`]: crate::leaf::WorkloadCertWriter
fn end_entity_template(
    spki: &SubjectPublicKeyInfoOwned,
    san: SubjectAltName,
    serial: SerialNumber,
    validity: (SystemTime, SystemTime),
    issuer_key_id: &[u8],
) -> Result<CertTemplate, der::Error> {
    let mut extensions = Vec::with_capacity(6);
    extensions.extend(leading_extensions(
        spki.algorithm.oid == keys::OID_RSA_ENCRYPTION,
    )?);
    extensions.push(x509::extension(
        false,
        &SubjectKeyIdentifier(OctetString::new(keys::key_identifier(
            spki.subject_public_key.raw_bytes(),
        ))?),
    )?);
    extensions.push(authority_key_id_extension(issuer_key_id)?);
    extensions.push(x509::extension(true, &san)?);
    Ok(CertTemplate {
        serial,
        subject: RdnSequence(Vec::new()),
        not_before: validity.0,
        not_after: validity.1,
        spki: spki.clone(),
        extensions,
    })
}

/// What an end-entity certificate's extensions start with: CA:FALSE, digitalSignature
/// (+keyEncipherment for an RSA key), serverAuth+clientAuth.
pub(crate) fn leading_extensions(rsa_key: bool) -> Result<[Extension; 3], der::Error> {
    let mut usage = KeyUsages::DigitalSignature.into();
    if rsa_key {
        usage |= KeyUsages::KeyEncipherment;
    }
    Ok([
        x509::extension(
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        x509::extension(true, &KeyUsage(usage))?,
        x509::extension(false, &x509::server_client_eku())?,
    ])
}

/// The AKI an authority whose key identifier is `issuer_key_id` gives its certificates.
pub(crate) fn authority_key_id_extension(issuer_key_id: &[u8]) -> Result<Extension, der::Error> {
    x509::extension(
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(issuer_key_id)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn policy() -> TtlPolicy {
        TtlPolicy {
            default_ttl: Duration::from_secs(24 * H),
            max_ttl: Duration::from_secs(90 * 24 * H),
        }
    }

    #[test]
    fn ttl_zero_or_negative_means_default() {
        assert_eq!(policy().resolve(0), Ok(Duration::from_secs(24 * H)));
        assert_eq!(policy().resolve(-5), Ok(Duration::from_secs(24 * H)));
        assert_eq!(policy().resolve(3600), Ok(Duration::from_secs(H)));
    }

    #[test]
    fn ttl_above_max_is_refused_naming_both() {
        let err = policy().resolve((91 * 24 * H) as i64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requested TTL 91d is greater than the max allowed TTL 90d"
        );
        assert!(policy().resolve((90 * 24 * H) as i64).is_ok());
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn validity_is_backdated_and_clamped_to_the_path() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (nb, na) = leaf_validity(
            now,
            Duration::from_secs(H),
            now + Duration::from_secs(10 * H),
        );
        assert_eq!(nb, now - Duration::from_secs(120));
        assert_eq!(na, now + Duration::from_secs(H));
        let (_, clamped) =
            leaf_validity(now, Duration::from_secs(H), now + Duration::from_secs(60));
        assert_eq!(clamped, now + Duration::from_secs(60));
    }
}
