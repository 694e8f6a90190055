//! The client verbs (`create`, `exec`, `cp`, `ls`, `inspect`, `stats`, `pause`, `resume`, `stop`, `start`, `snapshot`, `restore`,
//! `volume`, `rm`) through the real binary, against a real server on loopback (`agentbox serve`, which is
//! agentboxd) with the local backend.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::server::Server;
use common::tmux::{pane_until, tmux};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn not_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1) != 0
}

#[test]
fn every_client_verb_works_against_a_real_server() {
    if not_root() {
        return;
    }
    let s = Server::start("verbs");
    let o = s.agentbox(&["create", "cli-a", "--memory-mb", "256", "--env", "MODE=test"]);
    assert_eq!(out(&o), "cli-a\n", "{}", text(&o));
    let o = s.agentbox(&["create", "--json"]);
    let created: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fresh = created["run_id"].as_str().unwrap().to_owned();
    assert!(fresh.starts_with("run-"), "{created}");

    // exec streams both outputs and exits with the command's code.
    let o = s.agentbox(&["exec", "cli-a", "--", "bash", "-c", "echo out $MODE; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(out(&o), "out test\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    let o = s.agentbox(&["exec", "cli-a", "--json", "--workdir", "/tmp", "--", "pwd"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["exit_code"].as_i64(), v["stdout"].as_str()), (Some(0), Some("/tmp\n")), "{v}");

    // cp: a file and a directory tree in, and back out.
    let local = s.data.join("local");
    std::fs::create_dir_all(local.join("tree/sub")).unwrap();
    std::fs::write(local.join("one.txt"), "one\n").unwrap();
    std::fs::write(local.join("tree/a"), "a\n").unwrap();
    std::fs::write(local.join("tree/sub/b"), vec![7u8; 300_000]).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    assert!(s.agentbox(&["cp", &path(&local.join("one.txt")), "cli-a:/home/user/"]).status.success());
    let o = s.agentbox(&["cp", &path(&local.join("tree")), "cli-a:proj"]);
    assert!(o.status.success(), "{}", text(&o));
    let o =
        s.agentbox(&["exec", "cli-a", "--", "bash", "-c", "cat one.txt; find proj -type f | sort; wc -c < proj/sub/b"]);
    assert_eq!(out(&o), "one\nproj/a\nproj/sub/b\n300000\n", "{}", text(&o));
    let back = local.join("back");
    let o = s.agentbox(&["cp", "cli-a:proj", &path(&back)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(back.join("sub/b")).unwrap(), vec![7u8; 300_000]);
    assert_eq!(std::fs::read_to_string(back.join("a")).unwrap(), "a\n");
    let o = s.agentbox(&["cp", "cli-a:/home/user/one.txt", &path(&local)]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.agentbox(&["cp", "cli-a:/home/user/missing", &path(&local)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // ls, inspect, stats.
    let o = s.agentbox(&["ls"]);
    assert!(out(&o).lines().any(|l| l.starts_with("cli-a ") && l.contains("running")), "{}", text(&o));
    let o = s.agentbox(&["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let o = s.agentbox(&["inspect", "cli-a"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"]["memory_mb"], 256);
    let o = s.agentbox(&["stats", "cli-a", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["cli-a"]["execution_count"].as_u64().unwrap() >= 3, "{v}");

    // pause and resume: a paused sandbox refuses executions with a clear message.
    assert_eq!(out(&s.agentbox(&["pause", "cli-a"])), "cli-a paused\n");
    let o = s.agentbox(&["exec", "cli-a", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("is paused: resume it first"), "{}", text(&o));
    assert_eq!(out(&s.agentbox(&["resume", "cli-a"])), "cli-a running\n");

    // snapshot and fork.
    let o = s.agentbox(&["snapshot", "cli-a", &format!("cli-snap-{}", std::process::id())]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.agentbox(&["create", "cli-fork", "--from-snapshot", &format!("cli-snap-{}", std::process::id())]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(out(&s.agentbox(&["exec", "cli-fork", "--", "cat", "one.txt"])), "one\n");
    // restore: the fork's files go back to the snapshot.
    s.agentbox(&["exec", "cli-fork", "--", "sh", "-c", "echo changed > one.txt"]);
    let o = s.agentbox(&["restore", "cli-fork", &format!("cli-snap-{}", std::process::id())]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(out(&s.agentbox(&["exec", "cli-fork", "--", "cat", "one.txt"])), "one\n");

    // stop and start: the processes end, the files stay, and a fresh sandbox boots on them.
    assert_eq!(out(&s.agentbox(&["stop", "cli-fork"])), "cli-fork stopped\n");
    let o = s.agentbox(&["exec", "cli-fork", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("is stopped; start it first"), "{}", text(&o));
    assert!(out(&s.agentbox(&["ls"])).lines().any(|l| l.contains("cli-fork") && l.contains("stopped")));
    assert_eq!(out(&s.agentbox(&["start", "cli-fork"])), "cli-fork running\n");
    assert_eq!(out(&s.agentbox(&["exec", "cli-fork", "--", "cat", "one.txt"])), "one\n");

    // exec -d starts a background command; logs prints its output.
    let o = s.agentbox(&["exec", "-d", "cli-fork", "--", "sh", "-c", "echo from the background; echo 'quoted words'"]);
    assert!(o.status.success(), "{}", text(&o));
    let pid = out(&o).split_whitespace().next().unwrap().to_owned();
    let mut logged = String::new();
    for _ in 0..50 {
        logged = out(&s.agentbox(&["logs", "cli-fork", &pid]));
        if logged.contains("quoted words") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(logged, "from the background\nquoted words\n");
    assert!(out(&s.agentbox(&["logs", "cli-fork"])).contains(&format!("==> pid {pid} (")));
    let o = s.agentbox(&["logs", "cli-fork", "999999"]);
    assert!(!o.status.success() && text(&o).contains("no background process 999999"), "{}", text(&o));

    // Root inside: only in a sandbox created allowing it, and only of that sandbox.
    let o = s.agentbox(&["exec", "-u", "root", "cli-fork", "--", "id", "-u"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("allow_root_inside"), "{}", text(&o));
    assert!(s.agentbox(&["create", "cli-root", "--allow-root"]).status.success());
    assert_eq!(out(&s.agentbox(&["exec", "-u", "root", "cli-root", "--", "id", "-u"])), "0\n");
    assert_eq!(out(&s.agentbox(&["exec", "cli-root", "--", "id", "-u"])), "1000\n");
    assert!(s.agentbox(&["rm", "cli-root"]).status.success());

    // A start process: it runs when the sandbox starts, as a background process `logs` shows.
    let o = s.agentbox(&["create", "cli-start", "--start", "echo started-$((40 + 2)); exec sleep 300"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.agentbox(&[
        "exec",
        "cli-start",
        "--",
        "sh",
        "-c",
        "for i in $(seq 100); do pgrep -x sleep >/dev/null && exit 0; sleep 0.1; done; exit 1",
    ]);
    assert!(o.status.success(), "the start process is not running: {}", text(&o));
    assert!(out(&s.agentbox(&["logs", "cli-start"])).contains("started-42"));
    let o = s.agentbox(&["create", "cli-start-image", "--start", "image"]);
    assert!(!o.status.success() && text(&o).contains("needs an `image`"), "{}", text(&o));
    assert!(s.agentbox(&["rm", "cli-start"]).status.success());

    // volumes: made, mounted by a sandbox that writes to it, kept after it, seen read-only by the next.
    let vol = format!("cli-vol-{}", std::process::id());
    assert_eq!(out(&s.agentbox(&["volume", "create", &vol, "--size-gb", "1"])), format!("{vol}\n"));
    let o = s.agentbox(&["create", "cli-v1", "--volume", &format!("{vol}:/data")]);
    assert!(o.status.success(), "{}", text(&o));
    s.agentbox(&["exec", "cli-v1", "--", "sh", "-c", "echo shared > /data/f"]);
    let o = s.agentbox(&["volume", "rm", &vol]);
    assert!(!o.status.success() && text(&o).contains("mounted by 1 sandbox"), "{}", text(&o));
    assert!(s.agentbox(&["rm", "cli-v1"]).status.success());
    let o = s.agentbox(&["create", "cli-v2", "--volume", &format!("{vol}:/home/user/w:ro")]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(out(&s.agentbox(&["exec", "cli-v2", "--", "cat", "w/f"])), "shared\n");
    let o = s.agentbox(&["exec", "cli-v2", "--", "touch", "w/g"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(out(&s.agentbox(&["volume", "ls"])).contains(&vol));
    assert!(s.agentbox(&["rm", "cli-v2"]).status.success());
    assert_eq!(out(&s.agentbox(&["volume", "rm", &vol])), format!("deleted {vol}\n"));

    // rm: each id is tried; an unknown one is reported and fails the command.
    let o = s.agentbox(&["rm", "cli-a", "cli-fork", &fresh, "no-such-run"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out(&o), format!("cli-a\ncli-fork\n{fresh}\n"));
    assert!(text(&o).contains("no-such-run: run no-such-run not found"), "{}", text(&o));
    assert!(text(&o).contains("1 of 4 run ids failed"), "{}", text(&o));
    assert_eq!(out(&s.agentbox(&["ls", "--json"])).trim(), "[]");
    let o = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["snapshots", "delete", &format!("cli-snap-{}", std::process::id())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn errors_say_what_to_do() {
    // Nothing listens on this port: the message names the server and how to start it.
    let o = Command::new(env!("CARGO_BIN_EXE_agentbox")).args(["ls", "--url", "http://127.0.0.1:9"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach agentboxd at http://127.0.0.1:9") && err.contains("start it with `agentboxd`"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_agentbox")).args(["ls", "--url", "ftp://x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("must start with http:// or https://"));
    let o = Command::new(env!("CARGO_BIN_EXE_agentbox")).args(["cp", "a", "b"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("one side of `agentbox cp` must be in a sandbox"));
    if not_root() {
        return;
    }
    let s = Server::start("errors");
    let o = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["ls", "--url", &s.url])
        .env("AGENTBOX_API_TOKEN", "wrong-token-0123456789")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("agentboxd refused the API token"), "{}", text(&o));
    let o = s.agentbox(&["exec", "no-such-run", "--", "true"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("run no-such-run not found"), "{}", text(&o));
}

#[test]
fn an_interactive_shell_on_a_real_terminal() {
    if not_root() {
        return;
    }
    let s = Server::start("shell");
    assert!(s.agentbox(&["create", "cli-tty"]).status.success());
    let socket = format!("agentbox-test-{}", std::process::id());
    let line = format!(
        "S=$(stty -g); AGENTBOX_URL={} AGENTBOX_API_TOKEN={} {} shell cli-tty; echo EXITED=$?; \
         [ \"$(stty -g)\" = \"$S\" ] && echo RESTORED; sleep 60",
        s.url,
        s.token,
        env!("CARGO_BIN_EXE_agentbox")
    );
    tmux(&socket, &["new-session", "-d", "-s", "s", "-x", "100", "-y", "30", &line]);
    let keys = |k: &[&str]| {
        let mut args = vec!["send-keys", "-t", "s"];
        args.extend_from_slice(k);
        tmux(&socket, &args);
    };
    pane_until(&socket, "user@sandbox:~$");
    keys(&["stty size; tty", "Enter"]);
    pane_until(&socket, "30 100");
    pane_until(&socket, "/dev/pts/");
    // The window changes size: the shell sees it.
    tmux(&socket, &["resize-window", "-t", "s", "-x", "120", "-y", "40"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    keys(&["stty size", "Enter"]);
    pane_until(&socket, "40 120");
    // Ctrl-C interrupts the foreground program, not the session.
    keys(&["sleep 60; echo not-$((0 + 1))-interrupted", "Enter"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    keys(&["C-c"]);
    keys(&["echo after-$((40 + 2))", "Enter"]);
    let pane = pane_until(&socket, "after-42");
    assert!(!pane.contains("not-1-interrupted"), "{pane}");
    // Exiting ends the command with the shell's code and gives the terminal back as it was.
    keys(&["exit 5", "Enter"]);
    let pane = pane_until(&socket, "RESTORED");
    assert!(pane.contains("EXITED=5"), "{pane}");
    tmux(&socket, &["kill-server"]);
    let o = s.agentbox(&["rm", "cli-tty"]);
    assert!(o.status.success(), "{}", text(&o));

    // Without a terminal, -it says what to do instead.
    let o = s.agentbox(&["exec", "-it", "cli-tty", "--", "bash"]);
    assert!(text(&o).contains("needs stdin to be a terminal"), "{}", text(&o));
}
