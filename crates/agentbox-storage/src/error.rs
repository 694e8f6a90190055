//! What can go wrong with storage, with what to do about it.

use std::io;
use std::path::PathBuf;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A program the pool needs is not installed.
    #[error("{program} is not installed; install it ({install}) or run without disk-backed storage")]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// How to install it.
        install: &'static str,
    },
    /// A program failed.
    #[error("{program} failed on {}: {output}", path.display())]
    Program {
        /// The program.
        program: &'static str,
        /// What it was run on.
        path: PathBuf,
        /// Its output.
        output: String,
    },
    /// A filesystem operation failed.
    #[error("{what} ({}): {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A snapshot or volume of that name exists already.
    #[error("a {what} named {name:?} exists already; pick another name or delete it first")]
    Exists {
        /// "snapshot" or "volume".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// No snapshot, layer or volume of that name.
    #[error("no {what} named {name:?}")]
    NotFound {
        /// "snapshot" or "layer".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Id ranges are misconfigured or used up.
    #[error("{0}")]
    IdRanges(String),
    /// A layer name is not a single safe path component.
    #[error("invalid layer name {0:?}")]
    InvalidName(String),
}

impl StorageError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}
