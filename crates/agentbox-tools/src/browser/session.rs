//! One sandbox's browser, seen from the driver inside the sandbox: launching Chromium as the
//! driver's child, connecting to its DevTools endpoint on the sandbox's loopback, watching it, and
//! its tabs. Everything here runs inside the sandbox, under its limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentbox_core::config::{Preset, SandboxConfig};
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
use tokio::io::AsyncReadExt as _;
use tokio::process::Child;
use tokio::task::JoinHandle;

use super::BrowserConfig;
use super::cdp::{Tab, within};
use super::error::{BrowserError, BrowserResult};
use agentbox_core::LockExt;

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

/// Longest text kept of a dialog's message or a download's address, in bytes.
const EVENT_TEXT_BYTES: usize = 2048;

/// Events the browser raised between calls, reported with the next result. Pages raise them as fast
/// as they like, so each list keeps at most `cap` entries: the oldest are dropped and counted.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Most entries kept in each list.
    cap: usize,
    /// The most recent downloads of this browser.
    pub downloads: Vec<Download>,
    /// Downloads already reported in a result.
    pub reported: usize,
    /// Downloads dropped from the list because it was full, not yet reported.
    pub downloads_dropped: u64,
    /// JavaScript dialogs (alert, confirm, prompt) the tool accepted, not yet reported.
    pub dialogs: Vec<Value>,
    /// Dialogs dropped because the list was full, not yet reported.
    pub dialogs_dropped: u64,
}

impl Inbox {
    /// An empty inbox keeping at most `cap` entries per list (at least 1).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            downloads: Vec::new(),
            reported: 0,
            downloads_dropped: 0,
            dialogs: Vec::new(),
            dialogs_dropped: 0,
        }
    }

    /// Adds a download, dropping the oldest when the list is full.
    pub fn push_download(&mut self, d: Download) {
        if self.downloads.len() >= self.cap {
            let excess = self.downloads.len() + 1 - self.cap;
            self.downloads.drain(..excess);
            self.reported = self.reported.saturating_sub(excess);
            self.downloads_dropped += excess as u64;
        }
        self.downloads.push(d);
    }

    /// Adds a dialog, dropping the oldest unreported one when the list is full.
    pub fn push_dialog(&mut self, dialog: Value) {
        if self.dialogs.len() >= self.cap {
            let excess = self.dialogs.len() + 1 - self.cap;
            self.dialogs.drain(..excess);
            self.dialogs_dropped += excess as u64;
        }
        self.dialogs.push(dialog);
    }
}

/// `text` cut to [`EVENT_TEXT_BYTES`] on a character boundary, with a mark when cut.
pub(crate) fn cap_event_text(text: &str) -> String {
    if text.len() <= EVENT_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = EVENT_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}[... {} bytes truncated ...]", &text[..end], text.len() - end)
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
    /// Chromium's process, the leader of its own process group.
    pub child: Child,
    /// The file receiving Chromium's output.
    pub log_path: String,
    /// The DevTools address on the sandbox's loopback (`ws://127.0.0.1:9222`).
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
        f.debug_struct("Session").field("pid", &self.child.id()).field("tabs", &self.tabs.len()).finish_non_exhaustive()
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

/// Profile files a killed browser leaves behind, which stop the next one from starting.
const STALE_LOCKS: [&str; 3] = ["SingletonLock", "SingletonSocket", "SingletonCookie"];

/// Largest `/json/version` answer read; Chromium's is well under 1 KiB.
const VERSION_BYTES: usize = 64 * 1024;

/// Largest part of Chromium's log read for an error message.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Where Chromium's output goes inside the sandbox.
pub(crate) fn log_path(cfg: &BrowserConfig) -> String {
    format!("/tmp/agentbox-browser-{}.log", cfg.debugging_port)
}

/// Kills Chromium's whole process group (it runs in its own) and reaps it.
pub(crate) async fn kill(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: killpg takes plain integers; Chromium leads its own process group (`process_group(0)`).
        unsafe { libc::killpg(pid, libc::SIGKILL) };
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Whether Chromium is still running.
pub(crate) fn process_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// The last lines of Chromium's output, for error messages.
pub(crate) async fn log_tail(path: &str) -> String {
    let Ok(mut file) = tokio::fs::File::open(path).await else { return String::new() };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len > LOG_TAIL_BYTES {
        use tokio::io::AsyncSeekExt as _;
        if file.seek(std::io::SeekFrom::Start(len - LOG_TAIL_BYTES)).await.is_err() {
            return String::new();
        }
    }
    let mut bytes = Vec::new();
    if file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes).await.is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // D-Bus complaints are noise in a sandbox without a session bus.
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus") && !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    lines[start..].join("\n")
}

