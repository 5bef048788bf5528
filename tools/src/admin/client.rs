//! `meshca admin`'s HTTP client: the caller's credentials on every request, and the API's
//! errors (`{"error", "message"}`) as [`AdminError`]s.

use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;

use super::args::AdminArgs;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("the audit log is broken at event {seq}: {reason}")]
    AuditBroken { seq: i64, reason: String },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// A REST client with the caller's credentials.
#[derive(Debug)]
pub struct AdminClient {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
}

pub(super) fn read(path: &PathBuf) -> Result<Vec<u8>, AdminError> {
    std::fs::read(path).map_err(|source| AdminError::Read {
        path: path.clone(),
        source,
    })
}

// === impl AdminClient ===

impl AdminClient {
    pub fn new(args: &AdminArgs) -> Result<Self, AdminError> {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &args.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
                .map_err(|e| AdminError::Setup(format!("{}: {e}", ca.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(identity) = &args.identity {
            let identity = reqwest::Identity::from_pem(&read(identity)?)
                .map_err(|e| AdminError::Setup(format!("{}: {e}", identity.display())))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| AdminError::Setup(e.to_string()))?;
        let base = reqwest::Url::parse(&args.url)
            .map_err(|e| AdminError::Setup(format!("--url {}: {e}", args.url)))?;
        Ok(Self {
            base,
            token: args.token.clone(),
            http,
        })
    }

    pub(super) fn url(&self, path: &str, query: &[(&str, Option<String>)]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_path(path);
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                if let Some(value) = value {
                    pairs.append_pair(key, value);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &reqwest::Url,
    ) -> Result<reqwest::Response, AdminError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(AdminError::Api { status, message })
    }

    pub(super) async fn text(&self, url: reqwest::Url, accept: &str) -> Result<String, AdminError> {
        let response = self
            .send(self.http.get(url.clone()).header("accept", accept), &url)
            .await?;
        response.text().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })
    }

    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<Value, AdminError> {
        let text = self.text(self.url(path, query), "application/json").await?;
        serde_json::from_str(&text).map_err(|e| AdminError::Setup(format!("{path}: {e}")))
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        let url = self.url(path, &[]);
        let request = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body.to_string());
        let response = self.send(request, &url).await?;
        let text = response.text().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| AdminError::Setup(format!("{path}: {e}")))
    }

    /// GETs `url` and copies the body to `out` as it arrives.
    pub(super) async fn stream(
        &self,
        url: reqwest::Url,
        out: &mut impl Write,
    ) -> Result<(), AdminError> {
        let mut response = self.send(self.http.get(url.clone()), &url).await?;
        while let Some(chunk) = response.chunk().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })? {
            out.write_all(&chunk)?;
        }
        Ok(())
    }
}
