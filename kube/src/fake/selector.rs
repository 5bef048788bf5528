//! Label and field selectors as the fake API server evaluates them: the equality-based
//! grammar (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma = and) and the fields each kind indexes
//! (`metadata.name` / `metadata.namespace`, and for pods those of the real pod registry:
//! `spec.nodeName`, `status.phase`…).

use serde_json::Value;

use super::store::Kind;

/// The fields the real pod registry's `ToSelectableFields` offers besides metadata's.
const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

/// A parsed selector; an empty one matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

// === impl Selector ===

impl Selector {
    /// Parses a `labelSelector`; set-based terms (`in (…)`) are not served by this fake.
    pub(crate) fn labels(text: &str) -> Result<Self, String> {
        Self::parse(text, |_| Ok(()))
    }

    /// Parses a `fieldSelector`; the API server refuses fields a kind does not index.
    pub(crate) fn fields(text: &str, kind: Kind) -> Result<Self, String> {
        Self::parse(text, |key| match key {
            "metadata.name" | "metadata.namespace" => Ok(()),
            pod if kind == Kind::Pod && POD_FIELDS.contains(&pod) => Ok(()),
            other => Err(format!("field label not supported: {other}")),
        })
    }

    fn parse(text: &str, check_key: impl Fn(&str) -> Result<(), String>) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains('(') || term.contains(' ') {
                return Err(format!("unable to parse requirement: {term:?}"));
            }
            let requirement = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.into(), v.into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.into(), v.into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.into(), v.into())
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.into())
            } else {
                Requirement::Exists(term.into())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() {
                return Err(format!("unable to parse requirement: {term:?}"));
            }
            check_key(key)?;
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Evaluates against `metadata.labels` of `object`.
    pub(crate) fn matches_labels(&self, object: &Value) -> bool {
        self.matches(|key| {
            object["metadata"]["labels"][key]
                .as_str()
                .map(str::to_string)
        })
    }

    /// Evaluates against the fields of `object` named by the (already checked) keys. As in
    /// the real field sets every indexed field has a value, empty when unset: `spec.nodeName=`
    /// selects the unscheduled pods.
    pub(crate) fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|key| {
            let value = key.split('.').fold(object, |v, part| &v[part]);
            Some(match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                // hostNetwork is false unless a pod asks for it.
                _ if key == "spec.hostNetwork" => "false".to_string(),
                _ => String::new(),
            })
        })
    }

    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_and_existence() {
        let ns = json!({"metadata": {"name": "web", "labels": {"env": "prod", "mesh": "on"}}});
        for (selector, expected) in [
            ("", true),
            ("env=prod", true),
            ("env==prod,mesh", true),
            ("env!=prod", false),
            ("env!=dev", true),
            ("!mesh", false),
            ("team", false),
        ] {
            assert_eq!(
                Selector::labels(selector).unwrap().matches_labels(&ns),
                expected,
                "{selector}"
            );
        }
        assert!(Selector::labels("env in (prod)").is_err());
    }

    #[test]
    fn fields_are_the_indexed_ones() {
        let cm = json!({"metadata": {"name": "istio-ca-root-cert", "namespace": "web"}});
        let fields = |text| Selector::fields(text, Kind::ConfigMap);
        assert!(fields("metadata.name=istio-ca-root-cert")
            .unwrap()
            .matches_fields(&cm));
        assert!(!fields("metadata.namespace!=web")
            .unwrap()
            .matches_fields(&cm));
        assert!(fields("data.x=1").is_err());
        assert!(fields("spec.nodeName=a").is_err());
    }

    #[test]
    fn pod_fields_are_empty_when_unset() {
        let pending = json!({"metadata": {"name": "p", "namespace": "web"},
                             "spec": {"serviceAccountName": "web"},
                             "status": {"phase": "Pending"}});
        let running = json!({"metadata": {"name": "q", "namespace": "web"},
                             "spec": {"nodeName": "node-a", "serviceAccountName": "web"},
                             "status": {"phase": "Running", "podIP": "10.244.0.2"}});
        for (selector, on_pending, on_running) in [
            ("spec.nodeName=node-a", false, true),
            ("spec.nodeName=", true, false),
            ("spec.nodeName!=", false, true),
            (
                "status.phase=Running,spec.serviceAccountName=web",
                false,
                true,
            ),
            ("spec.hostNetwork=false", true, true),
            ("status.podIP=10.244.0.2", false, true),
        ] {
            let s = Selector::fields(selector, Kind::Pod).unwrap();
            assert_eq!(s.matches_fields(&pending), on_pending, "{selector}");
            assert_eq!(s.matches_fields(&running), on_running, "{selector}");
        }
        assert!(Selector::fields("spec.containers=x", Kind::Pod).is_err());
    }
}
