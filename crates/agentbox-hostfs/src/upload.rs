//! Writing a file: into a new temporary file beside the target, renamed into place when complete.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use agentbox_core::{Error, Result};

use crate::Root;
use crate::error::{map_io, wrong_type};
use crate::open::{self, FinalLink, Node, NodeType, check};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A file being written. [`Upload::commit`] puts it in place; dropping it uncommitted removes the temporary
/// file, so a failed or abandoned write leaves the old file (if any) untouched and nothing behind.
#[derive(Debug)]
pub struct Upload {
    dir: Node,
    tmp: CString,
    name: CString,
    file: Option<File>,
    mode: u32,
    path: String,
    written: u64,
    /// The sandbox user's host ids, which make the file (see `open::as_owner`).
    owner: (u32, u32),
}

impl Upload {
    pub(crate) fn create(root: &Root, norm: &str) -> Result<Self> {
        let (dir, name, path) = root.parent_and_name(norm)?;
        let mode = match open::resolve_c(dir.fd(), &name, FinalLink::Hold) {
            Ok(existing) => match existing.kind() {
                NodeType::File => existing.mode() & 0o777,
                NodeType::Dir => return Err(map_io(&path, io::Error::from_raw_os_error(libc::EISDIR))),
                NodeType::Symlink => 0o644,
                other => return Err(wrong_type(&path, other.describe(), "a regular file")),
            },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => 0o644,
            Err(e) => return Err(map_io(&path, e)),
        };
        let (uid, gid) = root.owner_ids();
        for _ in 0..8 {
            let tmp = CString::new(format!(
                ".agentbox-upload-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ))
            .map_err(|_| Error::InvalidRequest("bad temporary name".into()))?;
            match open::as_owner(uid, gid, || open::create_new(&dir, &tmp, 0o600)) {
                Ok(file) => {
                    let up = Self { dir, tmp, name, file: Some(file), mode, path, written: 0, owner: (uid, gid) };
                    if let Some(f) = &up.file {
                        // SAFETY: fchown of the file this call created and holds open.
                        check(unsafe { libc::fchown(f.as_raw_fd(), uid, gid) }).map_err(|e| map_io(&up.path, e))?;
                    }
                    return Ok(up);
                }
                // The sandbox planted something at that name; take another.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_io(&path, e)),
            }
        }
        Err(Error::Conflict(format!("{path}: could not create a temporary file beside it; try again")))
    }

    /// Appends bytes.
    ///
    /// # Errors
    /// No space, or the file size limit.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let f = self.file.as_mut().ok_or_else(|| Error::InvalidRequest("the upload is closed".into()))?;
        f.write_all(data).map_err(|e| map_io(&self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The normalized sandbox path it will have.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Puts the file in place, replacing a file or symlink of the same name (a file's mode is kept).
    ///
    /// # Errors
    /// A directory was made at the name meanwhile, or the rename failed.
    pub fn commit(mut self) -> Result<()> {
        let Some(f) = self.file.take() else {
            return Err(Error::InvalidRequest("the upload is closed".into()));
        };
        // SAFETY: fchmod of the file we created and hold open.
        check(unsafe { libc::fchmod(f.as_raw_fd(), self.mode) }).map_err(|e| map_io(&self.path, e))?;
        drop(f);
        let (uid, gid) = self.owner;
        // SAFETY: renameat within one directory we hold, with single-component names.
        let rc = open::as_owner(uid, gid, || unsafe {
            libc::renameat(self.dir.fd().as_raw_fd(), self.tmp.as_ptr(), self.dir.fd().as_raw_fd(), self.name.as_ptr())
        });
        let result = check(rc).map(drop).map_err(|e| map_io(&self.path, e));
        if result.is_ok() {
            self.tmp = CString::default();
        }
        result
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            // SAFETY: unlinkat of the temporary name in the directory we hold; it doesn't follow links.
            unsafe { libc::unlinkat(self.dir.fd().as_fd().as_raw_fd(), self.tmp.as_ptr(), 0) };
        }
    }
}
