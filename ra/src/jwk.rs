//! Public keys as JWKs (RFC 7517/7518), for the SPIFFE bundle's roots and the dev token
//! issuer's JWKS: one encoding, so a key reads the same wherever meshca publishes it.

use base64::Engine;
use der::asn1::{ObjectIdentifier, UintRef};
use der::Decode;
use meshca_ca::keys;
use serde_json::{json, Value};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// `kty` and the key parameters (`crv`/`x`/`y` or `n`/`e`) of a subject public key; the caller
/// adds `kid`, `alg`, `use` or `x5c` as its document needs.
pub fn public_key_jwk(spki: &SubjectPublicKeyInfoOwned) -> Value {
    let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let bits = spki.subject_public_key.raw_bytes();
    if spki.algorithm.oid == keys::OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        let crv = match curve {
            Some(oid) if oid == keys::OID_P384 => "P-384",
            _ => "P-256",
        };
        // Uncompressed point: 0x04 || X || Y.
        let coords = bits.get(1..).unwrap_or_default();
        let (x, y) = coords.split_at(coords.len() / 2);
        json!({ "kty": "EC", "crv": crv, "x": b64url(x), "y": b64url(y) })
    } else if spki.algorithm.oid == keys::OID_RSA_ENCRYPTION {
        match RsaPublicKey::from_der(bits) {
            Ok(key) => json!({
                "kty": "RSA",
                "n": b64url(key.modulus.as_bytes()),
                "e": b64url(key.public_exponent.as_bytes()),
            }),
            Err(_) => json!({ "kty": "RSA" }),
        }
    } else {
        json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(bits) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_ca::keys::{KeyType, SigningKey};

    #[test]
    fn rsa_and_ec_keys_carry_their_parameters() {
        let rsa = SigningKey::generate(KeyType::Rsa2048).unwrap();
        let jwk = public_key_jwk(&rsa.subject_public_key_info());
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().unwrap())
            .unwrap();
        assert_eq!(n.len(), 256, "a 2048-bit modulus without a leading zero");

        let ec = SigningKey::generate(KeyType::EcP256).unwrap();
        let jwk = public_key_jwk(&ec.subject_public_key_info());
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        let x = jwk["x"].as_str().unwrap();
        let point = ec.public_key_bits();
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x)
                .unwrap(),
            point[1..33]
        );
    }
}
