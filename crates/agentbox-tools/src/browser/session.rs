//! One sandbox's browser: launching Chromium inside the sandbox, connecting to its DevTools
//! endpoint through a forwarded port, watching it, and its tabs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentbox_core::config::{Preset, SandboxConfig};
use agentbox_core::{Error as CoreError, ExecRequest};
use chromiumoxide::cdp::browser_protocol::browser::{
    DownloadProgressState, EventDownloadProgress, EventDownloadWillBegin, GetVersionParams,
    SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::{EventJavascriptDialogOpening, HandleJavaScriptDialogParams};
use chromiumoxide::cdp::browser_protocol::target::{GetTargetsParams, TargetId, TargetInfo};
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::{Browser, Page};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::BrowserConfig;
use super::cdp::{Tab, within};
use super::error::{BrowserError, BrowserResult};
use crate::tool::Sandbox;

/// A viewport applied to tabs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ViewportSpec {
    /// Width in CSS pixels.
    pub width: u32,
    /// Height in CSS pixels.
    pub height: u32,
    /// Device pixel ratio.
    pub scale: f64,
    /// Mobile emulation.
    pub mobile: bool,
}

/// One file the browser downloads.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Download {
    /// The browser's id of the download.
    #[serde(skip)]
    pub guid: String,
    /// Where it came from.
    pub url: String,
    /// Where it is saved inside the sandbox.
    pub path: String,
    /// `in_progress`, `completed` or `canceled`.
    pub state: &'static str,
    /// Bytes received.
    pub received_bytes: u64,
    /// Bytes expected (0 when unknown).
    pub total_bytes: u64,
}

/// Events the browser raised between calls, reported with the next result.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Every download of this browser.
    pub downloads: Vec<Download>,
    /// Downloads already reported in a result.
    pub reported: usize,
    /// JavaScript dialogs (alert, confirm, prompt) the tool accepted, not yet reported.
    pub dialogs: Vec<Value>,
}

/// A running browser inside one sandbox.
pub(crate) struct Session {
    /// The DevTools connection.
    pub browser: Browser,
    /// Polls the connection; it ends when the connection fails.
    handler: JoinHandle<()>,
    /// Background tasks collecting downloads and handling dialogs.
    watchers: Vec<JoinHandle<()>>,
    /// Dialog handlers by tab.
    dialog_watchers: HashMap<String, JoinHandle<()>>,
    /// Chromium's process id inside the sandbox.
    pub pid: u32,
    /// The file inside the sandbox receiving Chromium's output.
    pub log_path: Option<String>,
    /// The forwarded DevTools address on the host (`ws://127.0.0.1:41234`).
    pub ws_base: String,
    /// The tab actions work on.
    pub active: Page,
    /// Known tabs, in the order they were first seen.
    pub tabs: Vec<TargetId>,
    /// The viewport of new tabs.
    pub viewport: ViewportSpec,
    /// Downloads and dialogs.
    pub inbox: Arc<Mutex<Inbox>>,
    /// Whether the sandbox had network access when the browser started.
    pub network_enabled: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("pid", &self.pid).field("tabs", &self.tabs.len()).finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.handler.abort();
        for w in &self.watchers {
            w.abort();
        }
        for w in self.dialog_watchers.values() {
            w.abort();
        }
    }
}

/// What the sandbox's limits lack for a browser, as a sentence to add to an error (empty when nothing).
pub(crate) fn resources_hint(config: &SandboxConfig) -> String {
    let want = Preset::Browser.config();
    if config.memory_mb >= want.memory_mb
        && config.storage.shm_size_mb >= want.storage.shm_size_mb
        && config.security.max_processes >= want.security.max_processes
    {
        return String::new();
    }
    format!(
        " This sandbox has {} MiB of memory, a {} MiB /dev/shm and room for {} processes, which is tight for a \
         browser: create the sandbox with the `browser` preset (2 CPUs, {} MiB of memory, {} MiB /dev/shm, {} \
         processes).",
        config.memory_mb,
        config.storage.shm_size_mb,
        config.security.max_processes,
        want.memory_mb,
        want.storage.shm_size_mb,
        want.security.max_processes
    )
}

