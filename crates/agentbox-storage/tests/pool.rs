//! A real pool: a sparse XFS image loop-mounted with project quotas, layers with quotas, and removal that leaves
//! nothing behind (no layer, no quota, no mount, no loop device once unmounted). Needs root and xfsprogs.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::Path;

use agentbox_hostfs::Owner;
use agentbox_storage::{IdRange, LayerLimits, Pool, PoolConfig, PoolKind, Shelf, StorageError};

/// A pool in a temporary directory on disk, unmounted when dropped.
struct TestPool {
    dir: tempfile::TempDir,
    pool: std::mem::ManuallyDrop<Pool>,
}

impl TestPool {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("agentbox-storage-test").tempdir_in("/var/tmp").unwrap();
        let pool = Pool::open(&PoolConfig { dir: dir.path().to_owned(), image_bytes: Some(2 << 30) }).unwrap();
        Self { dir, pool: std::mem::ManuallyDrop::new(pool) }
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // SAFETY: the pool is dropped once, here, so its descriptor no longer keeps the mount busy.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.pool) };
        let mount = self.dir.path().join("pool");
        let _ = std::process::Command::new("umount").arg(&mount).status();
    }
}

/// Makes btrfs commit, so quota groups count what was written.
fn commit() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn write_as(uid: u32, path: &Path, bytes: usize) -> std::io::Result<()> {
    // Writes as the sandbox user from a child process, as a sandbox would.
    let status = std::process::Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
        .arg("dd")
        .args(["if=/dev/zero", &format!("of={}", path.display()), "bs=1M", &format!("count={}", bytes >> 20)])
        .args(["status=none"])
        .status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("dd exited with {status}"))) }
}

#[test]
fn layers_have_their_own_quota_and_leave_nothing() {
    let t = TestPool::new();
    assert!(matches!(t.pool.kind(), PoolKind::Image { .. }));
    assert!(t.pool.layer_names().is_empty());
    let owner = Owner { uid: 1000, gid: 1000 };
    let a = t.pool.create_layer("sb-a", LayerLimits { bytes: 16 << 20 }, owner).unwrap();
    let b = t.pool.create_layer("sb-b", LayerLimits { bytes: 64 << 20 }, owner).unwrap();
    assert_ne!(a.id(), b.id());

    // Past the quota: refused; the other layer is unaffected; freeing space lets writes succeed again.
    assert!(write_as(1000, &a.home().join("big"), 32 << 20).is_err(), "a 32 MiB write fit a 16 MiB quota");
    commit();
    let used = t.pool.usage(&a).unwrap();
    assert!(used.bytes <= 17 << 20 && used.bytes >= 8 << 20, "{used:?}");
    write_as(1000, &b.home().join("big"), 32 << 20).unwrap();
    std::fs::remove_file(a.home().join("big")).unwrap();
    commit();
    write_as(1000, &a.home().join("small"), 8 << 20).unwrap();
    commit();
    let used = t.pool.usage(&a).unwrap();
    assert!(used.bytes >= 8 << 20 && used.bytes < 9 << 20, "{used:?}");

    // Hard links across layers are refused: a sandbox can't charge its files to another's quota.
    let err = std::fs::hard_link(b.home().join("big"), a.home().join("stolen")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");

    // Removal does not follow what a sandbox planted.
    let outside = t.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::File::create(outside.join("keep")).unwrap().write_all(b"host").unwrap();
    symlink(&outside, a.home().join("escape")).unwrap();
    t.pool.remove_layer("sb-a").unwrap();
    assert!(outside.join("keep").exists(), "removing a layer followed a planted link");
    assert!(t.pool.layer("sb-a").is_none());
    let names = t.pool.layer_names();
    assert_eq!(names, vec!["sb-b".to_owned()]);
    t.pool.remove_layer("sb-b").unwrap();
    assert!(t.pool.layer_names().is_empty());

    // A second open finds the same mounted pool.
    let again = Pool::open(&PoolConfig { dir: t.dir.path().to_owned(), image_bytes: None }).unwrap();
    assert_eq!(again.layers_dir(), t.pool.layers_dir());
    drop(again);
}

#[test]
fn names_are_single_safe_components() {
    let t = TestPool::new();
    for bad in ["", ".", "..", "a/b", "../x", "a b"] {
        let r = t.pool.create_layer(bad, LayerLimits { bytes: 1 << 20 }, Owner { uid: 0, gid: 0 });
        assert!(matches!(r, Err(StorageError::InvalidName(_))), "{bad:?}: {r:?}");
    }
}

#[test]
fn snapshots_are_point_in_time_and_forks_are_independent() {
    let t = TestPool::new();
    // Layer a's files are owned by its range (inside id 1000 of a range starting at 300000).
    let range_a = IdRange { first: 300_000 };
    let owner = Owner { uid: 301_000, gid: 301_000 };
    let limits = LayerLimits { bytes: 64 << 20 };
    let a = t.pool.create_layer("sb-a", limits, owner).unwrap();
    t.pool.set_id_range(&a, range_a).unwrap();
    std::fs::write(a.home().join("note"), "before").unwrap();
    std::os::unix::fs::chown(a.home().join("note"), Some(301_000), Some(301_000)).unwrap();
    let snap = t.pool.snapshot_layer(Shelf::Snapshots, &a, "snap-1").unwrap();
    assert!(matches!(t.pool.snapshot_layer(Shelf::Snapshots, &a, "snap-1"), Err(StorageError::Exists { .. })));
    std::fs::write(a.home().join("note"), "after").unwrap();

    // The snapshot holds the moment it was taken, read-only.
    let snap_note = t.dir.path().join("pool/snapshots/snap-1/home/note");
    assert_eq!(std::fs::read_to_string(&snap_note).unwrap(), "before");
    assert!(std::fs::write(&snap_note, "x").is_err(), "a snapshot is writable");

    // A fork starts from the snapshot, under its own quota, and changes in one don't show in the other.
    let range_b = IdRange { first: 500_000 };
    let b = t.pool.layer_from_snapshot(Shelf::Snapshots, "snap-1", "sb-b", range_b).unwrap();
    t.pool.limit_layer(&b, limits).unwrap();
    assert_ne!(b.id(), a.id());
    assert_eq!(std::fs::read_to_string(b.home().join("note")).unwrap(), "before");
    std::fs::write(b.home().join("note"), "fork").unwrap();
    assert_eq!(std::fs::read_to_string(a.home().join("note")).unwrap(), "after");
    assert_eq!(std::fs::read_to_string(&snap_note).unwrap(), "before");
    // The fork's files move to its own range: same inside owner, a host owner no other layer shares.
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(b.home()).unwrap().uid(), 501_000);
    assert_eq!(std::fs::metadata(b.home().join("note")).unwrap().gid(), 501_000);
    assert_eq!(std::fs::metadata(a.home().join("note")).unwrap().uid(), 301_000, "the source keeps its owners");
    assert!(write_as(501_000, &b.home().join("big"), 96 << 20).is_err(), "the fork has no quota");

    assert_eq!(t.pool.snapshots(Shelf::Snapshots), vec![snap.clone()]);
    commit();
    assert!(t.pool.snapshot_usage(&snap).unwrap().bytes > 0);
    // Deleting the snapshot leaves the fork whole.
    t.pool.remove_snapshot(Shelf::Snapshots, "snap-1").unwrap();
    assert!(t.pool.snapshots(Shelf::Snapshots).is_empty());
    assert_eq!(std::fs::read_to_string(b.home().join("note")).unwrap(), "fork");
    assert!(matches!(
        t.pool.layer_from_snapshot(Shelf::Snapshots, "snap-1", "sb-c", range_b),
        Err(StorageError::NotFound { .. })
    ));
    t.pool.remove_layer("sb-a").unwrap();
    t.pool.remove_layer("sb-b").unwrap();
    assert!(t.pool.layer_names().is_empty());
}

