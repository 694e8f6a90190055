//! The file operations the backends offer on a sandbox, each built on [`crate::open`].

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use agentbox_core::{Error, FileEntry, FileKind, Result};

use crate::error::{map_io, wrong_type};
use crate::open::{self, FinalLink, Node, NodeType, check};
use crate::{Root, Upload};

/// The most entries a listing returns; a directory with more is refused with a hint rather than held in memory.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// The deepest directory tree a recursive remove descends.
const MAX_REMOVE_DEPTH: u32 = 256;

/// A regular file opened for reading, with its size when opened. Read it in bounded chunks: the size is what
/// the file claimed (a sparse file's apparent size), and the file may grow or shrink while it is read.
#[derive(Debug)]
pub struct FileReader {
    /// The open file (`O_RDONLY | O_NOCTTY | O_NONBLOCK`).
    pub file: File,
    /// Its size when opened.
    pub size: u64,
    /// The normalized sandbox path, for messages.
    pub path: String,
}

impl Root {
    pub(crate) fn dir_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn owner_ids(&self) -> (u32, u32) {
        (self.owner.uid, self.owner.gid)
    }

    /// Resolves a normalized path, following a final symlink inside the root.
    fn node(&self, norm: &str) -> Result<Node> {
        open::resolve(self.dir_fd(), norm, FinalLink::Follow).map_err(|e| map_io(norm, e))
    }

