//! The host side: creating, driving and destroying sandboxes.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentbox_config::{CleanupPolicy, NetworkConfig, PackageSpec, SandboxConfig, SeccompProfile};
use agentbox_core::LockExt;
use agentbox_core::{
    CodeRequest, CreateRequest, Error, ExecRequest, ExecStream, FileEntry, FileStream, FileUpload, HealthStatus,
    Language, ProcessInfo, Result, SandboxBackend, SandboxId, SandboxInfo, SandboxState, SnapshotInfo,
};
use agentbox_hostfs::{Owner, Root};
use agentbox_metrics::SandboxMetrics;
use async_trait::async_trait;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;

use crate::cgroup::{Cgroups, Limits, SandboxCgroup};
use crate::error::LocalError;
use crate::netns::NetNs;
use crate::proto::{self, Kind};
use crate::{agent, seccomp, sys, transfer, zygote};

mod channel;
mod config;
mod create;
mod exec;
mod image;
mod owners;
mod ports;
mod setup;
mod spare;
mod storage;
mod upper;
mod volumes;

use channel::{Route, reader_loop};
pub use config::{HostProcess, LocalConfig};
use owners::{cgroup_parent, process_start};
use storage::storage_err;

/// An image's config digest, the generated files and the home: what an [`upper::UpperPlan`] is planned from.
type UpperPlanKey = (agentbox_image::Digest, Vec<(String, String)>, String);

/// A sandbox this backend runs: its record, its init and the channel to the init, for as long as it lives.
struct LiveSandbox {
    info: SandboxInfo,
    config: SandboxConfig,
    /// The init's pidfd: kill and wait through it, never by a pid that could be reused.
    pidfd: OwnedFd,
    #[cfg_attr(not(feature = "test-util"), expect(dead_code, reason = "read by the test-util hooks only"))]
    init_pid: i32,
    /// The init's network namespace, opened once at create: forwards never look the pid up again.
    netns: NetNs,
    cgroup: SandboxCgroup,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    routes: Arc<Mutex<HashMap<u32, Route>>>,
    alive: Arc<AtomicBool>,
    /// Set while the reader waits for an execution whose output stream is not read (see `reader_loop`).
    waiting: Arc<AtomicBool>,
    /// Frozen by `pause`: frames to the init would wait until `resume`, so they are refused meanwhile.
    paused: AtomicBool,
    next_id: AtomicU32,
    root: Root,
    /// The sandbox's layer of the storage pool (its home), when storage is disk-backed.
    layer: Option<agentbox_storage::Layer>,
    /// The host id range of its user namespace, when it has one.
    ids: Option<agentbox_storage::IdRange>,
    /// The volumes it has mounted, held as in use until it is dropped.
    #[expect(dead_code, reason = "held for its drop, never read")]
    volumes: volumes::VolumeHold,
    last_cpu: Mutex<Option<(Instant, u64)>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    forwards: Mutex<HashMap<u16, (String, tokio::task::JoinHandle<()>)>>,
    net: crate::net::Egress,
    /// The shared `/etc` template the sandbox binds, held so no process removes it while in use.
    #[expect(dead_code, reason = "held for its lock, never read")]
    etc: Option<Arc<crate::etc::Template>>,
    /// Where executions start when they name no directory: its image's working directory, if it sets one.
    working_dir: Option<String>,
    /// What runs when it starts (`SandboxConfig::start`, the image's Entrypoint and Cmd resolved).
    start: Option<Vec<String>>,
}

