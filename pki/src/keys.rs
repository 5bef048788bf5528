//! CA signing keys and signature verification, on one crypto backend (aws-lc-rs).
//!
//! aws-lc-rs was picked by measurement (see `benches/sign.rs` and the closing note of #2): its
//! P-256 verify/sign and RSA sign are within a few percent of OpenSSL, several times faster
//! than the pure-Rust `p256`/`rsa` crates on the issuance hot path.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use der::asn1::{BitString, ObjectIdentifier};
use der::{Any, Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

pub const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
pub const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Key types meshca generates (self-signed roots, agent workload keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyType {
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

/// A private key that signs certificates. Its `Debug` never shows key material.
pub struct SigningKey {
    inner: Inner,
    /// The subjectPublicKey bits as they appear in a certificate's SPKI.
    public_key: Vec<u8>,
    /// PKCS#8 DER, kept so the key can be sealed into the store.
    pkcs8: Vec<u8>,
}

enum Inner {
    Ecdsa { pair: EcdsaKeyPair, curve: Curve },
    Rsa(RsaKeyPair),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// A public key as a certificate or CSR carries it, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyKind {
    Rsa { bits: usize },
    EcP256,
    EcP384,
    Ed25519,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("no PEM private key block found")]
    NoPem,
    #[error("PEM block {0:?} is not a private key")]
    UnexpectedPemLabel(String),
    #[error("unsupported private key algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("RSA key of {0} bits is outside the allowed 2048-8192")]
    RsaSize(usize),
    #[error("malformed private key: {0}")]
    Malformed(String),
    #[error("key generation failed")]
    Generate,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("signature algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("signature algorithm {alg} does not fit a {key} key")]
    AlgorithmKeyMismatch { alg: String, key: String },
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("signature does not verify")]
    BadSignature,
}

// === impl KeyType ===

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-4096" => Ok(Self::Rsa4096),
            other => Err(format!(
                "unknown key type {other:?}: expected ec-p256, ec-p384, rsa-2048 or rsa-4096"
            )),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl SigningKey ===

impl SigningKey {
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        match key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                let curve = if key_type == KeyType::EcP256 {
                    Curve::P256
                } else {
                    Curve::P384
                };
                let pair =
                    EcdsaKeyPair::generate(curve.signing_alg()).map_err(|_| KeyError::Generate)?;
                let pkcs8 = pair.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
                Self::from_pkcs8(pkcs8.as_ref())
            }
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                let size = if key_type == KeyType::Rsa2048 {
                    KeySize::Rsa2048
                } else {
                    KeySize::Rsa4096
                };
                let pair = RsaKeyPair::generate(size).map_err(|_| KeyError::Generate)?;
                let pkcs8 = pair.as_der().map_err(|_| KeyError::Generate)?;
                Self::from_pkcs8(pkcs8.as_ref())
            }
        }
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
    /// (`EC PRIVATE KEY`). Other blocks (e.g. `EC PARAMETERS` that openssl prepends) are skipped.
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::Malformed(e.to_string()))?;
        let mut first_label = None;
        for block in &blocks {
            match block.tag() {
                "PRIVATE KEY" => return Self::from_pkcs8(block.contents()),
                "RSA PRIVATE KEY" => {
                    check_rsa_bits(rsa_private_key_bits(block.contents())?)?;
                    let pair = RsaKeyPair::from_der(block.contents())
                        .map_err(|e| KeyError::Malformed(e.to_string()))?;
                    check_rsa_bits(pair.public_modulus_len() * 8)?;
                    let pkcs8 = pair
                        .as_der()
                        .map_err(|e| KeyError::Malformed(e.to_string()))?;
                    return Self::from_pkcs8(pkcs8.as_ref());
                }
                "EC PRIVATE KEY" => {
                    for curve in [Curve::P256, Curve::P384] {
                        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(
                            curve.signing_alg(),
                            block.contents(),
                        ) {
                            let pkcs8 = pair
                                .to_pkcs8v1()
                                .map_err(|_| KeyError::Malformed("re-encoding".into()))?;
                            return Self::from_pkcs8(pkcs8.as_ref());
                        }
                    }
                    return Err(KeyError::UnsupportedAlgorithm(
                        "EC key on a curve other than P-256 or P-384".into(),
                    ));
                }
                "EC PARAMETERS" => {}
                other => {
                    first_label.get_or_insert_with(|| other.to_string());
                }
            }
        }
        Err(first_label.map_or(KeyError::NoPem, KeyError::UnexpectedPemLabel))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let info = pkcs8::PrivateKeyInfo::from_der(der)
            .map_err(|e| KeyError::Malformed(format!("PKCS#8: {e}")))?;
        let oid = info.algorithm.oid;
        if oid == OID_RSA_ENCRYPTION {
            check_rsa_bits(rsa_private_key_bits(info.private_key)?)?;
            let pair =
                RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError::Malformed(e.to_string()))?;
            check_rsa_bits(pair.public_modulus_len() * 8)?;
            let public_key = pair.public_key().as_ref().to_vec();
            return Ok(Self {
                inner: Inner::Rsa(pair),
                public_key,
                pkcs8: der.to_vec(),
            });
        }
        if oid == OID_EC_PUBLIC_KEY {
            let curve_oid = info
                .algorithm
                .parameters_oid()
                .map_err(|_| KeyError::Malformed("EC key without a named curve".into()))?;
            let curve = match curve_oid {
                OID_P256 => Curve::P256,
                OID_P384 => Curve::P384,
                other => return Err(KeyError::UnsupportedAlgorithm(format!("EC curve {other}"))),
            };
            let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), der)
                .map_err(|e| KeyError::Malformed(e.to_string()))?;
            let public_key = pair.public_key().as_ref().to_vec();
            return Ok(Self {
                inner: Inner::Ecdsa { pair, curve },
                public_key,
                pkcs8: der.to_vec(),
            });
        }
        Err(KeyError::UnsupportedAlgorithm(oid_name(&oid)))
    }

    /// The subjectPublicKey bits; compare with a certificate's to check they belong together.
    pub fn public_key_bits(&self) -> &[u8] {
        &self.public_key
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn pkcs8_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    pub fn subject_public_key_info(&self) -> SubjectPublicKeyInfoOwned {
        let algorithm = match &self.inner {
            Inner::Rsa(_) => AlgorithmIdentifierOwned {
                oid: OID_RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            },
            Inner::Ecdsa { curve, .. } => AlgorithmIdentifierOwned {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(Any::from(match curve {
                    Curve::P256 => OID_P256,
                    Curve::P384 => OID_P384,
                })),
            },
        };
        SubjectPublicKeyInfoOwned {
            algorithm,
            subject_public_key: BitString::from_bytes(&self.public_key)
                .expect("a public key always fits a bit string"),
        }
    }

    pub fn key_description(&self) -> String {
        match &self.inner {
            Inner::Rsa(pair) => format!("rsa-{}", pair.public_modulus_len() * 8),
            Inner::Ecdsa {
                curve: Curve::P256, ..
            } => "ec-p256".into(),
            Inner::Ecdsa {
                curve: Curve::P384, ..
            } => "ec-p384".into(),
        }
    }

    /// The signature algorithm this key signs certificates with: SHA-256 for RSA and P-256,
    /// SHA-384 for P-384 (as Go's x509 and Istio pick).
    pub fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        match &self.inner {
            Inner::Rsa(_) => AlgorithmIdentifierOwned {
                oid: OID_RSA_SHA256,
                parameters: Some(Any::null()),
            },
            Inner::Ecdsa {
                curve: Curve::P256, ..
            } => AlgorithmIdentifierOwned {
                oid: OID_ECDSA_SHA256,
                parameters: None,
            },
            Inner::Ecdsa {
                curve: Curve::P384, ..
            } => AlgorithmIdentifierOwned {
                oid: OID_ECDSA_SHA384,
                parameters: None,
            },
        }
    }

    pub fn is_rsa(&self) -> bool {
        matches!(self.inner, Inner::Rsa(_))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ecdsa { pair, .. } => pair
                .sign(&rng, message)
                .expect("ECDSA signing with a valid key does not fail")
                .as_ref()
                .to_vec(),
            Inner::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .expect("RSA signing with a valid key does not fail");
                sig
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("type", &self.key_description())
            .finish_non_exhaustive()
    }
}

