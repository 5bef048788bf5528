//! The running CA's state: its mode (where keys live and who records), the published authority
//! set, the TTL policy and the store; readiness. What the CA does with them (issuing, rotation
//! steps, CRLs) is in the sibling modules, each an `impl` of [`CertificateAuthority`].

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::authority::Authority;
use crate::commit::{Admission, IssuanceCommitter};
use crate::identity::TrustDomain;
use crate::kek::KeyEncryptionKey;
use crate::metrics::CaMetrics;
use crate::profile::TtlPolicy;
use crate::remote::RemoteCa;
use crate::rotation::AuthoritySet;
use crate::store::{Store, StoreError};

/// The running CA. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) trust_domain: TrustDomain,
    pub(super) ttl: TtlPolicy,
    pub(super) authorities: Arc<watch::Sender<Arc<AuthoritySet>>>,
    pub(super) mode: Mode,
    /// Records, revocations and the audit log, in every mode.
    pub(super) store: Store,
    pub(super) metrics: Arc<CaMetrics>,
}

/// Where the keys live, and so who signs, records and takes rotation steps.
#[derive(Debug)]
pub(super) enum Mode {
    /// Self-signed or admin-prepared authorities whose keys the store keeps sealed under the
    /// key-encryption key; rotation steps go through the admin API.
    OwnRoots {
        kek: KeyEncryptionKey,
        committer: IssuanceCommitter,
    },
    /// A plugged-in `cacerts` directory (Istio's layout); it rotates by changing the directory.
    PluggedIn { committer: IssuanceCommitter },
    /// A keyless RA: the `meshca ca` service holds the keys, signs, records and steps; this
    /// process only forwards and mirrors its authority set.
    Keyless { remote: RemoteCa },
}

impl Mode {
    /// The group commit, where issuances are signed and recorded in this process.
    pub(super) fn committer(&self) -> Option<&IssuanceCommitter> {
        match self {
            Mode::OwnRoots { committer, .. } | Mode::PluggedIn { committer } => Some(committer),
            Mode::Keyless { .. } => None,
        }
    }
}

/// Why the CA cannot issue right now (`/readyz` answers 503 with this).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("issuance writer stopped")]
    WriterStopped,
    #[error("recording issuances fails: {0}")]
    CommitsFailing(Arc<StoreError>),
    #[error("CA service {0} unreachable")]
    CaServiceUnreachable(String),
    #[error("CA signing path has expired")]
    SigningPathExpired,
}

impl CertificateAuthority {
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.trust_domain
    }

    pub fn ttl_policy(&self) -> TtlPolicy {
        self.inner.ttl
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Arc<CaMetrics> {
        &self.inner.metrics
    }

    /// Whether this is a keyless RA, signing through the `meshca ca` service.
    pub fn is_keyless(&self) -> bool {
        matches!(self.inner.mode, Mode::Keyless { .. })
    }

    /// The authority new certificates are signed by right now.
    pub fn current_authority(&self) -> Arc<Authority> {
        self.inner.authorities.borrow().active().clone()
    }

    /// Every authority and its rotation state, as of now.
    pub fn authorities(&self) -> Arc<AuthoritySet> {
        self.inner.authorities.borrow().clone()
    }

    /// Follows authority changes (reloads, rotation steps).
    pub fn watch_authorities(&self) -> watch::Receiver<Arc<AuthoritySet>> {
        self.inner.authorities.subscribe()
    }

    /// Whether a certificate could be issued now: the store answers, whoever records is alive
    /// (this process's group commit, or the CA service's stream is up), and the signing path
    /// has not expired.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        self.inner.store.ping().await?;
        match &self.inner.mode {
            Mode::OwnRoots { committer, .. } | Mode::PluggedIn { committer } => {
                if !committer.is_running() {
                    return Err(NotReady::WriterStopped);
                }
                if let Some(error) = committer.failing(std::time::Instant::now()) {
                    return Err(NotReady::CommitsFailing(error));
                }
            }
            Mode::Keyless { remote } => {
                if !remote.is_connected() {
                    return Err(NotReady::CaServiceUnreachable(remote.addr().to_string()));
                }
            }
        }
        if self.current_authority().path_not_after() <= SystemTime::now() {
            return Err(NotReady::SigningPathExpired);
        }
        Ok(())
    }

    /// Counts a certificate request as on its way, from before its authentication until the
    /// guard is dropped; the group commit waits a moment for such callers when many are coming.
    /// `None` in a keyless RA, where the CA service commits.
    pub fn admit(&self) -> Option<Admission> {
        self.inner.mode.committer().map(IssuanceCommitter::admit)
    }
}
