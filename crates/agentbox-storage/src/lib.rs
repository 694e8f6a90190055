//! Disk-backed storage for sandboxes: their writable files live on disk, under a real quota, never in memory.
//!
//! A [`Pool`] is one btrfs filesystem with quota groups enabled: the storage directory's own filesystem when it
//! is btrfs, or else a sparse image in the storage directory, made once with `mkfs.btrfs` and loop-mounted once
//! (the mount stays across restarts of the host process, so stopped sandboxes and volumes can outlive it; the
//! loop device is freed when the mount goes). docs/STORAGE.md says why btrfs: this kernel family is often built
//! without `CONFIG_QUOTA` (no ext4 or XFS project quotas), while btrfs quota groups are part of btrfs itself,
//! and subvolumes make snapshots and forks cheap later.
//!
//! Each sandbox gets a [`Layer`]: a subvolume of the pool whose quota group limits what it references to
//! `disk_gb`. Writes past it fail with `EDQUOT` inside the sandbox; its processes and memory are untouched, and
//! freeing space lets writes succeed again. Hard links across layers fail (`EXDEV`: a subvolume is its own
//! inode space), so no sandbox can charge its files to another's quota. Usage is the quota group's own count.
//! Deleting a layer deletes its subvolume in one call, whatever it holds, following nothing inside it.
//!
//! [`IdRanges`] hands each sandbox a range of host uids and gids of its own for its user namespace; a layer
//! records the range its files are owned by, and a fork moves them to its own range ([`shift_owners`]).

mod btrfs;
mod error;
mod ids;
mod layer;
mod pool;
mod snapshot;
mod volume;

pub use error::StorageError;
pub use ids::{IdRange, IdRanges, IdRangesConfig, RANGE_SIZE, shift_owners};
pub use layer::{Layer, LayerLimits, MAX_LABEL_BYTES, Usage};
pub use pool::{Pool, PoolConfig, PoolKind};
pub use snapshot::{Shelf, SnapshotRecord};
pub use volume::VolumeRecord;
