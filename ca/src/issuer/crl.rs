//! Certificate revocation lists: every certificate revoked under an authority, signed by that
//! authority (by the `meshca ca` service in a keyless RA).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::state::{CertificateAuthority, Mode};
use crate::authority::AuthoritySignError;
use crate::crl::{self as crl_list, CrlEntry, RevocationReason};
use crate::remote::RemoteError;
use crate::store::StoreError;
use meshca_pki::time::unix_seconds;

/// Why no CRL could be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    #[error("no authority {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing the CRL: {0}")]
    Sign(#[from] AuthoritySignError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// How long a CRL is good for; clients fetch a new one before `nextUpdate`.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);

impl CertificateAuthority {
    /// A CRL of every certificate revoked under `authority_id` (default: the active
    /// authority), signed by that authority.
    pub async fn crl(&self, authority_id: Option<&str>) -> Result<Vec<u8>, CrlError> {
        if let Mode::Keyless { remote } = &self.inner.mode {
            return Ok(remote.sign_crl(authority_id).await?);
        }
        let set = self.authorities();
        let authority = match authority_id {
            None => set.active().clone(),
            Some(id) => set
                .get(id)
                .map(|e| e.authority.clone())
                .ok_or_else(|| CrlError::NotFound(id.to_string()))?,
        };
        let revocations = self
            .inner
            .store
            .revocations_for_authority(authority.id().as_str())
            .await?;
        let entries: Vec<CrlEntry> = revocations
            .iter()
            .map(|r| CrlEntry {
                serial_hex: r.serial.clone(),
                revoked_at: UNIX_EPOCH + Duration::from_secs(r.revoked_at.max(0) as u64),
                reason: RevocationReason::parse(&r.reason).unwrap_or(RevocationReason::Unspecified),
            })
            .collect();
        let this_update = SystemTime::now();
        // The CRL number must grow with every CRL: the generation time in seconds does.
        let number = unix_seconds(this_update) as u64;
        Ok(crl_list::build_crl(
            &authority,
            &entries,
            this_update,
            this_update + CRL_VALIDITY,
            number,
        )?)
    }
}
