//! Rotation steps (prepare, activate, taint, revoke): taken here, each in one store
//! transaction with its audit event, when the store holds the roots; forwarded to the
//! `meshca ca` service (which audits them) in a keyless RA; refused for a plugged-in directory.

use std::time::SystemTime;

use super::own_roots::{sealed_record, OwnRootsError};
use super::state::{CertificateAuthority, Mode};
use crate::audit::{AuditEvent, Outcome};
use crate::authority::{Authority, SelfSignedError};
use crate::cacerts::{self, CacertsMaterial, LoadCacertsError, NamedPem};
use crate::kek::KeyEncryptionKey;
use crate::keys::{self, KeyType};
use crate::remote::{RemoteCa, RemoteError};
use crate::rotation::{AuthorityEntry, AuthoritySet, RotationStep};
use crate::store::{StoreError, TransitionError};
use crate::x509::ParsedCert;
use meshca_pki::time::unix_seconds;
use meshca_proto::meshca::ca::v1 as pb;
use pb::change_authority_request::Step;

/// How a new authority is prepared.
#[derive(Debug)]
pub enum PrepareRequest {
    /// A new self-signed root with a key of this type.
    Generate(KeyType),
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
    Load(#[from] OwnRootsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Who takes a step, once the mode is known.
enum Stepper<'a> {
    Here(&'a KeyEncryptionKey),
    Forward(&'a RemoteCa),
}

impl CertificateAuthority {
    fn stepper(&self) -> Result<Stepper<'_>, RotationError> {
        match &self.inner.mode {
            Mode::OwnRoots { kek, .. } => Ok(Stepper::Here(kek)),
            Mode::Keyless { remote } => Ok(Stepper::Forward(remote)),
            Mode::PluggedIn { .. } => Err(RotationError::ManagedByCacerts),
        }
    }

    /// Records a new authority as `prepared`: its root joins the trust bundle at once; it signs
    /// nothing until activated.
    /// `actor` (method, principal) is recorded in the audit log in the same transaction.
    pub async fn prepare_authority(
        &self,
        request: PrepareRequest,
        actor: (&str, &str),
    ) -> Result<AuthorityEntry, RotationError> {
        let kek = match self.stepper()? {
            Stepper::Here(kek) => kek,
            Stepper::Forward(remote) => {
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
        };
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
        // Recorded as joining the bundle strictly after every root before it, even within the
        // same second: whether an answer held this root is told by that order.
        let joins_at = self.authorities().next_root_since(unix_seconds(now));
        let joins_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(joins_at as u64);
        let record = sealed_record(&authority, kek, source, &key_type, chain_pem, joins_at);
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

    /// Takes `step` on authority `id` in one store transaction with its audit event (in a
    /// keyless RA, through the CA service). `forced_past` names the gates an admin forced the
    /// step past; the audit event records them.
    pub async fn step_authority(
        &self,
        id: &str,
        step: RotationStep,
        actor: (&str, &str),
        forced_past: &[String],
    ) -> Result<AuthorityEntry, RotationError> {
        if let Stepper::Forward(remote) = self.stepper()? {
            let id = id.to_string();
            let step = match step {
                RotationStep::Activate => Step::Activate(id),
                RotationStep::Taint => Step::Taint(id),
                RotationStep::Revoke => Step::Revoke(id),
            };
            return self
                .forward_step_past(remote, step, actor, forced_past)
                .await;
        }
        let (from, to) = (step.from(), step.to());
        let mut details = serde_json::json!({ "from": from.as_str(), "to": to.as_str() });
        if !forced_past.is_empty() {
            details["forced"] = true.into();
            details["forced_past"] = forced_past.into();
        }
        let audit = AuditEvent::new(actor, step.audit_action(), id, Outcome::Success, details);
        self.inner
            .store
            .transition_authority(id, from, to, unix_seconds(SystemTime::now()), &audit)
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
        self.forward_step_past(remote, step, actor, &[]).await
    }

    async fn forward_step_past(
        &self,
        remote: &RemoteCa,
        step: Step,
        actor: (&str, &str),
        forced_past: &[String],
    ) -> Result<AuthorityEntry, RotationError> {
        let (id, set) = remote
            .change_authority(pb::ChangeAuthorityRequest {
                actor: Some(pb::Actor {
                    method: actor.0.to_string(),
                    principal: actor.1.to_string(),
                }),
                step: Some(step),
                forced_past_gates: forced_past.to_vec(),
            })
            .await?;
        self.inner
            .authorities
            .send_if_modified(|current| AuthoritySet::replace_if_changed(current, set));
        self.entry(&id)
    }

    fn entry(&self, id: &str) -> Result<AuthorityEntry, RotationError> {
        self.authorities()
            .get(id)
            .cloned()
            .ok_or_else(|| TransitionError::NotFound(id.to_string()).into())
    }
}
