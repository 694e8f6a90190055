//! Directory watchers in real local sandboxes: what appears before a new directory's watch is set is still
//! reported. Needs root, as every local-backend test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{CreateOptions, ExecRequest, ManagerConfig, RunId, SandboxManager};
use agentbox_e2b_api::watch::{FsEvent, Watchers};

fn not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_arrives_with_files_reports_them_created_and_written() {
    if not_root() {
        return;
    }
    let local = agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default()).unwrap();
    let manager = SandboxManager::new(Arc::new(local), ManagerConfig::default());
    let run = RunId::parse("watch-arrivals").unwrap();
    manager.get_or_create(&run, CreateOptions::default()).await.unwrap();
    let sh = |line: &str| manager.exec_collect(&run, ExecRequest::shell(line));
    assert_eq!(sh("mkdir -p watched staging/nested").await.unwrap().exit_code, 0);
    let watchers = Watchers::default();
    let (id, watcher) =
        watchers.start(&manager, &run, "/home/user/watched", true, Duration::from_secs(60)).await.unwrap();
    // The directory arrives whole (a rename), its files written before any watch on it could exist.
    let made =
        sh("echo data > staging/nested/file && : > staging/nested/empty && mv staging/nested watched/").await.unwrap();
    assert_eq!(made.exit_code, 0);
    let mut events = Vec::new();
    for _ in 0..20 {
        events.extend(watcher.take_settled().await);
        if events.iter().any(|e: &FsEvent| e.name == "nested/file" && e.kind == "EVENT_TYPE_WRITE") {
            break;
        }
    }
    let has = |name: &str, kind: &str| events.iter().any(|e| e.name == name && e.kind == kind);
    assert!(has("nested", "EVENT_TYPE_CREATE"), "{events:?}");
    assert!(has("nested/file", "EVENT_TYPE_CREATE") && has("nested/file", "EVENT_TYPE_WRITE"), "{events:?}");
    assert!(has("nested/empty", "EVENT_TYPE_CREATE"), "{events:?}");
    assert!(!has("nested/empty", "EVENT_TYPE_WRITE"), "an empty file was never written: {events:?}");
    watchers.remove(&manager, &run, &id).await.unwrap();
    manager.shutdown().await;
}
