//! Credentials the tests present: workload keys and CSRs as istio-agent makes them (and as
//! `openssl req` does), `openssl verify`, service-account JWTs with their JWKS, and small
//! encodings. Re-exported by [`crate::harness`].

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use meshca_ca::keys::{KeyType, SigningKey};
use serde_json::{json, Value};

/// A workload key and a CSR for it, the way istio-agent makes them (URI SAN only).
pub struct WorkloadKey {
    pub key: rcgen::KeyPair,
}

impl WorkloadKey {
    pub fn ec() -> Self {
        Self {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    pub fn csr(&self, uris: &[&str]) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| {
                rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u.to_string()).unwrap())
            })
            .collect();
        params.serialize_request(&self.key).unwrap().pem().unwrap()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the SPKI, as the issuance record stores it.
    pub fn public_key_sha256(&self) -> String {
        let spki = pem::parse(self.key.public_key_pem())
            .unwrap()
            .into_contents();
        hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki).as_ref())
    }
}

/// SHA-256 of `text`, hex: how `rest.tokens` names a token.
pub fn sha256_hex(text: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref())
}

/// Every certificate in `pem_text`, DER, concatenated (as a Workload API bundle carries them).
pub fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .flat_map(pem::Pem::into_contents)
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CSR from `openssl req` (for key types rcgen will not generate).
pub fn openssl_csr(newkey: &[&str]) -> String {
    let mut args = vec![
        "req",
        "-new",
        "-nodes",
        "-keyout",
        "/dev/null",
        "-subj",
        "/",
    ];
    args.extend_from_slice(newkey);
    let out = Command::new("openssl").args(&args).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// `openssl verify -CAfile root -untrusted chain leaf`.
pub fn openssl_verify(
    dir: &Path,
    root_pem: &str,
    untrusted: &str,
    leaf: &str,
) -> Result<(), String> {
    let (r, u, l) = (
        dir.join("v-root.pem"),
        dir.join("v-chain.pem"),
        dir.join("v-leaf.pem"),
    );
    std::fs::write(&r, root_pem).unwrap();
    std::fs::write(&u, untrusted).unwrap();
    std::fs::write(&l, leaf).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&r);
    if !untrusted.is_empty() {
        cmd.arg("-untrusted").arg(&u);
    }
    let out = cmd.arg(&l).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

// === JWTs ===

/// A JWT signing key with its JWK.
pub struct JwtKey {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    pub encoding: jsonwebtoken::EncodingKey,
    pub jwk: Value,
    pub public_pem: String,
}

impl JwtKey {
    pub fn es256(kid: &str) -> Self {
        let key = SigningKey::generate(KeyType::EcP256).unwrap();
        let point = key.public_key_bits();
        Self {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::ES256,
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(key.pkcs8_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64url(&point[1..33]), "y": b64url(&point[33..65])}),
            public_pem: spki_pem(&key),
        }
    }

    pub fn rs256(kid: &str) -> Self {
        let key = SigningKey::generate(KeyType::Rsa2048).unwrap();
        use pkcs1::der::Decode;
        let public = pkcs1::RsaPublicKey::from_der(key.public_key_bits()).unwrap();
        Self {
            kid: kid.into(),
            alg: jsonwebtoken::Algorithm::RS256,
            encoding: jsonwebtoken::EncodingKey::from_rsa_pem(key.pkcs8_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64url(public.modulus.as_bytes()), "e": b64url(public.public_exponent.as_bytes())}),
            public_pem: spki_pem(&key),
        }
    }

    pub fn mint(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn spki_pem(key: &SigningKey) -> String {
    let der = meshca_ca::keys::spki_der(&key.subject_public_key_info());
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Service-account token claims as the Kubernetes API server writes them.
pub fn sa_claims(issuer: &str, namespace: &str, sa: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": issuer,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "aud": ["istio-ca"],
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa, "uid": "6b5c4d2e"}},
    })
}

pub fn jwks(keys: &[&JwtKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// Issuer of the Kubernetes service-account tokens in these tests.
pub const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
