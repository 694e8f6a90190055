//! Nothing of a destroyed sandbox is left, in a test binary of its own: the descriptor check
//! compares this process's open files before and after, which other tests running in
//! parallel would change.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use agentbox_config::SandboxConfig;
use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};
use common::{mounts_mentioning, open_fds, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_nothing_behind_and_is_idempotent() {
    if common::not_root() {
        return;
    }
    let state = tempdir("destroy");
    let b = LocalBackend::new(LocalConfig { state_dir: state.clone(), ..LocalConfig::default() }).unwrap();
    // Warm up once so lazily made process-wide resources (the sealed agent copy) are in the baseline.
    let warm = b.create(CreateRequest::default()).await.unwrap();
    b.destroy(&warm.id).await.unwrap();
    let fds_before = open_fds();
    let info = b.create(CreateRequest::new(SandboxConfig::default())).await.unwrap();
    let id = info.id.as_str().to_owned();
    b.spawn_background(&info.id, ExecRequest::shell("sleep 1000 & sleep 1000")).await.unwrap();
    // The init and both sleeps (the shell may still be forking them).
    let mut pids = b.host_pids(&info.id).unwrap();
    for _ in 0..200 {
        if pids.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        pids = b.host_pids(&info.id).unwrap();
    }
    assert!(pids.len() >= 3, "{pids:?}");
    let cgroups: Vec<String> =
        std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap().lines().map(str::to_owned).collect();
    // The sandbox's host id range, which destroy gives back.
    let uid_map = std::fs::read_to_string(format!("/proc/{}/uid_map", pids[0])).unwrap();
    let first_id = uid_map.split_whitespace().nth(1).unwrap().to_owned();
    let claims = LocalConfig::default().id_ranges.unwrap().dir;
    assert!(claims.join(&first_id).exists(), "no claim for the range in {uid_map:?}");
    b.destroy(&info.id).await.unwrap();
    b.destroy(&info.id).await.unwrap();
    assert!(!claims.join(&first_id).exists(), "destroy left the id range {first_id} claimed");
    // Destroy returns once the init has exited; the zygote, its parent, reaps it a moment later (a slow
    // machine, such as an emulated guest, shows it as a zombie meanwhile).
    for p in &pids {
        let proc_dir = format!("/proc/{p}");
        for _ in 0..500 {
            if !std::path::Path::new(&proc_dir).exists() {
                break;
            }
            let state = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap_or_default();
            assert!(
                state.lines().any(|l| l.starts_with("State:") && l.contains("Z (zombie)")) || state.is_empty(),
                "process {p} survived destroy: {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!std::path::Path::new(&proc_dir).exists(), "process {p} was never reaped after destroy");
    }
    let config = LocalConfig { state_dir: state.clone(), ..LocalConfig::default() };
    assert_eq!(LocalBackend::host_cgroups(&config, &id), Vec::<std::path::PathBuf>::new(), "cgroups left behind");
    // Only what the backend shares between sandboxes (and later processes) stays: the empty root mount
    // point, /etc templates and the record of which one matched the host; no build directory.
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shared = name == ".root" || name.starts_with("etc-") || name.starts_with("checked-etc-");
        assert!(shared, "{name} left in the state directory");
    }
    assert_eq!(std::fs::read_dir(state.join(".root")).unwrap().count(), 0);
    assert_eq!(mounts_mentioning(&id), 0);
    for line in cgroups.iter().filter(|l| l.contains(&id)) {
        let (ctrl, path) = line.split_once(':').unwrap().1.split_once(':').unwrap();
        let ctrl = ctrl.split(',').next().unwrap_or_default();
        let dir =
            if ctrl.is_empty() { format!("/sys/fs/cgroup{path}") } else { format!("/sys/fs/cgroup/{ctrl}{path}") };
        assert!(!std::path::Path::new(&dir).exists(), "cgroup {dir} left behind");
    }
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
    assert!(b.list().await.unwrap().is_empty());
    assert!(b.exec(&info.id, ExecRequest::shell("true")).await.is_err());

    // A create that fails half-way leaves nothing either: here the init can't mount its root because
    // the shared mount point was replaced by a file.
    std::fs::remove_dir(state.join(".root")).unwrap();
    std::fs::write(state.join(".root"), "not a directory").unwrap();
    let err = b.create(CreateRequest::default()).await.unwrap_err();
    std::fs::remove_file(state.join(".root")).unwrap();
    std::fs::create_dir(state.join(".root")).unwrap();
    assert!(err.to_string().contains("entering the root mount point"), "{err}");
    assert_eq!(LocalBackend::host_cgroups(&config, ""), Vec::<std::path::PathBuf>::new(), "cgroups left behind");
    assert_eq!(open_fds(), fds_before, "file descriptors leaked by a failed create");
    assert!(b.list().await.unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&state);
}
