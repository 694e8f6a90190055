//! `agentbox-bench`: measures agentbox against baselines taken in the same run
//! and prints each figure as p50/p90 with its ratio to the baseline.
//!
//! Run with `cargo run --release -p agentbox-bench` (as root). See docs/BENCHMARKS.md.
#![allow(clippy::print_stdout, clippy::cast_precision_loss)] // a benchmark prints figures

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_config::{Preset, SandboxConfig};
use agentbox_core::{CreateOptions, CreateRequest, ExecRequest, ManagerConfig, RunId, SandboxBackend, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use clap::Parser;

/// Benchmarks of the local backend against baselines measured in the same run.
#[derive(Debug, Parser)]
struct Args {
    /// Iterations of the latency benchmarks (P1, P3); P2 runs ten times as many.
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    /// Idle sandboxes to hold at once for P4.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Sandboxes created in total for P6.
    #[arg(long, default_value_t = 96)]
    creates: usize,
    /// The `agentbox` command line for P10 (default: the one next to this binary; build it with
    /// `cargo build --release -p agentbox`).
    #[arg(long)]
    cli: Option<std::path::PathBuf>,
    /// The image of P11, P13 and P10's second row: a reference pulled once before it is measured (for example the
    /// Debian fixture pushed to a loopback registry, `127.0.0.1:5000/debian-python:bookworm`); P11 and P13 are
    /// skipped without it.
    #[arg(long)]
    image: Option<String>,
    /// Run only these benchmarks (p1..p14); all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    // Nearest-rank percentile: index = round((n - 1) * q / 100).
    let at = |q: usize| v[((v.len() - 1) * q + 50) / 100];
    Stats { p50: at(50), p90: at(90), p99: at(99) }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, ours: &Stats, base_name: &str, base: &Stats) {
    println!(
        "{name:<44} p50 {:>11}  p90 {:>11} | {base_name:<28} p50 {:>11}  p90 {:>11} | ratio p50 {:.2}x",
        ms(ours.p50),
        ms(ours.p90),
        ms(base.p50),
        ms(base.p90),
        ours.p50.as_secs_f64() / base.p50.as_secs_f64()
    );
}

fn spawn_wait(cmd: &mut Command) {
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(status.is_ok_and(|s| s.success()), "baseline command failed: {cmd:?}");
}

fn bwrap() -> Command {
    let mut c = Command::new("bwrap");
    c.args(["--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"]);
    c
}

fn mem_available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemAvailable:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .unwrap_or(0)
}

