//! What `istio-ca-root-cert` should look like, decided without I/O: which namespaces get one,
//! what to write given the ConfigMap that is there, and the status counts derived from the
//! caches. Pure functions, so the rules are tested directly.

use std::collections::{BTreeMap, HashMap};

use meshca_kube::{ConfigMap, Namespace, ObjectMap, ObjectMeta, Snapshot};

/// The ConfigMap istio-agent mounts (istiod's `PILOT_CA_CERT_CONFIGMAP` default; istio-csr's
/// fixed name).
pub const ROOT_CONFIGMAP_NAME: &str = "istio-ca-root-cert";
/// The data key holding the PEM bundle: istio-agent reads `/var/run/secrets/istio/root-cert.pem`.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The label both istiod and istio-csr put on it.
pub const CONFIG_LABEL: (&str, &str) = ("istio.io/config", "true");

/// Namespaces istiod's namespace controller leaves alone (Istio's injection ignore list minus
/// `kube-system`, which it serves so ztunnel can run there). istio-csr skips none; following
/// istiod keeps a meshca cluster's ConfigMaps where an istiod cluster's would be.
pub const SKIPPED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];

/// What to do about one namespace's ConfigMap.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Holds the desired bundle and the label already: no write.
    UpToDate,
    Create(ConfigMap),
    /// The existing object (its resourceVersion included) with the bundle and label set.
    Update(ConfigMap),
}

/// What the caches say about distribution, as of the last change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigMapStatus {
    /// Both caches have completed a first list; before that the counts mean nothing.
    pub synced: bool,
    /// Namespaces that should have the ConfigMap: selected, not skipped, not terminating.
    pub namespaces: usize,
    /// Of those, how many hold exactly the desired bundle (and the label).
    pub up_to_date: usize,
    /// Root fingerprint (lowercase hex SHA-256 of the DER) → how many of those namespaces'
    /// ConfigMaps carry that root.
    pub roots: BTreeMap<String, usize>,
}

/// Root fingerprints per distinct bundle text: thousands of ConfigMaps share a handful of
/// bundles, so each is parsed once rather than on every status refresh.
#[derive(Debug, Default)]
pub(super) struct FingerprintCache {
    by_pem: HashMap<String, Vec<String>>,
}

/// Whether `namespace` should carry the ConfigMap (the label selector was applied by the
/// API server already).
pub fn wants_configmap(namespace: &Namespace) -> bool {
    !SKIPPED_NAMESPACES.contains(&namespace.metadata.name.as_str()) && !namespace.is_terminating()
}

/// istiod's rule for the data (only `root-cert.pem` is meshca's; other keys stay) and
/// istio-csr's for the label (repaired if missing or changed; other labels stay).
pub fn plan(namespace: &str, existing: Option<&ConfigMap>, desired_pem: &str) -> Plan {
    let Some(existing) = existing else {
        return Plan::Create(ConfigMap {
            metadata: ObjectMeta {
                name: ROOT_CONFIGMAP_NAME.into(),
                namespace: Some(namespace.into()),
                labels: [(CONFIG_LABEL.0.to_string(), CONFIG_LABEL.1.to_string())].into(),
                ..ObjectMeta::default()
            },
            data: [(ROOT_CERT_KEY.to_string(), desired_pem.to_string())].into(),
            ..ConfigMap::default()
        });
    };
    if is_up_to_date(existing, desired_pem) {
        return Plan::UpToDate;
    }
    let mut updated = existing.clone();
    updated
        .data
        .insert(ROOT_CERT_KEY.into(), desired_pem.to_string());
    updated
        .metadata
        .labels
        .insert(CONFIG_LABEL.0.into(), CONFIG_LABEL.1.into());
    Plan::Update(updated)
}

fn is_up_to_date(configmap: &ConfigMap, desired_pem: &str) -> bool {
    configmap.data.get(ROOT_CERT_KEY).map(String::as_str) == Some(desired_pem)
        && configmap
            .metadata
            .labels
            .get(CONFIG_LABEL.0)
            .map(String::as_str)
            == Some(CONFIG_LABEL.1)
}

