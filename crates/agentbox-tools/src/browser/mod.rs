//! The `browser` tool: a headless Chromium inside each sandbox, driven over the DevTools protocol
//! by a driver that runs inside the sandbox too.
//!
//! Chromium runs *inside* the sandbox, under its namespaces, cgroup and network policy, with its
//! profile, cache and downloads in the sandbox. So does everything that speaks DevTools to it: the
//! driver (`driver.rs`), this program re-executed in the sandbox as an ordinary execution, starts
//! Chromium and drives it with `chromiumoxide`. The host never connects to the sandbox's DevTools
//! port; it sends each action to the driver and reads the result back as execution output, capped
//! and checked (`wire.rs`). A hostile page, or a program in the sandbox impersonating Chromium, can
//! crash the driver and nothing else: the call fails and the next call starts a new driver. The
//! driver needs the sandbox's own agent program, which the local backend provides.
//!
//! One tool, `browser`, takes an `action` and that action's fields ([`BrowserAction`]):
//! navigate, back, forward, reload, click, type, press, select, screenshot, extract, evaluate,
//! snapshot, wait_for, scroll, set_viewport, tabs, downloads and close.
//!
//! Lifecycle: the browser starts on a sandbox's first browser call and is reused by later ones.
//! Destroying the sandbox kills it. When it has crashed or was killed, the next call starts a new
//! one and its result says so (`browser_restarted`). Every DevTools call has a time limit.
//! Sandboxes for the browser should use the `browser` preset (2 CPUs, 1024 MiB of memory,
//! 512 MiB /dev/shm, 1024 processes).
//!
//! ```no_run
//! # async fn demo(manager: agentbox_core::SandboxManager) -> Result<(), Box<dyn std::error::Error>> {
//! use agentbox_core::config::Preset;
//! use agentbox_core::{CreateOptions, RunId};
//! use agentbox_tools::browser::{BrowserConfig, BrowserTool};
//! use agentbox_tools::{Tool, ToolContext};
//! use serde_json::json;
//!
//! let run = RunId::parse("task-1")?;
//! manager.get_or_create(&run, CreateOptions { preset: Some(Preset::Browser), config: None }).await?;
//! let ctx = ToolContext::new(manager, run);
//! let browser = BrowserTool::new(BrowserConfig::default());
//! browser.call(&ctx, json!({"action": "navigate", "url": "data:text/html,<button>Go</button>"})).await?;
//! let snap = browser.call(&ctx, json!({"action": "snapshot"})).await?;
//! assert!(snap["snapshot"].as_str().unwrap_or_default().contains("button \"Go\""));
//! # Ok(()) }
//! ```

mod actions;
mod cdp;
mod driver;
mod error;
mod input;
mod session;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use agentbox_core::{ExecEvent, ExecRequest, SandboxId, SandboxManager};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use error::BrowserError;
pub use input::{BrowserAction, ElementState, ExtractFormat, MouseButton, RangeError, ScrollTo, TabOp, WaitUntil};

use crate::error::{ToolError, ToolResult};
use crate::tool::{Tool, ToolContext, ToolSandbox, schema_of};
use agentbox_core::LockExt;
use error::BrowserResult;
use wire::{DecodeError, Limits, Request};

