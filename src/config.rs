//! The config file every subcommand shares: TOML, overridden by `MESHCA_<SECTION>_<KEY>`
//! environment variables, overridden by flags. Each crate owns its section's type; this module
//! only layers the sources and names what was wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshca_agent::config::AgentConfig;
use meshca_ca::{CaConfig, CaSettings, StoreConfig, TrustDomain};
use meshca_ra::config::{RotationConfig, TrustConfig};
use meshca_ra::{AuthConfig, GrpcConfig, IstioConfig, MetricsConfig, RestConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Environment variables that start with `MESHCA_` but are not config keys: they configure
/// the CLI or the test suite, so they get no "unknown variable" warning.
const NON_CONFIG_ENV: &[&str] = &[
    "MESHCA_CONFIG",
    "MESHCA_LOG",
    "MESHCA_LOG_FORMAT",
    "MESHCA_TEST_POSTGRES_URL",
    "MESHCA_ADMIN_URL",
    "MESHCA_ADMIN_TOKEN",
    "MESHCA_ADMIN_CA",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshcaConfig {
    /// SPIFFE trust domain of every identity meshca issues.
    pub trust_domain: String,
    /// State lives here: the SQLite store, the generated key-encryption key, dev credentials.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub ca: CaConfig,
    pub grpc: GrpcConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub rest: RestConfig,
    pub trust: TrustConfig,
    pub rotation: RotationConfig,
    pub istio: IstioConfig,
    pub agent: AgentConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("{env}: cannot use {value:?} for {key}: {message}")]
    Env {
        env: String,
        key: String,
        value: String,
        message: String,
    },
}

/// A config key and how its values are spelled.
#[derive(Clone, Debug)]
struct KnownKey {
    path: Vec<String>,
    kind: ValueKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    Text,
    Bool,
    Integer,
    List,
    Table,
}

/// The outcome of loading: the config and anything worth a warning.
#[derive(Debug)]
pub struct Loaded {
    pub config: MeshcaConfig,
    pub warnings: Vec<String>,
}

// === impl MeshcaConfig ===

impl Default for MeshcaConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            data_dir: PathBuf::from("/var/lib/meshca"),
            store: StoreConfig::default(),
            ca: CaConfig::default(),
            grpc: GrpcConfig::default(),
            metrics: MetricsConfig::default(),
            auth: AuthConfig::default(),
            rest: RestConfig::default(),
            trust: TrustConfig::default(),
            rotation: RotationConfig::default(),
            istio: IstioConfig::default(),
            agent: AgentConfig::default(),
        }
    }
}

impl MeshcaConfig {
    pub fn ca_settings(&self) -> Result<CaSettings, ConfigError> {
        let trust_domain =
            TrustDomain::new(&self.trust_domain).map_err(|e| ConfigError::Invalid {
                origin: "config".into(),
                key: "trust_domain".into(),
                message: e.to_string(),
            })?;
        Ok(CaSettings {
            trust_domain,
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            ca: self.ca.clone(),
        })
    }