struct Inner {
    config: LocalConfig,
    cgroups: Cgroups,
    limitations: Vec<String>,
    seccomp_default: Vec<Vec<(u16, u8, u8, u32)>>,
    seccomp_strict: Vec<Vec<(u16, u8, u8, u32)>>,
    sandboxes: Mutex<HashMap<SandboxId, Arc<LiveSandbox>>>,
    etc: Arc<crate::etc::Templates>,
    /// This process as owner of sandbox cgroups: `o<pid>-<start time>` (see `cgroup_name`).
    owner: String,
    /// An empty directory each init mounts its root on, inside its own mount namespace.
    root_mountpoint: PathBuf,
    /// The disk-backed storage pool, when there is one.
    pool: Option<Arc<agentbox_storage::Pool>>,
    /// The secrets and destination trust every sandbox's egress proxy shares.
    egress: crate::net::EgressContext,
    /// The image store, when images are configured (opened on first use: `Err` says why it can't be).
    images: std::sync::OnceLock<std::result::Result<agentbox_image::Store, String>>,
    /// Each image's `User` as resolved against its files, by config digest: read once per image, not per create.
    image_users: Mutex<HashMap<agentbox_image::Digest, Option<agentbox_image::ImageUser>>>,
    /// What the host writes into a new upper layer, by image, generated files and home (see `upper`).
    upper_plans: Mutex<HashMap<UpperPlanKey, Arc<upper::UpperPlan>>>,
    /// Set by a test: new upper layers are left empty for the init to fill, as started sandboxes' are.
    #[cfg(feature = "test-util")]
    init_fills_new_uppers: AtomicBool,
    /// Host id ranges for sandboxes' user namespaces, when they are in use.
    ids: Option<Arc<agentbox_storage::IdRanges>>,
    /// Which volumes this process's sandboxes have mounted (see `backend/volumes.rs`).
    volumes_in_use: Arc<volumes::VolumesInUse>,
    /// A one-shot process's first init, cloned while the backend opened (see `backend/spare.rs`).
    spare: Mutex<Option<spare::SpareInit>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.spare.lock_unpoisoned().take());
        match self.config.host_process {
            HostProcess::LongRunning => self.cgroups.remove_parent_if_empty(),
            HostProcess::OneShot => drop(self.reap_orphans()),
        }
    }
}

/// The local Linux backend. Cheap to clone.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend").field("state_dir", &self.inner.config.state_dir).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// Runs `f` on the blocking pool; `what` names the task if it panics or is cancelled.
async fn blocking<T: Send + 'static>(what: &'static str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| backend_err(what, e))?
}

/// The step `what` failed because of `e`, which stays the error's source.
fn backend_err(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    LocalError::step(what, e).into()
}

