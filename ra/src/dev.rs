//! `--dev` credentials: a local JWT issuer that the dev server trusts in `jwks` mode, and a
//! service-account token from it, so a new user can get a certificate within a minute. Its
//! token signer is also how `meshca bench --jwt-key` mints a token per simulated workload.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use meshca_ca::kek::private_file_options;
use meshca_ca::keys::{KeyType, SigningKey};
use meshca_pki::time::unix_seconds;
use meshca_pki::TrustBundle;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{ClusterConfig, JwtMode, RestRole, RestToken};
use crate::jwk::public_key_jwk;

/// What Kubernetes puts in `iss` of in-cluster service-account tokens.
pub const DEV_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const DEV_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where the dev files live.
#[derive(Clone, Debug)]
pub struct DevFiles {
    pub issuer_key: PathBuf,
    pub jwks: PathBuf,
    pub token: PathBuf,
    /// Bearer tokens for the REST API, roles `admin` and `auditor`.
    pub admin_token: PathBuf,
    pub auditor_token: PathBuf,
}

/// Signs service-account tokens as a Kubernetes API server does: ES256 with an EC key, RS256
/// with an RSA one, `kid` in the header when given. Its `Debug` shows no key material.
#[derive(Debug)]
pub struct TokenSigner {
    algorithm: jsonwebtoken::Algorithm,
    key: jsonwebtoken::EncodingKey,
    kid: Option<String>,
}

/// What a minted token says: `system:serviceaccount:<namespace>:<service_account>` from
/// `issuer` for `audience`, valid for `lifetime` from now.
#[derive(Clone, Copy, Debug)]
pub struct ServiceAccountToken<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub lifetime: Duration,
    /// Whether to add the `kubernetes.io` claim (namespace, service account name and uid) a
    /// projected in-cluster token carries.
    pub kubernetes_claim: bool,
    /// The pod (and node) a kubelet-projected token is bound to, added to that claim: what
    /// node authorization checks when a node agent asks for another pod's identity.
    pub bound_to: Option<BoundPod<'a>>,
}

/// The pod a token is bound to, as `kubernetes.io.pod` and (Kubernetes 1.30+) `.node` say.
#[derive(Clone, Copy, Debug)]
pub struct BoundPod<'a> {
    pub name: &'a str,
    pub uid: &'a str,
    pub node: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// Neither an EC nor an RSA private key in PEM (the error is the RSA attempt's).
    #[error(transparent)]
    Key(jsonwebtoken::errors::Error),
    #[error(transparent)]
    Sign(jsonwebtoken::errors::Error),
}

/// The claims, in the order `serde_json` writes a map's keys, as the tokens always had them.
#[derive(Serialize)]
struct Claims<'a> {
    aud: [&'a str; 1],
    exp: i64,
    iat: i64,
    iss: &'a str,
    #[serde(rename = "kubernetes.io", skip_serializing_if = "Option::is_none")]
    kubernetes: Option<Value>,
    nbf: i64,
    sub: String,
}

// === impl TokenSigner ===