    /// The effective config as TOML, for `meshca config`. Passwords in URLs are redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.store.url = shown.store.url.as_deref().map(meshca_ca::store::redact_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// What `--dev` changes, below the file, the environment and flags: state in `./meshca-dev`
/// and every listener on loopback (serving certs then carry loopback IP SANs).
fn dev_defaults() -> Value {
    serde_json::json!({
        "data_dir": "./meshca-dev",
        "grpc": { "listen": "127.0.0.1:15012", "ip_sans": ["127.0.0.1", "::1"] },
        "metrics": { "listen": "127.0.0.1:15014" },
    })
}

/// Layers defaults < (`--dev` defaults) < file < environment < `flags` (dotted key → value).
pub fn load(
    file: Option<&Path>,
    dev: bool,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, Value)],
) -> Result<Loaded, ConfigError> {
    let known = known_keys();
    let mut warnings = Vec::new();
    let (file_tree, origin) = match file {
        Some(path) => (read_file(path)?, path.display().to_string()),
        None => (Value::Object(Map::new()), "config".to_string()),
    };
    let mut tree = if dev {
        dev_defaults()
    } else {
        Value::Object(Map::new())
    };
    merge(&mut tree, file_tree);

    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("MESHCA_"))
        .collect();
    env.sort();
    for (name, raw) in env {
        if NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        let Some(key) = known.get(&name) else {
            warnings.push(format!("ignoring unknown environment variable {name}"));
            continue;
        };
        let dotted = key.path.join(".");
        let value = parse_env_value(key.kind, &raw).map_err(|message| ConfigError::Env {
            env: name.clone(),
            key: dotted.clone(),
            value: raw.clone(),
            message,
        })?;
        set_path(&mut tree, &key.path, value);
    }
    for (dotted, value) in flags {
        let path: Vec<String> = dotted.split('.').map(str::to_string).collect();
        set_path(&mut tree, &path, value.clone());
    }

    let config: MeshcaConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid {
            origin: origin.clone(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: e.into_inner().to_string(),
        }
    })?;
    // Validate what serde cannot.
    config.ca_settings().map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
            origin: origin.clone(),
            key,
            message,
        },
        other => other,
    })?;
    if config.ca.remote_addr.is_some() {
        let key_material = [
            ("ca.cacerts_dir", config.ca.cacerts_dir.is_some()),
            (
                "ca.key_encryption_key_file",
                config.ca.key_encryption_key_file.is_some(),
            ),
        ];
        if let Some((key, _)) = key_material.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Invalid {
                origin,
                key: (*key).into(),
                message: "ca.remote_addr makes this a keyless RA: key material belongs to the \
                          `meshca ca` service it points at"
                    .into(),
            });
        }
    }
    if config.ca.default_ttl > config.ca.max_ttl {
        return Err(ConfigError::Invalid {
            origin,
            key: "ca.default_ttl".into(),
            message: format!(
                "default TTL {} is above ca.max_ttl {}",
                meshca_ca::profile::format_duration(config.ca.default_ttl),
                meshca_ca::profile::format_duration(config.ca.max_ttl)
            ),
        });
    }
    Ok(Loaded { config, warnings })
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Toml {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    serde_json::to_value(parsed).map_err(|e| ConfigError::Toml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every key the config knows, by environment variable name. Derived from the defaults
/// serialized as JSON (where unset options are `null`), so a new field is a new variable.
fn known_keys() -> BTreeMap<String, KnownKey> {
    let defaults = serde_json::to_value(MeshcaConfig::default()).expect("defaults serialize");
    let mut out = BTreeMap::new();
    collect_keys(&defaults, &mut Vec::new(), &mut out);
    out
}

fn collect_keys(value: &Value, path: &mut Vec<String>, out: &mut BTreeMap<String, KnownKey>) {
    let kind = match value {
        // A section: its fields are the keys. An empty object is a table-valued key.
        Value::Object(fields) if !fields.is_empty() => {
            for (name, child) in fields {
                path.push(name.clone());
                collect_keys(child, path, out);
                path.pop();
            }
            return;
        }
        Value::Object(_) => ValueKind::Table,
        Value::Bool(_) => ValueKind::Bool,
        Value::Number(_) => ValueKind::Integer,
        Value::Array(_) => ValueKind::List,
        Value::String(_) | Value::Null => ValueKind::Text,
    };
    let env = format!("MESHCA_{}", path.join("_").to_ascii_uppercase());
    out.insert(
        env,
        KnownKey {
            path: path.clone(),
            kind,
        },
    );
}

fn parse_env_value(kind: ValueKind, raw: &str) -> Result<Value, String> {
    match kind {
        ValueKind::Text => Ok(Value::String(raw.to_string())),
        ValueKind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Value::Bool(true)),
            "false" | "0" | "no" => Ok(Value::Bool(false)),
            _ => Err("expected true or false".into()),
        },
        ValueKind::Integer => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| "expected an integer".into()),
        ValueKind::List => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        // `a=b,c=d`, the spelling Kubernetes users know from label selectors.
        ValueKind::Table => {
            let mut map = Map::new();
            for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("expected key=value pairs, got {pair:?}"))?;
                map.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
            }
            Ok(Value::Object(map))
        }
    }
}