impl LocalBackend {
    /// Detects what the host allows, reaps what an earlier crashed process left behind, and returns the backend.
    ///
    /// # Errors
    /// When the state directory can't be created, or the host can't create namespaces at all.
    pub fn new(config: LocalConfig) -> Result<Self> {
        let _ = agent::entry_point();
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            let what = format!(
                "cannot create the state directory {}: {e}; set LocalConfig::state_dir to a writable place",
                config.state_dir.display()
            );
            Error::backend_with(what, e)
        })?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Unsupported(
                "the local backend needs root (it creates namespaces, cgroups and mounts); run as root, or use the e2b backend".into(),
            ));
        }
        // Sandboxes of different state directories live under different cgroup parents, so
        // reaping after a crash only ever touches what this state directory owns.
        let cgroups = Cgroups::detect(&cgroup_parent(&config));
        // Not before: the detection may move this process into a leaf cgroup of its own (cgroup v2), and a
        // zygote started meanwhile could be left behind in the cgroup that then can't enable controllers. (One
        // forked before, by `fork_zygote_now`, is moved along.) Its start overlaps the opening below.
        crate::zygote::warm_up();
        let mut limitations = cgroups.problems.clone();
        let ids = match &config.id_ranges {
            None => {
                limitations.push(
                    "no user namespaces (no id ranges configured): every sandbox's user is the same host uid, so \
                     per-user kernel limits (inotify instances, processes) are shared between sandboxes"
                        .into(),
                );
                None
            }
            Some(_) if !user_namespaces_allowed() => {
                limitations.push(
                    "no user namespaces (user.max_user_namespaces is 0 on this host): every sandbox's user is the \
                     same host uid, so per-user kernel limits (inotify instances, processes) are shared between sandboxes"
                        .into(),
                );
                None
            }
            Some(rc) => match agentbox_storage::IdRanges::open(rc.clone()) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    limitations.push(format!(
                        "no user namespaces, so per-user kernel limits are shared between sandboxes: the id ranges \
                         in {} can't be used: {e}",
                        rc.dir.display()
                    ));
                    None
                }
            },
        };
        let root_mountpoint = config.state_dir.join(".root");
        std::fs::create_dir_all(&root_mountpoint).map_err(|e| {
            let what = format!(
                "cannot create {}: {e}; set LocalConfig::state_dir to a writable place",
                root_mountpoint.display()
            );
            Error::backend_with(what, e)
        })?;
        let me = std::process::id();
        let owner = format!("o{me}-{}", process_start(me).unwrap_or(0));
        // A one-shot process's init is cloned now, on the other core, while the rest opens (see `spare`).
        let spare = match config.host_process {
            HostProcess::OneShot => spare::SpareInit::start(ids.as_ref(), &owner, &root_mountpoint),
            HostProcess::LongRunning => None,
        };
        let pool = match &config.storage {
            None => {
                limitations.push(
                    "storage is memory-backed (no storage pool configured): files count against the sandbox's memory"
                        .into(),
                );
                None
            }
            Some(pc) => match agentbox_storage::Pool::open(pc) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    limitations.push(format!(
                        "storage is memory-backed, files count against the sandbox's memory: the disk pool in {} can't be used: {e}",
                        pc.dir.display()
                    ));
                    None
                }
            },
        };
        if !Path::new("/sys/kernel/security/landlock").exists() && !landlock_available() {
            limitations.push("landlock is not available in this kernel: file access is confined by mounts only".into());
        }
        if !has_capability(CAP_SYS_RESOURCE) {
            limitations.push(
                "the sandbox init can't be exempted from the OOM killer (this host lacks CAP_SYS_RESOURCE): \
                 executions are its preferred victims, but sandboxed code can lower its own score to the init's"
                    .into(),
            );
        }
        let compiled = |profile| {
            seccomp::policy()
                .and_then(|policy| seccomp::compile(&policy, profile))
                .map_err(|e| backend_err("compiling the seccomp policy", e))
        };
        let egress =
            crate::net::EgressContext::new(agentbox_core::egress::SecretStore::new(), &config.upstream_extra_roots)
                .map_err(|e| Error::backend_with(e.to_string(), e))?;
        let inner = Inner {
            egress,
            seccomp_default: vec![compiled(SeccompProfile::Default)?],
            seccomp_strict: vec![compiled(SeccompProfile::Strict)?],
            etc: Arc::new(crate::etc::Templates::new(&config.state_dir, &config.etc_entries)),
            owner,
            root_mountpoint,
            pool,
            images: std::sync::OnceLock::new(),
            image_users: Mutex::new(HashMap::new()),
            upper_plans: Mutex::new(HashMap::new()),
            #[cfg(feature = "test-util")]
            init_fills_new_uppers: AtomicBool::new(false),
            ids,
            volumes_in_use: Arc::default(),
            spare: Mutex::new(spare),
            config,
            cgroups,
            limitations,
            sandboxes: Mutex::new(HashMap::new()),
        };
        let backend = Self { inner: Arc::new(inner) };
        for l in &backend.inner.limitations {
            tracing::warn!(limitation = %l, "local backend runs degraded");
        }
        if backend.inner.config.host_process == HostProcess::LongRunning {
            let _ = backend.reap_orphans();
        }
        Ok(backend)
    }

    /// Limits this host can't enforce, each with the reason. Empty when everything is enforced.
    #[must_use]
    pub fn limitations(&self) -> &[String] {
        &self.inner.limitations
    }

    /// The cgroup layout in use.
    #[must_use]
    pub fn cgroup_layout(&self) -> &crate::CgroupLayout {
        self.inner.cgroups.layout()
    }

    #[cfg(feature = "test-util")]
    /// The host cgroup directories of the sandbox `id` (of every sandbox when `id` is empty) made by
    /// any process using `config`'s state directory: they exist from the start of a creation until
    /// its destroy or reaping (for tests and diagnostics, also from another process).
    #[must_use]
    pub fn host_cgroups(config: &LocalConfig, id: &str) -> Vec<PathBuf> {
        let prefix = if id.is_empty() { "sb-".to_owned() } else { format!("{id}.") };
        Cgroups::detect(&cgroup_parent(config)).find(&prefix)
    }

    #[cfg(feature = "test-util")]
    /// From now on the host writes nothing into a new image root's upper layer, and the init makes its
    /// generated files and directories there itself, as it does in a started sandbox's (for the test that
    /// compares the two).
    pub fn leave_new_upper_layers_to_the_init(&self) {
        self.inner.init_fills_new_uppers.store(true, Ordering::Relaxed);
    }

    /// Whether the host writes a new image root's first entries (see `upper`).
    fn host_fills_new_uppers(&self) -> bool {
        #[cfg(feature = "test-util")]
        if self.inner.init_fills_new_uppers.load(Ordering::Relaxed) {
            return false;
        }
        true
    }

    #[cfg(feature = "test-util")]
    /// Host pids of every process in a sandbox (for tests and diagnostics).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sandbox.
    pub fn host_pids(&self, id: &SandboxId) -> Result<Vec<i32>> {
        Ok(self.get(id)?.cgroup.pids())
    }

    /// Bytes exchanged with destinations, connections made and refused, since the sandbox was created.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sandbox.
    pub fn network_stats(&self, id: &SandboxId) -> Result<crate::NetworkStats> {
        Ok(self.get(id)?.net.stats())
    }

    #[cfg(feature = "test-util")]
    /// Host pid of the sandbox's init (for tests and diagnostics).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sandbox.
    pub fn init_pid(&self, id: &SandboxId) -> Result<i32> {
        Ok(self.get(id)?.init_pid)
    }

    fn get(&self, id: &SandboxId) -> Result<Arc<LiveSandbox>> {
        self.inner.sandboxes.lock_unpoisoned().get(id).cloned().ok_or_else(|| Error::NotFound(format!("sandbox {id}")))
    }

    /// Runs `op` on the sandbox `id` (its files, through its `hostfs::Root`) on the blocking pool.
    async fn on_files<T: Send + 'static>(
        &self,
        id: &SandboxId,
        op: impl FnOnce(&LiveSandbox) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let sb = self.get(id)?;
        blocking("file task", move || op(&sb)).await
    }

    async fn set_frozen(&self, id: &SandboxId, frozen: bool) -> Result<()> {
        let sb = self.get(id)?;
        if !sb.cgroup.can_freeze() {
            return Err(Error::Unsupported(
                "this host gives sandboxes no freezer (no cgroup v2 and no v1 freezer hierarchy), so they can't be paused"
                    .into(),
            ));
        }
        if sb.paused.load(Ordering::SeqCst) == frozen {
            return Ok(());
        }
        // Refuse new frames first, so nothing is queued to a frozen init.
        if frozen {
            sb.paused.store(true, Ordering::SeqCst);
        }
        let cg = sb.cgroup.clone();
        let result = tokio::task::spawn_blocking(move || cg.set_frozen(frozen))
            .await
            .map_err(|e| backend_err("freezer task", e))?
            .map_err(|e| backend_err(if frozen { "pausing the sandbox" } else { "resuming the sandbox" }, e));
        match (&result, frozen) {
            (Err(_), true) => {
                // Leave it running rather than half frozen.
                let cg = sb.cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cg.set_frozen(false)).await;
                sb.paused.store(false, Ordering::SeqCst);
            }
            (Ok(()), false) => sb.paused.store(false, Ordering::SeqCst),
            _ => {}
        }
        result
    }
}

