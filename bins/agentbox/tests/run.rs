//! `agentbox run` through the real binary: the sandbox zygote it forks at the top of `main` (instead of executing
//! the binary again) carries nothing of the run's command line or environment into the memory every init is
//! cloned from; the init gets only what is the command's (its `--env`).
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
        let zygote = child_named(run.id(), "agentbox-zygote");
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
