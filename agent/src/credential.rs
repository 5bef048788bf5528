//! A workload credential: a fresh key, the CSR that asks for it, and the validation of what the
//! CA sends back. A response is accepted only if the leaf names the expected SPIFFE id, carries
//! our key, and chains to the root bundle that ends the response.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::Decode;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// Key types the agent generates for workloads: the CA's own set, one definition for both.
pub use meshca_pki::KeyType;

/// A private key and the CSR for it.
pub struct KeyAndCsr {
    key: rcgen::KeyPair,
    pub csr_pem: String,
}

/// A validated certificate with its key, ready to serve.
#[derive(Clone)]
pub struct Credential {
    pub spiffe_id: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// Leaf first, then intermediates; never the roots.
    pub chain_pem: Vec<String>,
    /// The trust bundle, one PEM each: from the CA response (its last element) until the
    /// RA's trust-bundle stream has delivered one.
    pub roots_pem: Vec<String>,
    /// The same roots by trust domain, as the stream labels them (the Workload API serves one
    /// bundle per trust domain); empty until the stream has delivered, when all are ours.
    pub roots_by_trust_domain: Vec<(String, Vec<String>)>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When we accepted it. Rotation is measured from here rather than from `not_before`,
    /// which CAs backdate (meshca and Istio by minutes): for a 20-second cert the backdated
    /// lifetime would put the rotation point in the past.
    pub received_at: SystemTime,
    /// The AKI of the leaf: which authority issued it (to react to a tainted authority).
    pub authority_key_id: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("response has {0} elements; expected at least a leaf and the root bundle")]
    TooShort(usize),
    #[error("response element {index} is not PEM certificates: {reason}")]
    Pem { index: usize, reason: String },
    #[error("leaf names {found:?}, expected exactly [{expected}]")]
    WrongIdentity {
        found: Vec<String>,
        expected: String,
    },
    #[error("leaf does not carry the key we generated")]
    WrongKey,
    #[error("chain does not verify to the root bundle: {0}")]
    Untrusted(String),
    #[error("leaf does not parse: {0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("key generation: {0}")]
pub struct KeyGenError(String);

// === impl KeyAndCsr ===

impl KeyAndCsr {
    /// A fresh key of `key_type` and a CSR whose only SAN is `spiffe_id`, as istio-agent
    /// sends it.
    pub fn generate(key_type: KeyType, spiffe_id: &str) -> Result<Self, KeyGenError> {
        let err = |e: &dyn fmt::Display| KeyGenError(e.to_string());
        let key = match key_type {
            KeyType::EcP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                use aws_lc_rs::encoding::AsDer;
                let size = if key_type == KeyType::Rsa2048 {
                    aws_lc_rs::rsa::KeySize::Rsa2048
                } else {
                    aws_lc_rs::rsa::KeySize::Rsa4096
                };
                let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|e| err(&e))?;
                let der = pair.as_der().map_err(|e| err(&e))?;
                rcgen::KeyPair::try_from(der.as_ref())
            }
        }
        .map_err(|e| err(&e))?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(spiffe_id.to_string()).map_err(|e| err(&e))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| err(&e))?;
        Ok(Self { key, csr_pem })
    }

    /// Checks the CA's answer (Istio's order: leaf, intermediates…, root bundle) and, when it
    /// holds, turns it into a credential with this key.
    pub fn accept(
        self,
        expected_id: &str,
        response: &[String],
        now: SystemTime,
    ) -> Result<Credential, ValidationError> {
        if response.len() < 2 {
            return Err(ValidationError::TooShort(response.len()));
        }
        let parse = |index: usize, text: &str| -> Result<Vec<Vec<u8>>, ValidationError> {
            let blocks = pem::parse_many(text).map_err(|e| ValidationError::Pem {
                index,
                reason: e.to_string(),
            })?;
            if blocks.is_empty() || blocks.iter().any(|b| b.tag() != "CERTIFICATE") {
                return Err(ValidationError::Pem {
                    index,
                    reason: "expected CERTIFICATE blocks".into(),
                });
            }
            Ok(blocks.into_iter().map(pem::Pem::into_contents).collect())
        };
        let last = response.len() - 1;
        let leaf_der = parse(0, &response[0])?.remove(0);
        let mut intermediates = Vec::new();
        for (i, element) in response.iter().enumerate().take(last).skip(1) {
            intermediates.extend(parse(i, element)?);
        }
        let roots = parse(last, &response[last])?;

        let leaf = Certificate::from_der(&leaf_der)
            .map_err(|e| ValidationError::Malformed(e.to_string()))?;
        let uris = uri_sans(&leaf);
        if uris != [expected_id] {
            return Err(ValidationError::WrongIdentity {
                found: uris,
                expected: expected_id.to_string(),
            });
        }
        let leaf_key = leaf
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        if leaf_key != self.key.public_key_raw() {
            return Err(ValidationError::WrongKey);
        }
        verify_chain(&leaf_der, &intermediates, &roots, now)?;

        let to_pem = |der: &Vec<u8>| {
            pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        };
        let mut chain_pem = vec![to_pem(&leaf_der)];
        chain_pem.extend(intermediates.iter().map(to_pem));
        let validity = &leaf.tbs_certificate.validity;
        Ok(Credential {
            spiffe_id: expected_id.to_string(),
            key_pem: self.key.serialize_pem(),
            chain_pem,
            roots_pem: roots.iter().map(to_pem).collect(),
            roots_by_trust_domain: Vec::new(),
            not_before: validity.not_before.to_system_time(),
            not_after: validity.not_after.to_system_time(),
            received_at: now,
            authority_key_id: authority_key_id(&leaf),
        })
    }
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans(cert: &Certificate) -> Vec<String> {
    use der::oid::AssociatedOid;
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == SubjectAltName::OID)
        .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|san| san.0)
        .filter_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_string()),
            _ => None,
        })
        .collect()
}

