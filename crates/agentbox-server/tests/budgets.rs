//! The server's budgets under attack: a server in its own process, started with a file descriptor
//! limit of 1024 (`ulimit -Hn 1024 -Sn 512`: the server raises the soft limit to 1024), on the local
//! backend, attacked on loopback, each attack with counts small enough to stay quick but large
//! enough to cross the budget it aims at:
//!
//! 1. descriptors: two sandboxes open more CONNECT tunnels than a sandbox's share of the proxy
//!    budget, the second while that budget is tight;
//! 2. memory: one sandbox sends never-finished 390 KB request heads to its proxy;
//! 3. metric labels: unauthenticated requests with random methods and paths;
//! 4. connection slots: one address opens idle connections far beyond its cap, then seven
//!    addresses at their cap fill the whole connection budget;
//! 5. the log: one sandbox makes thousands of refused requests.
//!
//! While each attack runs, a second sandbox's exec and egress and another address's `/health`
//! keep answering. The server's descriptors and memory are sampled throughout and printed as a
//! table (docs/BENCHMARKS.md records them); afterwards everything is given back.
//!
//! The server process is this test binary run again with `AGENTBOX_BUDGETS_SERVER_DIR` set (see
//! [`budget_server_process`]): the same start path as `agentboxd`, on the local backend.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentbox_server::{Limits, ServerConfig, ShutdownPolicy};
use common::child::ChildServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD_ENV: &str = "AGENTBOX_BUDGETS_SERVER_DIR";
const TOKEN: &str = "budgets-test-token-0123456789";
/// The hard descriptor limit the server is started with; its soft limit is half of it, which the
/// server raises to the hard one at start (`ulimit -Hn 1024 -Sn 512`).
const NOFILE: u64 = 1024;

/// Not a test of its own: the server process of [`budgets_hold_under_attack`], run when
/// `AGENTBOX_BUDGETS_SERVER_DIR` names its data directory (it writes its address to `addr` there
/// and serves until SIGTERM, destroying its sandboxes then).
#[test]
fn budget_server_process() {
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        on_shutdown: ShutdownPolicy::Destroy,
        limits: Limits { log_window: Duration::from_secs(5), ..Limits::default() },
        ..ServerConfig::default()
    };
    common::child::run_server_process(CHILD_ENV, TOKEN, config, || {});
}

/// The server process, under a soft descriptor limit of half [`NOFILE`] and a hard one of [`NOFILE`].
fn start_server(dir: &Path) -> ChildServer {
    ChildServer::start("budget_server_process", CHILD_ENV, dir, || {
        let lim = libc::rlimit { rlim_cur: NOFILE / 2, rlim_max: NOFILE };
        // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

/// Descriptors, resident memory and peak resident memory of process `pid`.
fn usage(pid: u32) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (fds, kb("VmRSS:") * 1024, kb("VmHWM:") * 1024)
}

/// Samples the server's descriptor count every few milliseconds; keeps the peak.
struct Sampler {
    peak_fds: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let peak_fds = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_fds.clone(), stop.clone());
        let task = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(usage(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { peak_fds, stop, task }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.join().unwrap();
        self.peak_fds.load(Ordering::Relaxed)
    }
}

/// A host server on loopback: answers `hello` to each complete request head, and holds connections
/// that send nothing (tunnels) until the other side closes them.
async fn hello_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
            });
        }
    });
    port
}

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

/// The test's view of the server: an authenticated client from 127.0.0.1.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn sandbox_with_egress(&self, run: &str) {
        let (status, body) =
            self.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({ "run_id": run }))).await;
        assert_eq!(status, 201, "{body}");
        let policy = json!({ "enabled": true, "allowed_cidrs": ["127.0.0.0/8"] });
        let (status, body) =
            self.call(reqwest::Method::PUT, &format!("/api/sandboxes/{run}/network"), Some(policy)).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Runs `argv` in `run`'s sandbox; returns its stdout (asserting it exited 0).
    async fn run(&self, run: &str, argv: &[&str]) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/sandboxes/{run}/execute/command"),
                Some(json!({ "argv": argv, "timeout": 300 })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["exit_code"], 0, "{body}");
        body["stdout"].as_str().unwrap().to_owned()
    }

    async fn metrics(&self) -> String {
        let (status, body) = self.call(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(status, 200);
        body.as_str().unwrap().to_owned()
    }
}

