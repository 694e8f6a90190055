//! File operations on a sandbox's filesystem from the host, confined to the
//! sandbox root with `openat2(RESOLVE_IN_ROOT)`: `..`, absolute symlinks and
//! planted links (`ln -s / x`) all resolve inside the sandbox.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use agentbox_core::{Error, FileEntry, FileKind, Result};

use crate::sys;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;

/// A sandbox's root, seen from the host.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    home: String,
    uid: u32,
    gid: u32,
}

#[allow(clippy::needless_pass_by_value)] // used as a `map_err` adaptor
fn map_io(path: &str, e: io::Error) -> Error {
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
        _ => Error::Io(io::Error::new(e.kind(), format!("{path}: {}", e.kind()))),
    }
}

impl Root {
    /// Opens the root of the sandbox whose init has host pid `pid`.
    ///
    /// # Errors
    /// When the process is gone.
    pub fn open(pid: i32, home: &str, uid: u32, gid: u32) -> io::Result<Self> {
        let p = sys::cstr(&format!("/proc/{pid}/root"))?;
        // SAFETY: opening a path as O_PATH directory.
        let fd = sys::check(unsafe { libc::open(p.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: fd was just opened and is owned here.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, home: home.to_owned(), uid, gid })
    }

    /// Normalizes a user path to an absolute sandbox path (relative paths start at home).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for empty paths, NUL bytes or overlong paths.
    pub fn normalize(&self, path: &str) -> Result<String> {
        if path.is_empty() {
            return Err(Error::InvalidRequest(
                "the path is empty: give a file path such as /home/user/notes.txt".into(),
            ));
        }
        if path.contains('\0') {
            return Err(Error::InvalidRequest("the path contains a NUL byte".into()));
        }
        if path.len() > 4096 {
            return Err(Error::InvalidRequest("the path is longer than 4096 bytes".into()));
        }
        let full = if path.starts_with('/') { path.to_owned() } else { format!("{}/{path}", self.home) };
        // Lexical clean-up; `..` can't climb above "/" and symlinks are confined by the kernel anyway.
        let mut parts: Vec<&str> = Vec::new();
        for c in full.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    fn open_at(&self, path: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let c = CString::new(path.trim_start_matches('/')).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let c = if c.as_bytes().is_empty() { sys::cstr(".")? } else { c };
        let how = OpenHow {
            flags: u64::try_from(flags | libc::O_CLOEXEC).unwrap_or(0),
            mode: u64::from(mode),
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid dirfd, C string and open_how of the right size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &raw const how,
                std::mem::size_of::<OpenHow>(),
            )
        };
        let fd = sys::check(i32::try_from(fd).unwrap_or(-1))?;
        // SAFETY: the kernel returned a fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut st: libc::statfs = unsafe_zeroed();
        // SAFETY: fstatfs into a zeroed struct.
        sys::check(unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut st) })?;
        #[allow(clippy::unnecessary_cast, clippy::cast_lossless)]
        let magic = st.f_type as i64;
        if matches!(
            magic,
            PROC_SUPER_MAGIC | SYSFS_MAGIC | CGROUP_SUPER_MAGIC | CGROUP2_SUPER_MAGIC | DEVPTS_SUPER_MAGIC
        ) {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        if flags & (libc::O_WRONLY | libc::O_RDWR) != 0 && magic != TMPFS_MAGIC {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(fd)
    }

    fn parent_and_name(&self, path: &str) -> Result<(OwnedFd, CString, String)> {
        let norm = self.normalize(path)?;
        let (parent, name) = norm.rsplit_once('/').unwrap_or(("", &norm));
        if name.is_empty() {
            return Err(Error::InvalidRequest("the sandbox root itself can't be changed".into()));
        }
        let pfd = self
            .open_at(if parent.is_empty() { "/" } else { parent }, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| map_io(&norm, e))?;
        let cname = sys::cstr(name).map_err(|e| map_io(&norm, e))?;
        Ok((pfd, cname, norm))
    }

    /// Reads a regular file.
    ///
    /// # Errors
    /// Not found, not a regular file, or access refused.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let norm = self.normalize(path)?;
        let fd = self.open_at(&norm, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| map_io(&norm, e))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| map_io(&norm, e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Error::InvalidRequest(format!("{norm} is a directory; list it instead")));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::InvalidRequest(format!("{norm} is not a regular file")));
        }
        let mut f = std::fs::File::from(fd);
        let mut out = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0));
        io::Read::read_to_end(&mut f, &mut out).map_err(|e| map_io(&norm, e))?;
        Ok(out)
    }

    /// Creates a directory and its parents, owned by the sandbox user.
    ///
    /// # Errors
    /// A component is a file, or the location is read-only.
    pub fn mkdir_all(&self, path: &str) -> Result<()> {
        let norm = self.normalize(path)?;
        let mut prefix = String::new();
        for comp in norm.split('/').filter(|c| !c.is_empty()) {
            let parent = if prefix.is_empty() { "/".to_owned() } else { prefix.clone() };
            prefix.push('/');
            prefix.push_str(comp);
            let pfd = self.open_at(&parent, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| map_io(&norm, e))?;
            let c = sys::cstr(comp).map_err(|e| map_io(&norm, e))?;
            // SAFETY: mkdirat relative to a dirfd we hold.
            let rc = unsafe { libc::mkdirat(pfd.as_raw_fd(), c.as_ptr(), 0o755) };
            if rc == 0 {
                // SAFETY: chown the directory we just made.
                unsafe { libc::fchownat(pfd.as_raw_fd(), c.as_ptr(), self.uid, self.gid, libc::AT_SYMLINK_NOFOLLOW) };
            } else {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(map_io(&prefix, e));
                }
            }
        }
        let fd = self.open_at(&norm, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| map_io(&norm, e))?;
        drop(fd);
        Ok(())
    }

    /// Writes a whole file (creating parent directories), owned by the sandbox user.
    ///
    /// # Errors
    /// Read-only location, no space, or a directory in the way.
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let norm = self.normalize(path)?;
        if let Some((parent, _)) = norm.rsplit_once('/') {
            if !parent.is_empty() {
                self.mkdir_all(parent)?;
            }
        }
        let fd = self
            .open_at(&norm, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK, 0o644)
            .map_err(|e| map_io(&norm, e))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| map_io(&norm, e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::InvalidRequest(format!("{norm} is not a regular file")));
        }
        // SAFETY: chown the file we hold open.
        unsafe { libc::fchown(fd.as_raw_fd(), self.uid, self.gid) };
        let mut f = std::fs::File::from(fd);
        io::Write::write_all(&mut f, data).map_err(|e| map_io(&norm, e))?;
        Ok(())
    }

    fn entry(&self, dirfd: RawFd, name: &CString, path: String) -> io::Result<FileEntry> {
        let mut st: libc::stat = unsafe_zeroed();
        // SAFETY: fstatat relative to a dirfd we hold, not following the final link.
        sys::check(unsafe { libc::fstatat(dirfd, name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        };
        let symlink_target = (kind == FileKind::Symlink).then(|| {
            let mut buf = vec![0u8; 4096];
            // SAFETY: readlinkat into a buffer of the given size.
            let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            buf.truncate(usize::try_from(n).unwrap_or(0));
            String::from_utf8_lossy(&buf).into_owned()
        });
        let modified_ms =
            u64::try_from(st.st_mtime).unwrap_or(0) * 1000 + u64::try_from(st.st_mtime_nsec / 1_000_000).unwrap_or(0);
        Ok(FileEntry {
            name: path.rsplit('/').next().unwrap_or_default().to_owned(),
            path,
            kind,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            modified_ms,
            symlink_target,
        })
    }

    /// Describes a path without following a final symlink.
    ///
    /// # Errors
    /// Not found.
    pub fn stat(&self, path: &str) -> Result<FileEntry> {
        let norm = self.normalize(path)?;
        if norm == "/" {
            let fd = self.open_at("/", libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| map_io(&norm, e))?;
            return self
                .entry(fd.as_raw_fd(), &sys::cstr(".").map_err(|e| map_io(&norm, e))?, "/".into())
                .map_err(|e| map_io(&norm, e));
        }
        let (pfd, name, norm) = self.parent_and_name(&norm)?;
        self.entry(pfd.as_raw_fd(), &name, norm.clone()).map_err(|e| map_io(&norm, e))
    }

    /// Lists a directory, sorted by name.
    ///
    /// # Errors
    /// Not found or not a directory.
    pub fn list(&self, path: &str) -> Result<Vec<FileEntry>> {
        let norm = self.normalize(path)?;
        let fd = self.open_at(&norm, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| map_io(&norm, e))?;
        let names = read_names(&fd).map_err(|e| map_io(&norm, e))?;
        let base = if norm == "/" { String::new() } else { norm.clone() };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let Ok(c) = CString::new(n.clone()) else { continue };
            if let Ok(e) = self.entry(fd.as_raw_fd(), &c, format!("{base}/{n}")) {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a file, or a directory recursively.
    ///
    /// # Errors
    /// Not found, read-only, or a mount point.
    pub fn remove(&self, path: &str) -> Result<()> {
        let (pfd, name, norm) = self.parent_and_name(path)?;
        remove_at(pfd.as_raw_fd(), &name, 0).map_err(|e| map_io(&norm, e))
    }

    /// Renames within the sandbox.
    ///
    /// # Errors
    /// Not found, cross-storage moves, read-only locations.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (pf, nf, from_n) = self.parent_and_name(from)?;
        let (pt, nt, to_n) = self.parent_and_name(to)?;
        // The destination parent must be writable storage.
        self.open_at(
            to_n.rsplit_once('/').map_or("/", |(p, _)| if p.is_empty() { "/" } else { p }),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| map_io(&to_n, e))?;
        // SAFETY: renameat between two dirfds we hold, with plain names.
        let rc = unsafe { libc::renameat(pf.as_raw_fd(), nf.as_ptr(), pt.as_raw_fd(), nt.as_ptr()) };
        sys::check(rc).map(drop).map_err(|e| map_io(&format!("{from_n} -> {to_n}"), e))
    }

    /// Free and used bytes of the storage holding `path`.
    #[must_use]
    pub fn usage(&self, path: &str) -> Option<(u64, u64)> {
        let fd = self.open_at(path, libc::O_PATH | libc::O_DIRECTORY, 0).ok()?;
        let mut st: libc::statvfs = unsafe_zeroed();
        // SAFETY: fstatvfs into a zeroed struct.
        sys::check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &raw mut st) }).ok()?;
        let bs = st.f_frsize;
        Some((st.f_bavail * bs, (st.f_blocks - st.f_bfree) * bs))
    }
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for plain-old-data C structs (stat, statfs, statvfs).
    unsafe { std::mem::zeroed() }
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe_zeroed();
    // SAFETY: fstat into a zeroed struct.
    sys::check(unsafe { libc::fstat(fd, &raw mut st) })?;
    Ok(st)
}

fn read_names(fd: &OwnedFd) -> io::Result<Vec<String>> {
    let dir = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(dir.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
}

fn remove_at(dirfd: RawFd, name: &CString, depth: u32) -> io::Result<()> {
    if depth > 256 {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    // SAFETY: unlinkat relative to a dirfd we hold; does not follow symlinks.
    if unsafe { libc::unlinkat(dirfd, name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EISDIR) {
        return Err(e);
    }
    // SAFETY: opening the child directory without following symlinks.
    let sub = sys::check(unsafe {
        libc::openat(dirfd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    })?;
    // SAFETY: fresh fd owned here.
    let sub = unsafe { OwnedFd::from_raw_fd(sub) };
    for n in read_names(&sub)? {
        let Ok(c) = CString::new(n) else { continue };
        remove_at(sub.as_raw_fd(), &c, depth + 1)?;
    }
    // SAFETY: removing the now-empty directory.
    sys::check(unsafe { libc::unlinkat(dirfd, name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
}
