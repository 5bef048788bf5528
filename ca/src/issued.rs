//! A certificate as the CA hands it out, whether signed here or by the `meshca ca` service: a
//! leaf of its own, so the keyless client and the issuer both use it without using each other.

use std::time::SystemTime;

use crate::identity::{AuthorityId, Serial};

/// A certificate that is on record.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub serial: Serial,
    pub leaf_der: Vec<u8>,
    /// `[leaf, signing cert, intermediates…]`, PEM, never a root: whoever answers appends the
    /// trust bundle it publishes, so every answer ends in the same bundle.
    pub chain_pem: Vec<String>,
    pub not_after: SystemTime,
    pub authority_id: AuthorityId,
}
