//! Host-side file access against whatever a sandbox plants, with the server run as in production: its own
//! process, a session leader with no controlling terminal (`setsid`), started through the same path as
//! `agentboxd` (`cli::run`), on the local backend.
//!
//! Sandbox A plants a pty slave (and links to it), `/dev/ptmx`, FIFOs with and without a writer, a Unix socket,
//! links to device nodes, a symlink swapped between a regular file and the pty in a loop, a 10 GiB sparse file and
//! a growing file; it writes `^C` to the pty master all along and closes it at the end (a hang-up). The host
//! reads, writes, lists, stats, removes and downloads each through REST and through the tools. Every operation
//! answers (no hang) with success or a client error; after each the server still has no controlling terminal
//! (`tty_nr == 0`) and answers `/health`; its peak memory stays within a fixed budget; sandbox B still works.
//!
//! The server process is this test binary run again with `AGENTBOX_HOSTILE_FILES_DIR` set
//! ([`hostile_files_server_process`]).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use agentbox_server::{Limits, ServerConfig, ShutdownPolicy};
use common::child::ChildServer;
use serde_json::{Value, json};

const CHILD_ENV: &str = "AGENTBOX_HOSTILE_FILES_DIR";
const TOKEN: &str = "hostile-files-token-0123456789";
/// Memory the server may gain over its peak before the attacks while serving them.
const MEMORY_BUDGET: u64 = 64 << 20;

/// Not a test of its own: the server process of [`hostile_paths_cannot_reach_the_server`], started as
/// `agentboxd` starts (terminal signals watched, then `Server::start`), serving until SIGTERM.
#[test]
fn hostile_files_server_process() {
    // The hostile loops send a few hundred requests as fast as the server answers; the token's rate limit is not
    // what this test is about.
    let limits = Limits { rate_limit_per_second: 10_000, rate_limit_burst: 10_000, ..Limits::default() };
    let config = ServerConfig { on_shutdown: ShutdownPolicy::Destroy, limits, ..ServerConfig::default() };
    common::child::run_server_process(CHILD_ENV, TOKEN, config, || {
        agentbox_server::signals::watch_terminal_signals().unwrap();
    });
}

