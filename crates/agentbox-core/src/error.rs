//! The one error type every backend returns.

use agentbox_config::ValidationErrors;

/// What went wrong, in variants a caller can act on.
#[allow(
    clippy::error_impl_error,
    reason = "the crate's one error type, used as `agentbox_core::Error` like `std::io::Error`"
)]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox, run, file or process does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The configuration is invalid; every problem is listed.
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(#[from] ValidationErrors),
    /// A request is malformed (bad path, empty command, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request conflicts with existing state (same run id, different config).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A limit was hit (too many sandboxes, quota, rate).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A file or payload is larger than a limit allows; the message names the limit and what to do instead.
    #[error("too large: {0}")]
    TooLarge(String),
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The backend or host can't do this; the message says why and what to do instead.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The sandboxed operation was refused (permission, policy).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The backend failed; the message says where, and the source (when there is one) why.
    #[error("backend failure: {message}")]
    Backend {
        /// Where it failed, for the user.
        message: String,
        /// The error underneath, kept for the chain.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The manager is shutting down and takes no new work.
    #[error("shutting down: {0}")]
    ShuttingDown(String),
    /// An I/O error on the host side.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A short machine-readable code for this error (`not_found`, `invalid_config`, ...).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::InvalidConfig(_) => "invalid_config",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Conflict(_) => "conflict",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::TooLarge(_) => "too_large",
            Self::Timeout(_) => "timeout",
            Self::Unsupported(_) => "unsupported",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Backend { .. } => "backend_failure",
            Self::ShuttingDown(_) => "shutting_down",
            Self::Io(_) => "io",
        }
    }
}

impl Error {
    /// A backend failure described by `message` alone.
    #[must_use]
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend { message: message.into(), source: None }
    }

    /// A backend failure at `message`, caused by `source` (kept as the error's source).
    #[must_use]
    pub fn backend_with(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::Error;

    #[test]
    fn a_backend_failure_keeps_its_source() {
        let e = Error::backend_with("opening the sandbox root", std::io::Error::other("denied"));
        assert_eq!(e.to_string(), "backend failure: opening the sandbox root");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("denied"));
        assert_eq!(e.code(), "backend_failure");
        assert!(Error::backend("x").source().is_none());
        assert_eq!(Error::ShuttingDown("the manager is stopping".into()).code(), "shutting_down");
    }
}
