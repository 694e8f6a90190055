//! A test-only backend that runs commands on the host in a temp directory, so tool logic
//! is exercised through the real `SandboxBackend` contract (processes, files, FIFOs).
//! Sandbox paths are host paths: each sandbox's home is `<root>/<id>/home`.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentbox_core::config::SandboxConfig;
use agentbox_core::metrics::SandboxMetrics;
use agentbox_core::{
    CodeRequest, CreateOptions, CreateRequest, Error, ExecEvent, ExecRequest, ExecStream, ExitStatus, FileEntry, FileKind,
    HealthStatus, Language, ManagerConfig, ProcessInfo, Result, RunId, SandboxBackend, SandboxId, SandboxInfo,
    SandboxManager, SandboxState,
};
use agentbox_tools::{ToolContext, ToolsConfig};
use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Proc {
    child: std::process::Child,
    argv: Vec<String>,
    output: String,
}

#[derive(Default)]
struct Sb {
    info: Option<SandboxInfo>,
    procs: HashMap<u32, Proc>,
}

pub struct HostBackend {
    root: PathBuf,
    next: AtomicU64,
    sandboxes: Mutex<HashMap<SandboxId, Sb>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn io_err(e: std::io::Error, path: &Path) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("path {}", path.display())),
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied(path.display().to_string()),
        _ => Error::Io(e),
    }
}

fn kill_group(pid: u32, signal: i32) {
    let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg("--").arg(format!("-{pid}")).status();
}

impl HostBackend {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned(), next: AtomicU64::new(1), sandboxes: Mutex::new(HashMap::new()) }
    }

    pub fn home(&self, id: &SandboxId) -> PathBuf {
        self.root.join(id.as_str()).join("home")
    }

    fn known(&self, id: &SandboxId) -> Result<()> {
        if self.sandboxes.lock().unwrap().contains_key(id) { Ok(()) } else { Err(Error::NotFound(format!("sandbox {id}"))) }
    }

    fn resolve(&self, id: &SandboxId, path: &str) -> Result<PathBuf> {
        self.known(id)?;
        let p = Path::new(path);
        Ok(if p.is_absolute() { p.to_owned() } else { self.home(id).join(p) })
    }

    fn entry(path: &Path) -> Result<FileEntry> {
        let m = std::fs::symlink_metadata(path).map_err(|e| io_err(e, path))?;
        let kind = if m.is_dir() {
            FileKind::Dir
        } else if m.is_file() {
            FileKind::File
        } else if m.file_type().is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        Ok(FileEntry {
            path: path.display().to_string(),
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            kind,
            size: m.len(),
            mode: m.permissions().mode(),
            modified_ms: (m.mtime() as u64) * 1000,
            symlink_target: std::fs::read_link(path).ok().map(|t| t.display().to_string()),
        })
    }

    fn command(&self, id: &SandboxId, request: &ExecRequest) -> Result<std::process::Command> {
        let argv = request.to_argv()?;
        let home = self.home(id);
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let cwd = match &request.cwd {
            Some(c) => self.resolve(id, c)?,
            None => home.clone(),
        };
        cmd.current_dir(cwd).env("HOME", &home).envs(&request.env);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok(cmd)
    }
}