/// The value of an unlabelled (or fully labelled) series in Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series}"))
        .parse()
        .unwrap()
}

/// The value of a series that counts something (an integer).
fn count(text: &str, series: &str) -> usize {
    let v = metric(text, series);
    format!("{v}").parse().unwrap_or_else(|_| panic!("{series} is {v}, not a count"))
}

/// What the attacking sandbox runs: `python3 -c ATTACK MODE ARGS...`; prints one JSON object.
const ATTACK: &str = r#"
import json, os, socket, sys, time, http.client
mode = sys.argv[1]
PROXY = ("127.0.0.1", 3128)
if mode == "tunnels":
    n, port = int(sys.argv[2]), int(sys.argv[3])
    held, ok, refused, closed = [], 0, 0, 0
    for _ in range(n):
        s = socket.create_connection(PROXY, timeout=30)
        try:
            s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:
            head = b""
        if head.startswith(b"HTTP/1.1 200"):
            ok += 1
            held.append(s)
        else:
            if head:
                refused += 1
            else:
                closed += 1
            s.close()
    with open("/tmp/tunnels.json", "w") as f:
        json.dump({"ok": ok, "refused": refused, "closed": closed}, f)
    deadline = time.time() + 240
    while not os.path.exists("/tmp/stop") and time.time() < deadline:
        time.sleep(0.05)
    for s in held:
        s.close()
    print(json.dumps({"ok": ok, "refused": refused, "closed": closed}))
elif mode == "heads":
    n, size = int(sys.argv[2]), int(sys.argv[3])
    socks = []
    for _ in range(n):
        s = socket.create_connection(PROXY, timeout=30)
        s.setblocking(False)
        socks.append([s, b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * size, False])
    # Push every head as far as the server reads it, round-robin, never finishing one.
    deadline = time.time() + 120
    while time.time() < deadline and not all(done for _, _, done in socks):
        progress = False
        for entry in socks:
            s, data, done = entry
            if done:
                continue
            try:
                sent = s.send(data[:65536])
                if sent:
                    entry[1] = data[sent:]
                    progress = True
                if not entry[1]:
                    entry[2] = True
            except BlockingIOError:
                pass
            except OSError:
                entry[2] = True
                progress = True
        if not progress:
            time.sleep(0.05)
    # Whoever the server cut off sees an answer or the end of the stream.
    cut, answered = 0, 0
    for s, _, _ in socks:
        s.setblocking(True)
        s.settimeout(30)
        try:
            answer = s.recv(64)
            if answer.startswith(b"HTTP/1.1 431"):
                answered += 1
            if answer == b"" or answer.startswith(b"HTTP/1.1 431") or answer.startswith(b"HTTP/1.1 400"):
                cut += 1
        except OSError:
            cut += 1
        s.close()
    print(json.dumps({"sent": n, "cut": cut, "answered_431": answered}))
elif mode == "refused":
    n = int(sys.argv[2])
    refused, other, conn = 0, 0, None
    for _ in range(n):
        if conn is None:
            conn = http.client.HTTPConnection(*PROXY, timeout=30)
        try:
            conn.request("GET", "http://10.1.2.3/flood", headers={"Host": "10.1.2.3"})
            r = conn.getresponse()
            r.read()
            if r.status == 403:
                refused += 1
            else:
                other += 1
            if r.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            other += 1
            conn.close()
            conn = None
    print(json.dumps({"refused": refused, "other": other}))
"#;

/// A sandbox's exec and egress, and another address's `/health`, probed in a loop until stopped.
struct Probes {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<ProbeReport>,
}

#[derive(Debug, Default)]
struct ProbeReport {
    health_ok: usize,
    health_failed: Vec<String>,
    exec_ok: usize,
    exec_failed: Vec<String>,
    latencies: Vec<Duration>,
}

