//! `meshca admin`'s HTTP client: the caller's credentials on every request, answers decoded
//! into the views the server serializes (`meshca_ra::rest::views`), and the API's error bodies
//! as [`AdminError`]s.

use std::io::Write;
use std::path::PathBuf;

use meshca_ra::rest::views::ErrorBody;
use serde::de::DeserializeOwned;
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
    /// The answer to `path` is not the view the API documents.
    #[error("{path}: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("the audit log is broken at event {seq}: {reason}")]
    AuditBroken { seq: i64, reason: String },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "timed out after {after} waiting to {step} authority {authority}: {waiting_for}; \
         the rotation stays where it is; run the command again to continue"
    )]
    RotationTimeout {
        step: &'static str,
        authority: String,
        after: String,
        waiting_for: String,
    },
}

/// An answer of the API: its view, and its JSON as the server sent it, which `--json` prints.
#[derive(Debug)]
pub struct Answer<T> {
    pub view: T,
    pub json: Value,
}

/// A REST client with the caller's credentials.
#[derive(Debug)]
pub struct AdminClient {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
    /// `--ca`'s roots (and any learned since), when given; else the system's.
    roots_pem: Option<Vec<u8>>,
    identity_pem: Option<Vec<u8>>,
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
        let roots_pem = args.ca.as_ref().map(read).transpose()?;
        let identity_pem = args.identity.as_ref().map(read).transpose()?;
        let named = |path: &Option<PathBuf>, e: String| match path {
            Some(path) => AdminError::Setup(format!("{}: {e}", path.display())),
            None => AdminError::Setup(e),
        };
        let http =
            http_client(roots_pem.as_deref(), identity_pem.as_deref()).map_err(|e| match e {
                ClientSetup::Roots(e) => named(&args.ca, e),
                ClientSetup::Identity(e) => named(&args.identity, e),
            })?;
        let base = reqwest::Url::parse(&args.url)
            .map_err(|e| AdminError::Setup(format!("--url {}: {e}", args.url)))?;
        Ok(Self {
            base,
            token: args.token.clone(),
            http,
            roots_pem,
            identity_pem,
        })
    }

    /// Adds the server's current trust bundle to the roots it is verified with. Fetched over a
    /// connection those roots verified, so it is as trustworthy as they are; a rotation moves
    /// the server's own certificate to the new root, and a long-running command must follow.
    pub async fn trust_current_bundle(&mut self) -> Result<(), AdminError> {
        let Some(roots) = &self.roots_pem else {
            return Ok(());
        };
        let url = self.url("/v1/trust-bundle", &[]);
        let bundle = self.text(url, "application/x-pem-file").await?;
        let mut learned = roots.clone();
        learned.extend_from_slice(bundle.as_bytes());
        self.http = http_client(Some(&learned), self.identity_pem.as_deref())
            .map_err(|e| AdminError::Setup(format!("the server's trust bundle: {e:?}")))?;
        self.roots_pem = Some(learned);
        Ok(())
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
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|body| body.message)
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

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<Answer<T>, AdminError> {
        let text = self.text(self.url(path, query), "application/json").await?;
        decode(path, &text)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
        body: &impl serde::Serialize,
    ) -> Result<Answer<T>, AdminError> {
        let body = serde_json::to_string(body).expect("request views serialize");
        let url = self.url(path, query);
        let request = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body);
        let response = self.send(request, &url).await?;
        let text = response.text().await.map_err(|source| AdminError::Http {
            url: url.to_string(),
            source,
        })?;
        decode(path, &text)
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

#[derive(Debug)]
enum ClientSetup {
    Roots(String),
    Identity(String),
}

fn http_client(
    roots_pem: Option<&[u8]>,
    identity_pem: Option<&[u8]>,
) -> Result<reqwest::Client, ClientSetup> {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = roots_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientSetup::Roots(e.to_string()))?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some(pem) = identity_pem {
        let identity =
            reqwest::Identity::from_pem(pem).map_err(|e| ClientSetup::Identity(e.to_string()))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ClientSetup::Roots(e.to_string()))
}

/// The answer to `path`, as its view and as the JSON it came as.
fn decode<T: DeserializeOwned>(path: &str, text: &str) -> Result<Answer<T>, AdminError> {
    let error = |source| AdminError::Decode {
        path: path.to_string(),
        source,
    };
    let json: Value = serde_json::from_str(text).map_err(error)?;
    let view = T::deserialize(&json).map_err(error)?;
    Ok(Answer { view, json })
}

#[cfg(test)]
mod tests {
    use meshca_ra::rest::views::{AuthorityList, Verdict};

    use super::*;

    #[test]
    fn answers_decode_into_the_servers_views_and_keep_their_json() {
        let text = r#"{"intact": true, "checked": 7, "head": "ab"}"#;
        let answer: Answer<Verdict> = decode("/v1/audit/verify", text).unwrap();
        assert!(answer.view.intact);
        assert_eq!(answer.view.head.as_deref(), Some("ab"));
        assert!(answer.view.first_broken.is_none());
        assert_eq!(answer.json, serde_json::from_str::<Value>(text).unwrap());

        let wrong = decode::<AuthorityList>("/v1/authorities", r#"{"authorities": 3}"#);
        let error = wrong.unwrap_err().to_string();
        assert!(
            error.starts_with("/v1/authorities: invalid type"),
            "{error}"
        );
        let garbage = decode::<Verdict>("/v1/audit/verify", "<html>").unwrap_err();
        assert!(
            garbage.to_string().starts_with("/v1/audit/verify: "),
            "{garbage}"
        );
    }
}
