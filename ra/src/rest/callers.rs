//! Who may call the REST API: the configured bearer tokens (kept by SHA-256; the config never
//! holds a token) and the caller a request resolves to, as the audit trail names it.

use crate::config::{RestRole, RestToken};

/// An authenticated caller, as the audit trail names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `token` or `mtls`.
    pub method: &'static str,
    /// The token's configured name, or the client certificate's SPIFFE id.
    pub principal: String,
    /// `None`: authenticated, but listed in no role.
    pub role: Option<RestRole>,
}

/// Configured tokens by hash.
#[derive(Debug, Default)]
pub struct TokenTable {
    tokens: Vec<([u8; 32], String, RestRole)>,
}

#[derive(Debug, thiserror::Error)]
#[error("rest.tokens[{index}] ({name}): sha256 must be 64 hex digits")]
pub struct TokenConfigError {
    index: usize,
    name: String,
}

// === impl TokenTable ===

impl TokenTable {
    pub fn new(tokens: &[RestToken]) -> Result<Self, TokenConfigError> {
        let mut table = Vec::with_capacity(tokens.len());
        for (index, token) in tokens.iter().enumerate() {
            let digest: [u8; 32] = hex::decode(token.sha256.trim())
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| TokenConfigError {
                    index,
                    name: token.name.clone(),
                })?;
            table.push((digest, token.name.clone(), token.role));
        }
        Ok(Self { tokens: table })
    }

    pub(super) fn lookup(&self, token: &str) -> Option<(&str, RestRole)> {
        self.lookup_with_sha256(token)
            .map(|(name, role, _)| (name, role))
    }

    /// The token's name and role, and its SHA-256 (hex), which is what a console session
    /// keeps of it.
    pub(crate) fn lookup_with_sha256(&self, token: &str) -> Option<(&str, RestRole, String)> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        self.by_digest(digest.as_ref())
            .map(|(name, role)| (name, role, hex::encode(digest.as_ref())))
    }

    /// The name and role of the configured token whose SHA-256 is `sha256_hex`, if one still is.
    pub(crate) fn by_sha256(&self, sha256_hex: &str) -> Option<(&str, RestRole)> {
        let digest = hex::decode(sha256_hex).ok()?;
        self.by_digest(&digest)
    }

    fn by_digest(&self, digest: &[u8]) -> Option<(&str, RestRole)> {
        self.tokens
            .iter()
            .find(|(known, _, _)| {
                aws_lc_rs::constant_time::verify_slices_are_equal(known, digest).is_ok()
            })
            .map(|(_, name, role)| (name.as_str(), *role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let hash = |t: &str| {
            hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                t.as_bytes(),
            ))
        };
        let table = TokenTable::new(&[
            RestToken {
                name: "ops".into(),
                sha256: hash("s3cret-admin"),
                role: RestRole::Admin,
            },
            RestToken {
                name: "audit".into(),
                sha256: hash("s3cret-audit").to_uppercase(),
                role: RestRole::Auditor,
            },
        ])
        .unwrap();
        assert_eq!(table.lookup("s3cret-admin"), Some(("ops", RestRole::Admin)));
        assert_eq!(
            table.lookup("s3cret-audit"),
            Some(("audit", RestRole::Auditor))
        );
        assert_eq!(table.lookup("s3cret"), None);
        let (_, _, digest) = table.lookup_with_sha256("s3cret-audit").unwrap();
        assert_eq!(digest, hash("s3cret-audit"));
        assert_eq!(table.by_sha256(&digest), Some(("audit", RestRole::Auditor)));
        assert_eq!(table.by_sha256("00"), None);
        assert_eq!(table.by_sha256("not hex"), None);
        assert_eq!(
            table.lookup(&hash("s3cret-admin")),
            None,
            "the hash is not the token"
        );

        let err = TokenTable::new(&[RestToken {
            name: "bad".into(),
            sha256: "abc".into(),
            role: RestRole::Admin,
        }])
        .unwrap_err();
        assert!(err.to_string().contains("rest.tokens[0] (bad)"));
    }
}
