//! Hostile code against the sandbox init (PID 1, which starts every execution with a vfork-style
//! clone), the zygote that clones the inits, the shared read-only /etc template and the sandbox's
//! host cgroups. Every probe is bounded in time and processes, and harmless if containment fails.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use agentbox_config::SandboxConfig;
use agentbox_core::{ExecOutput, ExecRequest, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};
use common::Sandbox;

/// How long a sandbox may take to answer after an attack.
const ANSWER: Duration = Duration::from_secs(20);

fn small() -> SandboxConfig {
    let mut c = SandboxConfig { memory_mb: 256, ..SandboxConfig::default() };
    c.security.max_processes = 64;
    c
}

/// Runs a request with a 10 s limit inside the sandbox, the whole call bounded by [`ANSWER`].
async fn try_run(sb: &Sandbox, req: ExecRequest) -> Result<ExecOutput, String> {
    let req = ExecRequest { timeout: Some(req.timeout.unwrap_or(Duration::from_secs(10))), ..req };
    let call = async {
        match sb.backend.exec(&sb.id, req).await {
            Ok(stream) => Ok(stream.collect(1 << 20).await),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(ANSWER, call).await.unwrap_or_else(|_| Err("no answer within 20 s".into()))
}

async fn sh(sb: &Sandbox, line: &str) -> ExecOutput {
    try_run(sb, ExecRequest::shell(line)).await.unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// The sandbox still runs a command promptly after `attack`.
async fn assert_answers(sb: &Sandbox, attack: &str) {
    match try_run(sb, ExecRequest::shell("echo ok")).await {
        Ok(out) => assert_eq!(out.stdout, "ok\n", "after {attack}: {out:?}"),
        Err(e) => panic!("the sandbox stopped answering after {attack}: {e}"),
    }
}

async fn destroy_bounded(sb: Sandbox) {
    tokio::time::timeout(Duration::from_secs(30), sb.destroy()).await.expect("destroy finishes");
}

/// Host pids of this process's children named `comm`.
fn children_named(comm: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(&format!("({comm}) ")) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn fd_targets(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()))
        .into_iter()
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// The init's wait channel and the state of every process of the sandbox, from the host.
fn states(sb: &Sandbox) -> String {
    let init = sb.backend.init_pid(&sb.id).unwrap();
    let wchan = std::fs::read_to_string(format!("/proc/{init}/wchan")).unwrap_or_default();
    let status = |p: &i32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let field = |k: &str| s.lines().find(|l| l.starts_with(k)).unwrap_or_default().replace('\t', " ");
        format!("{p} {} {} {}", field("Name:"), field("State:"), field("Uid:"))
    };
    let procs: Vec<String> = sb.backend.host_pids(&sb.id).unwrap().iter().map(status).collect();
    format!("init {init} waits in {wchan}; processes: {procs:#?}")
}

const PROBE_PID1: &str = r#"
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
print("fds", sorted(int(x) for x in os.listdir("/proc/self/fd")))
def attempt(name, f):
    try:
        r = f()
        print(name, "ok" if r is None or r >= 0 else "denied")
    except OSError:
        print(name, "denied")
for sig in (0, signal.SIGSTOP, signal.SIGKILL, signal.SIGTERM):
    attempt(f"kill{int(sig)}", lambda: os.kill(1, sig))
attempt("ptrace-attach", lambda: libc.ptrace(16, 1, 0, 0))
attempt("ptrace-seize", lambda: libc.ptrace(0x4206, 1, 0, 0))
pidfd = libc.syscall(434, 1, 0)
attempt("pidfd-signal", lambda: libc.syscall(424, pidfd, 9, None, 0) if pidfd >= 0 else -1)
for f in ("environ", "mem", "fd", "root/", "cwd/", "map_files"):
    attempt("proc-" + f, lambda: os.listdir(f"/proc/1/{f}") if f.endswith("/") or f in ("fd", "map_files") else open(f"/proc/1/{f}", "rb").read(1))
comms = {open(f"/proc/{p}/comm").read().strip() for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/comm")}
print("zygote-visible", "agentbox-zygote" in comms)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_code_is_unprivileged_and_cannot_reach_the_init_or_the_zygote() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    let out = sh(&sb, "grep -E '^(Cap(Eff|Prm|Bnd|Amb|Inh)|NoNewPrivs|Seccomp):' /proc/self/status").await;
    for want in ["CapEff:\t0{16}", "CapPrm:\t0{16}", "CapBnd:\t0{16}", "CapAmb:\t0{16}", "CapInh:\t0{16}"] {
        let want = want.replace("0{16}", "0000000000000000");
        assert!(out.stdout.lines().any(|l| l == want), "missing {want:?} in {}", out.stdout);
    }
    assert!(out.stdout.contains("NoNewPrivs:\t1\n") && out.stdout.contains("Seccomp:\t2\n"), "{}", out.stdout);
    // The same holds for a process started by a background execution and for its grandchildren.
    let out = sh(&sb, "bash -c 'sh -c \"grep -E ^CapBnd /proc/self/status\"'").await;
    assert_eq!(out.stdout, "CapBnd:\t0000000000000000\n");

    let out = try_run(&sb, ExecRequest::argv(["python3", "-c", PROBE_PID1])).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    for line in out.stdout.lines().filter(|l| !l.starts_with("fds") && !l.starts_with("zygote")) {
        assert!(line.ends_with(" denied"), "user code reached PID 1: {line}\n{}", out.stdout);
    }
    assert!(out.stdout.contains("zygote-visible False"), "{}", out.stdout);
    assert!(out.stdout.contains("fds [0, 1, 2, 3]\n"), "only stdio (and the listing) is open: {}", out.stdout);

    // From the host: the zygote is in other namespaces and none of its descriptors reached the init.
    let zygotes = children_named("agentbox-zygote");
    assert_eq!(zygotes.len(), 1, "{zygotes:?}");
    let init = sb.backend.init_pid(&sb.id).unwrap();
    for ns in ["pid", "mnt", "net"] {
        let z = std::fs::read_link(format!("/proc/{}/ns/{ns}", zygotes[0])).unwrap();
        let i = std::fs::read_link(format!("/proc/{init}/ns/{ns}")).unwrap();
        assert_ne!(z, i, "the zygote shares the sandbox's {ns} namespace");
    }
    let zygote_fds = fd_targets(zygotes[0]);
    let shared: Vec<_> =
        fd_targets(init).intersection(&zygote_fds).filter(|t| t.starts_with("socket:")).cloned().collect();
    assert!(shared.is_empty(), "the init holds the zygote's sockets: {shared:?}");
    destroy_bounded(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_cannot_start_fail_cleanly_and_leave_the_init_responsive() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    let plant = sh(
        &sb,
        "mkfifo ~/fifo ~/xfifo && chmod +x ~/xfifo && mkdir -p ~/.local/bin ~/locked && ln -s ~/xfifo ~/.local/bin/fifocmd \
         && ln -s /tmp ~/to-tmp && ln -s /proc/1/cwd ~/to-init && chmod 000 ~/locked \
         && printf '#!/home/user/fifo\\n' > ~/fifo-interp && chmod +x ~/fifo-interp \
         && printf '#!/proc/self/fd/0\\n' > ~/stdin-interp && chmod +x ~/stdin-interp && echo planted",
    )
    .await;
    assert_eq!(plant.stdout, "planted\n", "{}", plant.stderr);
    let argv = |a: &[&str]| ExecRequest::argv(a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let in_dir = |d: &str| ExecRequest { cwd: Some(d.into()), ..ExecRequest::shell("pwd -P") };
    let cases: Vec<(&str, ExecRequest, bool)> = vec![
        ("a missing cwd", in_dir("/home/user/nope"), false),
        ("a FIFO as cwd", in_dir("/home/user/fifo"), false),
        ("an unreadable cwd", in_dir("/home/user/locked"), false),
        ("a cwd symlink to PID 1's cwd", in_dir("/home/user/to-init"), false),
        ("a cwd symlink to /tmp", in_dir("/home/user/to-tmp"), true),
        ("a missing command", argv(&["no-such-command-x"]), false),
        ("a FIFO as executable", argv(&["/home/user/xfifo"]), false),
        ("a FIFO found through PATH", argv(&["fifocmd"]), false),
        ("a FIFO as interpreter", argv(&["/home/user/fifo-interp"]), false),
        (
            "a pipe as interpreter",
            ExecRequest { stdin: Some(b"x".to_vec()), ..argv(&["/home/user/stdin-interp"]) },
            false,
        ),
        ("a 200 KiB argument", argv(&["/bin/true", &"a".repeat(200 << 10)]), false),
        (
            // Under the backend's 2 MiB check, over the kernel's limit once its pointers count.
            "1.9 MiB of arguments in 21000 pieces",
            ExecRequest::argv(
                vec!["/bin/true".to_owned(); 21_000].into_iter().map(|a| a + &"x".repeat(81)).collect::<Vec<_>>(),
            ),
            false,
        ),
        (
            "a 200 KiB variable",
            ExecRequest { env: [("BIG".to_owned(), "v".repeat(200 << 10))].into(), ..argv(&["/bin/true"]) },
            false,
        ),
    ];
    for (what, req, should_run) in cases {
        let out = try_run(&sb, req).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(out.exit_code == 0, should_run, "{what}: {out:?}");
        assert!(!out.timed_out, "{what} blocked until its time limit: {out:?}");
        assert_answers(&sb, what).await;
    }
    // Requests no command could take are refused up front with the reason, and the sandbox lives on:
    // 3 MiB, and 17 MiB (past the control protocol's frame limit).
    for size in [3usize << 20, 17 << 20] {
        let huge = ExecRequest::argv(vec!["x".repeat(1 << 20); size >> 20]);
        let refused = try_run(&sb, huge).await.map(|o| o.exit_code);
        assert!(refused.as_ref().is_err_and(|e| e.contains("at most 2097152")), "{size}: {refused:?}");
    }
    let answer = try_run(&sb, ExecRequest::shell("echo ok")).await.map(|o| o.stdout);
    destroy_bounded(sb).await;
    assert_eq!(answer.as_deref(), Ok("ok\n"), "the sandbox died of an oversized exec request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_fifos_at_background_output_paths_do_not_block_the_init() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    let out =
        sh(&sb, "for i in $(seq 1 64); do mkfifo /tmp/agentbox-bg-$i.log; done; ls /tmp | grep -c agentbox-bg").await;
    assert_eq!(out.stdout, "64\n", "{}", out.stderr);
    for _ in 0..3 {
        let started = tokio::time::timeout(ANSWER, sb.backend.spawn_background(&sb.id, ExecRequest::shell("sleep 1")))
            .await
            .expect("spawn_background answers");
        let p = started.unwrap_or_else(|e| panic!("a background process was refused beside planted FIFOs: {e}"));
        let path = p.output_path.expect("a background process has an output path");
        let kind = sh(&sb, &format!("stat -c %F {path}")).await;
        // The planted FIFO may stay where it is (the init opens its output without blocking) or be replaced.
        assert!(matches!(kind.stdout.as_str(), "fifo\n" | "regular file\n"), "{path}: {kind:?}");
        assert_answers(&sb, "a background process whose output path is a FIFO").await;
    }
    destroy_bounded(sb).await;
}

/// A user process can stop any other process of the sandbox user. An execution's child has the user's
/// uid from its setresuid until its execve, while the init waits for it (vfork): stopping it
/// there must not leave the init stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_every_user_process_does_not_hang_the_init() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    // Stops every other user process for 4 s, then tries to reach any stopped execution child
    // (which still shares the init's memory) through /proc and ptrace.
    let stopper = r#"
import ctypes, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
end = time.time() + 4
while time.time() < end:
    try: os.kill(-1, signal.SIGSTOP)
    except OSError: pass
for p in [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]:
    try:
        if open(f"/proc/{p}/comm").read().strip() != "agentbox-init": continue
    except OSError: continue
    for f in ("mem", "maps", "environ"):
        # A child killed meanwhile has no memory left: its files open but read nothing.
        try: print(p, f, "reached" if open(f"/proc/{p}/{f}", "rb").read(64) else "empty", flush=True)
        except OSError: print(p, f, "denied", flush=True)
    print(p, "ptrace", "reached" if libc.ptrace(16, int(p), 0, 0) == 0 else "denied", flush=True)
print("stopper done", flush=True)
"#;
    let stopper = sb.backend.spawn_background(&sb.id, ExecRequest::argv(["python3", "-c", stopper])).await.unwrap();
    let stopper_log = stopper.output_path.unwrap();
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (backend, id) = (sb.backend.clone(), sb.id.clone());
        runs.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 80)).await;
            let req = ExecRequest { timeout: Some(Duration::from_secs(2)), ..ExecRequest::argv(["/bin/true"]) };
            match backend.exec(&id, req).await {
                Ok(stream) => Ok(stream.collect(4096).await),
                Err(e) => Err(e.to_string()),
            }
        });
    }
    // Each execution runs; or the user's SIGSTOP catches it before its execve, and the init kills it and says so;
    // or it is stopped after and ends at its time limit. None is refused and none hangs.
    const STOPPED: &str = "agentbox: the command was stopped before it could start, and was killed\n";
    let mut wrong = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = runs.join_next().await {
            match r.unwrap() {
                Ok(out) if out.exit_code == 0 && !out.timed_out => {}
                Ok(out) if out.timed_out && out.exit_code == 124 => {}
                Ok(out) if (out.exit_code, out.signal, out.stderr.as_str()) == (137, Some(9), STOPPED) => {}
                other => wrong.push(other),
            }
        }
    })
    .await;
    // The check that the init still answers comes once the stopper is done: on a slow machine (an emulated
    // guest) the stopper may start late and still be stopping processes, the check's own among them.
    let stopper_done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let log = sb.backend.read_file(&sb.id, &stopper_log).await.unwrap_or_default();
            if String::from_utf8_lossy(&log).contains("stopper done") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let answer = try_run(&sb, ExecRequest::shell("echo ok")).await.map(|o| o.stdout);
    let diagnosis = states(&sb);
    let log = sb.backend.read_file(&sb.id, &stopper_log).await.unwrap_or_default();
    let log = String::from_utf8_lossy(&log).into_owned();
    // Destroy first, so a stuck init is not left behind on the host when the checks below fail.
    destroy_bounded(sb).await;
    assert!(!log.contains("reached"), "user code reached a stopped execution child: {log}");
    assert!(all.is_ok(), "executions never finished while user code stopped processes: {diagnosis}\n{log}");
    assert!(stopper_done.is_ok(), "the stopper never finished: {diagnosis}\n{log}");
    assert!(wrong.is_empty(), "executions beside a stopper neither ran nor timed out: {wrong:?}");
    assert_eq!(answer.as_deref(), Ok("ok\n"), "the init is stuck: {diagnosis}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_execs_beside_a_fork_bomb_all_finish() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    let bomb = {
        let (backend, id) = (sb.backend.clone(), sb.id.clone());
        tokio::spawn(async move {
            let req = ExecRequest {
                timeout: Some(Duration::from_secs(6)),
                ..ExecRequest::shell("b(){ b | b & }; b; sleep 10")
            };
            match backend.exec(&id, req).await {
                Ok(stream) => Ok(stream.collect(4096).await),
                Err(e) => Err(e.to_string()),
            }
        })
    };
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (backend, id) = (sb.backend.clone(), sb.id.clone());
        runs.spawn(async move {
            let req = ExecRequest {
                timeout: Some(Duration::from_secs(15)),
                ..ExecRequest::argv(["echo".to_owned(), i.to_string()])
            };
            let outcome = match backend.exec(&id, req).await {
                Ok(s) => Ok(s.collect(4096).await),
                Err(e) => Err(e.to_string()),
            };
            (i, outcome)
        });
    }
    // Each execution either ran, or could not start because the fork bomb holds every process the
    // sandbox may have; then it runs once the bomb is gone.
    const NO_PROCESS: &str = "agentbox: starting the command failed: Resource temporarily unavailable (os error 11)\n";
    let mut refused = Vec::new();
    let mut wrong = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = runs.join_next().await {
            let (i, outcome) = r.unwrap();
            match outcome {
                Ok(out) if out.exit_code == 0 && out.stdout == format!("{i}\n") && out.stderr.is_empty() => {}
                Ok(out) if out.exit_code == 126 && out.stderr == NO_PROCESS && !out.timed_out => refused.push(i),
                other => wrong.push((i, other)),
            }
        }
    })
    .await;
    assert!(all.is_ok(), "some of 200 concurrent executions never finished");
    assert!(wrong.is_empty(), "executions beside a fork bomb failed otherwise than for the process limit: {wrong:?}");
    let bombed = tokio::time::timeout(ANSWER, bomb).await.expect("the fork bomb ends at its time limit");
    let out = bombed.unwrap().unwrap_or_else(|e| panic!("the fork bomb's execution was refused: {e}"));
    // The bomb itself may be the one that finds no process slot left (the 200 executions took them first):
    // then it fails to start exactly as they do. Otherwise it runs until its time limit kills it.
    let bomb_refused = out.exit_code == 126 && out.stderr == NO_PROCESS && !out.timed_out;
    assert!(out.timed_out || bomb_refused, "the fork bomb is killed at its limit or refused a process: {out:?}");
    for i in refused {
        let req = ExecRequest {
            timeout: Some(Duration::from_secs(15)),
            ..ExecRequest::argv(["echo".to_owned(), i.to_string()])
        };
        let out = try_run(&sb, req).await.unwrap_or_else(|e| panic!("echo {i} after the fork bomb: {e}"));
        assert_eq!((out.exit_code, out.stdout.as_str()), (0, format!("{i}\n").as_str()), "{out:?}");
    }
    assert_answers(&sb, "200 concurrent executions and a fork bomb").await;
    destroy_bounded(sb).await;
}

