//! Local validation of Kubernetes service-account JWTs against the issuer's keys (a JWKS file,
//! a JWKS URL, or the issuer's OIDC discovery document). Only RS256 and ES256 are accepted:
//! never `none`, never HMAC (which would let a public key act as a shared secret).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::caller::{parse_service_account, AuthError, PodBinding, TokenIdentity};
use crate::config::ClusterConfig;

const MAX_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct JwksAuthenticator {
    issuer: String,
    audiences: Vec<String>,
    leeway: Duration,
    source: KeySource,
    http: reqwest::Client,
    keys: RwLock<Arc<JwkSet>>,
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

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
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
            issuer,
            audiences: config.audiences.clone(),
            leeway: config.leeway.min(MAX_LEEWAY),
            source,
            http,
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            last_forced_refresh: Mutex::new(None),
            min_refresh: config.jwks_min_refresh,
        });
        this.refresh().await?;
        spawn_periodic_refresh(Arc::downgrade(&this), config.jwks_refresh_interval);
        Ok(this)
    }

    /// Validates `token`; returns its `sub` (the Kubernetes username) and where it runs.
    pub async fn validate(&self, token: &str) -> Result<TokenIdentity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Token(format!("malformed: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Token(format!(
                "algorithm {:?} is not allowed (RS256, ES256)",
                header.alg
            )));
        }
        let key = match self.find_key(header.kid.as_deref(), header.alg) {
            Some(key) => key,
            None => {
                self.refresh_for_unknown_kid().await;
                self.find_key(header.kid.as_deref(), header.alg)
                    .ok_or_else(|| AuthError::Token(format!("unknown kid {:?}", header.kid)))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Token(e.to_string()))?;
        Ok(token_identity(data.claims))
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().expect("jwks lock").clone();
        let fits = |jwk: &&jsonwebtoken::jwk::Jwk| {
            let family_ok = matches!(
                (&jwk.algorithm, alg),
                (
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_),
                    Algorithm::RS256
                ) | (
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_),
                    Algorithm::ES256
                )
            );
            family_ok && jwk.common.key_id.as_deref() == kid
        };
        let jwk = match kid {
            Some(_) => keys.keys.iter().find(fits),
            // No kid: only unambiguous when exactly one key of the family exists.
            None => {
                let mut candidates = keys.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }?;
        DecodingKey::from_jwk(jwk).ok()
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
            tracing::warn!(issuer = %self.issuer, %error, "JWKS refresh for an unknown kid failed");
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
        tracing::debug!(issuer = %self.issuer, keys = set.keys.len(), "JWKS loaded");
        *self.keys.write().expect("jwks lock") = Arc::new(set);
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
                tracing::warn!(issuer = %this.issuer, %error, "periodic JWKS refresh failed; keeping the previous keys");
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