impl Curve {
    fn signing_alg(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }
}

/// Modulus size of a PKCS#1 RSAPrivateKey, read before the backend sees it so a small key
/// gets a message naming its size.
fn rsa_private_key_bits(pkcs1_der: &[u8]) -> Result<usize, KeyError> {
    let key = pkcs1::RsaPrivateKey::from_der(pkcs1_der)
        .map_err(|e| KeyError::Malformed(format!("RSA key: {e}")))?;
    Ok(modulus_bits(key.modulus.as_bytes()))
}

fn modulus_bits(modulus: &[u8]) -> usize {
    match modulus.iter().position(|b| *b != 0) {
        Some(i) => (modulus.len() - i) * 8 - modulus[i].leading_zeros() as usize,
        None => 0,
    }
}

fn check_rsa_bits(bits: usize) -> Result<(), KeyError> {
    if (2048..=8192).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::RsaSize(bits))
    }
}

// === public keys ===

/// Classifies an SPKI: which algorithm, which curve or size.
pub fn classify_public_key(spki: &SubjectPublicKeyInfoOwned) -> Result<PublicKeyKind, String> {
    let oid = spki.algorithm.oid;
    if oid == OID_RSA_ENCRYPTION {
        let key = pkcs1::RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
            .map_err(|e| format!("malformed RSA public key: {e}"))?;
        return Ok(PublicKeyKind::Rsa {
            bits: modulus_bits(key.modulus.as_bytes()),
        });
    }
    if oid == OID_EC_PUBLIC_KEY {
        let curve = named_curve(&spki.algorithm)
            .ok_or_else(|| "EC public key without a named curve".to_string())?;
        return match curve {
            OID_P256 => Ok(PublicKeyKind::EcP256),
            OID_P384 => Ok(PublicKeyKind::EcP384),
            other => Err(format!(
                "ECDSA key on curve {} is not allowed",
                oid_name(&other)
            )),
        };
    }
    if oid == OID_ED25519 {
        return Ok(PublicKeyKind::Ed25519);
    }
    Err(format!(
        "public key algorithm {} is not allowed",
        oid_name(&oid)
    ))
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa { bits } => write!(f, "RSA-{bits}"),
            Self::EcP256 => f.write_str("ECDSA P-256"),
            Self::EcP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

fn named_curve(alg: &AlgorithmIdentifierOwned) -> Option<ObjectIdentifier> {
    alg.parameters
        .as_ref()?
        .decode_as::<ObjectIdentifier>()
        .ok()
}

/// Verifies `signature` over `message` by the key in `spki`, with the algorithm `alg` the signed
/// object (certificate or CSR) names.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoOwned,
    alg: ObjectIdentifier,
    message: &[u8],
    signature_bytes: &[u8],
) -> Result<(), VerifyError> {
    let key = classify_public_key(spki).map_err(VerifyError::PublicKey)?;
    let mismatch = || VerifyError::AlgorithmKeyMismatch {
        alg: oid_name(&alg),
        key: key.to_string(),
    };
    let verifier: &'static dyn signature::VerificationAlgorithm = match (key, alg) {
        (PublicKeyKind::EcP256, OID_ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
        (PublicKeyKind::EcP256, OID_ECDSA_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
        (PublicKeyKind::EcP256, OID_ECDSA_SHA512) => &signature::ECDSA_P256_SHA512_ASN1,
        (PublicKeyKind::EcP384, OID_ECDSA_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
        (PublicKeyKind::EcP384, OID_ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
        (PublicKeyKind::EcP384, OID_ECDSA_SHA512) => &signature::ECDSA_P384_SHA512_ASN1,
        (PublicKeyKind::Rsa { .. }, OID_RSA_SHA256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (PublicKeyKind::Rsa { .. }, OID_RSA_SHA384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (PublicKeyKind::Rsa { .. }, OID_RSA_SHA512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (PublicKeyKind::Ed25519, OID_ED25519) => &signature::ED25519,
        (_, OID_ECDSA_SHA256 | OID_ECDSA_SHA384 | OID_ECDSA_SHA512)
        | (_, OID_RSA_SHA256 | OID_RSA_SHA384 | OID_RSA_SHA512)
        | (_, OID_ED25519) => return Err(mismatch()),
        (_, other) => return Err(VerifyError::UnsupportedAlgorithm(oid_name(&other))),
    };
    signature::UnparsedPublicKey::new(verifier, spki.subject_public_key.raw_bytes())
        .verify(message, signature_bytes)
        .map_err(|_| VerifyError::BadSignature)
}

/// A readable name for the OIDs users meet in errors.
pub fn oid_name(oid: &ObjectIdentifier) -> String {
    let name = match *oid {
        OID_RSA_ENCRYPTION => "rsaEncryption",
        OID_EC_PUBLIC_KEY => "id-ecPublicKey",
        OID_ED25519 => "Ed25519",
        OID_P256 => "P-256",
        OID_P384 => "P-384",
        OID_ECDSA_SHA256 => "ecdsa-with-SHA256",
        OID_ECDSA_SHA384 => "ecdsa-with-SHA384",
        OID_ECDSA_SHA512 => "ecdsa-with-SHA512",
        OID_RSA_SHA256 => "sha256WithRSAEncryption",
        OID_RSA_SHA384 => "sha384WithRSAEncryption",
        OID_RSA_SHA512 => "sha512WithRSAEncryption",
        OID_RSA_PSS => "RSASSA-PSS",
        _ => match oid.to_string().as_str() {
            "1.3.132.0.35" => return "P-521 (1.3.132.0.35)".into(),
            "1.2.840.10040.4.1" => return "DSA (1.2.840.10040.4.1)".into(),
            "1.3.101.113" => return "Ed448 (1.3.101.113)".into(),
            "1.2.840.113549.1.1.5" => return "sha1WithRSAEncryption".into(),
            "1.2.840.10045.4.1" => return "ecdsa-with-SHA1".into(),
            s => return s.to_string(),
        },
    };
    name.to_string()
}

/// SHA-256 of DER bytes, hex; used for key and root fingerprints.
pub fn sha256_hex(bytes: &[u8]) -> String {
    lower_hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// Lowercase hex, as `hex::encode` writes it, without its collecting of one `char` at a time:
/// each issuance writes a serial, a key hash and an audit hash.
pub fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits. It is what Go and OpenSSL
/// write as SKI, so our AKIs match theirs.
pub fn key_identifier(public_key_bits: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        public_key_bits,
    )
    .as_ref()
    .to_vec()
}

/// Encodes an SPKI; convenience for hashing.
pub fn spki_der(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    spki.to_der().expect("an SPKI always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_hex_is_hex_crates() {
        let every_byte: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 16, 32, 256] {
            assert_eq!(
                lower_hex(&every_byte[..len]),
                hex::encode(&every_byte[..len])
            );
        }
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let key = SigningKey::generate(kt).unwrap();
            assert_eq!(key.key_description(), kt.as_str());
            let sig = key.sign(b"hello");
            let spki = key.subject_public_key_info();
            verify_signature(&spki, key.signature_algorithm().oid, b"hello", &sig).unwrap();
            assert_eq!(
                verify_signature(&spki, key.signature_algorithm().oid, b"hellO", &sig),
                Err(VerifyError::BadSignature)
            );
            // PKCS#8 round trip keeps the same public key.
            let again = SigningKey::from_pem(key.pkcs8_pem().as_bytes()).unwrap();
            assert_eq!(again.public_key_bits(), key.public_key_bits());
        }
    }

    #[test]
    fn debug_hides_key_material() {
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let debug = format!("{key:?}");
        assert_eq!(debug, "SigningKey { type: \"ec-p256\", .. }");
    }

    #[test]
    fn key_type_parses_config_spelling() {
        assert_eq!("rsa-4096".parse::<KeyType>().unwrap(), KeyType::Rsa4096);
        assert!("rsa-1024"
            .parse::<KeyType>()
            .unwrap_err()
            .contains("rsa-1024"));
    }
}
