//! The MCP server: [`McpServer`] (shared by every session) and [`McpSession`] (one client connection or HTTP session).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agentbox_core::LockExt;
use agentbox_core::{CreateOptions, ManagedSandbox, RunId, SandboxManager, SandboxState};
use agentbox_tools::{ToolContext, ToolError, ToolErrorKind, ToolRegistry, ToolResult};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use crate::catalog::{self, RUN_ID};
use crate::config::McpConfig;
use crate::host::SandboxHost;
use crate::sandboxes::{
    self, CreateInput, EgressInput, ListInput, RunInput, SANDBOX_CREATE, SANDBOX_DESTROY, SANDBOX_EGRESS, SANDBOX_LIST,
    SANDBOX_METRICS, SANDBOX_PAUSE, SANDBOX_RESTORE, SANDBOX_RESUME, SANDBOX_SNAPSHOT, SANDBOX_START, SANDBOX_STOP,
    SNAPSHOT_DELETE, SNAPSHOT_LIST, SnapshotInput, SnapshotNameInput, Summary,
};

/// Prefix of the run id of each session's default sandbox.
pub const SESSION_RUN_PREFIX: &str = "mcp-session-";

const INSTRUCTIONS: &str = "agentbox gives you isolated Linux sandboxes (bash, python3, node; your files live \
    under /home/user) to run commands and code, edit files and search the web. Just call shell, run_code or the file \
    tools: without run_id they work in this session's own sandbox, created on first use and destroyed when the \
    session ends, so files, installed packages and code variables persist between calls. Create more sandboxes with \
    sandbox_create and address them with run_id. The network is off unless a sandbox is created with \
    overrides.network.enabled. Long outputs are cut in the middle; the full text is saved to a file whose path the \
    result gives. A failed call returns isError with what went wrong and what to do.";

/// How a session reaches its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// One byte stream (stdio, a socket): the connection is the session.
    Stream,
    /// Streamable HTTP: a session exists only when the client keeps an `Mcp-Session-Id`.
    Http,
}

struct Shared {
    host: Arc<dyn SandboxHost>,
    tools: ToolRegistry,
    config: McpConfig,
    catalog: Vec<Tool>,
    /// Default sandboxes of live sessions, which their session (or [`McpServer::shutdown`]) destroys.
    defaults: Mutex<HashSet<RunId>>,
    /// Destructions started by sessions that ended; shutdown waits for them.
    cleanups: TaskTracker,
    shut_down: AtomicBool,
}

impl Shared {
    fn defaults(&self) -> MutexGuard<'_, HashSet<RunId>> {
        self.defaults.lock_unpoisoned()
    }

    fn manager(&self) -> &SandboxManager {
        self.host.manager()
    }

    /// Destroys a default sandbox; a sandbox already gone is fine.
    async fn destroy_default(&self, run_id: &RunId) {
        match self.host.destroy(run_id).await {
            Ok(()) => tracing::info!(run_id = %run_id, "destroyed the session's default sandbox"),
            Err(agentbox_core::Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(run_id = %run_id, error = %e, "destroying a session's default sandbox failed"),
        }
    }
}

/// The MCP server: the sandbox lifecycle tools and every tool of a [`ToolRegistry`], over any
/// [`SandboxHost`].
///
/// Each client connection (stdio) or HTTP session gets an [`McpSession`]; calls without a
/// `run_id` work in that session's default sandbox, created on first use and destroyed when the
/// session ends. Serve it with [`serve`](Self::serve) on a byte stream (stdio) or mount
/// [`http_service`](crate::http_service) in an HTTP server.
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").field("tools", &self.shared.catalog.len()).finish_non_exhaustive()
    }
}

impl McpServer {
    /// A server for the sandboxes of `host`, serving the lifecycle tools and `tools`.
    #[must_use]
    pub fn new(host: Arc<dyn SandboxHost>, tools: ToolRegistry, config: McpConfig) -> Self {
        let catalog = catalog::build(&tools);
        Self {
            shared: Arc::new(Shared {
                host,
                tools,
                config,
                catalog,
                defaults: Mutex::new(HashSet::new()),
                cleanups: TaskTracker::new(),
                shut_down: AtomicBool::new(false),
            }),
        }
    }

