//! A sealed in-memory copy of the running executable, re-executed as each
//! sandbox's agent. Sandboxed code can't overwrite it (CVE-2019-5736): the
//! memfd is sealed against writes and lives in no filesystem.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::sys;

static EXE: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

fn seal() -> io::Result<OwnedFd> {
    let src = std::fs::File::open("/proc/self/exe")?;
    let len = src.metadata()?.len();
    // SAFETY: memfd_create with a static name.
    let fd = sys::check(unsafe {
        libc::memfd_create(c"agentbox-agent".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: fresh fd owned here.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut copied = 0u64;
    while copied < len {
        // SAFETY: sendfile between two fds we hold.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                usize::try_from(len - copied).unwrap_or(usize::MAX),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        copied += n.unsigned_abs() as u64;
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: adding seals to our memfd.
    sys::check(unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(memfd)
}

/// The path to execute (`/proc/self/fd/N` of the sealed copy), made once per process.
///
/// # Errors
/// When the executable can't be copied.
pub fn agent_path() -> Result<String, String> {
    match EXE.get_or_init(|| {
        seal().map_err(|e| format!("cannot make a sealed copy of the executable for the sandbox agent: {e}"))
    }) {
        Ok(fd) => Ok(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        Err(e) => Err(e.clone()),
    }
}
