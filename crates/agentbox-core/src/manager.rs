//! The sandbox manager: one sandbox per run id, a warm pool per preset, idle
//! expiry, health checks with recreation, execution counters and shutdown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentbox_config::{IdleAction, NetworkConfig, Preset, SandboxConfig};
use agentbox_metrics::SandboxMetrics;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::LockExt;
use crate::backend::SandboxBackend;
use crate::types::{
    CodeRequest, CreateRequest, ExecOutput, ExecRequest, ExecStream, FileEntry, ProcessInfo, RunId, SandboxId,
    SandboxInfo, SandboxState,
};
use crate::{Error, Result};

/// How the manager pools, expires and checks sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Pre-created sandboxes kept ready per preset.
    pub pool_sizes: BTreeMap<Preset, usize>,
    /// How often idle sandboxes are looked for.
    pub cleanup_interval: Duration,
    /// How often every sandbox is probed.
    pub health_check_interval: Duration,
    /// Deadline of one probe.
    pub health_check_timeout: Duration,
    /// Consecutive failed probes after which a sandbox is recreated.
    pub max_health_failures: u32,
    /// Cap on sandboxes held for runs (the pool not included).
    pub max_sandboxes: Option<usize>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            pool_sizes: BTreeMap::new(),
            cleanup_interval: Duration::from_secs(300),
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
            max_health_failures: 3,
            max_sandboxes: None,
        }
    }
}

/// How to create a run's sandbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateOptions {
    /// The preset to start from (default when absent).
    pub preset: Option<Preset>,
    /// The full configuration; the preset's when absent.
    pub config: Option<SandboxConfig>,
}

impl CreateOptions {
    /// The configuration these options ask for.
    #[must_use]
    pub fn effective_config(&self) -> SandboxConfig {
        self.config.clone().unwrap_or_else(|| self.preset.unwrap_or_default().config())
    }

    fn asks_for_a_config(&self) -> bool {
        self.preset.is_some() || self.config.is_some()
    }
}

/// A run's sandbox as the manager sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManagedSandbox {
    /// The run.
    pub run_id: RunId,
    /// The backend's view.
    pub sandbox: SandboxInfo,
    /// State, as the manager tracks it.
    pub state: SandboxState,
    /// The effective configuration.
    pub config: SandboxConfig,
    /// The preset it started from.
    pub preset: Option<Preset>,
    /// Executions run.
    pub execution_count: u64,
    /// Exit code of the last execution.
    pub last_exit_code: Option<i32>,
    /// Whether the last probe passed (true before the first).
    pub healthy: bool,
    /// Consecutive failed probes.
    pub health_check_failures: u32,
    /// Time of the last probe, milliseconds since the Unix epoch.
    pub last_check_ms: Option<u64>,
    /// Executions and file operations in flight.
    pub in_flight: usize,
}

/// Counters over the manager's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ManagerStats {
    /// Sandboxes created by the backend (pool included).
    pub created: u64,
    /// Runs served from the warm pool.
    pub pool_hits: u64,
    /// Sandboxes destroyed.
    pub destroyed: u64,
    /// Sandboxes destroyed for being idle.
    pub expired: u64,
    /// Sandboxes recreated after failing health checks.
    pub recreated: u64,
    /// Executions started.
    pub executions: u64,
}

#[derive(Debug)]
struct Entry {
    sandbox: SandboxInfo,
    config: SandboxConfig,
    preset: Option<Preset>,
    state: SandboxState,
    last_used: Instant,
    busy: usize,
    execution_count: u64,
    last_exit_code: Option<i32>,
    health_failures: u32,
    healthy: bool,
    last_check_ms: Option<u64>,
}

impl Entry {
    /// Whether the run has a sandbox with processes (not stopped, starting or being destroyed).
    fn is_live(&self) -> bool {
        !matches!(self.state, SandboxState::Stopped | SandboxState::Creating | SandboxState::Destroying)
    }
}

#[derive(Debug)]
enum Slot {
    Creating(Arc<Notify>),
    Ready(Box<Entry>),
}

#[derive(Debug, Default)]
struct State {
    runs: HashMap<RunId, Slot>,
    pool: HashMap<Preset, VecDeque<SandboxInfo>>,
    pool_filling: HashMap<Preset, usize>,
    /// Recreations of unhealthy sandboxes in flight.
    recreating: usize,
    shut_down: bool,
}

impl State {
    /// Whether a creation is in flight that shutdown must wait for.
    fn creating(&self) -> bool {
        self.recreating > 0
            || self.pool_filling.values().any(|n| *n > 0)
            || self.runs.values().any(|s| matches!(s, Slot::Creating(_)))
    }

    /// Runs that count against `max_sandboxes`: all but the stopped ones, which hold no processes or memory.
    fn live_count(&self) -> usize {
        self.runs.values().filter(|s| !matches!(s, Slot::Ready(e) if e.state == SandboxState::Stopped)).count()
    }
}

struct Inner {
    backend: Arc<dyn SandboxBackend>,
    config: ManagerConfig,
    state: Mutex<State>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    /// Asks the maintenance task to stop (a stored permit, so it is not lost while the task is busy).
    stop: Arc<Notify>,
    /// Signalled whenever a creation in flight ends, so shutdown can wait for it.
    settled: Notify,
    stats: Counters,
    /// Kept terminals, per run.
    terminals: Arc<crate::terminal::sessions::TerminalSessions>,
}

/// The lifetime counters behind [`ManagerStats`], one named field each.
#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    pool_hits: AtomicU64,
    destroyed: AtomicU64,
    expired: AtomicU64,
    recreated: AtomicU64,
    executions: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ManagerStats {
        let s = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ManagerStats {
            created: s(&self.created),
            pool_hits: s(&self.pool_hits),
            destroyed: s(&self.destroyed),
            expired: s(&self.expired),
            recreated: s(&self.recreated),
            executions: s(&self.executions),
        }
    }
}

/// Counts one more.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Drives any [`SandboxBackend`] for many runs.
///
/// Each run id gets one sandbox, created on first use (from the warm pool when
/// one is ready) and reused until it is destroyed, idles out, or is replaced
/// after failing health checks. [`start`](Self::start) runs the pool refill,
/// idle cleanup and health checks in the background; [`shutdown`](Self::shutdown)
/// destroys everything the manager owns.
///
/// With the local backend, `backend` would be
/// `Arc::new(agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default())?)`.
/// (This example runs with the crate's `mock` feature, against a mock backend.)
///
#[cfg_attr(feature = "mock", doc = "```")]
#[cfg_attr(not(feature = "mock"), doc = "```ignore")]
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> agentbox_core::Result<()> {
/// use std::sync::Arc;
/// use agentbox_core::{CreateOptions, ExecRequest, ManagerConfig, RunId, SandboxBackend, SandboxManager};
/// use agentbox_core::config::Preset;
///
/// # let backend: Arc<dyn SandboxBackend> = agentbox_core::doc_backend();
/// let manager = SandboxManager::new(backend, ManagerConfig::default());
/// manager.start();
///
/// let run = RunId::parse("task-123")?;
/// let options = CreateOptions { preset: Some(Preset::Lightweight), config: None };
/// let (sandbox, created) = manager.get_or_create(&run, options).await?;
/// assert!(created);
///
/// // The same run id gets the same sandbox back.
/// let (again, created) = manager.get_or_create(&run, CreateOptions::default()).await?;
/// assert!(!created);
/// assert_eq!(again.sandbox.id, sandbox.sandbox.id);
///
/// let out = manager.exec_collect(&run, ExecRequest::shell("echo hi")).await?;
/// assert_eq!(out.stdout, "hi\n");
/// assert_eq!(manager.get(&run)?.execution_count, 1);
///
/// manager.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SandboxManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SandboxManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxManager").field("backend", &self.inner.backend.name()).finish_non_exhaustive()
    }
}

