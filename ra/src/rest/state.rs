//! What every handler shares: the CA, the trust bundle and how far it has reached, who may
//! call, and the audit records of what callers did.

use std::collections::HashSet;
use std::sync::Arc;

use meshca_ca::audit::{AuditEvent, Outcome};
use meshca_ca::CertificateAuthority;
use serde_json::json;

use super::callers::{Actor, TokenConfigError, TokenTable};
use super::error::ApiError;
use super::failed_auth::FailedAuthLimit;
use crate::config::{RestConfig, RestRole, RotationConfig};
use crate::root_configmap::RootCertPublisher;
use crate::trust::deliveries::AgentDeliveries;
use crate::trust::TrustBundles;

/// Everything the handlers share.
#[derive(Clone, Debug)]
pub struct RestState {
    pub ca: CertificateAuthority,
    pub bundles: TrustBundles,
    /// meshca agents on every replica's trust-bundle streams.
    pub agents: AgentDeliveries,
    /// The rotation gates' settings.
    pub rotation: RotationConfig,
    /// The `istio-ca-root-cert` publisher, when meshca keeps those ConfigMaps.
    pub root_configmaps: Option<Arc<RootCertPublisher>>,
    /// `rest.failed_auth_limit` (none until set).
    pub failed_auth: FailedAuthLimit,
    pub(crate) tokens: Arc<TokenTable>,
    pub(super) admins: Arc<HashSet<String>>,
    pub(super) auditors: Arc<HashSet<String>>,
}

// === impl RestState ===

impl RestState {
    pub fn new(
        config: &RestConfig,
        ca: CertificateAuthority,
        bundles: TrustBundles,
        agents: AgentDeliveries,
    ) -> Result<Self, TokenConfigError> {
        Ok(Self {
            ca,
            bundles,
            agents,
            rotation: RotationConfig::default(),
            root_configmaps: None,
            failed_auth: FailedAuthLimit::default(),
            tokens: Arc::new(TokenTable::new(&config.tokens)?),
            admins: Arc::new(config.admins.iter().cloned().collect()),
            auditors: Arc::new(config.auditors.iter().cloned().collect()),
        })
    }
}

impl RestState {
    /// The role `rest.admins` / `rest.auditors` give a client certificate's SPIFFE id.
    pub fn role_of_spiffe_id(&self, spiffe_id: &str) -> Option<RestRole> {
        if self.admins.contains(spiffe_id) {
            Some(RestRole::Admin)
        } else if self.auditors.contains(spiffe_id) {
            Some(RestRole::Auditor)
        } else {
            None
        }
    }

    /// Appends an audit event without holding up the response (used for denials, which an
    /// attacker controls the rate of).
    pub fn audit_in_background(&self, event: AuditEvent) {
        let store = self.ca.store().clone();
        tokio::spawn(async move {
            if let Err(error) = store.append_audit(&event).await {
                tracing::error!(%error, "recording an audit event failed");
            }
        });
    }

    /// Records what an admin did (or tried), before answering.
    pub async fn audit_action(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        result: Result<serde_json::Value, &ApiError>,
    ) {
        let (outcome, details) = match result {
            Ok(details) => (Outcome::Success, details),
            Err(e) => (
                Outcome::Refused,
                json!({ "status": e.status.as_u16(), "reason": e.message }),
            ),
        };
        let event = AuditEvent::new(
            (actor.method, &actor.principal),
            action,
            target,
            outcome,
            details,
        );
        if let Err(error) = self.ca.store().append_audit(&event).await {
            tracing::error!(%error, action, target, "recording an admin action in the audit log failed");
        }
    }
}
