//! What the scheduler sees of a sandbox: its init asks for short slices and starts each execution on its own
//! CPU (see the agent's `cpu.rs`), but the programs a sandbox runs keep every CPU and the kernel's default slice.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use agentbox_core::{ExecRequest, SandboxBackend};
use common::Sandbox;

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit([':', '\t', ' ']).next().unwrap().trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxed_programs_keep_every_cpu_and_the_default_slice() {
    if common::not_root() {
        return;
    }
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_cpus = field(&host, "Cpus_allowed_list").to_owned();
    let sb = Sandbox::new().await;
    // The execution itself, and a process it forks.
    let probe = "grep -E '^Cpus_allowed_list' /proc/self/status; grep -E '^se.slice' /proc/self/sched";
    for line in [probe.to_owned(), format!("sh -c \"{probe}\"")] {
        let out = sb.sh(&line).await;
        assert_eq!(out.exit_code, 0, "{}", out.stderr);
        assert_eq!(field(&out.stdout, "Cpus_allowed_list"), host_cpus, "{line}: {}", out.stdout);
        // Kernels before 6.6 show no slice.
        if out.stdout.contains("se.slice") {
            let slice: u64 = field(&out.stdout, "se.slice").parse().unwrap();
            assert!(slice > 300_000, "a sandboxed program kept a control slice ({slice} ns): {}", out.stdout);
        }
    }
    // Many starts in a row, with the sandbox's CPUs busy so that the init pins its starts: none leaves the init
    // (and so the next execution) or what it runs pinned.
    let busy = ExecRequest::shell("for i in 1 2 3 4; do timeout 20 sh -c 'while :; do :; done' & done; wait");
    sb.backend.spawn_background(&sb.id, busy).await.unwrap();
    for _ in 0..40 {
        let out = sb
            .sh("grep -E '^Cpus_allowed_list' /proc/self/status; sh -c 'grep -E ^Cpus_allowed_list /proc/self/status'")
            .await;
        for line in out.stdout.lines() {
            assert_eq!(field(line, "Cpus_allowed_list"), host_cpus, "{}", out.stdout);
        }
    }
    sb.destroy().await;
}
