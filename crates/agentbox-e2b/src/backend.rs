//! [`E2bBackend`]: sandbox lifecycle on E2B's control plane, and the trait implementation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentbox_config::NetworkConfig;
use agentbox_core::LockExt;
use agentbox_core::{
    CodeRequest, CreateRequest, Error, ExecRequest, ExecStream, FileEntry, HealthStatus, Language, ProcessInfo, Result,
    SandboxBackend, SandboxId, SandboxInfo, SandboxState, Terminal, TerminalRequest,
};
use agentbox_metrics::SandboxMetrics;
use async_trait::async_trait;
use reqwest::{Method, Url};

use crate::config::{E2bConfig, ENVD_PORT};
use crate::error::{Call, Plane, http_error, retry_after};
use crate::mapping::{self, network_plan, now_ms};
use crate::transport::{
    CONTROL_CREATE, CONTROL_IDEMPOTENT, HttpRequest, HttpResponse, ReqwestTransport, RetryOn, SANDBOX_IDEMPOTENT,
    Transport, send_with_retry,
};
use crate::wire::{self, EnvdMetrics, ListedSandbox, NewSandbox, SandboxMetric};

/// The name of this backend.
pub const BACKEND_NAME: &str = "e2b";

/// Metadata key marking sandboxes this backend created; `list` shows only those.
pub const MANAGED_KEY: &str = "agentbox.managed";
const EXECUTION_TIMEOUT_KEY: &str = "agentbox.execution_timeout_ms";
const IDLE_TIMEOUT_KEY: &str = "agentbox.idle_timeout_ms";
const INTERNAL_PREFIX: &str = "agentbox.";

/// A background process this backend started and watches.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub argv: Vec<String>,
    pub output_path: String,
    pub exit: Option<i32>,
    /// Whether its output stream is still being read (so its end will be recorded).
    pub watching: bool,
}

/// What is known about one sandbox.
#[derive(Debug)]
pub(crate) struct Handle {
    pub id: SandboxId,
    pub template: String,
    pub envd_token: Option<String>,
    pub traffic_token: Option<String>,
    pub domain: Option<String>,
    /// Default time limit of an execution.
    pub execution_timeout: Duration,
    /// How long the sandbox must outlive its last use (the config's idle_timeout).
    pub lease: Duration,
    pub state: Mutex<HandleState>,
}

#[derive(Debug, Default)]
pub(crate) struct HandleState {
    /// When E2B will end the sandbox, ms since the epoch.
    pub expires_at_ms: u64,
    pub processes: BTreeMap<u32, Tracked>,
    /// Code interpreter contexts by language and working directory.
    pub contexts: HashMap<(Language, String), String>,
    pub exec_count: u64,
    pub last_exit: Option<i32>,
    pub healthy: bool,
    pub health_failures: u32,
}

impl Handle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HandleState> {
        self.state.lock_unpoisoned()
    }

    pub(crate) fn record_exit(&self, code: i32) {
        let mut st = self.lock();
        st.exec_count += 1;
        st.last_exit = Some(code);
    }
}

pub(crate) struct Inner {
    pub config: E2bConfig,
    pub api: Url,
    pub transport: Arc<dyn Transport>,
    pub http: reqwest::Client,
    sandboxes: Mutex<HashMap<SandboxId, Arc<Handle>>>,
    seq: AtomicU64,
}