/// Marks a run busy while an operation is in flight, so cleanup never destroys it mid-use.
struct BusyGuard {
    inner: Weak<Inner>,
    run_id: RunId,
    sandbox_id: SandboxId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut st = inner.lock();
            if let Some(Slot::Ready(e)) = st.runs.get_mut(&self.run_id) {
                if e.sandbox.id == self.sandbox_id {
                    e.busy = e.busy.saturating_sub(1);
                    e.last_used = Instant::now();
                }
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }

    fn snapshot(run_id: &RunId, e: &Entry) -> ManagedSandbox {
        ManagedSandbox {
            run_id: run_id.clone(),
            sandbox: SandboxInfo { state: e.state, ..e.sandbox.clone() },
            state: e.state,
            config: e.config.clone(),
            preset: e.preset,
            execution_count: e.execution_count,
            last_exit_code: e.last_exit_code,
            healthy: e.healthy,
            health_check_failures: e.health_failures,
            last_check_ms: e.last_check_ms,
            in_flight: e.busy,
        }
    }

    async fn create_sandbox(
        &self,
        run_id: Option<&RunId>,
        preset: Option<Preset>,
        config: &SandboxConfig,
        from_snapshot: Option<&str>,
    ) -> Result<SandboxInfo> {
        let mut metadata = BTreeMap::new();
        if let Some(r) = run_id {
            metadata.insert("run_id".to_owned(), r.to_string());
        }
        if let Some(p) = preset {
            metadata.insert("preset".to_owned(), p.name().to_owned());
        }
        let request =
            CreateRequest { config: config.clone(), metadata, from_snapshot: from_snapshot.map(str::to_owned) };
        // What the create needs from elsewhere (an image to pull) doesn't count against startup_timeout.
        self.backend.prepare(config).await?;
        let info =
            tokio::time::timeout(config.startup_timeout, self.backend.create(request)).await.map_err(|_| {
                Error::Timeout(format!(
                    "creating a sandbox took longer than startup_timeout ({:?})",
                    config.startup_timeout
                ))
            })??;
        bump(&self.stats.created);
        let packages = config.packages()?;
        if !packages.is_empty() {
            if let Err(e) = self.backend.install_packages(&info.id, packages).await {
                self.destroy_quietly(&info.id).await;
                return Err(e);
            }
        }
        Ok(info)
    }

    /// A fresh sandbox for the run on the files of the backend's stopped sandbox `key`.
    async fn start_sandbox(
        &self,
        run_id: &RunId,
        preset: Option<Preset>,
        config: &SandboxConfig,
        key: &str,
    ) -> Result<SandboxInfo> {
        let mut metadata = BTreeMap::new();
        metadata.insert("run_id".to_owned(), run_id.to_string());
        if let Some(p) = preset {
            metadata.insert("preset".to_owned(), p.name().to_owned());
        }
        let request = CreateRequest { config: config.clone(), metadata, from_snapshot: None };
        self.backend.prepare(config).await?;
        let info =
            tokio::time::timeout(config.startup_timeout, self.backend.start(key, request)).await.map_err(|_| {
                Error::Timeout(format!(
                    "starting a sandbox took longer than startup_timeout ({:?})",
                    config.startup_timeout
                ))
            })??;
        bump(&self.stats.created);
        Ok(info)
    }

    async fn destroy_quietly(&self, id: &SandboxId) {
        match self.backend.destroy(id).await {
            Ok(()) => bump(&self.stats.destroyed),
            Err(e) => tracing::warn!(sandbox_id = %id, error = %e, "destroying a sandbox failed"),
        }
    }

    /// A warm sandbox for `config`, if the pool of its preset (default when absent) has one.
    fn take_from_pool(&self, preset: Option<Preset>, config: &SandboxConfig) -> Option<SandboxInfo> {
        let preset = preset.unwrap_or_default();
        if *config != preset.config() {
            return None;
        }
        self.lock().pool.get_mut(&preset)?.pop_front()
    }

    async fn fill_pool(self: &Arc<Self>) {
        for (&preset, &target) in &self.config.pool_sizes {
            loop {
                {
                    let mut st = self.lock();
                    if st.shut_down {
                        return;
                    }
                    let have = st.pool.get(&preset).map_or(0, VecDeque::len)
                        + st.pool_filling.get(&preset).copied().unwrap_or(0);
                    if have >= target {
                        break;
                    }
                    *st.pool_filling.entry(preset).or_default() += 1;
                }
                let made = self.create_sandbox(None, Some(preset), &preset.config(), None).await;
                let orphan = {
                    let mut st = self.lock();
                    match made {
                        Ok(info) if !st.shut_down => {
                            *st.pool_filling.entry(preset).or_default() -= 1;
                            st.pool.entry(preset).or_default().push_back(info);
                            None
                        }
                        // Still counted as filling, so shutdown waits until it is destroyed.
                        Ok(info) => Some(info),
                        Err(e) => {
                            *st.pool_filling.entry(preset).or_default() -= 1;
                            drop(st);
                            self.settled.notify_waiters();
                            tracing::warn!(preset = %preset, error = %e, "refilling the warm pool failed");
                            break;
                        }
                    }
                };
                if let Some(info) = orphan {
                    self.destroy_quietly(&info.id).await;
                    *self.lock().pool_filling.entry(preset).or_default() -= 1;
                    self.settled.notify_waiters();
                    return;
                }
            }
        }
    }

    fn acquire(self: &Arc<Self>, run_id: &RunId) -> Result<(SandboxId, BusyGuard)> {
        let mut st = self.lock();
        match st.runs.get_mut(run_id) {
            Some(Slot::Ready(e)) if e.state == SandboxState::Stopped => Err(Error::Conflict(format!(
                "run {run_id} is stopped; start it first (its files are kept, its processes are gone)"
            ))),
            Some(Slot::Ready(e)) if e.state == SandboxState::Creating => {
                Err(Error::Conflict(format!("run {run_id} is being started; retry shortly")))
            }
            Some(Slot::Ready(e)) if e.state != SandboxState::Destroying => {
                e.busy += 1;
                e.last_used = Instant::now();
                let id = e.sandbox.id.clone();
                Ok((id.clone(), BusyGuard { inner: Arc::downgrade(self), run_id: run_id.clone(), sandbox_id: id }))
            }
            Some(Slot::Creating(_)) => {
                Err(Error::Conflict(format!("run {run_id} is still being created; retry shortly")))
            }
            _ => Err(Error::NotFound(format!("run {run_id}"))),
        }
    }

