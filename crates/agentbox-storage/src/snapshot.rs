//! Snapshots: read-only, point-in-time copies of a layer, and new layers made from them (forks).
//!
//! A snapshot is a read-only btrfs snapshot of a layer's subvolume: atomic, taken in one ioctl whatever the
//! layer holds, and sharing every extent with it until either side changes. Taken while the sandbox runs, it
//! holds what was on disk at that instant (crash-consistent, like pulling the plug): data a program still
//! buffers in its own memory is not in it, and neither is any process state.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;

use crate::btrfs::{self, Snap};
use crate::layer::{check_name, labels_of, open_dir, owner_tag_of, recorded_id_range};
use crate::{IdRange, Layer, LayerLimits, Pool, StorageError, Usage, shift_owners};

/// Where a read-only snapshot of a layer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shelf {
    /// Named snapshots, taken by callers while their sandbox runs (`pool/snapshots/`).
    Snapshots,
    /// The files of stopped sandboxes, kept until they are started again or discarded (`pool/stopped/`).
    Stopped,
}

impl Shelf {
    /// What the shelf holds, for messages.
    #[must_use]
    pub fn what(self) -> &'static str {
        match self {
            Self::Snapshots => "snapshot",
            Self::Stopped => "stopped sandbox",
        }
    }
}