/// How the browser is started and how long its calls may take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrowserConfig {
    /// Chromium's executable inside the sandbox.
    pub executable: String,
    /// The DevTools port Chromium listens on, on the sandbox's loopback.
    pub debugging_port: u16,
    /// Chromium's profile directory inside the sandbox.
    pub user_data_dir: String,
    /// Where downloads are saved inside the sandbox.
    pub downloads_dir: String,
    /// The proxy Chromium uses when the sandbox has network access (the sandbox's egress proxy).
    pub proxy_server: Option<String>,
    /// Extra Chromium arguments, with their dashes (`--lang=de`).
    pub extra_args: Vec<String>,
    /// Window and default viewport size, in CSS pixels.
    pub viewport: (u32, u32),
    /// How long Chromium may take to open its DevTools endpoint.
    pub launch_timeout: Duration,
    /// Time limit of one DevTools call.
    pub cdp_timeout: Duration,
    /// Default time limit of navigations (navigate, back, forward, reload, and downloads waits).
    pub navigation_timeout: Duration,
    /// Default time limit of element actions and waits (click, type, press, select, wait_for, evaluate).
    pub action_timeout: Duration,
    /// Longest time limit an action may have: a larger `timeout_ms` is lowered to it (at most 5 minutes, the
    /// largest `timeout_ms`). An operator lowers it to bound how long one call may hold a sandbox's browser.
    pub max_timeout: Duration,
    /// Default size of a snapshot page, in bytes.
    pub snapshot_bytes: usize,
    /// Default size of extracted text and evaluation results, in bytes.
    pub extract_bytes: usize,
    /// Largest screenshot returned inline, in bytes of base64; a larger one must be saved with `path`.
    /// The host reads no more than this (and the result's text) back from the sandbox per call.
    pub max_screenshot_bytes: usize,
    /// Most dialogs and downloads kept between two calls; older ones are dropped and the next result
    /// says how many (`dialogs_dropped`, `downloads_dropped`).
    pub max_events: usize,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        Self {
            executable: "/usr/bin/chromium".into(),
            debugging_port: 9222,
            user_data_dir: "/home/user/.config/chromium-agentbox".into(),
            downloads_dir: "/home/user/Downloads".into(),
            proxy_server: Some("http://127.0.0.1:3128".into()),
            extra_args: Vec::new(),
            viewport: (1280, 720),
            launch_timeout: Duration::from_secs(30),
            cdp_timeout: Duration::from_secs(15),
            navigation_timeout: Duration::from_secs(30),
            action_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_millis(input::MAX_TIMEOUT_MS),
            snapshot_bytes: 8 * 1024,
            extract_bytes: 16 * 1024,
            max_screenshot_bytes: 32 * 1024 * 1024,
            max_events: 100,
        }
    }
}

impl BrowserConfig {
    /// [`max_timeout`](Self::max_timeout), at most 5 minutes and at least 1 ms.
    #[must_use]
    pub fn max_timeout(&self) -> Duration {
        self.max_timeout.clamp(Duration::from_millis(1), Duration::from_millis(input::MAX_TIMEOUT_MS))
    }
}

/// One sandbox's browser driver, and why the previous one went away.
#[derive(Debug, Default)]
struct Slot {
    driver: Option<DriverProcess>,
    lost: Option<String>,
}

/// A driver running in a sandbox.
#[derive(Debug, Clone)]
struct DriverProcess {
    /// Its pid inside the sandbox.
    pid: u32,
    /// The file inside the sandbox receiving its output.
    log: Option<String>,
}

/// Bytes of a failed driver's output shown in an error.
const DRIVER_LOG_TAIL: usize = 1024;

/// How long a client waits for a driver just started to open its socket.
const DRIVER_START: Duration = Duration::from_secs(10);

/// Largest part of the client's stderr kept for an error message.
const CLIENT_STDERR_BYTES: usize = 4096;

/// How long the check that a running browser still answers may take.
pub(crate) const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// The `browser` tool. It keeps one browser per sandbox; clones share them.
///
/// Use one tool (or its clones) per process for a given set of sandboxes: two independent tools on the
/// same sandbox would each start a browser there. [`BrowserTool::default`] is shared process-wide.
#[derive(Clone)]
pub struct BrowserTool {
    config: Arc<BrowserConfig>,
    slots: Arc<Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<Slot>>>>>,
}

