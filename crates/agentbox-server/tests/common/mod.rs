//! Test support: a backend that runs host processes in per-sandbox temp directories, and a server on loopback.
//!
//! The backend is for exercising the HTTP layer only; it offers no isolation.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentbox_core::{
    CodeRequest, CreateRequest, Error, ExecEvent, ExecRequest, ExecStream, ExitStatus, FileEntry, FileKind,
    HealthStatus, Language, ProcessInfo, Result, SandboxBackend, SandboxId, SandboxInfo, SandboxState,
};
use agentbox_metrics::SandboxMetrics;
use agentbox_server::{ApiToken, Registry, Server, ServerConfig};
use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod child;

static NEXT: AtomicU64 = AtomicU64::new(1);

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn not_found_or_io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| if e.kind() == std::io::ErrorKind::NotFound { Error::NotFound(what) } else { Error::Io(e) }
}

/// Sandboxes are directories under `base`: `base/<id>/root` is the sandbox's `/`, `base/<id>/info.json` its record.
pub struct HostBackend {
    base: PathBuf,
}

impl HostBackend {
    pub fn new(base: &Path) -> Self {
        std::fs::create_dir_all(base).unwrap();
        Self { base: base.to_owned() }
    }

    fn dir(&self, id: &SandboxId) -> Result<PathBuf> {
        let d = self.base.join(id.as_str());
        if d.join("info.json").exists() { Ok(d) } else { Err(Error::NotFound(format!("sandbox {id}"))) }
    }

    fn root(&self, id: &SandboxId) -> Result<PathBuf> {
        Ok(self.dir(id)?.join("root"))
    }

    /// Maps a sandbox path to the host, refusing anything that resolves outside the sandbox's root.
    fn resolve(&self, id: &SandboxId, path: &str) -> Result<PathBuf> {
        let root = self.root(id)?;
        let inside = if path.starts_with('/') { PathBuf::from(path) } else { Path::new("/home/user").join(path) };
        let mut host = root.clone();
        for c in inside.components() {
            match c {
                Component::Normal(n) => host.push(n),
                Component::ParentDir => return Err(Error::InvalidRequest(format!("path {path:?} leaves the sandbox"))),
                _ => {}
            }
        }
        // Symlinks must not lead out: resolve the deepest existing ancestor and check it stays under root.
        let mut probe = host.clone();
        while std::fs::symlink_metadata(&probe).is_err() && probe.pop() {}
        let real = probe.canonicalize().map_err(not_found_or_io(format!("path {path}")))?;
        if !real.starts_with(root.canonicalize()?) {
            return Err(Error::PermissionDenied(format!("path {path:?} leads outside the sandbox")));
        }
        Ok(host)
    }

    fn info(&self, id: &SandboxId) -> Result<SandboxInfo> {
        let text = std::fs::read_to_string(self.dir(id)?.join("info.json"))?;
        Ok(serde_json::from_str(&text).unwrap())
    }

    fn spawn(
        &self,
        id: &SandboxId,
        argv: &[String],
        cwd: Option<&str>,
        env: BTreeMap<String, String>,
        stdin: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<ExecStream> {
        let root = self.root(id)?;
        let dir = match cwd {
            Some(c) => self.resolve(id, c)?,
            None => root.join("home/user"),
        };
        if !dir.is_dir() {
            return Err(Error::NotFound(format!("working directory {cwd:?}")));
        }
        let sandbox_env: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(self.dir(id)?.join("env.json"))?).unwrap();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&dir)
            .envs(sandbox_env)
            .envs(env)
            .env("HOME", root.join("home/user"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| Error::NotFound(format!("program {:?}: {e}", argv[0])))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut input = child.stdin.take().unwrap();
        let limit = timeout.unwrap_or(Duration::from_secs(300));
        tokio::spawn(async move {
            if let Some(data) = stdin {
                let _ = input.write_all(&data).await;
            }
            drop(input);
            let started = Instant::now();
            let (otx, etx) = (tx.clone(), tx.clone());
            let o = tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 || otx.send(ExecEvent::Stdout(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            });
            let e = tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = err.read(&mut buf).await {
                    if n == 0 || etx.send(ExecEvent::Stderr(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            });
            let (code, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
                Ok(Ok(s)) => (s.code().unwrap_or(137), false),
                _ => {
                    let _ = child.kill().await;
                    (124, true)
                }
            };
            let _ = o.await;
            let _ = e.await;
            let status =
                ExitStatus { exit_code: code, signal: None, timed_out, oom_killed: false, duration: started.elapsed() };
            let _ = tx.send(ExecEvent::Exit(status)).await;
        });
        Ok(ExecStream::new(rx))
    }
}

fn entry(host: &Path, inside: String) -> Result<FileEntry> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(host)?;
    let kind = if m.is_symlink() {
        FileKind::Symlink
    } else if m.is_dir() {
        FileKind::Dir
    } else if m.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    Ok(FileEntry {
        name: host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        path: inside,
        kind,
        size: m.len(),
        mode: m.permissions().mode() & 0o7777,
        modified_ms: m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap()),
        symlink_target: std::fs::read_link(host).ok().map(|t| t.to_string_lossy().into_owned()),
    })
}

