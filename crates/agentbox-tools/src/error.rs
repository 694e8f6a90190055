//! Errors a tool call returns: results the model reads and acts on.

use serde::{Deserialize, Serialize};

use crate::search::SearchError;

/// What kind of failure a [`ToolError`] is, so callers (and models) can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// The input does not match the tool's schema or is out of range.
    InvalidInput,
    /// No tool with that name.
    UnknownTool,
    /// A file, directory, context or run does not exist.
    NotFound,
    /// The operation ran past its time limit.
    Timeout,
    /// Not possible with this backend or configuration.
    Unsupported,
    /// Refused by the sandbox's policy or permissions.
    PermissionDenied,
    /// Conflicts with existing state (a context id already used, a text found several times).
    Conflict,
    /// A limit was hit: output size, rate limit, quota.
    LimitExceeded,
    /// Nothing is configured to serve the call (no search provider).
    NotConfigured,
    /// The operation failed; the message says where.
    Failed,
}

impl ToolErrorKind {
    /// The kind as serialized (`not_found`, `timeout`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::UnknownTool => "unknown_tool",
            Self::NotFound => "not_found",
            Self::Timeout => "timeout",
            Self::Unsupported => "unsupported",
            Self::PermissionDenied => "permission_denied",
            Self::Conflict => "conflict",
            Self::LimitExceeded => "limit_exceeded",
            Self::NotConfigured => "not_configured",
            Self::Failed => "failed",
        }
    }
}

/// A failed tool call, phrased for the model: what went wrong and what to do.
///
/// Serializes as `{"kind": "not_found", "message": "file not found: /home/user/x.py"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize, schemars::JsonSchema)]
#[error("{message}")]
pub struct ToolError {
    /// The kind of failure.
    pub kind: ToolErrorKind,
    /// A sentence a model can act on.
    pub message: String,
}

impl ToolError {
    /// An error of `kind` with `message`.
    #[must_use]
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// Bad input.
    #[must_use]
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidInput, message)
    }

    /// Something missing.
    #[must_use]
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::NotFound, message)
    }

    /// A generic failure.
    #[must_use]
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Failed, message)
    }

    /// The error as a JSON value, as returned to models.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "kind": self.kind.as_str(), "message": self.message })
    }

    /// Maps a sandbox error met while working on `path`, naming the path in the message.
    #[must_use]
    pub fn from_path_error(err: agentbox_core::Error, what: &str, path: &str) -> Self {
        use agentbox_core::Error as E;
        match err {
            E::NotFound(_) => Self::not_found(format!("{what} not found: {path}")),
            E::PermissionDenied(m) => {
                Self::new(ToolErrorKind::PermissionDenied, format!("permission denied: {path}: {m}"))
            }
            E::InvalidRequest(m) => Self::invalid_input(format!("{path}: {m}")),
            E::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::not_found(format!("{what} not found: {path}"))
            }
            other => {
                let mut e = Self::from(other);
                e.message = format!("{path}: {}", e.message);
                e
            }
        }
    }
}

impl From<agentbox_core::Error> for ToolError {
    fn from(err: agentbox_core::Error) -> Self {
        use agentbox_core::Error as E;
        let kind = match &err {
            E::NotFound(_) => ToolErrorKind::NotFound,
            E::InvalidConfig(_) | E::InvalidRequest(_) => ToolErrorKind::InvalidInput,
            E::Conflict(_) => ToolErrorKind::Conflict,
            E::LimitExceeded(_) | E::TooLarge(_) => ToolErrorKind::LimitExceeded,
            E::Timeout(_) => ToolErrorKind::Timeout,
            E::Unsupported(_) => ToolErrorKind::Unsupported,
            E::PermissionDenied(_) => ToolErrorKind::PermissionDenied,
            E::Backend { .. } | E::Io(_) | E::ShuttingDown(_) => ToolErrorKind::Failed,
        };
        Self::new(kind, err.to_string())
    }
}

impl From<SearchError> for ToolError {
    fn from(err: SearchError) -> Self {
        let kind = match &err {
            SearchError::NotConfigured => ToolErrorKind::NotConfigured,
            SearchError::InvalidRequest(_) => ToolErrorKind::InvalidInput,
            SearchError::UnknownProvider(_) => ToolErrorKind::NotConfigured,
            SearchError::RateLimited { .. } => ToolErrorKind::LimitExceeded,
            SearchError::AllFailed(_) => ToolErrorKind::Failed,
        };
        Self::new(kind, err.to_string())
    }
}

/// Result with [`ToolError`].
pub type ToolResult<T> = std::result::Result<T, ToolError>;