fn tail_sentence(tail: &str) -> String {
    if tail.is_empty() { String::new() } else { format!(" Its last output:\n{tail}\n") }
}

/// Starts Chromium in the sandbox (as the driver's child, in a process group of its own) and connects to it.
pub(crate) async fn launch(cfg: &BrowserConfig, network_enabled: bool, hint: &str) -> BrowserResult<Session> {
    match tokio::fs::metadata(&cfg.executable).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BrowserError::NotInstalled { path: cfg.executable.clone() });
        }
        Err(e) => return Err(BrowserError::Launch(format!("cannot read {}: {e}", cfg.executable))),
    }
    for lock in STALE_LOCKS {
        let _ = tokio::fs::remove_file(format!("{}/{lock}", cfg.user_data_dir.trim_end_matches('/'))).await;
    }
    for dir in [&cfg.user_data_dir, &cfg.downloads_dir] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| BrowserError::Launch(format!("cannot make the directory {dir}: {e}")))?;
    }
    let log_path = log_path(cfg);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| BrowserError::Launch(format!("cannot make the browser's log file {log_path}: {e}")))?;
    let log2 = log.try_clone().map_err(|e| BrowserError::Launch(format!("cannot share the log file: {e}")))?;
    let mut command = tokio::process::Command::new(&cfg.executable);
    command
        .args(chromium_args(cfg, network_enabled))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and makes one async-signal-safe
    // system call: Chromium gets SIGKILL when the driver dies, so it never outlives it.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child =
        command.spawn().map_err(|e| BrowserError::Launch(format!("cannot start {}: {e}", cfg.executable)))?;
    match connect(cfg, &mut child, &log_path, hint).await {
        Ok((browser, handler)) => setup(cfg, browser, handler, child, log_path, hint).await.map(|mut session| {
            session.network_enabled = network_enabled;
            session
        }),
        Err(e) => {
            kill(&mut child).await;
            Err(e)
        }
    }
}

/// The error of a browser that started but could not be set up, after killing it.
async fn setup_failed(e: &BrowserError, child: &mut Child, log_path: &str, hint: &str) -> BrowserError {
    let tail = log_tail(log_path).await;
    kill(child).await;
    BrowserError::Launch(format!("Chromium started, but setting it up failed: {e}.{}{hint}", tail_sentence(&tail)))
}

/// Waits for Chromium's DevTools endpoint and opens the connection.
async fn connect(
    cfg: &BrowserConfig,
    child: &mut Child,
    log_path: &str,
    hint: &str,
) -> BrowserResult<(Browser, chromiumoxide::Handler)> {
    let ws = wait_for_devtools(cfg, child, log_path, hint).await?;
    let handler_config = HandlerConfig {
        viewport: None,
        request_timeout: cfg.navigation_timeout.max(Duration::from_millis(super::input::MAX_TIMEOUT_MS))
            + Duration::from_secs(30),
        ..HandlerConfig::default()
    };
    within(cfg.cdp_timeout, "connecting to the browser", Browser::connect_with_config(ws, handler_config))
        .await
        .map_err(|e| {
            BrowserError::Launch(format!(
                "its DevTools endpoint did not accept a connection: {e}. Something else may hold the DevTools port \
                 {} inside the sandbox",
                cfg.debugging_port
            ))
        })
}

/// Sets up a connected browser: downloads, a tab of our own, the viewport and dialog handling.
async fn setup(
    cfg: &BrowserConfig,
    browser: Browser,
    mut handler: chromiumoxide::Handler,
    mut child: Child,
    log_path: String,
    hint: &str,
) -> BrowserResult<Session> {
    let handler = tokio::spawn(async move {
        // Invalid messages are skipped by the handler; any error it returns means the connection failed.
        while let Some(event) = handler.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "the browser's DevTools connection ended");
                break;
            }
        }
    });
    let inbox = Arc::new(Mutex::new(Inbox::new(cfg.max_events)));
    let mut watchers = Vec::new();
    let first = async {
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
    let page = match first.await {
        Ok(p) => p,
        Err(e) => {
            handler.abort();
            for w in &watchers {
                w.abort();
            }
            return Err(setup_failed(&e, &mut child, &log_path, hint).await);
        }
    };
    let viewport = ViewportSpec { width: cfg.viewport.0, height: cfg.viewport.1, scale: 1.0, mobile: false };
    let mut session = Session {
        browser,
        handler,
        watchers,
        dialog_watchers: HashMap::new(),
        child,
        log_path,
        ws_base: format!("ws://127.0.0.1:{}", cfg.debugging_port),
        tabs: vec![page.target_id().clone()],
        active: page,
        viewport,
        inbox,
        network_enabled: false,
    };
    let rest = async {
        // Close the tab Chromium opened by itself, so the tool's tab is the only one.
        let ours = session.active.target_id().clone();
        for t in session.page_targets(cfg.cdp_timeout).await? {
            if t.target_id != ours {
                let close = chromiumoxide::cdp::browser_protocol::target::CloseTargetParams::new(t.target_id.clone());
                let _ = within(cfg.cdp_timeout, "closing the initial tab", session.browser.execute(close)).await;
            }
        }
        session.prepare_tab(cfg.cdp_timeout).await
    };
    match rest.await {
        Ok(()) => Ok(session),
        Err(e) => {
            let log_path = session.log_path.clone();
            Err(setup_failed(&e, &mut session.child, &log_path, hint).await)
        }
    }
}

