//! Starting the CA: open the store, then pick the mode from the configuration: keyless in
//! front of `meshca ca` when `ca.remote_addr` is set, a plugged-in `cacerts` directory when one
//! is configured, else the store's own roots (bootstrapping a self-signed one on first start).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::own_roots::{self, OwnRootsError};
use super::plugged_in;
use super::state::{CertificateAuthority, Inner, Mode};
use crate::cacerts::{self, LoadCacertsError};
use crate::commit::IssuanceCommitter;
use crate::config::{CaConfig, StoreConfig};
use crate::identity::TrustDomain;
use crate::kek::{KekError, KeyEncryptionKey};
use crate::metrics::CaMetrics;
use crate::profile::TtlPolicy;
use crate::remote::{RemoteCa, RemoteSetupError};
use crate::rotation::AuthoritySet;
use crate::store::{Store, StoreError};
use meshca_pki::time::unix_seconds;

/// File name of the generated key-encryption key inside the data dir.
pub const DEFAULT_KEK_FILE: &str = "key-encryption-key";

/// How often counter rows of long-expired buckets are dropped.
const COUNTER_PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// What the CA needs to start: the shared top-level keys plus its own sections.
#[derive(Clone, Debug)]
pub struct CaSettings {
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub ca: CaConfig,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cacerts(#[from] LoadCacertsError),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    OwnRoots(#[from] OwnRootsError),
    #[error("{path}: configured key_encryption_key_file does not exist")]
    KekMissing { path: PathBuf },
    #[error(transparent)]
    Remote(#[from] RemoteSetupError),
}

impl CertificateAuthority {
    /// Opens the store and starts in the mode the configuration asks for.
    pub async fn start(settings: &CaSettings) -> Result<Self, StartError> {
        let url = settings
            .store
            .url
            .clone()
            .unwrap_or_else(|| Store::default_sqlite_url(&settings.data_dir));
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&settings.data_dir)
                .map_err(|e| StartError::Store(StoreError::Connect(sqlx::Error::Io(e))))?;
        }
        let store = Store::connect(&url).await?;
        match store.connection_encrypted().await {
            Ok(Some(false)) => tracing::warn!(
                "the PostgreSQL connection is not encrypted; add sslmode=verify-full (with \
                 sslrootcert) to store.url unless the network is trusted"
            ),
            Ok(Some(true)) => tracing::info!("the PostgreSQL connection uses TLS"),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether the store connection is encrypted")
            }
        }
        if settings.ca.remote_addr.is_some() {
            return Self::start_keyless(settings, store).await;
        }
        Self::start_with_store(settings, store).await
    }

    /// A keyless RA's CA: no key and no key-encryption key, only the store (for the REST API's
    /// records, revocations and audit log) and the `meshca ca` service, whose authority stream
    /// it waits for before returning. Nothing is recorded here, so no writer starts.
    pub async fn start_keyless(settings: &CaSettings, store: Store) -> Result<Self, StartError> {
        let remote = RemoteCa::connect(&settings.ca)?;
        tracing::info!(
            addr = remote.addr(),
            "keyless: signing through the CA service"
        );
        let (set, stream) = remote.first_snapshot().await;
        let authorities = Arc::new(watch::channel(Arc::new(set)).0);
        tokio::spawn(
            remote
                .clone()
                .follow_authorities(stream, Arc::downgrade(&authorities)),
        );
        Ok(Self::assemble(
            settings,
            store,
            authorities,
            Mode::Keyless { remote },
            Arc::default(),
        ))
    }

    /// A CA that signs here, from the plugged-in directory when configured (with a poller that
    /// reloads it), else from the store's own roots.
    pub async fn start_with_store(settings: &CaSettings, store: Store) -> Result<Self, StartError> {
        let metrics = Arc::new(CaMetrics::default());
        let Some(dir) = &settings.ca.cacerts_dir else {
            let kek = load_kek(settings)?;
            own_roots::load_or_bootstrap(
                &store,
                &kek,
                &settings.trust_domain,
                settings.ca.self_signed_key_type,
            )
            .await?;
            let set = own_roots::load_authority_set(&store, &kek).await?;
            let authorities = Arc::new(watch::channel(Arc::new(set)).0);
            let committer = IssuanceCommitter::start(&store, metrics.clone());
            let ca = Self::assemble(
                settings,
                store,
                authorities,
                Mode::OwnRoots { kek, committer },
                metrics,
            );
            tokio::spawn(own_roots::follow_store(Arc::downgrade(&ca.inner)));
            return Ok(ca);
        };
        // Fingerprint first: a swap during the load is then seen as a change.
        let loaded_fingerprint = cacerts::fingerprint(dir);
        let now = SystemTime::now();
        let authority = cacerts::load_dir(dir, now)?;
        tracing::info!(
            dir = %dir.display(),
            authority = %authority.id(),
            subject = %authority.signing_cert().subject_string(),
            "loaded plugged-in CA"
        );
        let set = AuthoritySet::single(authority, "cacerts", unix_seconds(now));
        let authorities = Arc::new(watch::channel(Arc::new(set)).0);
        plugged_in::spawn_reloader(
            dir.clone(),
            loaded_fingerprint,
            settings.ca.cacerts_poll_interval,
            settings.ca.cacerts_on_change,
            Arc::downgrade(&authorities),
            metrics.clone(),
        );
        let committer = IssuanceCommitter::start(&store, metrics.clone());
        Ok(Self::assemble(
            settings,
            store,
            authorities,
            Mode::PluggedIn { committer },
            metrics,
        ))
    }

    fn assemble(
        settings: &CaSettings,
        store: Store,
        authorities: Arc<watch::Sender<Arc<AuthoritySet>>>,
        mode: Mode,
        metrics: Arc<CaMetrics>,
    ) -> Self {
        if mode.committer().is_some() {
            tokio::spawn(prune_counters(store.clone()));
        }
        Self {
            inner: Arc::new(Inner {
                trust_domain: settings.trust_domain.clone(),
                ttl: TtlPolicy {
                    default_ttl: settings.ca.default_ttl,
                    max_ttl: settings.ca.max_ttl,
                },
                authorities,
                mode,
                store,
                metrics,
            }),
        }
    }
}

/// Keeps the rotation counters to live buckets (every replica may: the deletes are idempotent).
async fn prune_counters(store: Store) {
    let mut ticker = tokio::time::interval(COUNTER_PRUNE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if store.is_closed() {
            return;
        }
        if let Err(error) = store.prune_counters(unix_seconds(SystemTime::now())).await {
            tracing::warn!(%error, "pruning expired rotation counters failed; retrying later");
        }
    }
}

fn load_kek(settings: &CaSettings) -> Result<KeyEncryptionKey, StartError> {
    match &settings.ca.key_encryption_key_file {
        Some(path) if !path.exists() => Err(StartError::KekMissing { path: path.clone() }),
        Some(path) => Ok(KeyEncryptionKey::load(path)?),
        None => Ok(KeyEncryptionKey::load_or_generate(
            &settings.data_dir.join(DEFAULT_KEK_FILE),
        )?),
    }
}
