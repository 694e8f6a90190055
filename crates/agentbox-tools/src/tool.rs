//! The tool interface: [`Tool`], [`TypedTool`], [`ToolContext`] and [`ToolRegistry`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{ExecRequest, ExecStream, FileEntry, ProcessInfo, RunId, SandboxManager};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ToolError, ToolErrorKind, ToolResult};

/// How tools size their output and where they keep their state inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsConfig {
    /// The sandbox user's home: relative paths are taken from here. A [`ToolContext`] for a run sets
    /// it from the run's sandbox ([`agentbox_core::config::RunAs::home`]); the default is the default user's.
    pub home_dir: String,
    /// Directory inside the sandbox for code contexts, drivers and saved outputs.
    pub state_dir: String,
    /// Bytes of each output stream shown to the model; the middle of longer output is cut with a mark.
    pub max_output_bytes: usize,
    /// Largest format of one rich result of code (a repr, JSON, an image), cut inside the sandbox with a
    /// mark and saved whole to a file there when longer.
    pub max_result_bytes: usize,
    /// Largest whole answer of one code run (results that don't fit are left out and saved to files).
    pub max_response_bytes: usize,
    /// Most rich results in one answer of code.
    pub max_results: usize,
    /// Most JSON elements (array items, object members) in one answer's JSON results: a parsed element costs
    /// the host about 32 bytes however short its text.
    pub max_result_json_elements: usize,
    /// Bytes of a file's text returned by one read; longer reads end early and say where to continue.
    pub max_read_bytes: usize,
    /// Largest output kept in full in the sandbox when the shown part is cut.
    pub max_spill_bytes: usize,
    /// Largest file moved by one upload or download.
    pub max_transfer_bytes: usize,
    /// Most entries one listing returns.
    pub max_list_entries: usize,
    /// Extra time a code context gets to answer after its own time limit before it counts as stuck.
    pub code_grace: Duration,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            home_dir: agentbox_core::config::RunAs::default().home(),
            state_dir: "/tmp/agentbox".into(),
            max_output_bytes: 16 * 1024,
            max_result_bytes: 1024 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
            max_results: 100,
            max_result_json_elements: 256 * 1024,
            max_read_bytes: 64 * 1024,
            max_spill_bytes: 64 * 1024 * 1024,
            max_transfer_bytes: 16 * 1024 * 1024,
            max_list_entries: 1000,
            code_grace: Duration::from_secs(15),
        }
    }
}

impl ToolsConfig {
    /// An absolute path inside the sandbox for `path`: relative paths are taken from the home.
    ///
    /// # Errors
    /// [`ToolErrorKind::InvalidInput`] for an empty path or one with NUL bytes.
    pub fn resolve(&self, path: &str) -> ToolResult<String> {
        let path = path.trim();
        if path.is_empty() {
            return Err(ToolError::invalid_input("the path is empty: give a file path such as /home/user/main.py"));
        }
        if path.contains('\0') {
            return Err(ToolError::invalid_input("the path contains a NUL byte"));
        }
        if path.starts_with('/') {
            return Ok(path.to_owned());
        }
        let rel = path.strip_prefix("./").unwrap_or(path);
        if rel == "~" || rel == "." {
            return Ok(self.home_dir.clone());
        }
        let rel = rel.strip_prefix("~/").unwrap_or(rel);
        Ok(format!("{}/{rel}", self.home_dir.trim_end_matches('/')))
    }
}

/// `config` with the home of the run's sandbox user, when the manager holds the run.
fn run_home(manager: &SandboxManager, run_id: &RunId, mut config: ToolsConfig) -> ToolsConfig {
    if let Ok(sandbox) = manager.get(run_id) {
        config.home_dir = sandbox.config.security.run_as.home();
    }
    config
}

/// What a tool runs against: a run's sandbox (through the [`SandboxManager`], so any backend works) and the sizing rules.
#[derive(Debug, Clone)]
pub struct ToolContext {
    sandbox: Option<(SandboxManager, RunId)>,
    config: Arc<ToolsConfig>,
}

impl ToolContext {
    /// A context for the run's sandbox, which the manager must already hold.
    #[must_use]
    pub fn new(manager: SandboxManager, run_id: RunId) -> Self {
        let config = Arc::new(run_home(&manager, &run_id, ToolsConfig::default()));
        Self { sandbox: Some((manager, run_id)), config }
    }

    /// A context with no sandbox, for tools that need none (web search).
    #[must_use]
    pub fn without_sandbox() -> Self {
        Self { sandbox: None, config: Arc::new(ToolsConfig::default()) }
    }

    /// Replaces the sizing rules; the home stays the run's sandbox user's, when there is a run.
    #[must_use]
    pub fn with_config(mut self, config: ToolsConfig) -> Self {
        self.config = Arc::new(match &self.sandbox {
            Some((manager, run_id)) => run_home(manager, run_id, config),
            None => config,
        });
        self
    }

