//! Local validation of Kubernetes service-account JWTs against the issuer's keys (a JWKS file,
//! a JWKS URL, or the issuer's OIDC discovery document). Only RS256 and ES256 are accepted:
//! never `none`, never HMAC (which would let a public key act as a shared secret). Keys are
//! parsed once per load ([`super::jws`]); the claims are checked here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use super::caller::{parse_service_account, AuthError, PodBinding, TokenIdentity};
use super::jws::{SignedToken, TokenAlgorithm, VerifyingKey};
use crate::config::ClusterConfig;

const MAX_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct JwksAuthenticator {
    rules: ClaimRules,
    source: KeySource,
    http: reqwest::Client,
    keys: RwLock<Vec<Arc<VerifyingKey>>>,
    /// When keys were last fetched because of an unknown `kid`; bounds how often a flood of
    /// forged `kid`s can make us call the issuer.
    last_forced_refresh: Mutex<Option<Instant>>,
    min_refresh: Duration,
}

/// Why keys could not be loaded: at start-up a configuration error, later a warning (the
/// previous keys stay in use).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    #[error("jwks mode needs `issuer`")]
    NoIssuer,
    #[error("set jwks_file or jwks_url, not both")]
    TwoKeySources,
    #[error("audiences must not be empty")]
    NoAudiences,
    #[error("HTTP client: {0}")]
    HttpClient(reqwest::Error),
    #[error("{}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("GET {url}: {source}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("GET {url}: HTTP {status}")]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url}: {source}")]
    ParseResponse {
        url: String,
        source: serde_json::Error,
    },
    #[error("discovery document at {url} names issuer {found:?}, expected {expected:?}")]
    WrongIssuer {
        url: String,
        found: String,
        expected: String,
    },
}

#[derive(Clone, Debug)]
enum KeySource {
    File(PathBuf),
    Url(String),
    /// The issuer's `/.well-known/openid-configuration` names `jwks_uri`.
    Discovery(String),
}

/// What the claims must say besides who the token names.
#[derive(Debug)]
struct ClaimRules {
    issuer: String,
    audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    leeway: f64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    /// NumericDate: seconds since the epoch, which RFC 7519 lets be fractional.
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    /// What a projected (bound) token adds about where it runs.
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

/// The `kubernetes.io` claim: `namespace`, `serviceaccount`, and for tokens bound to a pod,
/// `pod` (and since Kubernetes 1.30 `node`), each `{name, uid}`.
#[derive(Debug, Default, Deserialize)]
struct KubernetesClaim {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    serviceaccount: Option<ObjectRef>,
    #[serde(default)]
    pod: Option<ObjectRef>,
    #[serde(default)]
    node: Option<ObjectRef>,
}

#[derive(Debug, Deserialize)]
struct ObjectRef {
    name: String,
    #[serde(default)]
    uid: String,
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// By the JSON type seen, where `#[serde(untagged)]` would buffer the value, fail as a string
/// (building an error message) and try again as a list: ~10 allocations per token.
impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudienceVisitor;
        impl<'de> serde::de::Visitor<'de> for AudienceVisitor {
            type Value = Audience;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Audience, E> {
                Ok(Audience::One(value.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Audience, A::Error> {
                let mut many = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
                while let Some(aud) = seq.next_element()? {
                    many.push(aud);
                }
                Ok(Audience::Many(many))
            }
        }
        deserializer.deserialize_any(AudienceVisitor)
    }
}

#[derive(Debug, Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

// === impl JwksAuthenticator ===

impl JwksAuthenticator {
    /// Loads the keys once (a failure here is a configuration error) and keeps them fresh.
    pub async fn start(config: &ClusterConfig) -> Result<Arc<Self>, JwksError> {
        let issuer = config.issuer.clone().ok_or(JwksError::NoIssuer)?;
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(_), Some(_)) => return Err(JwksError::TwoKeySources),
            (Some(file), None) => KeySource::File(file.clone()),
            (None, Some(url)) => KeySource::Url(url.clone()),
            (None, None) => KeySource::Discovery(issuer.clone()),
        };
        if config.audiences.is_empty() {
            return Err(JwksError::NoAudiences);
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(JwksError::HttpClient)?;
        let this = Arc::new(Self {
            rules: ClaimRules {
                issuer,
                audiences: config.audiences.clone(),
                leeway: config.leeway.min(MAX_LEEWAY).as_secs_f64(),
            },
            source,
            http,
            keys: RwLock::new(Vec::new()),
            last_forced_refresh: Mutex::new(None),
            min_refresh: config.jwks_min_refresh,
        });
        this.refresh().await?;
        spawn_periodic_refresh(Arc::downgrade(&this), config.jwks_refresh_interval);
        Ok(this)
    }

