//! A certificate's fields as an auditor reads them (what `openssl x509 -text` would show that
//! matters in a mesh), and the issuer chain above it.

use der::oid::ObjectIdentifier;
use der::Decode;
use meshca_ca::x509::ParsedCert;
use meshca_pki::keys::sha256_hex;
use meshca_pki::time::unix_seconds;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};

use crate::rest::pagination::unix_to_rfc3339;

/// One row of the decoded view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedField {
    pub name: &'static str,
    pub value: String,
}

/// A certificate of the chain above a leaf, issuer first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub fingerprint_sha256: String,
}

/// The names of the algorithms and purposes a mesh's certificates use, as OpenSSL prints them.
const OID_NAMES: [(&str, &str); 14] = [
    ("1.2.840.10045.4.3.2", "ecdsa-with-SHA256"),
    ("1.2.840.10045.4.3.3", "ecdsa-with-SHA384"),
    ("1.2.840.113549.1.1.11", "sha256WithRSAEncryption"),
    ("1.2.840.113549.1.1.12", "sha384WithRSAEncryption"),
    ("1.2.840.113549.1.1.13", "sha512WithRSAEncryption"),
    ("1.2.840.113549.1.1.10", "rsassaPss"),
    ("1.3.101.112", "ED25519"),
    ("1.2.840.10045.2.1", "id-ecPublicKey"),
    ("1.2.840.113549.1.1.1", "rsaEncryption"),
    ("1.2.840.10045.3.1.7", "prime256v1"),
    ("1.3.132.0.34", "secp384r1"),
    ("1.3.6.1.5.5.7.3.1", "serverAuth"),
    ("1.3.6.1.5.5.7.3.2", "clientAuth"),
    ("2.5.29.31", "crlDistributionPoints"),
];

/// `name (dotted)` for a known OID, else the dotted form.
fn oid_name(oid: &ObjectIdentifier) -> String {
    let dotted = oid.to_string();
    match OID_NAMES.iter().find(|(known, _)| *known == dotted) {
        Some((_, name)) => format!("{name} ({dotted})"),
        None => dotted,
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fields of the certificate in `der`; one field saying why when it does not parse.
pub fn decoded_fields(der: &[u8]) -> Vec<DecodedField> {
    let cert = match ParsedCert::from_der(der) {
        Ok(cert) => cert,
        Err(error) => {
            return vec![DecodedField {
                name: "Error",
                value: format!("the stored certificate does not parse: {error}"),
            }]
        }
    };
    let field = |name, value: String| DecodedField { name, value };
    let tbs = cert.tbs();
    let mut fields = vec![
        field("Version", format!("{:?}", tbs.version)),
        field("Serial number", colon_hex(tbs.serial_number.as_bytes())),
        field("Signature algorithm", oid_name(&tbs.signature.oid)),
        field("Issuer", tbs.issuer.to_string()),
        field("Subject", tbs.subject.to_string()),
        field(
            "Not before",
            unix_to_rfc3339(unix_seconds(cert.not_before())),
        ),
        field("Not after", unix_to_rfc3339(unix_seconds(cert.not_after()))),
    ];
    let spki = cert.spki();
    let parameters = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
        .map(|curve| format!(", {}", oid_name(&curve)))
        .unwrap_or_default();
    fields.push(field(
        "Public key",
        format!("{}{parameters}", oid_name(&spki.algorithm.oid)),
    ));
    fields.push(field(
        "Public key SHA-256",
        sha256_hex(cert.public_key_bits()),
    ));
    for extension in tbs.extensions.iter().flatten() {
        let critical = if extension.critical { ", critical" } else { "" };
        let value = extension.extn_value.as_bytes();
        let shown = match extension.extn_id.to_string().as_str() {
            "2.5.29.17" => SubjectAltName::from_der(value).ok().map(|san| {
                san.0
                    .iter()
                    .map(general_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            "2.5.29.37" => ExtendedKeyUsage::from_der(value)
                .ok()
                .map(|eku| eku.0.iter().map(oid_name).collect::<Vec<_>>().join(", ")),
            "2.5.29.15" => cert.key_usage().map(|ku| format!("{:?}", ku.0)),
            "2.5.29.19" => cert.ca_constraints().map(|bc| match bc.path_len {
                Some(n) => format!("CA: {}, path length {n}", bc.ca),
                None => format!("CA: {}", bc.ca),
            }),
            "2.5.29.14" => cert.subject_key_id().map(|id| colon_hex(&id)),
            "2.5.29.35" => cert.authority_key_id().map(|id| colon_hex(&id)),
            _ => None,
        };
        let name = match extension.extn_id.to_string().as_str() {
            "2.5.29.17" => "Subject alternative names",
            "2.5.29.37" => "Extended key usage",
            "2.5.29.15" => "Key usage",
            "2.5.29.19" => "Basic constraints",
            "2.5.29.14" => "Subject key identifier",
            "2.5.29.35" => "Authority key identifier",
            _ => "Extension",
        };
        let value = match shown {
            Some(shown) => format!("{shown}{critical}"),
            None => format!(
                "{} ({} bytes){critical}",
                oid_name(&extension.extn_id),
                value.len()
            ),
        };
        fields.push(field(name, value));
    }
    fields
}

fn general_name(name: &GeneralName) -> String {
    match name {
        GeneralName::UniformResourceIdentifier(uri) => format!("URI:{}", uri.as_str()),
        GeneralName::DnsName(dns) => format!("DNS:{}", dns.as_str()),
        GeneralName::Rfc822Name(email) => format!("email:{}", email.as_str()),
        GeneralName::IpAddress(ip) => match ip.as_bytes() {
            [a, b, c, d] => format!("IP:{a}.{b}.{c}.{d}"),
            bytes => match <[u8; 16]>::try_from(bytes) {
                Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                Err(_) => format!("IP:{}", colon_hex(bytes)),
            },
        },
        other => format!("{other:?}"),
    }
}

// === impl ChainLink ===

impl ChainLink {
    /// The links of PEM certificates (those that do not parse are left out).
    pub fn of_pems(pems: &[String]) -> Vec<Self> {
        pems.iter()
            .flat_map(|pem| ParsedCert::many_from_pem(pem.as_bytes()).unwrap_or_default())
            .map(|cert| Self {
                subject: cert.subject_string(),
                issuer: cert.issuer().to_string(),
                not_after: unix_to_rfc3339(unix_seconds(cert.not_after())),
                fingerprint_sha256: sha256_hex(cert.der()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_reads_as_openssl_would_show_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
            rcgen::SanType::DnsName("b.a.svc".try_into().unwrap()),
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key).unwrap();
        let fields = decoded_fields(cert.der());
        let value = |name: &str| {
            fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.value.clone())
                .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
        };
        assert_eq!(
            value("Signature algorithm"),
            "ecdsa-with-SHA256 (1.2.840.10045.4.3.2)"
        );
        assert_eq!(
            value("Public key"),
            "id-ecPublicKey (1.2.840.10045.2.1), prime256v1 (1.2.840.10045.3.1.7)"
        );
        assert_eq!(
            value("Subject alternative names"),
            "URI:spiffe://cluster.local/ns/a/sa/b, DNS:b.a.svc"
        );
        assert_eq!(
            value("Extended key usage"),
            "serverAuth (1.3.6.1.5.5.7.3.1), clientAuth (1.3.6.1.5.5.7.3.2)"
        );
        assert_eq!(
            decoded_fields(b"not DER")[0].name,
            "Error",
            "a broken record is said, not hidden"
        );
    }
}
