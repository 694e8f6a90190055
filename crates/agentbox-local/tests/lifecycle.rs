//! Lifecycle: state between execs, background processes, stdin, code, health,
//! metrics, and reaping after a crash (destroy leaving nothing behind is in leaks.rs).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use agentbox_config::{NetworkConfig, SandboxConfig};
use agentbox_core::{CodeRequest, CreateRequest, ExecEvent, ExecRequest, Language, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};
use common::{Sandbox, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_between_execs_and_background_processes_run() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    sb.sh("echo 1 > ~/counter").await;
    assert_eq!(sb.sh("cat ~/counter").await.stdout, "1\n");
    let p = b.spawn_background(id, ExecRequest::shell("echo started; sleep 300")).await.unwrap();
    assert!(p.running && p.pid > 1);
    let list = b.list_processes(id).await.unwrap();
    assert!(list.iter().any(|q| q.pid == p.pid && q.running));
    let log = p.output_path.clone().unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        seen = String::from_utf8_lossy(&b.read_file(id, &log).await.unwrap_or_default()).into_owned();
        if seen.contains("started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "started\n");
    b.kill_process(id, p.pid, 15).await.unwrap();
    let mut ended = None;
    for _ in 0..100 {
        ended = b.list_processes(id).await.unwrap().into_iter().find(|q| q.pid == p.pid && !q.running);
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ended.and_then(|q| q.exit_code), Some(128 + 15));
    assert!(b.kill_process(id, 99_999, 9).await.is_err());
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_cwd_env_and_streaming() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + u8::try_from(i % 26).unwrap()).collect();
    let out = sb.run(ExecRequest { stdin: Some(big.clone()), ..ExecRequest::argv(["sha256sum"]) }).await;
    let mut host = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut host.stdin.take().unwrap(), &big).unwrap();
    let want = String::from_utf8(host.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out.stdout, want, "all 300 kB of stdin arrive intact");
    sb.sh("mkdir -p /tmp/w").await;
    let out = sb.run(ExecRequest { cwd: Some("/tmp/w".into()), ..ExecRequest::argv(["pwd"]) }).await;
    assert_eq!(out.stdout, "/tmp/w\n");
    let out = sb.run(ExecRequest { cwd: Some("/nonexistent".into()), ..ExecRequest::argv(["pwd"]) }).await;
    assert_eq!(out.exit_code, 127);
    assert!(out.stderr.contains("/nonexistent"), "{}", out.stderr);
    let out = sb.run(ExecRequest::argv(["no-such-program"])).await;
    assert_eq!(out.exit_code, 127);
    assert!(out.stderr.contains("command not found"));
    let mut stream = b.exec(id, ExecRequest::shell("echo one; sleep 0.3; echo two >&2; exit 7")).await.unwrap();
    let mut events = Vec::new();
    while let Some(e) = stream.next().await {
        events.push(e);
    }
    assert_eq!(events[0], ExecEvent::Stdout(b"one\n".to_vec()), "output streams before the exit");
    assert_eq!(events[1], ExecEvent::Stderr(b"two\n".to_vec()));
    assert!(matches!(events[2], ExecEvent::Exit(s) if s.exit_code == 7));
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_code_in_each_language() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    for (lang, code, want) in [
        (Language::Python, "import sys; print(sum(range(10)), sys.version_info.major)", "45 3\n"),
        (Language::Javascript, "console.log([1,2,3].map(x => x * 2).join(','))", "2,4,6\n"),
        (Language::Bash, "x=4; echo $((x * x))", "16\n"),
    ] {
        let out = b.run_code(id, CodeRequest::new(lang, code)).await.unwrap().collect(1 << 16).await;
        assert_eq!((out.exit_code, out.stdout.as_str()), (0, want), "{lang:?}: {}", out.stderr);
    }
    let big = format!("x = 0\n{}print(x)\n", "x += 1\n".repeat(20_000));
    let out = b.run_code(id, CodeRequest::new(Language::Python, big)).await.unwrap().collect(1 << 16).await;
    assert_eq!(out.stdout, "20000\n");
    let out = b
        .run_code(id, CodeRequest::new(Language::Python, "raise ValueError('boom')"))
        .await
        .unwrap()
        .collect(1 << 16)
        .await;
    assert_eq!(out.exit_code, 1);
    assert!(out.stderr.contains("ValueError: boom"));
    // TypeScript is compiled on the host, so it runs on any Node.js: types, an interface, an enum, a
    // class with a parameter property, generics and `as`.
    let ts = "interface Pair { a: number; b: number }\nenum Op { Mul = 'mul' }\n\
              class Calc { constructor(private readonly op: Op) {}\n  run<T extends Pair>(p: T): number { return this.op === Op.Mul ? p.a * p.b : 0; } }\n\
              console.log(new Calc(Op.Mul).run({ a: 2, b: 21 } as Pair));";
    let out = b.run_code(id, CodeRequest::new(Language::Typescript, ts)).await.unwrap().collect(1 << 16).await;
    assert_eq!((out.exit_code, out.stdout.as_str(), out.stderr.as_str()), (0, "42\n", ""), "{out:?}");
    // An ES module (it imports) runs as one; code that does not compile fails with the compiler's reason.
    let module = "import { platform } from 'node:os';\nconst p: string = platform();\nconsole.log(p);";
    let out = b.run_code(id, CodeRequest::new(Language::Typescript, module)).await.unwrap().collect(1 << 16).await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "linux\n"), "{out:?}");
    let bad = CodeRequest::new(Language::Typescript, "const x: = 1;");
    let out = b.run_code(id, bad).await.unwrap().collect(1 << 16).await;
    assert_eq!(out.exit_code, 1, "{out:?}");
    assert!(out.stderr.starts_with("SyntaxError: the TypeScript code does not compile: "), "{out:?}");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_come_from_the_kernel() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    assert!(b.health(id).await.unwrap().healthy);
    b.metrics(id).await.unwrap();
    let out = sb.sh("python3 -c 'x = bytearray(40 << 20); import time; t = time.time()\nwhile time.time() - t < 0.3: pass'; head -c 3000000 /dev/urandom > ~/blob; sync; echo done").await;
    assert_eq!(out.stdout, "done\n", "{out:?}");
    assert!(b.health(id).await.unwrap().healthy);
    let m = b.metrics(id).await.unwrap();
    assert!(m.cpu_time_seconds > 0.1, "{m:?}");
    assert!(m.memory_peak_mb >= 40.0, "{m:?}");
    assert!(m.memory_used_mb > 0.0, "{m:?}");
    assert!(m.disk_used_gb > 0.002 && m.disk_used_gb < 0.01, "{m:?}");
    assert!(m.cpu_usage_percent > 0.0, "{m:?}");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_stream_nobody_reads_does_not_make_the_sandbox_unhealthy() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    // Output far beyond what the channels between the agent and the stream hold, and nobody reads it: the
    // agent's answers queue behind it, which is the client's doing, not the sandbox's fault (a health
    // check that failed here would, three times over, have the manager replace the sandbox).
    let unread = b.exec(id, ExecRequest::shell("yes agentbox")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = b.health(id).await.unwrap();
    assert!(health.healthy, "{health:?}");
    // Once the stream is dropped, the rest flows again.
    drop(unread);
    let out = tokio::time::timeout(Duration::from_secs(30), sb.sh("echo ok")).await.unwrap();
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    let health = b.health(id).await.unwrap();
    assert!(health.healthy && health.message.is_none(), "{health:?}");
    sb.destroy().await;
}