    /// Validates `token`; returns its `sub` (the Kubernetes username) and where it runs.
    pub async fn validate(&self, token: &str) -> Result<TokenIdentity, AuthError> {
        let token = SignedToken::parse(token).map_err(|e| AuthError::Token(e.to_string()))?;
        let key = match self.find_key(token.kid(), token.algorithm()) {
            Some(key) => key,
            None => {
                self.refresh_for_unknown_kid().await;
                self.find_key(token.kid(), token.algorithm())
                    .ok_or_else(|| AuthError::Token(format!("unknown kid {:?}", token.kid())))?
            }
        };
        let payload = token
            .verify(&key)
            .map_err(|e| AuthError::Token(e.to_string()))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| AuthError::Token(format!("claims: {e}")))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.rules.check(&claims, now).map_err(AuthError::Token)?;
        Ok(token_identity(claims))
    }

    /// The key for `kid` and `algorithm`; with no `kid`, only when exactly one key of the
    /// algorithm exists.
    fn find_key(&self, kid: Option<&str>, algorithm: TokenAlgorithm) -> Option<Arc<VerifyingKey>> {
        let keys = self.keys.read().expect("jwks lock");
        let mut fitting = keys
            .iter()
            .filter(|key| key.algorithm() == algorithm && key.kid() == kid);
        let key = fitting.next()?;
        if kid.is_none() && fitting.next().is_some() {
            return None;
        }
        Some(key.clone())
    }

    async fn refresh_for_unknown_kid(&self) {
        {
            let mut last = self.last_forced_refresh.lock().expect("refresh lock");
            if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(error) = self.refresh().await {
            tracing::warn!(issuer = %self.rules.issuer, %error, "JWKS refresh for an unknown kid failed");
        }
    }

    async fn refresh(&self) -> Result<(), JwksError> {
        let set: JwkSet = match &self.source {
            KeySource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|source| {
                    JwksError::ReadFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                serde_json::from_str(&text).map_err(|source| JwksError::ParseFile {
                    path: path.clone(),
                    source,
                })?
            }
            KeySource::Url(url) => self.get_json(url).await?,
            KeySource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: DiscoveryDocument = self.get_json(&url).await?;
                if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
                    return Err(JwksError::WrongIssuer {
                        url,
                        found: doc.issuer,
                        expected: issuer.clone(),
                    });
                }
                self.get_json(&doc.jwks_uri).await?
            }
        };
        let issuer = &self.rules.issuer;
        let keys: Vec<Arc<VerifyingKey>> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                VerifyingKey::from_jwk(jwk)
                    .inspect_err(|reason| {
                        let kid = jwk.common.key_id.as_deref();
                        tracing::debug!(%issuer, ?kid, %reason, "JWKS key not used");
                    })
                    .ok()
                    .map(Arc::new)
            })
            .collect();
        tracing::debug!(%issuer, keys = keys.len(), of = set.keys.len(), "JWKS loaded");
        *self.keys.write().expect("jwks lock") = keys;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, JwksError> {
        let fetch = |source| JwksError::Fetch {
            url: url.to_string(),
            source,
        };
        let response = self.http.get(url).send().await.map_err(fetch)?;
        if !response.status().is_success() {
            return Err(JwksError::HttpStatus {
                url: url.to_string(),
                status: response.status(),
            });
        }
        let body = response.bytes().await.map_err(fetch)?;
        serde_json::from_slice(&body).map_err(|source| JwksError::ParseResponse {
            url: url.to_string(),
            source,
        })
    }
}

// === impl ClaimRules ===