/// Counts over the namespaces that want the ConfigMap.
pub(super) fn compute_status(
    namespaces: &Snapshot<ObjectMap<Namespace>>,
    configmaps: &Snapshot<ObjectMap<ConfigMap>>,
    desired_pem: &str,
    fingerprints: &mut FingerprintCache,
) -> ConfigMapStatus {
    let mut status = ConfigMapStatus {
        synced: namespaces.synced && configmaps.synced,
        ..ConfigMapStatus::default()
    };
    let mut seen_bundles = HashMap::new();
    for namespace in namespaces.objects.values().filter(|n| wants_configmap(n)) {
        status.namespaces += 1;
        let name = &namespace.metadata.name;
        let Some(configmap) = configmaps.get(name, ROOT_CONFIGMAP_NAME) else {
            continue;
        };
        if !desired_pem.is_empty() && is_up_to_date(configmap, desired_pem) {
            status.up_to_date += 1;
        }
        let Some(pem) = configmap.data.get(ROOT_CERT_KEY) else {
            continue;
        };
        let roots = fingerprints
            .by_pem
            .entry(pem.clone())
            .or_insert_with(|| root_fingerprints(pem));
        for root in roots.iter() {
            *status.roots.entry(root.clone()).or_default() += 1;
        }
        seen_bundles.insert(pem.clone(), ());
    }
    fingerprints
        .by_pem
        .retain(|pem, _| seen_bundles.contains_key(pem));
    status
}

/// SHA-256 of each certificate's DER in a PEM bundle, as meshca names roots everywhere. Text
/// that is not PEM (a user's edit) holds no roots.
pub fn root_fingerprints(pem_text: &str) -> Vec<String> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| meshca_pki::keys::sha256_hex(p.contents()))
        .collect()
}

// === impl ConfigMapStatus ===

impl ConfigMapStatus {
    /// How many namespaces' ConfigMaps carry the root with this fingerprint.
    pub fn holding(&self, root_fingerprint: &str) -> usize {
        self.roots.get(root_fingerprint).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(data: &[(&str, &str)], labels: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: ROOT_CONFIGMAP_NAME.into(),
                namespace: Some("web".into()),
                resource_version: Some("17".into()),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..ObjectMeta::default()
            },
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_missing_configmap_is_created_with_the_bundle_and_label() {
        let Plan::Create(cm) = plan("web", None, "PEM") else {
            panic!("should create")
        };
        assert_eq!(cm.metadata.name, "istio-ca-root-cert");
        assert_eq!(cm.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(cm.metadata.labels["istio.io/config"], "true");
        assert_eq!(cm.data.len(), 1);
        assert_eq!(cm.data["root-cert.pem"], "PEM");
    }

    #[test]
    fn an_equal_configmap_is_left_alone() {
        let cm = existing(
            &[("root-cert.pem", "PEM"), ("extra", "x")],
            &[("istio.io/config", "true"), ("team", "a")],
        );
        assert_eq!(plan("web", Some(&cm), "PEM"), Plan::UpToDate);
    }

    #[test]
    fn an_update_keeps_other_keys_labels_and_the_version() {
        let cm = existing(
            &[("root-cert.pem", "OLD"), ("extra", "x")],
            &[("team", "a")],
        );
        let Plan::Update(updated) = plan("web", Some(&cm), "NEW") else {
            panic!("should update")
        };
        assert_eq!(updated.data["root-cert.pem"], "NEW");
        assert_eq!(updated.data["extra"], "x");
        assert_eq!(updated.metadata.labels["team"], "a");
        assert_eq!(updated.metadata.labels["istio.io/config"], "true");
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("17"));
        // Only the label was wrong: still an update.
        let unlabelled = existing(&[("root-cert.pem", "NEW")], &[("istio.io/config", "no")]);
        assert!(matches!(
            plan("web", Some(&unlabelled), "NEW"),
            Plan::Update(_)
        ));
    }

    #[test]
    fn system_and_terminating_namespaces_are_skipped_but_kube_system_is_not() {
        let ns = |name: &str, phase: &str| Namespace {
            metadata: ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            },
            status: meshca_kube::objects::NamespaceStatus {
                phase: Some(phase.into()),
                ..Default::default()
            },
            ..Namespace::default()
        };
        for skipped in SKIPPED_NAMESPACES {
            assert!(!wants_configmap(&ns(skipped, "Active")), "{skipped}");
        }
        assert!(wants_configmap(&ns("kube-system", "Active")));
        assert!(wants_configmap(&ns("default", "Active")));
        assert!(!wants_configmap(&ns("default", "Terminating")));
    }

    #[test]
    fn fingerprints_are_of_certificates_only() {
        let cert = pem::Pem::new("CERTIFICATE", vec![1, 2, 3]);
        let key = pem::Pem::new("PRIVATE KEY", vec![4, 5, 6]);
        let text = pem::encode_many(&[cert, key]);
        assert_eq!(
            root_fingerprints(&text),
            [meshca_pki::keys::sha256_hex(&[1, 2, 3])]
        );
        assert!(root_fingerprints("edited by hand").is_empty());
    }
}