#[async_trait]
impl SandboxBackend for HostBackend {
    fn name(&self) -> &'static str {
        "host-test"
    }

    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo> {
        let id = SandboxId::new_unchecked(format!("sb{}", self.next.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(self.home(&id))?;
        std::fs::create_dir_all(self.root.join(id.as_str()).join("tmp"))?;
        let info = SandboxInfo {
            id: id.clone(),
            backend: "host-test".into(),
            state: SandboxState::Running,
            created_at_ms: now_ms(),
            metadata: request.metadata,
        };
        self.sandboxes.lock().unwrap().insert(id, Sb { info: Some(info.clone()), procs: HashMap::new() });
        Ok(info)
    }

    async fn exec(&self, id: &SandboxId, request: ExecRequest) -> Result<ExecStream> {
        let mut cmd = tokio::process::Command::from(self.command(id, &request)?);
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut stdin = child.stdin.take().unwrap();
        let input = request.stdin.clone().unwrap_or_default();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let timeout = request.timeout.unwrap_or(Duration::from_secs(300));
        tokio::spawn(async move {
            let started = Instant::now();
            let tx1 = tx.clone();
            let r1 = tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 || tx1.send(ExecEvent::Stdout(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            });
            let tx2 = tx.clone();
            let r2 = tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = err.read(&mut buf).await {
                    if n == 0 || tx2.send(ExecEvent::Stderr(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            });
            let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
                Ok(s) => (s.ok(), false),
                Err(_) => {
                    kill_group(pid, 9);
                    (child.wait().await.ok(), true)
                }
            };
            kill_group(pid, 9);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = r1.await;
                let _ = r2.await;
            })
            .await;
            let signal = status.and_then(|s| s.signal());
            let exit_code = if timed_out { 124 } else { status.and_then(|s| s.code()).unwrap_or(128 + signal.unwrap_or(0)) };
            let _ = tx
                .send(ExecEvent::Exit(ExitStatus {
                    exit_code,
                    signal: if timed_out { None } else { signal },
                    timed_out,
                    oom_killed: false,
                    duration: started.elapsed(),
                }))
                .await;
        });
        Ok(ExecStream::new(rx))
    }

    async fn run_code(&self, id: &SandboxId, request: CodeRequest) -> Result<ExecStream> {
        let argv: Vec<String> = match request.language {
            Language::Python => vec!["python3".into(), "-c".into(), request.code],
            Language::Javascript => vec!["node".into(), "-e".into(), request.code],
            Language::Bash => vec!["bash".into(), "-c".into(), request.code],
            Language::Typescript => return Err(Error::Unsupported("typescript needs Node.js 22.6 or later".into())),
        };
        let exec = ExecRequest { cwd: request.cwd, env: request.env, timeout: request.timeout, ..ExecRequest::argv(argv) };
        self.exec(id, exec).await
    }

    async fn spawn_background(&self, id: &SandboxId, request: ExecRequest) -> Result<ProcessInfo> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let output = self.root.join(id.as_str()).join("tmp").join(format!("bg-{n}.log"));
        let file = std::fs::File::create(&output)?;
        let mut cmd = self.command(id, &request)?;
        cmd.stdin(std::process::Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = cmd.spawn()?;
        let pid = child.id();
        let argv = request.to_argv()?;
        let output = output.display().to_string();
        let info = ProcessInfo { pid, argv: argv.clone(), running: true, exit_code: None, output_path: Some(output.clone()) };
        self.sandboxes.lock().unwrap().get_mut(id).unwrap().procs.insert(pid, Proc { child, argv, output });
        Ok(info)
    }

    async fn list_processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>> {
        let mut map = self.sandboxes.lock().unwrap();
        let sb = map.get_mut(id).ok_or_else(|| Error::NotFound(format!("sandbox {id}")))?;
        Ok(sb
            .procs
            .iter_mut()
            .map(|(pid, p)| {
                let exit = p.child.try_wait().ok().flatten();
                ProcessInfo {
                    pid: *pid,
                    argv: p.argv.clone(),
                    running: exit.is_none(),
                    exit_code: exit.and_then(|e| e.code()),
                    output_path: Some(p.output.clone()),
                }
            })
            .collect())
    }

    async fn kill_process(&self, id: &SandboxId, pid: u32, signal: i32) -> Result<()> {
        let mut map = self.sandboxes.lock().unwrap();
        let sb = map.get_mut(id).ok_or_else(|| Error::NotFound(format!("sandbox {id}")))?;
        let p = sb.procs.get_mut(&pid).ok_or_else(|| Error::NotFound(format!("process {pid}")))?;
        kill_group(pid, signal);
        if signal == 9 {
            let _ = p.child.wait();
        }
        Ok(())
    }

    async fn read_file(&self, id: &SandboxId, path: &str) -> Result<Vec<u8>> {
        let p = self.resolve(id, path)?;
        if p.is_dir() {
            return Err(Error::InvalidRequest(format!("{} is a directory", p.display())));
        }
        tokio::fs::read(&p).await.map_err(|e| io_err(e, &p))
    }

    async fn write_file(&self, id: &SandboxId, path: &str, data: Vec<u8>) -> Result<()> {
        let p = self.resolve(id, path)?;
        if let Some(parent) = p.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io_err(e, parent))?;
        }
        tokio::fs::write(&p, data).await.map_err(|e| io_err(e, &p))
    }

    async fn list_dir(&self, id: &SandboxId, path: &str) -> Result<Vec<FileEntry>> {
        let p = self.resolve(id, path)?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&p).map_err(|e| io_err(e, &p))? {
            out.push(Self::entry(&e?.path())?);
        }
        Ok(out)
    }

    async fn stat(&self, id: &SandboxId, path: &str) -> Result<FileEntry> {
        Self::entry(&self.resolve(id, path)?)
    }

    async fn mkdir(&self, id: &SandboxId, path: &str) -> Result<()> {
        let p = self.resolve(id, path)?;
        std::fs::create_dir_all(&p).map_err(|e| io_err(e, &p))
    }

    async fn remove(&self, id: &SandboxId, path: &str) -> Result<()> {
        let p = self.resolve(id, path)?;
        let m = std::fs::symlink_metadata(&p).map_err(|e| io_err(e, &p))?;
        if m.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.map_err(|e| io_err(e, &p))
    }

    async fn rename(&self, id: &SandboxId, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.resolve(id, from)?, self.resolve(id, to)?);
        std::fs::rename(&f, &t).map_err(|e| io_err(e, &f))
    }

    async fn metrics(&self, id: &SandboxId) -> Result<SandboxMetrics> {
        self.known(id)?;
        Ok(SandboxMetrics::default())
    }

    async fn health(&self, id: &SandboxId) -> Result<HealthStatus> {
        self.known(id)?;
        Ok(HealthStatus { healthy: true, latency_us: 0, message: None })
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let sb = self.sandboxes.lock().unwrap().remove(id);
        if let Some(mut sb) = sb {
            for (pid, p) in &mut sb.procs {
                kill_group(*pid, 9);
                let _ = p.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(self.root.join(id.as_str()));
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        Ok(self.sandboxes.lock().unwrap().values().filter_map(|s| s.info.clone()).collect())
    }
}

/// One sandbox with tools pointed at it; destroyed on drop.
pub struct TestSandbox {
    pub manager: SandboxManager,
    pub ctx: ToolContext,
    pub home: String,
    _dir: tempfile::TempDir,
}

impl TestSandbox {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut ToolsConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(HostBackend::new(dir.path()));
        let manager = SandboxManager::new(backend.clone(), ManagerConfig::default());
        let run = RunId::parse("tools-test").unwrap();
        let mut config = SandboxConfig::default();
        config.execution_timeout = Duration::from_secs(60);
        let (sb, _) = manager.get_or_create(&run, CreateOptions { preset: None, config: Some(config) }).await.unwrap();
        let home = backend.home(&sb.sandbox.id).display().to_string();
        let mut tools = ToolsConfig {
            home_dir: home.clone(),
            state_dir: dir.path().join(sb.sandbox.id.as_str()).join("tmp/agentbox").display().to_string(),
            ..ToolsConfig::default()
        };
        tweak(&mut tools);
        let ctx = ToolContext::new(manager.clone(), run).with_config(tools);
        Self { manager, ctx, home, _dir: dir }
    }

    pub async fn close(self) {
        self.manager.shutdown().await;
    }
}

pub fn env_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}
