//! The executable re-executed as each sandbox's agent, protected against being overwritten by
//! sandboxed code (CVE-2019-5736: a container's process writes to the runtime's binary through
//! `/proc/PID/exe`).
//!
//! Sandboxed code never runs as host root (`run_as` refuses uid and gid 0) and holds no
//! capabilities in the host's user namespace, so it can write a file only through its permission
//! bits or an ACL. When the running binary is owned by root, writable by nobody else and on a local
//! filesystem that enforces permissions, the kernel already refuses every sandbox a write, and the
//! agent is executed from the binary itself: no copy. Otherwise (a binary owned by an ordinary user,
//! group- or world-writable, with an ACL, or on a network or FUSE filesystem) it is executed from a
//! sealed in-memory copy, which no one can write and which lives in no filesystem.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, OnceLock};

use crate::sys;

static EXE: OnceLock<Result<OwnedFd, AgentExeError>> = OnceLock::new();

/// The executable could not be opened, or copied and sealed, for the sandbox agent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot open the executable for the sandbox agent: {0}")]
pub struct AgentExeError(#[source] Arc<io::Error>);

impl AgentExeError {
    /// The errno behind it, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.raw_os_error()
    }
}

/// Local filesystems whose permission checks the kernel enforces for every process (statfs magic).
const LOCAL_FILESYSTEMS: [i64; 9] = [
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x794C_7630, // overlayfs
    0x7371_7368, // squashfs
    0xE0F5_E1E2, // erofs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
];

/// Why the binary needs a sealed copy, or `None` when no sandbox can write it.
fn needs_copy(exe: &File) -> io::Result<Option<&'static str>> {
    let m = exe.metadata()?;
    if m.uid() != 0 {
        return Ok(Some("not owned by root"));
    }
    if m.mode() & 0o022 != 0 {
        return Ok(Some("group- or world-writable"));
    }
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills the struct we pass for a descriptor we hold.
    sys::check(unsafe { libc::fstatfs(exe.as_raw_fd(), &raw mut fs) })?;
    #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between architectures")]
    if !LOCAL_FILESYSTEMS.contains(&(fs.f_type as i64)) {
        return Ok(Some("not on a local filesystem"));
    }
    // SAFETY: a size query (null buffer, size 0) of an xattr on a descriptor we hold.
    let acl = unsafe { libc::fgetxattr(exe.as_raw_fd(), c"system.posix_acl_access".as_ptr(), std::ptr::null_mut(), 0) };
    if acl >= 0 {
        return Ok(Some("has an access control list"));
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(None),
        _ => Ok(Some("its access control list can't be read")),
    }
}

fn open() -> io::Result<OwnedFd> {
    let exe = File::open("/proc/self/exe")?;
    match needs_copy(&exe)? {
        None => Ok(exe.into()),
        Some(why) => {
            tracing::debug!(reason = why, "the sandbox agent runs from a sealed copy of the executable");
            seal(&exe)
        }
    }
}

fn seal(src: &File) -> io::Result<OwnedFd> {
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

/// Whether the running binary is one no sandbox can write (executed as is, no sealed copy). A zygote forked
/// from this process instead of executed has the binary as its `/proc/self/exe`, as every init does, so it
/// may only be forked when this holds.
pub fn runs_uncopied() -> bool {
    File::open("/proc/self/exe").and_then(|exe| needs_copy(&exe)).is_ok_and(|why| why.is_none())
}

/// The path to execute (`/proc/self/fd/N` of the binary or its sealed copy), opened once per process.
///
/// # Errors
/// [`AgentExeError`] when the executable can't be opened or copied (the same error at every call).
pub fn agent_path() -> Result<String, AgentExeError> {
    match EXE.get_or_init(|| open().map_err(|e| AgentExeError(Arc::new(e)))) {
        Ok(fd) => Ok(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_binary_no_sandbox_user_can_write_runs_uncopied() {
        if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
            return; // chown needs root, as the backend does
        }
        let dir = std::env::temp_dir().join(format!("agentbox-sealed-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("exe");
        std::fs::write(&f, b"\x7fELF").unwrap();
        let check = |mode: u32, uid: u32| {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&f, Some(uid), Some(0)).unwrap();
            needs_copy(&File::open(&f).unwrap()).unwrap()
        };
        assert_eq!(check(0o755, 0), None, "root-owned, writable by root only, on a local filesystem");
        assert_eq!(check(0o775, 0), Some("group- or world-writable"));
        assert_eq!(check(0o757, 0), Some("group- or world-writable"));
        assert_eq!(check(0o755, 1000), Some("not owned by root"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