impl TokenSigner {
    /// A signer with the PEM private key `pem` (PKCS#8, or SEC1/PKCS#1).
    pub fn from_pem(pem: &str, kid: Option<String>) -> Result<Self, MintError> {
        let (algorithm, key) =
            if let Ok(key) = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()) {
                (jsonwebtoken::Algorithm::ES256, key)
            } else {
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(MintError::Key)?;
                (jsonwebtoken::Algorithm::RS256, key)
            };
        Ok(Self {
            algorithm,
            key,
            kid,
        })
    }

    /// The `alg` of the tokens (and of the key's JWK).
    pub fn algorithm(&self) -> jsonwebtoken::Algorithm {
        self.algorithm
    }

    pub fn mint(&self, token: &ServiceAccountToken<'_>) -> Result<String, MintError> {
        let now = unix_seconds(SystemTime::now());
        let lifetime = i64::try_from(token.lifetime.as_secs()).unwrap_or(i64::MAX);
        let (namespace, name) = (token.namespace, token.service_account);
        let claims = Claims {
            aud: [token.audience],
            exp: now.saturating_add(lifetime),
            iat: now,
            iss: token.issuer,
            kubernetes: (token.kubernetes_claim || token.bound_to.is_some()).then(|| {
                let mut claim = json!({
                    "namespace": namespace,
                    "serviceaccount": {"name": name, "uid": "00000000-0000-0000-0000-000000000000"},
                });
                if let Some(pod) = token.bound_to {
                    claim["pod"] = json!({"name": pod.name, "uid": pod.uid});
                    if let Some(node) = pod.node {
                        claim["node"] =
                            json!({"name": node, "uid": "00000000-0000-0000-0000-000000000001"});
                    }
                }
                claim
            }),
            nbf: now,
            sub: format!("system:serviceaccount:{namespace}:{name}"),
        };
        self.sign(&claims)
    }

    /// Signs any claims with this key (`alg` and `kid` as for service-account tokens): other
    /// issuers' tokens, e.g. step-ca's one-time tokens for `meshca bench --step-ca`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, MintError> {
        let mut header = jsonwebtoken::Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(MintError::Sign)
    }
}

// === impl DevFiles ===

impl DevFiles {
    pub fn under(data_dir: &Path) -> Self {
        let dev = data_dir.join("dev");
        Self {
            issuer_key: dev.join("issuer-key.pem"),
            jwks: dev.join("jwks.json"),
            token: dev.join("token"),
            admin_token: dev.join("admin-token"),
            auditor_token: dev.join("auditor-token"),
        }
    }

    /// The cluster config that trusts this issuer.
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            mode: JwtMode::Jwks,
            issuer: Some(DEV_ISSUER.into()),
            jwks_file: Some(self.jwks.clone()),
            ..ClusterConfig::default()
        }
    }
}

/// Writes (or reuses) the issuer key, writes its JWKS, and mints a fresh token for
/// `default/default`, audience `istio-ca`, valid 24 h. A new key is RSA-2048 (RS256), as
/// kube-apiserver's service-account signing key usually is, so dev and benchmark runs pay
/// what a cluster's tokens cost; an existing key keeps its algorithm (P-256 → ES256).
pub fn write_dev_credentials(files: &DevFiles) -> std::io::Result<()> {
    // A key that is there means its directory is; a missing one is written with its directory.
    let key = match std::fs::read(&files.issuer_key) {
        Ok(pem) => SigningKey::from_pem(&pem).map_err(std::io::Error::other)?,
        Err(_) => {
            let key = SigningKey::generate(KeyType::Rsa2048).map_err(std::io::Error::other)?;
            write_issuer_key(files, &key)?;
            key
        }
    };
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let kid = b64(
        &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_bits()).as_ref()
            [..12],
    );
    let signer = TokenSigner::from_pem(&key.pkcs8_pem(), Some(kid.clone()))
        .map_err(std::io::Error::other)?;
    let mut jwk = public_key_jwk(&key.subject_public_key_info());
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(signer.algorithm());
    jwk["use"] = json!("sig");
    let jwks = json!({ "keys": [jwk] });
    std::fs::write(&files.jwks, serde_json::to_vec_pretty(&jwks)?)?;

    let token = signer
        .mint(&ServiceAccountToken {
            issuer: DEV_ISSUER,
            audience: "istio-ca",
            namespace: "default",
            service_account: "default",
            lifetime: DEV_TOKEN_LIFETIME,
            kubernetes_claim: true,
            bound_to: None,
        })
        .map_err(std::io::Error::other)?;
    write_private(&files.token, format!("{token}\n").as_bytes())
}

/// Installs `key` as the dev issuer's (mode 0600); [`write_dev_credentials`] then keeps it and
/// signs with its algorithm.
pub fn write_issuer_key(files: &DevFiles, key: &SigningKey) -> std::io::Result<()> {
    if let Some(dir) = files.issuer_key.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(&files.issuer_key, key.pkcs8_pem().as_bytes())
}

