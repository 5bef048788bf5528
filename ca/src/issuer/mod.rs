//! The certificate authority as a running service, [`CertificateAuthority`]: its mode (own
//! roots sealed in the store, a plugged-in `cacerts` directory, or keyless in front of
//! `meshca ca`), the published authority set, and what it does: issue, take rotation steps,
//! sign CRLs. This module only names the parts; each concern is a submodule.

mod crl;
mod own_roots;
mod plugged_in;
mod sign;
mod start;
mod state;
mod steps;

pub use crl::{CrlError, CRL_VALIDITY};
pub use own_roots::{authority_from_record, OwnRootsError};
pub use sign::{sign_leaf, IssueError, IssueRequest, Refusal, Requester};
pub use start::{CaSettings, StartError, DEFAULT_KEK_FILE};
pub use state::{CertificateAuthority, NotReady};
pub use steps::{PrepareRequest, RotationError};
