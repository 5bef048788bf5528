//! Identity newtypes: values that must never be confused with one another or with plain strings.

use std::fmt;
use std::str::FromStr;

/// A SPIFFE trust domain (`cluster.local`). Validated per the SPIFFE-ID spec: lower-case letters,
/// digits, `.`, `-`, `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A SPIFFE id (`spiffe://cluster.local/ns/default/sa/default`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (the `/` after the trust domain).
    path_start: usize,
}

/// A certificate serial number, as the big-endian magnitude bytes. Displayed as lower-case hex,
/// which is also how the store and the API spell it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

/// An authority's id: the hex of its signing certificate's subject key identifier.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthorityId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("trust domain {0:?} is invalid: only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomain(String),
    #[error("SPIFFE id {id:?} is invalid: {reason}")]
    SpiffeId { id: String, reason: &'static str },
    #[error("serial {0:?} is not a hex number")]
    Serial(String),
}

const MAX_SPIFFE_ID_LEN: usize = 2048;

/// SPIFFE's trust domain name: lowercase letters, digits, '.', '-' and '_', 1 to 255 of them.
fn is_trust_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

// === impl TrustDomain ===

impl TrustDomain {
    pub fn new(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        if is_trust_domain_name(&name) {
            Ok(Self(name))
        } else {
            Err(IdentityError::TrustDomain(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Kubernetes workload identity Istio uses: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, IdentityError> {
        SpiffeId::new(&format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    pub fn new(id: &str) -> Result<Self, IdentityError> {
        let err = |reason| IdentityError::SpiffeId {
            id: id.to_string(),
            reason,
        };
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(err("longer than 2048 bytes"));
        }
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("scheme must be spiffe://"))?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        if !is_trust_domain_name(&rest[..td_len]) {
            return Err(err("invalid trust domain"));
        }
        let path = &rest[td_len..];
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(err("empty path segment or trailing '/'")),
                    "." | ".." => return Err(err("'.' and '..' segments are not allowed")),
                    s if !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
                    {
                        return Err(err("path may only hold a-z, A-Z, 0-9, '.', '-' and '_'"))
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            uri: id.to_string(),
            path_start: "spiffe://".len() + td_len,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_string())
    }

    /// Whether this id is in `trust_domain`, without making a [`TrustDomain`] of its own.
    pub fn is_in(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.as_str()
    }

    fn trust_domain_name(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_start]
    }

    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// `(namespace, service account)` when the id has Istio's `/ns/<ns>/sa/<sa>` shape.
    pub fn kubernetes_workload(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

// === impl Serial ===

impl Serial {
    /// From the big-endian bytes of a positive integer; leading zero bytes are dropped so the
    /// same number always has the same spelling.
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len().saturating_sub(1));
        Self(bytes[start..].to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        crate::keys::lower_hex(&self.0)
    }
}

impl FromStr for Serial {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cleaned: String = s.chars().filter(|c| *c != ':').collect();
        let padded = if cleaned.len() % 2 == 1 {
            format!("0{cleaned}")
        } else {
            cleaned
        };
        let bytes = hex::decode(&padded).map_err(|_| IdentityError::Serial(s.to_string()))?;
        if bytes.is_empty() {
            return Err(IdentityError::Serial(s.to_string()));
        }
        Ok(Self::from_be_bytes(&bytes))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

// === impl AuthorityId ===

impl AuthorityId {
    pub fn from_key_id(key_id: &[u8]) -> Self {
        Self(crate::keys::lower_hex(key_id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for AuthorityId {
    fn from(s: String) -> Self {
        Self(s.to_ascii_lowercase())
    }
}

impl fmt::Display for AuthorityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_round_trip() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let id = td.workload_id("default", "bookinfo-productpage").unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(id.trust_domain(), td);
        assert!(id.is_in(&td));
        assert!(!id.is_in(&TrustDomain::new("cluster.loca").unwrap()));
        assert!(!id.is_in(&TrustDomain::new("cluster.local.example").unwrap()));
        assert_eq!(
            id.kubernetes_workload(),
            Some(("default", "bookinfo-productpage"))
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/",
            "spiffe://td/ns/../sa",
            "spiffe://td/ns/a b",
            "spiffe:///ns/a",
        ] {
            assert!(SpiffeId::new(bad).is_err(), "{bad} accepted");
        }
        let non_k8s = SpiffeId::new("spiffe://td/sa/foo").unwrap();
        assert_eq!(non_k8s.kubernetes_workload(), None);
    }

    #[test]
    fn serial_spelling_is_canonical() {
        let a = Serial::from_be_bytes(&[0, 0, 0x8f, 0x01]);
        assert_eq!(a.to_hex(), "8f01");
        assert_eq!("8F:01".parse::<Serial>().unwrap(), a);
        assert_eq!("f01".parse::<Serial>().unwrap().to_hex(), "0f01");
        assert!("zz".parse::<Serial>().is_err());
    }
}
