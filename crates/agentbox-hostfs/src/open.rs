//! The one way the host opens anything in a sandbox: resolve with `O_PATH` inside the root, check the type,
//! then reopen the inode held for I/O with `O_NOCTTY | O_NONBLOCK`.
//!
//! Nothing outside this module calls `open`, `openat` or `openat2` on a sandbox path.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// File systems the host never touches inside a sandbox: reading their files has side effects or reveals the
/// host (proc, sysfs, cgroup), or yields terminals (devpts).
const REFUSED_FS: [i64; 5] = [
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x0027_e0eb, // cgroup v1
    0x6367_7270, // cgroup v2
    0x1cd1,      // devpts
];

/// File systems the host writes to: the sandbox's own storage. Everything else (read-only binds of the host's
/// system directories) is refused before the kernel would.
const WRITABLE_FS: [i64; 2] = [
    0x0102_1994, // tmpfs
    0x9123_683e, // btrfs (the disk-backed storage pool's layers)
];

/// What a resolved path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only seen when not following).
    Symlink,
    /// A character or block device.
    Device,
    /// A FIFO.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl NodeType {
    fn of(mode: libc::mode_t) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Self::File,
            libc::S_IFDIR => Self::Dir,
            libc::S_IFLNK => Self::Symlink,
            libc::S_IFIFO => Self::Fifo,
            libc::S_IFSOCK => Self::Socket,
            _ => Self::Device,
        }
    }

    /// "a regular file", "a FIFO", ... for messages.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::File => "a regular file",
            Self::Dir => "a directory",
            Self::Symlink => "a symbolic link",
            Self::Device => "a device node",
            Self::Fifo => "a FIFO",
            Self::Socket => "a socket",
        }
    }
}

/// A path resolved inside a sandbox and held as an `O_PATH` descriptor: nothing has been opened for I/O.
#[derive(Debug)]
pub struct Node {
    fd: OwnedFd,
    st: libc::stat,
}

impl Node {
    /// What it is.
    #[must_use]
    pub fn kind(&self) -> NodeType {
        NodeType::of(self.st.st_mode)
    }

    /// Its size in bytes as `stat` reports it (a sparse file's apparent size).
    #[must_use]
    pub fn size(&self) -> u64 {
        u64::try_from(self.st.st_size).unwrap_or(0)
    }

    /// Its permission bits.
    #[must_use]
    pub fn mode(&self) -> u32 {
        self.st.st_mode & 0o7777
    }

