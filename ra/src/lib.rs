//! meshca's registration authority: Istio's CreateCertificate over TLS gRPC, caller
//! authentication (renewal certs, Athenz X.509, Kubernetes JWTs), CSR checks, and the
//! observability endpoints, and the admin/audit REST API.

pub mod auth;
pub mod config;
pub mod dev;
pub mod jwk;
pub mod kube;
pub mod metrics;
pub mod rest;
pub mod root_configmap;
pub mod server;
pub mod service;
pub mod trust;

pub use config::{
    AthenzConfig, AuthConfig, ClusterConfig, GrpcConfig, IstioConfig, JwtMode, MetricsConfig,
    RestConfig, RestRole, RestToken,
};
pub use kube::{KubeClient, KubeClientError};
/// TLS plumbing shared with the standalone CA service, which lives in the CA crate.
pub use meshca_ca::tls;
pub use root_configmap::{
    publisher_client, ConfigMapStatus, RootCertPublisher, RootConfigMapSettings,
    RootConfigMapSetupError,
};
pub use server::{RaSettings, RunningRa, ServeError};
