//! meshca's PKI without I/O: identity newtypes, keys and signatures, the X.509 writer, the
//! SPIFFE workload profile and the direct DER writer issuance uses for it, path building, CSR
//! checks and their PEM reader, CRL encoding, authorities and their rotation states, the trust
//! bundle, the audit log's hash chain, and certificate-rotation and backoff timing. The CA, the
//! RA, the agent and the tools share it; it opens no file or socket, so everything here is
//! tested as plain functions.

pub mod audit;
pub mod authority;
pub mod bundle;
pub mod chain;
pub mod crl;
pub mod csr;
pub mod identity;
pub mod keys;
pub mod leaf;
pub mod pem_block;
pub mod profile;
pub mod rotation;
pub mod time;
pub mod timing;
pub mod x509;

pub use authority::Authority;
pub use bundle::{ExtraAnchor, TrustBundle};
pub use csr::{CsrError, IdentityMismatch, VerifiedCsr};
pub use identity::{AuthorityId, Serial, SpiffeId, TrustDomain};
pub use keys::KeyType;
pub use rotation::{AuthorityEntry, AuthoritySet, AuthorityState};

#[cfg(test)]
mod test_support {
    /// `bytes` with one byte XORed by one of `changes`, for every byte and every change: the
    /// near misses a decoder is compared on.
    pub(crate) fn every_byte_changed(bytes: &[u8], changes: &[u8]) -> Vec<Vec<u8>> {
        let mut variants = Vec::with_capacity(bytes.len() * changes.len());
        for i in 0..bytes.len() {
            for change in changes {
                let mut variant = bytes.to_vec();
                variant[i] ^= change;
                variants.push(variant);
            }
        }
        variants
    }
}