/// A snapshot in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Its name.
    pub name: String,
    /// Its subvolume id.
    pub id: u64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl Pool {
    fn shelf(&self, shelf: Shelf) -> (&std::path::Path, std::os::fd::BorrowedFd<'_>) {
        match shelf {
            Shelf::Snapshots => (&self.snapshots, self.snapshots_fd.as_fd()),
            Shelf::Stopped => (&self.stopped, self.stopped_fd.as_fd()),
        }
    }

    /// Takes a read-only snapshot of `layer` named `name` onto `shelf`.
    ///
    /// # Errors
    /// An invalid or taken name, or the snapshot ioctl failing.
    pub fn snapshot_layer(&self, shelf: Shelf, layer: &Layer, name: &str) -> Result<SnapshotRecord, StorageError> {
        let what = shelf.what();
        let cname = check_name(name)?;
        let (dir, dir_fd) = self.shelf(shelf);
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(StorageError::Exists { what, name: name.to_owned() });
        }
        let source = open_dir(&layer.dir).map_err(StorageError::io("opening a layer", &layer.dir))?;
        btrfs::snapshot(source.as_fd(), dir_fd, &cname, Snap::ReadOnly).map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                StorageError::Exists { what, name: name.to_owned() }
            } else {
                StorageError::io("taking a snapshot", &path)(e)
            }
        })?;
        self.snapshot(shelf, name).ok_or_else(|| StorageError::NotFound { what, name: name.to_owned() })
    }

    /// The snapshot `name` on `shelf`, when it exists.
    #[must_use]
    pub fn snapshot(&self, shelf: Shelf, name: &str) -> Option<SnapshotRecord> {
        check_name(name).ok()?;
        let path = self.shelf(shelf).0.join(name);
        let fd = open_dir(&path).ok()?;
        let id = btrfs::subvolume_id(fd.as_fd()).ok()?;
        let created_at_ms = crate::pool::created_ms(&path);
        Some(SnapshotRecord { name: name.to_owned(), id, created_at_ms })
    }

    /// Where the snapshot `name` on `shelf` is, when it exists (for reading it while nothing writes to it).
    #[must_use]
    pub fn snapshot_dir(&self, shelf: Shelf, name: &str) -> Option<std::path::PathBuf> {
        self.snapshot(shelf, name).map(|_| self.shelf(shelf).0.join(name))
    }

    /// The host id range the files of the snapshot `name` on `shelf` are owned by, when it recorded one.
    #[must_use]
    pub fn snapshot_id_range(&self, shelf: Shelf, name: &str) -> Option<IdRange> {
        check_name(name).ok()?;
        let range = recorded_id_range(&self.shelf(shelf).0.join(name));
        (range != IdRange::IDENTITY).then_some(range)
    }

    /// The owner tag the files of `name` on `shelf` carry: the tag of the layer they were (see
    /// [`set_owner_tag`](Self::set_owner_tag)), which a layer takes along onto a shelf.
    #[must_use]
    pub fn shelved_owner_tag(&self, shelf: Shelf, name: &str) -> Option<String> {
        check_name(name).ok()?;
        owner_tag_of(&self.shelf(shelf).0.join(name))
    }

    /// The labels the files of `name` on `shelf` carry (see [`set_labels`](Self::set_labels)).
    #[must_use]
    pub fn shelved_labels(&self, shelf: Shelf, name: &str) -> std::collections::BTreeMap<String, String> {
        if check_name(name).is_err() {
            return std::collections::BTreeMap::new();
        }
        labels_of(&self.shelf(shelf).0.join(name))
    }

    /// Every snapshot on `shelf`, by name.
    #[must_use]
    pub fn snapshots(&self, shelf: Shelf) -> Vec<SnapshotRecord> {
        let mut names: Vec<String> = fs::read_dir(self.shelf(shelf).0)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names.iter().filter_map(|n| self.snapshot(shelf, n)).collect()
    }

    /// What a snapshot references (shared extents included).
    ///
    /// # Errors
    /// When its quota group can't be read.
    pub fn snapshot_usage(&self, snapshot: &SnapshotRecord) -> Result<Usage, StorageError> {
        self.referenced(snapshot.id, "reading a snapshot's usage")
    }

    /// Deletes a snapshot from `shelf` (layers made from it keep their contents).
    ///
    /// # Errors
    /// No such snapshot, or the deletion failing.
    pub fn remove_snapshot(&self, shelf: Shelf, name: &str) -> Result<(), StorageError> {
        let cname = check_name(name)?;
        let record = self
            .snapshot(shelf, name)
            .ok_or_else(|| StorageError::NotFound { what: shelf.what(), name: name.to_owned() })?;
        let (dir, dir_fd) = self.shelf(shelf);
        btrfs::delete_subvolume(dir_fd, &cname).map_err(StorageError::io("deleting a snapshot", dir.join(name)))?;
        let _ = btrfs::remove_qgroup(dir_fd, record.id);
        Ok(())
    }

    /// Moves the layer `name` (its sandbox's processes gone) onto the stopped shelf as `key`, and writes the
    /// pool to disk. Nothing is copied: the subvolume, its quota group and its files stay as they are. (It stays
    /// writable: a read-only subvolume can't be moved back; the shelf is closed to all but root.)
    ///
    /// # Errors
    /// No such layer, a taken key, or the rename failing.
    pub fn shelve_layer(&self, name: &str, key: &str) -> Result<SnapshotRecord, StorageError> {
        let from = check_name(name)?;
        let to = check_name(key)?;
        let what = Shelf::Stopped.what();
        rename_no_replace(self.layers_fd.as_fd(), &from, self.stopped_fd.as_fd(), &to).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EEXIST) => StorageError::Exists { what, name: key.to_owned() },
                Some(libc::ENOENT) => StorageError::NotFound { what: "layer", name: name.to_owned() },
                _ => StorageError::io("moving a layer onto the stopped shelf", self.layers.join(name))(e),
            }
        })?;
        // Kept means on disk: a stopped sandbox outlives a crash of the host, not only a restart.
        // SAFETY: syncfs on a directory fd borrowed for the call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&self.stopped_fd)) } == -1 {
            return Err(StorageError::io("writing a stopped sandbox's files to disk", self.stopped.join(key))(
                std::io::Error::last_os_error(),
            ));
        }
        self.snapshot(Shelf::Stopped, key).ok_or_else(|| StorageError::NotFound { what, name: key.to_owned() })
    }

    /// Moves the stopped sandbox `key` off the shelf as the layer `name`, its files owned by `ids` (moved from the
    /// range they recorded only when it differs). On failure the files go back on the shelf as `key`.
    ///
    /// The layer has no quota yet (one stopped at its quota has no room for the changes a start makes): set it
    /// with [`limit_layer`](Self::limit_layer) once the layer is ready.
    ///
    /// # Errors
    /// No such stopped sandbox, a taken layer name, or the ioctls failing.
    pub fn unshelve_layer(&self, key: &str, name: &str, ids: IdRange) -> Result<Layer, StorageError> {
        let from = check_name(key)?;
        let to = check_name(name)?;
        let kept = self.stopped.join(key);
        // Moved first, so of two starts of the same stopped sandbox one gets its files and the other none.
        rename_no_replace(self.stopped_fd.as_fd(), &from, self.layers_fd.as_fd(), &to).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOENT) => StorageError::NotFound { what: Shelf::Stopped.what(), name: key.to_owned() },
                Some(libc::EEXIST) => StorageError::Exists { what: "layer", name: name.to_owned() },
                _ => StorageError::io("moving a stopped sandbox's files to a layer", &kept)(e),
            }
        })?;
        let dir = self.layers.join(name);
        let made = self.adopt_kept_layer(name, recorded_id_range(&dir), ids);
        if made.is_err() {
            let _ = self.shelve_layer(name, key);
        }
        made
    }

    /// Makes the layer `name` as a writable snapshot of the snapshot `from` on `shelf`: instant, and sharing
    /// extents with the snapshot until the new layer changes them. Its files move to the id range `ids` (from the
    /// one the snapshot recorded): only their owners change, not their data.
    ///
    /// The layer has no quota yet (a snapshot of a full sandbox leaves no room for the changes a create makes):
    /// set it with [`limit_layer`](Self::limit_layer) once the layer is ready.
    ///
    /// # Errors
    /// No such snapshot, an invalid name, or the ioctls failing.
    pub fn layer_from_snapshot(
        &self,
        shelf: Shelf,
        from: &str,
        name: &str,
        ids: IdRange,
    ) -> Result<Layer, StorageError> {
        let cname: CString = check_name(name)?;
        check_name(from)?;
        let source_path = self.shelf(shelf).0.join(from);
        let source =
            open_dir(&source_path).map_err(|_| StorageError::NotFound { what: shelf.what(), name: from.to_owned() })?;
        let dir = self.layers.join(name);
        if fs::symlink_metadata(&dir).is_ok() {
            self.remove_layer(name)?;
        }
        btrfs::snapshot(source.as_fd(), self.layers_fd.as_fd(), &cname, Snap::Writable)
            .map_err(StorageError::io("making a layer from a snapshot", &dir))?;
        let made = self.adopt_kept_layer(name, recorded_id_range(&source_path), ids);
        if made.is_err() {
            let _ = self.remove_layer(name);
        }
        made
    }

    /// Makes the subvolume `layers/name`, holding files kept from another sandbox (moved back, or snapshotted),
    /// a layer of the id range `ids`: its quota lifted (it may carry its source's, full), its files' owners moved
    /// from `recorded` when that differs, and the range recorded. [`limit_layer`](Self::limit_layer) sets the
    /// quota once the layer is ready.
    fn adopt_kept_layer(&self, name: &str, recorded: IdRange, ids: IdRange) -> Result<Layer, StorageError> {
        let dir = self.layers.join(name);
        let fd = open_dir(&dir).map_err(StorageError::io("opening a layer", &dir))?;
        let id = btrfs::subvolume_id(fd.as_fd()).map_err(StorageError::io("reading a layer's id", &dir))?;
        btrfs::limit(self.layers_fd.as_fd(), id, u64::MAX)
            .map_err(StorageError::io("lifting a layer's quota", &dir))?;
        let layer = Layer { name: name.to_owned(), dir: dir.clone(), id };
        shift_owners(&dir, recorded, ids)?;
        self.set_id_range(&layer, ids)?;
        Ok(layer)
    }
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, refusing to replace an existing `to`.
fn rename_no_replace(
    from_dir: std::os::fd::BorrowedFd<'_>,
    from: &std::ffi::CStr,
    to_dir: std::os::fd::BorrowedFd<'_>,
    to: &std::ffi::CStr,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: renameat2 with two directory fds borrowed for the call and two NUL-terminated names.
    let rc = unsafe {
        libc::renameat2(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

impl Pool {
    /// Limits what the layer references to `limits` (the quota [`create_layer`](Self::create_layer) sets at once).
    ///
    /// # Errors
    /// The quota ioctl failing.
    pub fn limit_layer(&self, layer: &Layer, limits: LayerLimits) -> Result<(), StorageError> {
        btrfs::limit(self.layers_fd.as_fd(), layer.id, limits.bytes)
            .map_err(StorageError::io("setting a layer's quota", &layer.dir))
    }
}
