//! What a call to the API server can fail with: the refusals callers act on (not found,
//! already exists, conflict, expired, forbidden) decoded from the server's `Status`, and the
//! failures below HTTP. Token contents never appear in these errors.

use std::path::PathBuf;

use super::objects::Status;

/// Any failed API call. Callers match the variants they handle (a conflict is retried, an
/// expired watch relists) and log the rest. Statuses are boxed to keep every `Result` small.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// 404: the object, or the namespace it would live in, does not exist.
    #[error("not found: {}", .0.message)]
    NotFound(Box<Status>),
    /// 409 with reason `AlreadyExists`: a create lost to another writer.
    #[error("already exists: {}", .0.message)]
    AlreadyExists(Box<Status>),
    /// 409 on update: the `resourceVersion` sent is not the current one.
    #[error("conflict: {}", .0.message)]
    Conflict(Box<Status>),
    /// 410 (reason `Expired` or `Gone`): the version a watch resumes from was compacted away;
    /// only a new list can continue.
    #[error("expired: {}", .0.message)]
    Expired(Box<Status>),
    /// 403: RBAC refused, or admission did (e.g. the namespace is terminating; see
    /// [`Status::is_namespace_terminating`]).
    #[error("forbidden: {}", .0.message)]
    Forbidden(Box<Status>),
    /// Any other failure status (401, 400, 422, 429, 5xx…).
    #[error("API server answered {} {}: {}", .0.code, .0.reason, .0.message)]
    Api(Box<Status>),
    /// meshca's own token could not be read.
    #[error("reading the API token {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No answer: connect, TLS, timeout, or the connection broke mid-body.
    #[error("API server unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    /// An answer that is not the JSON it should be.
    #[error("malformed {what} from the API server: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Building a client from the configuration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeClientError {
    #[error("no API server URL is configured and KUBERNETES_SERVICE_HOST is not in the environment (not in a pod?)")]
    NoApiServer,
    #[error("URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

// === impl KubeError ===

impl KubeError {
    /// Decodes a failure answer: the `Status` body when there is one, else a status made from
    /// the HTTP code and the first bytes of the body (a proxy's error page, say).
    pub fn from_response(http_code: u16, body: &[u8]) -> Self {
        let status = match serde_json::from_slice::<Status>(body) {
            Ok(s) if s.code != 0 || !s.reason.is_empty() => Status {
                code: if s.code == 0 { http_code } else { s.code },
                ..s
            },
            _ => Status {
                code: http_code,
                reason: String::new(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                details: None,
            },
        };
        Self::from_status(status)
    }

    /// Classifies a `Status` (also what a watch's ERROR event carries).
    pub fn from_status(status: Status) -> Self {
        let status = Box::new(status);
        match (status.code, status.reason.as_str()) {
            (404, _) => Self::NotFound(status),
            (409, "AlreadyExists") => Self::AlreadyExists(status),
            (409, _) => Self::Conflict(status),
            (410, _) | (_, "Expired" | "Gone") => Self::Expired(status),
            (403, _) => Self::Forbidden(status),
            _ => Self::Api(status),
        }
    }

    /// The namespace is being deleted: nothing may be created in it, and trying again is
    /// pointless.
    pub fn is_namespace_terminating(&self) -> bool {
        matches!(self, Self::Forbidden(s) if s.is_namespace_terminating())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(code: u16, body: serde_json::Value) -> KubeError {
        KubeError::from_response(code, &serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn statuses_become_the_variants_callers_match() {
        let conflict = decode(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "Operation cannot be fulfilled on configmaps \"istio-ca-root-cert\": the object has been modified; please apply your changes to the latest version and try again",
                   "reason": "Conflict", "details": {"name": "istio-ca-root-cert", "kind": "configmaps"}, "code": 409}),
        );
        assert!(matches!(conflict, KubeError::Conflict(_)), "{conflict:?}");
        let exists = decode(
            409,
            json!({"kind": "Status", "reason": "AlreadyExists", "code": 409, "message": "configmaps \"istio-ca-root-cert\" already exists"}),
        );
        assert!(matches!(exists, KubeError::AlreadyExists(_)), "{exists:?}");
        let terminating = decode(
            403,
            json!({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                   "message": "configmaps \"istio-ca-root-cert\" is forbidden: unable to create new content in namespace gone because it is being terminated",
                   "details": {"name": "istio-ca-root-cert", "kind": "configmaps",
                               "causes": [{"type": "NamespaceTerminating", "message": "namespace gone is being terminated", "field": "metadata.namespace"}]}}),
        );
        assert!(terminating.is_namespace_terminating());
        let rbac = decode(
            403,
            json!({"kind": "Status", "reason": "Forbidden", "code": 403}),
        );
        assert!(matches!(rbac, KubeError::Forbidden(_)) && !rbac.is_namespace_terminating());
        assert!(matches!(
            decode(
                410,
                json!({"kind": "Status", "reason": "Expired", "code": 410})
            ),
            KubeError::Expired(_)
        ));
        assert!(matches!(
            decode(
                404,
                json!({"kind": "Status", "reason": "NotFound", "code": 404})
            ),
            KubeError::NotFound(_)
        ));
    }

    #[test]
    fn a_body_that_is_not_a_status_keeps_the_http_code() {
        let e = KubeError::from_response(502, b"<html>bad gateway</html>");
        let KubeError::Api(status) = e else {
            panic!("{e:?}")
        };
        assert_eq!(status.code, 502);
        assert!(status.message.contains("bad gateway"));
        assert!(matches!(
            KubeError::from_response(410, b""),
            KubeError::Expired(_)
        ));
    }
}
