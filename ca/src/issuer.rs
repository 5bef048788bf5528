//! The certificate authority as a running service: the current authority (published through a
//! `watch`, replaced on reload), the TTL policy, and the store every issuance is recorded in.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spki::SubjectPublicKeyInfoOwned;
use tokio::sync::watch;
use x509_cert::serial_number::SerialNumber;

use crate::audit::{AuditEvent, Outcome};
use crate::authority::{Authority, AuthoritySignError, SelfSignedError};
use crate::cacerts::{self, CacertsMaterial, LoadCacertsError, NamedPem};
use crate::chain::{self, PathError};
use crate::commit::{CommitError, IssuanceCommitter};
use crate::config::{CaConfig, CacertsChange, StoreConfig};
use crate::crl::{self as crl_list, CrlEntry, RevocationReason};
use crate::csr::VerifiedCsr;
use crate::identity::{AuthorityId, Serial, SpiffeId, TrustDomain};
use crate::kek::{KekError, KeyEncryptionKey};
use crate::keys::{self, KeyError, SigningKey};
use crate::profile::{self, TtlError, TtlPolicy};
use crate::remote::{self, RemoteCa, RemoteError, RemoteSetupError};
use crate::rotation::{AuthorityEntry, AuthoritySet, AuthorityState};
use crate::store::{IssuanceRecord, Store, StoreError, StoredAuthority, TransitionError};
use crate::x509::{self, CertTemplate, ParsedCert};
use meshca_pki::time::unix_seconds;
use meshca_proto::meshca::ca::v1 as pb;
use pb::change_authority_request::Step;

/// How often the store is checked for rotation steps taken by another process sharing it, so
/// every replica signs with the same authority within seconds of an activation.
const AUTHORITY_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// File name of the generated key-encryption key inside the data dir.
pub const DEFAULT_KEK_FILE: &str = "key-encryption-key";

/// How often to retry a serial collision before giving up (a collision of random 127-bit
/// serials means the RNG is broken; retrying bounds the damage).
const SERIAL_ATTEMPTS: usize = 3;

/// What the CA needs to start: the shared top-level keys plus its own sections.
#[derive(Clone, Debug)]
pub struct CaSettings {
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub ca: CaConfig,
}

/// Who asked for a certificate, for the issuance record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// `jwt`, `tokenreview`, `athenz`, `renewal`, …
    pub method: String,
    pub principal: String,
    pub peer_address: Option<String>,
    pub cluster_id: Option<String>,
}

#[derive(Debug)]
pub struct IssueRequest<'a> {
    pub csr: &'a VerifiedCsr,
    pub spiffe_id: &'a SpiffeId,
    /// Seconds; ≤ 0 means the default TTL.
    pub requested_ttl_secs: i64,
    pub requester: &'a Requester,
}