async fn p1(backend: &LocalBackend, n: usize) {
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    let mut phases: [Vec<Duration>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n {
        let t = Instant::now();
        spawn_wait(&mut bwrap());
        base.push(t.elapsed());
        let t = Instant::now();
        let sb = backend.create(CreateRequest::default()).await.expect("create");
        let created = t.elapsed();
        let out = backend.exec(&sb.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
        let executed = t.elapsed();
        backend.destroy(&sb.id).await.expect("destroy");
        let total = t.elapsed();
        ours.push(total);
        phases[0].push(created);
        phases[1].push(executed - created);
        phases[2].push(total - executed);
        assert_eq!(out.exit_code, 0);
    }
    row("P1 cold create + exec true + destroy", &stats(ours), "bwrap --unshare-all true", &stats(base));
    let [c, e, d] = phases.map(|v| ms(stats(v).p50));
    println!("   of which (p50 of each phase): create {c}, exec {e}, destroy {d}");
}

/// Creates a sandbox of `config`, runs `true` in it and destroys it; returns the time each phase took (create,
/// exec, destroy).
async fn cold_round(backend: &LocalBackend, config: &SandboxConfig) -> [Duration; 3] {
    let t = Instant::now();
    let sb = backend.create(CreateRequest::new(config.clone())).await.expect("create");
    let created = t.elapsed();
    let out = backend.exec(&sb.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
    let executed = t.elapsed();
    backend.destroy(&sb.id).await.expect("destroy");
    assert_eq!(out.exit_code, 0);
    [created, executed - created, t.elapsed() - executed]
}

/// P11: a cold create from an image already in the store (an overlay of its layers over the sandbox's disk
/// layer), against the same with the host's system (`image = host`), alternating in the same run.
async fn p11(backend: &LocalBackend, image: &str, n: usize) {
    let with_image = SandboxConfig { image: Some(image.to_owned()), ..SandboxConfig::default() };
    let host = SandboxConfig::default();
    // The first create pulls the image.
    cold_round(backend, &with_image).await;
    let (mut ours, mut base) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        base.push(cold_round(backend, &host).await);
        ours.push(cold_round(backend, &with_image).await);
    }
    let total = |rounds: &[[Duration; 3]]| stats(rounds.iter().map(|r| r.iter().sum()).collect());
    row("P11 cold create from a cached image + exec", &total(&ours), "the same with image = host", &total(&base));
    let phases = |rounds: &[[Duration; 3]]| {
        let [c, e, d] = [0, 1, 2].map(|i| ms(stats(rounds.iter().map(|r| r[i]).collect()).p50));
        format!("create {c}, exec {e}, destroy {d}")
    };
    println!("   of which (p50 of each phase): image {}; host {}", phases(&ours), phases(&base));
}

/// FROM the P11 image with a COPY and two RUN steps; the first, uncached build is shown beside it.
async fn p13(backend: Arc<LocalBackend>, image: &str, n: usize) {
    let images = agentbox_image::ImageConfig::default();
    let store = agentbox_image::Store::open(images).expect("the image store");
    let builder = agentbox_template::Builder::new(backend, store);
    let context = tempfile::tempdir().expect("a context directory");
    std::fs::write(context.path().join("tool.py"), "print(42)\n").expect("context file");
    let name = format!("bench-{}", std::process::id());
    let dockerfile = format!(
        "FROM {image}\nENV MODE=bench\nCOPY tool.py /opt/tool.py\nRUN echo $MODE > /etc/mode\nRUN python3 /opt/tool.py > /opt/out\n"
    );
    let request = agentbox_template::BuildRequest::new(name.clone(), dockerfile, context.path());
    let t = Instant::now();
    let first = builder.build(&request).await.expect("the first build");
    let cold = t.elapsed();
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let again = builder.build(&request).await.expect("a rebuild");
        ours.push(t.elapsed());
        assert_eq!(again.digest, first.digest);
    }
    let _ = builder.remove(&name);
    let s = stats(ours);
    println!(
        "P13 template rebuild, nothing changed      p50 {:>9.3} ms  p90 {:>9.3} ms | first build (3 layers made): {:.0} ms",
        s.p50.as_secs_f64() * 1000.0,
        s.p90.as_secs_f64() * 1000.0,
        cold.as_secs_f64() * 1000.0
    );
}

/// How long P10 waits before each sample: the quiet an agent harness leaves between two commands (it has its own
/// work to do), in which what a previous process left running settles (`agentbox run`'s destroy after its
/// answer, the kernel's teardown of namespaces after either tool).
const P10_SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// P10: `agentbox run -- true` as a whole process, as an agent harness calls it once per command,
/// against bwrap as a whole process; with `image`, `agentbox run --image IMAGE -- true` (the image pulled
/// already), which pays the image's parts of a create in every process. Two rows: each sample after
/// [`P10_SETTLE`] of quiet, alternating the two tools (what one call costs), then each tool run back to back
/// as hyperfine runs it (where one call's background work meets the next call).
fn p10(cli: &std::path::Path, image: Option<&str>, n: usize) {
    let run = || {
        let mut c = Command::new(cli);
        c.arg("run");
        if let Some(image) = image {
            c.args(["--image", image]);
        }
        c.args(["--", "true"]);
        c
    };
    for _ in 0..3 {
        spawn_wait(&mut run());
    }
    let timed = |c: &mut Command| {
        let t = Instant::now();
        spawn_wait(c);
        t.elapsed()
    };
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        std::thread::sleep(P10_SETTLE);
        base.push(timed(&mut bwrap()));
        std::thread::sleep(P10_SETTLE);
        ours.push(timed(&mut run()));
    }
    let what = if image.is_some() { "P10 process: agentbox run --image" } else { "P10 process: agentbox run -- true" };
    row(what, &stats(ours), "bwrap --unshare-all true", &stats(base));
    std::thread::sleep(P10_SETTLE);
    let ours: Vec<_> = (0..n).map(|_| timed(&mut run())).collect();
    std::thread::sleep(P10_SETTLE);
    let base: Vec<_> = (0..n).map(|_| timed(&mut bwrap())).collect();
    row("   back to back, each tool in turn", &stats(ours), "bwrap, back to back", &stats(base));
}

