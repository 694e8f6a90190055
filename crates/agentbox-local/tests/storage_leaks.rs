//! Nothing of 200 storage cycles (create, snapshot, fork, stop, start, destroy) is left: no layer, stopped
//! sandbox, snapshot, mount, id range claim, quota group, cgroup or descriptor. In a test binary of its own: the
//! descriptor and claim checks compare before and after, which other tests running in parallel would change.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use agentbox_core::{CreateRequest, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};
use common::{mounts_mentioning, open_fds, tempdir};

/// Level-0 quota groups of the host's btrfs filesystems (the storage pool's: one per subvolume, and stale ones of
/// deleted subvolumes until the kernel has freed their blocks).
fn qgroups() -> usize {
    std::fs::read_dir("/sys/fs/btrfs")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_dir(e.path().join("qgroups")).ok())
                .map(|q| q.flatten().filter(|g| g.file_name().to_string_lossy().starts_with("0_")).count())
                .sum()
        })
        .unwrap_or(0)
}

fn claims() -> usize {
    std::fs::read_dir(LocalConfig::default().id_ranges.unwrap().dir).map(|rd| rd.count()).unwrap_or(0)
}

fn pool_entries(dir: &str, ids: &BTreeSet<String>) -> Vec<String> {
    std::fs::read_dir(format!("/var/lib/agentbox/storage/pool/{dir}"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| ids.iter().any(|id| n.contains(id.as_str())))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_cycles_leave_nothing_behind() {
    if common::not_root() {
        return;
    }
    let state = tempdir("storage-cycles");
    let b = LocalBackend::new(LocalConfig { state_dir: state.clone(), ..LocalConfig::default() }).unwrap();
    let warm = b.create(CreateRequest::default()).await.unwrap();
    b.destroy(&warm.id).await.unwrap();
    let (fds_before, claims_before, qgroups_before) = (open_fds(), claims(), qgroups());
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let tag = std::process::id();
    // 200 cycles of create, write, snapshot, fork from it, stop the fork, start it again, destroy both.
    for i in 0..200 {
        let a = b.create(CreateRequest::default()).await.unwrap();
        ids.insert(a.id.to_string());
        b.write_file(&a.id, "/home/user/n", format!("{i}").into_bytes()).await.unwrap();
        let snap = format!("cycle-{tag}-{i}");
        b.snapshot(&a.id, &snap).await.unwrap();
        let fork =
            b.create(CreateRequest { from_snapshot: Some(snap.clone()), ..CreateRequest::default() }).await.unwrap();
        ids.insert(fork.id.to_string());
        let key = b.stop(&fork.id).await.unwrap().key;
        let again = b.start(&key, CreateRequest::default()).await.unwrap();
        ids.insert(again.id.to_string());
        assert_eq!(b.read_file(&again.id, "/home/user/n").await.unwrap(), format!("{i}").into_bytes());
        b.delete_snapshot(&snap).await.unwrap();
        b.destroy(&again.id).await.unwrap();
        b.destroy(&a.id).await.unwrap();
    }
    assert!(b.list().await.unwrap().is_empty());
    for dir in ["layers", "stopped", "snapshots"] {
        assert_eq!(pool_entries(dir, &ids), Vec::<String>::new(), "left in the pool's {dir}");
    }
    let snaps: Vec<String> = b.list_snapshots().await.unwrap().into_iter().map(|s| s.name).collect();
    assert!(!snaps.iter().any(|s| s.starts_with(&format!("cycle-{tag}-"))), "{snaps:?}");
    assert!(ids.iter().all(|id| mounts_mentioning(id) == 0), "mounts left behind");
    assert_eq!(claims(), claims_before, "id ranges left claimed");
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
    // Quota groups of deleted subvolumes go once the kernel has freed their blocks.
    let mut groups = qgroups();
    for _ in 0..100 {
        if groups <= qgroups_before {
            break;
        }
        std::process::Command::new("sync").status().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        groups = qgroups();
    }
    assert!(groups <= qgroups_before, "quota groups left: {groups}, {qgroups_before} before");
    let config = LocalConfig { state_dir: state.clone(), ..LocalConfig::default() };
    assert_eq!(LocalBackend::host_cgroups(&config, ""), Vec::<std::path::PathBuf>::new(), "cgroups left behind");
    let _ = std::fs::remove_dir_all(&state);
}