/// Chromium's command line.
fn chromium_args(cfg: &BrowserConfig, network_enabled: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--disable-breakpad",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-features=Translate,MediaRouter,OptimizationHints,BackForwardCache",
        "--password-store=basic",
        "--mute-audio",
        "--hide-scrollbars",
        "--log-level=2",
        "--remote-debugging-address=127.0.0.1",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(format!("--remote-debugging-port={}", cfg.debugging_port));
    args.push(format!("--user-data-dir={}", cfg.user_data_dir));
    args.push(format!("--window-size={},{}", cfg.viewport.0, cfg.viewport.1));
    if network_enabled {
        if let Some(proxy) = &cfg.proxy_server {
            args.push(format!("--proxy-server={proxy}"));
        }
    }
    args.extend(cfg.extra_args.iter().cloned());
    args.push("about:blank".into());
    args
}

/// Removes a stale profile lock (left by a killed browser), makes the download directory, and execs Chromium.
const LAUNCH_SCRIPT: &str = r#"rm -f -- "$AGENTBOX_PROFILE/SingletonLock" "$AGENTBOX_PROFILE/SingletonSocket" "$AGENTBOX_PROFILE/SingletonCookie"
mkdir -p -- "$AGENTBOX_PROFILE" "$AGENTBOX_DOWNLOADS" || exit 1
exec "$@""#;

/// Whether the process is still running in the sandbox (`None` when the backend cannot tell).
pub(crate) async fn process_running(sb: &Sandbox<'_>, pid: u32) -> Option<bool> {
    let list = sb.manager().with_sandbox(sb.run_id(), |b, id| async move { b.list_processes(&id).await }).await.ok()?;
    Some(list.iter().any(|p| p.pid == pid && p.running))
}

/// Kills the browser's process tree in the sandbox; a process already gone is not an error.
pub(crate) async fn kill(sb: &Sandbox<'_>, pid: u32) {
    match sb.kill_process(pid, libc_sigkill()).await {
        Ok(()) => {}
        Err(e) if e.kind == crate::ToolErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pid, error = %e, "killing the browser failed"),
    }
}

const fn libc_sigkill() -> i32 {
    9
}

/// The last lines of Chromium's output, for error messages.
pub(crate) async fn log_tail(sb: &Sandbox<'_>, path: Option<&str>) -> String {
    let Some(path) = path else { return String::new() };
    let Ok(bytes) = sb.read_file(path).await else { return String::new() };
    let text = String::from_utf8_lossy(&bytes);
    // D-Bus complaints are noise in a sandbox without a session bus.
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus") && !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    lines[start..].join("\n")
}