/// The E2B backend: sandboxes on E2B's cloud or a self-hosted E2B, driven through its control-plane REST API,
/// envd's Connect RPCs and `/files`, and the code interpreter.
///
/// ```no_run
/// # async fn demo() -> agentbox_core::Result<()> {
/// use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
///
/// let backend = agentbox_e2b::E2bBackend::from_env()?; // needs E2B_API_KEY
/// let sandbox = backend.create(CreateRequest::default()).await?;
/// let out = backend.exec(&sandbox.id, ExecRequest::shell("echo hi")).await?.collect(1 << 20).await;
/// assert_eq!(out.stdout, "hi\n");
/// backend.destroy(&sandbox.id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct E2bBackend {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for E2bBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bBackend").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl E2bBackend {
    /// A backend for `config`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the unusable setting; [`Error::Backend`] if the HTTP client cannot be built.
    pub fn new(config: E2bConfig) -> Result<Self> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("agentbox-e2b/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::backend(format!("cannot build the HTTP client: {}", crate::transport::describe_reqwest(&e)))
            })?;
        let transport = Arc::new(ReqwestTransport::new(http.clone()));
        Self::assemble(config, transport, http)
    }

    /// A backend configured from the environment (`E2B_API_KEY`, `E2B_DOMAIN`, `E2B_API_URL`, `E2B_SANDBOX_URL`,
    /// ...; see [`E2bConfig::from_lookup`]). This is the hook for `--backend e2b`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] saying what to set when `E2B_API_KEY` is missing or a value is unusable.
    pub fn from_env() -> Result<Self> {
        Self::new(E2bConfig::from_env()?)
    }

    /// A backend whose unary calls go through `transport` (streams still use a real HTTP client).
    #[cfg(test)]
    pub(crate) fn with_transport(config: E2bConfig, transport: Arc<dyn Transport>) -> Result<Self> {
        config.validate()?;
        Self::assemble(config, transport, reqwest::Client::new())
    }

    fn assemble(config: E2bConfig, transport: Arc<dyn Transport>, http: reqwest::Client) -> Result<Self> {
        let api = config.api_base().map_err(|e| Error::InvalidRequest(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                api,
                transport,
                http,
                sandboxes: Mutex::new(HashMap::new()),
                seq: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &E2bConfig {
        &self.inner.config
    }

    /// Pauses a sandbox (`POST /sandboxes/{id}/pause`): E2B snapshots its memory and filesystem and stops billing it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sandbox, [`Error::Conflict`] when it is not running.
    pub async fn pause(&self, id: &SandboxId) -> Result<()> {
        let request = self.inner.control(Method::POST, &["sandboxes", id.as_str(), "pause"]);
        let subject = format!("sandbox {id}");
        self.inner
            .control_send(
                request,
                CONTROL_IDEMPOTENT,
                Call { plane: Plane::Control, action: "pause the sandbox", subject: &subject, sandbox: None },
            )
            .await?;
        self.inner.forget(id);
        Ok(())
    }

    /// Resumes a paused sandbox (`POST /sandboxes/{id}/connect`) for `timeout`, and returns it running.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sandbox.
    pub async fn resume(&self, id: &SandboxId, timeout: Duration) -> Result<SandboxInfo> {
        let secs = self.inner.clamp_timeout(timeout);
        let request = self
            .inner
            .control(Method::POST, &["sandboxes", id.as_str(), "connect"])
            .json(&serde_json::json!({ "timeout": secs }));
        let subject = format!("sandbox {id}");
        let call = Call { plane: Plane::Control, action: "resume the sandbox", subject: &subject, sandbox: None };
        self.inner.control_send(request, CONTROL_IDEMPOTENT, call).await?;
        self.inner.forget(id);
        let detail = self.inner.detail(id).await?;
        let info = SandboxInfo {
            id: id.clone(),
            backend: BACKEND_NAME.to_owned(),
            state: SandboxState::Running,
            created_at_ms: mapping::rfc3339_ms(&detail.started_at),
            metadata: strip_internal(detail.metadata.clone()),
        };
        self.inner.adopt(id, &detail);
        Ok(info)
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        crate::E2bError::from(crate::connect::ProtocolError::BadMessage { what, detail: e.to_string() }).into()
    })
}

fn strip_internal(metadata: Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    metadata.unwrap_or_default().into_iter().filter(|(k, _)| !k.starts_with(INTERNAL_PREFIX)).collect()
}

impl Inner {
    /// The user's home directory in E2B's templates.
    pub(crate) fn home(&self) -> String {
        if self.config.user == "root" { "/root".to_owned() } else { format!("/home/{}", self.config.user) }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A control-plane request with the API key and the request time limit.
    pub(crate) fn control(&self, method: Method, segments: &[&str]) -> HttpRequest {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        HttpRequest::new(method, url, self.config.timeouts.request).header("X-API-Key", self.config.api_key.expose())
    }

    /// Sends a control-plane request; a non-2xx answer becomes an error described by `call`.
    pub(crate) async fn control_send(&self, request: HttpRequest, on: RetryOn, call: Call<'_>) -> Result<HttpResponse> {
        let response = send_with_retry(self.transport.as_ref(), &self.config.retry, request, on).await?;
        if response.ok() {
            Ok(response)
        } else {
            Err(http_error(call, response.status, &response.body, retry_after(response.header("retry-after"))))
        }
    }

    pub(crate) fn forget(&self, id: &SandboxId) {
        self.sandboxes.lock_unpoisoned().remove(id);
    }

    fn remember(&self, handle: Arc<Handle>) {
        self.sandboxes.lock_unpoisoned().insert(handle.id.clone(), handle);
    }

    pub(crate) fn clamp_timeout(&self, d: Duration) -> u64 {
        d.as_secs().clamp(1, self.config.max_sandbox_timeout.as_secs())
    }

    /// The handle of a sandbox, from the cache or from `GET /sandboxes/{id}` (a sandbox created by an earlier
    /// process).
    pub(crate) async fn handle(&self, id: &SandboxId) -> Result<Arc<Handle>> {
        if let Some(h) = self.sandboxes.lock_unpoisoned().get(id) {
            return Ok(h.clone());
        }
        let detail = self.detail(id).await?;
        if detail.state.as_deref() == Some("paused") {
            return Err(Error::Conflict(format!(
                "sandbox {id} is paused: resume it (E2bBackend::resume) before using it"
            )));
        }
        Ok(self.adopt(id, &detail))
    }

    async fn detail(&self, id: &SandboxId) -> Result<ListedSandbox> {
        let subject = format!("sandbox {id}");
        let call = Call { plane: Plane::Control, action: "look up the sandbox", subject: &subject, sandbox: None };
        let request = self.control(Method::GET, &["sandboxes", id.as_str()]);
        let response = self.control_send(request, CONTROL_IDEMPOTENT, call).await?;
        parse_json(&response.body, "SandboxDetail")
    }

    /// Caches a handle for a sandbox described by `GET /sandboxes/{id}`.
    fn adopt(&self, id: &SandboxId, detail: &ListedSandbox) -> Arc<Handle> {
        let meta = detail.metadata.clone().unwrap_or_default();
        let ms = |key: &str, default: Duration| {
            meta.get(key).and_then(|v| v.parse::<u64>().ok()).map_or(default, Duration::from_millis)
        };
        let defaults = agentbox_config::SandboxConfig::default();
        let handle = Arc::new(Handle {
            id: id.clone(),
            template: detail.template_id.clone(),
            envd_token: detail.envd_access_token.clone(),
            traffic_token: None,
            domain: detail.domain.clone(),
            execution_timeout: ms(EXECUTION_TIMEOUT_KEY, defaults.execution_timeout),
            lease: ms(IDLE_TIMEOUT_KEY, defaults.idle_timeout),
            state: Mutex::new(HandleState {
                expires_at_ms: detail.end_at.as_deref().map_or(0, mapping::rfc3339_ms),
                healthy: true,
                ..HandleState::default()
            }),
        });
        self.remember(handle.clone());
        handle
    }

    /// Keeps the sandbox alive for `busy_for` plus its lease, asking E2B for more time only when what is left
    /// falls below half a lease beyond that.
    pub(crate) async fn touch(&self, h: &Handle, busy_for: Duration) -> Result<()> {
        let now = now_ms();
        let wanted = busy_for.saturating_add(h.lease);
        let secs = self.clamp_timeout(wanted);
        let target = now + secs * 1000;
        let slack = u64::try_from(h.lease.as_millis() / 2).unwrap_or(u64::MAX).min(secs * 500);
        if h.lock().expires_at_ms >= target.saturating_sub(slack) {
            return Ok(());
        }
        match self.set_timeout(&h.id, secs).await {
            Ok(()) => {
                h.lock().expires_at_ms = target;
                Ok(())
            }
            Err(e @ Error::NotFound(_)) => {
                self.forget(&h.id);
                Err(e)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %h.id, error = %e, "extending the E2B sandbox's timeout failed; going on");
                Ok(())
            }
        }
    }

    pub(crate) async fn set_timeout(&self, id: &SandboxId, secs: u64) -> Result<()> {
        let request = self
            .control(Method::POST, &["sandboxes", id.as_str(), "timeout"])
            .json(&serde_json::json!({ "timeout": secs }));
        let subject = format!("sandbox {id}");
        let call =
            Call { plane: Plane::Control, action: "extend the sandbox's timeout", subject: &subject, sandbox: None };
        self.control_send(request, CONTROL_IDEMPOTENT, call).await.map(|_| ())
    }

    /// A sandbox ready for an operation expected to take up to `busy_for`.
    pub(crate) async fn ready(&self, id: &SandboxId, busy_for: Duration) -> Result<Arc<Handle>> {
        let h = self.handle(id).await?;
        self.touch(&h, busy_for).await?;
        Ok(h)
    }

    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo> {
        if let Some(snapshot) = &request.from_snapshot {
            return Err(Error::Unsupported(format!(
                "the e2b backend can't start a sandbox from the snapshot {snapshot:?}: agentbox snapshots are local"
            )));
        }
        let config = &request.config;
        let plan = network_plan(&config.network)?;
        let template = self.config.templates.for_preset(request.metadata.get("preset").map(String::as_str)).to_owned();
        if let Some(key) = request.metadata.keys().find(|k| k.starts_with(INTERNAL_PREFIX)) {
            return Err(Error::InvalidRequest(format!(
                "metadata key {key:?} is reserved: keys starting with {INTERNAL_PREFIX:?} are the backend's own"
            )));
        }
        let mut metadata = request.metadata.clone();
        metadata.insert(MANAGED_KEY.into(), "true".into());
        metadata.insert(EXECUTION_TIMEOUT_KEY.into(), config.execution_timeout.as_millis().to_string());
        metadata.insert(IDLE_TIMEOUT_KEY.into(), config.idle_timeout.as_millis().to_string());
        let timeout = self.clamp_timeout(config.idle_timeout);
        let body = NewSandbox {
            template_id: template.clone(),
            timeout,
            auto_pause: self.config.auto_pause,
            secure: self.config.secure,
            allow_internet_access: plan.allow_internet_access,
            network: plan.network,
            metadata,
            env_vars: config.environment_variables.clone(),
        };
        tracing::debug!(
            template,
            cpu_count = config.cpu_count,
            memory_mb = config.memory_mb,
            "creating an E2B sandbox; CPU, memory and disk come from the template, in-sandbox hardening from E2B's VM"
        );
        let mut http = self.control(Method::POST, &["sandboxes"]).json(&body);
        http.timeout = self.config.timeouts.create;
        let action = format!("create a sandbox from template {template}");
        let subject = format!("E2B template {template}");
        let call = Call { plane: Plane::Control, action: &action, subject: &subject, sandbox: None };
        let response = self.control_send(http, CONTROL_CREATE, call).await?;
        let created: wire::CreatedSandbox = parse_json(&response.body, "Sandbox")?;
        let id = SandboxId::parse(&created.sandbox_id)
            .map_err(|_| Error::backend(format!("E2B returned an unusable sandbox id {:?}", created.sandbox_id)))?;
        if self.config.secure && created.envd_access_token.is_none() {
            tracing::warn!(sandbox_id = %id, template, "E2B returned no envd access token for a secure sandbox; the template's envd may predate secure access");
        }
        let created_at_ms = now_ms();
        self.remember(Arc::new(Handle {
            id: id.clone(),
            template: created.template_id.clone(),
            envd_token: created.envd_access_token,
            traffic_token: created.traffic_access_token,
            domain: created.domain,
            execution_timeout: config.execution_timeout,
            lease: config.idle_timeout,
            state: Mutex::new(HandleState {
                expires_at_ms: created_at_ms + timeout * 1000,
                healthy: true,
                ..HandleState::default()
            }),
        }));
        Ok(SandboxInfo {
            id,
            backend: BACKEND_NAME.to_owned(),
            state: SandboxState::Running,
            created_at_ms,
            metadata: request.metadata,
        })
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let subject = format!("sandbox {id}");
        let call = Call { plane: Plane::Control, action: "kill the sandbox", subject: &subject, sandbox: None };
        let result = self
            .control_send(self.control(Method::DELETE, &["sandboxes", id.as_str()]), CONTROL_IDEMPOTENT, call)
            .await;
        self.forget(id);
        match result {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..1000 {
            let mut request = self.control(Method::GET, &["v2", "sandboxes"]);
            {
                let mut q = request.url.query_pairs_mut();
                q.append_pair("metadata", &format!("{MANAGED_KEY}=true"));
                q.append_pair("state", "running,paused");
                q.append_pair("limit", "100");
                if let Some(token) = &next {
                    q.append_pair("nextToken", token);
                }
            }
            let call = Call { plane: Plane::Control, action: "list sandboxes", subject: "sandbox list", sandbox: None };
            let response = self.control_send(request, CONTROL_IDEMPOTENT, call).await?;
            let page: Vec<ListedSandbox> = parse_json(&response.body, "ListedSandbox list")?;
            for s in page {
                let Ok(id) = SandboxId::parse(&s.sandbox_id) else { continue };
                out.push(SandboxInfo {
                    id,
                    backend: BACKEND_NAME.to_owned(),
                    state: if s.state.as_deref() == Some("paused") {
                        SandboxState::Paused
                    } else {
                        SandboxState::Running
                    },
                    created_at_ms: mapping::rfc3339_ms(&s.started_at),
                    metadata: strip_internal(s.metadata),
                });
            }
            next = response.header("x-next-token").map(str::to_owned).filter(|t| !t.is_empty());
            if next.is_none() {
                return Ok(out);
            }
        }
        Err(Error::backend("E2B's sandbox list did not end after 1000 pages"))
    }

    async fn metrics(&self, id: &SandboxId) -> Result<SandboxMetrics> {
        let h = self.handle(id).await?;
        let subject = format!("sandbox {id}");
        let call =
            Call { plane: Plane::Control, action: "read the sandbox's metrics", subject: &subject, sandbox: None };
        let response = self
            .control_send(self.control(Method::GET, &["sandboxes", id.as_str(), "metrics"]), CONTROL_IDEMPOTENT, call)
            .await?;
        let samples: Vec<SandboxMetric> = parse_json(&response.body, "SandboxMetric list")?;
        let mut m = match mapping::metrics(&samples) {
            Some(m) => m,
            None => {
                // E2B samples every few seconds; a sandbox younger than that has none yet, so ask envd.
                let request = self.sandbox_request(&h, ENVD_PORT, Method::GET, "/metrics")?;
                let call = Call {
                    plane: Plane::Sandbox,
                    action: "read envd's metrics",
                    subject: &subject,
                    sandbox: Some(id.as_str()),
                };
                let response = self.sandbox_send(&h, request, SANDBOX_IDEMPOTENT, call).await?;
                let e: EnvdMetrics = parse_json(&response.body, "envd metrics")?;
                let sample = SandboxMetric {
                    timestamp_unix: if e.ts > 0 { e.ts } else { i64::try_from(now_ms() / 1000).unwrap_or(0) },
                    cpu_count: e.cpu_count,
                    cpu_used_pct: e.cpu_used_pct,
                    mem_used: e.mem_used,
                    mem_total: e.mem_total,
                    disk_used: e.disk_used,
                    disk_total: e.disk_total,
                    timestamp: None,
                    mem_cache: None,
                };
                mapping::metrics(&[sample]).unwrap_or_default()
            }
        };
        let st = h.lock();
        m.execution_count = st.exec_count;
        m.last_exit_code = st.last_exit;
        m.is_healthy = st.healthy;
        m.health_check_failures = st.health_failures;
        Ok(m)
    }

    async fn health(&self, id: &SandboxId) -> Result<HealthStatus> {
        let h = self.handle(id).await?;
        let request = self.sandbox_request(&h, ENVD_PORT, Method::GET, "/health")?;
        let subject = format!("sandbox {id}");
        let call = Call {
            plane: Plane::Sandbox,
            action: "probe envd's health",
            subject: &subject,
            sandbox: Some(id.as_str()),
        };
        let started = Instant::now();
        let result = self.sandbox_send(&h, request, RetryOn { statuses: &[], idempotent: false }, call).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let status = match result {
            Ok(_) => HealthStatus { healthy: true, latency_us, message: None },
            Err(e @ Error::NotFound(_)) => return Err(e),
            Err(e) => HealthStatus { healthy: false, latency_us, message: Some(e.to_string()) },
        };
        let mut st = h.lock();
        st.healthy = status.healthy;
        st.health_failures = if status.healthy { 0 } else { st.health_failures + 1 };
        Ok(status)
    }
}

#[async_trait]
impl SandboxBackend for E2bBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo> {
        let start = match &request.config.start {
            agentbox_config::StartProcess::None => None,
            agentbox_config::StartProcess::Command(argv) => Some(argv.clone()),
            agentbox_config::StartProcess::Image => {
                return Err(Error::Unsupported(
                    "start = \"image\": an E2B template runs its own start command (e2b template build --cmd); \
                     give start a command instead"
                        .into(),
                ));
            }
        };
        let info = self.inner.create(request).await?;
        if let Some(argv) = start {
            // A sandbox whose start process can't be started is a failed create: it is not kept.
            if let Err(e) = self.inner.spawn_background(&info.id, ExecRequest::argv(argv)).await {
                let _ = self.inner.destroy(&info.id).await;
                return Err(e);
            }
        }
        Ok(info)
    }

    async fn exec(&self, id: &SandboxId, request: ExecRequest) -> Result<ExecStream> {
        self.inner.exec(id, request).await
    }

    async fn run_code(&self, id: &SandboxId, request: CodeRequest) -> Result<ExecStream> {
        self.inner.run_code(id, request).await
    }

    async fn open_terminal(&self, id: &SandboxId, request: TerminalRequest) -> Result<Terminal> {
        self.inner.open_terminal(id, request).await
    }

    async fn spawn_background(&self, id: &SandboxId, request: ExecRequest) -> Result<ProcessInfo> {
        self.inner.spawn_background(id, request).await
    }

    async fn list_processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>> {
        self.inner.list_processes(id).await
    }

    async fn kill_process(&self, id: &SandboxId, pid: u32, signal: i32) -> Result<()> {
        self.inner.kill_process(id, pid, signal).await
    }

    async fn read_file(&self, id: &SandboxId, path: &str) -> Result<Vec<u8>> {
        self.inner.read_file(id, path).await
    }

    async fn write_file(&self, id: &SandboxId, path: &str, data: Vec<u8>) -> Result<()> {
        self.inner.write_file(id, path, data).await
    }

    async fn list_dir(&self, id: &SandboxId, path: &str) -> Result<Vec<FileEntry>> {
        self.inner.list_dir(id, path).await
    }

    async fn stat(&self, id: &SandboxId, path: &str) -> Result<FileEntry> {
        self.inner.stat(id, path).await
    }

    async fn mkdir(&self, id: &SandboxId, path: &str) -> Result<()> {
        self.inner.mkdir(id, path).await
    }

    async fn remove(&self, id: &SandboxId, path: &str) -> Result<()> {
        self.inner.remove(id, path).await
    }

    async fn rename(&self, id: &SandboxId, from: &str, to: &str) -> Result<()> {
        self.inner.rename(id, from, to).await
    }

    async fn metrics(&self, id: &SandboxId) -> Result<SandboxMetrics> {
        self.inner.metrics(id).await
    }

    async fn health(&self, id: &SandboxId) -> Result<HealthStatus> {
        self.inner.health(id).await
    }

    async fn update_network(&self, id: &SandboxId, network: NetworkConfig) -> Result<()> {
        let _ = (id, network_plan(&network)?);
        Err(Error::Unsupported(
            "E2B fixes a sandbox's egress rules when it is created; create a new sandbox with the new network policy"
                .into(),
        ))
    }

    async fn keep_alive(&self, id: &SandboxId, for_secs: u64) -> Result<()> {
        let h = self.inner.handle(id).await?;
        let secs = self.inner.clamp_timeout(Duration::from_secs(for_secs));
        self.inner.set_timeout(id, secs).await?;
        h.lock().expires_at_ms = now_ms() + secs * 1000;
        Ok(())
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        self.inner.destroy(id).await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        self.inner.list().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use agentbox_config::{Preset, SandboxConfig};

    use super::*;
    use crate::transport::{MockTransport, TransportError};

    type Script = Vec<(u16, Vec<(&'static str, String)>, String)>;

    /// A backend whose control plane answers from `script` and records every request.
    fn backend(script: Script) -> (E2bBackend, Arc<StdMutex<Vec<HttpRequest>>>) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let log = seen.clone();
        let answers = StdMutex::new(script.into_iter());
        let mut mock = MockTransport::new();
        mock.expect_send().returning(move |request| {
            log.lock().unwrap().push(request);
            let (status, headers, body) = answers.lock().unwrap().next().expect("an unscripted request");
            Ok::<_, TransportError>(HttpResponse {
                status,
                headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                body: body.into_bytes(),
            })
        });
        let mut config = E2bConfig::new("e2b_test_key");
        config.templates.presets.insert(Preset::HeavyCompute, "big-template".into());
        config.retry.initial_backoff = Duration::from_millis(1);
        (E2bBackend::with_transport(config, Arc::new(mock)).unwrap(), seen)
    }

    fn created(id: &str) -> String {
        serde_json::json!({"templateID": "big-template", "sandboxID": id, "clientID": "c", "envdVersion": "0.2.0", "envdAccessToken": "tok"}).to_string()
    }

    fn body(r: &HttpRequest) -> serde_json::Value {
        serde_json::from_slice(&r.body.as_ref().unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn create_maps_the_request_onto_new_sandbox() {
        let (b, seen) = backend(vec![(201, vec![], created("isb1"))]);
        let mut config = SandboxConfig::preset(Preset::HeavyCompute);
        config.idle_timeout = Duration::from_secs(600);
        config.network.enabled = true;
        config.network.allowed_domains = vec!["pypi.org".into()];
        config.environment_variables.insert("A".into(), "1".into());
        let mut request = CreateRequest::new(config);
        request.metadata.insert("run_id".into(), "r1".into());
        request.metadata.insert("preset".into(), "heavy_compute".into());
        let info = b.create(request).await.unwrap();
        assert_eq!((info.id.as_str(), info.backend.as_str(), info.state), ("isb1", "e2b", SandboxState::Running));
        assert_eq!(info.metadata.get("run_id").map(String::as_str), Some("r1"));
        assert!(!info.metadata.contains_key(MANAGED_KEY), "internal keys stay internal");

        let seen = seen.lock().unwrap();
        let r = &seen[0];
        assert_eq!((r.method.as_str(), r.url.as_str()), ("POST", "https://api.e2b.app/sandboxes"));
        assert_eq!(r.header_value("x-api-key"), Some("e2b_test_key"));
        let v = body(r);
        assert_eq!(v["templateID"], "big-template");
        assert_eq!(v["timeout"], 600);
        assert_eq!(v["secure"], true);
        assert_eq!(v["allow_internet_access"], true);
        assert_eq!(v["network"]["allowOut"], serde_json::json!(["pypi.org"]));
        assert_eq!(v["network"]["denyOut"], serde_json::json!(["0.0.0.0/0"]));
        assert_eq!(v["metadata"]["run_id"], "r1");
        assert_eq!(v["metadata"][MANAGED_KEY], "true");
        assert_eq!(v["envVars"]["A"], "1");
    }

    #[tokio::test]
    async fn create_retries_transient_failures_within_the_bound() {
        let (b, seen) =
            backend(vec![(503, vec![], "{}".into()), (502, vec![], "{}".into()), (201, vec![], created("isb2"))]);
        assert_eq!(b.create(CreateRequest::default()).await.unwrap().id.as_str(), "isb2");
        assert_eq!(seen.lock().unwrap().len(), 3);

        let (b, seen) = backend(vec![(500, vec![], "{}".into()); 4]);
        let e = b.create(CreateRequest::default()).await.unwrap_err();
        assert!(matches!(&e, Error::Backend { message: m, .. } if m.contains("500")), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 4, "max_attempts is 4");
    }

    #[tokio::test]
    async fn create_errors_say_what_to_check() {
        let (b, _) = backend(vec![(
            401,
            vec![],
            r#"{"code":401,"message":"Invalid API key, it must start with 'e2b_'"}"#.into(),
        )]);
        let e = b.create(CreateRequest::default()).await.unwrap_err();
        assert!(
            matches!(&e, Error::PermissionDenied(m) if m.contains("E2B_API_KEY") && m.contains("Invalid API key")),
            "{e}"
        );

        let (b, _) = backend(vec![(404, vec![], r#"{"code":404,"message":"template not found"}"#.into())]);
        let e = b.create(CreateRequest::default()).await.unwrap_err();
        assert!(matches!(&e, Error::NotFound(m) if m.contains("code-interpreter-v1")), "{e}");

        let (b, seen) = backend(vec![(
            429,
            vec![("Retry-After", "3600".into())],
            r#"{"code":429,"message":"concurrency limit"}"#.into(),
        )]);
        let e = b.create(CreateRequest::default()).await.unwrap_err();
        assert!(
            matches!(&e, Error::LimitExceeded(m) if m.contains("3600 s") && m.contains("concurrency limit")),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "a Retry-After beyond the bound is reported, not waited out");

        let mut config = SandboxConfig::default();
        config.network.enabled = true;
        config.network.dns_servers = vec!["1.1.1.1".into()];
        let (b, seen) = backend(vec![]);
        let e = b.create(CreateRequest::new(config)).await.unwrap_err();
        assert!(matches!(&e, Error::Unsupported(m) if m.contains("dns_servers")), "{e}");
        assert!(seen.lock().unwrap().is_empty(), "nothing is created for an unsupported policy");

        let mut request = CreateRequest::default();
        request.metadata.insert("agentbox.managed".into(), "x".into());
        assert!(matches!(backend(vec![]).0.create(request).await, Err(Error::InvalidRequest(_))));
    }

    #[tokio::test]
    async fn list_follows_pages_and_filters_on_our_label() {
        let page = |id: &str, state: &str| {
            serde_json::json!([{"templateID": "t", "sandboxID": id, "clientID": "c", "startedAt": "2024-05-01T10:00:00Z",
                "endAt": "2024-05-01T11:00:00Z", "cpuCount": 2, "memoryMB": 512, "diskSizeMB": 1024, "envdVersion": "0.2.0",
                "state": state, "metadata": {"run_id": id, MANAGED_KEY: "true"}}])
            .to_string()
        };
        let (b, seen) = backend(vec![
            (200, vec![("X-Next-Token", "page2".into())], page("ia", "running")),
            (200, vec![], page("ib", "paused")),
        ]);
        let list = b.list().await.unwrap();
        assert_eq!(
            list.iter().map(|s| (s.id.as_str(), s.state)).collect::<Vec<_>>(),
            [("ia", SandboxState::Running), ("ib", SandboxState::Paused)]
        );
        assert_eq!(list[0].created_at_ms, 1_714_557_600_000);
        assert_eq!(list[0].metadata, BTreeMap::from([("run_id".to_owned(), "ia".to_owned())]));
        let seen = seen.lock().unwrap();
        let q: BTreeMap<String, String> = seen[0].url.query_pairs().into_owned().collect();
        assert_eq!(q["metadata"], "agentbox.managed=true");
        assert_eq!(q["state"], "running,paused");
        let q: BTreeMap<String, String> = seen[1].url.query_pairs().into_owned().collect();
        assert_eq!(q["nextToken"], "page2");
    }

    #[tokio::test]
    async fn destroy_is_idempotent_and_keep_alive_sets_the_timeout() {
        let (b, seen) =
            backend(vec![(204, vec![], String::new()), (404, vec![], r#"{"code":404,"message":"not found"}"#.into())]);
        let id = SandboxId::new_unchecked("isb3");
        b.destroy(&id).await.unwrap();
        b.destroy(&id).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0].url.path(), "/sandboxes/isb3");
        assert_eq!(seen.lock().unwrap()[0].method, Method::DELETE);

        let (b, seen) = backend(vec![(201, vec![], created("isb4")), (204, vec![], String::new())]);
        let info = b.create(CreateRequest::default()).await.unwrap();
        b.keep_alive(&info.id, 900).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].url.path(), "/sandboxes/isb4/timeout");
        assert_eq!(body(&seen[1]), serde_json::json!({"timeout": 900}));
    }

    #[tokio::test]
    async fn use_extends_the_lease_only_when_it_runs_low() {
        let (b, seen) = backend(vec![(201, vec![], created("isb5")), (204, vec![], String::new())]);
        let config = SandboxConfig { idle_timeout: Duration::from_secs(600), ..SandboxConfig::default() };
        let info = b.create(CreateRequest::new(config)).await.unwrap();
        let h = b.inner.handle(&info.id).await.unwrap();
        b.inner.touch(&h, Duration::from_secs(10)).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "a fresh lease needs no extension");
        b.inner.touch(&h, Duration::from_secs(1200)).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "a long execution extends the lease");
        assert_eq!(body(&seen[1]), serde_json::json!({"timeout": 1800}));
    }

    #[tokio::test]
    async fn unknown_sandboxes_are_not_found_and_metrics_map() {
        let (b, _) = backend(vec![(404, vec![], r#"{"code":404,"message":"sandbox not found"}"#.into())]);
        let e = b.metrics(&SandboxId::new_unchecked("nope")).await.unwrap_err();
        assert!(matches!(&e, Error::NotFound(m) if m == "sandbox nope"), "{e}");

        let sample = serde_json::json!([{"timestamp": "2024-05-01T10:00:00Z", "timestampUnix": 1_714_557_600, "cpuCount": 2,
            "cpuUsedPct": 10.0, "memUsed": 268_435_456u64, "memTotal": 1_073_741_824u64, "diskUsed": 536_870_912u64,
            "diskTotal": 10_737_418_240u64}]);
        let (b, _) = backend(vec![(201, vec![], created("isb6")), (200, vec![], sample.to_string())]);
        let info = b.create(CreateRequest::default()).await.unwrap();
        let m = b.metrics(&info.id).await.unwrap();
        assert_eq!(
            (m.cpu_usage_percent, m.memory_used_mb, m.disk_used_gb, m.sampled_at_ms),
            (20.0, 256.0, 0.5, 1_714_557_600_000)
        );
    }
}
