//! Volumes: named, persistent subvolumes with a quota of their own, made and deleted independently of any
//! sandbox and mounted into sandboxes at create.
//!
//! A volume's files are owned by the ids a sandbox sees inside (its user is 1000), not by any sandbox's host
//! range: each sandbox mounts the volume idmapped through its own user namespace, so every sandbox that uses
//! it, whatever its range, sees its files as its own.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::btrfs;
use crate::layer::{check_name, open_dir};
use crate::{Pool, StorageError, Usage};

/// A volume in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Its name.
    pub name: String,
    /// Its subvolume id.
    pub id: u64,
    /// The most it may hold, in bytes.
    pub limit_bytes: u64,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl Pool {
    /// Makes the volume `name` holding at most `limit_bytes`, with an empty `data` directory owned by
    /// `owner` (the sandbox user's id inside, 1000 by default).
    ///
    /// # Errors
    /// An invalid or taken name, or the filesystem calls failing.
    pub fn create_volume(
        &self,
        name: &str,
        limit_bytes: u64,
        owner: agentbox_hostfs::Owner,
    ) -> Result<VolumeRecord, StorageError> {
        let cname: CString = check_name(name)?;
        let dir = self.volumes.join(name);
        if fs::symlink_metadata(&dir).is_ok() {
            return Err(StorageError::Exists { what: "volume", name: name.to_owned() });
        }
        btrfs::create_subvolume(self.volumes_fd.as_fd(), &cname).map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                StorageError::Exists { what: "volume", name: name.to_owned() }
            } else {
                StorageError::io("creating a volume's subvolume", &dir)(e)
            }
        })?;
        let made = (|| {
            let fd = open_dir(&dir).map_err(StorageError::io("opening a volume", &dir))?;
            let id = btrfs::subvolume_id(fd.as_fd()).map_err(StorageError::io("reading a volume's id", &dir))?;
            btrfs::limit(self.volumes_fd.as_fd(), id, limit_bytes)
                .map_err(StorageError::io("setting a volume's quota", &dir))?;
            let data = dir.join("data");
            fs::create_dir(&data).map_err(StorageError::io("creating a volume's data directory", &data))?;
            std::os::unix::fs::chown(&data, Some(owner.uid), Some(owner.gid))
                .map_err(StorageError::io("giving a volume's data to the sandbox user", &data))?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.remove_volume(name);
            return Err(e);
        }
        self.volume(name).ok_or_else(|| StorageError::NotFound { what: "volume", name: name.to_owned() })
    }

    /// The volume `name`, when it exists.
    #[must_use]
    pub fn volume(&self, name: &str) -> Option<VolumeRecord> {
        check_name(name).ok()?;
        let dir = self.volumes.join(name);
        let fd = open_dir(&dir).ok()?;
        let id = btrfs::subvolume_id(fd.as_fd()).ok()?;
        let limit_bytes = fs::read_to_string(self.qgroups.join(format!("0_{id}")).join("max_referenced"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let created_at_ms = crate::pool::created_ms(&dir);
        Some(VolumeRecord { name: name.to_owned(), id, limit_bytes, created_at_ms })
    }

    /// Every volume, by name.
    #[must_use]
    pub fn volumes(&self) -> Vec<VolumeRecord> {
        let mut names: Vec<String> = fs::read_dir(&self.volumes)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names.iter().filter_map(|n| self.volume(n)).collect()
    }

    /// The directory a volume's files are in (what sandboxes mount).
    ///
    /// # Errors
    /// No such volume.
    pub fn volume_data(&self, name: &str) -> Result<PathBuf, StorageError> {
        self.volume(name)
            .map(|_| self.volumes.join(name).join("data"))
            .ok_or_else(|| StorageError::NotFound { what: "volume", name: name.to_owned() })
    }

    /// What a volume holds.
    ///
    /// # Errors
    /// When its quota group can't be read.
    pub fn volume_usage(&self, volume: &VolumeRecord) -> Result<Usage, StorageError> {
        self.referenced(volume.id, "reading a volume's usage")
    }

    /// Deletes a volume with everything in it (one call that follows nothing inside it). The caller makes sure
    /// no sandbox has it mounted.
    ///
    /// # Errors
    /// No such volume, or the deletion failing.
    pub fn remove_volume(&self, name: &str) -> Result<(), StorageError> {
        let cname = check_name(name)?;
        let record =
            self.volume(name).ok_or_else(|| StorageError::NotFound { what: "volume", name: name.to_owned() })?;
        btrfs::delete_subvolume(self.volumes_fd.as_fd(), &cname)
            .map_err(StorageError::io("deleting a volume", self.volumes.join(name)))?;
        let _ = btrfs::remove_qgroup(self.volumes_fd.as_fd(), record.id);
        Ok(())
    }
}