#[test]
fn a_shelved_layer_moves_back_whole_and_only_once() {
    let t = TestPool::new();
    let range = IdRange { first: 300_000 };
    let limits = LayerLimits { bytes: 64 << 20 };
    let a = t.pool.create_layer("sb-a", limits, Owner { uid: 301_000, gid: 301_000 }).unwrap();
    t.pool.set_id_range(&a, range).unwrap();
    std::fs::write(a.home().join("note"), "kept").unwrap();
    std::os::unix::fs::chown(a.home().join("note"), Some(301_000), Some(301_000)).unwrap();
    let kept = t.pool.shelve_layer("sb-a", "stopped-a").unwrap();
    assert!(t.pool.layer_names().is_empty(), "the layer was moved, not copied");
    assert_eq!(t.pool.snapshots(Shelf::Stopped), vec![kept.clone()]);
    assert!(t.pool.snapshots(Shelf::Snapshots).is_empty());
    assert!(t.pool.snapshot_usage(&kept).unwrap().bytes > 0, "shelving writes the pool to disk");
    assert_eq!(t.pool.snapshot_id_range(Shelf::Stopped, "stopped-a"), Some(range));
    assert!(matches!(t.pool.shelve_layer("sb-a", "stopped-b"), Err(StorageError::NotFound { .. })));

    // Back under its own range: nothing changes owner; under another: only owners change.
    let b = t.pool.unshelve_layer("stopped-a", "sb-b", range).unwrap();
    t.pool.limit_layer(&b, limits).unwrap();
    assert_eq!(b.id(), a.id(), "the same subvolume");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(b.home().join("note")).unwrap().uid(), 301_000);
    assert!(matches!(t.pool.unshelve_layer("stopped-a", "sb-c", range), Err(StorageError::NotFound { .. })));
    assert!(write_as(301_000, &b.home().join("big"), 96 << 20).is_err(), "the quota holds after the move");
    t.pool.shelve_layer("sb-b", "stopped-b").unwrap();
    let other = IdRange { first: 500_000 };
    // Stopped at its quota (the write above filled it), it still starts, in another range.
    let c = t.pool.unshelve_layer("stopped-b", "sb-c", other).unwrap();
    t.pool.limit_layer(&c, limits).unwrap();
    assert_eq!(std::fs::read_to_string(c.home().join("note")).unwrap(), "kept");
    assert_eq!(std::fs::metadata(c.home().join("note")).unwrap().uid(), 501_000);
    assert!(t.pool.snapshots(Shelf::Stopped).is_empty());
    t.pool.remove_layer("sb-c").unwrap();
    assert!(t.pool.layer_names().is_empty());
}