impl ClaimRules {
    /// RFC 7519's registered claims as a service-account token must carry them: `exp` present
    /// and not past, `nbf` (if any) reached, each within the leeway; our issuer; one of our
    /// audiences.
    fn check(&self, claims: &Claims, now: f64) -> Result<(), String> {
        let exp = claims.exp.ok_or("no exp claim")?;
        if exp < now - self.leeway {
            return Err(format!("expired at {exp}"));
        }
        if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now + self.leeway) {
            return Err(format!("not valid before {nbf}"));
        }
        match claims.iss.as_deref() {
            Some(iss) if iss == self.issuer => {}
            Some(iss) => return Err(format!("issuer {iss:?} is not {:?}", self.issuer)),
            None => return Err("no iss claim".into()),
        }
        let audiences = match &claims.aud {
            Some(Audience::One(aud)) => std::slice::from_ref(aud),
            Some(Audience::Many(auds)) => auds.as_slice(),
            None => return Err("no aud claim".into()),
        };
        if !audiences.iter().any(|aud| self.audiences.contains(aud)) {
            return Err(format!("audiences {audiences:?}: none is ours"));
        }
        Ok(())
    }
}

/// The username, and the pod and node of a bound token. A `kubernetes.io` claim naming
/// another account than `sub` binds nothing: the token still names its `sub`, but cannot
/// speak for a pod.
fn token_identity(claims: Claims) -> TokenIdentity {
    let kubernetes = claims.kubernetes.unwrap_or_default();
    let consistent = parse_service_account(&claims.sub).is_ok_and(|(namespace, name)| {
        kubernetes
            .namespace
            .as_deref()
            .is_none_or(|n| n == namespace)
            && kubernetes
                .serviceaccount
                .as_ref()
                .is_none_or(|sa| sa.name == name)
    });
    if !consistent {
        tracing::warn!(sub = %claims.sub, "the kubernetes.io claim names another service account; the token is not bound to a pod");
        return TokenIdentity {
            username: claims.sub,
            pod: None,
            node: None,
        };
    }
    TokenIdentity {
        username: claims.sub,
        pod: kubernetes
            .pod
            .filter(|p| !p.name.is_empty() && !p.uid.is_empty())
            .map(|p| PodBinding {
                name: p.name,
                uid: p.uid,
            }),
        node: kubernetes.node.map(|n| n.name).filter(|n| !n.is_empty()),
    }
}