fn authority_key_id(cert: &Certificate) -> Option<Vec<u8>> {
    use der::oid::AssociatedOid;
    use x509_cert::ext::pkix::AuthorityKeyIdentifier;
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == AuthorityKeyIdentifier::OID)
        .and_then(|e| AuthorityKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
        .and_then(|aki| aki.key_identifier)
        .map(|k| k.as_bytes().to_vec())
}

/// Path validation with webpki against the roots of the response.
fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<(), ValidationError> {
    let untrusted = |e: &dyn fmt::Display| ValidationError::Untrusted(e.to_string());
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| untrusted(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| untrusted(&e))?;
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    end_entity
        .verify_for_usage(
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .all,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(secs),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(drop)
        .map_err(|e| untrusted(&e))
}

/// Also the in-process RA of the rotation loop's tests (`refresh.rs`).
#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use meshca_ca::issuer::sign_leaf;
    use meshca_ca::{Authority, SpiffeId, TrustDomain, VerifiedCsr};

    use super::*;

    pub(crate) const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

    pub(crate) fn authority() -> Authority {
        let td = TrustDomain::new("cluster.local").unwrap();
        Authority::generate_self_signed(&td, KeyType::EcP256, SystemTime::now()).unwrap()
    }

    /// What the RA would answer for `csr_pem`, signed as `id`: valid for an hour from now,
    /// backdated two minutes.
    pub(crate) fn response(authority: &Authority, csr_pem: &str, id: &str) -> Vec<String> {
        let csr = VerifiedCsr::from_pem(csr_pem).unwrap();
        let now = SystemTime::now();
        let validity = (
            now - Duration::from_secs(120),
            now + Duration::from_secs(3600),
        );
        let (_, der) = sign_leaf(authority, &csr, &SpiffeId::new(id).unwrap(), validity).unwrap();
        let leaf = pem::encode_config(
            &pem::Pem::new("CERTIFICATE", der),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        let mut chain = vec![leaf];
        chain.extend(authority.issuer_chain_pem().iter().cloned());
        chain.push(authority.roots_pem());
        chain
    }

    #[test]
    fn accepts_a_good_response_for_every_key_type() {
        let ca = authority();
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let request = KeyAndCsr::generate(kt, ID).unwrap();
            let answer = response(&ca, &request.csr_pem, ID);
            let cred = request.accept(ID, &answer, SystemTime::now()).unwrap();
            assert_eq!(cred.spiffe_id, ID);
            assert_eq!(cred.chain_pem.len(), 1);
            assert_eq!(cred.roots_pem, vec![ca.root().to_pem()]);
            assert_eq!(cred.authority_key_id.as_deref(), Some(ca.key_id()));
            assert!(cred.key_pem.contains("PRIVATE KEY"));
        }
    }

    #[test]
    fn the_csr_asks_for_exactly_our_identity() {
        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let csr = VerifiedCsr::from_pem(&request.csr_pem).unwrap();
        assert_eq!(csr.requested_uri_sans(), [ID]);
    }

    #[test]
    fn refuses_another_identity_another_key_or_another_root() {
        let ca = authority();
        let now = SystemTime::now();

        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let answer = response(
            &ca,
            &request.csr_pem,
            "spiffe://cluster.local/ns/default/sa/other",
        );
        assert!(matches!(
            request.accept(ID, &answer, now),
            Err(ValidationError::WrongIdentity { .. })
        ));

        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let someone_else = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let answer = response(&ca, &someone_else.csr_pem, ID);
        assert_eq!(
            request.accept(ID, &answer, now).unwrap_err(),
            ValidationError::WrongKey
        );

        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let mut answer = response(&ca, &request.csr_pem, ID);
        *answer.last_mut().unwrap() = authority().root().to_pem();
        assert!(matches!(
            request.accept(ID, &answer, now),
            Err(ValidationError::Untrusted(_))
        ));

        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let answer = response(&ca, &request.csr_pem, ID);
        assert_eq!(
            request.accept(ID, &answer[..1], now).unwrap_err(),
            ValidationError::TooShort(1)
        );
    }

    #[test]
    fn refuses_an_expired_answer() {
        let ca = authority();
        let request = KeyAndCsr::generate(KeyType::EcP256, ID).unwrap();
        let answer = response(&ca, &request.csr_pem, ID);
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert!(matches!(
            request.accept(ID, &answer, later),
            Err(ValidationError::Untrusted(_))
        ));
    }
}