/// Reads `/json/version` on the sandbox's loopback until Chromium answers (at most [`VERSION_BYTES`] of
/// it); returns the browser's WebSocket address on that loopback.
async fn wait_for_devtools(
    cfg: &BrowserConfig,
    child: &mut Child,
    log_path: &str,
    hint: &str,
) -> BrowserResult<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| BrowserError::Launch(format!("cannot make an HTTP client: {e}")))?;
    let base = format!("http://127.0.0.1:{}", cfg.debugging_port);
    let url = format!("{base}/json/version");
    let start = Instant::now();
    loop {
        if let Some(ws) = read_version(&client, &url).await {
            return rewrite_ws_url(&ws, &base);
        }
        if !process_running(child) {
            let tail = log_tail(log_path).await;
            return Err(BrowserError::Launch(format!(
                "Chromium exited right after starting.{}{hint}",
                tail_sentence(&tail)
            )));
        }
        if start.elapsed() >= cfg.launch_timeout {
            let tail = log_tail(log_path).await;
            return Err(BrowserError::Launch(format!(
                "its DevTools endpoint did not answer within {} s.{}{hint}",
                cfg.launch_timeout.as_secs(),
                tail_sentence(&tail)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `webSocketDebuggerUrl` of a `/json/version` answer of at most [`VERSION_BYTES`].
async fn read_version(client: &reqwest::Client, url: &str) -> Option<String> {
    let mut resp = client.get(url).send().await.ok()?;
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await.ok()?.ok()? {
        if body.len() + chunk.len() > VERSION_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    let v: Value = serde_json::from_slice(&body).ok()?;
    v.get("webSocketDebuggerUrl").and_then(Value::as_str).map(str::to_owned)
}

/// `ws://127.0.0.1:9222/devtools/browser/ID` with the host and port of `base` (`http://127.0.0.1:9222`).
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
                    let mut inbox = inbox.lock_unpoisoned();
                    inbox.push_download(Download {
                        guid: ev.guid.clone(),
                        url: cap_event_text(&ev.url),
                        path: format!("{dir}/{}", cap_event_text(&ev.suggested_filename)),
                        state: "in_progress",
                        received_bytes: 0,
                        total_bytes: 0,
                    });
                }
                Some(ev) = progress.next() => {
                    let mut inbox = inbox.lock_unpoisoned();
                    if let Some(d) = inbox.downloads.iter_mut().find(|d| d.guid == ev.guid) {
                        d.state = match ev.state {
                            DownloadProgressState::InProgress => "in_progress",
                            DownloadProgressState::Completed => "completed",
                            DownloadProgressState::Canceled => "canceled",
                        };
                        d.received_bytes = as_bytes(ev.received_bytes);
                        d.total_bytes = as_bytes(ev.total_bytes);
                        if let Some(p) = &ev.file_path {
                            d.path = cap_event_text(p);
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
        let mut inbox = self.inbox.lock_unpoisoned();
        if !inbox.dialogs.is_empty() {
            out.insert("dialogs".into(), Value::Array(std::mem::take(&mut inbox.dialogs)));
        }
        if inbox.dialogs_dropped > 0 {
            out.insert("dialogs_dropped".into(), json!(std::mem::take(&mut inbox.dialogs_dropped)));
        }
        if inbox.downloads_dropped > 0 {
            out.insert("downloads_dropped".into(), json!(std::mem::take(&mut inbox.downloads_dropped)));
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

    /// Kills Chromium and waits for it.
    pub async fn kill(&mut self) {
        kill(&mut self.child).await;
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
                        .lock_unpoisoned()
                        .push_dialog(json!({"type": kind, "message": cap_event_text(&ev.message), "accepted": true}));
                }
            });
            self.dialog_watchers.insert(key, task);
        }
        Ok(())
    }
}
