//! Typed core/v1 operations on any [`Resource`]: get, list, watch, create and update (PUT with
//! the object's `resourceVersion`, so a stale write is refused with 409 rather than lost).

use std::time::Duration;

use reqwest::Method;

use super::client::KubeClient;
use super::error::KubeError;
use super::objects::{ObjectList, RawWatchEvent, Resource, WatchEvent};

/// Longest watch line accepted: etcd caps an object at 1.5 MiB, so this is generous.
const MAX_WATCH_LINE: usize = 8 << 20;

/// Objects per list page, client-go's pager default: 10,000 pods come in 20 answers of a
/// few MiB each rather than one of ~100 MiB held in memory at once.
pub const LIST_PAGE_SIZE: usize = 500;

/// Server-side filters of a list or watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    /// e.g. `istio-injection=enabled,env!=dev`.
    pub label_selector: Option<String>,
    /// e.g. `metadata.name=istio-ca-root-cert`.
    pub field_selector: Option<String>,
}

/// An open watch: one event per line of the response body, until the server ends it.
#[derive(Debug)]
pub struct WatchStream<R> {
    response: reqwest::Response,
    buffer: Vec<u8>,
    _kind: std::marker::PhantomData<fn() -> R>,
}

// === impl ListParams ===

impl ListParams {
    fn query(&self) -> Vec<(&'static str, &str)> {
        let mut query = Vec::new();
        if let Some(s) = &self.label_selector {
            query.push(("labelSelector", s.as_str()));
        }
        if let Some(s) = &self.field_selector {
            query.push(("fieldSelector", s.as_str()));
        }
        query
    }
}

// === impl KubeClient: typed operations ===

impl KubeClient {
    /// One object; `namespace` is ignored for cluster-scoped kinds.
    pub async fn get<R: Resource>(&self, namespace: &str, name: &str) -> Result<R, KubeError> {
        let url = self.url(&object_path::<R>(namespace, name), &[]);
        let response = self
            .send(Method::GET, url, None, self.request_timeout())
            .await?;
        decode_body(response, R::KIND).await
    }

    /// Every matching object, in `namespace` or (None) across all, with the version to watch
    /// from.
    pub async fn list<R: Resource>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<ObjectList<R>, KubeError> {
        let url = self.url(&collection_path::<R>(namespace), &params.query());
        let response = self
            .send(Method::GET, url, None, self.request_timeout())
            .await?;
        decode_body(response, "list").await
    }

    /// Every matching object, [`LIST_PAGE_SIZE`] at a time: `on_page` gets each page's objects
    /// as it arrives. Returns the version the whole list is consistent at (the first page's;
    /// the server keeps later pages at it). A continue token that outlived compaction fails
    /// with [`KubeError::Expired`], and the caller lists again from the start.
    pub async fn list_pages<R: Resource>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
        mut on_page: impl FnMut(Vec<R>),
    ) -> Result<String, KubeError> {
        let limit = LIST_PAGE_SIZE.to_string();
        let mut resource_version = None;
        let mut next: Option<String> = None;
        loop {
            let mut query = params.query();
            query.push(("limit", limit.as_str()));
            if let Some(token) = &next {
                query.push(("continue", token.as_str()));
            }
            let url = self.url(&collection_path::<R>(namespace), &query);
            let response = self
                .send(Method::GET, url, None, self.request_timeout())
                .await?;
            let page: ObjectList<R> = decode_body(response, "list").await?;
            resource_version.get_or_insert(page.metadata.resource_version);
            on_page(page.items);
            match page.metadata.continue_token {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => return Ok(resource_version.unwrap_or_default()),
            }
        }
    }

    /// Changes after `resource_version` (a list's, or the last event's), with bookmarks. The
    /// server ends the stream after the client's watch timeout; a version it no longer has
    /// ends it with an ERROR event carrying 410, or a bare 410 answer.
    pub async fn watch<R: Resource>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
        resource_version: &str,
    ) -> Result<WatchStream<R>, KubeError> {
        // Between one and two watch timeouts, drawn per watch (client-go: 5 to 10 minutes).
        let timeout = self
            .watch_timeout()
            .mul_f64(1.0 + meshca_pki::time::random_unit());
        let seconds = timeout.as_secs().max(1).to_string();
        let mut query = params.query();
        query.extend([
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", seconds.as_str()),
        ]);
        let url = self.url(&collection_path::<R>(namespace), &query);
        // The server closes the stream at `timeoutSeconds`; the client's own bound is a little
        // later, so a connection that died silently is given up rather than waited on forever.
        let bound = Duration::from_secs(timeout.as_secs().max(1)) + self.request_timeout();
        let response = self.send(Method::GET, url, None, bound).await?;
        Ok(WatchStream {
            response,
            buffer: Vec::new(),
            _kind: std::marker::PhantomData,
        })
    }

    /// Creates `object` in its `metadata.namespace`; 409 AlreadyExists if the name is taken.
    pub async fn create<R: Resource>(&self, object: &R) -> Result<R, KubeError> {
        let namespace = object.metadata().namespace.clone().unwrap_or_default();
        let url = self.url(&collection_path::<R>(Some(&namespace)), &[]);
        let response = self
            .send(
                Method::POST,
                url,
                Some(encode_object(object)),
                self.request_timeout(),
            )
            .await?;
        decode_body(response, R::KIND).await
    }

    /// Replaces `object`; its `metadata.resourceVersion` must be the current one or the server
    /// answers 409 Conflict.
    pub async fn update<R: Resource>(&self, object: &R) -> Result<R, KubeError> {
        let meta = object.metadata();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let url = self.url(&object_path::<R>(&namespace, &meta.name), &[]);
        let response = self
            .send(
                Method::PUT,
                url,
                Some(encode_object(object)),
                self.request_timeout(),
            )
            .await?;
        decode_body(response, R::KIND).await
    }
}