impl std::fmt::Debug for BrowserTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserTool").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Default for BrowserTool {
    /// The process's shared tool with the default configuration: every `BrowserTool::default()`, and so
    /// every [`ToolRegistry::standard`](crate::ToolRegistry::standard), drives the same browsers, so that a
    /// sandbox never gets two (they would compete for its DevTools port and profile).
    fn default() -> Self {
        static SHARED: LazyLock<BrowserTool> = LazyLock::new(|| BrowserTool::new(BrowserConfig::default()));
        SHARED.clone()
    }
}

const DESCRIPTION: &str = "Drive a headless Chromium running inside the sandbox. Pick an `action`:\n\
- navigate {url, wait?, selector?, timeout_ms?}; back, forward, reload {wait?, timeout_ms?}\n\
- snapshot {selector?, interactive_only?, offset?, limit?}: the page as a compact accessibility tree, \
one line per element with a ref (`- button \"Save\" [ref=e7]`); small by default, page with offset or scope with selector\n\
- click {ref | selector, button?, double_click?}; type {ref | selector, text, submit?, clear?, slowly?}; \
press {key, ref? | selector?}; select {ref | selector, values}\n\
- extract {format: text|html, selector? | ref?, offset?, max_bytes?}; evaluate {expression}: JavaScript, JSON result\n\
- screenshot {full_page?, path?, return_data?}: base64 PNG, optionally saved in the sandbox\n\
- wait_for {selector? | ref?, state?, text?, text_gone?, timeout_ms?}; scroll {ref? | selector?, dx?, dy?, to?}\n\
- set_viewport {width, height, device_scale_factor?, mobile?}; tabs {op: list|new|switch|close, url?, index?, id?}\n\
- downloads {wait?}: files saved to ~/Downloads; close: stop the browser\n\
Take a snapshot to get refs, then act on refs. Pages served inside the sandbox are at http://127.0.0.1:PORT; \
other hosts follow the sandbox's network policy.";

