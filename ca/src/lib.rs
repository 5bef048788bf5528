//! meshca's CA core: the running CA in one of three modes (its own roots sealed under the
//! key-encryption key, a plugged-in `cacerts` directory, or keyless in front of `meshca ca`),
//! what it does (issue, take rotation steps, sign CRLs), the store every issuance is recorded
//! in before it is returned, and the `meshca ca` signing service with the keyless RA's client
//! for it. The I/O-free types it works with are meshca-pki's.

pub mod cacerts;
pub mod commit;
pub mod config;
pub mod issued;
pub mod issuer;
pub mod kek;
pub mod metrics;
pub mod remote;
pub mod service;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

// The I/O-free PKI types live in meshca-pki; re-exported so `meshca_ca::x509` and the rest keep
// meaning what they did.
pub use config::{CaConfig, StoreConfig};
pub use csr::{CsrError, VerifiedCsr};
pub use identity::{AuthorityId, Serial, SpiffeId, TrustDomain};
pub use issued::IssuedCertificate;
pub use issuer::{
    CaSettings, CertificateAuthority, IssueError, IssueRequest, PrepareRequest, Refusal, Requester,
    RotationError, StartError,
};
pub use keys::KeyType;
pub use meshca_pki::{
    audit, authority, chain, crl, csr, identity, keys, profile, rotation, x509, Authority,
};
pub use rotation::{AuthorityEntry, AuthoritySet, AuthorityState};
pub use store::Store;
