//! The `browser` tool: a headless Chromium inside each sandbox, driven over the DevTools protocol.
//!
//! Chromium runs as a background process *inside* the sandbox, under its namespaces, cgroup and
//! network policy, with its profile, cache and downloads in the sandbox. The tool reaches its
//! DevTools endpoint through [`SandboxBackend::open_port`](agentbox_core::SandboxBackend::open_port),
//! a host port forwarded into the sandbox, and drives it with `chromiumoxide`.
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
mod error;
mod input;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use agentbox_core::config::SandboxConfig;
use agentbox_core::{SandboxId, SandboxManager};
use async_trait::async_trait;
use serde_json::{Map, Value, json};

pub use error::BrowserError;
pub use input::{BrowserAction, ElementState, ExtractFormat, MouseButton, ScrollTo, TabOp, WaitUntil};

use crate::error::{ToolError, ToolResult};
use crate::tool::{Sandbox, Tool, ToolContext, schema_of};
use error::BrowserResult;
use session::Session;

/// How the browser is started and how long its calls may take.
#[derive(Debug, Clone, PartialEq)]
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
    /// Default size of a snapshot page, in bytes.
    pub snapshot_bytes: usize,
    /// Default size of extracted text and evaluation results, in bytes.
    pub extract_bytes: usize,
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
            snapshot_bytes: 8 * 1024,
            extract_bytes: 16 * 1024,
        }
    }
}

/// One sandbox's browser, and why the previous one went away.
#[derive(Debug, Default)]
struct Slot {
    session: Option<Session>,
    lost: Option<String>,
}