    async fn cleanup(self: &Arc<Self>) -> Vec<RunId> {
        let now = Instant::now();
        let victims: Vec<(RunId, SandboxId, IdleAction)> = {
            let mut st = self.lock();
            st.runs
                .iter_mut()
                .filter_map(|(run, slot)| match slot {
                    Slot::Ready(e)
                        if e.busy == 0
                            && e.is_live()
                            && !(e.state == SandboxState::Paused && e.config.on_idle == IdleAction::Pause)
                            && now.duration_since(e.last_used) >= e.config.idle_timeout =>
                    {
                        let action = e.config.on_idle;
                        if action == IdleAction::Destroy {
                            e.state = SandboxState::Destroying;
                        }
                        Some((run.clone(), e.sandbox.id.clone(), action))
                    }
                    _ => None,
                })
                .collect()
        };
        let manager = SandboxManager { inner: self.clone() };
        for (run, id, action) in &victims {
            tracing::info!(run_id = %run, sandbox_id = %id, action = action.as_str(), "idle sandbox");
            let kept = match action {
                IdleAction::Destroy => None,
                IdleAction::Pause => Some(manager.pause(run).await.map(drop)),
                IdleAction::Stop => Some(manager.stop_run(run).await.map(drop)),
            };
            match kept {
                Some(Ok(())) => continue,
                Some(Err(e)) => {
                    // A backend that can't keep it idle loses it, as if it were destroy.
                    tracing::warn!(run_id = %run, error = %e, "an idle sandbox could not be kept ({}); destroying it", action.as_str());
                    let mut st = self.lock();
                    match st.runs.get_mut(run) {
                        Some(Slot::Ready(e)) if e.sandbox.id == *id && e.is_live() && e.busy == 0 => {
                            e.state = SandboxState::Destroying;
                        }
                        // It changed meanwhile (used, destroyed, or kept after all): left alone.
                        _ => continue,
                    }
                }
                None => {}
            }
            self.terminals.end_run(run);
            self.destroy_quietly(id).await;
            bump(&self.stats.expired);
            let mut st = self.lock();
            if matches!(st.runs.get(run), Some(Slot::Ready(e)) if e.sandbox.id == *id) {
                st.runs.remove(run);
            }
        }
        victims.into_iter().map(|(r, _, _)| r).collect()
    }

    async fn check_one(self: &Arc<Self>, run_id: &RunId) -> Result<ManagedSandbox> {
        let id = {
            let st = self.lock();
            match st.runs.get(run_id) {
                // A paused sandbox can't answer probes: it is neither checked nor recreated.
                // A paused sandbox can't answer probes, and a stopped or starting one has none to answer.
                Some(Slot::Ready(e))
                    if matches!(e.state, SandboxState::Paused | SandboxState::Stopped | SandboxState::Creating) =>
                {
                    return Ok(Self::snapshot(run_id, e));
                }
                Some(Slot::Ready(e)) if e.state != SandboxState::Destroying => e.sandbox.id.clone(),
                _ => return Err(Error::NotFound(format!("run {run_id}"))),
            }
        };
        let result = tokio::time::timeout(self.config.health_check_timeout, self.backend.health(&id)).await;
        let healthy = matches!(result, Ok(Ok(ref h)) if h.healthy);
        let recreate = {
            let mut st = self.lock();
            let Some(Slot::Ready(e)) = st.runs.get_mut(run_id) else {
                return Err(Error::NotFound(format!("run {run_id}")));
            };
            if e.sandbox.id != id {
                return Ok(Self::snapshot(run_id, e));
            }
            e.last_check_ms = Some(now_ms());
            e.healthy = healthy;
            if healthy {
                e.health_failures = 0;
                e.state = SandboxState::Running;
            } else {
                e.health_failures += 1;
                e.state = SandboxState::Unhealthy;
                tracing::warn!(run_id = %run_id, sandbox_id = %id, failures = e.health_failures, "health check failed");
            }
            (e.health_failures >= self.config.max_health_failures).then(|| (e.config.clone(), e.preset))
        };
        if let Some((config, preset)) = recreate {
            self.recreate(run_id, &id, &config, preset).await?;
        }
        let st = self.lock();
        match st.runs.get(run_id) {
            Some(Slot::Ready(e)) => Ok(Self::snapshot(run_id, e)),
            _ => Err(Error::NotFound(format!("run {run_id}"))),
        }
    }