impl ProbeReport {
    fn p99(&self) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get((l.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
    }

    fn assert_all_ok(&self, phase: &str) {
        assert!(self.health_failed.is_empty(), "{phase}: /health failed: {:?}", self.health_failed);
        assert!(self.exec_failed.is_empty(), "{phase}: the other sandbox failed: {:?}", self.exec_failed);
        assert!(self.health_ok > 0 && self.exec_ok > 0, "{phase}: no probe ran: {self:?}");
    }
}

impl Probes {
    /// Probes until stopped, and at least `min_rounds` times.
    fn start(base: &str, victim: &str, hello: u16, min_rounds: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (base, victim) = (base.to_owned(), victim.to_owned());
        let task = tokio::spawn(async move {
            let other = client_from([127, 0, 0, 2]);
            let api = Api { base: base.clone(), client: client_from([127, 0, 0, 1]) };
            let mut report = ProbeReport::default();
            let curl =
                format!("curl -s -m 30 --noproxy '' -o /dev/null -w %{{http_code}} http://127.0.0.1:{hello}/probe");
            loop {
                let started = Instant::now();
                match other.get(format!("{base}/health")).send().await {
                    Ok(r) if r.status() == 200 => report.health_ok += 1,
                    Ok(r) => report.health_failed.push(format!("status {}", r.status())),
                    Err(e) => report.health_failed.push(e.to_string()),
                }
                report.latencies.push(started.elapsed());
                let (status, body) = api
                    .call(
                        reqwest::Method::POST,
                        &format!("/api/sandboxes/{victim}/execute/command"),
                        Some(json!({ "command": curl, "timeout": 60 })),
                    )
                    .await;
                if status == 200 && body["stdout"] == "200" {
                    report.exec_ok += 1;
                } else {
                    report.exec_failed.push(format!("{status} {body}"));
                }
                if s.load(Ordering::Relaxed) && report.latencies.len() >= min_rounds {
                    return report;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Polls `check` every 100 ms for up to `secs` seconds.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_under_attack() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let pid = server.pid();
    let base = format!("http://{}", server.addr);
    let api = Api { base: base.clone(), client: client_from([127, 0, 0, 1]) };
    let hello = hello_server().await;
    let mut figures: BTreeMap<&str, String> = BTreeMap::new();

    let (boot_fds, boot_rss, _) = usage(pid);
    let start_log = server.log_text();
    let budget_line =
        start_log.lines().find(|l| l.contains("file descriptor budget")).unwrap_or_else(|| panic!("{start_log}"));
    assert!(budget_line.contains("soft_before=512 soft=1024 hard=1024"), "{budget_line}");
    api.sandbox_with_egress("victim").await;
    api.sandbox_with_egress("attacker").await;
    api.sandbox_with_egress("attacker2").await;
    // Warm both sandboxes' proxies and the exec paths once.
    let out = api
        .run("victim", &["curl", "-s", "-m", "30", "--noproxy", "", &format!("http://127.0.0.1:{hello}/warm")])
        .await;
    assert_eq!(out, "hello");
    let (idle_fds, idle_rss, _) = usage(pid);
    figures.insert("0 idle (3 sandboxes)", format!("{idle_fds} fds, RSS {} MiB", idle_rss >> 20));
    let m = api.metrics().await;
    let per_sandbox = metric(&m, "agentbox_proxy_fds_per_sandbox_limit");
    let proxy_limit = metric(&m, "agentbox_proxy_fds_limit");
    assert_eq!(count(&m, "agentbox_process_max_fds"), 1024, "the server raised its soft limit to the hard one");
    let sampler = Sampler::start(pid);

    // 1. Descriptors: two sandboxes each open more tunnels than a sandbox's share. Past its share,
    // or past its fair share once the server's budget is tight, a sandbox is refused; the tunnels
    // that got in hold their slots, room is left for others, and everyone else keeps working.
    let tunnels = 400;
    // One after the other: the first meets its sandbox's share, the second the server's tight budget.
    let mut attacks = Vec::new();
    let mut opened = Vec::new();
    for run in ["attacker", "attacker2"] {
        let attack_api = Api { base: base.clone(), client: client_from([127, 0, 0, 1]) };
        let (h, n) = (hello.to_string(), tunnels.to_string());
        attacks.push(tokio::spawn(
            async move { attack_api.run(run, &["python3", "-c", ATTACK, "tunnels", &n, &h]).await },
        ));
        let status = || async { api.run(run, &["sh", "-c", "cat /tmp/tunnels.json 2>/dev/null; true"]).await };
        assert!(eventually(240, || async { status().await.contains("ok") }).await, "the tunnels were not opened");
        opened.push(serde_json::from_str::<Value>(&status().await).unwrap());
    }
    // With the tunnels held: probes, a new sandbox, descriptors, the budget's gauges.
    let probes = Probes::start(&base, "victim", hello, 5);
    let m = api.metrics().await;
    let in_use = metric(&m, "agentbox_proxy_fds_in_use");
    let (fds_under_tunnels, rss_under_tunnels, _) = usage(pid);
    api.sandbox_with_egress("late").await;
    let late =
        api.run("late", &["curl", "-s", "-m", "30", "--noproxy", "", &format!("http://127.0.0.1:{hello}/late")]).await;
    let (status, body) = api.call(reqwest::Method::DELETE, "/api/sandboxes/late", None).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let report = probes.finish().await;
    assert_eq!(late, "hello", "a sandbox created while the tunnels are held reaches out");
    for run in ["attacker", "attacker2"] {
        api.run(run, &["touch", "/tmp/stop"]).await;
    }
    for a in attacks {
        a.await.unwrap();
    }
    report.assert_all_ok("tunnels");
    let held: Vec<f64> = opened.iter().map(|o| o["ok"].as_f64().unwrap()).collect();
    for (o, h) in opened.iter().zip(&held) {
        assert!(*h > 0.0 && h * 2.0 <= per_sandbox, "{o} with {per_sandbox} descriptors per sandbox");
        assert!(o["ok"].as_u64().unwrap() < tunnels, "the sandbox's share was not crossed: {o}");
    }
    // Both attackers together leave at least a sixth of the server's budget to others.
    assert!((held[0] + held[1]) * 2.0 <= proxy_limit * 5.0 / 6.0 + 2.0, "{opened:?} of {proxy_limit}");
    assert!(in_use <= proxy_limit, "{in_use} proxy descriptors over the budget of {proxy_limit}");
    assert!(metric(&m, "agentbox_proxy_connections_refused_total{budget=\"sandbox\"}") > 0.0, "{m}");
    assert!(metric(&m, "agentbox_proxy_connections_refused_total{budget=\"server\"}") > 0.0, "{m}");
    assert!(u64::try_from(fds_under_tunnels).unwrap() < NOFILE - 128, "{fds_under_tunnels} descriptors open");
    figures.insert(
        "1 tunnels",
        format!(
            "2 sandboxes x {tunnels} attempted, {held:?} held, proxy fds {in_use} of {proxy_limit}, \
             server {fds_under_tunnels} fds, RSS {} MiB; \
             probes {} /health + {} exec ok, p99 /health {:?}",
            rss_under_tunnels >> 20,
            report.health_ok,
            report.exec_ok,
            report.p99()
        ),
    );

    // 2. Memory: never-finished 390 KB request heads; each is cut off at the head limit.
    let (_, rss_before, hwm_before) = usage(pid);
    let probes = Probes::start(&base, "victim", hello, 3);
    let heads = 150;
    let out = api.run("attacker", &["python3", "-c", ATTACK, "heads", &heads.to_string(), "390000"]).await;
    let report = probes.finish().await;
    report.assert_all_ok("heads");
    let heads_result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(heads_result["cut"], heads, "every oversized head is cut off: {heads_result}");
    let (_, _, hwm_after) = usage(pid);
    let grew = hwm_after.saturating_sub(hwm_before.max(rss_before));
    // Unbounded, this would buffer 150 x 390 KB = 57 MB; bounded, 150 x 16 KiB = 2.4 MB.
    assert!(grew < 24 << 20, "peak resident memory grew by {} MiB", grew >> 20);
    figures.insert(
        "2 slow heads",
        format!(
            "{heads} x 390 KB heads, all cut ({} answered 431, the rest reset); peak RSS +{} MiB (to {} MiB)",
            heads_result["answered_431"],
            grew >> 20,
            hwm_after >> 20
        ),
    );

    // 3. Metric labels: random methods and paths, unauthenticated.
    let probes = Probes::start(&base, "victim", hello, 3);
    let stranger = client_from([127, 0, 0, 4]);
    for i in 0..600u32 {
        let method = reqwest::Method::from_bytes(format!("M{i:x}{}", "Z".repeat(64)).as_bytes()).unwrap();
        let _ = stranger.request(method, format!("{base}/api/x{i}/y{}", i * 7919)).send().await;
        let _ = stranger.get(format!("{base}/nothing/{i}")).send().await;
    }
    let report = probes.finish().await;
    report.assert_all_ok("labels");
    let m = api.metrics().await;
    let series = metric(&m, "agentbox_http_metric_series");
    assert!(series <= metric(&m, "agentbox_http_metric_series_limit") + 1.0);
    assert!(series < 100.0, "{series} label sets after 1200 random requests");
    assert!(!m.contains("ZZZZ") && !m.contains("/api/x1"), "a client-sent value became a label");
    let (fds_now, rss_now, _) = usage(pid);
    figures.insert(
        "3 labels",
        format!(
            "1200 random requests: {series} series, /metrics {} KiB; {fds_now} fds, RSS {} MiB",
            m.len() >> 10,
            rss_now >> 20
        ),
    );

    // 4. Connection slots: one address opens far more idle connections than its cap.
    let probes = Probes::start(&base, "victim", hello, 3);
    let per_client = metric(&m, "agentbox_http_connections_per_client_limit");
    let mut idle = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 3], 0))).unwrap();
        if let Ok(s) = socket.connect(server.addr).await {
            idle.push(s);
        }
    }
    // The server closes the ones over the cap at once; give it a moment to get through the backlog.
    let refused_enough = eventually(60, || async {
        metric(&api.metrics().await, "agentbox_http_connections_refused_total") >= 300.0 - per_client
    })
    .await;
    let m = api.metrics().await;
    let open = metric(&m, "agentbox_http_connections_open");
    let (fds_now, rss_now, _) = usage(pid);
    let report = probes.finish().await;
    report.assert_all_ok("connections");
    assert!(refused_enough, "{m}");
    assert!(open <= per_client + 16.0, "{open} connections open with a per-client cap of {per_client}");
    drop(idle);
    figures.insert(
        "4 idle connections",
        format!("300 from one address: {open} open, the rest closed; {fds_now} fds, RSS {} MiB", rss_now >> 20),
    );