// === impl WatchStream ===

impl<R: Resource> WatchStream<R> {
    /// The next event; `None` when the server ended the stream cleanly.
    pub async fn next(&mut self) -> Option<Result<WatchEvent<R>, KubeError>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(decode_event(&line));
            }
            if self.buffer.len() > MAX_WATCH_LINE {
                return Some(Err(KubeError::Decode {
                    what: "watch event",
                    source: serde::de::Error::custom("a watch line over 8 MiB"),
                }));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                // A last line without its newline still counts.
                Ok(None) if self.buffer.iter().any(|b| !b.is_ascii_whitespace()) => {
                    let line = std::mem::take(&mut self.buffer);
                    return Some(decode_event(&line));
                }
                Ok(None) => return None,
                Err(e) => return Some(Err(KubeError::Transport(e))),
            }
        }
    }
}

fn decode_event<R: Resource>(line: &[u8]) -> Result<WatchEvent<R>, KubeError> {
    serde_json::from_slice::<RawWatchEvent>(line)
        .and_then(RawWatchEvent::into_event)
        .map_err(|source| KubeError::Decode {
            what: "watch event",
            source,
        })
}

/// `/api/v1/namespaces/{ns}/{plural}` for namespaced kinds in one namespace, else
/// `/api/v1/{plural}`.
fn collection_path<R: Resource>(namespace: Option<&str>) -> Vec<&str> {
    match namespace {
        Some(ns) if R::NAMESPACED => vec!["api", "v1", "namespaces", ns, R::PLURAL],
        _ => vec!["api", "v1", R::PLURAL],
    }
}

fn object_path<'a, R: Resource>(namespace: &'a str, name: &'a str) -> Vec<&'a str> {
    let mut path = collection_path::<R>(Some(namespace));
    path.push(name);
    path
}

/// The object with `apiVersion` and `kind` set, as the server expects a request body.
fn encode_object<R: Resource>(object: &R) -> Vec<u8> {
    let mut value = serde_json::to_value(object).expect("objects serialize");
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), "v1".into());
        map.insert("kind".into(), R::KIND.into());
    }
    serde_json::to_vec(&value).expect("JSON values serialize")
}

async fn decode_body<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &'static str,
) -> Result<T, KubeError> {
    let bytes = response.bytes().await.map_err(KubeError::Transport)?;
    serde_json::from_slice(&bytes).map_err(|source| KubeError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{ConfigMap, Namespace};

    #[test]
    fn paths_follow_the_kind_scope() {
        assert_eq!(
            object_path::<ConfigMap>("web", "istio-ca-root-cert"),
            [
                "api",
                "v1",
                "namespaces",
                "web",
                "configmaps",
                "istio-ca-root-cert"
            ]
        );
        assert_eq!(
            collection_path::<ConfigMap>(None),
            ["api", "v1", "configmaps"]
        );
        assert_eq!(
            object_path::<Namespace>("", "web"),
            ["api", "v1", "namespaces", "web"]
        );
    }

    #[test]
    fn bodies_name_their_kind() {
        let body: serde_json::Value =
            serde_json::from_slice(&encode_object(&ConfigMap::default())).unwrap();
        assert_eq!(body["kind"], "ConfigMap");
        assert_eq!(body["apiVersion"], "v1");
    }
}
