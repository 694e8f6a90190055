//! The disk-backed storage pool's part of the backend: snapshots of a sandbox's layer, and storage
//! errors mapped to what a caller acts on. (Layers are made in `create.rs` and removed by destroy.)

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use agentbox_core::{CreateRequest, Error, Result, SandboxId, SandboxInfo, SnapshotInfo, StoppedSandbox};
use agentbox_storage::Shelf;

use super::{LocalBackend, backend_err, blocking};
use crate::error::LocalError;
use crate::sys;

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

fn stopped_info(pool: &agentbox_storage::Pool, r: &agentbox_storage::SnapshotRecord) -> StoppedSandbox {
    StoppedSandbox {
        key: r.name.clone(),
        stopped_at_ms: r.created_at_ms,
        size_bytes: pool.snapshot_usage(r).map_or(0, |u| u.bytes),
        after_crash: pool.shelved_owner_tag(Shelf::Stopped, &r.name).as_deref() == Some(super::owners::CRASHED_TAG),
        metadata: pool.shelved_labels(Shelf::Stopped, &r.name),
    }
}

const NO_POOL_STOP: &str =
    "stopping a sandbox needs disk-backed storage, which this backend runs without (see its limitations)";

impl LocalBackend {
    /// Ends the sandbox's processes, moves its layer onto the stopped shelf (named by the sandbox id), and
    /// destroys the rest: its cgroups and id range go as on destroy.
    pub(super) async fn stop_sandbox(&self, id: &SandboxId) -> Result<StoppedSandbox> {
        self.stop_sandbox_as(id, id.as_str()).await
    }

    async fn stop_sandbox_as(&self, id: &SandboxId, key: &str) -> Result<StoppedSandbox> {
        let sb = self.get(id)?;
        let (Some(pool), Some(layer)) = (self.inner.pool.clone(), sb.layer.clone()) else {
            return Err(Error::Unsupported(NO_POOL_STOP.into()));
        };
        // A frozen sandbox's processes can't die (v1 freezer): thaw it first.
        if sb.paused.swap(false, Ordering::SeqCst) {
            let cg = sb.cgroup.clone();
            let _ = tokio::task::spawn_blocking(move || cg.set_frozen(false)).await;
        }
        let kept = {
            let sb = sb.clone();
            let key = key.to_owned();
            tokio::task::spawn_blocking(move || {
                // The processes end before the files are moved, so nothing writes to them meanwhile: killing
                // the init tears down its pid namespace (and the mounts in it), and its pidfd turns readable
                // once all are gone.
                let _ = sys::pidfd_kill(sb.pidfd.as_fd(), libc::SIGKILL);
                sys::pidfd_wait(sb.pidfd.as_fd(), -1);
                pool.shelve_layer(layer.name(), &key).map(|r| stopped_info(&pool, &r))
            })
            .await
            .map_err(|e| backend_err("stop task", e))?
        };
        // The rest goes whether or not the files were moved (destroy then removes the layer): its processes
        // are gone either way.
        let destroyed = agentbox_core::SandboxBackend::destroy(self, id).await;
        let stopped = kept.map_err(storage_err)?;
        destroyed?;
        Ok(stopped)
    }

