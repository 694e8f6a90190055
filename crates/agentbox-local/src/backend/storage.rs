//! The disk-backed storage pool's part of the backend: snapshots of a sandbox's layer, and storage
//! errors mapped to what a caller acts on. (Layers are made in `create.rs` and removed by destroy.)

use agentbox_core::{Error, Result, SandboxId, SnapshotInfo};

use super::{LocalBackend, blocking};
use crate::error::LocalError;

/// Maps a storage error to the core error a caller acts on (see [`LocalError`]).
pub(super) fn storage_err(e: agentbox_storage::StorageError) -> Error {
    LocalError::from(e).into()
}

fn snapshot_info(pool: &agentbox_storage::Pool, r: &agentbox_storage::SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        name: r.name.clone(),
        created_at_ms: r.created_at_ms,
        size_bytes: pool.snapshot_usage(r).map_or(0, |u| u.bytes),
    }
}

impl LocalBackend {
    /// Snapshots the sandbox `id`'s layer as `name`.
    pub(super) async fn snapshot_sandbox(&self, id: &SandboxId, name: &str) -> Result<SnapshotInfo> {
        let sb = self.get(id)?;
        let (Some(pool), Some(layer)) = (self.inner.pool.clone(), sb.layer.clone()) else {
            return Err(Error::Unsupported(
                "snapshots need disk-backed storage, which this backend runs without (see its limitations)".into(),
            ));
        };
        let name = name.to_owned();
        blocking("storage task", move || {
            let record = pool.snapshot_layer(&layer, &name).map_err(storage_err)?;
            Ok(snapshot_info(&pool, &record))
        })
        .await
    }

    /// Every snapshot in the pool (none without one).
    pub(super) async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        let Some(pool) = self.inner.pool.clone() else { return Ok(Vec::new()) };
        blocking("storage task", move || Ok(pool.snapshots().iter().map(|r| snapshot_info(&pool, r)).collect())).await
    }

    /// Removes the snapshot `name`.
    pub(super) async fn snapshot_delete(&self, name: &str) -> Result<()> {
        let Some(pool) = self.inner.pool.clone() else {
            return Err(Error::NotFound(format!("snapshot {name}")));
        };
        let name = name.to_owned();
        blocking("storage task", move || pool.remove_snapshot(&name).map_err(storage_err)).await
    }
}