    /// The sizing rules.
    #[must_use]
    pub fn config(&self) -> &ToolsConfig {
        &self.config
    }

    /// The run this context works on, if any.
    #[must_use]
    pub fn run_id(&self) -> Option<&RunId> {
        self.sandbox.as_ref().map(|(_, r)| r)
    }

    /// The run's sandbox.
    ///
    /// # Errors
    /// [`ToolErrorKind::Unsupported`] when the context has no sandbox.
    pub fn sandbox(&self) -> ToolResult<ToolSandbox<'_>> {
        match &self.sandbox {
            Some((manager, run_id)) => Ok(ToolSandbox { manager, run_id, config: &self.config }),
            None => Err(ToolError::new(
                ToolErrorKind::Unsupported,
                "this tool needs a sandbox, and the call was made without one: give a run id",
            )),
        }
    }
}

/// One run's sandbox, with errors turned into [`ToolError`]s.
#[derive(Debug, Clone, Copy)]
pub struct ToolSandbox<'a> {
    manager: &'a SandboxManager,
    run_id: &'a RunId,
    config: &'a ToolsConfig,
}

impl ToolSandbox<'_> {
    /// The manager.
    #[must_use]
    pub fn manager(&self) -> &SandboxManager {
        self.manager
    }

    /// The run.
    #[must_use]
    pub fn run_id(&self) -> &RunId {
        self.run_id
    }

    /// The sizing rules.
    #[must_use]
    pub fn config(&self) -> &ToolsConfig {
        self.config
    }

    /// The sandbox's default execution time limit.
    ///
    /// # Errors
    /// When the run is unknown.
    pub fn execution_timeout(&self) -> ToolResult<Duration> {
        Ok(self.manager.get(self.run_id)?.config.execution_timeout)
    }

    /// Starts a command.
    ///
    /// # Errors
    /// The backend's error.
    pub async fn exec(&self, request: ExecRequest) -> ToolResult<ExecStream> {
        Ok(self.manager.exec(self.run_id, request).await?)
    }

    /// Starts a background process.
    ///
    /// # Errors
    /// The backend's error.
    pub async fn spawn_background(&self, request: ExecRequest) -> ToolResult<ProcessInfo> {
        Ok(self.manager.spawn_background(self.run_id, request).await?)
    }

    /// Signals a background process and its descendants.
    ///
    /// # Errors
    /// The backend's error.
    pub async fn kill_process(&self, pid: u32, signal: i32) -> ToolResult<()> {
        Ok(self
            .manager
            .with_sandbox(self.run_id, |b, id| async move { b.kill_process(&id, pid, signal).await })
            .await?)
    }

    /// Reads a whole file, up to the sandbox's `max_read_bytes`; a missing file gives "file not found: PATH".
    ///
    /// # Errors
    /// As described; a larger file is refused with the limit named.
    pub async fn read_file(&self, path: &str) -> ToolResult<Vec<u8>> {
        self.manager.read_file(self.run_id, path).await.map_err(|e| ToolError::from_path_error(e, "file", path))
    }

    /// Reads a whole file of at most `max` bytes, streamed in bounded chunks: a larger file (a sparse one
    /// included) is refused with [`ToolErrorKind::LimitExceeded`](crate::ToolErrorKind) before it is read.
    ///
    /// # Errors
    /// Not found, not a regular file, or over `max`.
    pub async fn read_file_limited(&self, path: &str, max: u64) -> ToolResult<Vec<u8>> {
        self.manager
            .read_file_limited(self.run_id, path, max)
            .await
            .map_err(|e| ToolError::from_path_error(e, "file", path))
    }

    /// Writes a whole file, creating parent directories.
    ///
    /// # Errors
    /// The backend's error, naming the path.
    pub async fn write_file(&self, path: &str, data: Vec<u8>) -> ToolResult<()> {
        self.manager
            .write_file(self.run_id, path, data)
            .await
            .map_err(|e| ToolError::from_path_error(e, "directory", path))
    }

    /// Lists a directory.
    ///
    /// # Errors
    /// "directory not found: PATH" and the backend's other errors.
    pub async fn list_dir(&self, path: &str) -> ToolResult<Vec<FileEntry>> {
        self.manager.list_dir(self.run_id, path).await.map_err(|e| ToolError::from_path_error(e, "directory", path))
    }

    /// Describes a path.
    ///
    /// # Errors
    /// "file not found: PATH" and the backend's other errors.
    pub async fn stat(&self, path: &str) -> ToolResult<FileEntry> {
        self.manager
            .with_sandbox(self.run_id, |b, id| async move { b.stat(&id, path).await })
            .await
            .map_err(|e| ToolError::from_path_error(e, "file", path))
    }

    /// Removes a file or a directory tree.
    ///
    /// # Errors
    /// "file not found: PATH" and the backend's other errors.
    pub async fn remove(&self, path: &str) -> ToolResult<()> {
        self.manager
            .with_sandbox(self.run_id, |b, id| async move { b.remove(&id, path).await })
            .await
            .map_err(|e| ToolError::from_path_error(e, "file", path))
    }

    /// Renames a path.
    ///
    /// # Errors
    /// The backend's error.
    pub async fn rename(&self, from: &str, to: &str) -> ToolResult<()> {
        self.manager
            .with_sandbox(self.run_id, |b, id| async move { b.rename(&id, from, to).await })
            .await
            .map_err(|e| ToolError::from_path_error(e, "file", from))
    }
}

