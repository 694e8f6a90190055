//! The browser tool against a hostile sandbox: a program inside it impersonates Chromium's DevTools
//! endpoint, and a page floods the tool with dialogs. The host (this test process) must stay up with
//! its memory in a fixed budget, and the calls must fail cleanly.
//!
//! Everything hostile runs inside the sandbox and listens on its loopback only. Should containment
//! fail, the worst outcome is this test process aborting.
//!
//! Needs Debian's chromium (`apt-get install -y chromium`) and root for the local backend.
#![cfg(feature = "browser")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::config::Preset;
use agentbox_core::{CreateOptions, ExecRequest, ManagerConfig, RunId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::browser::{BrowserConfig, BrowserTool};
use agentbox_tools::{Tool, ToolContext, ToolError};
use serde_json::{Value, json};

/// Every call of a test is bounded by this.
const CALL_LIMIT: Duration = Duration::from_secs(90);

/// The most this test process may ever have held in memory, in KiB. A host that read what the fake
/// endpoint declares would need 1 TiB or 10 GB.
const PEAK_BUDGET_KIB: u64 = 256 * 1024;

/// A fake DevTools endpoint on 127.0.0.1:9222, in one of three modes:
/// - `frame`: `/json/version` names a WebSocket, whose upgrade is accepted, then one frame header
///   claims a 1 TiB payload;
/// - `huge`: `/json/version` declares a 10 GB body and streams zeros (at most 1 GiB, while read);
/// - `silent`: connections are accepted and never answered.
const FAKE: &str = r#"
import base64, hashlib, socket, sys, threading, time
mode = sys.argv[1]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 9222))
srv.listen(64)
held = []
def serve(c):
    if mode == 'silent':
        held.append(c)
        return
    req = b''
    while b'\r\n\r\n' not in req:
        d = c.recv(4096)
        if not d:
            return
        req += d
    head = req.decode('latin-1')
    if head.startswith('GET /json/version'):
        if mode == 'huge':
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n')
            chunk = b'0' * 65536
            try:
                for _ in range(16384):
                    c.sendall(chunk)
            except OSError:
                pass
        else:
            body = b'{"Browser":"Chrome/1","webSocketDebuggerUrl":"ws://127.0.0.1:9222/devtools/browser/fake"}'
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
        c.close()
        return
    key = [l.split(':', 1)[1].strip() for l in head.split('\r\n') if l.lower().startswith('sec-websocket-key:')][0]
    accept = base64.b64encode(hashlib.sha1((key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').encode()).digest()).decode()
    c.sendall(('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
               'Sec-WebSocket-Accept: %s\r\n\r\n' % accept).encode())
    c.sendall(bytes([0x82, 127]) + (1 << 40).to_bytes(8, 'big'))
    held.append(c)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Peak resident memory of this process, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Site {
    manager: SandboxManager,
    ctx: ToolContext,
    run: RunId,
    tool: BrowserTool,
}

impl Site {
    async fn new(name: &str, tweak: impl FnOnce(&mut BrowserConfig)) -> Self {
        let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
        let manager = SandboxManager::new(backend, ManagerConfig::default());
        let run = RunId::parse(name).unwrap();
        manager.get_or_create(&run, CreateOptions { preset: Some(Preset::Browser), config: None }).await.unwrap();
        manager.write_file(&run, "/home/user/fake.py", FAKE.as_bytes().to_vec()).await.unwrap();
        let ctx = ToolContext::new(manager.clone(), run.clone());
        let mut config = BrowserConfig {
            user_data_dir: format!("/home/user/.config/chromium-{name}"),
            launch_timeout: Duration::from_secs(6),
            cdp_timeout: Duration::from_secs(5),
            ..BrowserConfig::default()
        };
        tweak(&mut config);
        Self { manager, ctx, run, tool: BrowserTool::new(config) }
    }

    async fn try_call(&self, input: Value) -> Result<Value, ToolError> {
        tokio::time::timeout(CALL_LIMIT, self.tool.call(&self.ctx, input.clone()))
            .await
            .unwrap_or_else(|_| panic!("browser call {input} did not return within {CALL_LIMIT:?}"))
    }

    /// Starts the fake endpoint and waits until it listens; returns its pid in the sandbox.
    async fn fake(&self, mode: &str) -> u32 {
        let p = self
            .manager
            .spawn_background(&self.run, ExecRequest::argv(["python3", "/home/user/fake.py", mode]))
            .await
            .unwrap();
        let ready =
            "for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/9222) 2>/dev/null && exit 0; sleep 0.1; done; exit 1";
        let out = self.manager.exec_collect(&self.run, ExecRequest::shell(ready)).await.unwrap();
        assert_eq!(out.exit_code, 0, "the fake endpoint listens");
        p.pid
    }

    async fn stop(&self, pid: u32) {
        self.ctx.sandbox().unwrap().kill_process(pid, 9).await.unwrap();
        let gone =
            "for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/9222) 2>/dev/null || exit 0; sleep 0.1; done; exit 1";
        let out = self.manager.exec_collect(&self.run, ExecRequest::shell(gone)).await.unwrap();
        assert_eq!(out.exit_code, 0, "the fake endpoint stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_devtools_endpoint_fails_the_call_and_leaves_the_host_in_budget() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-hostile-cdp", |_| {}).await;
    for mode in ["frame", "huge", "silent"] {
        let fake = site.fake(mode).await;
        let err = site
            .try_call(json!({"action": "navigate", "url": "data:text/html,<title>x</title>"}))
            .await
            .expect_err("a browser call against a fake DevTools endpoint fails");
        let expected = match mode {
            // The driver read the 1 TiB frame header and died; the host only saw a missing reply.
            "frame" => "the browser driver inside the sandbox failed during this call",
            // The driver read 64 KiB of the body, or nothing, and gave up at the launch limit.
            _ => "its DevTools endpoint did not answer within 6 s",
        };
        assert!(err.message.contains(expected), "{mode}: {err:?}");
        let peak = peak_kib();
        assert!(peak < PEAK_BUDGET_KIB, "{mode}: the host's peak memory is {peak} KiB, over {PEAK_BUDGET_KIB} KiB");
        site.stop(fake).await;
        // With the impostor gone, the browser works again at once.
        let ok = site.try_call(json!({"action": "navigate", "url": "data:text/html,<title>Fine</title>"})).await;
        let ok = ok.unwrap_or_else(|e| panic!("{mode}: the browser works again after the impostor left: {e:?}"));
        assert_eq!(ok["title"], "Fine", "{mode}: {ok}");
        site.try_call(json!({"action": "close"})).await.unwrap();
    }
    site.manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialog_flood_keeps_the_dialog_list_capped() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-hostile-alerts", |c| c.max_events = 20).await;
    // 300 alerts in a row, then the page says it is done.
    let page = "data:text/html,<title>Flood</title><p id=s>busy</p><script>let i = 0; function f() { if (i == 300) \
                { document.getElementById('s').textContent = 'done'; return; } alert('flood ' + i++); setTimeout(f, 0); } \
                setTimeout(f, 0);</script>";
    let first = site.try_call(json!({"action": "navigate", "url": page})).await.unwrap();
    let waited = site.try_call(json!({"action": "wait_for", "text": "done", "timeout_ms": 120_000})).await.unwrap();
    let count = |v: &Value| v["dialogs"].as_array().map_or(0, Vec::len) as u64;
    let dropped = |v: &Value| v["dialogs_dropped"].as_u64().unwrap_or(0);
    assert!(count(&first) <= 20 && count(&waited) <= 20, "at most max_events dialogs are reported: {waited}");
    // A dialog answered just before the page said "done" may be reported by the next call.
    let last = site.try_call(json!({"action": "evaluate", "expression": "i"})).await.unwrap();
    assert_eq!(last["result"], 300);
    let total: u64 = [&first, &waited, &last].iter().map(|v| count(v) + dropped(v)).sum();
    assert_eq!(total, 300, "every dialog is reported or counted as dropped");
    assert!(dropped(&waited) > 0, "the result says dialogs were dropped: {waited}");
    site.manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_driver_fails_at_most_one_call_and_is_restarted() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-hostile-driver", |_| {}).await;
    // SIGKILL is delivered at once but the process takes a moment to exit and close its socket; until then a
    // connection is still accepted and then reset. "Between calls" means after it has gone, so wait for that.
    let kill_driver = "pkill -KILL -f '[a]gentbox-browser-driver' && for _ in $(seq 200); do \
                       pgrep -f '[a]gentbox-browser-driver' >/dev/null || exit 0; sleep 0.05; done; exit 1";
    let sh = |line: &'static str| {
        let manager = site.manager.clone();
        let run = site.run.clone();
        async move { manager.exec_collect(&run, ExecRequest::shell(line)).await.unwrap().exit_code }
    };
    let first = site.try_call(json!({"action": "navigate", "url": "data:text/html,<title>One</title>"})).await.unwrap();
    assert_eq!(first["browser_started"], true, "{first}");

    // Killed between calls: nothing was sent to it, so the next call restarts it and succeeds.
    assert_eq!(sh(kill_driver).await, 0, "the driver was running");
    let next = site.try_call(json!({"action": "navigate", "url": "data:text/html,<title>Two</title>"})).await.unwrap();
    assert_eq!(next["browser_restarted"], true, "{next}");
    assert!(next["notice"].as_str().unwrap().contains("driver"), "{next}");
    assert_eq!(next["title"], "Two");

    // Killed during a call: that call fails clearly, the next one restarts it.
    let slow =
        site.try_call(json!({"action": "evaluate", "expression": "new Promise(r => setTimeout(() => r(1), 8000))"}));
    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sh(kill_driver).await
    };
    let (slow, killed) = tokio::join!(slow, killer);
    assert_eq!(killed, 0, "the driver was running");
    let err = slow.expect_err("the call whose driver was killed fails");
    assert!(err.message.contains("the browser driver inside the sandbox failed during this call"), "{err:?}");
    let after =
        site.try_call(json!({"action": "navigate", "url": "data:text/html,<title>Three</title>"})).await.unwrap();
    assert_eq!(after["browser_restarted"], true, "{after}");
    assert_eq!(after["title"], "Three");
    site.manager.shutdown().await;
}