    /// Starts a sandbox on the files of the stopped sandbox `key` (moved off the shelf into its layer).
    ///
    /// The start runs to its end even if the caller stops waiting (a timeout): a sandbox started for nobody is
    /// stopped again under the same key, so the files are never lost with it.
    pub(super) async fn start_stopped(&self, key: &str, request: CreateRequest) -> Result<SandboxInfo> {
        if self.inner.pool.is_none() {
            return Err(Error::Unsupported(NO_POOL_STOP.into()));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let made =
                this.create_from(&request, Some((Shelf::Stopped, key.clone())), None).await.map(|(info, _)| info);
            if let Err(Ok(info)) = tx.send(made) {
                if let Err(e) = this.stop_sandbox_as(&info.id, &key).await {
                    tracing::warn!(key = %key, error = %e, "stopping a sandbox started for a caller that left");
                }
            }
        });
        rx.await.map_err(|e| backend_err("start task", e))?
    }

    /// Deletes the kept files of the stopped sandbox `key`.
    pub(super) async fn stopped_discard(&self, key: &str) -> Result<()> {
        let Some(pool) = self.inner.pool.clone() else {
            return Err(Error::NotFound(format!("stopped sandbox {key}")));
        };
        let key = key.to_owned();
        blocking("storage task", move || pool.remove_snapshot(Shelf::Stopped, &key).map_err(storage_err)).await
    }

    /// Writes the root changes of the stopped sandbox `key` (its layer's `root/`, an image root's overlay upper)
    /// as an OCI layer tar to `to`. Nothing runs in a stopped sandbox, so nothing changes what is read.
    pub(super) async fn stopped_export_root(&self, key: &str, to: &std::path::Path) -> Result<u64> {
        let Some(pool) = self.inner.pool.clone() else {
            return Err(Error::NotFound(format!("stopped sandbox {key}")));
        };
        let (key, to) = (key.to_owned(), to.to_owned());
        let images = self.inner.config.images.clone();
        blocking("exporting a sandbox's root", move || {
            let dir = pool
                .snapshot_dir(Shelf::Stopped, &key)
                .ok_or_else(|| Error::NotFound(format!("stopped sandbox {key}")))?;
            let upper = dir.join("root");
            if !upper.is_dir() {
                return Err(Error::InvalidRequest(format!(
                    "stopped sandbox {key} has no root of its own to export: only a sandbox started from an image has one"
                )));
            }
            let range = pool.snapshot_id_range(Shelf::Stopped, &key).unwrap_or(agentbox_storage::IdRange::IDENTITY);
            let ids = agentbox_image::IdShift { first: range.first, size: agentbox_storage::RANGE_SIZE };
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&to)
                .map_err(|e| backend_err("creating the export file", e))?;
            // No more than a layer may hold when imported (16 GiB unless the image store says otherwise).
            let max = images.map_or(agentbox_image::UnpackLimits::default().max_bytes, |c| c.limits.max_bytes);
            let summary = agentbox_image::write_upper_as_layer(&upper, ids, max, std::io::BufWriter::new(out))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&to);
                    backend_err("exporting a sandbox's root", e)
                })?;
            Ok(summary.bytes)
        })
        .await
    }

    /// Every stopped sandbox on the shelf.
    pub(super) async fn stopped_list(&self) -> Result<Vec<StoppedSandbox>> {
        let Some(pool) = self.inner.pool.clone() else { return Ok(Vec::new()) };
        blocking("storage task", move || {
            Ok(pool.snapshots(Shelf::Stopped).iter().map(|r| stopped_info(&pool, r)).collect())
        })
        .await
    }

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
            let record = pool.snapshot_layer(Shelf::Snapshots, &layer, &name).map_err(storage_err)?;
            Ok(snapshot_info(&pool, &record))
        })
        .await
    }

    /// Every snapshot in the pool (none without one).
    pub(super) async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        let Some(pool) = self.inner.pool.clone() else { return Ok(Vec::new()) };
        blocking("storage task", move || {
            Ok(pool.snapshots(Shelf::Snapshots).iter().map(|r| snapshot_info(&pool, r)).collect())
        })
        .await
    }

    /// Removes the snapshot `name`.
    pub(super) async fn snapshot_delete(&self, name: &str) -> Result<()> {
        let Some(pool) = self.inner.pool.clone() else {
            return Err(Error::NotFound(format!("snapshot {name}")));
        };
        let name = name.to_owned();
        blocking("storage task", move || pool.remove_snapshot(Shelf::Snapshots, &name).map_err(storage_err)).await
    }
}
