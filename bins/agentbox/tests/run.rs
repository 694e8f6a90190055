//! `agentbox run` through the real binary: the sandbox zygote it forks at the top of `main` (instead of executing
//! the binary again) carries nothing of the run's command line or environment into the memory every init is
//! cloned from; the init gets only what is the command's (its `--env`). The process the caller waits for answers
//! as soon as the command is over, and the sandbox is destroyed after by the worker it forked
//! (`agentbox_local::early_exit`); signals reach the command as before.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// The pid of a child of `parent` whose name is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && name == comm).then_some(pid)
    })
}

/// Every writable private mapping of `pid` (its stack, heap and data), read through /proc/PID/mem.
fn writable_memory(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        if end - start > 256 << 20 {
            continue;
        }
        let mut buf = vec![0u8; usize::try_from(end - start).unwrap()];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_zygote_and_the_init_hold_no_argument_or_environment_of_the_run() {
    if !is_root() {
        eprintln!("skipped: the local backend needs root");
        return;
    }
    let env_secret = format!("not-for-sandboxes-{}", std::process::id());
    let arg_secret = format!("for-the-command-only-{}", std::process::id());
    let mut run = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["run", "--env", &format!("ARG_SECRET={arg_secret}"), "--", "sleep", "3"])
        .env("ENV_SECRET", &env_secret)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (zygote, init) = loop {
        // The process started answers the caller; the worker it forked runs the sandbox.
        let zygote = child_named(run.id(), "agentbox").and_then(|worker| child_named(worker, "agentbox-zygote"));
        let init = zygote.and_then(|z| child_named(z, "agentbox-init"));
        // Once the command runs, the init has had everything the run sends it.
        if let Some(init) = init.filter(|i| child_named(*i, "sleep").is_some()) {
            break (zygote.unwrap(), init);
        }
        assert!(Instant::now() < deadline, "no sandbox command appeared under the run");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The zygote holds neither. The init is sent the command's own environment (`--env`) to run it, so it
    // holds that value by design; never the run's environment, which is not the sandbox's.
    for (pid, secrets) in [(zygote, vec![&env_secret, &arg_secret]), (init, vec![&env_secret])] {
        for file in ["cmdline", "environ"] {
            let text = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
            for secret in [&env_secret, &arg_secret] {
                let shown = String::from_utf8_lossy(&text);
                assert!(!contains(&text, secret.as_bytes()), "/proc/{pid}/{file}: {shown}");
            }
        }
        let memory = writable_memory(pid);
        for secret in secrets {
            assert!(!contains(&memory, secret.as_bytes()), "{secret} is in the memory of pid {pid}");
        }
    }
    assert!(run.wait().unwrap().success());
}

/// Starts `agentbox run -- ARGS` with piped outputs and returns it with its worker's pid, once the command runs.
#[expect(clippy::zombie_processes, reason = "the child is returned, and each caller waits for it")]
fn start_run(args: &[&str], running: &str) -> (std::process::Child, u32) {
    let mut run = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .arg("run")
        .arg("--")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let worker = child_named(run.id(), "agentbox");
        let init = worker.and_then(|w| child_named(w, "agentbox-zygote")).and_then(|z| child_named(z, "agentbox-init"));
        if let (Some(worker), Some(_)) = (worker, init.and_then(|i| child_named(i, running))) {
            return (run, worker);
        }
        if Instant::now() >= deadline {
            let _ = run.kill();
            let _ = run.wait();
            panic!("no sandbox command appeared under the run");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` runs (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The host cgroup directories of sandboxes that the process `owner` made, in every hierarchy.
fn cgroups_of(owner: u32) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu"] {
        let Ok(parents) = std::fs::read_dir(root) else { continue };
        for parent in parents.flatten().filter(|p| p.file_name().to_string_lossy().starts_with("agentbox-")) {
            let Ok(children) = std::fs::read_dir(parent.path()) else { continue };
            found.extend(
                children
                    .flatten()
                    .filter(|c| c.file_name().to_string_lossy().contains(&format!(".o{owner}-")))
                    .map(|c| c.path()),
            );
        }
    }
    found
}

/// Waits up to 20 s for `done`.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_caller_gets_the_whole_output_and_the_code_and_the_sandbox_is_destroyed_after() {
    if !is_root() {
        eprintln!("skipped: the local backend needs root");
        return;
    }
    // Output on both streams, written before the answer; read to their ends by the caller.
    let script = "sleep 1; head -c 300000 /dev/zero | tr '\\0' a; echo; echo to-stderr >&2; exit 3";
    let (run, worker) = start_run(&["sh", "-c", script], "sh");
    assert!(!cgroups_of(worker).is_empty(), "the sandbox's cgroups are not where this test looks");
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout.len(), 300_001);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    // The worker destroys the sandbox and exits, leaving no cgroup behind.
    eventually("the worker did not finish", || !alive(worker));
    assert!(cgroups_of(worker).is_empty(), "{:?}", cgroups_of(worker));
}

#[test]
fn signals_to_the_process_the_caller_waits_for_reach_the_command() {
    if !is_root() {
        eprintln!("skipped: the local backend needs root");
        return;
    }
    // SIGINT, as Ctrl-C: the command is stopped, the code is 130, and the sandbox goes.
    let (run, worker) = start_run(&["sleep", "30"], "sleep");
    let sent = Command::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    eventually("the worker did not finish", || !alive(worker));
    assert!(cgroups_of(worker).is_empty(), "{:?}", cgroups_of(worker));

    // SIGKILL: the process is gone at once, and the command with it (not after its 30 s).
    let (mut run, worker) = start_run(&["sleep", "30"], "sleep");
    run.kill().unwrap();
    let status = run.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    eventually("the worker outlived the killed process", || !alive(worker));
}
