//! meshca's registration authority: Istio's CreateCertificate over TLS gRPC, caller
//! authentication (renewal certs, Athenz X.509, Kubernetes JWTs) and node authorization of
//! `ImpersonatedIdentity`, per-caller rate limits, CSR checks, the published trust bundle and its stream, the
//! observability endpoints, the admin/audit REST API with the rotation gates and the web
//! console on top of it, and the root ConfigMaps (through `meshca-kube`, which also backs
//! TokenReview and the pod caches).

pub mod auth;
pub mod config;
pub mod console;
pub mod dev;
pub mod jwk;
pub mod limits;
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
/// TLS plumbing shared with the standalone CA service, which lives in the CA crate.
pub use meshca_ca::tls;
pub use root_configmap::{
    publisher_client, ConfigMapStatus, RootCertPublisher, RootConfigMapSettings,
    RootConfigMapSetupError,
};
pub use server::{RaSettings, RunningRa, ServeError};
