//! Errors: the JSON error body every route returns, and the crate's setup errors.

use std::path::PathBuf;

use agentbox_config::ValidationError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to an API client as `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<ValidationError>,
    retry_after_secs: Option<u64>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code: `invalid_request`, `invalid_config`, `unauthorized`, `not_found`,
    /// `conflict`, `payload_too_large`, `rate_limited`, `limit_exceeded`, `timeout`, ...
    pub code: String,
    /// A human-readable explanation saying what to do.
    pub message: String,
    /// For `invalid_config`: every invalid field with its path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldProblem>)]
    pub details: Vec<ValidationError>,
}

/// One invalid field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldProblem {
    /// The field's path, such as `network.dns_servers[1]`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl ApiError {
    /// An error with a status, a code and a message.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: Vec::new(), retry_after_secs: None }
    }

    /// 400 `invalid_request`.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    #[must_use]
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found`.
    #[must_use]
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `payload_too_large`.
    #[must_use]
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than the limit of {limit} bytes; send less or raise the server's limit"
            ),
        )
    }

    /// 429 `rate_limited` with a Retry-After hint.
    #[must_use]
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests for this token; retry after {retry_after_secs} s"),
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 504 `timeout`.
    #[must_use]
    pub fn timeout(what: &str, after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("{what} did not finish within {}; retry, or raise the limit", humantime::format_duration(after)),
        )
    }

    /// Maps a backend's error about an operation on a well-formed request: what the backend calls an invalid
    /// request (a path that is a directory, a component that is not one, a symlink loop...) depends on the
    /// sandbox's state, not on the request's form, so it is 422 rather than 400.
    #[must_use]
    pub fn from_operation(e: agentbox_core::Error) -> Self {
        match e {
            agentbox_core::Error::InvalidRequest(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m),
            e => e.into(),
        }
    }

    /// Attaches a Retry-After hint.
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Replaces absolute host paths in a server-side failure message so 500s never reveal the host's layout.
fn redact_paths(message: &str) -> String {
    message
        .split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_start_matches(['"', '\'', '(', '[', '`']);
            if trimmed.starts_with('/') && trimmed.trim_end().len() > 1 {
                let lead = &word[..word.len() - trimmed.len()];
                let tail: String = word.chars().rev().take_while(|c| c.is_whitespace()).collect();
                format!("{lead}<path>{tail}")
            } else {
                word.to_owned()
            }
        })
        .collect()
}

/// Host I/O failures that are about the request (a name too long, a full disk, a missing file), with their answer.
fn io_status(e: &std::io::Error) -> Option<(StatusCode, &'static str, &'static str)> {
    use std::io::ErrorKind as K;
    Some(match e.kind() {
        K::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such file or directory"),
        K::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied", "the sandbox refused access"),
        K::AlreadyExists => (StatusCode::CONFLICT, "conflict", "it already exists"),
        K::InvalidFilename => {
            (StatusCode::UNPROCESSABLE_ENTITY, "name_too_long", "a name is too long for the sandbox's filesystem")
        }
        K::IsADirectory | K::NotADirectory | K::DirectoryNotEmpty => {
            (StatusCode::UNPROCESSABLE_ENTITY, "wrong_file_type", "the path is not of the expected kind")
        }
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => {
            (StatusCode::PAYLOAD_TOO_LARGE, "storage_full", "the sandbox's storage quota is exhausted")
        }
        K::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_request", "the request is invalid"),
        _ => return None,
    })
}

impl From<agentbox_core::Error> for ApiError {
    fn from(e: agentbox_core::Error) -> Self {
        use agentbox_core::Error as E;
        match e {
            E::NotFound(what) => Self::not_found(format!("{what} not found")),
            E::InvalidConfig(errors) => {
                let mut out = Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_config",
                    format!("invalid sandbox configuration: {errors}"),
                );
                out.details = errors.0;
                out
            }
            E::InvalidRequest(m) => Self::bad_request(m),
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            E::LimitExceeded(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", m).with_retry_after(5),
            E::TooLarge(m) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            E::Timeout(m) => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", m),
            E::Unsupported(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unsupported", m),
            E::ShuttingDown(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", m),
            E::PermissionDenied(m) => Self::new(StatusCode::FORBIDDEN, "permission_denied", m),
            E::Io(io) if io_status(&io).is_some() => {
                let (status, code, what) = io_status(&io).unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, "io", ""));
                Self::new(status, code, format!("{what}: {}", redact_paths(&io.to_string())))
            }
            e @ (E::Backend { .. } | E::Io(_)) => {
                tracing::error!(error = %e, "request failed in the backend");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    if matches!(e, E::Io(_)) { "io" } else { "backend_failure" },
                    format!("{}; the server log has the details", redact_paths(&e.to_string())),
                )
            }
        }
    }
}

impl ApiError {
    /// The JSON body this error answers with (also the data of an `error` event in a stream).
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message, details: self.details },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Why the server could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration file or a flag is invalid.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// The data directory or a file in it could not be used.
    #[error("cannot use {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The sandbox registry failed.
    #[error("sandbox registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The backend failed while recovering sandboxes.
    #[error("recovering sandboxes: {0}")]
    Recovery(#[from] agentbox_core::Error),
    /// Listening or serving failed.
    #[error("cannot serve on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The backend could not be opened.
    #[error(transparent)]
    OpenBackend(#[from] OpenBackendError),
    /// A configured egress secret is unusable.
    #[error("invalid server configuration: egress.secrets.{name}: {source}")]
    Secret {
        /// The secret's name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: SecretConfigError,
    },
}

/// Why a backend could not be opened, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenBackendError {
    /// The local backend refused to start (not root, no cgroup v2, a missing kernel feature).
    #[error("cannot start the local backend: {0}")]
    Local(#[source] agentbox_core::Error),
    /// The E2B backend has no usable configuration.
    #[error("cannot start the e2b backend: {0} (set E2B_API_KEY, or use --backend local)")]
    E2b(#[source] agentbox_core::Error),
}

/// Why a configured egress secret (`[egress.secrets.NAME]`) is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretConfigError {
    /// Not exactly one of `value`, `env` and `file` is set.
    #[error("set exactly one of value, env and file")]
    NotOneSource,
    /// The name is not upper-case letters, digits and `_`.
    #[error("the name must be upper-case letters, digits and '_'")]
    Name,
    /// The backend's secret store refused it.
    #[error("{0}")]
    Store(#[source] agentbox_core::egress::SecretError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_never_show_host_paths() {
        let e: ApiError = agentbox_core::Error::backend("cannot open /var/lib/agentbox/sb-1/rootfs: denied").into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message().contains("/var/lib"), "{}", e.message());
        assert!(e.message().contains("<path>"), "{}", e.message());
    }

    #[test]
    fn statuses_follow_the_error_kind() {
        let check = |e: agentbox_core::Error, status: u16, code: &str| {
            let api = ApiError::from(e);
            assert_eq!((api.status().as_u16(), api.code()), (status, code));
        };
        check(agentbox_core::Error::NotFound("run x".into()), 404, "not_found");
        check(agentbox_core::Error::InvalidRequest("x".into()), 400, "invalid_request");
        check(agentbox_core::Error::Conflict("x".into()), 409, "conflict");
        check(agentbox_core::Error::LimitExceeded("x".into()), 429, "limit_exceeded");
        check(agentbox_core::Error::PermissionDenied("x".into()), 403, "permission_denied");
        check(agentbox_core::Error::Timeout("x".into()), 504, "timeout");
    }
}