/// Writes (or reuses) the REST API's dev tokens and returns their configuration: only the
/// hashes are configured, as in production.
pub fn write_dev_rest_tokens(files: &DevFiles) -> std::io::Result<Vec<RestToken>> {
    let mut tokens = Vec::new();
    for (path, name, role) in [
        (&files.admin_token, "dev-admin", RestRole::Admin),
        (&files.auditor_token, "dev-auditor", RestRole::Auditor),
    ] {
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let mut random = [0u8; 32];
                aws_lc_rs::rand::fill(&mut random)
                    .map_err(|_| std::io::Error::other("the system random generator failed"))?;
                let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, format!("{token}\n").as_bytes())?;
                token
            }
        };
        tokens.push(RestToken {
            name: name.into(),
            sha256: hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                token.as_bytes(),
            )),
            role,
        });
    }
    Ok(tokens)
}

/// Writes the trust bundle to `path` now and again on every change (atomically, so a reader
/// never sees half a bundle), for clients of the dev server that trust a file.
pub async fn keep_bundle_file(
    path: &Path,
    mut bundles: tokio::sync::watch::Receiver<Arc<TrustBundle>>,
) -> std::io::Result<()> {
    let write = |path: &Path, pem: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem)?;
        std::fs::rename(&tmp, path)
    };
    let current = bundles.borrow_and_update().clone();
    write(path, current.pem())?;
    let path = path.to_path_buf();
    tokio::spawn(async move {
        while bundles.changed().await.is_ok() {
            let bundle = bundles.borrow_and_update().clone();
            if let Err(error) = write(&path, bundle.pem()) {
                tracing::error!(path = %path.display(), %error, "writing the trust bundle failed");
            }
        }
    });
    Ok(())
}

/// Replaces `path` with `bytes`, mode 0600, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = private_file_options().create_new(true).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::JwksAuthenticator;

    fn jwks_alg(files: &DevFiles) -> (String, String) {
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files.jwks).unwrap()).unwrap();
        let key = &jwks["keys"][0];
        (key["alg"].to_string(), key["kid"].to_string())
    }

    async fn accepted(files: &DevFiles, token: &str) -> String {
        let authenticator = JwksAuthenticator::start(&files.cluster_config())
            .await
            .unwrap();
        authenticator.validate(token.trim()).await.unwrap().username
    }

    fn token(files: &DevFiles) -> String {
        std::fs::read_to_string(&files.token).unwrap()
    }

    #[tokio::test]
    async fn a_new_issuer_signs_rs256_and_keeps_its_key() {
        let tmp = tempfile::tempdir().unwrap();
        let files = DevFiles::under(tmp.path());
        write_dev_credentials(&files).unwrap();
        let (alg, kid) = jwks_alg(&files);
        assert_eq!(alg, "\"RS256\"");
        let first_token = token(&files);
        assert_eq!(
            accepted(&files, &first_token).await,
            "system:serviceaccount:default:default"
        );

        // A restart mints a new token with the same key: tokens already handed out still verify.
        write_dev_credentials(&files).unwrap();
        assert_eq!(jwks_alg(&files), (alg, kid));
        accepted(&files, &first_token).await;
    }

    #[tokio::test]
    async fn an_existing_p256_issuer_key_keeps_signing_es256() {
        let tmp = tempfile::tempdir().unwrap();
        let files = DevFiles::under(tmp.path());
        write_issuer_key(&files, &SigningKey::generate(KeyType::EcP256).unwrap()).unwrap();
        write_dev_credentials(&files).unwrap();
        assert_eq!(jwks_alg(&files).0, "\"ES256\"");
        assert_eq!(
            accepted(&files, &token(&files)).await,
            "system:serviceaccount:default:default"
        );
    }
}
