//! The API's errors: a status and a JSON body `{"error", "message"}` (the documented
//! [`ErrorBody`]), never the internals, which are logged.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::views::ErrorBody;

/// An error as the API shows it.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    /// `429`: when to try again (`Retry-After`, whole seconds).
    retry_after: Option<std::time::Duration>,
}

// === impl ApiError ===

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `429 Too Many Requests`: the client's address has used up its failed authentications.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address; retry later",
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the caller is told.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `429`: the `Retry-After` seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
            .map(|wait| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// What the CA service (split deployment) answered, in HTTP terms. Its messages are the
    /// service's own caller-facing ones, so they are passed on; internal ones are not.
    pub fn from_remote(error: meshca_ca::remote::RemoteError) -> Self {
        use meshca_ca::remote::RemoteErrorKind as Kind;
        match error.kind {
            Kind::NotFound => Self::not_found(error.message),
            Kind::Conflict => Self::conflict(error.message),
            Kind::InvalidArgument => Self::bad_request(error.message),
            Kind::Unavailable => {
                tracing::warn!(%error, "CA service unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the CA service is unavailable; nothing was changed",
                )
            }
            Kind::Denied | Kind::Internal => Self::internal(&error),
        }
    }

    /// A failure the caller cannot fix: logged in full, answered in general terms.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "REST request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = match self.status {
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::BAD_REQUEST => "invalid_argument",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            _ => "internal",
        };
        let retry_after = self.retry_after();
        let body = ErrorBody {
            error: error.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"meshca\""),
            );
        }
        response
    }
}

/// A path parameter, or axum's refusal of it as the API's JSON error.
pub(super) fn path_of<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::new(e.status(), e.body_text()))
}
