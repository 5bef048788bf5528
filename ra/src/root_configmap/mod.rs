//! Root distribution to Istio sidecars: the `istio-ca-root-cert` ConfigMap (`root-cert.pem` =
//! the trust bundle, label `istio.io/config: "true"`) kept in every selected namespace, as
//! istiod's namespace controller and cert-manager's istio-csr keep it, and a status of how far
//! a bundle has spread, read from the caches.

mod controller;
mod plan;
mod queue;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{AuthConfig, IstioConfig};
use meshca_kube::{KubeClient, KubeClientError};

pub use controller::{ReconcileError, RootConfigMapSettings, RECONCILE_BACKOFF};
pub use plan::{
    plan, root_fingerprints, wants_configmap, ConfigMapStatus, Plan, CONFIG_LABEL, ROOT_CERT_KEY,
    ROOT_CONFIGMAP_NAME, SKIPPED_NAMESPACES,
};

/// The `[istio]` section could not be turned into a running publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootConfigMapSetupError {
    #[error("istio.cluster_id {0:?} is not one of auth.clusters")]
    UnknownCluster(String),
    #[error("auth.clusters.{cluster}: {source}")]
    Client {
        cluster: String,
        source: KubeClientError,
    },
}

/// Publishes the trust bundle to every selected namespace. Every replica runs one so each can
/// report status; only the one whose `leader` flag is true writes. Dropping it stops it.
#[derive(Debug)]
pub struct RootCertPublisher {
    status: watch::Receiver<Arc<ConfigMapStatus>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl RootConfigMapSettings ===

impl RootConfigMapSettings {
    pub fn from_config(istio: &IstioConfig) -> Self {
        Self {
            namespace_selector: istio
                .configmap_namespace_selector
                .clone()
                .filter(|s| !s.trim().is_empty()),
            resync: istio.configmap_resync,
        }
    }
}

/// The client for `istio.cluster_id`: that cluster's `api_server_url`, `api_server_ca_file`,
/// `api_server_token_file` and `request_timeout` (in-cluster defaults when unset).
pub fn publisher_client(
    istio: &IstioConfig,
    auth: &AuthConfig,
) -> Result<KubeClient, RootConfigMapSetupError> {
    let cluster = auth
        .clusters
        .get(&istio.cluster_id)
        .ok_or_else(|| RootConfigMapSetupError::UnknownCluster(istio.cluster_id.clone()))?;
    KubeClient::new(&cluster.api_server()).map_err(|source| RootConfigMapSetupError::Client {
        cluster: istio.cluster_id.clone(),
        source,
    })
}

// === impl RootCertPublisher ===

impl RootCertPublisher {
    /// Starts the namespace and ConfigMap caches and the reconcile loop. `desired` carries the
    /// bundle PEM (nothing is written while it is empty); `leader` says whether this replica
    /// may write (the caller runs the election).
    pub fn start(
        client: KubeClient,
        settings: RootConfigMapSettings,
        desired: watch::Receiver<Arc<str>>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let (status_tx, status) = watch::channel(Arc::new(ConfigMapStatus::default()));
        let task = tokio::spawn(controller::run(
            client, settings, desired, leader, status_tx,
        ));
        Self { status, task }
    }

    /// The counts as of the last cache change; no API call.
    pub fn status(&self) -> ConfigMapStatus {
        self.status.borrow().as_ref().clone()
    }

    /// How many namespaces' ConfigMaps carry the root with this fingerprint (lowercase hex
    /// SHA-256 of its DER).
    pub fn holding(&self, root_fingerprint: &str) -> usize {
        self.status.borrow().holding(root_fingerprint)
    }

    /// Every status change, e.g. to export it as metrics or wait for a rollout.
    pub fn subscribe_status(&self) -> watch::Receiver<Arc<ConfigMapStatus>> {
        self.status.clone()
    }
}

impl Drop for RootCertPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
