//! The `unix` attestation mode: `agent.unix_rules` give a process on the node a workload
//! identity by its uid, gid and executable, as selectors of SPIRE's unix workload attestor do.
//! Owns the rule config, its validation against the trust domain, the first-match resolver and
//! the `/proc/<pid>/exe` reader.

use std::path::{Path, PathBuf};

use meshca_pki::identity::IdentityError;
use meshca_pki::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use super::workload::{PeerCredentials, WorkloadId, WorkloadIdError};

/// One `[[agent.unix_rules]]` entry as written:
///
/// ```toml
/// [[agent.unix_rules]]
/// uid = 1337
/// path = "/usr/local/bin/envoy"
/// namespace = "ingress"
/// service_account = "gateway"
///
/// [[agent.unix_rules]]
/// gid = 2000
/// spiffe_id = "spiffe://cluster.local/ns/db/sa/backup"
/// ```
///
/// Deserializing settles which identity the rule names; `validate_rules` checks the rest
/// against the trust domain and names the rule that is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawUnixRule", into = "RawUnixRule")]
pub struct UnixRuleConfig {
    pub matcher: UnixMatcher,
    pub target: UnixTarget,
}

/// What a peer must have for a rule to apply: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnixMatcher {
    /// The effective uid at `connect(2)`.
    pub uid: Option<u32>,
    /// The effective (primary) gid at `connect(2)`; supplementary groups are not consulted.
    pub gid: Option<u32>,
    /// The executable as `/proc/<pid>/exe` resolves it. That is the path inside the process's
    /// own mount namespace, so any container with a binary at that path matches too: pair it
    /// with `uid` to pin a binary on the host.
    pub path: Option<PathBuf>,
}

/// The identity a rule grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnixTarget {
    /// `namespace` and `service_account`.
    Workload {
        namespace: String,
        service_account: String,
    },
    /// `spiffe_id`, spelled out; it must still be `spiffe://<td>/ns/<ns>/sa/<sa>` in the agent's
    /// trust domain, since that is all the RA issues.
    SpiffeId(SpiffeId),
}

/// A rule that passed `validate_rules`: it has a matcher (an empty one would match every
/// process) and names a valid Kubernetes identity. Only `validate_rules` builds one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixRule {
    matcher: UnixMatcher,
    workload: WorkloadId,
}

/// Why a rule's identity fields do not name exactly one identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleTargetError {
    #[error("set either namespace + service_account or spiffe_id, not both")]
    Both,
    #[error("no identity: set namespace + service_account, or spiffe_id")]
    Missing,
    #[error("{missing} is missing: namespace and service_account are set together")]
    Incomplete { missing: &'static str },
    #[error("spiffe_id: {0}")]
    SpiffeId(#[from] IdentityError),
}

/// Why `agent.unix_rules` cannot be used, naming the first rule that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnixRulesError {
    #[error("agent.unix_rules[{index}] would match every process: set uid or gid (and path)")]
    NoMatcher { index: usize },
    #[error(
        "agent.unix_rules[{index}] matches only a path: add a uid or gid (a process can exec \
         that program while holding another's connection, or place a file at that path in \
         its own mount namespace)"
    )]
    PathAlone { index: usize },
    #[error(
        "agent.unix_rules[{index}].path {path:?} is not absolute (it is compared with the \
         resolved /proc/<pid>/exe)"
    )]
    RelativePath { index: usize, path: PathBuf },
    #[error(
        "agent.unix_rules[{index}].spiffe_id {id} is outside the agent's trust domain \
         {trust_domain}"
    )]
    ForeignTrustDomain {
        index: usize,
        id: SpiffeId,
        trust_domain: TrustDomain,
    },
    #[error(
        "agent.unix_rules[{index}].spiffe_id {id} is not spiffe://<trust domain>/ns/<namespace>\
         /sa/<service account>, the only shape the RA issues"
    )]
    NotWorkload { index: usize, id: SpiffeId },
    #[error("agent.unix_rules[{index}]: {source}")]
    Name {
        index: usize,
        source: WorkloadIdError,
    },
}

/// The config's flat spelling; `UnixRuleConfig` turns its identity fields into `UnixTarget`.
#[derive(Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUnixRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<String>,
}

/// Checks every rule against `trust_domain` and returns them ready for `resolve`, in order.
pub fn validate_rules(
    rules: &[UnixRuleConfig],
    trust_domain: &TrustDomain,
) -> Result<Vec<UnixRule>, UnixRulesError> {
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| validate_rule(index, rule, trust_domain))
        .collect()
}