/// Helper process for the crash test: creates a sandbox, prints its id, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_helper() {
    if common::not_root() {
        return;
    }
    let Ok(state) = std::env::var("AGENTBOX_TEST_CRASH_STATE") else { return };
    let b = LocalBackend::new(LocalConfig { state_dir: state.into(), ..LocalConfig::default() }).unwrap();
    let info = b.create(CreateRequest::default()).await.unwrap();
    b.spawn_background(&info.id, ExecRequest::shell("sleep 1000")).await.unwrap();
    println!(
        "SANDBOX {} {}",
        info.id,
        b.host_pids(&info.id).unwrap().iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_die_with_their_host_and_orphans_are_reaped() {
    if common::not_root() {
        return;
    }
    let state = tempdir("crash");
    let config = LocalConfig { state_dir: state.clone(), ..LocalConfig::default() };
    // The next start reaps what is left: the state directory and the cgroups, and only ours.
    let (id, layer) = crashed_sandbox(&config).await;
    let b = LocalBackend::new(config.clone()).unwrap();
    assert_eq!(LocalBackend::host_cgroups(&config, &id), Vec::<std::path::PathBuf>::new(), "orphan cgroups not reaped");
    assert!(!layer.exists(), "the orphan's storage layer was not reaped");
    assert!(b.reap_orphans().is_empty(), "reaping is complete on the first pass");
    drop(b);
    // A one-shot process's backend reaps when it is dropped instead.
    let (id, layer) = crashed_sandbox(&config).await;
    let at_close = LocalConfig { host_process: agentbox_local::HostProcess::OneShot, ..config.clone() };
    let b = LocalBackend::new(at_close).unwrap();
    assert!(!LocalBackend::host_cgroups(&config, &id).is_empty(), "reaped at open");
    drop(b);
    assert_eq!(LocalBackend::host_cgroups(&config, &id), Vec::<std::path::PathBuf>::new(), "not reaped at close");
    assert!(!layer.exists(), "the orphan's storage layer was not reaped at close");
    forget_state_dir(config);
}

/// Removes a test's state directory and its empty cgroup parent, which a one-shot backend leaves for the next
/// process of the same state directory (a long-running backend's drop removes it).
fn forget_state_dir(config: LocalConfig) {
    let state = config.state_dir.clone();
    drop(LocalBackend::new(LocalConfig { host_process: agentbox_local::HostProcess::LongRunning, ..config }).unwrap());
    let _ = std::fs::remove_dir_all(&state);
}

/// A sandbox of a process that was killed (`crash_helper`): its id and storage layer, once its processes are gone.
async fn crashed_sandbox(config: &LocalConfig) -> (String, std::path::PathBuf) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_helper", "--nocapture", "--test-threads", "1"])
        .env("AGENTBOX_TEST_CRASH_STATE", &config.state_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    // The harness may print "test crash_helper ... " on the same line first.
    while !line.contains("SANDBOX ") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the helper exited before creating a sandbox");
    }
    let mut parts = line[line.find("SANDBOX ").unwrap_or(0)..].split_whitespace().skip(1);
    let id = parts.next().unwrap().to_owned();
    let pids: Vec<i32> = parts.next().unwrap().split(',').map(|p| p.parse().unwrap()).collect();
    assert!(!LocalBackend::host_cgroups(config, &id).is_empty(), "the helper's sandbox has cgroups");
    let layer = std::path::Path::new("/var/lib/agentbox/storage/pool/layers").join(&id);
    assert!(layer.exists(), "the helper's sandbox has a storage layer");
    // Simulate a crash of the host process.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut alive = pids.len();
    for _ in 0..200 {
        alive = pids
            .iter()
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z ")))
            .count();
        if alive == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive, 0, "sandbox processes outlived their host");
    (id, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_inside_the_sandbox_is_reachable_through_open_port() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    b.spawn_background(
        id,
        ExecRequest::shell("cd /tmp && echo served > index.html && exec python3 -m http.server 8000 --bind 127.0.0.1"),
    )
    .await
    .unwrap();
    let url = b.open_port(id, 8000).await.unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(b.open_port(id, 8000).await.unwrap(), url, "one forward per port");
    let addr = url.trim_start_matches("http://").to_owned();
    let mut body = String::new();
    for _ in 0..100 {
        let a = addr.clone();
        body = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(&a) else { return String::new() };
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .await
        .unwrap();
        if body.contains("served") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.starts_with("HTTP/1.0 200") && body.ends_with("served\n"), "{body}");
    sb.destroy().await;
    assert!(std::net::TcpStream::connect(&addr).is_err(), "the forward closes with the sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_planted_at_a_background_log_path_does_not_hang_the_sandbox() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    // Every log path the next requests could use is a FIFO with no reader.
    let out = sb.sh("for i in $(seq 1 64); do mkfifo /tmp/agentbox-bg-$i.log; done; echo planted").await;
    assert_eq!(out.stdout, "planted\n", "{out:?}");
    let started =
        tokio::time::timeout(Duration::from_secs(10), b.spawn_background(id, ExecRequest::shell("echo hi"))).await;
    assert!(started.is_ok(), "starting a background process hung on the FIFO");
    let answer = tokio::time::timeout(Duration::from_secs(10), sb.sh("echo still answering")).await;
    assert_eq!(answer.expect("the sandbox stopped answering").stdout, "still answering\n");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_program_that_does_not_exist_is_listed_as_exited_127() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    // Odd bytes in the name too (an API fuzzer's start command once made the host refuse the agent's reply).
    let argv = vec!["no-such-program-\u{1}\u{16}\u{b3fc2}".to_owned(), "x".to_owned()];
    let started = b.spawn_background(id, ExecRequest::argv(argv.clone())).await.unwrap();
    assert!(!started.running && started.exit_code == Some(127), "{started:?}");
    let listed = b.list_processes(id).await.unwrap();
    assert!(listed.iter().any(|p| p.argv == argv && p.exit_code == Some(127) && !p.running), "{listed:?}");
    // The sandbox goes on.
    let out = b.exec(id, ExecRequest::shell("echo fine")).await.unwrap().collect(1 << 10).await;
    assert_eq!(out.stdout, "fine\n");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_background_starts_each_get_their_own_log() {
    if common::not_root() {
        return;
    }
    const N: usize = 32;
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    // Each start on its own task, so that they really run at the same time on both workers.
    let starts = (0..N).map(|i| {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.spawn_background(&id, ExecRequest::shell(format!("echo token-{i}"))).await })
    });
    let started: Vec<_> =
        futures_util::future::join_all(starts).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let mut paths: Vec<String> = started.iter().map(|p| p.output_path.clone().unwrap()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), N, "two background processes share a log: {started:?}");
    // Every one has exited before its log is read.
    for _ in 0..500 {
        let list = b.list_processes(id).await.unwrap();
        if started.iter().all(|p| list.iter().any(|q| q.pid == p.pid && !q.running)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, p) in started.iter().enumerate() {
        let log = b.read_file(id, p.output_path.as_deref().unwrap()).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&log), format!("token-{i}\n"));
    }
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_not_named_user_gets_their_own_home_everywhere() {
    let mut config = agentbox_config::SandboxConfig::default();
    config.security.run_as = agentbox_config::RunAs { name: "alice".into(), uid: 1001, gid: 1001 };
    config.storage.quotas.push(agentbox_config::DirectoryQuota { path: "/home/alice/small".into(), size_mb: 4 });
    let sb = Sandbox::with(config).await;
    let out =
        sb.sh("echo $HOME $USER $(id -un) $(pwd); echo hi > notes.txt; df --output=size -m small | tail -1").await;
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fields[..4], ["/home/alice", "alice", "alice", "/home/alice"], "{out:?}");
    assert_eq!(fields[4], "4", "the quota is mounted in alice's home: {out:?}");
    // The host-side file API and a relative cwd resolve against the same home.
    assert_eq!(sb.backend.read_file(&sb.id, "/home/alice/notes.txt").await.unwrap(), b"hi\n");
    let out = sb.run(ExecRequest { cwd: Some("small".into()), ..ExecRequest::shell("pwd") }).await;
    assert_eq!(out.stdout, "/home/alice/small\n");
    assert!(sb.backend.metrics(&sb.id).await.is_ok());
    sb.destroy().await;
}