#[async_trait]
impl SandboxBackend for HostBackend {
    fn name(&self) -> &'static str {
        "host-test"
    }

    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo> {
        let id =
            SandboxId::new_unchecked(format!("sb-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let dir = self.base.join(id.as_str());
        std::fs::create_dir_all(dir.join("root/home/user"))?;
        std::fs::create_dir_all(dir.join("root/tmp"))?;
        let info = SandboxInfo {
            id,
            backend: self.name().into(),
            state: SandboxState::Running,
            created_at_ms: now_ms(),
            metadata: request.metadata,
        };
        std::fs::write(dir.join("env.json"), serde_json::to_vec(&request.config.environment_variables).unwrap())?;
        std::fs::write(dir.join("info.json"), serde_json::to_vec(&info).unwrap())?;
        Ok(info)
    }

    async fn exec(&self, id: &SandboxId, r: ExecRequest) -> Result<ExecStream> {
        let argv = r.to_argv()?;
        self.spawn(id, &argv, r.cwd.as_deref(), r.env, r.stdin, r.timeout)
    }

    async fn run_code(&self, id: &SandboxId, r: CodeRequest) -> Result<ExecStream> {
        let argv: Vec<String> = match r.language {
            Language::Python => vec!["python3".into(), "-c".into(), r.code],
            Language::Javascript | Language::Typescript => vec!["node".into(), "-e".into(), r.code],
            Language::Bash => vec!["bash".into(), "-c".into(), r.code],
        };
        self.spawn(id, &argv, r.cwd.as_deref(), r.env, None, r.timeout)
    }

    async fn spawn_background(&self, _: &SandboxId, _: ExecRequest) -> Result<ProcessInfo> {
        Err(Error::Unsupported("background processes are not part of this test backend".into()))
    }

    async fn list_processes(&self, _: &SandboxId) -> Result<Vec<ProcessInfo>> {
        Ok(Vec::new())
    }

    async fn kill_process(&self, _: &SandboxId, pid: u32, _: i32) -> Result<()> {
        Err(Error::NotFound(format!("process {pid}")))
    }

    async fn read_file(&self, id: &SandboxId, path: &str) -> Result<Vec<u8>> {
        let host = self.resolve(id, path)?;
        if host.is_dir() {
            return Err(Error::InvalidRequest(format!("{path} is a directory")));
        }
        std::fs::read(&host).map_err(not_found_or_io(format!("file {path}")))
    }

    async fn write_file(&self, id: &SandboxId, path: &str, data: Vec<u8>) -> Result<()> {
        let host = self.resolve(id, path)?;
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(host, data)?;
        Ok(())
    }

    async fn list_dir(&self, id: &SandboxId, path: &str) -> Result<Vec<FileEntry>> {
        let host = self.resolve(id, path)?;
        let read = std::fs::read_dir(&host).map_err(not_found_or_io(format!("directory {path}")))?;
        let mut out = Vec::new();
        for e in read {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            out.push(entry(&e.path(), format!("{}/{name}", path.trim_end_matches('/')))?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn stat(&self, id: &SandboxId, path: &str) -> Result<FileEntry> {
        entry(&self.resolve(id, path)?, path.to_owned())
    }

    async fn mkdir(&self, id: &SandboxId, path: &str) -> Result<()> {
        Ok(std::fs::create_dir_all(self.resolve(id, path)?)?)
    }

    async fn remove(&self, id: &SandboxId, path: &str) -> Result<()> {
        Ok(std::fs::remove_dir_all(self.resolve(id, path)?)?)
    }

    async fn rename(&self, id: &SandboxId, from: &str, to: &str) -> Result<()> {
        Ok(std::fs::rename(self.resolve(id, from)?, self.resolve(id, to)?)?)
    }

    async fn metrics(&self, id: &SandboxId) -> Result<SandboxMetrics> {
        self.dir(id)?;
        Ok(SandboxMetrics { sampled_at_ms: now_ms(), is_healthy: true, ..SandboxMetrics::default() })
    }

    async fn health(&self, id: &SandboxId) -> Result<HealthStatus> {
        self.dir(id)?;
        Ok(HealthStatus { healthy: true, latency_us: 1, message: None })
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        match std::fs::remove_dir_all(self.base.join(id.as_str())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io(e)),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.base)? {
            let id = SandboxId::new_unchecked(e?.file_name().to_string_lossy().into_owned());
            if let Ok(info) = self.info(&id) {
                out.push(info);
            }
        }
        Ok(out)
    }
}

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A server on a loopback port.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub server: Arc<Server>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(backend: Arc<dyn SandboxBackend>, config: ServerConfig, registry: Registry) -> Self {
        let server = Arc::new(Server::start(backend, config, ApiToken::new(TOKEN).unwrap(), registry).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Self { base, client: reqwest::Client::new(), server, stop: Some(stop), task: Some(task) }
    }

    /// A server over a fresh host backend under `dir`.
    pub async fn host(dir: &Path, config: ServerConfig) -> Self {
        let backend = Arc::new(HostBackend::new(&dir.join("sandboxes")));
        Self::start(backend, config, Registry::in_memory().unwrap()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(TOKEN)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(TOKEN).json(body)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.put(self.url(path)).bearer_auth(TOKEN)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(TOKEN)
    }

    /// Creates a run's sandbox, asserting 201.
    pub async fn create(&self, run: &str) -> serde_json::Value {
        let r = self.post("/api/sandboxes/create", &serde_json::json!({ "run_id": run })).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Runs a shell command, asserting 200.
    pub async fn sh(&self, run: &str, command: &str) -> serde_json::Value {
        let r = self
            .post(&format!("/api/sandboxes/{run}/execute/command"), &serde_json::json!({ "command": command }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Stops serving, waiting for requests in flight.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// Asserts an error response's status and code, returning its message.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let got = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(v["error"]["code"], code, "{text}");
    v["error"]["message"].as_str().unwrap().to_owned()
}
