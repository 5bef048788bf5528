//! A small Kubernetes API client for what meshca needs of a cluster: TokenReview, and
//! list/watch/create/update of core/v1 objects, with a reflector that keeps a local cache of
//! one kind. One place knows how to reach and authenticate to the API server.

pub mod api;
pub mod client;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod objects;
pub mod reflector;

pub use api::{ListParams, WatchStream};
pub use client::KubeClient;
pub use error::{KubeClientError, KubeError};
pub use objects::{
    ConfigMap, Namespace, NamespaceStatus, ObjectList, ObjectMeta, Resource, Status, WatchEvent,
};
pub use reflector::{ObjectKey, Reflector, ReflectorSettings, Snapshot};