    /// The tools as MCP lists them: name, description, input schema and hints.
    #[must_use]
    pub fn tools(&self) -> &[Tool] {
        &self.shared.catalog
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &McpConfig {
        &self.shared.config
    }

    /// The manager holding the sandboxes.
    #[must_use]
    pub fn manager(&self) -> &SandboxManager {
        self.shared.manager()
    }

    /// Run ids of the default sandboxes of the sessions alive now.
    #[must_use]
    pub fn session_sandboxes(&self) -> Vec<RunId> {
        let mut v: Vec<RunId> = self.shared.defaults().iter().cloned().collect();
        v.sort();
        v
    }

    /// A session on a byte stream (stdio, a socket): the connection is the session.
    #[must_use]
    pub fn stream_session(&self) -> McpSession {
        McpSession::new(self.shared.clone(), Transport::Stream)
    }

    /// A session of the streamable HTTP transport.
    pub(crate) fn http_session(&self) -> McpSession {
        McpSession::new(self.shared.clone(), Transport::Http)
    }

    /// Destroys the default sandbox of every session still alive and waits for the destructions
    /// sessions that ended have started. Later calls without a `run_id` are refused.
    pub async fn shutdown(&self) {
        self.shared.shut_down.store(true, Ordering::SeqCst);
        let runs: Vec<RunId> = self.shared.defaults().drain().collect();
        for run in &runs {
            self.shared.destroy_default(run).await;
        }
        self.shared.cleanups.close();
        self.shared.cleanups.wait().await;
    }
}

/// The state behind one session; dropping the last handle destroys its default sandbox.
struct SessionState {
    shared: Arc<Shared>,
    run_id: RunId,
    /// Serializes creating and destroying the default sandbox; `true` once the session ended.
    closed: tokio::sync::Mutex<bool>,
}

impl SessionState {
    /// The default sandbox, created now if needed (with `options`, else the configured preset).
    async fn default_sandbox(&self, options: Option<CreateOptions>) -> ToolResult<(ManagedSandbox, bool)> {
        let closed = self.closed.lock().await;
        if *closed || self.shared.shut_down.load(Ordering::SeqCst) {
            return Err(ToolError::new(
                ToolErrorKind::Unsupported,
                "this MCP session has ended, so it has no default sandbox; reconnect, or pass the run_id of a sandbox made with sandbox_create",
            ));
        }
        let manager = self.shared.manager();
        if options.is_none() {
            if let Ok(s) = manager.get(&self.run_id) {
                if s.state != SandboxState::Destroying {
                    return Ok((s, false));
                }
            }
        }
        let options =
            options.unwrap_or(CreateOptions { preset: Some(self.shared.config.default_preset), config: None });
        self.shared.defaults().insert(self.run_id.clone());
        let result = self.shared.host.create(&self.run_id, options).await;
        if result.is_err() && manager.get(&self.run_id).is_err() {
            self.shared.defaults().remove(&self.run_id);
        }
        drop(closed);
        Ok(result?)
    }

    /// Destroys the default sandbox now (for `sandbox_destroy`); the next call makes a fresh one.
    async fn destroy_default(&self) -> ToolResult<()> {
        let _closed = self.closed.lock().await;
        self.shared.host.destroy(&self.run_id).await.map_err(|e| match e {
            agentbox_core::Error::NotFound(_) => ToolError::not_found(
                "this session's default sandbox does not exist (it is created by the first call without run_id)",
            ),
            other => ToolError::from(other),
        })?;
        self.shared.defaults().remove(&self.run_id);
        Ok(())
    }

    /// Ends the session: destroys its default sandbox, if it has one.
    async fn close(&self) {
        let mut closed = self.closed.lock().await;
        *closed = true;
        let owned = self.shared.defaults().remove(&self.run_id);
        if owned {
            self.shared.destroy_default(&self.run_id).await;
        }
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        if !self.shared.defaults().remove(&self.run_id) {
            return;
        }
        let shared = self.shared.clone();
        let run = self.run_id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                tracing::debug!(run_id = %run, "session ended; destroying its default sandbox");
                let cleanup = async move { shared.destroy_default(&run).await };
                self.shared.cleanups.spawn_on(cleanup, &handle);
            }
            Err(_) => {
                tracing::warn!(run_id = %run, "session ended outside a runtime; its sandbox is left to the manager");
            }
        }
    }
}

