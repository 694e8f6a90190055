//! Host-side access to a sandbox's files, safe against whatever the sandbox plants.
//!
//! A sandbox controls the type, size and target of every path in it: a file the host is asked to read may be a
//! pty slave, a FIFO without a writer, a Unix socket, a device node, a 10 GiB sparse file, or a symlink swapped
//! for one of those between two system calls. Opening any of those for I/O from the host can hurt the host: a
//! pty opened without `O_NOCTTY` becomes the controlling terminal of a process that has none, a FIFO blocks, a
//! sparse file fills memory.
//!
//! Every host-side open of a sandbox path goes through this crate, and this crate opens in one way only
//! ([`open`], the one place that calls `openat2`):
//!
//! 1. resolve the path with `O_PATH` under `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, so `..`, absolute symlinks
//!    and `/proc/self/root`-style links all stay inside the sandbox, and nothing is *opened* yet: an `O_PATH`
//!    descriptor of a device or FIFO never reaches its driver;
//! 2. `fstat` that descriptor and require the type the operation needs (a regular file or a directory), and
//!    refuse proc, sysfs, cgroup and devpts file systems;
//! 3. only then reopen the very inode held (through `/proc/self/fd`) for I/O, with `O_NOCTTY | O_NONBLOCK`,
//!    and check that the reopened descriptor is the same inode.
//!
//! New files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` inside a directory already held, so a write can
//! only ever make a new regular file; uploads go to a temporary name and are renamed into place when complete,
//! so a failed upload leaves nothing behind and loses nothing. Reads take an explicit byte limit
//! ([`Root::read`]) or hand out a descriptor to stream from in bounded chunks ([`Root::open_read`]); nothing here
//! sizes a buffer by what `st_size` claims.

mod error;
pub mod open;
mod ops;
mod upload;

pub use error::map_io;
pub use ops::{FileReader, MAX_LIST_ENTRIES};
pub use upload::Upload;

use std::os::fd::OwnedFd;

use agentbox_core::{Error, Result};

/// A sandbox's root, seen from the host: an `O_PATH` descriptor of its `/`, the sandbox user's home and ids.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    home: String,
    owner: Owner,
}

/// Who owns what the host creates in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id inside the sandbox.
    pub uid: u32,
    /// Group id inside the sandbox.
    pub gid: u32,
}

impl Root {
    /// Opens the root of the sandbox whose init has host pid `pid`.
    ///
    /// # Errors
    /// When the process is gone.
    pub fn open(pid: i32, home: &str, owner: Owner) -> std::io::Result<Self> {
        Ok(Self { fd: open::proc_root(pid)?, home: home.to_owned(), owner })
    }

    /// Uses an already opened directory as the root (tests, and roots that are not a process's).
    #[must_use]
    pub fn from_dir(fd: OwnedFd, home: &str, owner: Owner) -> Self {
        Self { fd, home: home.to_owned(), owner }
    }

    /// The sandbox user's home, where relative paths start.
    #[must_use]
    pub fn home(&self) -> &str {
        &self.home
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
}
