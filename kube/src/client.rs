//! The connection to one cluster's API server: where it is, which CA verifies it, and which
//! token meshca presents, worked out once from an [`Endpoint`] (in a pod, the same
//! environment and service-account files every Kubernetes client library reads). Every call
//! re-reads the token file, because projected tokens rotate under a running process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};

use super::error::{KubeClientError, KubeError};

/// The shortest time a watch asks the server to keep its stream open (each watch draws from
/// one to two of these) before the server ends it and the reflector resumes. client-go draws
/// from [5, 10) minutes for the same reasons: a fleet's watches do not reconnect at once, and a
/// silently dead connection is given up.
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The service-account CA bundle every pod has, which verifies its cluster's API server.
pub const IN_CLUSTER_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The pod's own projected service-account token.
pub const IN_CLUSTER_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Where an API server (or a kubelet, which speaks the same objects) is and how meshca proves
/// who it is there. Every field has the in-pod default a Kubernetes client library uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub url: Option<String>,
    /// CA bundle verifying an https server (default: the pod's service-account `ca.crt`).
    pub ca_file: Option<PathBuf>,
    /// Bearer token presented on every call (default: the pod's service-account token).
    pub token_file: Option<PathBuf>,
    /// Bounds each unary call.
    pub request_timeout: Duration,
}

/// A cheap-to-clone handle on one API server.
#[derive(Clone, Debug)]
pub struct KubeClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `https://host:port` (or `http://` in tests), no trailing slash.
    base: Url,
    token_file: PathBuf,
    http: reqwest::Client,
    /// Bounds each unary call; a watch gets its own, longer bound.
    request_timeout: Duration,
    watch_timeout: Duration,
}

// === impl KubeClient ===

impl KubeClient {
    /// A client of `endpoint`; the CA file is read now (only for https), the token on every
    /// call.
    pub fn new(endpoint: &Endpoint) -> Result<Self, KubeClientError> {
        let url = match &endpoint.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => in_cluster_url()?,
        };
        let base = Url::parse(&url).map_err(|e| KubeClientError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "https" | "http") {
            return Err(KubeClientError::BadUrl {
                url,
                reason: "the scheme must be https (or http for a local test server)".into(),
            });
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(endpoint.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if base.scheme() == "https" {
            let path = endpoint
                .ca_file
                .clone()
                .unwrap_or_else(|| IN_CLUSTER_CA_FILE.into());
            let pem = std::fs::read(&path).map_err(|e| KubeClientError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                KubeClientError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            http = http.tls_certs_only(certs);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                token_file: endpoint
                    .token_file
                    .clone()
                    .unwrap_or_else(|| IN_CLUSTER_TOKEN_FILE.into()),
                http: http.build().map_err(KubeClientError::Http)?,
                request_timeout: endpoint.request_timeout,
                watch_timeout: DEFAULT_WATCH_TIMEOUT,
            }),
        })
    }

    /// The same client with watches the server ends after one to two `timeout`s (tests use
    /// short ones).
    pub fn with_watch_timeout(&self, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                base: self.inner.base.clone(),
                token_file: self.inner.token_file.clone(),
                http: self.inner.http.clone(),
                request_timeout: self.inner.request_timeout,
                watch_timeout: timeout,
            }),
        }
    }

    pub(super) fn watch_timeout(&self) -> Duration {
        self.inner.watch_timeout
    }

    pub(super) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// `base` + `path` (already-encoded segments joined by `/`) + query pairs.
    pub(super) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request with meshca's token and returns the response if it is a success;
    /// a failure answer is read and decoded into the matching [`KubeError`].
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<reqwest::Response, KubeError> {
        let token = self.token().await?;
        let mut request = self
            .inner
            .http
            .request(method, url)
            .bearer_auth(token.trim())
            .header("accept", "application/json")
            .timeout(timeout);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(KubeError::Transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status().as_u16();
        let bytes = response.bytes().await.map_err(KubeError::Transport)?;
        Err(KubeError::from_response(code, &bytes))
    }

    /// POSTs `body` to an API path such as `/apis/authentication.k8s.io/v1/tokenreviews`
    /// and returns the answer's bytes: for APIs without a typed operation here.
    pub async fn post_raw(&self, api_path: &str, body: Vec<u8>) -> Result<Vec<u8>, KubeError> {
        let segments: Vec<&str> = api_path.split('/').filter(|s| !s.is_empty()).collect();
        let url = self.url(&segments, &[]);
        let response = self
            .send(Method::POST, url, Some(body), self.inner.request_timeout)
            .await?;
        let bytes = response.bytes().await.map_err(KubeError::Transport)?;
        Ok(bytes.to_vec())
    }

    async fn token(&self) -> Result<String, KubeError> {
        tokio::fs::read_to_string(&self.inner.token_file)
            .await
            .map_err(|source| KubeError::TokenFile {
                path: self.inner.token_file.clone(),
                source,
            })
    }
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, bracketing an IPv6 host.
fn in_cluster_url() -> Result<String, KubeClientError> {
    let host =
        std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeClientError::NoApiServer)?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    Ok(if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Result<KubeClient, KubeClientError> {
        KubeClient::new(&Endpoint {
            url: Some(url.into()),
            ca_file: None,
            token_file: None,
            request_timeout: Duration::from_secs(5),
        })
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        let c = client("http://127.0.0.1:6443/").unwrap();
        let url = c.url(
            &["api", "v1", "configmaps"],
            &[("fieldSelector", "metadata.name=istio-ca-root-cert")],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:6443/api/v1/configmaps?fieldSelector=metadata.name%3Distio-ca-root-cert"
        );
    }

    #[test]
    fn https_needs_a_readable_ca_and_other_schemes_are_refused() {
        let missing = Endpoint {
            url: Some("https://127.0.0.1:6443".into()),
            ca_file: Some("/nonexistent/ca.crt".into()),
            token_file: None,
            request_timeout: Duration::from_secs(5),
        };
        assert!(matches!(
            KubeClient::new(&missing),
            Err(KubeClientError::CaFile { .. })
        ));
        assert!(matches!(
            client("ftp://127.0.0.1"),
            Err(KubeClientError::BadUrl { .. })
        ));
    }
}
