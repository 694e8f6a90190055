//! Layers: a sandbox's writable subvolume on the pool, under a quota group of its own.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use agentbox_hostfs::Owner;

use crate::btrfs;
use crate::{IdRange, Pool, StorageError};

/// The extended attribute naming a layer's owner process.
const OWNER_XATTR: &std::ffi::CStr = c"user.agentbox.owner";
/// The extended attribute holding the first host id of the range a layer's files are owned by.
const IDS_XATTR: &std::ffi::CStr = c"user.agentbox.ids";

/// The id range recorded on the layer or snapshot directory `dir` ([`IdRange::IDENTITY`] when none is).
pub(crate) fn recorded_id_range(dir: &Path) -> IdRange {
    get_xattr(dir, IDS_XATTR)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .map_or(IdRange::IDENTITY, |first| IdRange { first })
}

/// The owner tag on the layer or snapshot directory `dir` (a layer's tag goes with it onto a shelf).
pub(crate) fn owner_tag_of(dir: &Path) -> Option<String> {
    String::from_utf8(get_xattr(dir, OWNER_XATTR)?).ok()
}

fn set_xattr(path: &Path, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lsetxattr with valid C strings and a buffer of the length given.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn get_xattr(path: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    get_xattr_up_to(path, name, 256)
}

/// An extended attribute of at most `max` bytes (a longer one reads as absent).
fn get_xattr_up_to(path: &Path, name: &std::ffi::CStr, max: usize) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = vec![0u8; max];
    // SAFETY: lgetxattr into a buffer of the length given.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(usize::try_from(n).ok()?);
    Some(buf)
}

/// The extended attribute holding the labels of the sandbox a layer belongs to.
const LABELS_XATTR: &std::ffi::CStr = c"user.agentbox.labels";
/// The most bytes of labels a layer keeps (a filesystem limits one attribute's size; btrfs to about 16 KiB).
pub const MAX_LABEL_BYTES: usize = 4096;

/// Labels as stored: `key NUL value NUL` pairs.
fn encode_labels(labels: &std::collections::BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if k.contains('\0') || v.contains('\0') || out.len() + k.len() + v.len() + 2 > MAX_LABEL_BYTES {
            continue;
        }
        for part in [k, v] {
            out.extend_from_slice(part.as_bytes());
            out.push(0);
        }
    }
    out
}

fn decode_labels(bytes: &[u8]) -> std::collections::BTreeMap<String, String> {
    // Every part ends in a NUL: without the last, splitting gives the parts.
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    let mut parts = bytes.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
    let mut out = std::collections::BTreeMap::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        out.insert(k, v);
    }
    out
}

/// The labels recorded on the layer or snapshot directory `dir` (empty when none are).
pub(crate) fn labels_of(dir: &Path) -> std::collections::BTreeMap<String, String> {
    get_xattr_up_to(dir, LABELS_XATTR, MAX_LABEL_BYTES).map(|b| decode_labels(&b)).unwrap_or_default()
}

/// A layer's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Bytes the layer may reference (file data and the metadata of its files and directories).
    pub bytes: u64,
}

/// What a layer holds, as its quota group counts it: updated when btrfs commits a transaction (at most every
/// 5 s on a pool image this crate mounts, and at every `sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes referenced (holes in sparse files are free).
    pub bytes: u64,
}

/// A sandbox's writable subvolume on the pool. Its `home` directory is what the sandbox sees as its home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) id: u64,
}

impl Layer {
    /// The layer's name (the sandbox's).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory bound as the sandbox's home.
    #[must_use]
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// The layer's directory (its subvolume).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The upper directory of an overlay root on an image (see [`Pool::add_overlay_dirs`]).
    #[must_use]
    pub fn upper(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The work directory of that overlay (overlayfs's own, on the same filesystem as the upper).
    #[must_use]
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Its subvolume (and level-0 quota group) id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }
}

pub(crate) fn check_name(name: &str) -> Result<CString, StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(StorageError::InvalidName(name.to_owned()));
    }
    CString::new(name).map_err(|_| StorageError::InvalidName(name.to_owned()))
}