    async fn recreate(
        self: &Arc<Self>,
        run_id: &RunId,
        old: &SandboxId,
        config: &SandboxConfig,
        preset: Option<Preset>,
    ) -> Result<()> {
        tracing::warn!(run_id = %run_id, sandbox_id = %old, "recreating unhealthy sandbox");
        {
            let mut st = self.lock();
            if st.shut_down {
                return Err(Error::ShuttingDown("the sandbox manager is shutting down; not recreating".into()));
            }
            st.recreating += 1;
        }
        // The files survive: where the backend can, a snapshot of the old sandbox's files seeds the new one.
        let keep = format!("recovery-{old}-{}", now_ms());
        let kept = match self.backend.snapshot(old, &keep).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(run_id = %run_id, error = %e, "no snapshot to recover the files from; recreating empty");
                false
            }
        };
        let mut made = self.create_sandbox(Some(run_id), preset, config, kept.then_some(keep.as_str())).await;
        if kept {
            if made.is_err() {
                tracing::warn!(run_id = %run_id, "recreating from the old sandbox's files failed; recreating empty");
                made = self.create_sandbox(Some(run_id), preset, config, None).await;
            }
            if let Err(e) = self.backend.delete_snapshot(&keep).await {
                tracing::warn!(run_id = %run_id, snapshot = %keep, error = %e, "dropping the recovery snapshot failed");
            }
        }
        let result = match made {
            Ok(fresh) => {
                if self.swap_in(run_id, old, fresh).await {
                    bump(&self.stats.recreated);
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.lock().recreating -= 1;
        self.settled.notify_waiters();
        result
    }

    /// Puts `fresh` in the run's place if the run still holds `old`, then destroys whichever of the two lost (the
    /// old one, or the fresh one if the run vanished or changed meanwhile). Returns whether it swapped.
    async fn swap_in(&self, run_id: &RunId, old: &SandboxId, fresh: SandboxInfo) -> bool {
        let swapped = {
            let mut st = self.lock();
            match st.runs.get_mut(run_id) {
                Some(Slot::Ready(e)) if e.sandbox.id == *old && e.state != SandboxState::Destroying => {
                    e.sandbox = fresh.clone();
                    e.state = SandboxState::Running;
                    e.healthy = true;
                    e.health_failures = 0;
                    e.last_used = Instant::now();
                    // Operations in flight were on the old sandbox; their guards no longer match.
                    e.busy = 0;
                    true
                }
                _ => false,
            }
        };
        if swapped {
            // Kept terminals ran on the old sandbox.
            self.terminals.end_run(run_id);
        }
        self.destroy_quietly(if swapped { old } else { &fresh.id }).await;
        swapped
    }

    async fn check_health(self: &Arc<Self>) {
        let runs: Vec<RunId> = self.lock().runs.keys().cloned().collect();
        for run in runs {
            if let Err(e) = self.check_one(&run).await {
                tracing::debug!(run_id = %run, error = %e, "health check skipped");
            }
        }
    }
}

impl SandboxManager {
    /// A manager over `backend`. Call [`start`](Self::start) to run pooling, expiry and health checks in the background.
    #[must_use]
    pub fn new(backend: Arc<dyn SandboxBackend>, config: ManagerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                state: Mutex::new(State::default()),
                maintenance: Mutex::new(None),
                stop: Arc::new(Notify::new()),
                settled: Notify::new(),
                stats: Default::default(),
                terminals: Arc::default(),
            }),
        }
    }

    /// The backend this manager drives.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn SandboxBackend> {
        &self.inner.backend
    }

    /// The manager's configuration.
    #[must_use]
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// Fills the warm pool and starts the periodic cleanup and health tasks.
    /// Must be called inside a tokio runtime. Calling it again while they run does nothing.
    pub fn start(&self) {
        let mut maintenance = self.inner.maintenance.lock_unpoisoned();
        if maintenance.as_ref().is_some_and(|t| !t.is_finished()) || self.inner.lock().shut_down {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        let cleanup_every = self.inner.config.cleanup_interval;
        let health_every = self.inner.config.health_check_interval;
        let task = tokio::spawn(async move {
            if let Some(inner) = weak.upgrade() {
                inner.fill_pool().await;
            }
            let mut cleanup = tokio::time::interval_at(Instant::now() + cleanup_every, cleanup_every);
            let mut health = tokio::time::interval_at(Instant::now() + health_every, health_every);
            // A pass that overran its period runs once, not in a burst.
            cleanup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = stop.notified() => return,
                    _ = cleanup.tick() => {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.cleanup().await;
                        inner.fill_pool().await;
                    }
                    _ = health.tick() => {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.check_health().await;
                    }
                }
            }
        });
        *maintenance = Some(task);
    }

    /// Creates the warm pool's missing sandboxes now.
    pub async fn fill_pool(&self) {
        self.inner.fill_pool().await;
    }

    /// Sandboxes ready in the warm pool, per preset.
    #[must_use]
    pub fn pool_len(&self, preset: Preset) -> usize {
        self.inner.lock().pool.get(&preset).map_or(0, VecDeque::len)
    }

    /// Returns the run's sandbox, creating it if needed; `true` when created now.
    ///
    /// A run that exists is reused when `options` ask for no config or the same one.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] listing every problem, [`Error::Conflict`] when the run exists with
    /// another config, [`Error::LimitExceeded`] at `max_sandboxes`, or the backend's error.
    pub async fn get_or_create(&self, run_id: &RunId, options: CreateOptions) -> Result<(ManagedSandbox, bool)> {
        self.get_or_create_from(run_id, options, None).await
    }

    /// Creates the run's sandbox from a snapshot's files (a fork): its own sandbox, quota and storage, starting
    /// with what the snapshot holds. The run must not exist yet.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the run exists, [`Error::NotFound`] for an unknown snapshot, as
    /// [`get_or_create`](Self::get_or_create) otherwise, and [`Error::Unsupported`] on backends without snapshots.
    pub async fn create_from_snapshot(
        &self,
        run_id: &RunId,
        snapshot: &str,
        options: CreateOptions,
    ) -> Result<ManagedSandbox> {
        let (sandbox, created) = self.get_or_create_from(run_id, options, Some(snapshot.to_owned())).await?;
        if created {
            Ok(sandbox)
        } else {
            Err(Error::Conflict(format!(
                "run {run_id} already has a sandbox; fork into a new run_id, or destroy this one first"
            )))
        }
    }

    /// Puts the run's files back to the snapshot `snapshot`: a new sandbox, with the run's configuration, starts
    /// from the snapshot's files and takes the run's place, and the old sandbox is destroyed. Processes are not
    /// part of a snapshot: none of the old sandbox's survive.
    ///
    /// # Errors
    /// Unknown run, a run being created or destroyed, [`Error::NotFound`] for an unknown snapshot,
    /// [`Error::Unsupported`] on backends without snapshots, or the backend's error (the run keeps its sandbox).
    pub async fn restore(&self, run_id: &RunId, snapshot: &str) -> Result<ManagedSandbox> {
        let (old, config, preset) = {
            let st = self.inner.lock();
            match st.runs.get(run_id) {
                Some(Slot::Ready(e)) if !e.is_live() => {
                    return Err(Error::Conflict(format!(
                        "run {run_id} is {}; a run's files are restored while it runs",
                        e.state.as_str()
                    )));
                }
                Some(Slot::Ready(e)) => (e.sandbox.id.clone(), e.config.clone(), e.preset),
                Some(Slot::Creating(_)) => return Err(Error::Conflict(format!("run {run_id} is still being created"))),
                None => return Err(Error::NotFound(format!("run {run_id}"))),
            }
        };
        let fresh = self.inner.create_sandbox(Some(run_id), preset, &config, Some(snapshot)).await?;
        if !self.inner.swap_in(run_id, &old, fresh).await {
            return Err(Error::Conflict(format!("run {run_id} changed while it was being restored; try again")));
        }
        let st = self.inner.lock();
        match st.runs.get(run_id) {
            Some(Slot::Ready(e)) => Ok(Inner::snapshot(run_id, e)),
            _ => Err(Error::NotFound(format!("run {run_id}"))),
        }
    }

    /// Pauses the run's sandbox (see the backend's `pause`); health checks skip it until it is resumed.
    ///
    /// # Errors
    /// Unknown run, a run that is not running, or the backend's error.
    pub async fn pause(&self, run_id: &RunId) -> Result<ManagedSandbox> {
        self.set_paused(run_id, true).await
    }

    /// Resumes the run's paused sandbox.
    ///
    /// # Errors
    /// Unknown run, a run that is not paused, or the backend's error.
    pub async fn resume(&self, run_id: &RunId) -> Result<ManagedSandbox> {
        self.set_paused(run_id, false).await
    }

    async fn set_paused(&self, run_id: &RunId, pause: bool) -> Result<ManagedSandbox> {
        let id = {
            let st = self.inner.lock();
            match st.runs.get(run_id) {
                Some(Slot::Ready(e)) if matches!(e.state, SandboxState::Stopped | SandboxState::Creating) => {
                    return Err(Error::Conflict(format!("run {run_id} is {}", e.state.as_str())));
                }
                Some(Slot::Ready(e)) if pause && e.state == SandboxState::Paused => {
                    return Ok(Inner::snapshot(run_id, e));
                }
                Some(Slot::Ready(e)) if !pause && e.state != SandboxState::Paused => {
                    return Err(Error::Conflict(format!("run {run_id} is not paused")));
                }
                Some(Slot::Ready(e)) if e.state == SandboxState::Destroying => {
                    return Err(Error::Conflict(format!("run {run_id} is being destroyed")));
                }
                Some(Slot::Ready(e)) => e.sandbox.id.clone(),
                Some(Slot::Creating(_)) => return Err(Error::Conflict(format!("run {run_id} is still being created"))),
                None => return Err(Error::NotFound(format!("run {run_id}"))),
            }
        };
        if pause {
            self.inner.backend.pause(&id).await?;
        } else {
            self.inner.backend.resume(&id).await?;
        }
        let mut st = self.inner.lock();
        let Some(Slot::Ready(e)) = st.runs.get_mut(run_id) else {
            return Err(Error::NotFound(format!("run {run_id}")));
        };
        e.state = if pause { SandboxState::Paused } else { SandboxState::Running };
        e.sandbox.state = e.state;
        e.last_used = Instant::now();
        Ok(Inner::snapshot(run_id, e))
    }

    /// Stops the run's sandbox: its processes end and its files stay on disk (see the backend's `stop`). The run
    /// stays, `stopped`, using no memory or CPU, until [`start_run`](Self::start_run) boots a fresh sandbox on its files
    /// or [`destroy`](Self::destroy) deletes them. Shutting the manager down leaves stopped runs as they are.
    ///
    /// # Errors
    /// Unknown run, a run being created, started or destroyed, [`Error::Unsupported`] on backends that can't,
    /// or the backend's error.
    pub async fn stop_run(&self, run_id: &RunId) -> Result<ManagedSandbox> {
        let (id, before) = {
            let mut st = self.inner.lock();
            match st.runs.get_mut(run_id) {
                Some(Slot::Ready(e)) if e.state == SandboxState::Stopped => return Ok(Inner::snapshot(run_id, e)),
                Some(Slot::Ready(e)) if !e.is_live() => {
                    return Err(Error::Conflict(format!("run {run_id} is {}", e.state.as_str())));
                }
                Some(Slot::Ready(e)) => {
                    let before = e.state;
                    // Nothing new starts on it meanwhile; operations in flight end with the processes.
                    e.state = SandboxState::Destroying;
                    (e.sandbox.id.clone(), before)
                }
                Some(Slot::Creating(_)) => return Err(Error::Conflict(format!("run {run_id} is still being created"))),
                None => return Err(Error::NotFound(format!("run {run_id}"))),
            }
        };
        // Its processes end with the stop, kept terminals' included.
        self.inner.terminals.end_run(run_id);
        let stopped = self.inner.backend.stop(&id).await;
        let mut st = self.inner.lock();
        let Some(Slot::Ready(e)) = st.runs.get_mut(run_id) else {
            return Err(Error::NotFound(format!("run {run_id}")));
        };
        match stopped {
            Ok(kept) => {
                e.sandbox.id = SandboxId::new_unchecked(kept.key);
                e.sandbox.created_at_ms = kept.stopped_at_ms;
                e.state = SandboxState::Stopped;
                e.busy = 0;
                e.healthy = true;
                e.health_failures = 0;
                bump(&self.inner.stats.destroyed);
                Ok(Inner::snapshot(run_id, e))
            }
            Err(err) => {
                e.state = before;
                Err(err)
            }
        }
    }

    /// Starts the run's stopped sandbox: a fresh sandbox with the run's configuration boots on its files.
    /// Starting a running run does nothing.
    ///
    /// # Errors
    /// Unknown run, a run being created or destroyed, [`Error::LimitExceeded`] at `max_sandboxes`, or the
    /// backend's error (the run stays stopped, and the start can be retried).
    pub async fn start_run(&self, run_id: &RunId) -> Result<ManagedSandbox> {
        let (key, config, preset) = {
            let mut st = self.inner.lock();
            if st.shut_down {
                return Err(Error::ShuttingDown("the sandbox manager is shutting down; no new sandboxes".into()));
            }
            let live = st.live_count();
            let max = self.inner.config.max_sandboxes;
            match st.runs.get_mut(run_id) {
                Some(Slot::Ready(e)) if e.is_live() => return Ok(Inner::snapshot(run_id, e)),
                Some(Slot::Ready(e)) if e.state == SandboxState::Stopped => {
                    if let Some(max) = max.filter(|m| live >= *m) {
                        return Err(Error::LimitExceeded(format!(
                            "{live} sandboxes are live, the maximum is {max}; destroy or stop one, or raise max_sandboxes"
                        )));
                    }
                    e.state = SandboxState::Creating;
                    let out = (e.sandbox.id.to_string(), e.config.clone(), e.preset);
                    st.recreating += 1;
                    out
                }
                Some(Slot::Ready(e)) => return Err(Error::Conflict(format!("run {run_id} is {}", e.state.as_str()))),
                Some(Slot::Creating(_)) => return Err(Error::Conflict(format!("run {run_id} is still being created"))),
                None => return Err(Error::NotFound(format!("run {run_id}"))),
            }
        };
        let mut started = self.inner.start_sandbox(run_id, preset, &config, &key).await.map(Ok);
        if let Ok(Ok(info)) = &started {
            if self.inner.lock().shut_down {
                // The manager shut down meanwhile: the files go back on the shelf rather than go with the sandbox.
                started = self.inner.backend.stop(&info.id).await.map(Err);
            }
        }
        let result = {
            let mut st = self.inner.lock();
            st.recreating -= 1;
            match (st.runs.get_mut(run_id), started) {
                (Some(Slot::Ready(e)), Ok(Ok(mut info))) => {
                    info.state = SandboxState::Running;
                    info.metadata.insert("run_id".into(), run_id.to_string());
                    e.sandbox = info;
                    e.state = SandboxState::Running;
                    e.last_used = Instant::now();
                    Ok(Inner::snapshot(run_id, e))
                }
                (Some(Slot::Ready(e)), Ok(Err(kept))) => {
                    e.sandbox.id = SandboxId::new_unchecked(kept.key);
                    e.state = SandboxState::Stopped;
                    Err(Error::ShuttingDown("the sandbox manager is shutting down; the run stays stopped".into()))
                }
                (Some(Slot::Ready(e)), Err(err)) => {
                    e.state = SandboxState::Stopped;
                    Err(err)
                }
                // Only this start takes a starting run out of the map.
                (_, Ok(_)) => Err(Error::NotFound(format!("run {run_id}"))),
                (_, Err(err)) => Err(err),
            }
        };
        self.inner.settled.notify_waiters();
        result
    }

    /// Registers a run stopped before (found in a registry after a restart): its sandbox is the backend's
    /// stopped sandbox `stopped`.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the run already has a sandbox.
    pub fn adopt_stopped(
        &self,
        run_id: &RunId,
        stopped: crate::StoppedSandbox,
        config: SandboxConfig,
        preset: Option<Preset>,
    ) -> Result<ManagedSandbox> {
        let mut metadata = BTreeMap::new();
        metadata.insert("run_id".to_owned(), run_id.to_string());
        let sandbox = SandboxInfo {
            id: SandboxId::new_unchecked(stopped.key),
            backend: self.inner.backend.name().to_owned(),
            state: SandboxState::Stopped,
            created_at_ms: stopped.stopped_at_ms,
            metadata,
        };
        self.adopt_as(run_id, sandbox, config, preset, SandboxState::Stopped)
    }

    /// The run's background processes (started with `spawn_background`), with where their output goes.
    ///
    /// # Errors
    /// Unknown run, or the backend's error.
    pub async fn list_processes(&self, run_id: &RunId) -> Result<Vec<ProcessInfo>> {
        self.with_sandbox(run_id, |b, id| async move { b.list_processes(&id).await }).await
    }

    /// Takes a read-only snapshot of the run's files named `name`.
    ///
    /// # Errors
    /// Unknown run, a taken name, or the backend's error.
    pub async fn snapshot(&self, run_id: &RunId, name: &str) -> Result<crate::SnapshotInfo> {
        self.with_sandbox(run_id, |b, id| async move { b.snapshot(&id, name).await }).await
    }

    /// Every snapshot the backend holds.
    ///
    /// # Errors
    /// The backend's.
    pub async fn list_snapshots(&self) -> Result<Vec<crate::SnapshotInfo>> {
        self.inner.backend.list_snapshots().await
    }

    /// Deletes a snapshot.
    ///
    /// # Errors
    /// Unknown snapshot, or the backend's error.
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.inner.backend.delete_snapshot(name).await
    }

    /// Makes a volume holding at most `limit_bytes` (see the backend's `create_volume`).
    ///
    /// # Errors
    /// A taken or invalid name, or [`Error::Unsupported`] on backends without volumes.
    pub async fn create_volume(&self, name: &str, limit_bytes: u64) -> Result<crate::VolumeInfo> {
        self.inner.backend.create_volume(name, limit_bytes).await
    }

    /// Every volume the backend holds.
    ///
    /// # Errors
    /// The backend's.
    pub async fn list_volumes(&self) -> Result<Vec<crate::VolumeInfo>> {
        self.inner.backend.list_volumes().await
    }

    /// Deletes a volume and its files.
    ///
    /// # Errors
    /// [`Error::NotFound`], or [`Error::Conflict`] while a sandbox has it mounted.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        self.inner.backend.delete_volume(name).await
    }

    async fn get_or_create_from(
        &self,
        run_id: &RunId,
        options: CreateOptions,
        from_snapshot: Option<String>,
    ) -> Result<(ManagedSandbox, bool)> {
        let config = options.effective_config();
        config.validate()?;
        loop {
            let wait = {
                let mut st = self.inner.lock();
                if st.shut_down {
                    return Err(Error::ShuttingDown("the sandbox manager is shutting down; no new sandboxes".into()));
                }
                match st.runs.get_mut(run_id) {
                    Some(Slot::Ready(e)) if e.state == SandboxState::Stopped && from_snapshot.is_none() => {
                        if options.asks_for_a_config() && e.config != config {
                            return Err(Error::Conflict(format!(
                                "run {run_id} is stopped with a different configuration; destroy it first or use another run_id"
                            )));
                        }
                        None
                    }
                    Some(Slot::Ready(e)) if e.state != SandboxState::Destroying => {
                        if options.asks_for_a_config() && e.config != config {
                            return Err(Error::Conflict(format!(
                                "run {run_id} already has a sandbox with a different configuration; destroy it first or use another run_id"
                            )));
                        }
                        e.last_used = Instant::now();
                        return Ok((Inner::snapshot(run_id, e), false));
                    }
                    Some(Slot::Ready(_)) => {
                        return Err(Error::Conflict(format!("run {run_id} is being destroyed; retry shortly")));
                    }
                    Some(Slot::Creating(n)) => Some(n.clone()),
                    None => {
                        let live = st.live_count();
                        if let Some(max) = self.inner.config.max_sandboxes.filter(|m| live >= *m) {
                            return Err(Error::LimitExceeded(format!(
                                "{live} sandboxes are live, the maximum is {max}; destroy one or raise max_sandboxes"
                            )));
                        }
                        st.runs.insert(run_id.clone(), Slot::Creating(Arc::new(Notify::new())));
                        break;
                    }
                }
            };
            // A stopped run asked for is started: its files are what the caller comes back for.
            let Some(wait) = wait else { return Ok((self.start_run(run_id).await?, false)) };
            let notified = wait.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering so a wake-up between the lock and here is not lost.
            if matches!(self.inner.lock().runs.get(run_id), Some(Slot::Creating(n)) if Arc::ptr_eq(n, &wait)) {
                notified.await;
            }
        }

        // The creation runs in its own task so a dropped caller can't leave a half-made run behind.
        let inner = self.inner.clone();
        let run = run_id.clone();
        let preset = options.preset;
        let task = tokio::spawn(async move {
            // A fork starts from its snapshot: never a pooled sandbox.
            let pooled = if from_snapshot.is_some() { None } else { inner.take_from_pool(preset, &config) };
            let from_pool = pooled.is_some();
            let made = match pooled {
                Some(info) => Ok(info),
                None => inner.create_sandbox(Some(&run), preset, &config, from_snapshot.as_deref()).await,
            };
            if from_pool {
                bump(&inner.stats.pool_hits);
                let refill = inner.clone();
                tokio::spawn(async move { refill.fill_pool().await });
            }
            // A shutdown that started meanwhile will not see this sandbox: destroy it while the
            // slot still says "creating", so shutdown waits for it.
            let orphan = match &made {
                Ok(info) if inner.lock().shut_down => Some(info.id.clone()),
                _ => None,
            };
            let made = match orphan {
                Some(id) => {
                    inner.destroy_quietly(&id).await;
                    Err(Error::ShuttingDown("the sandbox manager is shutting down; no new sandboxes".into()))
                }
                None => made,
            };
            let mut st = inner.lock();
            let notify = match st.runs.remove(&run) {
                Some(Slot::Creating(n)) => n,
                _ => Arc::new(Notify::new()),
            };
            let result = match made {
                Ok(mut info) => {
                    info.state = SandboxState::Running;
                    info.metadata.insert("run_id".into(), run.to_string());
                    let entry = Entry {
                        sandbox: info,
                        config,
                        preset,
                        state: SandboxState::Running,
                        last_used: Instant::now(),
                        busy: 0,
                        execution_count: 0,
                        last_exit_code: None,
                        health_failures: 0,
                        healthy: true,
                        last_check_ms: None,
                    };
                    let snap = Inner::snapshot(&run, &entry);
                    st.runs.insert(run.clone(), Slot::Ready(Box::new(entry)));
                    Ok(snap)
                }
                Err(e) => Err(e),
            };
            drop(st);
            notify.notify_waiters();
            inner.settled.notify_waiters();
            result
        });
        let snap = task.await.map_err(|e| Error::backend(format!("sandbox creation task failed: {e}")))??;
        Ok((snap, true))
    }

    /// Registers a sandbox that already exists (e.g. found alive after a restart).
    ///
    /// # Errors
    /// [`Error::Conflict`] if the run already has a sandbox.
    pub fn adopt(
        &self,
        run_id: &RunId,
        sandbox: SandboxInfo,
        config: SandboxConfig,
        preset: Option<Preset>,
    ) -> Result<ManagedSandbox> {
        self.adopt_as(run_id, sandbox, config, preset, SandboxState::Running)
    }

    fn adopt_as(
        &self,
        run_id: &RunId,
        sandbox: SandboxInfo,
        config: SandboxConfig,
        preset: Option<Preset>,
        state: SandboxState,
    ) -> Result<ManagedSandbox> {
        let mut st = self.inner.lock();
        if st.runs.contains_key(run_id) {
            return Err(Error::Conflict(format!("run {run_id} already has a sandbox")));
        }
        let entry = Entry {
            sandbox,
            config,
            preset,
            state,
            last_used: Instant::now(),
            busy: 0,
            execution_count: 0,
            last_exit_code: None,
            health_failures: 0,
            healthy: true,
            last_check_ms: None,
        };
        let snap = Inner::snapshot(run_id, &entry);
        st.runs.insert(run_id.clone(), Slot::Ready(Box::new(entry)));
        Ok(snap)
    }

    /// The run's sandbox.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run.
    pub fn get(&self, run_id: &RunId) -> Result<ManagedSandbox> {
        match self.inner.lock().runs.get(run_id) {
            Some(Slot::Ready(e)) => Ok(Inner::snapshot(run_id, e)),
            _ => Err(Error::NotFound(format!("run {run_id}"))),
        }
    }

    /// Every run's sandbox, sorted by run id.
    #[must_use]
    pub fn list(&self) -> Vec<ManagedSandbox> {
        let st = self.inner.lock();
        let mut out: Vec<_> = st
            .runs
            .iter()
            .filter_map(|(r, s)| match s {
                Slot::Ready(e) => Some(Inner::snapshot(r, e)),
                Slot::Creating(_) => None,
            })
            .collect();
        out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        out
    }

    /// Lifetime counters.
    #[must_use]
    pub fn stats(&self) -> ManagerStats {
        self.inner.stats.snapshot()
    }

    fn counted(&self, run_id: &RunId, stream: ExecStream) -> ExecStream {
        let weak = Arc::downgrade(&self.inner);
        let run = run_id.clone();
        stream.on_exit(move |status| {
            if let Some(inner) = weak.upgrade() {
                if let Some(Slot::Ready(e)) = inner.lock().runs.get_mut(&run) {
                    e.last_exit_code = Some(status.exit_code);
                }
            }
        })
    }

    fn start_exec(&self, run_id: &RunId) -> Result<(SandboxId, BusyGuard)> {
        let acquired = self.inner.acquire(run_id)?;
        if let Some(Slot::Ready(e)) = self.inner.lock().runs.get_mut(run_id) {
            e.execution_count += 1;
        }
        bump(&self.inner.stats.executions);
        Ok(acquired)
    }

    /// Starts a command in the run's sandbox and streams its events.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, or the backend's error.
    pub async fn exec(&self, run_id: &RunId, request: ExecRequest) -> Result<ExecStream> {
        let (id, guard) = self.start_exec(run_id)?;
        let stream = self.inner.backend.exec(&id, request).await?;
        Ok(self.counted(run_id, stream).with_guard(guard))
    }

    /// Starts a process on a new terminal in the run's sandbox (see
    /// [`SandboxBackend::open_terminal`]); it counts as an execution while it runs.
    ///
    /// # Errors
    /// As [`exec`](Self::exec); [`Error::Unsupported`] on a backend without terminals.
    pub async fn open_terminal(&self, run_id: &RunId, request: crate::TerminalRequest) -> Result<crate::Terminal> {
        let (id, guard) = self.start_exec(run_id)?;
        let mut terminal = self.inner.backend.open_terminal(&id, request).await?;
        terminal.output = self.counted(run_id, terminal.output).with_guard(guard);
        Ok(terminal)
    }

    /// Starts a process on a new kept terminal: one that outlives its client, to be reattached with
    /// [`attach_terminal`](Self::attach_terminal) (see [`crate::terminal::sessions`] for the rules).
    /// Answers the first client's attachment; dropping it detaches, [`close_terminal`](Self::close_terminal)
    /// hangs up.
    ///
    /// # Errors
    /// As [`open_terminal`](Self::open_terminal); [`Error::LimitExceeded`] when the run already has
    /// [`MAX_TERMINALS_PER_RUN`](crate::MAX_TERMINALS_PER_RUN) kept terminals running.
    pub async fn open_kept_terminal(
        &self,
        run_id: &RunId,
        request: crate::TerminalRequest,
    ) -> Result<crate::AttachedTerminal> {
        self.inner.terminals.check_room(run_id)?;
        let command = request.command.clone();
        let size = request.size;
        let terminal = self.open_terminal(run_id, request).await?;
        let attached = self.inner.terminals.register(run_id, command.as_ref(), size, terminal)?;
        // A destroy or stop that began meanwhile closed the run's kept terminals before this one was kept.
        let live = matches!(self.inner.lock().runs.get(run_id), Some(Slot::Ready(e)) if e.is_live());
        if !live {
            self.inner.terminals.end_run(run_id);
            return Err(Error::Conflict(format!("run {run_id} was stopped or destroyed while its terminal opened")));
        }
        Ok(attached)
    }

    /// Attaches to one of the run's kept terminals: its buffered output, then live output. Another
    /// client attached to it is detached.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run or terminal.
    pub fn attach_terminal(&self, run_id: &RunId, terminal_id: &str) -> Result<crate::AttachedTerminal> {
        self.get(run_id)?;
        self.inner.terminals.attach(run_id, terminal_id)
    }

    /// The run's kept terminals, oldest first.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run.
    pub fn terminals(&self, run_id: &RunId) -> Result<Vec<crate::TerminalSessionInfo>> {
        self.get(run_id)?;
        Ok(self.inner.terminals.list(run_id))
    }

    /// Hangs up one of the run's kept terminals (its processes get `SIGHUP`) and forgets it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run or terminal.
    pub fn close_terminal(&self, run_id: &RunId, terminal_id: &str) -> Result<()> {
        self.get(run_id)?;
        self.inner.terminals.close(run_id, terminal_id)
    }

    /// Runs a command and collects its output, capped at the sandbox's max_output_bytes.
    ///
    /// # Errors
    /// As [`exec`](Self::exec).
    pub async fn exec_collect(&self, run_id: &RunId, request: ExecRequest) -> Result<ExecOutput> {
        let cap = self.output_cap(run_id)?;
        Ok(self.exec(run_id, request).await?.collect(cap).await)
    }

    /// Runs code in the run's sandbox and streams its events.
    ///
    /// # Errors
    /// As [`exec`](Self::exec).
    pub async fn run_code(&self, run_id: &RunId, request: CodeRequest) -> Result<ExecStream> {
        let (id, guard) = self.start_exec(run_id)?;
        let stream = self.inner.backend.run_code(&id, request).await?;
        Ok(self.counted(run_id, stream).with_guard(guard))
    }

    /// Runs code and collects its output.
    ///
    /// # Errors
    /// As [`exec`](Self::exec).
    pub async fn run_code_collect(&self, run_id: &RunId, request: CodeRequest) -> Result<ExecOutput> {
        let cap = self.output_cap(run_id)?;
        Ok(self.run_code(run_id, request).await?.collect(cap).await)
    }

    fn output_cap(&self, run_id: &RunId) -> Result<usize> {
        let cap = self.get(run_id)?.config.max_output_bytes;
        Ok(usize::try_from(cap).unwrap_or(usize::MAX))
    }

    /// Runs `f` against the run's sandbox id while marking it busy.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, or `f`'s error.
    pub async fn with_sandbox<T, F, Fut>(&self, run_id: &RunId, f: F) -> Result<T>
    where
        F: FnOnce(Arc<dyn SandboxBackend>, SandboxId) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (id, _guard) = self.inner.acquire(run_id)?;
        f(self.inner.backend.clone(), id).await
    }

    /// Reads a file from the run's sandbox.
    ///
    /// # Errors
    /// As the backend's `read_file`.
    pub async fn read_file(&self, run_id: &RunId, path: &str) -> Result<Vec<u8>> {
        self.with_sandbox(run_id, |b, id| async move { b.read_file(&id, path).await }).await
    }

    /// Opens a file in the run's sandbox to read in bounded chunks.
    ///
    /// # Errors
    /// As the backend's `read_file_stream`.
    pub async fn read_file_stream(&self, run_id: &RunId, path: &str) -> Result<crate::FileStream> {
        self.with_sandbox(run_id, |b, id| async move { b.read_file_stream(&id, path).await }).await
    }

    /// Reads a file whole, refusing one over `max` bytes with [`Error::TooLarge`] before reading it.
    ///
    /// # Errors
    /// Too large, or as the backend's `read_file_stream`.
    pub async fn read_file_limited(&self, run_id: &RunId, path: &str, max: u64) -> Result<Vec<u8>> {
        let stream = self.read_file_stream(run_id, path).await?;
        stream.collect(max).await.map_err(|e| match e {
            Error::TooLarge(m) => Error::TooLarge(format!("{path}: {m}")),
            e => e,
        })
    }

    /// Writes a file in the run's sandbox from chunks (see the backend's `write_file_stream`).
    ///
    /// # Errors
    /// As the backend's `write_file_stream`.
    pub async fn write_file_stream(
        &self,
        run_id: &RunId,
        path: &str,
        upload: crate::FileUpload,
        max: u64,
    ) -> Result<u64> {
        self.with_sandbox(run_id, |b, id| async move { b.write_file_stream(&id, path, upload, max).await }).await
    }

    /// Writes a file in the run's sandbox.
    ///
    /// # Errors
    /// As the backend's `write_file`.
    pub async fn write_file(&self, run_id: &RunId, path: &str, data: Vec<u8>) -> Result<()> {
        self.with_sandbox(run_id, |b, id| async move { b.write_file(&id, path, data).await }).await
    }

    /// Lists a directory in the run's sandbox.
    ///
    /// # Errors
    /// As the backend's `list_dir`.
    pub async fn list_dir(&self, run_id: &RunId, path: &str) -> Result<Vec<FileEntry>> {
        self.with_sandbox(run_id, |b, id| async move { b.list_dir(&id, path).await }).await
    }

    /// Starts a background process in the run's sandbox.
    ///
    /// # Errors
    /// As the backend's `spawn_background`.
    pub async fn spawn_background(&self, run_id: &RunId, request: ExecRequest) -> Result<ProcessInfo> {
        self.with_sandbox(run_id, |b, id| async move { b.spawn_background(&id, request).await }).await
    }

    /// Replaces the run's network policy, live.
    ///
    /// # Errors
    /// As the backend's `update_network`.
    pub async fn update_network(&self, run_id: &RunId, network: NetworkConfig) -> Result<()> {
        let mut config = self.get(run_id)?.config;
        config.network = network.clone();
        config.validate()?;
        self.with_sandbox(run_id, |b, id| async move { b.update_network(&id, network).await }).await?;
        if let Some(Slot::Ready(e)) = self.inner.lock().runs.get_mut(run_id) {
            e.config = config;
        }
        Ok(())
    }

    /// The backend's metrics, with the manager's counters and health filled in.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, or the backend's error.
    pub async fn metrics(&self, run_id: &RunId) -> Result<SandboxMetrics> {
        let mut m = self.with_sandbox(run_id, |b, id| async move { b.metrics(&id).await }).await?;
        let snap = self.get(run_id)?;
        m.execution_count = snap.execution_count;
        m.last_exit_code = snap.last_exit_code;
        m.is_healthy = snap.healthy;
        m.health_check_failures = snap.health_check_failures;
        Ok(m)
    }

    /// One page of the run's egress audit log.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, or the backend's error.
    pub async fn egress_log(
        &self,
        run_id: &RunId,
        query: crate::egress::EgressQuery,
    ) -> Result<crate::egress::EgressPage> {
        self.with_sandbox(run_id, |b, id| async move { b.egress_log(&id, query).await }).await
    }

    /// Probes the run's sandbox now, counting a failure (and recreating after too many).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run.
    pub async fn check_health(&self, run_id: &RunId) -> Result<ManagedSandbox> {
        self.inner.check_one(run_id).await
    }

    /// Probes every sandbox once.
    pub async fn check_all_health(&self) {
        self.inner.check_health().await;
    }

    /// Destroys, pauses or stops (as each one's `on_idle` says) the sandboxes idle for longer than their
    /// idle_timeout; returns their runs.
    pub async fn cleanup_idle(&self) -> Vec<RunId> {
        self.inner.cleanup().await
    }

    /// Destroys the run's sandbox.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, or the backend's error (the run is forgotten either way).
    pub async fn destroy(&self, run_id: &RunId) -> Result<()> {
        let (id, stopped) = {
            let mut st = self.inner.lock();
            match st.runs.get_mut(run_id) {
                Some(Slot::Ready(e)) if e.state == SandboxState::Creating => {
                    return Err(Error::Conflict(format!("run {run_id} is being started; retry shortly")));
                }
                Some(Slot::Ready(e)) if e.state != SandboxState::Destroying => {
                    let stopped = e.state == SandboxState::Stopped;
                    e.state = SandboxState::Destroying;
                    (e.sandbox.id.clone(), stopped)
                }
                _ => return Err(Error::NotFound(format!("run {run_id}"))),
            }
        };
        self.inner.terminals.end_run(run_id);
        let result = if stopped {
            // A stopped run's sandbox is its kept files.
            self.inner.backend.discard_stopped(id.as_str()).await
        } else {
            self.inner.backend.destroy(&id).await
        };
        self.inner.lock().runs.remove(run_id);
        if result.is_ok() {
            bump(&self.inner.stats.destroyed);
        }
        result
    }

    /// Stops the background tasks and destroys every sandbox this manager owns, the pool included. Stopped runs
    /// are left as they are (listed, their files on disk).
    ///
    /// Creations in flight are waited for and their sandboxes destroyed too; callers waiting for
    /// them get [`Error::ShuttingDown`], as does every later [`get_or_create`](Self::get_or_create).
    pub async fn shutdown(&self) {
        self.inner.lock().shut_down = true;
        self.inner.terminals.end_all();
        let task = self.inner.maintenance.lock_unpoisoned().take();
        if let Some(task) = task {
            // Let a pass in progress finish rather than dropping it half-way (a half-made sandbox would leak).
            self.inner.stop.notify_one();
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the sandbox maintenance task failed");
            }
        }
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let (ids, pending) = {
                let mut st = self.inner.lock();
                // A run being started is left in place until its start settles (as stopped, or running).
                // Stopped runs stay listed, their files on disk: outliving this process is what stop is for.
                let ready: Vec<RunId> = st
                    .runs
                    .iter()
                    .filter(|(_, s)| {
                        matches!(s, Slot::Ready(e) if !matches!(e.state, SandboxState::Creating | SandboxState::Stopped))
                    })
                    .map(|(r, _)| r.clone())
                    .collect();
                // A sandbox already being destroyed is left to whoever is destroying it.
                let mut ids: Vec<SandboxId> = ready
                    .iter()
                    .filter_map(|r| match st.runs.remove(r) {
                        Some(Slot::Ready(e)) if e.is_live() => Some(e.sandbox.id),
                        _ => None,
                    })
                    .collect();
                ids.extend(st.pool.drain().flat_map(|(_, q)| q.into_iter().map(|i| i.id)));
                (ids, st.creating())
            };
            for id in ids {
                self.inner.destroy_quietly(&id).await;
            }
            if !pending {
                break;
            }
            settled.await;
        }
    }
}

/// A backend for documentation examples: the mock, answering every call successfully.
#[cfg(feature = "mock")]
#[doc(hidden)]
#[must_use]
pub fn doc_backend() -> Arc<dyn SandboxBackend> {
    use crate::backend::MockSandboxBackend;
    use crate::types::{ExecEvent, ExitStatus};
    let mut b = MockSandboxBackend::new();
    b.expect_name().return_const("mock");
    b.expect_prepare().returning(|_| Ok(()));
    b.expect_create().returning(|req| {
        Ok(SandboxInfo {
            id: SandboxId::new_unchecked("sb-doc"),
            backend: "mock".into(),
            state: SandboxState::Running,
            created_at_ms: 0,
            metadata: req.metadata,
        })
    });
    b.expect_exec().returning(|_, _| {
        Ok(ExecStream::from_events(vec![
            ExecEvent::Stdout(b"hi\n".to_vec()),
            ExecEvent::Exit(ExitStatus {
                exit_code: 0,
                signal: None,
                timed_out: false,
                oom_killed: false,
                duration: Duration::ZERO,
            }),
        ]))
    });
    b.expect_destroy().returning(|_| Ok(()));
    Arc::new(b)
}