/// Names and sizes of everything in the host's /etc templates.
/// The files of the /etc template the sandbox `sb` binds (found through its init's mount table, so
/// templates other tests' backends build meanwhile don't count).
fn template_files(sb: &Sandbox, state: &std::path::Path) -> BTreeSet<(PathBuf, u64)> {
    fn walk(d: &std::path::Path, out: &mut BTreeSet<(PathBuf, u64)>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.insert((e.path(), m.len()));
            if m.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let pid = sb.backend.init_pid(&sb.id).unwrap();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == "/etc")
        .map(|f| f[3].to_owned())
        .expect("an /etc mount");
    let name = root.rsplit('/').next().unwrap().to_owned();
    assert!(name.starts_with("etc-"), "/etc comes from {root}");
    let mut out = BTreeSet::new();
    walk(&state.join(name), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etc_is_a_read_only_template_without_host_secrets() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    let state = LocalConfig::default().state_dir;
    let before = template_files(&sb, &state);
    assert!(!before.is_empty(), "a read-only root sandbox binds an /etc template from {}", state.display());
    let out = sh(
        &sb,
        "grep -E '^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /etc ' /proc/self/mountinfo | cut -d' ' -f6; \
         for p in /etc/shadow /etc/gshadow /etc/sudoers /etc/ssh/ssh_host_rsa_key; do head -c1 $p >/dev/null 2>&1 && echo readable $p; done; \
         ls -A /etc/ssl/private 2>/dev/null | sed 's/^/private /'; \
         for t in /etc /proc/self/root/etc /proc/1/root/etc /dev/fd/../../etc; do touch $t/agentbox-hostile-probe 2>/dev/null && echo wrote $t; done; \
         echo x >> /etc/hostname 2>/dev/null && echo appended; mv /etc/hosts /etc/h2 2>/dev/null && echo renamed; \
         mount -o remount,rw /etc 2>/dev/null && echo remounted; umount -l /etc 2>/dev/null && echo unmounted; \
         python3 -c 'import os; os.chmod(\"/etc/hostname\", 0o666)' 2>/dev/null && echo chmodded; echo done",
    )
    .await;
    assert!(out.stdout.starts_with("ro,") || out.stdout.starts_with("ro\n"), "/etc mount options: {}", out.stdout);
    for bad in ["readable", "private ", "wrote", "appended", "renamed", "remounted", "unmounted", "chmodded"] {
        assert!(!out.stdout.contains(bad), "{bad}: {}", out.stdout);
    }
    assert!(out.stdout.ends_with("done\n"), "{}", out.stdout);
    assert_eq!(sh(&sb, "cat /etc/hostname").await.stdout, "sandbox\n");
    let after = template_files(&sb, &state);
    assert_eq!(after, before, "the host template changed");
    assert!(!after.iter().any(|(p, _)| p.ends_with("agentbox-hostile-probe")));
    destroy_bounded(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_cgroups_vanish_after_destroy_with_busy_background_and_exec_cgroups() {
    if common::not_root() {
        return;
    }
    let mut config = small();
    config.security.max_processes = 128;
    let sb = Sandbox::with(config).await;
    let id = sb.id.as_str().to_owned();
    let cgroups = LocalBackend::host_cgroups(&LocalConfig::default(), &id);
    assert!(!cgroups.is_empty(), "the sandbox has host cgroups");
    assert!(
        cgroups.iter().all(|c| c.to_string_lossy().contains(&format!("{id}.o{}-", std::process::id()))),
        "{cgroups:?}"
    );
    let bg = "trap '' TERM HUP; for i in $(seq 30); do sleep 1000 & done; wait";
    sb.backend.spawn_background(&sb.id, ExecRequest::shell(bg)).await.unwrap();
    for _ in 0..6 {
        // Each leaves a process behind in its own execution cgroup, which then stays in use.
        let out =
            sh(&sb, "setsid bash -c \"trap '' TERM HUP; sleep 1000\" >/dev/null 2>&1 < /dev/null & echo left").await;
        assert_eq!(out.stdout, "left\n");
    }
    let mut pids = sb.backend.host_pids(&sb.id).unwrap();
    for _ in 0..100 {
        if pids.len() >= 38 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        pids = sb.backend.host_pids(&sb.id).unwrap();
    }
    assert!(pids.len() >= 38, "{} processes", pids.len());
    destroy_bounded(sb).await;
    assert_eq!(LocalBackend::host_cgroups(&LocalConfig::default(), &id), Vec::<PathBuf>::new(), "cgroups left");
    for p in pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(!stat.contains("sleep") && !stat.contains("bash"), "process {p} survived destroy: {stat}");
    }
}

/// The start limit ends at `execve`: a command may run far longer than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_limit_does_not_outlive_execve() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(small()).await;
    let out = sh(&sb, "sleep 3; echo slept").await;
    destroy_bounded(sb).await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "slept\n"), "{out:?}");
}
