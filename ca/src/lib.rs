//! meshca's CA core: authorities (plugged-in `cacerts` or a self-signed root), the SPIFFE
//! workload-certificate profile, and the store every issuance is recorded in.

pub mod audit;
pub mod authority;
pub mod cacerts;
pub mod chain;
pub mod commit;
pub mod config;
pub mod crl;
pub mod csr;
pub mod identity;
pub mod issuer;
pub mod kek;
pub mod keys;
pub mod profile;
pub mod remote;
pub mod rotation;
pub mod service;
mod sqlite_writer;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod x509;

pub use authority::Authority;
pub use config::{CaConfig, StoreConfig};
pub use csr::{CsrError, VerifiedCsr};
pub use identity::{AuthorityId, Serial, SpiffeId, TrustDomain};
pub use issuer::{
    CaSettings, CertificateAuthority, IssueError, IssueRequest, IssuedCertificate, PrepareRequest,
    Requester, RotationError, StartError,
};
pub use keys::KeyType;
pub use rotation::{AuthorityEntry, AuthoritySet, AuthorityState};
pub use store::Store;