/// Deep-merges `overlay` into `base`: tables merge, everything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (k, v) in overlay {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for (i, segment) in path.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("just made an object");
        if i == path.len() - 1 {
            map.insert(segment.clone(), value);
            return;
        }
        node = map
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_docs() {
        let loaded = load(None, false, env(&[]), &[]).unwrap();
        let c = loaded.config;
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.ca.default_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.ca.max_ttl, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(c.ca.self_signed_key_type, meshca_ca::KeyType::EcP256);
        assert_eq!(c.store.url, None);
    }

    #[test]
    fn file_then_env_then_flags() {
        let f = write(
            "trust_domain = \"file.example\"\n[ca]\ndefault_ttl = \"30s\"\nmax_ttl = \"15m\"\ncacerts_dir = \"/from/file\"\n",
        );
        let loaded = load(
            Some(f.path()),
            false,
            env(&[
                ("MESHCA_TRUST_DOMAIN", "env.example"),
                ("MESHCA_CA_CACERTS_DIR", "/from/env"),
                ("MESHCA_CA_SELF_SIGNED_KEY_TYPE", "rsa-4096"),
                ("MESHCA_STORE_URL", "postgres://u@h/db"),
                ("PATH", "/usr/bin"),
            ]),
            &[("trust_domain", Value::String("flag.example".into()))],
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.trust_domain, "flag.example");
        assert_eq!(c.ca.cacerts_dir, Some(PathBuf::from("/from/env")));
        assert_eq!(c.ca.default_ttl, Duration::from_secs(30));
        assert_eq!(c.ca.max_ttl, Duration::from_secs(15 * 60));
        assert_eq!(c.ca.self_signed_key_type, meshca_ca::KeyType::Rsa4096);
        assert_eq!(c.store.url.as_deref(), Some("postgres://u@h/db"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn a_keyless_ra_refuses_key_material() {
        let loaded = load(
            None,
            false,
            env(&[
                (
                    "MESHCA_CA_REMOTE_ADDR",
                    "https://meshca-ca.meshca.svc:15013",
                ),
                (
                    "MESHCA_CA_ALLOWED_RAS",
                    "spiffe://a/ns/x/sa/ra,spiffe://a/ns/y/sa/ra",
                ),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(
            loaded.config.ca.remote_addr.as_deref(),
            Some("https://meshca-ca.meshca.svc:15013")
        );
        assert_eq!(loaded.config.ca.allowed_ras.len(), 2);
        let err = load(
            None,
            false,
            env(&[
                ("MESHCA_CA_REMOTE_ADDR", "https://ca:15013"),
                ("MESHCA_CA_CACERTS_DIR", "/etc/cacerts"),
            ]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ca.cacerts_dir") && err.contains("keyless"),
            "{err}"
        );
    }

    #[test]
    fn durations_accept_days() {
        let loaded = load(None, false, env(&[("MESHCA_CA_MAX_TTL", "90d")]), &[]).unwrap();
        assert_eq!(loaded.config.ca.max_ttl, Duration::from_secs(90 * 86400));
        let err = load(None, false, env(&[("MESHCA_CA_MAX_TTL", "ninety")]), &[]).unwrap_err();
        assert!(err.to_string().contains("ca.max_ttl"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it() {
        let f = write("[ca]\ncacert_dir = \"/typo\"\n");
        let err = load(Some(f.path()), false, env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cacert_dir"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        let f = write("trust_domian = \"x\"\n");
        let err = load(Some(f.path()), false, env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("trust_domian"), "{err}");
    }

    #[test]
    fn unknown_env_var_only_warns() {
        let loaded = load(
            None,
            false,
            env(&[
                ("MESHCA_CA_CACERT_DIR", "/typo"),
                ("MESHCA_TEST_POSTGRES_URL", "postgres://x"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(
            loaded.warnings,
            vec!["ignoring unknown environment variable MESHCA_CA_CACERT_DIR".to_string()]
        );
    }

    #[test]
    fn env_names_come_from_known_keys_not_underscore_splitting() {
        let known = known_keys();
        let key = &known["MESHCA_CA_KEY_ENCRYPTION_KEY_FILE"];
        assert_eq!(key.path, vec!["ca", "key_encryption_key_file"]);
        assert!(known.contains_key("MESHCA_CA_SELF_SIGNED_KEY_TYPE"));
        assert!(known.contains_key("MESHCA_DATA_DIR"));
    }

    #[test]
    fn invalid_values_are_named() {
        let err = load(
            None,
            false,
            env(&[("MESHCA_TRUST_DOMAIN", "Bad Domain")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("trust_domain"), "{err}");
        let err = load(
            None,
            false,
            env(&[("MESHCA_CA_SELF_SIGNED_KEY_TYPE", "dsa")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ca.self_signed_key_type"), "{err}");
        let err = load(
            None,
            false,
            env(&[
                ("MESHCA_CA_DEFAULT_TTL", "100d"),
                ("MESHCA_CA_MAX_TTL", "90d"),
            ]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ca.default_ttl"), "{err}");
    }

    #[test]
    fn dev_defaults_sit_below_file_and_env() {
        let f = write("[grpc]\ndns_names = [\"dev.example\"]\n");
        let loaded = load(
            Some(f.path()),
            true,
            env(&[("MESHCA_DATA_DIR", "/tmp/elsewhere")]),
            &[],
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.data_dir, PathBuf::from("/tmp/elsewhere"));
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:15012");
        assert_eq!(c.grpc.dns_names, vec!["dev.example".to_string()]);
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:15014");
        let plain = load(None, false, env(&[]), &[]).unwrap().config;
        assert_eq!(plain.grpc.listen.to_string(), "0.0.0.0:15012");
    }

    #[test]
    fn nested_sections_map_to_env_names() {
        let loaded = load(
            None,
            false,
            env(&[
                ("MESHCA_AUTH_ATHENZ_CA_BUNDLE", "/etc/athenz/ca.pem"),
                (
                    "MESHCA_AUTH_ATHENZ_NAMESPACE_MAP",
                    "sports.api=sports, media=media-ns",
                ),
                ("MESHCA_AUTH_CLUSTERS_KUBERNETES_MODE", "jwks"),
                (
                    "MESHCA_AUTH_CLUSTERS_KUBERNETES_ISSUER",
                    "https://issuer.example",
                ),
                ("MESHCA_GRPC_DNS_NAMES", "a.example, b.example"),
            ]),
            &[],
        )
        .unwrap();
        let c = loaded.config;
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(
            c.auth.athenz.ca_bundle,
            Some(PathBuf::from("/etc/athenz/ca.pem"))
        );
        assert_eq!(c.auth.athenz.namespace_map["sports.api"], "sports");
        let k8s = &c.auth.clusters["Kubernetes"];
        assert_eq!(k8s.mode, meshca_ra::JwtMode::Jwks);
        assert_eq!(k8s.issuer.as_deref(), Some("https://issuer.example"));
        assert_eq!(c.grpc.dns_names, vec!["a.example", "b.example"]);
    }

    #[test]
    fn debug_and_display_hide_passwords() {
        let loaded = load(
            None,
            false,
            env(&[("MESHCA_STORE_URL", "postgres://meshca:topsecret@db/meshca")]),
            &[],
        )
        .unwrap();
        assert!(!format!("{:?}", loaded.config).contains("topsecret"));
        assert!(!loaded.config.to_redacted_toml().contains("topsecret"));
    }
}
