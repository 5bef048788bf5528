//! The store's own roots: authorities whose keys are sealed under the key-encryption key in the
//! store, the first one bootstrapped (replicas race; one wins), every one unsealed and
//! re-validated on load, and the set followed in the store so replicas sign alike.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::state::{CertificateAuthority, Inner, Mode};
use crate::authority::{Authority, SelfSignedError};
use crate::chain::{self, PathError};
use crate::identity::TrustDomain;
use crate::kek::{KekError, KeyEncryptionKey};
use crate::keys::{KeyError, KeyType, SigningKey};
use crate::rotation::{AuthorityEntry, AuthoritySet, AuthorityState};
use crate::store::{Store, StoreError, StoredAuthority};
use crate::x509::ParsedCert;
use meshca_pki::time::unix_seconds;

/// How often the store is checked for rotation steps taken by another process sharing it when
/// no notification says so (SQLite; PostgreSQL while its listener is down), so every replica
/// signs with the same authority within seconds of an activation even then.
const AUTHORITY_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why the authorities on record could not be loaded or bootstrapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnRootsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error("generating the self-signed root: {0}")]
    SelfSigned(#[from] SelfSignedError),
    #[error("stored authority {id}: {reason}")]
    Invalid { id: String, reason: String },
}

impl CertificateAuthority {
    /// Re-reads the authorities from the store and publishes them if anything changed (another
    /// replica's rotation step, or this one's). Only the store's own roots live there; in the
    /// other modes this does nothing.
    pub async fn refresh_authorities(&self) -> Result<(), OwnRootsError> {
        let Mode::OwnRoots { kek, .. } = &self.inner.mode else {
            return Ok(());
        };
        let fresh = load_authority_set(&self.inner.store, kek).await?;
        self.inner
            .authorities
            .send_if_modified(|current| AuthoritySet::replace_if_changed(current, fresh));
        Ok(())
    }
}

/// The active self-signed authority on record, or a new one. Replicas racing here all insert
/// as `active`; the store's unique index lets one win and the others load the winner.
pub(super) async fn load_or_bootstrap(
    store: &Store,
    kek: &KeyEncryptionKey,
    trust_domain: &TrustDomain,
    key_type: KeyType,
) -> Result<Authority, OwnRootsError> {
    if let Some(stored) = store.active_authority().await? {
        return authority_from_record(&stored, kek);
    }
    let now = SystemTime::now();
    let authority = Authority::generate_self_signed(trust_domain, key_type, now)?;
    let record = sealed_record(
        &authority,
        kek,
        "self-signed",
        &key_type.to_string(),
        String::new(),
        now,
    );
    if store.insert_active_authority(&record).await? {
        tracing::info!(authority = %authority.id(), key_type = %key_type, "generated self-signed root");
        return Ok(authority);
    }
    let winner = store
        .active_authority()
        .await?
        .ok_or_else(|| OwnRootsError::Invalid {
            id: "?".into(),
            reason: "lost the bootstrap race but no active authority is on record".into(),
        })?;
    tracing::info!(authority = %winner.id, "another process bootstrapped the root first; using it");
    authority_from_record(&winner, kek)
}

/// Reloads the authorities whenever their ids or states in the store differ from the
/// published set (a cheap query; keys are unsealed only on a change), looking when the store
/// notifies a change and at every poll interval. Ends with the CA.
pub(super) async fn follow_store(inner: Weak<Inner>) {
    let Some(store) = inner.upgrade().map(|inner| inner.store.clone()) else {
        return;
    };
    let mut changes = store.authority_changes().await;
    drop(store);
    tracing::debug!(
        pushed = changes.pushed(),
        "following authority changes in the store"
    );
    loop {
        changes.next(AUTHORITY_POLL_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ca = CertificateAuthority { inner };
        let stored = match ca.inner.store.authority_states().await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "checking the store for authority changes failed");
                continue;
            }
        };
        let published: Vec<(String, String)> = ca
            .authorities()
            .entries()
            .iter()
            .map(|e| (e.authority.id().to_string(), e.state.to_string()))
            .collect();
        if stored != published {
            tracing::info!("authorities changed in the store; reloading");
            if let Err(error) = ca.refresh_authorities().await {
                tracing::error!(%error, "reloading authorities failed; keeping the current set");
            }
        }
    }
}

/// An authority as the store keeps it: the key sealed under the KEK, bound to the id.
pub(super) fn sealed_record(
    authority: &Authority,
    kek: &KeyEncryptionKey,
    source: &str,
    key_type: &str,
    chain_pem: String,
    now: SystemTime,
) -> StoredAuthority {
    StoredAuthority {
        id: authority.id().to_string(),
        state: String::new(),
        source: source.to_string(),
        key_type: key_type.to_string(),
        cert_der: authority.signing_cert().der().to_vec(),
        chain_pem,
        roots_pem: authority.roots_pem(),
        sealed_key: kek.seal(
            authority
                .key()
                .expect("only authorities with a key are sealed")
                .pkcs8_der(),
            authority.id().as_str().as_bytes(),
        ),
        kek_id: kek.id().to_string(),
        created_at: unix_seconds(now),
        updated_at: unix_seconds(now),
    }
}

/// Every authority on record, unsealed and re-validated.
pub(super) async fn load_authority_set(
    store: &Store,
    kek: &KeyEncryptionKey,
) -> Result<AuthoritySet, OwnRootsError> {
    let mut entries = Vec::new();
    for stored in store.authorities().await? {
        let state = AuthorityState::parse(&stored.state).ok_or_else(|| OwnRootsError::Invalid {
            id: stored.id.clone(),
            reason: format!("unknown state {:?}", stored.state),
        })?;
        entries.push(AuthorityEntry {
            authority: Arc::new(authority_from_record(&stored, kek)?),
            state,
            source: stored.source.clone(),
            created_at: stored.created_at,
            updated_at: stored.updated_at,
        });
    }
    AuthoritySet::new(entries).ok_or_else(|| OwnRootsError::Invalid {
        id: "-".into(),
        reason: "the store does not hold exactly one active authority".into(),
    })
}

/// Rebuilds an authority from its record: unseals the key and re-validates the path.
pub fn authority_from_record(
    stored: &StoredAuthority,
    kek: &KeyEncryptionKey,
) -> Result<Authority, OwnRootsError> {
    let bad = |reason: String| OwnRootsError::Invalid {
        id: stored.id.clone(),
        reason,
    };
    let pkcs8 = kek.open(&stored.sealed_key, &stored.kek_id, stored.id.as_bytes())?;
    let key = SigningKey::from_pkcs8(&pkcs8).map_err(|e: KeyError| bad(e.to_string()))?;
    let signing = ParsedCert::from_der(&stored.cert_der).map_err(|e| bad(e.to_string()))?;
    if key.public_key_bits() != signing.public_key_bits() {
        return Err(bad("key does not match certificate".into()));
    }
    let pool = if stored.chain_pem.trim().is_empty() {
        Vec::new()
    } else {
        ParsedCert::many_from_pem(stored.chain_pem.as_bytes()).map_err(|e| bad(e.to_string()))?
    };
    let roots =
        ParsedCert::many_from_pem(stored.roots_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let path = chain::build_path(&signing, &pool, &roots, SystemTime::now())
        .map_err(|e: PathError| bad(e.to_string()))?;
    Ok(Authority::new(path, roots, key))
}