/// The capability that lowers an `oom_score_adj` (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has the capability `cap` in its effective set.
/// Whether the host lets user namespaces be made at all (`user.max_user_namespaces` above 0).
fn user_namespaces_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_none_or(|max| max > 0)
}

fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

fn landlock_available() -> bool {
    use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr};
    Ruleset::default().handle_access(AccessFs::from_all(ABI::V1)).and_then(Ruleset::create).is_ok()
}

impl LocalBackend {
    /// Creates a sandbox as `request` asks, its layer made from `from` when given (see `spawn_sandbox`).
    pub(super) async fn create_from(
        &self,
        request: &CreateRequest,
        from: Option<(agentbox_storage::Shelf, String)>,
        first: Option<&ExecRequest>,
    ) -> Result<(SandboxInfo, Option<ExecStream>)> {
        request.config.validate()?;
        if request.config.storage.cleanup == CleanupPolicy::Keep {
            return Err(Error::Unsupported(
                "storage.cleanup = \"keep\" is not supported by the local backend: destroy releases a sandbox's files; \
                 stop the sandbox instead to keep them (POST /api/sandboxes/{run_id}/stop, agentbox stop)"
                    .into(),
            ));
        }
        let (sb, first) = self.spawn_sandbox(request, from, first).await?;
        let info = sb.info.clone();
        let start = sb.start.clone();
        let first = first.map(|rx| exec::owned_stream(&sb, create::FIRST_EXECUTION, rx));
        self.inner.sandboxes.lock_unpoisoned().insert(info.id.clone(), sb);
        if let Some(argv) = start {
            // A sandbox whose start process can't be started is a failed create: nothing of it is kept.
            if let Err(e) = self.spawn_background(&info.id, ExecRequest::argv(argv)).await {
                let _ = self.destroy(&info.id).await;
                return Err(e);
            }
        }
        Ok((info, first))
    }
}