    // 4b. The whole connection budget: more addresses than it takes, each at its cap, with silent
    // connections. A new address still gets in, by closing a silent connection of a heavier one.
    let probes = Probes::start(&base, "victim", hello, 3);
    let limit = metric(&m, "agentbox_http_connections_limit");
    let crowd = u8::try_from(
        count(&m, "agentbox_http_connections_limit") / count(&m, "agentbox_http_connections_per_client_limit") + 1,
    )
    .unwrap();
    let mut idle = Vec::new();
    for a in 0..crowd {
        for _ in 0..count(&m, "agentbox_http_connections_per_client_limit") {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from(([127, 0, 0, 10 + a], 0))).unwrap();
            if let Ok(s) = socket.connect(server.addr).await {
                idle.push(s);
            }
        }
    }
    let full =
        eventually(60, || async { metric(&api.metrics().await, "agentbox_http_connections_open") >= limit }).await;
    let (fds_full, rss_full, _) = usage(pid);
    let newcomer = client_from([127, 0, 0, 5]).get(format!("{base}/health")).send().await.map(|r| r.status().as_u16());
    let m = api.metrics().await;
    let report = probes.finish().await;
    drop(idle);
    report.assert_all_ok("connection budget");
    assert!(full, "{m}");
    assert_eq!(newcomer.ok(), Some(200), "a new address gets in while the budget is full");
    assert!(metric(&m, "agentbox_http_connections_evicted_total") > 0.0, "{m}");
    figures.insert(
        "4b connection budget",
        format!(
            "{crowd} addresses x {per_client} silent connections against {limit}: {} closed to make room, \
             {} closed at accept; {fds_full} fds, RSS {} MiB",
            metric(&m, "agentbox_http_connections_evicted_total"),
            metric(&m, "agentbox_http_connections_refused_total"),
            rss_full >> 20
        ),
    );