fn spawn_periodic_refresh(this: Weak<JwksAuthenticator>, every: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every.max(Duration::from_secs(1)));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(this) = this.upgrade() else { return };
            if let Err(error) = this.refresh().await {
                tracing::warn!(issuer = %this.rules.issuer, %error, "periodic JWKS refresh failed; keeping the previous keys");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn refused(config: ClusterConfig) -> String {
        JwksAuthenticator::start(&config)
            .await
            .unwrap_err()
            .to_string()
    }

    /// What an operator reads at start-up, after `auth.clusters.<id>: `.
    #[tokio::test]
    async fn configuration_errors_say_what_to_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let jwks = ClusterConfig {
            mode: crate::config::JwtMode::Jwks,
            issuer: Some("https://issuer.example".into()),
            jwks_file: Some(tmp.path().join("jwks.json")),
            ..ClusterConfig::default()
        };
        let no_issuer = ClusterConfig {
            issuer: None,
            ..jwks.clone()
        };
        assert_eq!(refused(no_issuer).await, "jwks mode needs `issuer`");
        let both = ClusterConfig {
            jwks_url: Some("https://issuer.example/keys".into()),
            ..jwks.clone()
        };
        assert_eq!(refused(both).await, "set jwks_file or jwks_url, not both");
        let no_audience = ClusterConfig {
            audiences: Vec::new(),
            ..jwks.clone()
        };
        assert_eq!(refused(no_audience).await, "audiences must not be empty");

        let path = tmp.path().join("jwks.json");
        let missing = refused(jwks.clone()).await;
        assert!(
            missing.starts_with(&format!("{}: ", path.display())),
            "{missing}"
        );
        std::fs::write(&path, "{\"keys\": 7}").unwrap();
        let malformed = refused(jwks).await;
        assert!(
            malformed.starts_with(&format!("{}: invalid type", path.display())),
            "{malformed}"
        );
    }

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    /// Expiry and not-before within the leeway, our issuer, one of our audiences (as a string
    /// or in a list); anything else is refused with what was wrong.
    #[test]
    fn claims_are_checked_for_time_issuer_and_audience() {
        use serde_json::json;
        let rules = ClaimRules {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            audiences: vec!["istio-ca".into(), "meshca".into()],
            leeway: 60.0,
        };
        let now = 1_800_000_000.0;
        let check = |changes: serde_json::Value| {
            let mut c = json!({
                "sub": "system:serviceaccount:web:web", "iss": rules.issuer,
                "aud": ["istio-ca"], "exp": now + 3600.0, "nbf": now - 10.0,
            });
            for (k, v) in changes.as_object().unwrap() {
                match v {
                    serde_json::Value::Null => c.as_object_mut().unwrap().remove(k),
                    v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
                };
            }
            rules.check(&claims(c), now)
        };
        assert_eq!(check(json!({})), Ok(()));
        assert_eq!(check(json!({"aud": "meshca"})), Ok(()));
        assert_eq!(check(json!({"aud": ["kubernetes", "meshca"]})), Ok(()));
        assert_eq!(check(json!({"exp": now - 59.0, "nbf": null})), Ok(()));
        assert_eq!(check(json!({"nbf": now + 59.0})), Ok(()));
        assert_eq!(
            check(json!({"exp": now - 61.0})),
            Err("expired at 1799999939".into())
        );
        assert_eq!(check(json!({"exp": null})), Err("no exp claim".into()));
        assert_eq!(
            check(json!({"nbf": now + 61.5})),
            Err("not valid before 1800000061.5".into())
        );
        assert_eq!(
            check(json!({"iss": "https://evil.example"})),
            Err(
                "issuer \"https://evil.example\" is not \"https://kubernetes.default.svc.cluster.local\""
                    .into()
            )
        );
        assert_eq!(check(json!({"iss": null})), Err("no iss claim".into()));
        assert_eq!(
            check(json!({"aud": ["kubernetes"]})),
            Err("audiences [\"kubernetes\"]: none is ours".into())
        );
        assert_eq!(
            check(json!({"aud": []})),
            Err("audiences []: none is ours".into())
        );
        assert_eq!(check(json!({"aud": null})), Err("no aud claim".into()));
        // Neither a string nor a list of strings: the token's claims do not parse.
        for aud in [
            json!(7),
            json!([7]),
            json!({"aud": "meshca"}),
            json!(["meshca", null]),
        ] {
            let parsed = serde_json::from_value::<Claims>(json!({"sub": "s", "aud": aud}));
            assert!(parsed.is_err(), "{aud}");
        }
    }

    /// A projected token as kubelet mounts it (Kubernetes 1.30+, with the node).
    #[test]
    fn a_bound_token_names_its_pod_and_node() {
        let bound = claims(serde_json::json!({
            "aud": ["istio-ca"], "exp": 1, "iat": 0, "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": "5a1b", "nbf": 0, "sub": "system:serviceaccount:istio-system:ztunnel",
            "kubernetes.io": {
                "namespace": "istio-system",
                "node": {"name": "worker-1", "uid": "0b6f"},
                "pod": {"name": "ztunnel-x7k2p", "uid": "9c3e"},
                "serviceaccount": {"name": "ztunnel", "uid": "77aa"},
                "warnafter": 1,
            },
        }));
        let id = token_identity(bound);
        assert_eq!(id.username, "system:serviceaccount:istio-system:ztunnel");
        assert_eq!(
            id.pod,
            Some(PodBinding {
                name: "ztunnel-x7k2p".into(),
                uid: "9c3e".into()
            })
        );
        assert_eq!(id.node.as_deref(), Some("worker-1"));
    }

    #[test]
    fn unbound_or_inconsistent_tokens_bind_no_pod() {
        let legacy = claims(serde_json::json!({"sub": "system:serviceaccount:web:web"}));
        assert_eq!(token_identity(legacy).pod, None);
        let other_namespace = claims(serde_json::json!({
            "sub": "system:serviceaccount:web:web",
            "kubernetes.io": {"namespace": "istio-system", "pod": {"name": "p", "uid": "u"},
                              "serviceaccount": {"name": "web", "uid": "1"}},
        }));
        let id = token_identity(other_namespace);
        assert_eq!((id.pod, id.node), (None, None));
        let no_uid = claims(serde_json::json!({
            "sub": "system:serviceaccount:web:web",
            "kubernetes.io": {"namespace": "web", "pod": {"name": "p"}},
        }));
        assert_eq!(token_identity(no_uid).pod, None);
    }
}