/// One MCP session: the [`ServerHandler`] serving one client connection or HTTP session.
#[derive(Clone)]
pub struct McpSession {
    state: Arc<SessionState>,
    transport: Transport,
}

impl std::fmt::Debug for McpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSession").field("run_id", &self.state.run_id).finish_non_exhaustive()
    }
}

impl McpSession {
    fn new(shared: Arc<Shared>, transport: Transport) -> Self {
        let run_id = RunId::new_unchecked(format!("{SESSION_RUN_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        Self { state: Arc::new(SessionState { shared, run_id, closed: tokio::sync::Mutex::new(false) }), transport }
    }

    /// Run id of this session's default sandbox (which may not exist yet).
    #[must_use]
    pub fn default_run_id(&self) -> &RunId {
        &self.state.run_id
    }

    /// Ends the session now: destroys its default sandbox if it has one. Calls without a run id fail afterwards.
    pub async fn close(&self) {
        self.state.close().await;
    }

    fn shared(&self) -> &Shared {
        &self.state.shared
    }

    /// Whether this request belongs to no session (streamable HTTP without `Mcp-Session-Id`).
    fn stateless(&self, ctx: &RequestContext<RoleServer>) -> bool {
        self.transport == Transport::Http
            && ctx.extensions.get::<http::request::Parts>().is_none_or(|p| !p.headers.contains_key("mcp-session-id"))
    }

    fn no_session_error() -> ToolError {
        ToolError::new(
            ToolErrorKind::InvalidInput,
            "this request has no MCP session (stateless HTTP), so there is no default sandbox: create one with \
             sandbox_create and pass its run_id",
        )
    }

    /// The sandbox a call works in: the named one, or this session's default.
    async fn target(&self, run_id: Option<&str>, stateless: bool) -> ToolResult<RunId> {
        match run_id {
            Some(r) => {
                let run = sandboxes::run_id(r)?;
                match self.shared().manager().get(&run) {
                    Ok(_) => Ok(run),
                    Err(_) => Err(ToolError::not_found(format!(
                        "no sandbox has run_id {r:?}: create it with sandbox_create, or leave run_id out to use this session's default sandbox"
                    ))),
                }
            }
            None if stateless => Err(Self::no_session_error()),
            None => Ok(self.state.default_sandbox(None).await?.0.run_id),
        }
    }

    async fn sandbox_create(&self, input: Value, stateless: bool) -> ToolResult<Value> {
        let mut input: CreateInput = sandboxes::parse(SANDBOX_CREATE, input)?;
        let default = &self.state.run_id;
        if let Some(snapshot) = input.from_snapshot.take() {
            let run = match input.run_id.as_deref() {
                Some(r) => sandboxes::run_id(r)?,
                None if stateless => return Err(Self::no_session_error()),
                None => self.state.run_id.clone(),
            };
            if run != *default && run.as_str().starts_with(SESSION_RUN_PREFIX) {
                return Err(ToolError::invalid_input(format!(
                    "run_id {:?}: names starting with {SESSION_RUN_PREFIX:?} are reserved for session sandboxes; choose another",
                    run.as_str()
                )));
            }
            let s = self.shared().host.create_from_snapshot(&run, &snapshot, input.options()).await?;
            return Ok(sandboxes::created(&s, true, default));
        }
        match input.run_id.clone() {
            Some(r) => {
                let run = sandboxes::run_id(&r)?;
                if run.as_str().starts_with(SESSION_RUN_PREFIX) {
                    return Err(ToolError::invalid_input(format!(
                        "run_id {r:?}: names starting with {SESSION_RUN_PREFIX:?} are reserved for session sandboxes; choose another"
                    )));
                }
                let (s, created) = self.shared().host.create(&run, input.options()).await?;
                Ok(sandboxes::created(&s, created, default))
            }
            None if stateless => Err(Self::no_session_error()),
            None => {
                let (s, created) = self.state.default_sandbox(Some(input.options())).await?;
                Ok(sandboxes::created(&s, created, default))
            }
        }
    }

    fn sandbox_list(&self, input: Value) -> ToolResult<Value> {
        let _: ListInput = sandboxes::parse(SANDBOX_LIST, input)?;
        let default = &self.state.run_id;
        let list: Vec<Summary> = self
            .shared()
            .manager()
            .list()
            .iter()
            .filter(|s| !s.run_id.as_str().starts_with(SESSION_RUN_PREFIX) || s.run_id == *default)
            .map(|s| Summary::of(s, default))
            .collect();
        Ok(json!({ "sandboxes": list }))
    }

    async fn sandbox_destroy(&self, input: Value, stateless: bool) -> ToolResult<Value> {
        let input: RunInput = sandboxes::parse(SANDBOX_DESTROY, input)?;
        let run = match input.run_id.as_deref() {
            Some(r) => sandboxes::run_id(r)?,
            None if stateless => return Err(Self::no_session_error()),
            None => self.state.run_id.clone(),
        };
        if run == self.state.run_id {
            self.state.destroy_default().await?;
        } else {
            self.shared().host.destroy(&run).await.map_err(|e| match e {
                agentbox_core::Error::NotFound(_) => {
                    ToolError::not_found(format!("no sandbox has run_id {:?}; sandbox_list shows them", run.as_str()))
                }
                other => ToolError::from(other),
            })?;
        }
        Ok(json!({ "run_id": run.as_str(), "destroyed": true }))
    }

    async fn sandbox_metrics(&self, input: Value, stateless: bool) -> ToolResult<Value> {
        let input: RunInput = sandboxes::parse(SANDBOX_METRICS, input)?;
        let run = match input.run_id.as_deref() {
            Some(r) => self.target(Some(r), stateless).await?,
            None if stateless => return Err(Self::no_session_error()),
            None => self.state.run_id.clone(),
        };
        let manager = self.shared().manager();
        let snap = manager.get(&run).map_err(|_| {
            ToolError::not_found(
                "this session's default sandbox does not exist yet (the first call without run_id creates it)",
            )
        })?;
        let metrics = manager.metrics(&run).await?;
        let mut v = serde_json::to_value(metrics).unwrap_or_default();
        v["run_id"] = json!(run.as_str());
        v["sandbox_id"] = json!(snap.sandbox.id.as_str());
        v["limits"] = json!({
            "cpu_count": snap.config.cpu_count,
            "memory_mb": snap.config.memory_mb,
            "disk_gb": snap.config.disk_gb,
        });
        Ok(v)
    }

    async fn registry_tool(&self, name: &str, mut input: Value, stateless: bool) -> ToolResult<Value> {
        let shared = self.shared();
        let Some(tool) = shared.tools.get(name) else {
            return Err(ToolError::new(ToolErrorKind::UnknownTool, format!("no tool named {name:?}")));
        };
        if !tool.needs_sandbox() {
            let ctx = ToolContext::without_sandbox().with_config(shared.config.tools.clone());
            return tool.call(&ctx, input).await;
        }
        let run_id = match input.as_object_mut().and_then(|m| m.remove(RUN_ID)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => return Err(ToolError::invalid_input(format!("run_id must be a string, got {other}"))),
        };
        let run = self.target(run_id.as_deref(), stateless).await?;
        let ctx = ToolContext::new(shared.manager().clone(), run).with_config(shared.config.tools.clone());
        tool.call(&ctx, input).await
    }

    async fn dispatch(&self, name: &str, input: Value, stateless: bool) -> ToolResult<Value> {
        match name {
            SANDBOX_CREATE => self.sandbox_create(input, stateless).await,
            SANDBOX_LIST => self.sandbox_list(input),
            SANDBOX_DESTROY => self.sandbox_destroy(input, stateless).await,
            SANDBOX_METRICS => self.sandbox_metrics(input, stateless).await,
            SANDBOX_PAUSE | SANDBOX_RESUME => {
                let input: RunInput = sandboxes::parse(name, input)?;
                let run = self.target(input.run_id.as_deref(), stateless).await?;
                let manager = self.shared().manager();
                let s = if name == SANDBOX_PAUSE { manager.pause(&run).await? } else { manager.resume(&run).await? };
                Ok(json!({ "run_id": run.as_str(), "state": s.state.as_str() }))
            }
            SANDBOX_STOP | SANDBOX_START => {
                let input: RunInput = sandboxes::parse(name, input)?;
                let run = self.target(input.run_id.as_deref(), stateless).await?;
                let host = &self.shared().host;
                let s = if name == SANDBOX_STOP { host.stop(&run).await? } else { host.start(&run).await? };
                Ok(json!({ "run_id": run.as_str(), "state": s.state.as_str() }))
            }
            SANDBOX_SNAPSHOT => {
                let input: SnapshotInput = sandboxes::parse(SANDBOX_SNAPSHOT, input)?;
                let run = self.target(input.run_id.as_deref(), stateless).await?;
                let snapshot = self.shared().host.snapshot(&run, &input.name).await?;
                Ok(json!({ "run_id": run.as_str(), "snapshot": snapshot }))
            }
            SANDBOX_RESTORE => {
                let input: SnapshotInput = sandboxes::parse(SANDBOX_RESTORE, input)?;
                let run = self.target(input.run_id.as_deref(), stateless).await?;
                let s = self.shared().host.restore(&run, &input.name).await?;
                Ok(json!({ "run_id": run.as_str(), "sandbox_id": s.sandbox.id.as_str(), "restored_from": input.name }))
            }
            SNAPSHOT_LIST => {
                let _: ListInput = sandboxes::parse(SNAPSHOT_LIST, input)?;
                Ok(json!({ "snapshots": self.shared().manager().list_snapshots().await? }))
            }
            SANDBOX_EGRESS => {
                let input: EgressInput = sandboxes::parse(SANDBOX_EGRESS, input)?;
                let run = self.target(input.run_id.as_deref(), stateless).await?;
                let query = agentbox_core::egress::EgressQuery {
                    after: input.after,
                    limit: input.limit,
                    host: input.host,
                    decision: input
                        .refused_only
                        .unwrap_or(false)
                        .then_some(agentbox_core::egress::EgressDecision::Refused),
                };
                let page = self.shared().manager().egress_log(&run, query).await?;
                Ok(
                    json!({ "run_id": run.as_str(), "records": page.records, "next": page.next, "dropped": page.dropped }),
                )
            }
            SNAPSHOT_DELETE => {
                let input: SnapshotNameInput = sandboxes::parse(SNAPSHOT_DELETE, input)?;
                self.shared().host.delete_snapshot(&input.name).await?;
                Ok(json!({ "name": input.name, "deleted": true }))
            }
            other => self.registry_tool(other, input, stateless).await,
        }
    }
}

impl ServerHandler for McpSession {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("agentbox", env!("CARGO_PKG_VERSION"))
                    .with_title("agentbox sandboxes")
                    .with_description("Isolated Linux sandboxes for running commands and code, files and web search"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.shared().catalog.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.shared().catalog.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        if !self.shared().catalog.iter().any(|t| t.name == name) {
            let names: Vec<&str> = self.shared().catalog.iter().map(|t| t.name.as_ref()).collect();
            return Err(ErrorData::invalid_params(
                format!("no tool named {name:?}; available: {}", names.join(", ")),
                None,
            ));
        }
        let input = Value::Object(request.arguments.clone().unwrap_or_default());
        let stateless = self.stateless(&context);
        let result = tokio::select! {
            r = self.dispatch(name, input, stateless) => r,
            () = context.ct.cancelled() => Err(ToolError::new(ToolErrorKind::Failed, "the call was cancelled by the client")),
        };
        Ok(match result {
            Ok(value) => catalog::success(value),
            Err(e) => {
                tracing::debug!(tool = name, kind = e.kind.as_str(), error = %e.message, "tool call failed");
                catalog::failure(&e)
            }
        }
        .into())
    }
}
