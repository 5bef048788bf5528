//! The core/v1 objects meshca reads and writes (Namespace, ConfigMap), the list and watch-event
//! envelopes around them, and the API server's `Status`. Fields meshca does not use are kept
//! verbatim, so an update (a PUT of the whole object) never drops what others wrote.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A kind served under `/api/v1`: enough for the client to build its paths and for a
/// reflector to key its cache. A later pod cache only needs another impl.
pub trait Resource:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// `kind` of one object, e.g. `ConfigMap`.
    const KIND: &'static str;
    /// The URL segment, e.g. `configmaps`.
    const PLURAL: &'static str;
    /// Namespaced kinds live under `/api/v1/namespaces/{ns}/…`; the others at `/api/v1/…`.
    const NAMESPACED: bool;

    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
}

/// `metadata` of any object. `rest` keeps what meshca does not model (annotations,
/// ownerReferences, managedFields…) so a PUT sends it back unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Opaque to clients; sent back on update so the server can refuse a stale write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `v1.Namespace`; only its phase matters here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NamespaceStatus,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`; nothing new may be created in a terminating namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `v1.ConfigMap`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `NamespaceList`, `ConfigMapList`…: the items and the version to watch from.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound = "R: Resource")]
pub struct ObjectList<R> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<R>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
    /// Set when the server has more pages (the request had a `limit`).
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

/// One line of a watch stream.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<R> {
    Added(R),
    Modified(R),
    Deleted(R),
    /// No change, only a newer version to resume from (sent with `allowWatchBookmarks`).
    Bookmark {
        resource_version: String,
    },
    /// The server ended the watch for a reason, e.g. 410 Expired: the version is compacted.
    Error(Status),
}

/// The API server's `Status`: how every failure is described, and what an ERROR event carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    /// Machine-readable: `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `Forbidden`…
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusCause {
    /// e.g. `NamespaceTerminating`.
    #[serde(default, rename = "type")]
    pub cause_type: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub field: String,
}

/// The cause the NamespaceLifecycle admission plugin attaches when it refuses a create.
pub const NAMESPACE_TERMINATING_CAUSE: &str = "NamespaceTerminating";
/// `status.phase` of a namespace being deleted.
pub const PHASE_TERMINATING: &str = "Terminating";

/// A watch line before its object is typed: the object is decoded by `type`.
#[derive(Debug, Deserialize)]
pub(super) struct RawWatchEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub object: Value,
}

// === impl Namespace ===

impl Namespace {
    /// Terminating namespaces refuse new objects; writing there only makes errors.
    pub fn is_terminating(&self) -> bool {
        self.status.phase.as_deref() == Some(PHASE_TERMINATING)
    }
}

impl Resource for Namespace {
    const KIND: &'static str = "Namespace";
    const PLURAL: &'static str = "namespaces";
    const NAMESPACED: bool = false;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// === impl ConfigMap ===

impl Resource for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    const PLURAL: &'static str = "configmaps";
    const NAMESPACED: bool = true;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// === impl Status ===

impl Status {
    /// True when admission refused a create because the namespace is being deleted.
    pub fn is_namespace_terminating(&self) -> bool {
        self.details.as_ref().is_some_and(|d| {
            d.causes
                .iter()
                .any(|c| c.cause_type == NAMESPACE_TERMINATING_CAUSE)
        })
    }
}

// === impl RawWatchEvent ===

impl RawWatchEvent {
    /// Types the object by the event's `type`. Bookmarks carry only `metadata.resourceVersion`.
    pub(super) fn into_event<R: Resource>(self) -> Result<WatchEvent<R>, serde_json::Error> {
        Ok(match self.event_type.as_str() {
            "ADDED" => WatchEvent::Added(serde_json::from_value(self.object)?),
            "MODIFIED" => WatchEvent::Modified(serde_json::from_value(self.object)?),
            "DELETED" => WatchEvent::Deleted(serde_json::from_value(self.object)?),
            "BOOKMARK" => {
                let meta: ObjectMeta = serde_json::from_value(
                    self.object.get("metadata").cloned().unwrap_or_default(),
                )?;
                WatchEvent::Bookmark {
                    resource_version: meta.resource_version.unwrap_or_default(),
                }
            }
            // "ERROR", and anything newer this client does not know, ends the watch.
            _ => WatchEvent::Error(serde_json::from_value(self.object)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let original = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "istio-ca-root-cert",
                "namespace": "default",
                "resourceVersion": "42",
                "annotations": {"owner": "someone"},
                "labels": {"istio.io/config": "true"},
            },
            "data": {"root-cert.pem": "PEM"},
            "binaryData": {"blob": "AAAA"},
            "immutable": false,
        });
        let cm: ConfigMap = serde_json::from_value(original.clone()).unwrap();
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(serde_json::to_value(&cm).unwrap(), original);
    }

    #[test]
    fn watch_lines_are_typed_by_event() {
        let line = json!({"type": "BOOKMARK", "object": {"kind": "Namespace", "metadata": {"resourceVersion": "77"}}});
        let raw: RawWatchEvent = serde_json::from_value(line).unwrap();
        assert_eq!(
            raw.into_event::<Namespace>().unwrap(),
            WatchEvent::Bookmark {
                resource_version: "77".into()
            }
        );
        let line = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410}});
        let raw: RawWatchEvent = serde_json::from_value(line).unwrap();
        let WatchEvent::Error(status) = raw.into_event::<Namespace>().unwrap() else {
            panic!("not an error event");
        };
        assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    }
}