/// A one-shot process's backend clones its first init while it opens: the first new sandbox runs on it, in a user
/// namespace on the range claimed for it; one left untaken is ended when the backend drops, and its range released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_backend_starts_its_first_sandbox_on_the_init_cloned_at_open() {
    if common::not_root() {
        return;
    }
    let state = tempdir("spare");
    // Ranges of their own, above the default ones, so no other test's sandbox is handed the same ids.
    let ids = agentbox_storage::IdRangesConfig { first: 0x7000_0000, ranges: 16, dir: state.join("ids") };
    let config = LocalConfig {
        state_dir: state.clone(),
        id_ranges: Some(ids.clone()),
        host_process: agentbox_local::HostProcess::OneShot,
        ..LocalConfig::default()
    };
    let claims = || agentbox_storage::IdRanges::open(ids.clone()).unwrap().claims();

    let b = LocalBackend::new(config.clone()).unwrap();
    assert_eq!(claims().len(), 1, "the spare init's range is claimed at open");
    let info = b.create(CreateRequest::default()).await.unwrap();
    assert_eq!(claims().len(), 1, "the sandbox took the spare's range rather than claiming another");
    let out = b
        .exec(
            &info.id,
            ExecRequest::shell("id -u; touch ~/f && stat -c %u ~/f; grep CapBnd /proc/self/status | cut -f2"),
        )
        .await
        .unwrap()
        .collect(1 << 16)
        .await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "1000\n1000\n0000000000000000\n"), "{out:?}");
    let init = b.host_pids(&info.id).unwrap()[0];
    let map = std::fs::read_to_string(format!("/proc/{init}/uid_map")).unwrap();
    let (range, _) = claims().remove(0);
    assert_eq!(map.split_whitespace().nth(1), Some(range.first.to_string().as_str()), "{map}");
    // A second sandbox of the same process clones its own.
    let second = b.create(CreateRequest::default()).await.unwrap();
    let out = b.exec(&second.id, ExecRequest::shell("id -u")).await.unwrap().collect(1 << 16).await;
    assert_eq!(out.stdout, "1000\n");
    assert_eq!(claims().len(), 2);
    b.destroy(&second.id).await.unwrap();
    b.destroy(&info.id).await.unwrap();
    drop(b);
    assert_eq!(claims(), Vec::new(), "every range is released");

    // Dropped without a create: the spare init is ended and its range released.
    let b = LocalBackend::new(config.clone()).unwrap();
    assert_eq!(claims().len(), 1);
    drop(b);
    assert_eq!(claims(), Vec::new(), "the untaken spare's range is released");

    // The spare drops the capabilities of the default settings as soon as it is cloned: a first sandbox whose
    // root keeps some clones its own init, and its root has them.
    let b = LocalBackend::new(config.clone()).unwrap();
    let mut root_inside = SandboxConfig::default();
    root_inside.security.allow_root_inside = true;
    let info = b.create(CreateRequest::new(root_inside)).await.unwrap();
    assert_eq!(claims().len(), 2, "the spare stays untaken");
    let req =
        ExecRequest { user: Some("root".into()), ..ExecRequest::shell("grep CapBnd /proc/self/status | cut -f2") };
    let out = b.exec(&info.id, req).await.unwrap().collect(1 << 16).await;
    let kept = u64::from_str_radix(out.stdout.trim(), 16).unwrap_or(0);
    assert_ne!(kept, 0, "root inside lost its capabilities: {out:?}");
    b.destroy(&info.id).await.unwrap();
    drop(b);
    assert_eq!(claims(), Vec::new(), "every range is released");
    forget_state_dir(config);
}

