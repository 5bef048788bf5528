//! A small Kubernetes API client for what meshca needs of a cluster: TokenReview,
//! list/watch/create/update of core/v1 objects, with a reflector that keeps a local cache of
//! one kind (the objects, or an index of them: the pods by node for the RA's node
//! authorization, one node's pods by UID for the agent's workload attestation), and the
//! kubelet's pod list. One place knows how to reach and authenticate to the API server.

pub mod api;
pub mod client;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod local_pods;
pub mod objects;
pub mod pods;
pub mod reflector;

pub use api::{ListParams, WatchStream};
pub use client::{Endpoint, KubeClient, IN_CLUSTER_CA_FILE, IN_CLUSTER_TOKEN_FILE};
pub use error::{KubeClientError, KubeError};
pub use local_pods::{LocalPod, PodsByUid};
pub use objects::{
    ConfigMap, Namespace, NamespaceStatus, ObjectList, ObjectMeta, Resource, Status, WatchEvent,
};
pub use pods::{ContainerStatus, Pod, PodFacts, PodIndex};
pub use reflector::{Cache, ObjectKey, ObjectMap, Reflector, ReflectorSettings, Snapshot};