/// Starts Chromium in the sandbox and connects to it.
pub(crate) async fn launch(
    cfg: &BrowserConfig,
    sb: &Sandbox<'_>,
    sandbox_config: &SandboxConfig,
) -> BrowserResult<Session> {
    match sb.stat(&cfg.executable).await {
        Ok(_) => {}
        Err(e) if e.kind == crate::ToolErrorKind::NotFound => {
            return Err(BrowserError::NotInstalled { path: cfg.executable.clone() });
        }
        Err(e) => return Err(e.into()),
    }
    let base = match sb
        .manager()
        .with_sandbox(sb.run_id(), |b, id| async move { b.open_port(&id, cfg.debugging_port).await })
        .await
    {
        Ok(url) => url,
        Err(CoreError::Unsupported(m)) => {
            return Err(BrowserError::Unsupported(format!(
                "the browser needs to reach its DevTools port inside the sandbox, and {m}: use the local backend"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let network_enabled = sandbox_config.network.enabled;
    let mut argv =
        vec!["/bin/bash".to_owned(), "-c".into(), LAUNCH_SCRIPT.into(), "chromium".into(), cfg.executable.clone()];
    argv.extend(chromium_args(cfg, network_enabled));
    let mut request = ExecRequest::argv(argv);
    request.env.insert("AGENTBOX_PROFILE".into(), cfg.user_data_dir.clone());
    request.env.insert("AGENTBOX_DOWNLOADS".into(), cfg.downloads_dir.clone());
    let process = sb.spawn_background(request).await?;
    let pid = process.pid;
    match connect(cfg, sb, sandbox_config, &base, pid, process.output_path.as_deref()).await {
        Ok(mut session) => {
            session.network_enabled = network_enabled;
            Ok(session)
        }
        Err(e) => {
            let e = match e {
                e @ (BrowserError::Launch(_) | BrowserError::Sandbox(_)) => e,
                other => {
                    let tail = log_tail(sb, process.output_path.as_deref()).await;
                    let output = if tail.is_empty() { String::new() } else { format!(" Its last output:\n{tail}\n") };
                    BrowserError::Launch(format!(
                        "Chromium started, but setting it up failed: {other}.{output}{}",
                        resources_hint(sandbox_config)
                    ))
                }
            };
            kill(sb, pid).await;
            Err(e)
        }
    }
}

async fn connect(
    cfg: &BrowserConfig,
    sb: &Sandbox<'_>,
    sandbox_config: &SandboxConfig,
    base: &str,
    pid: u32,
    log_path: Option<&str>,
) -> BrowserResult<Session> {
    let ws = wait_for_devtools(cfg, sb, sandbox_config, base, pid, log_path).await?;
    let handler_config = HandlerConfig {
        viewport: None,
        request_timeout: cfg.navigation_timeout.max(Duration::from_millis(super::input::MAX_TIMEOUT_MS))
            + Duration::from_secs(30),
        ..HandlerConfig::default()
    };
    let (browser, mut handler) =
        within(cfg.cdp_timeout, "connecting to the browser", Browser::connect_with_config(ws, handler_config)).await?;
    let handler = tokio::spawn(async move {
        // Invalid messages are skipped by the handler; any error it returns means the connection failed.
        while let Some(event) = handler.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "the browser's DevTools connection ended");
                break;
            }
        }
    });
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let mut watchers = Vec::new();
    let setup = async {
        let behavior = SetDownloadBehaviorParams {
            behavior: SetDownloadBehaviorBehavior::Allow,
            browser_context_id: None,
            download_path: Some(cfg.downloads_dir.clone()),
            events_enabled: Some(true),
        };
        within(cfg.cdp_timeout, "setting the download directory", browser.execute(behavior)).await?;
        watchers.push(watch_downloads(&browser, cfg, &inbox).await?);
        let page = within(cfg.cdp_timeout, "opening a tab", browser.new_page("about:blank")).await?;
        Ok::<_, BrowserError>(page)
    };
    let page = match setup.await {
        Ok(p) => p,
        Err(e) => {
            handler.abort();
            for w in &watchers {
                w.abort();
            }
            return Err(e);
        }
    };
    let viewport = ViewportSpec { width: cfg.viewport.0, height: cfg.viewport.1, scale: 1.0, mobile: false };
    let mut session = Session {
        browser,
        handler,
        watchers,
        dialog_watchers: HashMap::new(),
        pid,
        log_path: log_path.map(str::to_owned),
        ws_base: base.replacen("http://", "ws://", 1).trim_end_matches('/').to_owned(),
        tabs: vec![page.target_id().clone()],
        active: page,
        viewport,
        inbox,
        network_enabled: false,
    };
    // Close the tab Chromium opened by itself, so the tool's tab is the only one.
    let ours = session.active.target_id().clone();
    for t in session.page_targets(cfg.cdp_timeout).await? {
        if t.target_id != ours {
            let close = chromiumoxide::cdp::browser_protocol::target::CloseTargetParams::new(t.target_id.clone());
            let _ = within(cfg.cdp_timeout, "closing the initial tab", session.browser.execute(close)).await;
        }
    }
    session.prepare_tab(cfg.cdp_timeout).await?;
    Ok(session)
}

/// Polls `/json/version` through the forwarded port until Chromium answers; returns the WebSocket URL
/// rewritten to the forwarded address.
async fn wait_for_devtools(
    cfg: &BrowserConfig,
    sb: &Sandbox<'_>,
    sandbox_config: &SandboxConfig,
    base: &str,
    pid: u32,
    log_path: Option<&str>,
) -> BrowserResult<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| BrowserError::Launch(format!("cannot make an HTTP client: {e}")))?;
    let url = format!("{}/json/version", base.trim_end_matches('/'));
    let start = Instant::now();
    let mut last_check = Instant::now();
    loop {
        if let Ok(resp) = client.get(&url).send().await {
            if let Ok(v) = resp.json::<Value>().await {
                if let Some(ws) = v.get("webSocketDebuggerUrl").and_then(Value::as_str) {
                    return rewrite_ws_url(ws, base);
                }
            }
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            if process_running(sb, pid).await == Some(false) {
                let tail = log_tail(sb, log_path).await;
                return Err(BrowserError::Launch(format!(
                    "Chromium exited right after starting.{}{}",
                    if tail.is_empty() { String::new() } else { format!(" Its last output:\n{tail}\n") },
                    super::session::resources_hint(sandbox_config)
                )));
            }
        }
        if start.elapsed() >= cfg.launch_timeout {
            let tail = log_tail(sb, log_path).await;
            return Err(BrowserError::Launch(format!(
                "its DevTools endpoint did not answer within {} s.{}{}",
                cfg.launch_timeout.as_secs(),
                if tail.is_empty() { String::new() } else { format!(" Its last output:\n{tail}\n") },
                resources_hint(sandbox_config)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ws://127.0.0.1:9222/devtools/browser/ID` with the host and port of `base` (`http://127.0.0.1:41234`).
pub(crate) fn rewrite_ws_url(ws: &str, base: &str) -> BrowserResult<String> {
    let path = ws
        .strip_prefix("ws://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .ok_or_else(|| BrowserError::Launch(format!("the browser gave an unexpected DevTools address: {ws}")))?;
    let authority = base
        .strip_prefix("http://")
        .map(|s| s.trim_end_matches('/'))
        .ok_or_else(|| BrowserError::Launch(format!("the forwarded port has an unexpected address: {base}")))?;
    Ok(format!("ws://{authority}{path}"))
}

async fn watch_downloads(
    browser: &Browser,
    cfg: &BrowserConfig,
    inbox: &Arc<Mutex<Inbox>>,
) -> BrowserResult<JoinHandle<()>> {
    let mut begins =
        within(cfg.cdp_timeout, "watching downloads", browser.event_listener::<EventDownloadWillBegin>()).await?;
    let mut progress =
        within(cfg.cdp_timeout, "watching downloads", browser.event_listener::<EventDownloadProgress>()).await?;
    let inbox = inbox.clone();
    let dir = cfg.downloads_dir.trim_end_matches('/').to_owned();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(ev) = begins.next() => {
                    let mut inbox = inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    inbox.downloads.push(Download {
                        guid: ev.guid.clone(),
                        url: ev.url.clone(),
                        path: format!("{dir}/{}", ev.suggested_filename),
                        state: "in_progress",
                        received_bytes: 0,
                        total_bytes: 0,
                    });
                }
                Some(ev) = progress.next() => {
                    let mut inbox = inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(d) = inbox.downloads.iter_mut().find(|d| d.guid == ev.guid) {
                        d.state = match ev.state {
                            DownloadProgressState::InProgress => "in_progress",
                            DownloadProgressState::Completed => "completed",
                            DownloadProgressState::Canceled => "canceled",
                        };
                        d.received_bytes = as_bytes(ev.received_bytes);
                        d.total_bytes = as_bytes(ev.total_bytes);
                        if let Some(p) = &ev.file_path {
                            d.path.clone_from(p);
                        }
                    }
                }
                else => break,
            }
        }
    }))
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "byte counts are non-negative integers sent as JSON numbers"
)]
fn as_bytes(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 { v as u64 } else { 0 }
}

impl Session {
    /// The tab actions work on, with a time limit per call.
    pub fn tab(&self, limit: Duration) -> Tab<'_> {
        Tab { page: &self.active, limit }
    }

    /// Adds the dialogs accepted and the downloads begun since the last result to `out`.
    pub fn report_events(&self, out: &mut serde_json::Map<String, Value>) {
        let mut inbox = self.inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inbox.dialogs.is_empty() {
            out.insert("dialogs".into(), Value::Array(std::mem::take(&mut inbox.dialogs)));
        }
        let start = inbox.reported.min(inbox.downloads.len());
        if start < inbox.downloads.len() {
            out.insert("downloads_started".into(), json!(inbox.downloads[start..]));
            inbox.reported = inbox.downloads.len();
        }
    }

    /// Whether the DevTools connection is still being served.
    pub fn connected(&self) -> bool {
        !self.handler.is_finished()
    }

    /// Whether the browser answers a trivial call within `limit`.
    pub async fn answers(&self, limit: Duration) -> bool {
        within(limit, "checking the browser", self.browser.execute(GetVersionParams::default())).await.is_ok()
    }

    /// Every page target (tab) of the browser.
    pub async fn page_targets(&self, limit: Duration) -> BrowserResult<Vec<TargetInfo>> {
        let r = within(limit, "listing tabs", self.browser.execute(GetTargetsParams::default())).await?;
        Ok(r.result.target_infos.into_iter().filter(|t| t.r#type == "page").collect())
    }

    /// Brings the tab list up to date (tabs opened by pages are appended, closed ones dropped) and
    /// makes sure the active tab still exists. Returns the targets in tab order.
    pub async fn sync_tabs(&mut self, limit: Duration) -> BrowserResult<Vec<TargetInfo>> {
        let targets = self.page_targets(limit).await?;
        self.tabs.retain(|id| targets.iter().any(|t| &t.target_id == id));
        for t in &targets {
            if !self.tabs.contains(&t.target_id) {
                self.tabs.push(t.target_id.clone());
            }
        }
        let gone: Vec<String> = self
            .dialog_watchers
            .keys()
            .filter(|k| !self.tabs.iter().any(|t| t.as_ref() == k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            if let Some(w) = self.dialog_watchers.remove(&k) {
                w.abort();
            }
        }
        if !self.tabs.contains(self.active.target_id()) {
            match self.tabs.last().cloned() {
                Some(id) => self.switch_to(id, limit).await?,
                None => {
                    let page = within(limit, "opening a tab", self.browser.new_page("about:blank")).await?;
                    self.tabs.push(page.target_id().clone());
                    self.active = page;
                    self.prepare_tab(limit).await?;
                }
            }
        }
        let mut ordered = Vec::with_capacity(self.tabs.len());
        for id in &self.tabs {
            if let Some(t) = targets.iter().find(|t| &t.target_id == id) {
                ordered.push(t.clone());
            }
        }
        Ok(ordered)
    }

    /// Makes the tab `id` the active one.
    pub async fn switch_to(&mut self, id: TargetId, limit: Duration) -> BrowserResult<()> {
        let page = within(limit, "switching tabs", self.browser.get_page(id.clone())).await.map_err(|e| match e {
            BrowserError::Protocol { .. } => BrowserError::NotFound(format!("tab {} is not open", id.as_ref())),
            other => other,
        })?;
        within(limit, "switching tabs", page.bring_to_front()).await?;
        self.active = page;
        self.prepare_tab(limit).await
    }

    /// Applies the viewport and the dialog handler to the active tab.
    pub async fn prepare_tab(&mut self, limit: Duration) -> BrowserResult<()> {
        let v = self.viewport;
        let metrics = SetDeviceMetricsOverrideParams::new(i64::from(v.width), i64::from(v.height), v.scale, v.mobile);
        self.tab(limit).exec("setting the viewport", metrics).await?;
        let key = self.active.target_id().as_ref().to_owned();
        if !self.dialog_watchers.contains_key(&key) {
            let mut dialogs =
                within(limit, "watching dialogs", self.active.event_listener::<EventJavascriptDialogOpening>()).await?;
            let page = self.active.clone();
            let inbox = self.inbox.clone();
            let task = tokio::spawn(async move {
                while let Some(ev) = dialogs.next().await {
                    // Dialogs block the page until answered: accept them (prompts get their default text).
                    let answer = HandleJavaScriptDialogParams { accept: true, prompt_text: ev.default_prompt.clone() };
                    let _ = tokio::time::timeout(Duration::from_secs(5), page.execute(answer)).await;
                    let kind = serde_json::to_value(&ev.r#type).unwrap_or(Value::Null);
                    inbox
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .dialogs
                        .push(json!({"type": kind, "message": ev.message, "accepted": true}));
                }
            });
            self.dialog_watchers.insert(key, task);
        }
        Ok(())
    }
}