    // 5. The log: thousands of refused requests from one sandbox; a few lines and a summary.
    let refusal_lines =
        |log: &str| log.lines().filter(|l| l.contains("egress refused") && !l.contains("left out")).count();
    let summaries = |log: &str| log.lines().filter(|l| l.contains("egress refused") && l.contains("left out")).count();
    // The refusals of the tunnels are summed up once their window ends; the flood starts a new one.
    assert!(
        eventually(30, || async { summaries(&server.log_text()) > 0 }).await,
        "no summary of the tunnels' refusals"
    );
    let log_before = server.log_text();
    let (lines_before, summaries_before) = (refusal_lines(&log_before), summaries(&log_before));
    let probes = Probes::start(&base, "victim", hello, 3);
    let started = Instant::now();
    let flood = 2000;
    let out = api.run("attacker", &["python3", "-c", ATTACK, "refused", &flood.to_string()]).await;
    let elapsed = started.elapsed();
    let report = probes.finish().await;
    report.assert_all_ok("log flood");
    let flood_result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(flood_result["refused"], flood, "{flood_result}");
    assert!(
        eventually(30, || async { summaries(&server.log_text()) > summaries_before }).await,
        "no summary line for the flood"
    );
    let log = server.log_text();
    let lines = refusal_lines(&log) - lines_before;
    assert!(lines > 0, "the first refusals of a window are logged");
    // 20 lines per 5 s window and source, for as many windows as the flood lasted, plus one.
    let windows = usize::try_from(elapsed.as_secs() / 5 + 2).unwrap();
    assert!(lines <= 20 * windows, "{lines} refusal lines for {flood} refusals");
    let suppressed = metric(&api.metrics().await, "agentbox_log_lines_suppressed_total");
    assert!(suppressed >= f64::from(flood) - 20.0 * f64::from(u32::try_from(windows).unwrap()));
    let grew = log.len() - log_before.len();
    let (fds_now, rss_now, _) = usage(pid);
    figures.insert(
        "5 log flood",
        format!(
            "{flood} refusals: {lines} lines, {suppressed} left out, log +{} KiB; {fds_now} fds, RSS {} MiB",
            grew >> 10,
            rss_now >> 20
        ),
    );