fn validate_rule(
    index: usize,
    rule: &UnixRuleConfig,
    trust_domain: &TrustDomain,
) -> Result<UnixRule, UnixRulesError> {
    let matcher = &rule.matcher;
    if matcher.uid.is_none() && matcher.gid.is_none() {
        return Err(match matcher.path {
            None => UnixRulesError::NoMatcher { index },
            Some(_) => UnixRulesError::PathAlone { index },
        });
    }
    if let Some(path) = matcher.path.as_ref().filter(|p| !p.is_absolute()) {
        return Err(UnixRulesError::RelativePath {
            index,
            path: path.clone(),
        });
    }
    let workload = match &rule.target {
        UnixTarget::Workload {
            namespace,
            service_account,
        } => WorkloadId::new(namespace, service_account),
        UnixTarget::SpiffeId(id) => {
            if !id.is_in(trust_domain) {
                return Err(UnixRulesError::ForeignTrustDomain {
                    index,
                    id: id.clone(),
                    trust_domain: trust_domain.clone(),
                });
            }
            let (namespace, service_account) =
                id.kubernetes_workload()
                    .ok_or_else(|| UnixRulesError::NotWorkload {
                        index,
                        id: id.clone(),
                    })?;
            WorkloadId::new(namespace, service_account)
        }
    }
    .map_err(|source| UnixRulesError::Name { index, source })?;
    Ok(UnixRule {
        matcher: matcher.clone(),
        workload,
    })
}

/// The identity of the first rule `peer` (running `exe`, when known) matches, as SPIRE picks
/// the entry whose selectors the workload has; `None` when no rule does.
pub fn resolve(
    rules: &[UnixRule],
    peer: &PeerCredentials,
    exe: Option<&Path>,
) -> Option<WorkloadId> {
    rules
        .iter()
        .find(|rule| rule.matcher.matches(peer, exe))
        .map(|rule| rule.workload.clone())
}

/// The executable of `pid`: `<proc_root>/<pid>/exe` resolved. `None` when it cannot be read (the
/// process exited, or the agent may not trace it) or is not an absolute path. A binary replaced
/// or deleted since it started reads as `<path> (deleted)`, which no rule's path equals.
pub fn read_exe(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .ok()
        .filter(|exe| exe.is_absolute())
}

// === impl UnixRuleConfig ===

impl TryFrom<RawUnixRule> for UnixRuleConfig {
    type Error = RuleTargetError;

    fn try_from(raw: RawUnixRule) -> Result<Self, Self::Error> {
        let target = match (raw.namespace, raw.service_account, raw.spiffe_id) {
            (Some(namespace), Some(service_account), None) => UnixTarget::Workload {
                namespace,
                service_account,
            },
            (None, None, Some(id)) => UnixTarget::SpiffeId(SpiffeId::new(&id)?),
            (None, None, None) => return Err(RuleTargetError::Missing),
            (Some(_), None, None) => {
                return Err(RuleTargetError::Incomplete {
                    missing: "service_account",
                })
            }
            (None, Some(_), None) => {
                return Err(RuleTargetError::Incomplete {
                    missing: "namespace",
                })
            }
            (_, _, Some(_)) => return Err(RuleTargetError::Both),
        };
        Ok(Self {
            matcher: UnixMatcher {
                uid: raw.uid,
                gid: raw.gid,
                path: raw.path,
            },
            target,
        })
    }
}

impl From<UnixRuleConfig> for RawUnixRule {
    fn from(rule: UnixRuleConfig) -> Self {
        let UnixMatcher { uid, gid, path } = rule.matcher;
        let (namespace, service_account, spiffe_id) = match rule.target {
            UnixTarget::Workload {
                namespace,
                service_account,
            } => (Some(namespace), Some(service_account), None),
            UnixTarget::SpiffeId(id) => (None, None, Some(id.to_string())),
        };
        Self {
            uid,
            gid,
            path,
            namespace,
            service_account,
            spiffe_id,
        }
    }
}

// === impl UnixMatcher ===

impl UnixMatcher {
    /// Whether `peer`, running `exe`, has everything set here. A `path` never matches an unknown
    /// executable: a rule that pins a binary must not fall back to its uid or gid alone.
    pub fn matches(&self, peer: &PeerCredentials, exe: Option<&Path>) -> bool {
        self.uid.is_none_or(|uid| uid == peer.uid)
            && self.gid.is_none_or(|gid| gid == peer.gid)
            && self
                .path
                .as_deref()
                .is_none_or(|path| exe.is_some_and(|exe| exe == path))
    }
}

// === impl UnixRule ===

impl UnixRule {
    pub fn matcher(&self) -> &UnixMatcher {
        &self.matcher
    }

    pub fn workload(&self) -> &WorkloadId {
        &self.workload
    }
}

#[cfg(test)]
mod tests {
    use serde::de::value::{Error as ValueError, MapDeserializer};
    use serde::de::{IntoDeserializer, Visitor};
    use serde::Deserializer;

    use super::*;