/// `create_and_exec` starts the command with the sandbox (sent behind the setup message where it can be): its
/// output and code come as an `exec`'s would, the sandbox serves the next executions as usual, and it falls back to
/// a plain `exec` where the command must wait for the ready sandbox (networking on: the proxy's variables and trust
/// bundle; input to send). A request the sandbox could never run fails the call and leaves no sandbox behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_exec_starts_the_first_command_with_the_sandbox() {
    if common::not_root() {
        return;
    }
    let b = LocalBackend::new(LocalConfig::default()).unwrap();
    let sh = |script: &str| ExecRequest::shell(script);
    let cases = [
        (
            SandboxConfig::default(),
            sh("echo \"$HOME\" $(id -u); pwd; echo oops >&2; exit 3"),
            "/home/user 1000\n/home/user\n",
            3,
        ),
        (
            SandboxConfig {
                network: NetworkConfig { enabled: true, ..NetworkConfig::default() },
                ..SandboxConfig::default()
            },
            sh("test -n \"$HTTP_PROXY\" && test -s \"$SSL_CERT_FILE\" && echo proxied"),
            "proxied\n",
            0,
        ),
        (SandboxConfig::default(), ExecRequest { stdin: Some(b"typed".to_vec()), ..sh("cat") }, "typed", 0),
    ];
    for (config, first, want, code) in cases {
        let (info, stream) = b.create_and_exec(CreateRequest::new(config), first).await.unwrap();
        let out = stream.collect(1 << 16).await;
        assert_eq!((out.stdout.as_str(), out.exit_code), (want, code), "{out:?}");
        let next = b.exec(&info.id, sh("echo next")).await.unwrap().collect(1 << 16).await;
        assert_eq!(next.stdout, "next\n");
        b.destroy(&info.id).await.unwrap();
    }
    let before = b.list().await.unwrap().len();
    let huge = ExecRequest::argv(["echo".to_owned(), "x".repeat(3 << 20)]);
    let err = b.create_and_exec(CreateRequest::default(), huge).await.unwrap_err();
    assert!(err.to_string().contains("arguments"), "{err}");
    assert_eq!(b.list().await.unwrap().len(), before, "a refused first command leaves no sandbox");
}