/// P7: a snapshot of a sandbox holding 100 MiB of new files, against copying those files on the host.
/// P8: a fork (create from that snapshot + exec + destroy), against a cold create + exec + destroy.
async fn p7_p8(backend: &LocalBackend, n: usize) {
    let sb = backend.create(CreateRequest::default()).await.expect("create");
    let fill = ExecRequest::shell("head -c 100M /dev/urandom > ~/data && sync");
    assert_eq!(backend.exec(&sb.id, fill).await.expect("exec").collect(1024).await.exit_code, 0);
    let host = std::env::temp_dir().join(format!("agentbox-bench-{}", std::process::id()));
    std::fs::write(&host, vec![7u8; 100 << 20]).expect("host file");
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    for i in 0..n {
        let copy = host.with_extension("copy");
        let t = Instant::now();
        spawn_wait(Command::new("cp").arg("--reflink=never").arg(&host).arg(&copy));
        base.push(t.elapsed());
        let _ = std::fs::remove_file(&copy);
        let name = format!("bench-{}-{i}", std::process::id());
        let t = Instant::now();
        backend.snapshot(&sb.id, &name).await.expect("snapshot");
        ours.push(t.elapsed());
        backend.delete_snapshot(&name).await.expect("delete snapshot");
    }
    let _ = std::fs::remove_file(&host);
    row("P7 snapshot of a sandbox with 100 MiB of new files", &stats(ours), "cp of 100 MiB on the host", &stats(base));

    let name = format!("bench-fork-{}", std::process::id());
    backend.snapshot(&sb.id, &name).await.expect("snapshot");
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let cold = backend.create(CreateRequest::default()).await.expect("create");
        let out = backend.exec(&cold.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
        backend.destroy(&cold.id).await.expect("destroy");
        base.push(t.elapsed());
        assert_eq!(out.exit_code, 0);
        let t = Instant::now();
        let request = CreateRequest { from_snapshot: Some(name.clone()), ..CreateRequest::default() };
        let fork = backend.create(request).await.expect("fork");
        let out = backend.exec(&fork.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
        backend.destroy(&fork.id).await.expect("destroy");
        ours.push(t.elapsed());
        assert_eq!(out.exit_code, 0);
    }
    backend.delete_snapshot(&name).await.expect("delete snapshot");
    backend.destroy(&sb.id).await.expect("destroy");
    row("P8 fork from that snapshot + exec + destroy", &stats(ours), "cold create + exec + destroy", &stats(base));
}

/// P12: start of a stopped sandbox holding 100 MiB in 2000 files (a fresh sandbox on its kept files, its
/// files moved to the new sandbox's id range) + exec, against a cold create + exec in the same run. Stopping
/// it again and destroying the cold one are outside the timers.
async fn p12(backend: &LocalBackend, n: usize) {
    let sb = backend.create(CreateRequest::default()).await.expect("create");
    let fill = ExecRequest::shell(
        "mkdir -p ~/proj && for i in $(seq 2000); do head -c 50K /dev/urandom > ~/proj/f$i; done && sync",
    );
    assert_eq!(backend.exec(&sb.id, fill).await.expect("exec").collect(1024).await.exit_code, 0);
    let mut key = backend.stop(&sb.id).await.expect("stop").key;
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let cold = backend.create(CreateRequest::default()).await.expect("create");
        let out = backend.exec(&cold.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
        base.push(t.elapsed());
        backend.destroy(&cold.id).await.expect("destroy");
        assert_eq!(out.exit_code, 0);
        let t = Instant::now();
        let started = backend.start(&key, CreateRequest::default()).await.expect("start");
        let out = backend.exec(&started.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
        ours.push(t.elapsed());
        assert_eq!(out.exit_code, 0);
        key = backend.stop(&started.id).await.expect("stop").key;
    }
    backend.discard_stopped(&key).await.expect("discard");
    row(
        "P12 start of a stopped sandbox (2000 files, 100 MiB) + exec",
        &stats(ours),
        "cold create + exec",
        &stats(base),
    );
}

/// P9: pause + resume round trip of a sandbox running a busy process, against a kill -STOP / -CONT of one
/// host process.
async fn p9(backend: &LocalBackend, n: usize) {
    let sb = backend.create(CreateRequest::default()).await.expect("create");
    backend.spawn_background(&sb.id, ExecRequest::shell("while true; do :; done")).await.expect("background");
    let mut child = Command::new("sleep").arg("600").spawn().expect("sleep");
    let pid = child.id().to_string();
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        spawn_wait(Command::new("kill").args(["-STOP", &pid]));
        spawn_wait(Command::new("kill").args(["-CONT", &pid]));
        base.push(t.elapsed());
        let t = Instant::now();
        backend.pause(&sb.id).await.expect("pause");
        backend.resume(&sb.id).await.expect("resume");
        ours.push(t.elapsed());
    }
    let _ = child.kill();
    let _ = child.wait();
    backend.destroy(&sb.id).await.expect("destroy");
    row("P9 pause + resume round trip (busy sandbox)", &stats(ours), "kill -STOP + -CONT of a process", &stats(base));
}

async fn p2(backend: &LocalBackend, n: usize) {
    let sb = backend.create(CreateRequest::default()).await.expect("create");
    let mut base = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        spawn_wait(&mut Command::new("/bin/true"));
        base.push(t.elapsed());
        let t = Instant::now();
        let out = backend.exec(&sb.id, ExecRequest::argv(["true"])).await.expect("exec").collect(1024).await;
        ours.push(t.elapsed());
        assert_eq!(out.exit_code, 0);
    }
    backend.destroy(&sb.id).await.expect("destroy");
    row("P2 warm exec true (round trip)", &stats(ours), "spawn /bin/true directly", &stats(base));
}