    /// A config value as TOML would hand it to serde; this crate has no format crate to parse
    /// real TOML with, and the config loader's own tests cover that step.
    #[derive(Clone, Copy)]
    enum Value {
        Int(u32),
        Str(&'static str),
    }

    impl<'de> Deserializer<'de> for Value {
        type Error = ValueError;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            match self {
                Value::Int(n) => visitor.visit_u32(n),
                Value::Str(s) => visitor.visit_borrowed_str(s),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            visitor.visit_some(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
            ignored_any
        }
    }

    impl IntoDeserializer<'_, ValueError> for Value {
        type Deserializer = Self;
        fn into_deserializer(self) -> Self {
            self
        }
    }

    fn parse(fields: &[(&'static str, Value)]) -> Result<UnixRuleConfig, String> {
        let map: MapDeserializer<'_, _, ValueError> = MapDeserializer::new(fields.iter().copied());
        UnixRuleConfig::deserialize(map).map_err(|e| e.to_string())
    }

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    fn rule(matcher: UnixMatcher, namespace: &str, service_account: &str) -> UnixRuleConfig {
        UnixRuleConfig {
            matcher,
            target: UnixTarget::Workload {
                namespace: namespace.into(),
                service_account: service_account.into(),
            },
        }
    }

    fn uid(uid: u32) -> UnixMatcher {
        UnixMatcher {
            uid: Some(uid),
            ..UnixMatcher::default()
        }
    }

    fn peer(uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials {
            pid: Some(4242),
            uid,
            gid,
        }
    }

    fn workload(namespace: &str, service_account: &str) -> Option<WorkloadId> {
        Some(WorkloadId::new(namespace, service_account).unwrap())
    }

    #[test]
    fn config_names_one_identity_per_rule() {
        use Value::{Int, Str};
        let by_name = parse(&[
            ("uid", Int(1337)),
            ("path", Str("/usr/local/bin/envoy")),
            ("namespace", Str("ingress")),
            ("service_account", Str("gateway")),
        ])
        .unwrap();
        assert_eq!(
            by_name,
            rule(
                UnixMatcher {
                    uid: Some(1337),
                    gid: None,
                    path: Some("/usr/local/bin/envoy".into()),
                },
                "ingress",
                "gateway"
            )
        );
        let by_id = parse(&[
            ("gid", Int(2000)),
            ("spiffe_id", Str("spiffe://cluster.local/ns/db/sa/backup")),
        ])
        .unwrap();
        assert_eq!(
            by_id.target,
            UnixTarget::SpiffeId(SpiffeId::new("spiffe://cluster.local/ns/db/sa/backup").unwrap())
        );
        // What was parsed is what is written back.
        for parsed in [by_name, by_id] {
            let written = RawUnixRule::from(parsed.clone());
            assert_eq!(UnixRuleConfig::try_from(written), Ok(parsed));
        }
    }

    #[test]
    fn config_mistakes_are_refused_when_parsed() {
        use Value::{Int, Str};
        let cases: [(&[(&str, Value)], &str); 6] = [
            (
                &[
                    ("uid", Int(0)),
                    ("user", Str("root")),
                    ("spiffe_id", Str("spiffe://td/ns/a/sa/b")),
                ],
                "unknown field `user`",
            ),
            (
                &[
                    ("uid", Int(0)),
                    ("namespace", Str("a")),
                    ("service_account", Str("b")),
                    ("spiffe_id", Str("spiffe://td/ns/a/sa/b")),
                ],
                "not both",
            ),
            (&[("uid", Int(0))], "no identity"),
            (
                &[("uid", Int(0)), ("namespace", Str("a"))],
                "service_account is missing",
            ),
            (
                &[("uid", Int(0)), ("service_account", Str("b"))],
                "namespace is missing",
            ),
            (
                &[("uid", Int(0)), ("spiffe_id", Str("http://td/ns/a/sa/b"))],
                "spiffe_id: SPIFFE id",
            ),
        ];
        for (fields, want) in cases {
            let err = parse(fields).unwrap_err();
            assert!(err.contains(want), "{err:?} does not say {want:?}");
        }
        assert!(parse(&[("uid", Str("root")), ("namespace", Str("a"))]).is_err());
    }

    #[test]
    fn validation_names_the_rule_that_is_wrong() {
        let good = rule(uid(0), "kube-system", "node-agent");
        let spiffe = |id: &str| UnixRuleConfig {
            matcher: uid(0),
            target: UnixTarget::SpiffeId(SpiffeId::new(id).unwrap()),
        };
        let cases = [
            (
                rule(UnixMatcher::default(), "a", "b"),
                "agent.unix_rules[1] would match every process: set uid or gid (and path)",
            ),
            (
                rule(
                    UnixMatcher {
                        path: Some("/usr/local/bin/envoy".into()),
                        ..UnixMatcher::default()
                    },
                    "a",
                    "b",
                ),
                "agent.unix_rules[1] matches only a path: add a uid or gid",
            ),
            (
                rule(
                    UnixMatcher {
                        uid: Some(0),
                        path: Some("bin/envoy".into()),
                        ..UnixMatcher::default()
                    },
                    "a",
                    "b",
                ),
                "agent.unix_rules[1].path \"bin/envoy\" is not absolute (it is compared with the \
                 resolved /proc/<pid>/exe)",
            ),
            (
                spiffe("spiffe://other.org/ns/a/sa/b"),
                "agent.unix_rules[1].spiffe_id spiffe://other.org/ns/a/sa/b is outside the \
                 agent's trust domain cluster.local",
            ),
            (
                spiffe("spiffe://cluster.local/backup"),
                "agent.unix_rules[1].spiffe_id spiffe://cluster.local/backup is not \
                 spiffe://<trust domain>/ns/<namespace>/sa/<service account>, the only shape \
                 the RA issues",
            ),
            (
                spiffe("spiffe://cluster.local/ns/Payments/sa/b"),
                "agent.unix_rules[1]: namespace \"Payments\" is not a Kubernetes namespace name",
            ),
            (
                rule(uid(0), "payments", "Ledger"),
                "agent.unix_rules[1]: service account \"Ledger\" is not a Kubernetes object name",
            ),
        ];
        for (bad, want) in cases {
            let err = validate_rules(&[good.clone(), bad, good.clone()], &td()).unwrap_err();
            assert!(err.to_string().starts_with(want), "{err}\nwant {want}");
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = validate_rules(
            &[
                rule(
                    UnixMatcher {
                        uid: Some(1337),
                        path: Some("/usr/local/bin/envoy".into()),
                        ..UnixMatcher::default()
                    },
                    "ingress",
                    "gateway",
                ),
                rule(
                    UnixMatcher {
                        uid: Some(1337),
                        gid: Some(1337),
                        ..UnixMatcher::default()
                    },
                    "ingress",
                    "sidecar",
                ),
                UnixRuleConfig {
                    matcher: UnixMatcher {
                        gid: Some(2000),
                        ..UnixMatcher::default()
                    },
                    target: UnixTarget::SpiffeId(
                        SpiffeId::new("spiffe://cluster.local/ns/db/sa/backup").unwrap(),
                    ),
                },
            ],
            &td(),
        )
        .unwrap();
        let envoy = Path::new("/usr/local/bin/envoy");
        let other = Path::new("/usr/bin/python3");

        assert_eq!(
            resolve(&rules, &peer(1337, 1337), Some(envoy)),
            workload("ingress", "gateway")
        );
        // Same uid, another binary: the path rule is skipped and the uid+gid rule applies.
        assert_eq!(
            resolve(&rules, &peer(1337, 1337), Some(other)),
            workload("ingress", "sidecar")
        );
        // The executable could not be read: a rule that pins one cannot match.
        assert_eq!(
            resolve(&rules, &peer(1337, 1337), None),
            workload("ingress", "sidecar")
        );
        assert_eq!(resolve(&rules, &peer(1337, 0), None), None);
        // A binary replaced since it started is not the one the rule names.
        assert_eq!(
            resolve(
                &rules,
                &peer(1337, 0),
                Some(Path::new("/usr/local/bin/envoy (deleted)"))
            ),
            None
        );
        // Every set field must match: gid 2000 alone matches the third rule.
        assert_eq!(
            resolve(&rules, &peer(999, 2000), Some(other)),
            workload("db", "backup")
        );
        assert_eq!(resolve(&rules, &peer(999, 999), Some(envoy)), None);
        assert_eq!(resolve(&[], &peer(0, 0), Some(envoy)), None);
        assert_eq!(rules[2].workload().to_string(), "db/backup");
        assert_eq!(rules[2].matcher().gid, Some(2000));
    }

    #[test]
    fn reads_the_executable_of_a_pid_under_the_proc_root() {
        let proc_root = tempfile::tempdir().unwrap();
        let pid_dir = proc_root.path().join("4242");
        std::fs::create_dir(&pid_dir).unwrap();
        std::os::unix::fs::symlink("/usr/local/bin/envoy", pid_dir.join("exe")).unwrap();
        assert_eq!(
            read_exe(proc_root.path(), 4242),
            Some(PathBuf::from("/usr/local/bin/envoy"))
        );

        let relative = proc_root.path().join("4243");
        std::fs::create_dir(&relative).unwrap();
        std::os::unix::fs::symlink("envoy", relative.join("exe")).unwrap();
        assert_eq!(read_exe(proc_root.path(), 4243), None);

        // Exited, or not ours to trace.
        assert_eq!(read_exe(proc_root.path(), 4244), None);
    }
}
