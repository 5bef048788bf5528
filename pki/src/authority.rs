//! An authority: a signing certificate and key, the path to its root, and the trust bundle it
//! is served with. Immutable; a reload or rotation publishes a new one.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use der::asn1::SetOfVec;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;

use crate::chain::CertPath;
use crate::identity::{AuthorityId, SpiffeId, TrustDomain};
use crate::keys::{KeyError, KeyType, SigningKey};
use crate::leaf::WorkloadCertWriter;
use crate::x509::{self, CertTemplate, ParsedCert};

/// Ten years, as Istio's self-signed root.
pub const SELF_SIGNED_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug)]
pub struct Authority {
    id: AuthorityId,
    /// `[signing cert, intermediates..., root]`; a single element when the root signs.
    path: Vec<ParsedCert>,
    /// `None` in a keyless RA: it knows the authority's certificates from the CA service,
    /// which alone holds the key.
    key: Option<SigningKey>,
    /// e.g. `ECDSA P-256`, for the admin API.
    key_description: String,
    roots: Vec<ParsedCert>,
    key_id: Vec<u8>,
    /// What follows the leaf in an Istio response before the trust bundle: the signing cert
    /// and each intermediate, never a root (empty when the root signs).
    issuer_chain_pem: Vec<String>,
    /// The latest moment a leaf may expire: the earliest notAfter on the path.
    path_not_after: SystemTime,
    /// What this authority's workload certificates share, encoded when it first signs one (a
    /// keyless RA's authority never does).
    workload_writer: OnceLock<WorkloadCertWriter>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelfSignedError {
    #[error("generating the root key: {0}")]
    Key(#[from] KeyError),
    #[error("encoding the root certificate: {0}")]
    Encode(#[from] der::Error),
    #[error("reading back the root certificate: {0}")]
    Parse(#[from] x509::ParseError),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthoritySignError {
    #[error("authority {0} has no key here; the CA service signs for it")]
    NoKey(AuthorityId),
    #[error("encoding the certificate: {0}")]
    Encode(#[from] der::Error),
}

// === impl Authority ===

impl Authority {
    /// `path` starts at the certificate `key` belongs to and ends at a root in `roots`.
    pub fn new(path: CertPath, roots: Vec<ParsedCert>, key: SigningKey) -> Self {
        let key_description = key.key_description();
        Self::build(path, roots, Some(key), key_description)
    }

    /// The public half of an authority whose key lives in the CA service: a keyless RA serves
    /// its chain and trust bundle and verifies renewals against it, but cannot sign.
    pub fn public(path: CertPath, roots: Vec<ParsedCert>, key_description: String) -> Self {
        Self::build(path, roots, None, key_description)
    }

    fn build(
        path: CertPath,
        roots: Vec<ParsedCert>,
        key: Option<SigningKey>,
        key_description: String,
    ) -> Self {
        let path = path.certs;
        let signing = &path[0];
        let key_id = signing.key_id();
        let issuer_chain_pem: Vec<String> = path[..path.len() - 1]
            .iter()
            .map(ParsedCert::to_pem)
            .collect();
        let path_not_after = path
            .iter()
            .map(ParsedCert::not_after)
            .min()
            .expect("path is never empty");
        Self {
            id: AuthorityId::from_key_id(&key_id),
            path,
            key,
            key_description,
            roots,
            key_id,
            issuer_chain_pem,
            path_not_after,
            workload_writer: OnceLock::new(),
        }
    }

    /// A new root for `trust_domain`: subject `O=<trust domain>`, ten years, CA:TRUE critical,
    /// keyCertSign+cRLSign critical, SKI.
    pub fn generate_self_signed(
        trust_domain: &TrustDomain,
        key_type: KeyType,
        now: SystemTime,
    ) -> Result<Self, SelfSignedError> {
        let key = SigningKey::generate(key_type)?;
        let subject = organization_name(trust_domain.as_str())?;
        let template = CertTemplate {
            serial: x509::new_serial(),
            subject: subject.clone(),
            not_before: now - Duration::from_secs(120),
            not_after: now + SELF_SIGNED_ROOT_LIFETIME,
            spki: key.subject_public_key_info(),
            extensions: x509::ca_extensions(key.public_key_bits())?,
        };
        let der = x509::sign_certificate(template, &subject, &key)?;
        let root = ParsedCert::from_der(&der)?;
        Ok(Self::new(
            CertPath {
                certs: vec![root.clone()],
            },
            vec![root],
            key,
        ))
    }

    pub fn id(&self) -> &AuthorityId {
        &self.id
    }

    pub fn signing_cert(&self) -> &ParsedCert {
        &self.path[0]
    }

    /// Signing cert to root, as [`chain::build_path`](crate::chain::build_path) verified it
    /// when the authority was made.
    pub fn path(&self) -> &[ParsedCert] {
        &self.path
    }

    /// The root this authority's path ends at.
    pub fn root(&self) -> &ParsedCert {
        self.path.last().expect("path is never empty")
    }

    /// The trust bundle served with this authority (all of root-cert.pem).
    pub fn roots(&self) -> &[ParsedCert] {
        &self.roots
    }

    /// Signing cert and intermediates, leaf-to-root, without the root.
    pub fn intermediates(&self) -> &[ParsedCert] {
        if self.path.len() > 1 {
            &self.path[..self.path.len() - 1]
        } else {
            &[]
        }
    }

    /// The signing key; `None` in a keyless RA.
    pub fn key(&self) -> Option<&SigningKey> {
        self.key.as_ref()
    }

    pub fn key_description(&self) -> &str {
        &self.key_description
    }

    /// The AKI children carry.
    pub fn key_id(&self) -> &[u8] {
        &self.key_id
    }

    /// The signing cert and intermediates as PEM, leaf-to-root, without the root: what an
    /// answer carries between the leaf and the trust bundle.
    pub fn issuer_chain_pem(&self) -> &[String] {
        &self.issuer_chain_pem
    }

    pub fn path_not_after(&self) -> SystemTime {
        self.path_not_after
    }

    /// This authority's `root-cert.pem`: its roots as one PEM text.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(ParsedCert::to_pem).collect()
    }

    /// Signs a certificate as this authority. Callers build every field in `template`.
    pub fn sign(&self, template: CertTemplate) -> Result<Vec<u8>, AuthoritySignError> {
        Ok(x509::sign_certificate(
            template,
            self.signing_cert().subject(),
            self.signing_key()?,
        )?)
    }

    /// Signs the workload certificate of [`profile::workload_template`] for `spki` and
    /// `spiffe_id`, written by this authority's [`WorkloadCertWriter`]: the issuance path.
    ///
    /// [`profile::workload_template`]: crate::profile::workload_template
    pub fn sign_workload(
        &self,
        spki: &SubjectPublicKeyInfoOwned,
        spiffe_id: &SpiffeId,
        serial: &SerialNumber,
        validity: (SystemTime, SystemTime),
    ) -> Result<Vec<u8>, AuthoritySignError> {
        let key = self.signing_key()?;
        let writer = match self.workload_writer.get() {
            Some(writer) => writer,
            None => {
                let writer = WorkloadCertWriter::new(
                    self.signing_cert().subject(),
                    &key.signature_algorithm(),
                    &self.key_id,
                )?;
                self.workload_writer.get_or_init(|| writer)
            }
        };
        let tbs = writer.tbs(spki, spiffe_id.as_str(), serial, validity)?;
        Ok(writer.certificate(&tbs, &key.sign(&tbs)))
    }

    fn signing_key(&self) -> Result<&SigningKey, AuthoritySignError> {
        self.key
            .as_ref()
            .ok_or_else(|| AuthoritySignError::NoKey(self.id.clone()))
    }
}

/// `O=<organization>`: the subject Istio gives its self-signed root.
fn organization_name(org: &str) -> Result<Name, der::Error> {
    use der::oid::db::rfc4519::O;
    let value = der::asn1::Utf8StringRef::new(org)?;
    let atv = AttributeTypeAndValue {
        oid: O,
        value: der::Any::encode_from(&value)?,
    };
    Ok(RdnSequence(vec![RelativeDistinguishedName(
        SetOfVec::try_from(vec![atv])?,
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_root_has_the_istio_shape() {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let authority = Authority::generate_self_signed(&td, KeyType::EcP256, now).unwrap();
        let root = authority.root();
        assert_eq!(root.subject().to_string(), "O=example.org");
        assert!(root.is_self_issued());
        root.is_signed_by(root).unwrap();
        let c = root.ca_constraints().unwrap();
        assert!(c.ca);
        assert_eq!(root.subject_key_id().unwrap(), authority.key_id());
        let lifetime = root.not_after().duration_since(now).unwrap();
        assert!(lifetime > SELF_SIGNED_ROOT_LIFETIME - Duration::from_secs(5));
        // The root signs directly: nothing between the leaf and the bundle.
        assert!(authority.issuer_chain_pem().is_empty());
        assert_eq!(authority.roots_pem(), root.to_pem());
        assert_eq!(authority.id().as_str(), hex::encode(authority.key_id()));
    }
}