#[async_trait]
impl SandboxBackend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo> {
        let from = request.from_snapshot.clone().map(|name| (agentbox_storage::Shelf::Snapshots, name));
        self.create_from(&request, from, None).await.map(|(info, _)| info)
    }

    /// The first execution goes with the setup message where it can (see `spawn_sandbox`): the init starts it
    /// right after its ready answer, without waiting for the host to send it.
    async fn create_and_exec(&self, request: CreateRequest, first: ExecRequest) -> Result<(SandboxInfo, ExecStream)> {
        let from = request.from_snapshot.clone().map(|name| (agentbox_storage::Shelf::Snapshots, name));
        let (info, stream) = self.create_from(&request, from, Some(&first)).await?;
        let stream = match stream {
            Some(stream) => stream,
            None => agentbox_core::exec_or_destroy(self, &info.id, first).await?,
        };
        Ok((info, stream))
    }

    async fn exec(&self, id: &SandboxId, request: ExecRequest) -> Result<ExecStream> {
        let sb = self.get(id)?;
        let msg = Self::exec_message(&sb, &request, None)?;
        self.start_owned_execution(&sb, &msg, request.stdin.as_deref()).await
    }

    async fn open_terminal(
        &self,
        id: &SandboxId,
        request: agentbox_core::TerminalRequest,
    ) -> Result<agentbox_core::Terminal> {
        let sb = self.get(id)?;
        self.terminal(sb, request).await
    }

    async fn run_code(&self, id: &SandboxId, request: CodeRequest) -> Result<ExecStream> {
        let sb = self.get(id)?;
        let inline = request.code.len() <= 96 * 1024;
        let n = sb.next_id.fetch_add(1, Ordering::Relaxed);
        let (code, extension) = if request.language == Language::Typescript {
            // Compiled to JavaScript here, so it runs on whichever Node.js the sandbox has.
            let source = request.code.clone();
            let js = tokio::task::spawn_blocking(move || crate::typescript::to_javascript(&source))
                .await
                .map_err(|e| backend_err("compiling TypeScript", e))?
                .unwrap_or_else(|e| e.to_script());
            let extension = js.extension();
            (js.code, extension)
        } else {
            (request.code.clone(), request.language.extension())
        };
        let file = format!("/tmp/.agentbox-code-{n}.{extension}");
        if !inline || request.language == Language::Typescript {
            sb.root.write(&file, code.as_bytes())?;
        }
        let argv: Vec<String> = match (request.language, inline) {
            (Language::Python, true) => vec!["python3".into(), "-c".into(), code],
            (Language::Python, false) => vec!["python3".into(), file],
            (Language::Javascript, true) => vec!["node".into(), "-e".into(), code],
            (Language::Javascript, false) => vec!["node".into(), file],
            (Language::Typescript, _) => vec!["node".into(), file],
            (Language::Bash, true) => vec!["bash".into(), "-c".into(), code],
            (Language::Bash, false) => vec!["bash".into(), file],
        };
        let exec = ExecRequest {
            command: agentbox_core::Command::Argv(argv),
            cwd: request.cwd,
            env: request.env,
            stdin: None,
            timeout: request.timeout,
            user: None,
        };
        self.exec(id, exec).await
    }

    async fn spawn_background(&self, id: &SandboxId, request: ExecRequest) -> Result<ProcessInfo> {
        let sb = self.get(id)?;
        // An id of its own (never a `load`: concurrent starts would share a log).
        let n = sb.next_id.fetch_add(1, Ordering::Relaxed);
        let output = format!("/tmp/agentbox-bg-{n}.log");
        let msg = Self::exec_message(&sb, &request, Some(output.clone()))?;
        let payload = serde_json::to_vec(&msg).map_err(|e| backend_err("encoding the execution request", e))?;
        let (kind, payload) = self.request(&sb, Kind::Exec, &payload, Duration::from_secs(10)).await?;
        match kind {
            Kind::Started => {
                let s = proto::decode_started(&payload).map_err(|e| backend_err("bad reply", e))?;
                // Pid 0: nothing could be started (no such program), which a shell reports as exit 127.
                let started = s.pid > 0;
                Ok(ProcessInfo {
                    pid: u32::try_from(s.pid).unwrap_or(0),
                    argv: msg.argv,
                    running: started,
                    exit_code: (!started).then_some(127),
                    output_path: Some(output),
                })
            }
            _ => {
                let f = proto::decode_failure(&payload);
                Err(Error::backend(format!("starting the background process failed: {}", f.message)))
            }
        }
    }

    async fn list_processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>> {
        let sb = self.get(id)?;
        let (_, payload) = self.request(&sb, Kind::ListProcs, &[], Duration::from_secs(5)).await?;
        let list = proto::decode_proc_list(&payload).map_err(|e| backend_err("bad process list", e))?;
        Ok(list
            .procs
            .into_iter()
            .map(|p| ProcessInfo {
                pid: u32::try_from(p.pid).unwrap_or(0),
                argv: p.argv,
                running: p.exit_code.is_none(),
                exit_code: p.exit_code,
                output_path: p.output_path,
            })
            .collect())
    }

    async fn kill_process(&self, id: &SandboxId, pid: u32, signal: i32) -> Result<()> {
        let sb = self.get(id)?;
        let (_, payload) = self.request(&sb, Kind::ListProcs, &[], Duration::from_secs(5)).await?;
        let list = proto::decode_proc_list(&payload).map_err(|e| backend_err("bad process list", e))?;
        let Some(p) = list.procs.iter().find(|p| u32::try_from(p.pid).ok() == Some(pid) && p.exit_code.is_none())
        else {
            return Err(Error::NotFound(format!("background process {pid}")));
        };
        if !(1..=64).contains(&signal) {
            return Err(Error::InvalidRequest(format!("signal {signal} is not valid (1 to 64)")));
        }
        let frame = proto::try_encode_json(Kind::Kill, p.id, &proto::Kill { signal })
            .map_err(|e| backend_err("encoding the kill", e))?;
        sb.send(&frame).await
    }

    async fn read_file(&self, id: &SandboxId, path: &str) -> Result<Vec<u8>> {
        let path = path.to_owned();
        self.on_files(id, move |sb| sb.root.read(&path, sb.config.max_read_bytes)).await
    }

    async fn read_file_stream(&self, id: &SandboxId, path: &str) -> Result<FileStream> {
        let path = path.to_owned();
        let reader = self.on_files(id, move |sb| sb.root.open_read(&path)).await?;
        Ok(transfer::stream_file(reader))
    }

    async fn write_file_stream(&self, id: &SandboxId, path: &str, upload: FileUpload, max: u64) -> Result<u64> {
        let path = path.to_owned();
        let up = self.on_files(id, move |sb| sb.root.create_upload(&path)).await?;
        transfer::drain_upload(up, upload, max).await
    }

    async fn write_file(&self, id: &SandboxId, path: &str, data: Vec<u8>) -> Result<()> {
        let path = path.to_owned();
        self.on_files(id, move |sb| sb.root.write(&path, &data)).await
    }

    async fn list_dir(&self, id: &SandboxId, path: &str) -> Result<Vec<FileEntry>> {
        let path = path.to_owned();
        self.on_files(id, move |sb| sb.root.list(&path)).await
    }

    async fn stat(&self, id: &SandboxId, path: &str) -> Result<FileEntry> {
        let path = path.to_owned();
        self.on_files(id, move |sb| sb.root.stat(&path)).await
    }

    async fn mkdir(&self, id: &SandboxId, path: &str) -> Result<()> {
        let path = path.to_owned();
        self.on_files(id, move |sb| sb.root.mkdir_all(&path)).await
    }

    async fn remove(&self, id: &SandboxId, path: &str) -> Result<()> {
        let path = path.to_owned();
        self.on_files(id, move |sb| sb.root.remove(&path)).await
    }

    async fn rename(&self, id: &SandboxId, from: &str, to: &str) -> Result<()> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.on_files(id, move |sb| sb.root.rename(&from, &to)).await
    }

    async fn metrics(&self, id: &SandboxId) -> Result<SandboxMetrics> {
        let sb = self.get(id)?;
        let mb = 1024.0 * 1024.0;
        let cpu_ns = sb.cgroup.cpu_nanos();
        let now = Instant::now();
        let usage = {
            let mut last = sb.last_cpu.lock_unpoisoned();
            let pct = match (*last, cpu_ns) {
                (Some((t, prev)), Some(cur)) if now > t => {
                    #[allow(clippy::cast_precision_loss)]
                    let p = (cur.saturating_sub(prev)) as f64 / now.duration_since(t).as_nanos() as f64 * 100.0;
                    p
                }
                _ => 0.0,
            };
            if let Some(c) = cpu_ns {
                *last = Some((now, c));
            }
            pct
        };
        #[allow(clippy::cast_precision_loss)]
        let f = |v: Option<u64>| v.map_or(0.0, |v| v as f64);
        let home = sb.config.security.run_as.home();
        let disk = match (&self.inner.pool, &sb.layer) {
            (Some(pool), Some(layer)) => pool.usage(layer).map_or(0, |u| u.bytes),
            _ => sb.root.usage(&home).map_or(0, |(_, used)| used),
        };
        let net = sb.net.stats();
        Ok(SandboxMetrics {
            cpu_usage_percent: usage,
            cpu_time_seconds: f(cpu_ns) / 1e9,
            memory_used_mb: f(sb.cgroup.memory_current()) / mb,
            memory_peak_mb: f(sb.cgroup.memory_peak()) / mb,
            disk_used_gb: f(Some(disk)) / (mb * 1024.0),
            network_in_bytes: net.bytes_in,
            network_out_bytes: net.bytes_out,
            execution_count: 0,
            last_exit_code: None,
            is_healthy: sb.alive.load(Ordering::SeqCst),
            health_check_failures: 0,
            sampled_at_ms: now_ms(),
        })
    }

    async fn health(&self, id: &SandboxId) -> Result<HealthStatus> {
        let sb = self.get(id)?;
        if !sb.alive.load(Ordering::SeqCst) {
            return Ok(HealthStatus {
                healthy: false,
                latency_us: 0,
                message: Some("the sandbox agent has exited".into()),
            });
        }
        let start = Instant::now();
        let r = self.request(&sb, Kind::Ping, b"ping", Duration::from_secs(2)).await;
        let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        Ok(match r {
            Ok((Kind::Ping, p)) if p == b"ping" => HealthStatus { healthy: true, latency_us, message: None },
            // The answer queues behind output that a client has not read yet: the sandbox is fine, and
            // replacing it would end its processes for a slow client's sake.
            Err(_) if sb.waiting.load(Ordering::SeqCst) => HealthStatus {
                healthy: true,
                latency_us,
                message: Some("the agent's frames wait for a client to read an execution's output".into()),
            },
            Ok(_) => HealthStatus {
                healthy: false,
                latency_us,
                message: Some("the agent answered with something else than a pong".into()),
            },
            Err(e) => HealthStatus { healthy: false, latency_us, message: Some(e.to_string()) },
        })
    }

    async fn open_port(&self, id: &SandboxId, port: u16) -> Result<String> {
        let sb = self.get(id)?;
        if let Some((url, _)) = sb.forwards.lock_unpoisoned().get(&port) {
            return Ok(url.clone());
        }
        // A loopback listener on the host; each connection is joined to a fresh
        // connection made inside the sandbox's network namespace.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = ports::forward(listener, sb.netns.clone(), port);
        let mut forwards = sb.forwards.lock_unpoisoned();
        if let Some((existing, _)) = forwards.get(&port) {
            task.abort();
            return Ok(existing.clone());
        }
        forwards.insert(port, (url.clone(), task));
        Ok(url)
    }

    async fn update_network(&self, id: &SandboxId, network: NetworkConfig) -> Result<()> {
        let sb = self.get(id)?;
        let mut config = sb.config.clone();
        config.network = network;
        config.validate()?;
        sb.net.update(config.network).await?;
        sb.net.install_ca(&sb.root)
    }

    fn secrets(&self) -> Option<agentbox_core::egress::SecretStore> {
        Some(self.inner.egress.secrets.clone())
    }

    async fn egress_log(
        &self,
        id: &SandboxId,
        query: agentbox_core::egress::EgressQuery,
    ) -> Result<agentbox_core::egress::EgressPage> {
        Ok(self.get(id)?.net.egress_log(&query))
    }

    async fn install_packages(&self, id: &SandboxId, packages: Vec<PackageSpec>) -> Result<()> {
        let sb = self.get(id)?;
        let apt = match (sb.config.security.allow_root_inside, sb.config.image_reference()) {
            (true, Some(_)) => agentbox_core::install::AptSupport::Root,
            (false, _) => agentbox_core::install::AptSupport::No("the sandbox does not allow root inside"),
            (true, None) => agentbox_core::install::AptSupport::No("the host's system is read-only in the sandbox"),
        };
        crate::net::install::install(self, id, &sb.net, &sb.config.environment_variables, &packages, apt).await
    }

    async fn pause(&self, id: &SandboxId) -> Result<()> {
        self.set_frozen(id, true).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<()> {
        self.set_frozen(id, false).await
    }

    async fn snapshot(&self, id: &SandboxId, name: &str) -> Result<SnapshotInfo> {
        self.snapshot_sandbox(id, name).await
    }

    async fn stop(&self, id: &SandboxId) -> Result<agentbox_core::StoppedSandbox> {
        self.stop_sandbox(id).await
    }

    async fn start(&self, key: &str, request: CreateRequest) -> Result<SandboxInfo> {
        self.start_stopped(key, request).await
    }

    async fn discard_stopped(&self, key: &str) -> Result<()> {
        self.stopped_discard(key).await
    }

    async fn list_stopped(&self) -> Result<Vec<agentbox_core::StoppedSandbox>> {
        self.stopped_list().await
    }

    async fn export_root_changes(&self, key: &str, to: &Path) -> Result<u64> {
        self.stopped_export_root(key, to).await
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        self.snapshot_list().await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.snapshot_delete(name).await
    }

    async fn prepare(&self, config: &SandboxConfig) -> Result<()> {
        match config.image_reference() {
            Some(reference) if self.inner.pool.is_some() => self.resolve_image(reference).await.map(drop),
            _ => Ok(()),
        }
    }

    async fn create_volume(&self, name: &str, limit_bytes: u64) -> Result<agentbox_core::VolumeInfo> {
        self.volume_create(name, limit_bytes).await
    }

    async fn list_volumes(&self) -> Result<Vec<agentbox_core::VolumeInfo>> {
        self.volume_list().await
    }

    async fn delete_volume(&self, name: &str) -> Result<()> {
        self.volume_delete(name).await
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let Some(sb) = self.inner.sandboxes.lock_unpoisoned().remove(id) else {
            return Ok(());
        };
        // A frozen sandbox's processes can't die (v1 freezer): thaw it first.
        if sb.paused.swap(false, Ordering::SeqCst) {
            let cg = sb.cgroup.clone();
            let _ = tokio::task::spawn_blocking(move || cg.set_frozen(false)).await;
        }
        // The proxy's sockets live in the sandbox's network namespace: close them first.
        sb.net.shutdown().await;
        // Closing the control socket makes the init exit, which takes down the whole pid namespace.
        *sb.writer.lock().await = None;
        let sb2 = sb.clone();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Killing the init tears down its pid namespace: the kernel kills and reaps everything
            // in it before the init's pidfd turns readable (the zygote reaps the init itself).
            let _ = sys::pidfd_kill(sb2.pidfd.as_fd(), libc::SIGKILL);
            sys::pidfd_wait(sb2.pidfd.as_fd(), -1);
            sb2.cgroup.remove_after_exit();
            if let (Some(pool), Some(layer)) = (&inner.pool, &sb2.layer) {
                if let Err(e) = pool.remove_layer(layer.name()) {
                    tracing::warn!(error = %e, "removing a destroyed sandbox's storage layer");
                }
            }
            // Last: no process and no file of the sandbox holds an id of the range any more.
            if let (Some(ranges), Some(range)) = (&inner.ids, sb2.ids) {
                if let Err(e) = ranges.release(range) {
                    tracing::warn!(error = %e, "releasing a destroyed sandbox's id range");
                }
            }
        })
        .await
        .map_err(|e| backend_err("destroy task", e))?;
        let reader = sb.reader.lock_unpoisoned().take();
        if let Some(t) = reader {
            // Waiting for the cancelled reader means the control socket is closed when destroy returns.
            t.abort();
            let _ = t.await;
        }
        let forwards: Vec<_> = sb.forwards.lock_unpoisoned().drain().map(|(_, (_, t))| t).collect();
        for task in forwards {
            // Waiting for the cancelled task means its listener is closed when destroy returns.
            task.abort();
            let _ = task.await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let map = self.inner.sandboxes.lock_unpoisoned();
        let mut v: Vec<SandboxInfo> = map
            .values()
            .map(|s| SandboxInfo {
                state: if !s.alive.load(Ordering::SeqCst) {
                    SandboxState::Unhealthy
                } else if s.paused.load(Ordering::SeqCst) {
                    SandboxState::Paused
                } else {
                    SandboxState::Running
                },
                ..s.info.clone()
            })
            .collect();
        v.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(v)
    }
}