/// Removes `work/incompat/volatile` (a directory holding a `dirty` file) from an overlay's work directory `work`: overlayfs leaves it behind a
/// mount with `volatile` (which skips syncing the upper filesystem, a btrfs transaction commit at every unmount)
/// and refuses the next mount while it is there. The layer's files are written to disk when it matters (a stop
/// syncs the pool); after a crash of the host, a running sandbox's last writes may be lost, as with any write
/// not yet synced. Each step is opened without following links.
fn clear_volatile_mark(work: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let open = |dir: &OwnedFd, name: &str| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let work = match open_dir(work) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let incompat = match open(&work, "work").and_then(|inner| open(&inner, "incompat")) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // The mark is a directory holding a `dirty` file.
    if let Ok(volatile) = open(&incompat, "volatile") {
        match rustix::fs::unlinkat(&volatile, "dirty", AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match rustix::fs::unlinkat(&incompat, "volatile", AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open(2) of a host path we built, as a directory, not following a final link.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Pool {
    /// Makes the layer `name`: a subvolume limited to `limits.bytes`, with an empty `home` owned by `owner`. A
    /// stale layer of the same name (left by a crash) is removed first.
    ///
    /// # Errors
    /// An invalid name, or the filesystem or quota calls failing.
    pub fn create_layer(&self, name: &str, limits: LayerLimits, owner: Owner) -> Result<Layer, StorageError> {
        let cname = check_name(name)?;
        let dir = self.layers.join(name);
        if fs::symlink_metadata(&dir).is_ok() {
            self.remove_layer(name)?;
        }
        btrfs::create_subvolume(self.layers_fd.as_fd(), &cname)
            .map_err(StorageError::io("creating a layer's subvolume", &dir))?;
        let made = (|| {
            let fd = open_dir(&dir).map_err(StorageError::io("opening a layer", &dir))?;
            let id = btrfs::subvolume_id(fd.as_fd()).map_err(StorageError::io("reading a layer's id", &dir))?;
            btrfs::limit(self.layers_fd.as_fd(), id, limits.bytes)
                .map_err(StorageError::io("setting a layer's quota", &dir))?;
            let home = dir.join("home");
            fs::create_dir(&home).map_err(StorageError::io("creating a layer's home", &home))?;
            std::os::unix::fs::chown(&home, Some(owner.uid), Some(owner.gid))
                .map_err(StorageError::io("giving a layer's home to the sandbox user", &home))?;
            fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o750))
                .map_err(StorageError::io("setting a layer's home mode", &home))?;
            Ok(Layer { name: name.to_owned(), dir: dir.clone(), id })
        })();
        if made.is_err() {
            let _ = self.remove_layer(name);
        }
        made
    }

    /// Makes the layer ready to be the writable side of an overlay root: its `root` (upper) and `work`
    /// directories, owned by `owner` (root of the sandbox's user namespace, who mounts the overlay). A fork's
    /// layer has them already.
    ///
    /// # Errors
    /// When a directory can't be made or given.
    pub fn add_overlay_dirs(&self, layer: &Layer, owner: Owner) -> Result<(), StorageError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for (dir, mode) in [(layer.upper(), 0o755), (layer.work(), 0o700)] {
            match fs::DirBuilder::new().mode(mode).create(&dir) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                r => r.map_err(StorageError::io("making an overlay directory in a layer", &dir))?,
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(StorageError::io("setting an overlay directory's mode", &dir))?;
            std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))
                .map_err(StorageError::io("giving an overlay directory to the sandbox", &dir))?;
        }
        clear_volatile_mark(&layer.work())
            .map_err(StorageError::io("clearing the overlay's volatile mark", &layer.work()))
    }

    /// Deletes a layer's subvolume with everything in it (one call: nothing inside is followed or even
    /// looked at), and its quota group.
    ///
    /// # Errors
    /// When the subvolume can't be deleted.
    pub fn remove_layer(&self, name: &str) -> Result<(), StorageError> {
        let cname = check_name(name)?;
        let dir = self.layers.join(name);
        let id = match open_dir(&dir) {
            Ok(fd) => btrfs::subvolume_id(fd.as_fd()).ok(),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(StorageError::io("opening a layer", &dir)(e)),
        };
        match btrfs::delete_subvolume(self.layers_fd.as_fd(), &cname) {
            Ok(()) => {}
            // Not a subvolume (a directory left by something else): nothing of ours to delete.
            Err(e) => return Err(StorageError::io("deleting a layer's subvolume", &dir)(e)),
        }
        if let Some(id) = id {
            // The kernel may keep the group until the subvolume's blocks are freed; it is then stale and empty.
            let _ = btrfs::remove_qgroup(self.layers_fd.as_fd(), id);
        }
        Ok(())
    }

    /// The layer `name`, when it exists.
    #[must_use]
    pub fn layer(&self, name: &str) -> Option<Layer> {
        check_name(name).ok()?;
        let dir = self.layers.join(name);
        let fd = open_dir(&dir).ok()?;
        let id = btrfs::subvolume_id(fd.as_fd()).ok()?;
        Some(Layer { name: name.to_owned(), dir, id })
    }

    /// Names of every layer in the pool (for reaping what no sandbox owns).
    #[must_use]
    pub fn layer_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.layers)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Records which process owns a layer (an extended attribute of the layer's directory, so the name inside
    /// the sandbox's mount table reveals nothing of the host). Forks copy their source's tag: set it again.
    ///
    /// # Errors
    /// When the attribute can't be written.
    pub fn set_owner_tag(&self, layer: &Layer, tag: &str) -> Result<(), StorageError> {
        set_xattr(&layer.dir, OWNER_XATTR, tag.as_bytes())
            .map_err(StorageError::io("tagging a layer with its owner", &layer.dir))
    }

    /// The owner tag of layer `name` (see [`set_owner_tag`](Self::set_owner_tag)), when it has one.
    #[must_use]
    pub fn owner_tag(&self, name: &str) -> Option<String> {
        check_name(name).ok()?;
        owner_tag_of(&self.layers.join(name))
    }

    /// The labels recorded on layer `name` (see [`set_labels`](Self::set_labels)); empty when none are.
    #[must_use]
    pub fn layer_labels(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        if check_name(name).is_err() {
            return std::collections::BTreeMap::new();
        }
        labels_of(&self.layers.join(name))
    }

    /// Records the labels of the sandbox a layer belongs to (its run, for one), so that files kept after a crash
    /// can still be told apart. Pairs beyond [`MAX_LABEL_BYTES`] in all, or holding a NUL, are left out.
    ///
    /// # Errors
    /// When the attribute can't be written.
    pub fn set_labels(
        &self,
        layer: &Layer,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        set_xattr(&layer.dir, LABELS_XATTR, &encode_labels(labels))
            .map_err(StorageError::io("recording a layer's labels", &layer.dir))
    }

    /// Records the host id range a layer's files are owned by (snapshots and forks of it carry it along).
    ///
    /// # Errors
    /// When the attribute can't be written.
    pub fn set_id_range(&self, layer: &Layer, range: IdRange) -> Result<(), StorageError> {
        set_xattr(&layer.dir, IDS_XATTR, range.first.to_string().as_bytes())
            .map_err(StorageError::io("recording a layer's id range", &layer.dir))
    }

    /// What a layer holds.
    ///
    /// # Errors
    /// When the quota group can't be read.
    pub fn usage(&self, layer: &Layer) -> Result<Usage, StorageError> {
        self.referenced(layer.id, "reading a layer's usage")
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_stay_within_their_bound() {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("run_id".to_owned(), "r-1".to_owned());
        labels.insert("empty".to_owned(), String::new());
        labels.insert("nul".to_owned(), "a\0b".to_owned());
        assert_eq!(decode_labels(&encode_labels(&labels)).len(), 2, "a pair holding a NUL is left out");
        assert_eq!(decode_labels(&encode_labels(&labels))["run_id"], "r-1");
        labels.insert("big".to_owned(), "x".repeat(MAX_LABEL_BYTES));
        assert!(encode_labels(&labels).len() <= MAX_LABEL_BYTES);
        assert_eq!(decode_labels(b"odd\0"), std::collections::BTreeMap::new(), "a key without a value is dropped");
    }
}