    /// The `O_PATH` descriptor, usable as a `dirfd` for `*at` calls and with `AT_EMPTY_PATH`.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the regular file held for reading.
    ///
    /// # Errors
    /// `EINVAL` when this is not a regular file; `EAGAIN` when the inode changed under us.
    pub fn read_file(&self) -> io::Result<File> {
        if self.kind() != NodeType::File {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.reopen(libc::O_RDONLY).map(File::from)
    }

    /// Opens the directory held for reading its entries.
    ///
    /// # Errors
    /// `ENOTDIR` when this is not a directory.
    pub fn read_dir(&self) -> io::Result<OwnedFd> {
        if self.kind() != NodeType::Dir {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        self.reopen(libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Reopens the inode held through its `/proc/self/fd` entry (not a path lookup: the same inode or nothing).
    fn reopen(&self, flags: libc::c_int) -> io::Result<OwnedFd> {
        let p = CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: open(2) with a valid C string; O_NOCTTY and O_NONBLOCK make even a wrong type harmless.
        let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        let fd = check(fd)?;
        // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_fd())?;
        if st.st_dev != self.st.st_dev || st.st_ino != self.st.st_ino || NodeType::of(st.st_mode) != self.kind() {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        Ok(fd)
    }

    /// Refuses writes outside the sandbox's own storage.
    ///
    /// # Errors
    /// `EROFS` when the node is on another file system.
    pub fn require_writable_fs(&self) -> io::Result<()> {
        if WRITABLE_FS.contains(&fs_magic(self.fd.as_fd())?) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EROFS))
        }
    }
}

/// How to treat a symlink in the last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalLink {
    /// Follow it (inside the root): reading `notes -> data/notes.txt` reads the target.
    Follow,
    /// Hold the link itself.
    Hold,
}

/// Opens `/proc/PID/root` as an `O_PATH` directory.
///
/// # Errors
/// When the process is gone.
pub fn proc_root(pid: i32) -> io::Result<OwnedFd> {
    let p = CString::new(format!("/proc/{pid}/root")).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open(2) of a host path as an O_PATH directory.
    let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves `path` (relative to `dir`, `..` and absolute links confined to `root`) as an `O_PATH` descriptor.
///
/// `dir` is the sandbox root for whole paths; for a single name inside a directory already held, pass that
/// directory as `dir` and the name as `path` (`RESOLVE_IN_ROOT` then treats the directory as the root, which
/// is stricter than the sandbox's).
///
/// # Errors
/// The lookup's errno; `EACCES` on proc, sysfs, cgroup and devpts file systems.
pub fn resolve(dir: BorrowedFd<'_>, path: &str, link: FinalLink) -> io::Result<Node> {
    let rel = path.trim_start_matches('/');
    let c =
        CString::new(if rel.is_empty() { "." } else { rel }).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    resolve_c(dir, &c, link)
}

/// [`resolve`] with a C string (names that are not UTF-8 included).
///
/// # Errors
/// As [`resolve`].
pub fn resolve_c(dir: BorrowedFd<'_>, c: &CStr, link: FinalLink) -> io::Result<Node> {
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if link == FinalLink::Hold {
        flags |= libc::O_NOFOLLOW;
    }
    let how =
        OpenHow { flags: u64::try_from(flags).unwrap_or(0), mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    // SAFETY: openat2 with a valid dirfd, a C string and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), c.as_ptr(), &raw const how, std::mem::size_of::<OpenHow>())
    };
    let fd = check(i32::try_from(fd).unwrap_or(-1))?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if REFUSED_FS.contains(&fs_magic(fd.as_fd())?) {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    let st = fstat(fd.as_fd())?;
    Ok(Node { fd, st })
}

/// Creates a new regular file `name` in the directory `dir` holds, failing if anything exists there (a link,
/// a FIFO, a file): the descriptor returned is always of a file this call made.
///
/// # Errors
/// `EEXIST` when the name is taken, `EROFS` outside the sandbox's storage, and the kernel's errors.
pub fn create_new(dir: &Node, name: &CStr, mode: u32) -> io::Result<File> {
    if dir.kind() != NodeType::Dir {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    dir.require_writable_fs()?;
    if name.to_bytes().contains(&b'/') || matches!(name.to_bytes(), b"" | b"." | b"..") {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let flags = libc::O_WRONLY
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOFOLLOW
        | libc::O_NOCTTY
        | libc::O_NONBLOCK
        | libc::O_CLOEXEC;
    // SAFETY: openat(2) relative to a directory descriptor we hold, with a single-component name.
    let fd = check(unsafe { libc::openat(dir.fd.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Runs `f` with this thread's filesystem ids set to `uid`:`gid`, so that what it creates is made by the
/// sandbox's user: a filesystem mounted in a sandbox's user namespace refuses new files whose owner its
/// namespace doesn't map (the host's root, say) with `EOVERFLOW`. The ids are per thread (raw system calls,
/// not glibc's process-wide wrappers), and put back before returning.
pub(crate) fn as_owner<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsgid and setfsuid take integers and change only this thread's credentials; each returns
    // the previous id, which the calls below put back.
    let (old_gid, old_uid) = unsafe {
        let g = libc::syscall(libc::SYS_setfsgid, gid);
        let u = libc::syscall(libc::SYS_setfsuid, uid);
        (g, u)
    };
    let out = f();
    // SAFETY: as above, restoring the previous ids (the uid first, which gives back the capabilities that
    // setting the gid may need).
    unsafe {
        libc::syscall(libc::SYS_setfsuid, old_uid);
        libc::syscall(libc::SYS_setfsgid, old_gid);
    }
    out
}

/// `fstat` of a descriptor (`O_PATH` ones included).
///
/// # Errors
/// The kernel's.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a struct we own.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) })?;
    Ok(st)
}

#[allow(clippy::unnecessary_cast, clippy::cast_lossless)]
fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs into a struct we own.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut st) })?;
    Ok(st.f_type as i64)
}

pub(crate) fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}