async fn p3(backend: Arc<LocalBackend>, n: usize) {
    let mut pool = BTreeMap::new();
    pool.insert(Preset::Default, 2);
    let manager = SandboxManager::new(backend.clone(), ManagerConfig { pool_sizes: pool, ..ManagerConfig::default() });
    let mut ours = Vec::with_capacity(n);
    let mut cold = Vec::with_capacity(n);
    for i in 0..n {
        manager.fill_pool().await;
        let run = RunId::parse(&format!("bench-{i}")).expect("run id");
        let t = Instant::now();
        manager
            .get_or_create(&run, CreateOptions { preset: Some(Preset::Default), config: None })
            .await
            .expect("acquire");
        ours.push(t.elapsed());
        manager.destroy(&run).await.expect("destroy");
        let t = Instant::now();
        let sb = backend.create(CreateRequest::default()).await.expect("create");
        cold.push(t.elapsed());
        backend.destroy(&sb.id).await.expect("destroy");
    }
    manager.shutdown().await;
    row("P3 acquire for a new run_id (warm pool)", &stats(ours), "cold create", &stats(cold));
}

async fn p4(backend: &LocalBackend, count: usize) {
    let before = mem_available_kb();
    let t = Instant::now();
    let mut ids = Vec::with_capacity(count);
    let mut failure = None;
    for _ in 0..count {
        match backend.create(CreateRequest::preset(Preset::Lightweight)).await {
            Ok(sb) => ids.push(sb.id),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = mem_available_kb();
    let mut pss = 0;
    let mut procs = 0;
    for id in &ids {
        for pid in backend.host_pids(id).unwrap_or_default() {
            pss += pss_kb(pid);
            procs += 1;
        }
    }
    let mut healthy = 0;
    for id in &ids {
        if backend.health(id).await.is_ok_and(|h| h.healthy) {
            healthy += 1;
        }
    }
    let held = ids.len().max(1) as f64;
    println!(
        "P4 idle sandboxes held: {} of {count} ({healthy} answering health checks), created in {:.1} s{}",
        ids.len(),
        took.as_secs_f64(),
        failure.map(|f| format!(", stopped by: {f}")).unwrap_or_default()
    );
    println!(
        "P4 host memory per idle sandbox: {:.2} MiB (MemAvailable drop), {:.2} MiB PSS of its {} processes",
        before.saturating_sub(after) as f64 / 1024.0 / held,
        pss as f64 / 1024.0 / held,
        f64::from(procs) / held
    );
    for id in &ids {
        let _ = backend.destroy(id).await;
    }
}

async fn p6(backend: Arc<LocalBackend>, total: usize) {
    let creators = 8;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..creators {
        let b = backend.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..total / creators {
                ids.push(b.create(CreateRequest::default()).await.expect("create").id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("creator"));
    }
    let ours = ids.len() as f64 / t.elapsed().as_secs_f64();
    for id in &ids {
        let _ = backend.destroy(id).await;
    }
    let t = Instant::now();
    let handles: Vec<_> = (0..creators)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..total / creators {
                    spawn_wait(&mut bwrap());
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let base = (total / creators * creators) as f64 / t.elapsed().as_secs_f64();
    println!(
        "P6 create throughput, {creators} concurrent creators: {ours:.1} sandboxes/s | bwrap sandboxes run to completion: {base:.1}/s | ratio {:.2}x",
        ours / base
    );
}

/// An agentboxd (in this process) on loopback over `backend`, without rate limits.
struct BenchServer {
    addr: std::net::SocketAddr,
    manager: SandboxManager,
    serving: tokio::task::JoinHandle<()>,
    client: reqwest::Client,
}

const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";

impl BenchServer {
    async fn start(backend: Arc<LocalBackend>) -> Self {
        use agentbox_server::config::ServerConfig;
        use agentbox_server::registry::Registry;
        use agentbox_server::{ApiToken, Server};

        let mut config = ServerConfig::default();
        config.limits.rate_limit_per_second = 1_000_000;
        config.limits.rate_limit_burst = 1_000_000;
        let server = Server::start(
            backend,
            config,
            ApiToken::new(BENCH_TOKEN).expect("token"),
            Registry::in_memory().expect("registry"),
        )
        .await
        .expect("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let manager = server.manager().clone();
        let serving = tokio::spawn(async move {
            let _ = server.serve(listener, std::future::pending()).await;
        });
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
        Self { addr, manager, serving, client }
    }

    async fn create(&self, run: &str) {
        let r = self
            .client
            .post(format!("http://{}/api/sandboxes/create", self.addr))
            .bearer_auth(BENCH_TOKEN)
            .json(&serde_json::json!({"run_id": run}))
            .send()
            .await
            .expect("create");
        assert!(r.status().is_success(), "create: {}", r.status());
    }

    /// One REST `execute/command` of `true` in `run`, timed.
    async fn exec_true(&self, run: &str) -> Duration {
        let t = Instant::now();
        let r = self
            .client
            .post(format!("http://{}/api/sandboxes/{run}/execute/command", self.addr))
            .bearer_auth(BENCH_TOKEN)
            .json(&serde_json::json!({"argv": ["true"]}))
            .send()
            .await
            .expect("exec");
        assert!(r.status().is_success(), "exec: {}", r.status());
        let _ = r.bytes().await;
        t.elapsed()
    }

    async fn stop(self) {
        self.serving.abort();
        self.manager.shutdown().await;
    }
}

/// What a noisy neighbour runs: four busy loops, a memory hog that fills its memory limit again and again, and a
/// fork bomb held at its pid limit. Everything stays inside its sandbox's limits.
const NOISE: &str = "for i in 1 2 3 4; do (while :; do :; done) & done; \
    (while :; do python3 -c 'b = []\nwhile True: b.append(bytearray(1 << 20))' 2>/dev/null; done) & \
    (f() { f | f & }; f) 2>/dev/null & wait";

async fn p14(backend: Arc<LocalBackend>, n: usize) {
    let server = BenchServer::start(backend).await;
    server.create("victim").await;
    server.create("noisy").await;
    let mut quiet = Vec::with_capacity(n);
    for _ in 0..n {
        quiet.push(server.exec_true("victim").await);
    }
    let noisy = RunId::parse("noisy").expect("run id");
    server.manager.spawn_background(&noisy, ExecRequest::shell(NOISE)).await.expect("noise");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut loud = Vec::with_capacity(n);
    for _ in 0..n {
        loud.push(server.exec_true("victim").await);
    }
    let (loud, quiet) = (stats(loud), stats(quiet));
    println!(
        "P14 REST exec true beside a noisy neighbour   p50 {:>11}  p99 {:>11} | neighbour idle               p50 {:>11}  p99 {:>11} | ratio p99 {:.2}x",
        ms(loud.p50),
        ms(loud.p99),
        ms(quiet.p50),
        ms(quiet.p99),
        loud.p99.as_secs_f64() / quiet.p99.as_secs_f64()
    );
    server.stop().await;
}

async fn p5(backend: Arc<LocalBackend>, n: usize) {
    let server = BenchServer::start(backend).await;
    let (addr, client, manager, token) = (server.addr, server.client.clone(), server.manager.clone(), BENCH_TOKEN);
    let base = format!("http://{addr}/api/sandboxes");
    server.create("bench").await;
    let run = RunId::parse("bench").expect("run id");
    let exec_url = format!("{base}/bench/execute/command");
    let body = serde_json::json!({"argv": ["true"]});
    let mut rest = Vec::with_capacity(n);
    let mut lib = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.post(&exec_url).bearer_auth(token).json(&body).send().await.expect("exec");
        assert!(r.status().is_success(), "exec: {}", r.status());
        let _ = r.bytes().await;
        rest.push(t.elapsed());
        let t = Instant::now();
        manager.exec_collect(&run, ExecRequest::argv(["true"])).await.expect("exec");
        lib.push(t.elapsed());
    }
    let (rest, lib) = (stats(rest), stats(lib));
    row("P5 REST exec true round trip", &rest, "same exec through the library", &lib);
    println!("P5 REST overhead at p50: {:+.3} ms", (rest.p50.as_secs_f64() - lib.p50.as_secs_f64()) * 1000.0);
    let clients = 32;
    let per_client = (n * 4 / clients).max(10);
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, body) = (client.clone(), exec_url.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..per_client {
                    let r = client.post(&url).bearer_auth(token).json(&body).send().await.expect("exec");
                    assert!(r.status().is_success(), "exec: {}", r.status());
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    let rate = (clients * per_client) as f64 / t.elapsed().as_secs_f64();
    println!("P5 REST throughput, {clients} concurrent clients: {rate:.0} exec/s");
    server.stop().await;
}

fn main() {
    // The REST figures measure agentboxd, whose runtime this is.
    let runtime = agentbox_server::runtime::build().expect("the async runtime");
    agentbox_server::runtime::prefer_short_slices();
    runtime.block_on(bench());
}

async fn bench() {
    let args = Args::parse();
    let want = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
    for l in backend.limitations() {
        println!("note: {l}");
    }
    println!(
        "machine: {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    // Warm-up: the first create makes the sealed agent copy, starts the zygote and builds the /etc template;
    // page caches fill.
    for _ in 0..3 {
        let sb = backend.create(CreateRequest::default()).await.expect("create");
        backend.destroy(&sb.id).await.expect("destroy");
        spawn_wait(&mut bwrap());
    }
    if want("p1") {
        p1(&backend, args.iterations).await;
        // The same with homes on a tmpfs (no disk pool), to show what the disk-backed storage costs.
        let memory = LocalBackend::new(LocalConfig { storage: None, ..LocalConfig::default() }).expect("backend");
        let sb = memory.create(CreateRequest::default()).await.expect("create");
        memory.destroy(&sb.id).await.expect("destroy");
        print!("   with memory-backed homes instead: ");
        p1(&memory, args.iterations).await;
    }
    if want("p9") {
        p9(&backend, args.iterations).await;
    }
    if want("p12") {
        p12(&backend, args.iterations).await;
    }
    if want("p7") || want("p8") {
        p7_p8(&backend, args.iterations).await;
    }
    if want("p2") {
        p2(&backend, args.iterations * 10).await;
    }
    if want("p3") {
        p3(backend.clone(), args.iterations).await;
    }
    if want("p5") {
        p5(backend.clone(), args.iterations * 5).await;
    }
    if want("p14") {
        p14(backend.clone(), args.iterations * 5).await;
    }
    if want("p6") {
        p6(backend.clone(), args.creates).await;
    }
    if want("p4") {
        p4(&backend, args.idle).await;
    }
    if want("p11") {
        match &args.image {
            Some(image) => p11(&backend, image, args.iterations).await,
            None => println!("P11 skipped: give --image REFERENCE (an image the bench can pull)"),
        }
    }
    if want("p13") {
        match &args.image {
            Some(image) => p13(backend.clone(), image, args.iterations).await,
            None => println!("P13 skipped: give --image REFERENCE (an image with python3 the bench can pull)"),
        }
    }
    if want("p10") {
        let cli = args
            .cli
            .clone()
            .unwrap_or_else(|| std::env::current_exe().expect("the bench's own path").with_file_name("agentbox"));
        assert!(
            cli.is_file(),
            "no agentbox binary at {}: build it (cargo build --release -p agentbox) or pass --cli",
            cli.display()
        );
        p10(&cli, None, args.iterations);
        if let Some(image) = &args.image {
            p10(&cli, Some(image), args.iterations);
        }
    }
}
