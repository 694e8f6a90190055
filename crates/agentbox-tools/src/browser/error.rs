//! The browser tool's errors, folded into [`ToolError`] at the tool's boundary.

use crate::error::{ToolError, ToolErrorKind};

/// What went wrong in a browser action.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// The browser's executable is not in the sandbox.
    #[error(
        "the browser is not installed: {path} does not exist in the sandbox. Install Debian's chromium with \
         `apt-get install -y chromium` (for the local backend, on the host: its sandboxes share the host's /usr), \
         or set the browser's executable path"
    )]
    NotInstalled {
        /// The path looked for.
        path: String,
    },
    /// The browser did not start, or did not open its DevTools endpoint in time.
    #[error("the browser did not start: {0}")]
    Launch(String),
    /// The browser stopped (crashed, was killed, or ran out of memory) during the call.
    #[error("{0}")]
    Gone(String),
    /// A DevTools call or a wait ran past its time limit.
    #[error("{0}")]
    Timeout(String),
    /// A navigation failed (bad address, refused connection, blocked by the network policy).
    #[error("{0}")]
    Navigation(String),
    /// An element, ref or tab does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The input is wrong for this action.
    #[error("{0}")]
    InvalidInput(String),
    /// Another call is using this sandbox's browser.
    #[error("{0}")]
    Busy(String),
    /// The backend cannot host a browser.
    #[error("{0}")]
    Unsupported(String),
    /// The page refused an action or a script failed.
    #[error("{0}")]
    Page(String),
    /// The DevTools protocol reported an error.
    #[error("the browser failed {what}: {message}")]
    Protocol {
        /// The call that failed.
        what: String,
        /// The browser's message.
        message: String,
    },
    /// The driver inside the sandbox reported a failure of this kind.
    #[error("{1}")]
    Reported(ToolErrorKind, String),
    /// A sandbox operation (files, processes, ports) failed.
    #[error(transparent)]
    Sandbox(#[from] ToolError),
}

impl BrowserError {
    /// Whether the error means the connection to the browser is gone.
    pub(crate) fn is_gone(&self) -> bool {
        matches!(self, Self::Gone(_))
    }
}

impl From<agentbox_core::Error> for BrowserError {
    fn from(err: agentbox_core::Error) -> Self {
        Self::Sandbox(err.into())
    }
}

impl From<BrowserError> for ToolError {
    fn from(err: BrowserError) -> Self {
        let kind = match &err {
            BrowserError::NotInstalled { .. } | BrowserError::Unsupported(_) => ToolErrorKind::Unsupported,
            BrowserError::Timeout(_) => ToolErrorKind::Timeout,
            BrowserError::NotFound(_) => ToolErrorKind::NotFound,
            BrowserError::InvalidInput(_) => ToolErrorKind::InvalidInput,
            BrowserError::Busy(_) => ToolErrorKind::Conflict,
            BrowserError::Sandbox(e) => return e.clone(),
            BrowserError::Reported(kind, _) => *kind,
            BrowserError::Launch(_)
            | BrowserError::Gone(_)
            | BrowserError::Navigation(_)
            | BrowserError::Page(_)
            | BrowserError::Protocol { .. } => ToolErrorKind::Failed,
        };
        ToolError::new(kind, err.to_string())
    }
}

/// Result of a browser step.
pub type BrowserResult<T> = Result<T, BrowserError>;
