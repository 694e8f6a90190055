//! Errors of host-side file access, in the core's variants, with messages that say what to do.

use std::io;

use agentbox_core::Error;

/// Maps an I/O error on sandbox path `path` to the core error a caller can act on.
#[allow(clippy::needless_pass_by_value)] // used as a `map_err` adaptor
pub fn map_io(path: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotFound(format!("file {path}")),
        Some(libc::ENOTDIR) => Error::InvalidRequest(format!("{path}: a component of the path is not a directory")),
        Some(libc::EISDIR) => Error::InvalidRequest(format!("{path} is a directory")),
        Some(libc::EEXIST) => Error::Conflict(format!("{path} already exists")),
        Some(libc::ENOTEMPTY) => Error::Conflict(format!("{path} is not empty")),
        Some(libc::EROFS) => Error::PermissionDenied(format!(
            "{path} is on a read-only part of the sandbox; write under the home directory or /tmp"
        )),
        Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied(format!("{path}: access denied")),
        Some(libc::ENOSPC | libc::EDQUOT) => {
            Error::LimitExceeded(format!("no space left in the sandbox storage while writing {path}"))
        }
        Some(libc::ELOOP) => Error::InvalidRequest(format!("{path}: too many levels of symbolic links")),
        Some(libc::EXDEV) => Error::InvalidRequest(format!("{path}: cannot move across storage areas of the sandbox")),
        Some(libc::EBUSY) => Error::Conflict(format!("{path} is a mount point of the sandbox and can't be changed")),
        Some(libc::EFBIG) => Error::TooLarge(format!("{path}: the file is over the sandbox's file size limit")),
        _ => Error::Io(io::Error::new(e.kind(), format!("{path}: {}", e.kind()))),
    }
}

/// The error for a path that exists but is not what the operation needs.
pub(crate) fn wrong_type(path: &str, found: &str, want: &str) -> Error {
    Error::InvalidRequest(format!(
        "{path} is {found}, not {want}; the host only reads and writes regular files and lists directories"
    ))
}
