//! A small Kubernetes API client for what meshca needs of a cluster: TokenReview, and
//! list/watch/create/update of core/v1 objects, with a reflector that keeps a local cache of
//! one kind (the objects, or an index of them such as the pods by node). One place knows how
//! to reach and authenticate to the API server.

pub mod api;
pub mod client;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod objects;
pub mod pods;
pub mod reflector;

pub use api::{ListParams, WatchStream};
pub use client::{Endpoint, KubeClient, IN_CLUSTER_CA_FILE, IN_CLUSTER_TOKEN_FILE};
pub use error::{KubeClientError, KubeError};
pub use objects::{
    ConfigMap, Namespace, NamespaceStatus, ObjectList, ObjectMeta, Resource, Status, WatchEvent,
};
pub use pods::{Pod, PodFacts, PodIndex};
pub use reflector::{Cache, ObjectKey, ObjectMap, Reflector, ReflectorSettings, Snapshot};
