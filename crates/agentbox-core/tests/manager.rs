//! Lifecycle rules of the sandbox manager, on tokio's paused clock.
//!
//! Most tests drive [`Fake`], a small in-memory backend that records what the
//! manager asked of it and can be made slow or unhealthy; a few use the
//! mockall mock where exact call expectations say it best.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentbox_config::{NetworkConfig, PackageSpec, Preset, SandboxConfig};
use agentbox_core::{
    CodeRequest, Command, CreateOptions, CreateRequest, Error, ExecEvent, ExecRequest, ExecStream, ExitStatus,
    FileEntry, HealthStatus, ManagedSandbox, ManagerConfig, ProcessInfo, RunId, SandboxBackend, SandboxId, SandboxInfo,
    SandboxManager, SandboxState, Terminal, TerminalInput, TerminalRequest,
};
use agentbox_metrics::SandboxMetrics;
use async_trait::async_trait;
use tokio::time::{advance, sleep};

// ---------------------------------------------------------------------------------------------
// The in-memory backend.
// ---------------------------------------------------------------------------------------------

/// An in-memory backend. Commands are a tiny script language: `sleep N` (seconds, on tokio's
/// clock), `echo TEXT` and `exit N`, separated by `;`.
#[derive(Default)]
struct Fake {
    next_id: AtomicU64,
    /// How long `create` takes.
    create_delay: Mutex<Duration>,
    /// Every create request, in order.
    creates: Mutex<Vec<CreateRequest>>,
    /// Sandboxes created and not destroyed.
    live: Mutex<BTreeSet<SandboxId>>,
    /// Every destroy call, in order.
    destroyed: Mutex<Vec<SandboxId>>,
    /// Sandboxes whose probe reports unhealthy.
    unhealthy: Mutex<HashSet<SandboxId>>,
    /// Sandboxes whose probe never answers.
    hung: Mutex<HashSet<SandboxId>>,
    /// Package installs, per sandbox.
    installs: Mutex<Vec<(SandboxId, Vec<String>)>>,
    /// Whether pause and stop work (as on the local backend) or are unsupported (the default, as on E2B).
    keeps: std::sync::atomic::AtomicBool,
    /// Paused sandboxes.
    paused: Mutex<BTreeSet<SandboxId>>,
    /// Stopped sandboxes' keys.
    stopped: Mutex<BTreeSet<String>>,
    /// Terminals whose input was hung up.
    hangups: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

impl Fake {
    fn live(&self) -> BTreeSet<SandboxId> {
        lock(&self.live).clone()
    }

    fn destroyed(&self) -> Vec<SandboxId> {
        lock(&self.destroyed).clone()
    }

    fn create_count(&self) -> usize {
        lock(&self.creates).len()
    }

    /// Create requests made on behalf of `run` (pool creations carry no run id).
    fn creates_for(&self, run: &str) -> usize {
        lock(&self.creates).iter().filter(|r| r.metadata.get("run_id").map(String::as_str) == Some(run)).count()
    }

    fn set_create_delay(&self, d: Duration) {
        *lock(&self.create_delay) = d;
    }

