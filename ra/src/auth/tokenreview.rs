//! Kubernetes TokenReview (`authentication.k8s.io/v1`): the API server says whether a token is
//! a live service-account token. Positive answers are cached briefly, keyed by a hash of the
//! token (never the token itself), and never past the token's own `exp`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::caller::{parse_service_account, AuthError, PodBinding, TokenIdentity};
use crate::config::ClusterConfig;
use meshca_kube::{KubeClient, KubeClientError};

const TOKEN_REVIEWS_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

#[derive(Debug)]
pub struct TokenReviewer {
    api: KubeClient,
    audiences: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], CachedReview>>,
    cache_ttl: Duration,
    cache_size: usize,
}

#[derive(Clone, Debug)]
struct CachedReview {
    identity: TokenIdentity,
    expires: Instant,
}

/// The `user.extra` keys a bound token's review carries (the node ones since Kubernetes 1.30).
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenReviewRequest<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: TokenReviewSpec<'a>,
}

#[derive(Debug, Serialize)]
struct TokenReviewSpec<'a> {
    token: &'a str,
    audiences: &'a [String],
}

#[derive(Debug, Deserialize)]
struct TokenReviewResponse {
    #[serde(default)]
    status: TokenReviewStatus,
}

#[derive(Debug, Default, Deserialize)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: UserInfo,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Default, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    extra: BTreeMap<String, Vec<String>>,
}

// === impl TokenReviewer ===

impl TokenReviewer {
    /// Reaches the cluster's API server as [`ClusterConfig::api_server`] says.
    pub fn new(config: &ClusterConfig) -> Result<Self, KubeClientError> {
        Ok(Self {
            api: KubeClient::new(&config.api_server())?,
            audiences: config.audiences.clone(),
            cache: Mutex::new(HashMap::new()),
            cache_ttl: config.tokenreview_cache_ttl,
            cache_size: config.tokenreview_cache_size.max(1),
        })
    }

    /// Returns the reviewed token's username, and its pod and node when it is bound to one.
    pub async fn review(&self, token: &str) -> Result<TokenIdentity, AuthError> {
        let key = token_hash(token);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let identity = self.call_api_server(token).await?;
        self.remember(key, &identity, token_expiry(token));
        Ok(identity)
    }

    async fn call_api_server(&self, token: &str) -> Result<TokenIdentity, AuthError> {
        let body = TokenReviewRequest {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: TokenReviewSpec {
                token,
                audiences: &self.audiences,
            },
        };
        let bytes = self
            .api
            .post_raw(
                TOKEN_REVIEWS_PATH,
                serde_json::to_vec(&body).expect("serializable"),
            )
            .await
            .map_err(|e| AuthError::TokenReview(e.to_string()))?;
        let review: TokenReviewResponse = serde_json::from_slice(&bytes)
            .map_err(|e| AuthError::TokenReview(format!("malformed response: {e}")))?;
        let s = review.status;
        if !s.authenticated {
            return Err(AuthError::TokenReview(format!(
                "not authenticated: {}",
                if s.error.is_empty() {
                    "no reason given"
                } else {
                    &s.error
                }
            )));
        }
        if !s.audiences.is_empty() && !s.audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::TokenReview(format!(
                "token audiences {:?} do not include {:?}",
                s.audiences, self.audiences
            )));
        }
        if !s.user.groups.iter().any(|g| g == "system:serviceaccounts") {
            return Err(AuthError::TokenReview(format!(
                "{:?} is not a service account (groups {:?})",
                s.user.username, s.user.groups
            )));
        }
        parse_service_account(&s.user.username)?;
        Ok(reviewed_identity(s.user))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<TokenIdentity> {
        let mut cache = self.cache.lock().expect("cache lock");
        match cache.get(key) {
            Some(hit) if hit.expires > Instant::now() => Some(hit.identity.clone()),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], identity: &TokenIdentity, token_exp: Option<SystemTime>) {
        let ttl = cache_lifetime(self.cache_ttl, token_exp, SystemTime::now());
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.cache_size {
            cache.retain(|_, v| v.expires > now);
        }
        if cache.len() >= self.cache_size {
            // Still full of live entries: drop one rather than grow without bound.
            if let Some(victim) = cache.keys().next().copied() {
                cache.remove(&victim);
            }
        }
        cache.insert(
            key,
            CachedReview {
                identity: identity.clone(),
                expires: now + ttl,
            },
        );
    }
}

/// The username, and the pod (both name and uid, or none) and node the review's `extra` names.
fn reviewed_identity(mut user: UserInfo) -> TokenIdentity {
    let mut single = |key: &str| {
        user.extra
            .remove(key)
            .and_then(|values| values.into_iter().next())
            .filter(|v| !v.is_empty())
    };
    let pod = match (single(EXTRA_POD_NAME), single(EXTRA_POD_UID)) {
        (Some(name), Some(uid)) => Some(PodBinding { name, uid }),
        _ => None,
    };
    let node = single(EXTRA_NODE_NAME);
    TokenIdentity {
        username: user.username,
        pod,
        node,
    }
}

/// How long a positive review may be reused: the configured TTL, cut short by the token's
/// own expiry. A pure function so the rule is tested directly.
pub fn cache_lifetime(ttl: Duration, token_exp: Option<SystemTime>, now: SystemTime) -> Duration {
    match token_exp {
        Some(exp) => exp.duration_since(now).unwrap_or(Duration::ZERO).min(ttl),
        None => ttl,
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The token's `exp`, read without verifying (used only to shorten the cache lifetime).
fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = value.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_never_outlives_the_token() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(60);
        assert_eq!(cache_lifetime(ttl, None, now), ttl);
        assert_eq!(
            cache_lifetime(ttl, Some(now + Duration::from_secs(10)), now),
            Duration::from_secs(10)
        );
        assert_eq!(
            cache_lifetime(ttl, Some(now + Duration::from_secs(3600)), now),
            ttl
        );
        assert_eq!(
            cache_lifetime(ttl, Some(now - Duration::from_secs(1)), now),
            Duration::ZERO
        );
    }

    #[test]
    fn a_bound_review_names_pod_and_node() {
        let user: UserInfo = serde_json::from_value(serde_json::json!({
            "username": "system:serviceaccount:istio-system:ztunnel",
            "uid": "77aa",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:istio-system", "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=5a1b"],
                "authentication.kubernetes.io/node-name": ["worker-1"],
                "authentication.kubernetes.io/node-uid": ["0b6f"],
                "authentication.kubernetes.io/pod-name": ["ztunnel-x7k2p"],
                "authentication.kubernetes.io/pod-uid": ["9c3e"],
            },
        }))
        .unwrap();
        let id = reviewed_identity(user);
        assert_eq!(
            id.pod,
            Some(PodBinding {
                name: "ztunnel-x7k2p".into(),
                uid: "9c3e".into()
            })
        );
        assert_eq!(id.node.as_deref(), Some("worker-1"));

        // A pod name without its uid cannot tell one pod from a later one of that name.
        let half: UserInfo = serde_json::from_value(serde_json::json!({
            "username": "system:serviceaccount:web:web",
            "extra": {"authentication.kubernetes.io/pod-name": ["web-7d9f8"]},
        }))
        .unwrap();
        assert_eq!(reviewed_identity(half).pod, None);
    }

    #[test]
    fn reads_exp_without_trusting_it() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":2000000000}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig");
        assert_eq!(
            token_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(token_expiry("garbage"), None);
    }
}
