//! The one error type of the E2B API, and how it is written: the control plane's and envd's REST routes answer
//! `{"code": <status>, "message"}`, Connect RPCs `{"code": "not_found", "message"}` (in the body of a unary call,
//! in the end-of-stream message of a stream).

use agentbox_e2b_wire::connect::ConnectError;
use agentbox_e2b_wire::wire::ApiErrorBody;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What went wrong in an E2B API call.
#[derive(Debug, thiserror::Error)]
pub enum E2bApiError {
    /// The `[e2b_api]` configuration is invalid.
    #[error("invalid [e2b_api] configuration: {0}")]
    Config(String),
    /// The template id is not in the template table.
    #[error(
        "template {template:?} is not known to this agentboxd; use one of: {known} (or map it to a preset in [e2b_api.templates])"
    )]
    UnknownTemplate {
        /// The template asked for.
        template: String,
        /// The templates that exist.
        known: String,
    },
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The API key or access token is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// No such sandbox, process, file or context.
    #[error("{0}")]
    NotFound(String),
    /// The sandbox is gone (envd's `/health` and the proxy answer 502 with "was not found").
    #[error("the sandbox {0} was not found: it was killed or its timeout expired")]
    SandboxGone(String),
    /// The sandbox is paused: its envd does not answer until it is resumed.
    #[error("the sandbox {0} is paused: resume it with Sandbox.connect")]
    SandboxPaused(String),
    /// A process stream was cut by its sandbox going away.
    #[error("the connection to the sandbox ended before the stream of process {0} completed")]
    StreamCut(u32),
    /// The path already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// A limit was reached.
    #[error("{0}")]
    LimitReached(String),
    /// Not implemented by agentboxd's E2B API.
    #[error("{0}")]
    Unimplemented(String),
    /// Something failed on the server's side.
    #[error("{0}")]
    Internal(String),
    /// The sandbox manager or backend failed.
    #[error("{what} failed: {source}")]
    Sandbox {
        /// What was being done.
        what: &'static str,
        /// The error underneath.
        #[source]
        source: agentbox_core::Error,
    },
    /// A code tool failed.
    #[error("{what} failed: {source}")]
    Tool {
        /// What was being done.
        what: &'static str,
        /// The error underneath.
        #[source]
        source: agentbox_tools::ToolError,
    },
}

impl E2bApiError {
    /// Wraps a manager or backend error with what was being done.
    pub fn sandbox(what: &'static str) -> impl FnOnce(agentbox_core::Error) -> Self {
        move |source| Self::Sandbox { what, source }
    }

    /// Wraps a tool error with what was being done.
    pub fn tool(what: &'static str) -> impl FnOnce(agentbox_tools::ToolError) -> Self {
        move |source| Self::Tool { what, source }
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        use agentbox_core::Error as E;
        use agentbox_tools::ToolErrorKind as K;
        match self {
            Self::Config(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnknownTemplate { .. } | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::SandboxGone(_) | Self::SandboxPaused(_) => StatusCode::BAD_GATEWAY,
            Self::AlreadyExists(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::StreamCut(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Sandbox { source, .. } => match source {
                E::NotFound(_) => StatusCode::NOT_FOUND,
                E::InvalidConfig(_) | E::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                E::Conflict(_) => StatusCode::CONFLICT,
                E::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                E::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                E::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                E::PermissionDenied(_) => StatusCode::FORBIDDEN,
                E::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Tool { source, .. } => match source.kind {
                K::InvalidInput => StatusCode::BAD_REQUEST,
                K::NotFound | K::UnknownTool => StatusCode::NOT_FOUND,
                K::Timeout => StatusCode::GATEWAY_TIMEOUT,
                K::Unsupported | K::NotConfigured => StatusCode::NOT_IMPLEMENTED,
                K::PermissionDenied => StatusCode::FORBIDDEN,
                K::Conflict => StatusCode::CONFLICT,
                K::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The Connect error code.
    #[must_use]
    pub fn connect_code(&self) -> &'static str {
        match self {
            Self::AlreadyExists(_) => "already_exists",
            Self::Unimplemented(_) => "unimplemented",
            Self::SandboxGone(_) | Self::SandboxPaused(_) | Self::StreamCut(_) => "unavailable",
            _ => match self.status() {
                StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_argument",
                StatusCode::UNAUTHORIZED => "unauthenticated",
                StatusCode::FORBIDDEN => "permission_denied",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::CONFLICT => "failed_precondition",
                StatusCode::TOO_MANY_REQUESTS => "resource_exhausted",
                StatusCode::GATEWAY_TIMEOUT => "deadline_exceeded",
                StatusCode::NOT_IMPLEMENTED => "unimplemented",
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                _ => "internal",
            },
        }
    }

    /// As a Connect error message.
    #[must_use]
    pub fn to_connect(&self) -> ConnectError {
        ConnectError { code: self.connect_code().to_owned(), message: self.to_string() }
    }

    /// As the response of a failed unary Connect call (the status Connect maps the code to).
    #[must_use]
    pub fn connect_response(&self) -> Response {
        let status = match self.connect_code() {
            "already_exists" | "failed_precondition" => StatusCode::CONFLICT,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => self.status(),
        };
        (status, Json(self.to_connect())).into_response()
    }
}

impl IntoResponse for E2bApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error()
            && !matches!(self, Self::SandboxGone(_) | Self::SandboxPaused(_) | Self::Unimplemented(_))
        {
            tracing::warn!(error = %self, "E2B API call failed");
        }
        plain(status, &self.to_string())
    }
}

/// `{"code": <status>, "message": ...}` with that status.
pub(crate) fn plain(status: StatusCode, message: &str) -> Response {
    (status, Json(ApiErrorBody { code: status.as_u16(), message: message.to_owned() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_connect_and_http() {
        let e = E2bApiError::Sandbox { what: "reading", source: agentbox_core::Error::NotFound("x".into()) };
        assert_eq!((e.status(), e.connect_code()), (StatusCode::NOT_FOUND, "not_found"));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(E2bApiError::AlreadyExists("d".into()).connect_code(), "already_exists");
        assert_eq!(E2bApiError::SandboxGone("s".into()).status(), StatusCode::BAD_GATEWAY);
        assert!(E2bApiError::SandboxGone("s".into()).to_string().contains("was not found"));
    }
}