/// A tool's public description: what a model sees.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    /// Unique name.
    pub name: String,
    /// What it does and when to use it.
    pub description: String,
    /// JSON Schema of its input.
    pub input_schema: Value,
}

/// Something a model can call: a name, a description, an input schema, and an async call.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// Unique name, `snake_case`.
    fn name(&self) -> &str;

    /// What it does and when to use it, for the model.
    fn description(&self) -> &str;

    /// JSON Schema (draft 2020-12) of the input it accepts.
    fn input_schema(&self) -> Value;

    /// Whether calls need a sandbox in the context.
    fn needs_sandbox(&self) -> bool {
        true
    }

    /// Runs the tool. Every failure is a [`ToolError`] the model can read.
    async fn call(&self, ctx: &ToolContext, input: Value) -> ToolResult<Value>;

    /// The spec a model sees.
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name().to_owned(),
            description: self.description().to_owned(),
            input_schema: self.input_schema(),
        }
    }
}

/// A tool with typed input and output; implementing it implements [`Tool`], with the schema derived from the input type.
#[async_trait]
pub trait TypedTool: Send + Sync + 'static {
    /// The input, deserialized from the call's JSON.
    type Input: DeserializeOwned + schemars::JsonSchema + Send;
    /// The output, serialized to JSON.
    type Output: Serialize + Send;

    /// Unique name.
    const NAME: &'static str;

    /// Whether calls need a sandbox.
    const NEEDS_SANDBOX: bool = true;

    /// What it does and when to use it.
    fn description(&self) -> &str;

    /// Runs the tool.
    async fn run(&self, ctx: &ToolContext, input: Self::Input) -> ToolResult<Self::Output>;
}

/// The JSON Schema of `T`, with subschemas inlined so a model sees one self-contained object.
#[must_use]
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
        })
        .into_generator();
    let schema = generator.into_root_schema_for::<T>();
    schema.to_value()
}

#[async_trait]
impl<T: TypedTool> Tool for T {
    fn name(&self) -> &str {
        T::NAME
    }

    fn description(&self) -> &str {
        TypedTool::description(self)
    }

    fn input_schema(&self) -> Value {
        schema_of::<T::Input>()
    }

    fn needs_sandbox(&self) -> bool {
        T::NEEDS_SANDBOX
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> ToolResult<Value> {
        let input: T::Input = serde_json::from_value(input).map_err(|e| {
            ToolError::invalid_input(format!("invalid input for {}: {e}; see the tool's input schema", T::NAME))
        })?;
        let output = self.run(ctx, input).await?;
        serde_json::to_value(output)
            .map_err(|e| ToolError::failed(format!("{} produced output that is not JSON: {e}", T::NAME)))
    }
}

/// The tools available to a model, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry").field("tools", &self.tools.keys().collect::<Vec<_>>()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in tool: shell, code, files, web search (searching with `search`) and, with the
    /// `browser` feature, the browser (with its default configuration).
    #[must_use]
    pub fn standard(search: crate::search::WebSearch) -> Self {
        let mut r = Self::new();
        r.register(crate::shell::ShellTool);
        r.register(crate::code::RunCodeTool);
        r.register(crate::code::CodeContextTool);
        crate::files::register_all(&mut r);
        r.register(crate::search::WebSearchTool::new(search));
        #[cfg(feature = "browser")]
        r.register(crate::browser::BrowserTool::default());
        r
    }

    /// Adds a tool, replacing any tool of the same name; returns the replaced one.
    pub fn register(&mut self, tool: impl Tool) -> Option<Arc<dyn Tool>> {
        self.register_arc(Arc::new(tool))
    }

    /// Adds a shared tool, replacing any tool of the same name.
    pub fn register_arc(&mut self, tool: Arc<dyn Tool>) -> Option<Arc<dyn Tool>> {
        self.tools.insert(tool.name().to_owned(), tool)
    }

    /// The tool called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// The tools' names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }

    /// Every tool's spec, sorted by name.
    #[must_use]
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec()).collect()
    }

    /// Calls the tool `name` with `input`.
    ///
    /// # Errors
    /// [`ToolErrorKind::UnknownTool`] naming the tools there are, or the tool's error.
    pub async fn call(&self, name: &str, ctx: &ToolContext, input: Value) -> ToolResult<Value> {
        let Some(tool) = self.tools.get(name) else {
            return Err(ToolError::new(
                ToolErrorKind::UnknownTool,
                format!("no tool named {name:?}; available: {}", self.names().join(", ")),
            ));
        };
        tool.call(ctx, input).await
    }
}