impl BrowserTool {
    /// A tool starting browsers with `config`.
    #[must_use]
    pub fn new(config: BrowserConfig) -> Self {
        // The driver is this program, entered from a constructor: keep that constructor linked in.
        std::hint::black_box(driver::entry_point());
        Self { config: Arc::new(config), slots: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &BrowserConfig {
        &self.config
    }

    /// Number of sandboxes with a browser driver started by this tool.
    #[must_use]
    pub fn open_browsers(&self) -> usize {
        self.lock_slots().values().filter(|s| s.try_lock().map_or(true, |s| s.driver.is_some())).count()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Arc<tokio::sync::Mutex<Slot>>>> {
        self.slots.lock_unpoisoned()
    }

    /// Forgets the drivers of sandboxes the manager no longer has (their drivers died with them).
    fn prune(&self, manager: &SandboxManager) {
        let live: std::collections::HashSet<SandboxId> = manager.list().into_iter().map(|m| m.sandbox.id).collect();
        self.lock_slots().retain(|id, slot| live.contains(id) || slot.try_lock().is_err());
    }

    fn slot(&self, id: &SandboxId) -> Arc<tokio::sync::Mutex<Slot>> {
        self.lock_slots().entry(id.clone()).or_default().clone()
    }

    async fn run(&self, sb: &ToolSandbox<'_>, mut input: Value, action: &BrowserAction) -> BrowserResult<Value> {
        self.prune(sb.manager());
        let managed = sb.manager().get(sb.run_id())?;
        if sb.manager().backend().name() != "local" {
            return Err(BrowserError::Unsupported(format!(
                "the browser runs its driver inside the sandbox as the sandbox's own agent program, which the {} \
                 backend does not provide: use the local backend",
                sb.manager().backend().name()
            )));
        }
        if let BrowserAction::Screenshot { path: Some(p), .. } = action {
            input["path"] = Value::String(sb.config().resolve(p)?);
        }
        let slot = self.slot(&managed.sandbox.id);
        // Another call on the same sandbox's browser runs at most its own limit.
        let mut slot = tokio::time::timeout(self.call_limit(), slot.lock()).await.map_err(|_| {
            BrowserError::Busy(
                "another browser call on this sandbox is still running; retry when it has finished".into(),
            )
        })?;
        if matches!(action, BrowserAction::Close {}) && slot.driver.is_none() {
            slot.lost = None;
            return Ok(json!({"closed": false, "message": "no browser was running"}));
        }
        let request = Request {
            config: (*self.config).clone(),
            network_enabled: managed.config.network.enabled,
            resources_hint: session::resources_hint(&managed.config),
            action: input,
        };
        let request = serde_json::to_vec(&request)
            .map_err(|e| BrowserError::InvalidInput(format!("cannot encode the browser request: {e}")))?;
        let mut restarted = None;
        let fresh = slot.driver.is_none();
        if fresh {
            slot.driver = Some(self.start_driver(sb).await?);
            restarted = slot.lost.take();
        }
        let mut reply = self.call_driver(sb, &request, fresh).await;
        if matches!(reply, Err(CallError::NoDriver(_))) {
            // The driver stopped between calls (nothing was sent): start a new one and send the call to it.
            if let Some(d) = slot.driver.take() {
                kill(sb, d.pid).await;
            }
            slot.driver = Some(self.start_driver(sb).await?);
            restarted = Some("its driver inside the sandbox had stopped".into());
            reply = self.call_driver(sb, &request, true).await;
        }
        match reply {
            Ok(Ok(mut out)) => {
                if let Some(reason) = restarted {
                    if out.remove("browser_started").is_some() {
                        out.insert("browser_restarted".into(), json!(true));
                        out.insert(
                            "notice".into(),
                            json!(format!(
                                "the browser was restarted because {reason}; tabs, history and page state from before \
                                 are gone"
                            )),
                        );
                    }
                }
                Ok(Value::Object(out))
            }
            Ok(Err(e)) => Err(BrowserError::Reported(e.kind, e.message)),
            Err(e) => {
                let mut output = String::new();
                if let Some(d) = slot.driver.take() {
                    kill(sb, d.pid).await;
                    if let Some(log) = &d.log {
                        output = log_tail(sb, log).await;
                    }
                }
                slot.lost = Some("its driver inside the sandbox failed during the previous call".into());
                let output = if output.is_empty() { String::new() } else { format!(" Its last output: {output}.") };
                Err(BrowserError::Gone(format!(
                    "the browser driver inside the sandbox failed during this call: {e}.{output} It was stopped; the \
                     next browser call starts a new one"
                )))
            }
        }
    }

    /// Starts the driver in the sandbox.
    async fn start_driver(&self, sb: &ToolSandbox<'_>) -> BrowserResult<DriverProcess> {
        let mut request = ExecRequest::argv([SELF_PROGRAM, "agentbox-browser-driver"]);
        request.env.insert(driver::HELPER_ENV.into(), driver::DRIVER.into());
        request.env.insert(driver::SOCKET_ENV.into(), driver::socket_name(&self.config));
        let p = sb.spawn_background(request).await?;
        Ok(DriverProcess { pid: p.pid, log: p.output_path })
    }

    /// Sends one request through a client execution and reads the reply, at most [`Limits::reply_bytes`].
    async fn call_driver(
        &self,
        sb: &ToolSandbox<'_>,
        request: &[u8],
        wait_for_driver: bool,
    ) -> Result<Result<Map<String, Value>, wire::WireError>, CallError> {
        let limits = Limits::of(&self.config);
        let mut exec = ExecRequest::argv([SELF_PROGRAM, "agentbox-browser-client"]);
        exec.env.insert(driver::HELPER_ENV.into(), driver::CLIENT.into());
        exec.env.insert(driver::SOCKET_ENV.into(), driver::socket_name(&self.config));
        let wait = if wait_for_driver { DRIVER_START } else { Duration::ZERO };
        exec.env.insert(driver::WAIT_ENV.into(), millis(wait).to_string());
        exec.stdin = Some(request.to_vec());
        exec.timeout = Some(self.call_limit());
        let mut stream = sb.exec(exec).await.map_err(|e| CallError::Transport(e.message))?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut code = None;
        while let Some(event) = stream.next().await {
            match event {
                ExecEvent::Stdout(chunk) => {
                    if stdout.len() + chunk.len() > limits.reply_bytes {
                        return Err(CallError::TooLarge(limits.reply_bytes));
                    }
                    stdout.extend_from_slice(&chunk);
                }
                ExecEvent::Stderr(chunk) => {
                    let room = CLIENT_STDERR_BYTES.saturating_sub(stderr.len());
                    stderr.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                ExecEvent::Exit(status) => {
                    if status.timed_out {
                        return Err(CallError::Transport(format!(
                            "it did not answer within {} s",
                            self.call_limit().as_secs()
                        )));
                    }
                    code = Some(status.exit_code);
                }
            }
        }
        let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
        if code == Some(driver::NO_DRIVER) {
            return Err(CallError::NoDriver(stderr));
        }
        match wire::decode_reply(stdout, limits) {
            Err(DecodeError::Empty) if !stderr.is_empty() => Err(CallError::Transport(stderr)),
            Err(DecodeError::Empty) => Err(CallError::Transport(
                "it closed the connection without a reply (it \
                                                                   crashed, was killed or ran out of memory)"
                    .into(),
            )),
            Err(e) => Err(CallError::Invalid(e)),
            Ok(r) => Ok(r),
        }
    }

    /// The longest one call may take: the longest action, plus a browser launch, plus slack.
    fn call_limit(&self) -> Duration {
        self.config.max_timeout() + self.config.launch_timeout + Duration::from_secs(60)
    }
}

/// The sandbox's own agent program, as an execution sees it: in a local sandbox every execution is
/// started by the agent, so `/proc/self/exe` in the new process, before its `execve`, is the agent's
/// sealed binary, which is this program.
const SELF_PROGRAM: &str = "/proc/self/exe";

/// Why a call to the driver brought no reply.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// No driver listens; the request was not sent.
    #[error("no browser driver is running: {0}")]
    NoDriver(String),
    /// The reply is larger than the cap.
    #[error("its reply was larger than {0} bytes")]
    TooLarge(usize),
    /// The reply is malformed.
    #[error(transparent)]
    Invalid(DecodeError),
    /// The client or the driver failed.
    #[error("{0}")]
    Transport(String),
}

/// The end of a driver's output file, read through `tail` with its output capped (the file is the
/// sandbox's to grow).
async fn log_tail(sb: &ToolSandbox<'_>, log: &str) -> String {
    let request = ExecRequest {
        timeout: Some(Duration::from_secs(10)),
        ..ExecRequest::argv(["tail", "-c", &DRIVER_LOG_TAIL.to_string(), log])
    };
    let Ok(stream) = sb.exec(request).await else { return String::new() };
    let out = stream.collect(2 * DRIVER_LOG_TAIL).await;
    if out.exit_code != 0 {
        return String::new();
    }
    let lines: Vec<&str> =
        out.stdout.lines().filter(|l| !l.contains("RUST_BACKTRACE") && !l.trim().is_empty()).collect();
    lines.join("\n")
}

/// Kills the driver's process tree (Chromium with it); a process already gone is not an error.
async fn kill(sb: &ToolSandbox<'_>, pid: u32) {
    match sb.kill_process(pid, SIGKILL).await {
        Ok(()) => {}
        Err(e) if e.kind == crate::ToolErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pid, error = %e, "killing the browser driver failed"),
    }
}

const SIGKILL: i32 = 9;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The input schema: one object listing every field, whose `action` picks the fields that apply (an
/// `if`/`then` per action forbids the other actions' fields), so that models which require a top-level
/// object schema can use it, and wrappers can add properties of their own (such as a run id).
fn browser_schema() -> Value {
    let raw = schema_of::<BrowserAction>();
    let variants: Vec<(String, Map<String, Value>)> = raw
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let name = v.pointer("/properties/action/const").and_then(Value::as_str)?.to_owned();
            Some((name, v.as_object()?.clone()))
        })
        .collect();
    let mut properties = Map::new();
    for (_, variant) in &variants {
        for (k, v) in variant.get("properties").and_then(Value::as_object).into_iter().flatten() {
            if k != "action" && !properties.contains_key(k) {
                properties.insert(k.clone(), v.clone());
            }
        }
    }
    let mut rules = Vec::new();
    for (name, variant) in &variants {
        let mut then = variant.clone();
        then.remove("additionalProperties");
        let own = then.entry("properties").or_insert_with(|| json!({}));
        if let Some(own) = own.as_object_mut() {
            for field in properties.keys() {
                if !own.contains_key(field) {
                    own.insert(field.clone(), Value::Bool(false));
                }
            }
        }
        rules.push(json!({
            "if": {"properties": {"action": {"const": name}}, "required": ["action"]},
            "then": then,
        }));
    }
    let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
    let mut props = Map::new();
    props.insert(
        "action".into(),
        json!({"type": "string", "enum": names, "description": "The action; each takes its own fields (see the description)."}),
    );
    props.extend(properties);
    let mut schema = json!({
        "type": "object",
        "properties": props,
        "required": ["action"],
        "additionalProperties": false,
        "allOf": rules,
    });
    if let Some(s) = raw.get("$schema") {
        schema["$schema"] = s.clone();
    }
    schema
}

#[async_trait]
impl Tool for BrowserTool {
    fn name(&self) -> &'static str {
        "browser"
    }