    /// The parent directory of a path (held) and the last component.
    pub(crate) fn parent_and_name(&self, path: &str) -> Result<(Node, CString, String)> {
        let norm = self.normalize(path)?;
        let (parent, name) = norm.rsplit_once('/').unwrap_or(("", &norm));
        if name.is_empty() {
            return Err(Error::InvalidRequest("the sandbox root itself can't be changed".into()));
        }
        let pnode = self.node(if parent.is_empty() { "/" } else { parent })?;
        if pnode.kind() != NodeType::Dir {
            return Err(map_io(&norm, io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let cname = CString::new(name).map_err(|_| Error::InvalidRequest("the path contains a NUL byte".into()))?;
        Ok((pnode, cname, norm))
    }

    /// Opens a regular file for reading in chunks.
    ///
    /// # Errors
    /// Not found, not a regular file (a directory, device, FIFO, socket), or access refused.
    pub fn open_read(&self, path: &str) -> Result<FileReader> {
        let norm = self.normalize(path)?;
        let node = self.node(&norm)?;
        match node.kind() {
            NodeType::File => {}
            NodeType::Dir => return Err(Error::InvalidRequest(format!("{norm} is a directory; list it instead"))),
            other => return Err(wrong_type(&norm, other.describe(), "a regular file")),
        }
        let file = node.read_file().map_err(|e| map_io(&norm, e))?;
        Ok(FileReader { file, size: node.size(), path: norm })
    }

    /// Reads a whole regular file of at most `max` bytes.
    ///
    /// # Errors
    /// [`Error::TooLarge`] naming the limit when the file is (or grows) larger than `max`; otherwise as
    /// [`Root::open_read`].
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let r = self.open_read(path)?;
        let too_large = |size: u64| {
            Error::TooLarge(format!(
                "{} is {size} bytes, over the {max}-byte limit for reading a whole file; read it in ranges or \
                 download it as a stream",
                r.path
            ))
        };
        if r.size > max {
            return Err(too_large(r.size));
        }
        // Never trust st_size for the allocation: it grows with what is actually read.
        let mut out = Vec::with_capacity(usize::try_from(r.size.min(1 << 20)).unwrap_or(0));
        (&r.file).take(max.saturating_add(1)).read_to_end(&mut out).map_err(|e| map_io(&r.path, e))?;
        if out.len() as u64 > max {
            return Err(too_large(out.len() as u64));
        }
        Ok(out)
    }

    /// Reads up to `len` bytes at `offset`; returns them and the file's size.
    ///
    /// # Errors
    /// As [`Root::open_read`].
    pub fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64)> {
        let r = self.open_read(path)?;
        let mut out =
            Vec::with_capacity(usize::try_from(len.min(r.size.saturating_sub(offset)).min(1 << 20)).unwrap_or(0));
        let mut f = &r.file;
        io::Seek::seek(&mut f, io::SeekFrom::Start(offset)).map_err(|e| map_io(&r.path, e))?;
        f.take(len).read_to_end(&mut out).map_err(|e| map_io(&r.path, e))?;
        Ok((out, r.size))
    }

    /// Creates a directory and its parents, owned by the sandbox user.
    ///
    /// # Errors
    /// A component is a file, or the location is read-only.
    pub fn mkdir_all(&self, path: &str) -> Result<()> {
        let norm = self.normalize(path)?;
        let (uid, gid) = self.owner_ids();
        let mut prefix = String::new();
        for comp in norm.split('/').filter(|c| !c.is_empty()) {
            let parent = if prefix.is_empty() { "/".to_owned() } else { prefix.clone() };
            prefix.push('/');
            prefix.push_str(comp);
            let pnode = self.node(&parent)?;
            if pnode.kind() != NodeType::Dir {
                return Err(map_io(&norm, io::Error::from_raw_os_error(libc::ENOTDIR)));
            }
            let c = CString::new(comp).map_err(|_| Error::InvalidRequest("the path contains a NUL byte".into()))?;
            // SAFETY: mkdirat relative to a directory descriptor we hold, with a single-component name.
            let rc = open::as_owner(uid, gid, || unsafe { libc::mkdirat(pnode.fd().as_raw_fd(), c.as_ptr(), 0o755) });
            if rc == 0 {
                // Hold what was made (not following a link swapped in since) and chown that inode.
                let made = open::resolve_c(pnode.fd(), &c, FinalLink::Hold).map_err(|e| map_io(&prefix, e))?;
                if made.kind() == NodeType::Dir {
                    chown_held(made.fd(), uid, gid).map_err(|e| map_io(&prefix, e))?;
                }
            } else {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(map_io(&prefix, e));
                }
            }
        }
        let node = self.node(&norm)?;
        if node.kind() != NodeType::Dir {
            return Err(map_io(&norm, io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Ok(())
    }

    /// Starts writing a file: the bytes go to a new temporary file beside it, which [`Upload::commit`] renames
    /// into place. Missing parent directories are created.
    ///
    /// # Errors
    /// Read-only location, a directory in the way, or no space.
    pub fn create_upload(&self, path: &str) -> Result<Upload> {
        let norm = self.normalize(path)?;
        if let Some((parent, _)) = norm.rsplit_once('/') {
            if !parent.is_empty() {
                self.mkdir_all(parent)?;
            }
        }
        Upload::create(self, &norm)
    }

    /// Writes a whole file (creating parent directories), owned by the sandbox user; replaces what was there.
    ///
    /// # Errors
    /// Read-only location, no space, or a directory in the way.
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut up = self.create_upload(path)?;
        up.write_all(data)?;
        up.commit()
    }

    fn entry(dirfd: BorrowedFd<'_>, name: &CStr, path: String) -> io::Result<FileEntry> {
        // SAFETY: stat is plain old data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat relative to a dirfd we hold, not following the final link.
        check(unsafe { libc::fstatat(dirfd.as_raw_fd(), name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        };
        let symlink_target = (kind == FileKind::Symlink).then(|| {
            let mut buf = vec![0u8; 4096];
            // SAFETY: readlinkat into a buffer of the given size.
            let n = unsafe { libc::readlinkat(dirfd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
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
            let node = self.node("/")?;
            return Self::entry(node.fd(), c".", "/".into()).map_err(|e| map_io(&norm, e));
        }
        let (pnode, name, norm) = self.parent_and_name(&norm)?;
        Self::entry(pnode.fd(), &name, norm.clone()).map_err(|e| map_io(&norm, e))
    }

    /// Lists a directory, sorted by name.
    ///
    /// # Errors
    /// Not found, not a directory, or more than [`MAX_LIST_ENTRIES`] entries.
    pub fn list(&self, path: &str) -> Result<Vec<FileEntry>> {
        let norm = self.normalize(path)?;
        let node = self.node(&norm)?;
        if node.kind() != NodeType::Dir {
            return Err(map_io(&norm, io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let dir = node.read_dir().map_err(|e| map_io(&norm, e))?;
        let names = read_names(&dir).map_err(|e| map_io(&norm, e))?;
        if names.len() > MAX_LIST_ENTRIES {
            return Err(Error::TooLarge(format!(
                "{norm} holds more than {MAX_LIST_ENTRIES} entries; list a subdirectory, or run `find` or `ls` with \
                 a filter in the sandbox"
            )));
        }
        let base = if norm == "/" { String::new() } else { norm.clone() };
        let mut out = Vec::with_capacity(names.len());
        for c in names {
            let n = c.to_string_lossy();
            if let Ok(e) = Self::entry(dir.as_fd(), &c, format!("{base}/{n}")) {
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
        let (pnode, name, norm) = self.parent_and_name(path)?;
        remove_at(pnode.fd(), &name, 0).map_err(|e| map_io(&norm, e))
    }

    /// Renames within the sandbox.
    ///
    /// # Errors
    /// Not found, cross-storage moves, read-only locations.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (pf, nf, from_n) = self.parent_and_name(from)?;
        let (pt, nt, to_n) = self.parent_and_name(to)?;
        pt.require_writable_fs().map_err(|e| map_io(&to_n, e))?;
        let (uid, gid) = self.owner_ids();
        // SAFETY: renameat between two dirfds we hold, with single-component names.
        let rc = open::as_owner(uid, gid, || unsafe {
            libc::renameat(pf.fd().as_raw_fd(), nf.as_ptr(), pt.fd().as_raw_fd(), nt.as_ptr())
        });
        check(rc).map(drop).map_err(|e| map_io(&format!("{from_n} -> {to_n}"), e))
    }

    /// Free and used bytes of the storage holding `path`.
    #[must_use]
    pub fn usage(&self, path: &str) -> Option<(u64, u64)> {
        let node = open::resolve(self.dir_fd(), path, FinalLink::Follow).ok()?;
        // SAFETY: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatvfs into a struct we own.
        check(unsafe { libc::fstatvfs(node.fd().as_raw_fd(), &raw mut st) }).ok()?;
        let bs = st.f_frsize;
        Some((st.f_bavail * bs, (st.f_blocks - st.f_bfree) * bs))
    }
}

/// `fchownat(fd, "", AT_EMPTY_PATH)`: chowns the inode an `O_PATH` descriptor holds.
pub(crate) fn chown_held(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchownat on a descriptor we hold, with an empty path and AT_EMPTY_PATH.
    check(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) }).map(drop)
}

fn read_names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let rd = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        if let Ok(n) = CString::new(e.file_name().into_vec()) {
            out.push(n);
        }
        if out.len() > MAX_LIST_ENTRIES {
            break;
        }
    }
    Ok(out)
}

fn remove_at(dirfd: BorrowedFd<'_>, name: &CStr, depth: u32) -> io::Result<()> {
    if depth > MAX_REMOVE_DEPTH {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    // SAFETY: unlinkat relative to a dirfd we hold; does not follow symlinks.
    if unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EISDIR) {
        return Err(e);
    }
    let sub = open::resolve_c(dirfd, name, FinalLink::Hold)?;
    let fd = sub.read_dir()?;
    loop {
        // Remove in batches so a huge directory never sits in memory whole.
        let names = read_names(&fd)?;
        if names.is_empty() {
            break;
        }
        for c in names {
            remove_at(fd.as_fd(), &c, depth + 1)?;
        }
    }
    // SAFETY: removing the now-empty directory, relative to a dirfd we hold.
    check(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
}
