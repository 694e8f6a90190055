//! Resource limits hold against hostile programs.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use agentbox_config::{DirectoryQuota, SandboxConfig};
use agentbox_core::ExecRequest;
use common::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_oom_killed_and_reported() {
    if common::not_root() {
        return;
    }
    let config = SandboxConfig { memory_mb: 64, ..SandboxConfig::default() };
    let sb = Sandbox::with(config).await;
    let out = sb
        .run(ExecRequest {
            timeout: Some(Duration::from_secs(60)),
            ..ExecRequest::argv(["python3", "-c", "b = []\nwhile True: b.append(bytearray(16 << 20))"])
        })
        .await;
    assert!(out.oom_killed, "expected an OOM kill: {out:?}");
    assert_eq!((out.exit_code, out.signal), (137, Some(9)));
    // The sandbox survives its own OOM kill.
    assert_eq!(sb.sh("echo alive").await.stdout, "alive\n");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    if common::not_root() {
        return;
    }
    let mut config = SandboxConfig::default();
    config.security.max_processes = 32;
    let sb = Sandbox::with(config).await;
    let code = "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)";
    let out = sb
        .run(ExecRequest { timeout: Some(Duration::from_secs(20)), ..ExecRequest::argv(["python3", "-c", code]) })
        .await;
    let mut it = out.stdout.split_whitespace();
    let forks: u32 = it.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out:?}"));
    assert!(forks < 32, "forked {forks} times past a limit of 32");
    assert_eq!(it.next(), Some("11"), "EAGAIN expected: {out:?}");
    // The host stays responsive: another sandbox works meanwhile.
    let other = Sandbox::new().await;
    assert_eq!(other.sh("echo fine").await.stdout, "fine\n");
    other.destroy().await;
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_storage_hits_enospc_at_the_quota() {
    if common::not_root() {
        return;
    }
    let mut config = SandboxConfig::default();
    config.storage.quotas.push(DirectoryQuota { path: "/home/user/small".into(), size_mb: 8 });
    let sb = Sandbox::with(config).await;
    let out = sb.sh("dd if=/dev/zero of=/home/user/small/fill bs=1M count=20 2>&1; echo rc=$?; stat -c %s /home/user/small/fill").await;
    assert!(out.stdout.contains("No space left on device"), "{}", out.stdout);
    assert!(out.stdout.contains("rc=1"), "{}", out.stdout);
    let size: u64 = out.stdout.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(u64::MAX);
    assert!(size <= 8 << 20, "wrote {size} bytes past an 8 MiB cap");
    // The rest of home still works.
    assert_eq!(sb.sh("echo ok > ~/x && cat ~/x").await.stdout, "ok\n");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_disk_cap_hits_enospc() {
    if common::not_root() {
        return;
    }
    let config = SandboxConfig { disk_gb: 1, memory_mb: 2048, ..SandboxConfig::default() };
    let sb = Sandbox::with(config).await;
    let out = sb.sh("dd if=/dev/zero of=/tmp/fill bs=4M count=300 2>&1; echo rc=$?; df -k /tmp | tail -1").await;
    assert!(out.stdout.contains("No space left on device"), "{}", out.stdout);
    assert_eq!(sb.sh("rm /tmp/fill && echo freed").await.stdout, "freed\n");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_tree() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let before = sb.backend.host_pids(&sb.id).unwrap().len();
    let script = "trap '' TERM; (setsid bash -c 'trap \"\" TERM HUP; sleep 1000' &); (bash -c 'sleep 1000 & disown') ; sleep 1000";
    let out = sb.run(ExecRequest { timeout: Some(Duration::from_millis(800)), ..ExecRequest::shell(script) }).await;
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, 124);
    // The tree dies as soon as the kernel has delivered the kills; polled for up to 30 s, so a busy machine
    // only makes the wait longer, never the test fail.
    let mut left = usize::MAX;
    for _ in 0..1500 {
        left = sb.backend.host_pids(&sb.id).unwrap().len();
        if left <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left <= before, "{left} processes remain after the timeout, {before} before");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_is_capped_with_a_mark() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let out = sb.backend_exec_collect("head -c 5000000 /dev/zero | tr '\\0' 'a'", 10_000).await;
    assert!(out.truncated);
    assert!(out.stdout.contains("bytes truncated"), "{}", &out.stdout[..100]);
    assert!(out.stdout.len() < 11_000);
    sb.destroy().await;
}

trait Collect {
    async fn backend_exec_collect(&self, line: &str, cap: usize) -> agentbox_core::ExecOutput;
}

impl Collect for Sandbox {
    async fn backend_exec_collect(&self, line: &str, cap: usize) -> agentbox_core::ExecOutput {
        use agentbox_core::SandboxBackend;
        self.backend.exec(&self.id, ExecRequest::shell(line)).await.unwrap().collect(cap).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_the_oom_killers_victims_before_the_init() {
    if common::not_root() {
        return;
    }
    let config = SandboxConfig { memory_mb: 64, ..SandboxConfig::default() };
    let sb = Sandbox::with(config).await;
    let init = sb.backend.init_pid(&sb.id).unwrap();
    let init_adj = std::fs::read_to_string(format!("/proc/{init}/oom_score_adj")).unwrap();
    let exempt = !sb.backend.limitations().iter().any(|l| l.contains("OOM killer"));
    if exempt {
        assert_eq!(init_adj.trim(), "-1000", "the init must never be the OOM killer's choice");
    } else {
        assert_eq!(init_adj.trim(), "0", "without CAP_SYS_RESOURCE the init keeps the default");
    }
    // Every execution is preferred over the init, and can't lower that: /proc is read-only to it (landlock),
    // since inside a user namespace the kernel can't pin the raised score.
    let out = sb.sh("cat /proc/self/oom_score_adj; echo -1000 > /proc/self/oom_score_adj && echo lowered").await;
    let (adj, lowered) = out.stdout.split_once('\n').unwrap();
    assert_eq!(adj, "500", "{out:?}");
    let landlock = !sb.backend.limitations().iter().any(|l| l.contains("landlock"));
    if landlock || exempt {
        assert_eq!(lowered, "", "sandboxed code lowered its score: {out:?}");
    }
    // A hog whose memory no process maps (a memfd written to), so its size is not the OOM killer's guide.
    let hog = "import os\nfd = os.memfd_create('hog')\nwhile True: os.write(fd, bytes(1 << 20))";
    let out = sb
        .run(ExecRequest { timeout: Some(Duration::from_secs(60)), ..ExecRequest::argv(["python3", "-c", hog]) })
        .await;
    assert!(out.oom_killed, "expected an OOM kill: {out:?}");
    assert!(std::path::Path::new(&format!("/proc/{init}")).exists(), "the init died with the hog");
    assert_eq!(sb.backend.init_pid(&sb.id).unwrap(), init);
    assert_eq!(sb.sh("echo alive").await.stdout, "alive\n");
    sb.destroy().await;
}