    // Everything is given back.
    for run in ["attacker", "attacker2", "victim"] {
        let (status, body) = api.call(reqwest::Method::DELETE, &format!("/api/sandboxes/{run}"), None).await;
        assert!(status == 200 || status == 204, "{status} {body}");
    }
    let released = eventually(60, || async {
        let m = api.metrics().await;
        metric(&m, "agentbox_proxy_fds_in_use") == 0.0 && usage(pid).0 <= boot_fds + 8
    })
    .await;
    let peak_fds = sampler.finish();
    let (end_fds, end_rss, peak_rss) = usage(pid);
    figures.insert(
        "6 after",
        format!("{end_fds} fds, RSS {} MiB; start {boot_fds} fds, RSS {} MiB", end_rss >> 20, boot_rss >> 20),
    );
    figures.insert("7 peaks", format!("{peak_fds} fds (limit {NOFILE}), RSS {} MiB", peak_rss >> 20));
    for (k, v) in &figures {
        eprintln!("budgets: {k}: {v}");
    }
    assert!(released, "descriptors not given back: {end_fds} open, {boot_fds} at start");
    assert!(u64::try_from(peak_fds).unwrap() < NOFILE, "peak {peak_fds} descriptors");
    // What the budgets allow beyond idle: the proxies' 384 descriptors with a 16 KiB head buffer or two
    // 16 KiB copy buffers each, and 384 REST connections with a 16 KiB head buffer each: well under 64 MiB.
    assert!(peak_rss < idle_rss + (64 << 20), "peak RSS {} MiB, idle {} MiB", peak_rss >> 20, idle_rss >> 20);
    drop(server);
}

/// Random methods and paths, in process: the request counter's label sets stay bounded.
#[tokio::test]
async fn random_methods_and_paths_do_not_grow_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_metric_series: 64, ..Limits::default() };
    let t = common::TestServer::host(dir.path(), ServerConfig { limits, ..ServerConfig::default() }).await;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..500 {
        let method: String =
            (0..1 + next() % 40).map(|_| char::from(b'A' + u8::try_from(next() % 26).unwrap())).collect();
        let path: String = (0..1 + next() % 6).map(|_| format!("/{:x}", next())).collect();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let _ = t.client.request(method, t.url(&path)).send().await.unwrap();
        let _ = t
            .client
            .request(reqwest::Method::GET, t.url(&format!("/api/sandboxes/{:x}", next())))
            .bearer_auth(common::TOKEN)
            .send()
            .await
            .unwrap();
    }
    let text = t.get("/metrics").send().await.unwrap().text().await.unwrap();
    let series = text.lines().filter(|l| l.starts_with("agentbox_http_requests_total{")).count();
    assert!(series <= 65, "{series} label sets:\n{text}");
    for line in text.lines().filter(|l| l.starts_with("agentbox_http_requests_total{")) {
        let method = line.split("method=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"].contains(&method), "{line}");
        assert!(!line.contains("/api/sandboxes/") || line.contains("{run_id}"), "a raw path became a label: {line}");
    }
    t.stop().await;
}