    fn known(&self, id: &SandboxId) -> agentbox_core::Result<()> {
        if lock(&self.live).contains(id) { Ok(()) } else { Err(Error::NotFound(format!("sandbox {id}"))) }
    }
}

fn script_events(request: &ExecRequest) -> (Duration, Vec<ExecEvent>, i32) {
    let Command::Shell(line) = &request.command else {
        return (Duration::ZERO, Vec::new(), 0);
    };
    let (mut delay, mut out, mut code) = (Duration::ZERO, Vec::new(), 0);
    for part in line.split(';').map(str::trim) {
        if let Some(s) = part.strip_prefix("sleep ") {
            delay += Duration::from_secs(s.parse().unwrap());
        } else if let Some(t) = part.strip_prefix("echo ") {
            out.push(ExecEvent::Stdout(format!("{t}\n").into_bytes()));
        } else if let Some(c) = part.strip_prefix("exit ") {
            code = c.parse().unwrap();
        }
    }
    (delay, out, code)
}

#[async_trait]
impl SandboxBackend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, request: CreateRequest) -> agentbox_core::Result<SandboxInfo> {
        let delay = *lock(&self.create_delay);
        sleep(delay).await;
        let id = SandboxId::new_unchecked(format!("sb-{}", self.next_id.fetch_add(1, Ordering::SeqCst) + 1));
        lock(&self.live).insert(id.clone());
        let metadata = request.metadata.clone();
        lock(&self.creates).push(request);
        Ok(SandboxInfo { id, backend: "fake".into(), state: SandboxState::Running, created_at_ms: 0, metadata })
    }

    async fn exec(&self, id: &SandboxId, request: ExecRequest) -> agentbox_core::Result<ExecStream> {
        self.known(id)?;
        let (delay, events, code) = script_events(&request);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            sleep(delay).await;
            for e in events {
                let _ = tx.send(e).await;
            }
            let status =
                ExitStatus { exit_code: code, signal: None, timed_out: false, oom_killed: false, duration: delay };
            let _ = tx.send(ExecEvent::Exit(status)).await;
        });
        Ok(ExecStream::new(rx))
    }

    async fn run_code(&self, id: &SandboxId, request: CodeRequest) -> agentbox_core::Result<ExecStream> {
        self.exec(id, ExecRequest::shell(request.code)).await
    }

    async fn spawn_background(&self, id: &SandboxId, _: ExecRequest) -> agentbox_core::Result<ProcessInfo> {
        self.known(id)?;
        Err(Error::Unsupported("the fake backend runs no background processes".into()))
    }

    async fn list_processes(&self, id: &SandboxId) -> agentbox_core::Result<Vec<ProcessInfo>> {
        self.known(id).map(|()| Vec::new())
    }

    async fn kill_process(&self, id: &SandboxId, pid: u32, _: i32) -> agentbox_core::Result<()> {
        self.known(id)?;
        Err(Error::NotFound(format!("process {pid}")))
    }

    async fn read_file(&self, id: &SandboxId, path: &str) -> agentbox_core::Result<Vec<u8>> {
        self.known(id)?;
        Err(Error::NotFound(path.to_owned()))
    }

    async fn write_file(&self, id: &SandboxId, _: &str, _: Vec<u8>) -> agentbox_core::Result<()> {
        self.known(id)
    }

    async fn list_dir(&self, id: &SandboxId, _: &str) -> agentbox_core::Result<Vec<FileEntry>> {
        self.known(id).map(|()| Vec::new())
    }

    async fn stat(&self, id: &SandboxId, path: &str) -> agentbox_core::Result<FileEntry> {
        self.known(id)?;
        Err(Error::NotFound(path.to_owned()))
    }

    async fn mkdir(&self, id: &SandboxId, _: &str) -> agentbox_core::Result<()> {
        self.known(id)
    }

    async fn remove(&self, id: &SandboxId, _: &str) -> agentbox_core::Result<()> {
        self.known(id)
    }

    async fn rename(&self, id: &SandboxId, _: &str, _: &str) -> agentbox_core::Result<()> {
        self.known(id)
    }

    async fn metrics(&self, id: &SandboxId) -> agentbox_core::Result<SandboxMetrics> {
        self.known(id).map(|()| SandboxMetrics { memory_used_mb: 42.0, ..SandboxMetrics::default() })
    }

    async fn health(&self, id: &SandboxId) -> agentbox_core::Result<HealthStatus> {
        self.known(id)?;
        if lock(&self.hung).contains(id) {
            std::future::pending::<()>().await;
        }
        let healthy = !lock(&self.unhealthy).contains(id);
        Ok(HealthStatus { healthy, latency_us: 10, message: (!healthy).then(|| "probe failed".to_owned()) })
    }

    async fn update_network(&self, id: &SandboxId, _: NetworkConfig) -> agentbox_core::Result<()> {
        self.known(id)
    }

    async fn install_packages(&self, id: &SandboxId, packages: Vec<PackageSpec>) -> agentbox_core::Result<()> {
        self.known(id)?;
        let names: Vec<String> = packages.iter().map(ToString::to_string).collect();
        lock(&self.installs).push((id.clone(), names));
        Ok(())
    }

    async fn pause(&self, id: &SandboxId) -> agentbox_core::Result<()> {
        self.known(id)?;
        if !self.keeps.load(Ordering::SeqCst) {
            return Err(Error::Unsupported("the fake can't pause".into()));
        }
        lock(&self.paused).insert(id.clone());
        Ok(())
    }

    async fn resume(&self, id: &SandboxId) -> agentbox_core::Result<()> {
        lock(&self.paused).remove(id);
        Ok(())
    }

    async fn stop(&self, id: &SandboxId) -> agentbox_core::Result<agentbox_core::StoppedSandbox> {
        self.known(id)?;
        if !self.keeps.load(Ordering::SeqCst) {
            return Err(Error::Unsupported("the fake can't stop".into()));
        }
        lock(&self.live).remove(id);
        let key = format!("kept-{id}");
        lock(&self.stopped).insert(key.clone());
        Ok(agentbox_core::StoppedSandbox {
            key,
            stopped_at_ms: 1,
            size_bytes: 0,
            after_crash: false,
            metadata: Default::default(),
        })
    }

    async fn start(&self, key: &str, request: CreateRequest) -> agentbox_core::Result<SandboxInfo> {
        if !lock(&self.stopped).remove(key) {
            return Err(Error::NotFound(format!("stopped sandbox {key}")));
        }
        self.create(request).await
    }

    async fn discard_stopped(&self, key: &str) -> agentbox_core::Result<()> {
        if lock(&self.stopped).remove(key) { Ok(()) } else { Err(Error::NotFound(key.to_owned())) }
    }

    /// An echoing terminal: typed bytes come back; `exit` ends it with code 0, a hang-up with 129 (SIGHUP).
    async fn open_terminal(&self, id: &SandboxId, _: TerminalRequest) -> agentbox_core::Result<Terminal> {
        self.known(id)?;
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<TerminalInput>(16);
        let status = |exit_code, signal| ExitStatus {
            exit_code,
            signal,
            timed_out: false,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        let counter = self.hangups.clone();
        tokio::spawn(async move {
            loop {
                match in_rx.recv().await {
                    Some(TerminalInput::Data(d)) if d == b"exit" => {
                        let _ = out_tx.send(ExecEvent::Exit(status(0, None))).await;
                        return;
                    }
                    Some(TerminalInput::Data(d)) => {
                        let _ = out_tx.send(ExecEvent::Stdout(d)).await;
                    }
                    Some(TerminalInput::Resize(_)) => {}
                    None => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = out_tx.send(ExecEvent::Exit(status(129, Some(1)))).await;
                        return;
                    }
                }
            }
        });
        Ok(Terminal { output: ExecStream::new(out_rx), input: in_tx })
    }

    async fn destroy(&self, id: &SandboxId) -> agentbox_core::Result<()> {
        lock(&self.live).remove(id);
        lock(&self.destroyed).push(id.clone());
        Ok(())
    }

    async fn list(&self) -> agentbox_core::Result<Vec<SandboxInfo>> {
        Ok(lock(&self.live)
            .iter()
            .map(|id| SandboxInfo {
                id: id.clone(),
                backend: "fake".into(),
                state: SandboxState::Running,
                created_at_ms: 0,
                metadata: BTreeMap::new(),
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers, one per area.
// ---------------------------------------------------------------------------------------------

/// A manager over a fresh [`Fake`].
fn setup(config: ManagerConfig) -> (Arc<Fake>, SandboxManager) {
    let fake = Arc::new(Fake::default());
    let manager = SandboxManager::new(fake.clone(), config);
    (fake, manager)
}

fn run(name: &str) -> RunId {
    RunId::parse(name).unwrap()
}

/// Creates (or reuses) `name`'s sandbox with `options`.
async fn open(
    manager: &SandboxManager,
    name: &str,
    options: CreateOptions,
) -> agentbox_core::Result<(ManagedSandbox, bool)> {
    manager.get_or_create(&run(name), options).await
}

/// The default config with another idle timeout.
fn idle_after(secs: u64) -> CreateOptions {
    CreateOptions {
        preset: None,
        config: Some(SandboxConfig { idle_timeout: Duration::from_secs(secs), ..SandboxConfig::default() }),
    }
}

fn preset(p: Preset) -> CreateOptions {
    CreateOptions { preset: Some(p), config: None }
}

/// Lets every ready task run without moving the paused clock meaningfully.
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

/// Runs `line` in the run's sandbox and returns its exit code.
async fn exec(manager: &SandboxManager, name: &str, line: &str) -> i32 {
    manager.exec_collect(&run(name), ExecRequest::shell(line)).await.unwrap().exit_code
}

/// Probes the run's sandbox `times` times with `healthy` as the answer.
async fn probe(fake: &Fake, manager: &SandboxManager, name: &str, healthy: bool, times: u32) -> ManagedSandbox {
    let id = manager.get(&run(name)).unwrap().sandbox.id;
    if healthy {
        lock(&fake.unhealthy).remove(&id);
    } else {
        lock(&fake.unhealthy).insert(id);
    }
    let mut last = None;
    for _ in 0..times {
        last = Some(manager.check_health(&run(name)).await.unwrap());
    }
    last.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reuse of a run's sandbox.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_run_reuses_its_sandbox_unless_asked_for_another_config() {
    let (fake, m) = setup(ManagerConfig::default());
    let (first, created) = open(&m, "r1", preset(Preset::Lightweight)).await.unwrap();
    assert!(created);
    assert_eq!(first.config, Preset::Lightweight.config());
    assert_eq!(first.preset, Some(Preset::Lightweight));
    assert_eq!(first.sandbox.metadata.get("run_id").map(String::as_str), Some("r1"));

    // No config, or the same one, gives the same sandbox.
    for options in [
        CreateOptions::default(),
        preset(Preset::Lightweight),
        CreateOptions { preset: None, config: Some(Preset::Lightweight.config()) },
    ] {
        let (again, created) = open(&m, "r1", options).await.unwrap();
        assert!(!created);
        assert_eq!(again.sandbox.id, first.sandbox.id);
    }

    // Another config is a conflict, and leaves the sandbox alone.
    let other = SandboxConfig { memory_mb: 300, ..Preset::Lightweight.config() };
    for options in [preset(Preset::HeavyCompute), CreateOptions { preset: None, config: Some(other) }] {
        let err = open(&m, "r1", options).await.unwrap_err();
        assert!(matches!(err, Error::Conflict(ref msg) if msg.contains("r1")), "{err}");
    }
    assert_eq!(fake.create_count(), 1);
    assert_eq!(m.get(&run("r1")).unwrap().sandbox.id, first.sandbox.id);

    // Another run gets its own sandbox.
    let (second, created) = open(&m, "r2", CreateOptions::default()).await.unwrap();
    assert!(created);
    assert_ne!(second.sandbox.id, first.sandbox.id);
    assert_eq!(m.list().iter().map(|s| s.run_id.as_str()).collect::<Vec<_>>(), ["r1", "r2"]);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_refused_with_every_problem() {
    let (fake, m) = setup(ManagerConfig::default());
    let bad = SandboxConfig { memory_mb: 0, cpu_count: 0, ..SandboxConfig::default() };
    let err = open(&m, "r1", CreateOptions { preset: None, config: Some(bad) }).await.unwrap_err();
    let Error::InvalidConfig(problems) = &err else { panic!("expected InvalidConfig, got {err}") };
    assert_eq!(problems.0.len(), 2, "{err}");
    assert!(err.to_string().contains("memory_mb: must be at least 16, got 0"), "{err}");
    assert_eq!(fake.create_count(), 0);
    assert!(matches!(m.get(&run("r1")), Err(Error::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn concurrent_get_or_create_for_one_run_creates_once() {
    let (fake, m) = setup(ManagerConfig::default());
    fake.set_create_delay(Duration::from_secs(2));
    let results = futures_join(&m, "r1", 5).await;
    let ids: BTreeSet<_> = results.iter().map(|(s, _)| s.sandbox.id.clone()).collect();
    assert_eq!(ids.len(), 1, "every caller sees the same sandbox: {ids:?}");
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    assert_eq!(fake.create_count(), 1);
    assert_eq!(m.stats().created, 1);
}

/// Runs `n` concurrent `get_or_create` calls for one run.
async fn futures_join(m: &SandboxManager, name: &str, n: usize) -> Vec<(ManagedSandbox, bool)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let m = m.clone();
            let r = run(name);
            tokio::spawn(async move { m.get_or_create(&r, CreateOptions::default()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The warm pool.
// ---------------------------------------------------------------------------------------------

fn pooled(sizes: &[(Preset, usize)]) -> ManagerConfig {
    ManagerConfig { pool_sizes: sizes.iter().copied().collect(), ..ManagerConfig::default() }
}

#[tokio::test(start_paused = true)]
async fn the_pool_is_filled_served_from_and_refilled() {
    let (fake, m) = setup(pooled(&[(Preset::Lightweight, 2), (Preset::Browser, 1)]));
    m.fill_pool().await;
    assert_eq!((m.pool_len(Preset::Lightweight), m.pool_len(Preset::Browser), m.pool_len(Preset::Default)), (2, 1, 0));
    assert_eq!(fake.create_count(), 3);
    let pool_ids = fake.live();
    // Filling a full pool creates nothing.
    m.fill_pool().await;
    assert_eq!(fake.create_count(), 3);

    // A run asking for a pooled preset takes a warm sandbox: no create call for the run.
    let (got, created) = open(&m, "r1", preset(Preset::Lightweight)).await.unwrap();
    assert!(created);
    assert!(pool_ids.contains(&got.sandbox.id));
    assert_eq!(got.sandbox.metadata.get("run_id").map(String::as_str), Some("r1"));
    assert_eq!(fake.creates_for("r1"), 0);
    assert_eq!(m.stats().pool_hits, 1);

    // The pool refills in the background.
    settle().await;
    assert_eq!(m.pool_len(Preset::Lightweight), 2);
    assert_eq!(fake.create_count(), 4);
    assert_eq!(fake.creates_for("r1"), 0);

    // A preset without a pool, or a modified config, is created for the run.
    let (fresh, _) = open(&m, "r2", preset(Preset::HeavyCompute)).await.unwrap();
    assert!(!pool_ids.contains(&fresh.sandbox.id));
    let custom = SandboxConfig { memory_mb: 300, ..Preset::Lightweight.config() };
    open(&m, "r3", CreateOptions { preset: Some(Preset::Lightweight), config: Some(custom) }).await.unwrap();
    assert_eq!((fake.creates_for("r2"), fake.creates_for("r3")), (1, 1));
    assert_eq!(m.stats().pool_hits, 1);
    assert_eq!(m.pool_len(Preset::Lightweight), 2);
}

#[tokio::test(start_paused = true)]
async fn default_options_are_served_from_the_default_pool() {
    let (fake, m) = setup(pooled(&[(Preset::Default, 1)]));
    m.fill_pool().await;
    let (got, created) = open(&m, "r1", CreateOptions::default()).await.unwrap();
    assert!(created);
    assert_eq!((fake.creates_for("r1"), m.stats().pool_hits), (0, 1));
    assert_eq!(got.config, Preset::Default.config());
}

// ---------------------------------------------------------------------------------------------
// Idle expiry and the periodic cleanup.
// ---------------------------------------------------------------------------------------------

/// Runs one cleanup pass and returns the expired runs' names.
async fn expire(m: &SandboxManager) -> Vec<String> {
    m.cleanup_idle().await.into_iter().map(|r| r.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn idle_sandboxes_are_destroyed_after_their_idle_timeout() {
    let (fake, m) = setup(ManagerConfig::default());
    let (a, _) = open(&m, "short", idle_after(60)).await.unwrap();
    let (b, _) = open(&m, "long", idle_after(600)).await.unwrap();

    advance(Duration::from_secs(59)).await;
    assert!(expire(&m).await.is_empty());

    advance(Duration::from_secs(2)).await;
    assert_eq!(expire(&m).await, ["short"]);
    assert_eq!(fake.destroyed(), std::slice::from_ref(&a.sandbox.id));
    assert!(matches!(m.get(&run("short")), Err(Error::NotFound(_))));
    assert_eq!(m.get(&run("long")).unwrap().sandbox.id, b.sandbox.id);

    // Use resets the idle clock.
    advance(Duration::from_secs(500)).await;
    assert_eq!(exec(&m, "long", "exit 0").await, 0);
    advance(Duration::from_secs(500)).await;
    assert!(expire(&m).await.is_empty());
    advance(Duration::from_secs(101)).await;
    assert_eq!(expire(&m).await, ["long"]);
    assert_eq!(fake.live(), BTreeSet::new());
    assert_eq!((m.stats().expired, m.stats().destroyed), (2, 2));

    // An expired run starts over with a new sandbox.
    let (again, created) = open(&m, "short", idle_after(60)).await.unwrap();
    assert!(created);
    assert_ne!(again.sandbox.id, a.sandbox.id);
}

#[tokio::test(start_paused = true)]
async fn cleanup_racing_an_exec_in_flight_keeps_the_sandbox() {
    let (fake, m) = setup(ManagerConfig::default());
    let (sb, _) = open(&m, "r1", idle_after(60)).await.unwrap();

    let running = {
        let m = m.clone();
        tokio::spawn(async move { exec(&m, "r1", "sleep 120; echo done; exit 7").await })
    };
    settle().await;
    assert_eq!(m.get(&run("r1")).unwrap().in_flight, 1);

    // Idle for longer than the timeout by the clock, but busy: not destroyed.
    advance(Duration::from_secs(90)).await;
    assert!(expire(&m).await.is_empty());
    assert!(fake.live().contains(&sb.sandbox.id));

    // The exec finishes normally; its end counts as the last use.
    assert_eq!(running.await.unwrap(), 7);
    assert_eq!(m.get(&run("r1")).unwrap().in_flight, 0);
    advance(Duration::from_secs(59)).await;
    assert!(expire(&m).await.is_empty());
    advance(Duration::from_secs(2)).await;
    assert_eq!(expire(&m).await, ["r1"]);
    assert!(fake.live().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_streaming_exec_keeps_the_run_busy_until_its_stream_ends() {
    let (fake, m) = setup(ManagerConfig::default());
    open(&m, "r1", idle_after(60)).await.unwrap();
    let mut stream = m.exec(&run("r1"), ExecRequest::shell("sleep 100; echo hi; exit 0")).await.unwrap();
    advance(Duration::from_secs(61)).await;
    assert!(expire(&m).await.is_empty());
    let mut events = Vec::new();
    while let Some(e) = stream.next().await {
        events.push(e);
    }
    assert!(matches!(events.last(), Some(ExecEvent::Exit(s)) if s.exit_code == 0));
    assert_eq!(m.get(&run("r1")).unwrap().in_flight, 0);
    // A dropped stream releases the run too.
    let stream = m.exec(&run("r1"), ExecRequest::shell("sleep 100; exit 0")).await.unwrap();
    drop(stream);
    assert_eq!(m.get(&run("r1")).unwrap().in_flight, 0);
    advance(Duration::from_secs(61)).await;
    assert_eq!(expire(&m).await, ["r1"]);
    assert!(fake.live().is_empty());
}

#[tokio::test(start_paused = true)]
async fn start_runs_the_cleanup_every_five_minutes_by_default() {
    let (fake, m) = setup(ManagerConfig::default());
    assert_eq!(m.config().cleanup_interval, Duration::from_secs(300));
    m.start();
    let (sb, _) = open(&m, "r1", idle_after(60)).await.unwrap();

    // Idle since second 60, but nothing looks before the first 5-minute tick.
    advance(Duration::from_secs(299)).await;
    settle().await;
    assert!(m.get(&run("r1")).is_ok());

    advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(matches!(m.get(&run("r1")), Err(Error::NotFound(_))));
    assert_eq!(fake.destroyed(), [sb.sandbox.id]);
    assert_eq!(m.stats().expired, 1);

    // And again at the next tick.
    open(&m, "r2", idle_after(60)).await.unwrap();
    advance(Duration::from_secs(290)).await;
    settle().await;
    assert!(m.get(&run("r2")).is_ok());
    advance(Duration::from_secs(20)).await;
    settle().await;
    assert!(m.get(&run("r2")).is_err());
    m.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Health checks.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn health_failures_are_counted_and_a_pass_resets_them() {
    let (fake, m) = setup(ManagerConfig { max_health_failures: 3, ..ManagerConfig::default() });
    let (sb, _) = open(&m, "r1", CreateOptions::default()).await.unwrap();
    assert!(sb.healthy);
    assert_eq!(sb.last_check_ms, None);

    let s = probe(&fake, &m, "r1", false, 2).await;
    assert_eq!((s.healthy, s.health_check_failures, s.state), (false, 2, SandboxState::Unhealthy));
    assert!(s.last_check_ms.is_some());
    let metrics = m.metrics(&run("r1")).await.unwrap();
    assert_eq!((metrics.is_healthy, metrics.health_check_failures), (false, 2));

    let s = probe(&fake, &m, "r1", true, 1).await;
    assert_eq!((s.healthy, s.health_check_failures, s.state), (true, 0, SandboxState::Running));
    assert_eq!(s.sandbox.id, sb.sandbox.id);
    assert_eq!(fake.create_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn n_consecutive_health_failures_recreate_the_sandbox() {
    let (fake, m) = setup(ManagerConfig { max_health_failures: 3, ..ManagerConfig::default() });
    let (old, _) = open(&m, "r1", preset(Preset::Lightweight)).await.unwrap();
    exec(&m, "r1", "exit 4").await;

    let s = probe(&fake, &m, "r1", false, 3).await;
    assert_ne!(s.sandbox.id, old.sandbox.id, "a new sandbox replaces the failing one");
    assert_eq!((s.healthy, s.health_check_failures, s.state), (true, 0, SandboxState::Running));
    assert_eq!(s.config, old.config);
    assert_eq!(s.execution_count, 1, "the run's counters survive recreation");
    assert_eq!(fake.destroyed(), std::slice::from_ref(&old.sandbox.id));
    assert_eq!(fake.live(), BTreeSet::from([s.sandbox.id.clone()]));
    assert_eq!(fake.creates_for("r1"), 2);
    assert_eq!(m.stats().recreated, 1);
    // The run keeps working on its new sandbox.
    assert_eq!(exec(&m, "r1", "exit 0").await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_does_not_answer_in_time_is_a_failure() {
    let config = ManagerConfig { health_check_timeout: Duration::from_secs(5), ..ManagerConfig::default() };
    let (fake, m) = setup(config);
    let (sb, _) = open(&m, "r1", CreateOptions::default()).await.unwrap();
    lock(&fake.hung).insert(sb.sandbox.id.clone());
    let s = m.check_health(&run("r1")).await.unwrap();
    assert_eq!((s.healthy, s.health_check_failures), (false, 1));
}

#[tokio::test(start_paused = true)]
async fn recreation_during_an_exec_does_not_leave_the_run_busy_forever() {
    let (fake, m) = setup(ManagerConfig { max_health_failures: 1, ..ManagerConfig::default() });
    let (old, _) = open(&m, "r1", idle_after(60)).await.unwrap();
    let running = {
        let m = m.clone();
        tokio::spawn(async move { exec(&m, "r1", "sleep 30; exit 0").await })
    };
    settle().await;
    let s = probe(&fake, &m, "r1", false, 1).await;
    assert_ne!(s.sandbox.id, old.sandbox.id);
    running.await.unwrap();
    assert_eq!(m.get(&run("r1")).unwrap().in_flight, 0);
    advance(Duration::from_secs(61)).await;
    assert_eq!(expire(&m).await, ["r1"]);
    assert!(fake.live().is_empty());
}

#[tokio::test(start_paused = true)]
async fn start_probes_periodically_and_recreates_after_n_failures() {
    let config = ManagerConfig {
        health_check_interval: Duration::from_secs(30),
        max_health_failures: 3,
        ..ManagerConfig::default()
    };
    let (fake, m) = setup(config);
    m.start();
    let (old, _) = open(&m, "r1", CreateOptions::default()).await.unwrap();
    lock(&fake.unhealthy).insert(old.sandbox.id.clone());

    for expected in 1..=2 {
        advance(Duration::from_secs(30)).await;
        settle().await;
        assert_eq!(m.get(&run("r1")).unwrap().health_check_failures, expected);
    }
    advance(Duration::from_secs(30)).await;
    settle().await;
    let s = m.get(&run("r1")).unwrap();
    assert_ne!(s.sandbox.id, old.sandbox.id);
    assert_eq!(s.health_check_failures, 0);
    assert_eq!(fake.destroyed(), [old.sandbox.id]);
    m.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Execution counters.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn executions_are_counted_with_the_last_exit_code() {
    let (_fake, m) = setup(ManagerConfig::default());
    let (sb, _) = open(&m, "r1", CreateOptions::default()).await.unwrap();
    assert_eq!((sb.execution_count, sb.last_exit_code), (0, None));

    let out = m.exec_collect(&run("r1"), ExecRequest::shell("echo hello; exit 0")).await.unwrap();
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "hello\n"));
    assert_eq!(exec(&m, "r1", "exit 3").await, 3);
    let code = m.run_code_collect(&run("r1"), CodeRequest::new(agentbox_core::Language::Bash, "exit 5")).await.unwrap();
    assert_eq!(code.exit_code, 5);

    let s = m.get(&run("r1")).unwrap();
    assert_eq!((s.execution_count, s.last_exit_code), (3, Some(5)));
    let metrics = m.metrics(&run("r1")).await.unwrap();
    assert_eq!((metrics.execution_count, metrics.last_exit_code, metrics.memory_used_mb), (3, Some(5), 42.0));
    assert_eq!(m.stats().executions, 3);

    // Other runs have their own counters; unknown runs are not found.
    open(&m, "r2", CreateOptions::default()).await.unwrap();
    assert_eq!(m.get(&run("r2")).unwrap().execution_count, 0);
    let err = m.exec_collect(&run("nope"), ExecRequest::shell("exit 0")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(ref msg) if msg.contains("nope")), "{err}");
    assert_eq!(m.stats().executions, 3);
}

// ---------------------------------------------------------------------------------------------
// Package installation at create.
// ---------------------------------------------------------------------------------------------

fn with_packages(packages: &[&str]) -> CreateOptions {
    let config = SandboxConfig {
        pre_install_packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        ..SandboxConfig::default()
    };
    CreateOptions { preset: None, config: Some(config) }
}

#[tokio::test(start_paused = true)]
async fn packages_are_installed_when_the_sandbox_is_created() {
    let (fake, m) = setup(ManagerConfig::default());
    let (sb, _) = open(&m, "r1", with_packages(&["pandas", "npm:lodash@4"])).await.unwrap();
    assert_eq!(*lock(&fake.installs), [(sb.sandbox.id, vec!["pip:pandas".to_owned(), "npm:lodash@4".to_owned()])]);
    // Reuse installs nothing again; a config without packages installs nothing.
    open(&m, "r1", CreateOptions::default()).await.unwrap();
    open(&m, "r2", CreateOptions::default()).await.unwrap();
    assert_eq!(lock(&fake.installs).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Startup timeout and limits.
// ---------------------------------------------------------------------------------------------

fn starting_within(secs: u64) -> CreateOptions {
    CreateOptions {
        preset: None,
        config: Some(SandboxConfig { startup_timeout: Duration::from_secs(secs), ..SandboxConfig::default() }),
    }
}

#[tokio::test(start_paused = true)]
async fn creation_slower_than_startup_timeout_fails_and_frees_the_run() {
    let (fake, m) = setup(ManagerConfig::default());
    fake.set_create_delay(Duration::from_secs(10));
    let err = open(&m, "r1", starting_within(5)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(ref msg) if msg.contains("startup_timeout")), "{err}");
    assert!(matches!(m.get(&run("r1")), Err(Error::NotFound(_))));
    assert!(fake.live().is_empty());

    // The run can be created again once the backend is fast enough.
    let (sb, created) = open(&m, "r1", starting_within(20)).await.unwrap();
    assert!(created);
    assert_eq!(fake.live(), BTreeSet::from([sb.sandbox.id]));
}

#[tokio::test(start_paused = true)]
async fn max_sandboxes_caps_runs_but_not_the_pool() {
    let config = ManagerConfig { max_sandboxes: Some(2), ..pooled(&[(Preset::Default, 1)]) };
    let (fake, m) = setup(config);
    m.fill_pool().await;
    open(&m, "a", CreateOptions::default()).await.unwrap();
    open(&m, "b", CreateOptions::default()).await.unwrap();
    let err = open(&m, "c", CreateOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::LimitExceeded(ref msg) if msg.contains("max_sandboxes")), "{err}");
    assert!(matches!(m.get(&run("c")), Err(Error::NotFound(_))));
    // Existing runs are still served at the limit.
    assert!(!open(&m, "a", CreateOptions::default()).await.unwrap().1);

    m.destroy(&run("a")).await.unwrap();
    open(&m, "c", CreateOptions::default()).await.unwrap();
    assert_eq!(m.list().len(), 2);
    settle().await;
    assert_eq!(fake.live().len(), 3, "two runs and one pooled sandbox");
}

// ---------------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_destroys_every_sandbox_the_manager_owns() {
    let (fake, m) = setup(pooled(&[(Preset::Lightweight, 2)]));
    m.start();
    settle().await;
    assert_eq!(m.pool_len(Preset::Lightweight), 2);
    open(&m, "r1", CreateOptions::default()).await.unwrap();
    open(&m, "r2", preset(Preset::HeavyCompute)).await.unwrap();
    assert_eq!(fake.live().len(), 4);

    m.shutdown().await;
    assert!(fake.live().is_empty(), "left alive: {:?}", fake.live());
    assert_eq!(fake.destroyed().len(), 4);
    assert!(m.list().is_empty());
    assert_eq!(m.pool_len(Preset::Lightweight), 0);
    assert_eq!(m.stats().destroyed, 4);

    // Nothing new is created afterwards, not even by the stopped background task.
    let err = open(&m, "r3", CreateOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::ShuttingDown(ref msg) if msg.contains("shutting down")), "{err}");
    advance(Duration::from_secs(3600)).await;
    settle().await;
    assert!(fake.live().is_empty());
    assert_eq!(fake.create_count(), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_creations_in_flight_and_destroys_them() {
    let (fake, m) = setup(pooled(&[(Preset::Lightweight, 1)]));
    fake.set_create_delay(Duration::from_secs(10));
    m.start();
    let pending = {
        let m = m.clone();
        tokio::spawn(async move { m.get_or_create(&run("r1"), CreateOptions::default()).await })
    };
    settle().await;
    // Both the pool's and the run's creations are in flight.
    assert!(fake.live().is_empty());

    m.shutdown().await;
    assert_eq!(fake.create_count(), 2);
    assert!(fake.live().is_empty(), "left alive: {:?}", fake.live());
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ShuttingDown(ref msg) if msg.contains("shutting down")), "{err}");
    assert!(m.list().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Exact call expectations with the mockall mock (feature `mock`).
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "mock")]
mod mocked {
    use super::*;
    use agentbox_core::MockSandboxBackend;

    #[tokio::test(start_paused = true)]
    async fn a_pool_hit_does_not_call_create() {
        // Exactly two creates: the pool's sandbox and its replacement, both without a run id.
        let mut mock = MockSandboxBackend::new();
        mock.expect_name().return_const("mock");
        mock.expect_prepare().returning(|_| Ok(()));
        let next = Arc::new(AtomicU64::new(0));
        mock.expect_create().times(2).withf(|req| !req.metadata.contains_key("run_id")).returning(move |req| {
            let n = next.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(SandboxInfo {
                id: SandboxId::new_unchecked(format!("pool-{n}")),
                backend: "mock".into(),
                state: SandboxState::Running,
                created_at_ms: 0,
                metadata: req.metadata,
            })
        });
        let m = SandboxManager::new(Arc::new(mock), pooled(&[(Preset::Default, 1)]));
        m.fill_pool().await;
        let (got, created) = open(&m, "r1", preset(Preset::Default)).await.unwrap();
        assert!(created);
        assert_eq!(got.sandbox.id.as_str(), "pool-1");
        settle().await;
        assert_eq!(m.pool_len(Preset::Default), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_install_destroys_the_sandbox_and_reports_why() {
        let mut mock = MockSandboxBackend::new();
        mock.expect_name().return_const("mock");
        mock.expect_prepare().returning(|_| Ok(()));
        mock.expect_create().times(1).returning(|req| {
            Ok(SandboxInfo {
                id: SandboxId::new_unchecked("sb-install"),
                backend: "mock".into(),
                state: SandboxState::Running,
                created_at_ms: 0,
                metadata: req.metadata,
            })
        });
        mock.expect_install_packages()
            .times(1)
            .withf(|id, pkgs| {
                id.as_str() == "sb-install" && pkgs.len() == 1 && pkgs[0].to_string() == "pip:no-such-package"
            })
            .returning(|_, _| Err(Error::backend("package install failed (exit 1): pip install no-such-package")));
        mock.expect_destroy().times(1).withf(|id| id.as_str() == "sb-install").returning(|_| Ok(()));
        let m = SandboxManager::new(Arc::new(mock), ManagerConfig::default());

        let err = open(&m, "r1", with_packages(&["no-such-package"])).await.unwrap_err();
        assert!(matches!(err, Error::Backend { message: ref msg, .. } if msg.contains("no-such-package")), "{err}");
        assert!(matches!(m.get(&run("r1")), Err(Error::NotFound(_))));
        assert_eq!((m.stats().created, m.stats().destroyed), (1, 1));
    }
}

/// The default config with another idle timeout and idle action.
fn idle_then(secs: u64, action: agentbox_config::IdleAction) -> CreateOptions {
    CreateOptions {
        preset: None,
        config: Some(SandboxConfig {
            idle_timeout: Duration::from_secs(secs),
            on_idle: action,
            ..SandboxConfig::default()
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_sandboxes_are_paused_or_stopped_as_configured() {
    use agentbox_config::IdleAction;
    let (fake, m) = setup(ManagerConfig::default());
    fake.keeps.store(true, Ordering::SeqCst);
    let (p, _) = open(&m, "pauses", idle_then(60, IdleAction::Pause)).await.unwrap();
    let (s, _) = open(&m, "stops", idle_then(60, IdleAction::Stop)).await.unwrap();
    advance(Duration::from_secs(61)).await;
    let mut kept = expire(&m).await;
    kept.sort();
    assert_eq!(kept, ["pauses", "stops"]);
    assert_eq!(m.get(&run("pauses")).unwrap().state, SandboxState::Paused);
    assert!(lock(&fake.paused).contains(&p.sandbox.id));
    let stopped = m.get(&run("stops")).unwrap();
    assert_eq!(stopped.state, SandboxState::Stopped);
    assert!(fake.destroyed().is_empty(), "nothing idle was destroyed");
    assert_eq!(m.stats().expired, 0);
    // Kept runs are not idle any more: later passes leave them alone.
    advance(Duration::from_secs(600)).await;
    assert!(expire(&m).await.is_empty());
    // A stopped run asked for again is started on its files; a stopped one is not counted as live.
    assert!(matches!(m.exec(&run("stops"), ExecRequest::shell("exit 0")).await, Err(Error::Conflict(_))));
    let (again, created) = open(&m, "stops", CreateOptions::default()).await.unwrap();
    assert!(!created);
    assert_eq!(again.state, SandboxState::Running);
    assert_ne!(again.sandbox.id, s.sandbox.id);
    assert!(lock(&fake.stopped).is_empty());
    // Stopped again, shutdown leaves it listed and its files kept; destroy discards them.
    m.stop_run(&run("stops")).await.unwrap();
    m.shutdown().await;
    assert_eq!(m.get(&run("stops")).unwrap().state, SandboxState::Stopped);
    assert_eq!(lock(&fake.stopped).len(), 1);
    m.destroy(&run("stops")).await.unwrap();
    assert!(lock(&fake.stopped).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_cannot_keep_an_idle_sandbox_destroys_it() {
    use agentbox_config::IdleAction;
    let (fake, m) = setup(ManagerConfig::default());
    let (s, _) = open(&m, "stops", idle_then(60, IdleAction::Stop)).await.unwrap();
    let (p, _) = open(&m, "pauses", idle_then(60, IdleAction::Pause)).await.unwrap();
    advance(Duration::from_secs(61)).await;
    expire(&m).await;
    assert!(m.list().is_empty());
    let destroyed: BTreeSet<SandboxId> = fake.destroyed().into_iter().collect();
    assert_eq!(destroyed, [s.sandbox.id, p.sandbox.id].into_iter().collect());
    assert!(matches!(m.stop_run(&run("nothing")).await, Err(Error::NotFound(_))));
}

// ---------------------------------------------------------------------------------------------
// Kept terminals.
// ---------------------------------------------------------------------------------------------

async fn type_in(t: &agentbox_core::AttachedTerminal, text: &str) {
    t.input.send(TerminalInput::Data(text.as_bytes().to_vec())).await.unwrap();
}

async fn next_text(t: &mut agentbox_core::AttachedTerminal) -> String {
    match t.output.next().await {
        Some(ExecEvent::Stdout(b)) => String::from_utf8(b).unwrap(),
        other => panic!("expected output, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_kept_terminal_replays_what_it_printed_while_detached_and_one_client_holds_it() {
    let (fake, m) = setup(ManagerConfig::default());
    open(&m, "t", CreateOptions::default()).await.unwrap();
    let mut first = m.open_kept_terminal(&run("t"), TerminalRequest::default()).await.unwrap();
    type_in(&first, "one ").await;
    assert_eq!(next_text(&mut first).await, "one ");
    let id = first.id.clone();
    // Typed, then detached before reading: the output is kept.
    type_in(&first, "two ").await;
    let input = first.input.clone();
    drop(first);
    settle().await;
    let listed = m.terminals(&run("t")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id.as_str(), listed[0].attached, listed[0].exited), (id.as_str(), false, false));
    assert_eq!(listed[0].command, "bash -l");
    assert_eq!(listed[0].buffered_bytes, 8);
    assert_eq!(fake.hangups.load(Ordering::SeqCst), 0, "detaching does not hang up");
    assert_eq!(m.get(&run("t")).unwrap().in_flight, 1, "the kept terminal counts as in flight");

    let mut second = m.attach_terminal(&run("t"), &id).unwrap();
    assert_eq!(second.dropped_bytes, 0);
    assert_eq!(next_text(&mut second).await, "one two ", "the buffer is replayed");
    type_in(&second, "three").await;
    assert_eq!(next_text(&mut second).await, "three", "then live output, nothing twice");
    assert!(m.terminals(&run("t")).unwrap()[0].attached);
    assert!(input.send(TerminalInput::Data(b"x".to_vec())).await.is_err(), "a detached client's input is refused");

    // A third client takes over: the second one's output ends without an exit, its input is refused.
    let mut third = m.attach_terminal(&run("t"), &id).unwrap();
    assert_eq!(second.output.next().await, None);
    assert!(second.input.send(TerminalInput::Data(b"x".to_vec())).await.is_err());
    assert_eq!(next_text(&mut third).await, "one two three");

    // Closing hangs up; the attached client gets the exit, and the terminal is forgotten.
    m.close_terminal(&run("t"), &id).unwrap();
    match third.output.next().await {
        Some(ExecEvent::Exit(s)) => assert_eq!(s.exit_code, 129),
        other => panic!("expected the exit, got {other:?}"),
    }
    assert_eq!(third.output.next().await, None);
    assert_eq!(fake.hangups.load(Ordering::SeqCst), 1);
    assert!(m.terminals(&run("t")).unwrap().is_empty());
    assert!(matches!(m.attach_terminal(&run("t"), &id), Err(Error::NotFound(_))));
    assert!(matches!(m.close_terminal(&run("t"), &id), Err(Error::NotFound(_))));
    settle().await;
    assert_eq!(m.get(&run("t")).unwrap().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn an_exit_nobody_saw_is_kept_for_the_next_attach_for_a_while() {
    let (_fake, m) = setup(ManagerConfig::default());
    open(&m, "t", CreateOptions::default()).await.unwrap();
    let first = m.open_kept_terminal(&run("t"), TerminalRequest::default()).await.unwrap();
    let (id, input) = (first.id.clone(), first.input.clone());
    drop(first);
    assert!(input.send(TerminalInput::Data(b"bye".to_vec())).await.is_err(), "a detached client can't type");
    let mut again = m.attach_terminal(&run("t"), &id).unwrap();
    type_in(&again, "bye").await;
    type_in(&again, "exit").await;
    drop(again);
    settle().await;
    let listed = m.terminals(&run("t")).unwrap();
    assert_eq!((listed[0].exited, listed[0].exit_code), (true, Some(0)));
    again = m.attach_terminal(&run("t"), &id).unwrap();
    assert_eq!(next_text(&mut again).await, "bye");
    assert!(matches!(again.output.next().await, Some(ExecEvent::Exit(s)) if s.exit_code == 0));
    assert_eq!(again.output.next().await, None);
    assert!(m.terminals(&run("t")).unwrap().is_empty(), "an exit once seen is forgotten");

    // Unseen, it expires.
    let other = m.open_kept_terminal(&run("t"), TerminalRequest::default()).await.unwrap();
    type_in(&other, "exit").await;
    drop(other);
    settle().await;
    assert_eq!(m.terminals(&run("t")).unwrap().len(), 1);
    advance(agentbox_core::EXITED_TERMINAL_KEEP).await;
    settle().await;
    assert!(m.terminals(&run("t")).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn destroying_a_run_ends_its_kept_terminals_and_a_run_has_a_bounded_number() {
    let (fake, m) = setup(ManagerConfig::default());
    open(&m, "t", CreateOptions::default()).await.unwrap();
    open(&m, "u", CreateOptions::default()).await.unwrap();
    for _ in 0..agentbox_core::MAX_TERMINALS_PER_RUN {
        drop(m.open_kept_terminal(&run("t"), TerminalRequest::default()).await.unwrap());
    }
    let refused = m.open_kept_terminal(&run("t"), TerminalRequest::default()).await.unwrap_err();
    assert!(matches!(&refused, Error::LimitExceeded(m) if m.contains("close one")), "{refused}");
    let kept = m.open_kept_terminal(&run("u"), TerminalRequest::default()).await.unwrap();
    drop(kept);
    settle().await;
    assert_eq!(m.get(&run("t")).unwrap().in_flight, agentbox_core::MAX_TERMINALS_PER_RUN);

    m.destroy(&run("t")).await.unwrap();
    settle().await;
    assert_eq!(fake.hangups.load(Ordering::SeqCst), agentbox_core::MAX_TERMINALS_PER_RUN as u64);
    assert!(matches!(m.terminals(&run("t")), Err(Error::NotFound(_))));
    // A new run of the same name starts with none.
    open(&m, "t", CreateOptions::default()).await.unwrap();
    assert!(m.terminals(&run("t")).unwrap().is_empty());
    assert_eq!(m.terminals(&run("u")).unwrap().len(), 1, "other runs keep theirs");

    m.shutdown().await;
    settle().await;
    assert_eq!(fake.hangups.load(Ordering::SeqCst), agentbox_core::MAX_TERMINALS_PER_RUN as u64 + 1);
}
