//! Volumes: named, persistent subvolumes of the storage pool with a quota of their own, mounted into sandboxes
//! at create (`storage.volumes`), idmapped through each sandbox's user namespace so that whichever sandbox
//! mounts a volume sees its files as its own. A volume in use by a sandbox of this process can't be deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentbox_core::{Error, LockExt, Result, VolumeInfo};
use agentbox_hostfs::Owner;

use super::storage::storage_err;
use super::{LocalBackend, blocking};

/// The inside ids a volume's `data` directory starts owned by: the default sandbox user's.
const VOLUME_OWNER: Owner = Owner { uid: 1000, gid: 1000 };

/// How many of this process's sandboxes have each volume mounted.
#[derive(Debug, Default)]
pub(super) struct VolumesInUse(Mutex<HashMap<String, u32>>);

/// Volumes held by one sandbox (or a create in progress); dropping it lets them go.
#[derive(Debug)]
pub(super) struct VolumeHold {
    in_use: Arc<VolumesInUse>,
    names: Vec<String>,
}

impl VolumesInUse {
    /// Marks `names` as mounted until the returned hold drops.
    pub(super) fn hold(self: &Arc<Self>, names: Vec<String>) -> VolumeHold {
        let mut map = self.0.lock_unpoisoned();
        for n in &names {
            *map.entry(n.clone()).or_insert(0) += 1;
        }
        VolumeHold { in_use: self.clone(), names }
    }

    fn count(&self, name: &str) -> u32 {
        self.0.lock_unpoisoned().get(name).copied().unwrap_or(0)
    }
}

impl Drop for VolumeHold {
    fn drop(&mut self) {
        let mut map = self.in_use.0.lock_unpoisoned();
        for n in &self.names {
            if let Some(c) = map.get_mut(n) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    map.remove(n);
                }
            }
        }
    }
}

fn info(pool: &agentbox_storage::Pool, r: &agentbox_storage::VolumeRecord, mounted_by: u32) -> VolumeInfo {
    VolumeInfo {
        name: r.name.clone(),
        created_at_ms: r.created_at_ms,
        limit_bytes: r.limit_bytes,
        used_bytes: pool.volume_usage(r).map_or(0, |u| u.bytes),
        mounted_by,
    }
}

impl LocalBackend {
    fn volume_pool(&self) -> Result<Arc<agentbox_storage::Pool>> {
        self.inner.pool.clone().ok_or_else(|| {
            Error::Unsupported(
                "volumes need disk-backed storage, which this backend runs without (see its limitations)".into(),
            )
        })
    }

    pub(super) async fn volume_create(&self, name: &str, limit_bytes: u64) -> Result<VolumeInfo> {
        if limit_bytes == 0 {
            return Err(Error::InvalidRequest("a volume's size must be at least 1 byte".into()));
        }
        let pool = self.volume_pool()?;
        let name = name.to_owned();
        blocking("storage task", move || {
            let record = pool.create_volume(&name, limit_bytes, VOLUME_OWNER).map_err(storage_err)?;
            Ok(info(&pool, &record, 0))
        })
        .await
    }

    pub(super) async fn volume_list(&self) -> Result<Vec<VolumeInfo>> {
        let Some(pool) = self.inner.pool.clone() else { return Ok(Vec::new()) };
        let in_use = self.inner.volumes_in_use.clone();
        blocking("storage task", move || {
            Ok(pool.volumes().iter().map(|r| info(&pool, r, in_use.count(&r.name))).collect())
        })
        .await
    }

    pub(super) async fn volume_delete(&self, name: &str) -> Result<()> {
        let Some(pool) = self.inner.pool.clone() else { return Err(Error::NotFound(format!("volume {name}"))) };
        let mounted = self.inner.volumes_in_use.count(name);
        if mounted > 0 {
            return Err(Error::Conflict(format!(
                "volume {name} is mounted by {mounted} sandbox(es); destroy them before deleting it"
            )));
        }
        let name = name.to_owned();
        blocking("storage task", move || pool.remove_volume(&name).map_err(storage_err)).await
    }
}