/// A certificate that is on record.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub serial: Serial,
    pub leaf_der: Vec<u8>,
    /// Istio's response order: `[leaf, signing cert, intermediates…, root bundle]`, PEM.
    pub chain_pem: Vec<String>,
    pub not_after: SystemTime,
    pub authority_id: AuthorityId,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    #[error(transparent)]
    Ttl(#[from] TtlError),
    #[error("SPIFFE id {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("building the certificate: {0}")]
    Encode(#[from] der::Error),
    #[error(transparent)]
    Sign(#[from] AuthoritySignError),
    #[error(
        "the signing path expired at {}: no certificate can be issued",
        humantime::format_rfc3339_seconds(*.0)
    )]
    NotReady(SystemTime),
    #[error("recording the issuance: {0}")]
    Store(#[source] CommitError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
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
    #[error("generating the self-signed root: {0}")]
    SelfSigned(#[from] SelfSignedError),
    #[error("stored authority {id}: {reason}")]
    StoredAuthority { id: String, reason: String },
    #[error("{path}: configured key_encryption_key_file does not exist")]
    KekMissing { path: PathBuf },
    #[error(transparent)]
    Remote(#[from] RemoteSetupError),
}

/// Counters the metrics endpoint exports.
#[derive(Debug, Default)]
pub struct CaMetrics {
    pub cacerts_reloads: AtomicU64,
    pub cacerts_reload_failures: AtomicU64,
    /// Store transactions that recorded issuances (group commits)…
    pub issuance_commits: AtomicU64,
    /// …and the issuances they recorded: the ratio is the mean batch size.
    pub issuances_committed: AtomicU64,
}

/// The running CA. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    trust_domain: TrustDomain,
    ttl: TtlPolicy,
    authorities: Arc<watch::Sender<Arc<AuthoritySet>>>,
    /// Seals the keys of authorities prepared through the admin API; `None` when a plugged-in
    /// directory manages the authority.
    kek: Option<KeyEncryptionKey>,
    /// Set in a keyless RA: the `meshca ca` service that holds the keys and signs.
    remote: Option<RemoteCa>,
    store: Store,
    /// Group-commits issuance records (see [`crate::commit`]).
    committer: IssuanceCommitter,
    metrics: Arc<CaMetrics>,
}

/// How a new authority is prepared.
#[derive(Debug)]
pub enum PrepareRequest {
    /// A new self-signed root with a key of this type.
    Generate(keys::KeyType),
    /// An uploaded plug-in set, validated like a `cacerts` directory.
    Upload(CacertsMaterial),
}

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    #[error(
        "authorities are managed by the plugged-in cacerts directory; change the directory instead"
    )]
    ManagedByCacerts,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("authority {0} already exists")]
    Exists(String),
    #[error(transparent)]
    Invalid(#[from] LoadCacertsError),
    #[error("generating the root: {0}")]
    Generate(#[from] SelfSignedError),
    #[error(transparent)]
    Load(#[from] StartError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

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

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Opens the store and loads the authority: the plugged-in directory when configured (and
    /// a poller that reloads it), else the self-signed root on record, else a new one.
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

    /// A keyless RA's CA: no key and no key-encryption key, only the store (for records,
    /// revocations and the audit log) and the `meshca ca` service, whose authority stream it
    /// waits for before returning.
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
        Ok(Self {
            inner: Arc::new(Inner {
                trust_domain: settings.trust_domain.clone(),
                ttl: TtlPolicy {
                    default_ttl: settings.ca.default_ttl,
                    max_ttl: settings.ca.max_ttl,
                },
                authorities,
                kek: None,
                remote: Some(remote),
                // Keyless: the CA service records issuances; this one stays idle.
                committer: IssuanceCommitter::start(store.clone(), Arc::default()),
                store,
                metrics: Arc::default(),
            }),
        })
    }

    pub async fn start_with_store(settings: &CaSettings, store: Store) -> Result<Self, StartError> {
        let metrics = Arc::new(CaMetrics::default());
        let now = SystemTime::now();
        let receiver = match &settings.ca.cacerts_dir {
            Some(dir) => {
                // Fingerprint first: a swap during the load is then seen as a change.
                let loaded_fingerprint = cacerts::fingerprint(dir);
                let authority = cacerts::load_dir(dir, now)?;
                tracing::info!(
                    dir = %dir.display(),
                    authority = %authority.id(),
                    subject = %authority.signing_cert().subject_string(),
                    "loaded plugged-in CA"
                );
                let tx = Arc::new(
                    watch::channel(Arc::new(AuthoritySet::single(
                        authority,
                        "cacerts",
                        unix_seconds(now),
                    )))
                    .0,
                );
                spawn_cacerts_reloader(
                    dir.clone(),
                    loaded_fingerprint,
                    settings.ca.cacerts_poll_interval,
                    settings.ca.cacerts_on_change,
                    Arc::downgrade(&tx),
                    metrics.clone(),
                );
                (tx, None)
            }
            None => {
                let kek = load_kek(settings)?;
                load_or_bootstrap_self_signed(
                    &store,
                    &kek,
                    &settings.trust_domain,
                    settings.ca.self_signed_key_type,
                )
                .await?;
                let set = load_authority_set(&store, &kek).await?;
                (Arc::new(watch::channel(Arc::new(set)).0), Some(kek))
            }
        };
        let (authorities, kek) = receiver;
        let follows_store = kek.is_some();
        let ca = Self {
            inner: Arc::new(Inner {
                trust_domain: settings.trust_domain.clone(),
                ttl: TtlPolicy {
                    default_ttl: settings.ca.default_ttl,
                    max_ttl: settings.ca.max_ttl,
                },
                authorities,
                kek,
                remote: None,
                committer: IssuanceCommitter::start(store.clone(), metrics.clone()),
                store,
                metrics,
            }),
        };
        if follows_store {
            tokio::spawn(follow_authority_changes(
                Arc::downgrade(&ca.inner),
                AUTHORITY_POLL_INTERVAL,
            ));
        }
        Ok(ca)
    }

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

    /// The CA service a keyless RA signs through; `None` when the keys are here.
    pub fn remote(&self) -> Option<&RemoteCa> {
        self.inner.remote.as_ref()
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

    /// Re-reads the authorities from the store and publishes them if anything changed (another
    /// replica's rotation step, or this one's).
    pub async fn refresh_authorities(&self) -> Result<(), RotationError> {
        let Some(kek) = &self.inner.kek else {
            return Ok(());
        };
        let fresh = load_authority_set(&self.inner.store, kek).await?;
        remote::publish(&self.inner.authorities, fresh);
        Ok(())
    }

    /// Records a new authority as `prepared`: its root joins the trust bundle at once; it signs
    /// nothing until activated.
    /// `actor` (method, principal) is recorded in the audit log in the same transaction.
    pub async fn prepare_authority(
        &self,
        request: PrepareRequest,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        if let Some(remote) = &self.inner.remote {
            let step = match request {
                PrepareRequest::Generate(key_type) => Step::Generate(pb::GenerateAuthority {
                    key_type: key_type.to_string(),
                }),
                PrepareRequest::Upload(material) => Step::Upload(pb::UploadAuthority {
                    ca_cert_pem: material.signing_cert.text(),
                    ca_key_pem: material.key.text(),
                    root_cert_pem: material.roots.text(),
                    cert_chain_pem: material
                        .chain
                        .as_ref()
                        .map(NamedPem::text)
                        .unwrap_or_default(),
                }),
            };
            return self.forward_step(remote, step, actor).await;
        }
        let kek = self
            .inner
            .kek
            .as_ref()
            .ok_or(RotationError::ManagedByCacerts)?;
        let now = SystemTime::now();
        let (authority, source, key_type, chain_pem) = match request {
            PrepareRequest::Generate(key_type) => (
                Authority::generate_self_signed(&self.inner.trust_domain, key_type, now)?,
                "generated",
                key_type.to_string(),
                String::new(),
            ),
            PrepareRequest::Upload(material) => {
                let authority = cacerts::validate(&material, now)?;
                let key_type = authority.key_description().to_string();
                let chain_pem = authority
                    .intermediates()
                    .iter()
                    .map(ParsedCert::to_pem)
                    .collect();
                (authority, "uploaded", key_type, chain_pem)
            }
        };
        let id = authority.id().to_string();
        if self.authorities().get(&id).is_some() {
            return Err(RotationError::Exists(id));
        }
        let record = sealed_record(&authority, kek, source, &key_type, chain_pem, now);
        let audit = AuditEvent::new(
            actor,
            "authority.prepare",
            &id,
            Outcome::Success,
            serde_json::json!({
                "state": "prepared",
                "source": source,
                "key_type": key_type,
                "root_fingerprint_sha256": keys::sha256_hex(authority.root().der()),
            }),
        );
        match self
            .inner
            .store
            .insert_prepared_authority(&record, &audit)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Query(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                return Err(RotationError::Exists(id))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(authority = %id, source, "authority prepared; its root joins the trust bundle");
        self.refresh_authorities().await?;
        self.entry(&id)
    }

    /// `prepared` → `active` (the active one becomes `old`).
    pub async fn activate_authority(
        &self,
        id: &str,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        self.transition(id, AuthorityState::Prepared, AuthorityState::Active, actor)
            .await
    }

    /// `old` → `tainted`: workloads holding its certificates rotate now.
    pub async fn taint_authority(
        &self,
        id: &str,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        self.transition(id, AuthorityState::Old, AuthorityState::Tainted, actor)
            .await
    }

    /// `tainted` → `revoked`: its root leaves the trust bundle.
    pub async fn revoke_authority(
        &self,
        id: &str,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        self.transition(id, AuthorityState::Tainted, AuthorityState::Revoked, actor)
            .await
    }

    async fn transition(
        &self,
        id: &str,
        from: AuthorityState,
        to: AuthorityState,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        if let Some(remote) = &self.inner.remote {
            let id = id.to_string();
            let step = match to {
                AuthorityState::Active => Step::Activate(id),
                AuthorityState::Tainted => Step::Taint(id),
                _ => Step::Revoke(id),
            };
            return self.forward_step(remote, step, actor).await;
        }
        if self.inner.kek.is_none() {
            return Err(RotationError::ManagedByCacerts);
        }
        let action = match to {
            AuthorityState::Active => "authority.activate",
            AuthorityState::Tainted => "authority.taint",
            _ => "authority.revoke",
        };
        let audit = AuditEvent::new(
            actor,
            action,
            id,
            Outcome::Success,
            serde_json::json!({ "from": from.as_str(), "to": to.as_str() }),
        );
        self.inner
            .store
            .transition_authority(
                id,
                from.as_str(),
                to.as_str(),
                unix_seconds(SystemTime::now()),
                &audit,
            )
            .await?;
        tracing::info!(authority = %id, from = %from, to = %to, "authority state changed");
        self.refresh_authorities().await?;
        self.entry(id)
    }

    /// A rotation step taken by the CA service (which audits it); its answer is published here
    /// at once, ahead of the authority stream.
    async fn forward_step(
        &self,
        remote: &RemoteCa,
        step: Step,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        let (id, set) = remote
            .change_authority(pb::ChangeAuthorityRequest {
                actor: Some(pb::Actor {
                    method: actor.0.to_string(),
                    principal: actor.1.to_string(),
                }),
                step: Some(step),
            })
            .await?;
        remote::publish(&self.inner.authorities, set);
        self.entry(&id)
    }

    /// A CRL of every certificate revoked under `authority_id` (default: the active
    /// authority), signed by that authority.
    pub async fn crl(&self, authority_id: Option<&str>) -> Result<Vec<u8>, CrlError> {
        if let Some(remote) = &self.inner.remote {
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

    fn entry(&self, id: &str) -> Result<AuthorityEntry, RotationError> {
        self.authorities()
            .get(id)
            .cloned()
            .ok_or_else(|| TransitionError::NotFound(id.to_string()).into())
    }

    /// Whether issuances can be recorded (the group-commit writer is alive).
    pub fn records_issuances(&self) -> bool {
        self.inner.committer.is_running()
    }

    /// Counts a certificate request as on its way, from before its authentication until the
    /// guard is dropped; the group commit waits a moment for such callers when many are coming.
    pub fn admit(&self) -> crate::commit::Admission {
        self.inner.committer.admit()
    }

    /// Signs a workload certificate for `spiffe_id` and records it; the certificate is
    /// returned only once its record is committed.
    pub async fn issue(&self, req: IssueRequest<'_>) -> Result<IssuedCertificate, IssueError> {
        if let Some(remote) = &self.inner.remote {
            // The service checks CSR, identity and TTL again under its own policy.
            return Ok(remote
                .sign(pb::SignRequest {
                    csr_der: req.csr.der().to_vec(),
                    spiffe_id: req.spiffe_id.to_string(),
                    requested_ttl_seconds: req.requested_ttl_secs,
                    requester: Some(pb::Requester {
                        method: req.requester.method.clone(),
                        principal: req.requester.principal.clone(),
                        peer_address: req.requester.peer_address.clone().unwrap_or_default(),
                        cluster_id: req.requester.cluster_id.clone().unwrap_or_default(),
                    }),
                })
                .await?);
        }
        let ttl = self.inner.ttl.resolve(req.requested_ttl_secs)?;
        if req.spiffe_id.trust_domain() != self.inner.trust_domain {
            return Err(IssueError::ForeignTrustDomain {
                id: req.spiffe_id.to_string(),
                trust_domain: self.inner.trust_domain.to_string(),
            });
        }
        let (namespace, service_account) = match req.spiffe_id.kubernetes_workload() {
            Some((ns, sa)) => (Some(ns.to_string()), Some(sa.to_string())),
            None => (None, None),
        };
        let subject = RecordSubject {
            spiffe_id: req.spiffe_id.to_string(),
            namespace,
            service_account,
            spki: req.csr.public_key(),
        };
        self.sign_and_record(
            ttl,
            subject,
            req.requester,
            |authority, serial, validity| {
                profile::workload_template(
                    req.csr,
                    req.spiffe_id,
                    serial,
                    validity,
                    authority.key_id(),
                )
            },
        )
        .await
    }

    /// A TLS serving certificate for meshca's own endpoints (DNS and IP SANs, serverAuth and
    /// clientAuth), recorded like every other certificate.
    pub async fn issue_server_certificate(
        &self,
        spki: &SubjectPublicKeyInfoOwned,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
        ttl: Duration,
        principal: &str,
    ) -> Result<IssuedCertificate, IssueError> {
        if let Some(remote) = &self.inner.remote {
            return Ok(remote
                .serving_certificate(pb::ServingCertificateRequest {
                    subject_public_key_info_der: keys::spki_der(spki),
                    dns_names: dns_names.to_vec(),
                    ip_addresses: ip_addrs.iter().map(IpAddr::to_string).collect(),
                    ttl_seconds: ttl.as_secs() as i64,
                })
                .await?);
        }
        let subject = RecordSubject {
            spiffe_id: String::new(),
            namespace: None,
            service_account: None,
            spki,
        };
        let requester = Requester {
            method: "internal".into(),
            principal: principal.into(),
            peer_address: None,
            cluster_id: None,
        };
        self.sign_and_record(ttl, subject, &requester, |authority, serial, validity| {
            profile::server_template(
                spki,
                dns_names,
                ip_addrs,
                serial,
                validity,
                authority.key_id(),
            )
        })
        .await
    }

    /// Signs with the current authority and commits the record; a serial collision (the unique
    /// index) signs again with a new serial.
    async fn sign_and_record(
        &self,
        ttl: Duration,
        subject: RecordSubject<'_>,
        requester: &Requester,
        template: impl Fn(
            &Authority,
            SerialNumber,
            (SystemTime, SystemTime),
        ) -> Result<CertTemplate, der::Error>,
    ) -> Result<IssuedCertificate, IssueError> {
        let authority = self.current_authority();
        let now = SystemTime::now();
        if authority.path_not_after() <= now {
            return Err(IssueError::NotReady(authority.path_not_after()));
        }
        let validity = profile::leaf_validity(now, ttl, authority.path_not_after());
        let key_hash = keys::sha256_hex(&keys::spki_der(subject.spki));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let serial_number = x509::new_serial();
            let serial = Serial::from_be_bytes(serial_number.as_bytes());
            let leaf_der = authority.sign(template(&authority, serial_number, validity)?)?;
            let record = IssuanceRecord {
                serial: serial.to_hex(),
                spiffe_id: subject.spiffe_id.clone(),
                trust_domain: self.inner.trust_domain.to_string(),
                namespace: subject.namespace.clone(),
                service_account: subject.service_account.clone(),
                not_before: unix_seconds(validity.0),
                not_after: unix_seconds(validity.1),
                issued_at: unix_seconds(now),
                authority_id: authority.id().to_string(),
                requester_method: requester.method.clone(),
                requester_principal: requester.principal.clone(),
                peer_address: requester.peer_address.clone(),
                cluster_id: requester.cluster_id.clone(),
                public_key_sha256: key_hash.clone(),
                cert_der: leaf_der.clone(),
            };
            let audit = AuditEvent::new(
                (&requester.method, &requester.principal),
                "certificate.issue",
                &record.serial,
                Outcome::Success,
                serde_json::json!({
                    "spiffe_id": record.spiffe_id,
                    "authority": record.authority_id,
                    "not_after": record.not_after,
                    "peer_address": record.peer_address,
                    "cluster_id": record.cluster_id,
                }),
            );
            match self.inner.committer.commit(record, audit).await {
                Ok(()) => {
                    let mut chain_pem = Vec::with_capacity(1 + authority.chain_tail().len());
                    chain_pem.push(pem_cert(&leaf_der));
                    chain_pem.extend(authority.chain_tail().iter().cloned());
                    return Ok(IssuedCertificate {
                        serial,
                        leaf_der,
                        chain_pem,
                        not_after: validity.1,
                        authority_id: authority.id().clone(),
                    });
                }
                Err(CommitError::DuplicateSerial(_)) if attempt < SERIAL_ATTEMPTS => {
                    tracing::warn!(serial = %serial.to_hex(), "serial collision; signing again with a new serial");
                }
                Err(e) => return Err(IssueError::Store(e)),
            }
        }
    }
}

/// What the issuance record says the certificate is for.
struct RecordSubject<'a> {
    spiffe_id: String,
    namespace: Option<String>,
    service_account: Option<String>,
    spki: &'a SubjectPublicKeyInfoOwned,
}

/// The signing hot path without the store: a fresh serial, the workload template, signed.
pub fn sign_leaf(
    authority: &Authority,
    csr: &VerifiedCsr,
    spiffe_id: &SpiffeId,
    validity: (SystemTime, SystemTime),
) -> Result<(Serial, Vec<u8>), IssueError> {
    let serial_number = x509::new_serial();
    let serial = Serial::from_be_bytes(serial_number.as_bytes());
    let template =
        profile::workload_template(csr, spiffe_id, serial_number, validity, authority.key_id())?;
    Ok((serial, authority.sign(template)?))
}

fn pem_cert(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
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

/// The active self-signed authority on record, or a new one. Replicas racing here all insert
/// as `active`; the store's unique index lets one win and the others load the winner.
async fn load_or_bootstrap_self_signed(
    store: &Store,
    kek: &KeyEncryptionKey,
    trust_domain: &TrustDomain,
    key_type: keys::KeyType,
) -> Result<Authority, StartError> {
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
        .ok_or_else(|| StartError::StoredAuthority {
            id: "?".into(),
            reason: "lost the bootstrap race but no active authority is on record".into(),
        })?;
    tracing::info!(authority = %winner.id, "another process bootstrapped the root first; using it");
    authority_from_record(&winner, kek)
}

/// Reloads the authorities whenever their ids or states in the store differ from the
/// published set (a cheap query; keys are unsealed only on a change). Ends with the CA.
async fn follow_authority_changes(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
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
fn sealed_record(
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
        roots_pem: authority.root_bundle_pem().to_string(),
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
async fn load_authority_set(
    store: &Store,
    kek: &KeyEncryptionKey,
) -> Result<AuthoritySet, StartError> {
    let mut entries = Vec::new();
    for stored in store.authorities().await? {
        let state =
            AuthorityState::parse(&stored.state).ok_or_else(|| StartError::StoredAuthority {
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
    AuthoritySet::new(entries).ok_or_else(|| StartError::StoredAuthority {
        id: "-".into(),
        reason: "the store does not hold exactly one active authority".into(),
    })
}

/// Rebuilds an authority from its record: unseals the key and re-validates the path.
pub fn authority_from_record(
    stored: &StoredAuthority,
    kek: &KeyEncryptionKey,
) -> Result<Authority, StartError> {
    let bad = |reason: String| StartError::StoredAuthority {
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

/// Polls `dir` and publishes new material when it changes and validates. A bad update is
/// logged and counted, and the previous authority keeps signing.
fn spawn_cacerts_reloader(
    dir: PathBuf,
    mut seen: Vec<u8>,
    interval: Duration,
    on_change: CacertsChange,
    sender: Weak<watch::Sender<Arc<AuthoritySet>>>,
    metrics: Arc<CaMetrics>,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(sender) = sender.upgrade() else {
                return;
            };
            let current = cacerts::fingerprint(&dir);
            if current == seen {
                continue;
            }
            seen = current;
            reload_once(&dir, on_change, &sender, &metrics);
        }
    });
}

fn reload_once(
    dir: &Path,
    on_change: CacertsChange,
    sender: &watch::Sender<Arc<AuthoritySet>>,
    metrics: &CaMetrics,
) {
    match cacerts::load_dir(dir, SystemTime::now()) {
        Ok(authority) => {
            let current = sender.borrow().clone();
            let new_key = authority.id() != current.active().id();
            if new_key && on_change == CacertsChange::Refuse {
                metrics
                    .cacerts_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    dir = %dir.display(),
                    running = %current.active().id(),
                    found = %authority.id(),
                    "plugged-in CA directory now holds a different signing key and \
                     ca.cacerts_on_change is \"refuse\"; still signing with the running one"
                );
                return;
            }
            metrics.cacerts_reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                dir = %dir.display(),
                authority = %authority.id(),
                previous = %current.active().id(),
                "plugged-in CA changed; new issuances use the new material"
            );
            let now = unix_seconds(SystemTime::now());
            sender.send_replace(Arc::new(current.with_new_active(authority, "cacerts", now)));
        }
        Err(error) => {
            metrics
                .cacerts_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                dir = %dir.display(),
                %error,
                "plugged-in CA changed but does not validate; still signing with the previous material"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logged as `error=…`: a time in a log line is RFC 3339, not `SystemTime { tv_sec: … }`.
    #[test]
    fn an_expired_signing_path_is_named_in_rfc3339() {
        let error = IssueError::NotReady(UNIX_EPOCH + Duration::from_secs(1_795_651_200));
        assert_eq!(
            error.to_string(),
            "the signing path expired at 2026-11-26T00:00:00Z: no certificate can be issued"
        );
    }
}
