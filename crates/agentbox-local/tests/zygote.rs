//! The zygote, in a test binary of its own: killing it must not race with other tests'
//! checks of this process's descriptors.

mod common;

use common::Sandbox;

/// Host pids of this process's children named `comm`.
fn children_named(comm: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(&format!("({comm}) ")) && !stat.contains(") Z ") {
                pids.push(pid);
            }
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_zygote_is_replaced_and_running_sandboxes_are_unaffected() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let zygotes = children_named("agentbox-zygote");
    assert_eq!(zygotes.len(), 1, "one zygote per process: {zygotes:?}");
    // SAFETY: signalling the zygote this test process started, by its pid.
    assert_eq!(unsafe { libc::kill(zygotes[0], libc::SIGKILL) }, 0);
    assert_eq!(sb.sh("echo still here").await.stdout, "still here\n");
    let other = Sandbox::new().await;
    assert_eq!(other.sh("echo fresh").await.stdout, "fresh\n");
    let now = children_named("agentbox-zygote");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], zygotes[0]);
    other.destroy().await;
    sb.destroy().await;
}