/// How long the check that a running browser still answers may take.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// How long a call waits for another call on the same sandbox's browser to finish.
const LOCK_WAIT: Duration = Duration::from_secs(input::MAX_TIMEOUT_MS / 1000 + 60);

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
        Self { config: Arc::new(config), slots: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &BrowserConfig {
        &self.config
    }

    /// Number of sandboxes with a browser connection held by this tool.
    #[must_use]
    pub fn open_browsers(&self) -> usize {
        self.lock_slots().values().filter(|s| s.try_lock().map_or(true, |s| s.session.is_some())).count()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Arc<tokio::sync::Mutex<Slot>>>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets browsers of sandboxes the manager no longer has whose connection has closed.
    fn prune(&self, manager: &SandboxManager) {
        let live: std::collections::HashSet<SandboxId> = manager.list().into_iter().map(|m| m.sandbox.id).collect();
        self.lock_slots().retain(|id, slot| {
            live.contains(id)
                || match slot.try_lock() {
                    Ok(s) => s.session.as_ref().is_some_and(Session::connected),
                    Err(_) => true,
                }
        });
    }

    fn slot(&self, id: &SandboxId) -> Arc<tokio::sync::Mutex<Slot>> {
        self.lock_slots().entry(id.clone()).or_default().clone()
    }

    async fn run(&self, sb: &Sandbox<'_>, action: BrowserAction) -> BrowserResult<Value> {
        self.prune(sb.manager());
        let managed = sb.manager().get(sb.run_id())?;
        let slot = self.slot(&managed.sandbox.id);
        let mut slot = tokio::time::timeout(LOCK_WAIT, slot.lock()).await.map_err(|_| {
            BrowserError::Busy(
                "another browser call on this sandbox is still running; retry when it has finished".into(),
            )
        })?;
        if matches!(action, BrowserAction::Close {}) {
            return Ok(self.close(sb, &mut slot).await);
        }
        let started = self.ensure(sb, &managed.config, &mut slot).await?;
        let Some(session) = slot.session.as_mut() else {
            return Err(BrowserError::Gone("the browser is not running".into()));
        };
        let cx = actions::Ctx { cfg: &self.config, sb, sandbox_config: &managed.config };
        match actions::run(session, &cx, action).await {
            Ok(mut out) => {
                if let Some(s) = started {
                    s.describe(&mut out);
                }
                session.report_events(&mut out);
                Ok(Value::Object(out))
            }
            Err(e) => Err(self.after_failure(sb, &managed.config, &mut slot, e).await),
        }
    }

    /// Starts the browser if there is none, or a new one if the old one died.
    async fn ensure(
        &self,
        sb: &Sandbox<'_>,
        config: &SandboxConfig,
        slot: &mut Slot,
    ) -> BrowserResult<Option<Started>> {
        if let Some(s) = slot.session.as_mut() {
            let reason = if !s.connected() {
                Some("its DevTools connection had closed (it crashed or was killed)")
            } else if session::process_running(sb, s.pid).await == Some(false) {
                Some("its process had exited (it crashed or was killed)")
            } else if s.network_enabled != config.network.enabled {
                Some("the sandbox's network policy changed")
            } else if !s.answers(PROBE_LIMIT).await {
                Some("it had stopped answering")
            } else {
                None
            };
            if let Some(reason) = reason {
                let pid = s.pid;
                slot.session = None;
                session::kill(sb, pid).await;
                slot.lost = Some(reason.to_owned());
            }
        }
        if slot.session.is_some() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let session = session::launch(&self.config, sb, config).await?;
        slot.session = Some(session);
        Ok(Some(Started { launch_ms: millis(t0.elapsed()), restarted_because: slot.lost.take() }))
    }

    /// Turns a failed action into the error returned, dropping a browser that went away.
    async fn after_failure(
        &self,
        sb: &Sandbox<'_>,
        config: &SandboxConfig,
        slot: &mut Slot,
        e: BrowserError,
    ) -> BrowserError {
        let Some(s) = slot.session.as_ref() else { return e };
        if e.is_gone() || !s.connected() {
            let pid = s.pid;
            let exited = session::process_running(sb, pid).await == Some(false);
            let tail = if exited { session::log_tail(sb, s.log_path.as_deref()).await } else { String::new() };
            slot.session = None;
            session::kill(sb, pid).await;
            slot.lost = Some(if exited {
                "it stopped during the previous call (crashed, was killed or ran out of memory)".into()
            } else {
                "its DevTools connection failed during the previous call".into()
            });
            let output = if tail.is_empty() { String::new() } else { format!(" Its last output:\n{tail}\n") };
            return BrowserError::Gone(format!("{e}.{output}{}", session::resources_hint(config)));
        }
        match e {
            // A browser short of memory or processes shows up as calls that never answer.
            BrowserError::Timeout(m) if m.contains("did not answer") => {
                BrowserError::Timeout(format!("{m}.{}", session::resources_hint(config)))
            }
            other => other,
        }
    }

    async fn close(&self, sb: &Sandbox<'_>, slot: &mut Slot) -> Value {
        slot.lost = None;
        let Some(s) = slot.session.take() else {
            return json!({"closed": false, "message": "no browser was running"});
        };
        let pid = s.pid;
        drop(s);
        session::kill(sb, pid).await;
        json!({"closed": true})
    }
}

/// A browser started for this call.
struct Started {
    launch_ms: u64,
    restarted_because: Option<String>,
}

impl Started {
    fn describe(self, out: &mut Map<String, Value>) {
        out.insert("browser_launch_ms".into(), json!(self.launch_ms));
        match self.restarted_because {
            Some(reason) => {
                out.insert("browser_restarted".into(), json!(true));
                out.insert(
                    "notice".into(),
                    json!(format!(
                        "the browser was restarted because {reason}; tabs, history and page state from before are gone"
                    )),
                );
            }
            None => {
                out.insert("browser_started".into(), json!(true));
            }
        }
    }
}

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
        let action: BrowserAction = serde_json::from_value(input).map_err(|e| {
            ToolError::invalid_input(format!("invalid input for browser: {e}; see the tool's input schema"))
        })?;
        action.validate().map_err(|e| ToolError::invalid_input(format!("invalid input for browser: {e}")))?;
        let sb = ctx.sandbox()?;
        Ok(self.run(&sb, action).await?)
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