/// The server process: a session leader without a controlling terminal, as under systemd or a container init.
fn start_server(dir: &Path) -> ChildServer {
    ChildServer::start("hostile_files_server_process", CHILD_ENV, dir, || {
        // SAFETY: setsid is async-signal-safe.
        if unsafe { libc::setsid() } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

/// `tty_nr` of a process (field 7 of /proc/PID/stat): 0 when it has no controlling terminal.
fn tty_nr(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(4).unwrap().parse().unwrap()
}

/// Resident and peak resident memory of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:") * 1024, kb("VmHWM:") * 1024)
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create(&self, run: &str) {
        let r = self
            .http
            .post(self.url("/api/sandboxes/create"))
            .bearer_auth(TOKEN)
            .json(&json!({ "run_id": run, "memory_mb": 1024 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    async fn sh(&self, run: &str, command: &str) -> Value {
        let r = self
            .http
            .post(self.url(&format!("/api/sandboxes/{run}/execute/command")))
            .bearer_auth(TOKEN)
            .json(&json!({ "command": command }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    async fn tool(&self, run: &str, name: &str, input: Value) -> reqwest::Result<(u16, String)> {
        let r = self
            .http
            .post(self.url(&format!("/api/sandboxes/{run}/tools/{name}")))
            .bearer_auth(TOKEN)
            .json(&input)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    }

    async fn health(&self) -> bool {
        matches!(self.http.get(self.url("/health")).send().await, Ok(r) if r.status().is_success())
    }
}

/// What sandbox A runs in the background: plants everything, then writes ^C to the pty master and swaps a link
/// between a regular file and the pty until told to stop (or 150 s pass), then closes the master.
const PLANTER: &str = r#"
import os, socket, time
h = '/home/user'
m, slave = os.openpty()
pts = os.ttyname(slave)
os.close(slave)
os.symlink(pts, h + '/report.txt')
os.symlink('/dev/ptmx', h + '/ptmx-link')
os.symlink('/dev/null', h + '/null-link')
os.mkfifo(h + '/fifo')
os.mkfifo(h + '/fifo-writer')
keep = os.open(h + '/fifo-writer', os.O_RDWR)
s = socket.socket(socket.AF_UNIX)
s.bind(h + '/sock')
s.listen()
os.symlink(h + '/fifo', h + '/fifo-link')
os.symlink(h + '/sock', h + '/sock-link')
os.truncate(os.open(h + '/sparse', os.O_CREAT | os.O_WRONLY, 0o644), 10 << 30)
with open(h + '/ready.tmp', 'w') as f:
    f.write(pts)
os.rename(h + '/ready.tmp', h + '/ready')
end = time.time() + 150
i = 0
grow = open(h + '/growing', 'ab')
while time.time() < end and not os.path.exists(h + '/stop'):
    try:
        os.write(m, b'\x03')
    except OSError:
        pass
    tmp = h + '/.swap.tmp'
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    if i % 2:
        os.symlink(pts, tmp)
    else:
        with open(tmp, 'w') as f:
            f.write('regular\n')
    os.rename(tmp, h + '/swap')
    if os.path.getsize(h + '/growing') < (64 << 20):
        grow.write(b'g' * 65536)
        grow.flush()
    i += 1
    time.sleep(0.002)
os.close(m)
with open(h + '/closed', 'w') as f:
    f.write(str(i))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn hostile_paths_cannot_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path());
    let pid = server.pid();
    let client = Client {
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        base: format!("http://{}", server.addr),
    };
    assert_eq!(tty_nr(pid), 0, "the server started with a controlling terminal");
    client.create("hostile-a").await;
    client.create("hostile-b").await;

    // Plant everything and start the loop in the background.
    let r = client
        .http
        .put(client.url("/api/sandboxes/hostile-a/files?path=/home/user/plant.py"))
        .bearer_auth(TOKEN)
        .body(PLANTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (status, text) = client
        .tool("hostile-a", "shell", json!({ "command": "python3 /home/user/plant.py", "background": true }))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pts = loop {
        let out = client.sh("hostile-a", "cat /home/user/ready 2>/dev/null").await;
        let pts = out["stdout"].as_str().unwrap_or_default().trim().to_owned();
        if !pts.is_empty() {
            break pts;
        }
        if Instant::now() > deadline {
            let log = client.sh("hostile-a", "cat /tmp/agentbox-bg-*.log 2>&1").await;
            panic!("the planter did not get ready: {out}\n{text}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A real regular file too, for the memory budget.
    client.sh("hostile-a", "head -c 256M /dev/zero | tr '\\0' r > /home/user/real").await;

    let hostile = [
        "/home/user/report.txt".to_owned(),
        pts.clone(),
        "/dev/ptmx".into(),
        "/home/user/ptmx-link".into(),
        "/dev/null".into(),
        "/home/user/null-link".into(),
        "/home/user/fifo".into(),
        "/home/user/fifo-writer".into(),
        "/home/user/fifo-link".into(),
        "/home/user/sock".into(),
        "/home/user/sock-link".into(),
        "/home/user/swap".into(),
    ];
    let (_, peak_before) = memory(pid);
    let mut outcomes = Vec::new();
    let check = |what: String, status: u16, server: &mut ChildServer| {
        assert!(server.alive(), "the server died after {what}");
        assert_eq!(tty_nr(pid), 0, "{what} gave the server a controlling terminal");
        assert!(status < 500, "{what} answered {status}");
    };

    // Read-only operations first: download, list, stat-like listing, tools' reads.
    for path in &hostile {
        let q = format!("path={}", urlencode(path));
        let r =
            client.http.get(client.url(&format!("/api/sandboxes/hostile-a/files?{q}"))).bearer_auth(TOKEN).send().await;
        let status = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                s
            }
            Err(e) => panic!("GET {path} failed: {e}"),
        };
        check(format!("GET files {path}"), status, &mut server);
        outcomes.push(format!("GET {path}: {status}"));
        if path != "/home/user/swap" {
            assert!(status >= 400, "GET of {path} (not a regular file) answered {status}");
        }
        let r = client
            .http
            .get(client.url(&format!("/api/sandboxes/hostile-a/files/list?{q}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        check(format!("list {path}"), r.status().as_u16(), &mut server);
        for (tool, input) in [
            ("read_file", json!({ "path": path })),
            ("download_file", json!({ "path": path })),
            ("list_files", json!({ "path": path })),
            ("edit_file", json!({ "path": path, "old_text": "a", "new_text": "b" })),
        ] {
            let (status, text) = client.tool("hostile-a", tool, input).await.unwrap();
            check(format!("{tool} {path}"), status, &mut server);
            outcomes.push(format!("{tool} {path}: {status} {}", text.chars().take(120).collect::<String>()));
        }
        assert!(client.health().await, "/health failed after the operations on {path}");
    }

    // The swapped link, read many times while it flips between a regular file and the pty.
    for i in 0..200 {
        let r = client
            .http
            .get(client.url("/api/sandboxes/hostile-a/files?path=/home/user/swap"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        check(format!("GET swap #{i}"), status, &mut server);
        if status == 200 {
            // edit_file above may have reached the regular file through the link while it pointed there.
            assert!(matches!(&body[..], b"regular\n" | b"regulbr\n"), "swap read {body:?}");
        }
    }

    // The sparse file: the tools refuse it before reading; a download streams (the first 512 MiB here).
    let (status, text) = client.tool("hostile-a", "read_file", json!({ "path": "/home/user/sparse" })).await.unwrap();
    check("read_file sparse".into(), status, &mut server);
    assert!(text.contains("limit"), "{text}");
    let mut r = client
        .http
        .get(client.url("/api/sandboxes/hostile-a/files?path=/home/user/sparse"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(10 << 30));
    let mut got = 0u64;
    while got < 512 << 20 {
        let Some(chunk) = r.chunk().await.unwrap() else { break };
        assert!(chunk.iter().all(|&b| b == 0));
        got += chunk.len() as u64;
    }
    drop(r);
    assert!(got >= 512 << 20, "the sparse download ended after {got} bytes");
    // The real file, whole; the growing one, whole as it was when opened.
    for (path, min) in [("/home/user/real", 256u64 << 20), ("/home/user/growing", 0)] {
        let r = client
            .http
            .get(client.url(&format!("/api/sandboxes/hostile-a/files?path={path}")))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let declared = r.content_length().unwrap();
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len() as u64, declared, "{path}");
        assert!(declared >= min, "{path}");
        drop(body);
    }
    let (_, peak_after) = memory(pid);
    assert!(
        peak_after <= peak_before + MEMORY_BUDGET,
        "the server's peak memory grew from {peak_before} to {peak_after} bytes serving the files"
    );

    // Writes and removals last (they replace what was planted).
    for path in &hostile {
        let q = format!("path={}", urlencode(path));
        let r = client
            .http
            .put(client.url(&format!("/api/sandboxes/hostile-a/files?{q}")))
            .bearer_auth(TOKEN)
            .body("written by the host\n")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        check(format!("PUT {path}"), status, &mut server);
        outcomes.push(format!("PUT {path}: {status}"));
        for (tool, input) in
            [("write_file", json!({ "path": path, "content": "x" })), ("delete_file", json!({ "path": path }))]
        {
            let (status, text) = client.tool("hostile-a", tool, input).await.unwrap();
            check(format!("{tool} {path}"), status, &mut server);
            outcomes.push(format!("{tool} {path}: {status} {}", text.chars().take(120).collect::<String>()));
        }
    }
    // Device nodes are never replaced or removed by the host.
    let out = client.sh("hostile-a", "test -c /dev/null && test -c /dev/ptmx && echo devices-intact").await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "devices-intact", "{out}");

    // The hang-up: the planter closes the pty master.
    client.sh("hostile-a", "touch /home/user/stop").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.sh("hostile-a", "cat /home/user/closed 2>/dev/null").await["stdout"].as_str().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the planter did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.alive(), "the server died after the pty was closed");
    assert_eq!(tty_nr(pid), 0);
    assert!(client.health().await);
    let out = client.sh("hostile-b", "echo neighbour-ok").await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "neighbour-ok");
    let log = server.log_text();
    assert!(!log.contains("SIGINT received"), "the server saw a SIGINT:\n{log}");
    eprintln!("peak memory {peak_before} -> {peak_after} bytes\n{}", outcomes.join("\n"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