    fn description(&self) -> &'static str {
        DESCRIPTION
    }

    fn input_schema(&self) -> Value {
        browser_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> ToolResult<Value> {
        let action: BrowserAction = serde_json::from_value(input.clone()).map_err(|e| {
            ToolError::invalid_input(format!("invalid input for browser: {e}; see the tool's input schema"))
        })?;
        action.validate().map_err(|e| ToolError::invalid_input(format!("invalid input for browser: {e}")))?;
        let sb = ctx.sandbox()?;
        Ok(self.run(&sb, input, &action).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_one_object_with_a_rule_per_action() {
        let s = browser_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        let names: Vec<&str> =
            s["properties"]["action"]["enum"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert!(names.contains(&"navigate") && names.contains(&"wait_for") && names.contains(&"close"), "{names:?}");
        assert_eq!(s["allOf"].as_array().map(Vec::len), Some(names.len()));
        assert!(s["properties"]["ref"].is_object());
        // Another action's field is forbidden; a property added by a wrapper is not mentioned per action.
        let click =
            s["allOf"].as_array().and_then(|r| r.iter().find(|r| r["if"]["properties"]["action"]["const"] == "click"));
        let then = &click.unwrap_or(&Value::Null)["then"];
        assert_eq!(then["properties"]["url"], false);
        assert!(then["properties"]["ref"].is_object());
        assert!(then.get("additionalProperties").is_none());
    }

    #[test]
    fn actions_parse_strictly() {
        let ok: BrowserAction =
            serde_json::from_value(json!({"action": "click", "ref": "e3"})).unwrap_or(BrowserAction::Close {});
        assert_eq!(ok.name(), "click");
        assert!(serde_json::from_value::<BrowserAction>(json!({"action": "click", "ref": "e3", "text": "x"})).is_err());
        assert!(serde_json::from_value::<BrowserAction>(json!({"action": "fly"})).is_err());
        assert!(serde_json::from_value::<BrowserAction>(json!({"action": "close"})).is_ok());
    }
}
