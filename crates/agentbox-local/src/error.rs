//! The local backend's errors, with what lies underneath, mapped once into core's [`Error`].

use agentbox_core::Error;
use agentbox_storage::StorageError;

/// An error underneath a failed step.
type Source = Box<dyn std::error::Error + Send + Sync>;

/// What failed in the local backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    /// A step of the backend's own failed; `what` names it (`opening the sandbox root`).
    #[error("{what}: {source}")]
    Step {
        /// The step, for the user.
        what: String,
        /// Why it failed.
        #[source]
        source: Source,
    },
    /// The disk-backed storage pool refused or failed.
    #[error("sandbox storage: {0}")]
    Storage(#[from] StorageError),
}

impl LocalError {
    /// The step `what` failed because of `source` (an error, or a message when that is all there is).
    pub(crate) fn step(what: impl Into<String>, source: impl Into<Source>) -> Self {
        Self::Step { what: what.into(), source: source.into() }
    }
}

impl From<LocalError> for Error {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::Step { what, source } => {
                Self::Backend { message: format!("{what}: {source}"), source: Some(source) }
            }
            LocalError::Storage(e) => match e {
                StorageError::Exists { .. } => Self::Conflict(e.to_string()),
                StorageError::NotFound { what, name } => Self::NotFound(format!("{what} {name}")),
                StorageError::InvalidName(name) => Self::InvalidRequest(format!(
                    "{name:?} is not a valid name: use letters, digits, '.', '_' and '-' (at most 200)"
                )),
                e => Self::backend_with(format!("sandbox storage: {e}"), e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_failed_step_keeps_its_source_in_core_error() {
        let e = Error::from(LocalError::step("opening the sandbox root", std::io::Error::other("denied")));
        assert_eq!(e.code(), "backend_failure");
        assert_eq!(e.to_string(), "backend failure: opening the sandbox root: denied");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("denied"));
    }

    #[test]
    fn storage_errors_map_to_what_a_caller_acts_on() {
        let e = Error::from(LocalError::from(StorageError::NotFound { what: "snapshot", name: "s1".into() }));
        assert!(matches!(e, Error::NotFound(ref m) if m == "snapshot s1"), "{e}");
        let e = Error::from(LocalError::from(StorageError::InvalidName("a/b".into())));
        assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    }
}
