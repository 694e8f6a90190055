//! The browser's actions, each over the active tab of a running [`Session`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::input::{
    DispatchKeyEventParams, DispatchKeyEventType, DispatchMouseEventParams, DispatchMouseEventType, InsertTextParams,
    MouseButton as CdpMouseButton,
};
use chromiumoxide::cdp::browser_protocol::network::{EventResponseReceived, ResourceType};
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, CaptureScreenshotParams, EventFrameStartedLoading, EventFrameStoppedLoading,
    EventLifecycleEvent, FrameId, GetLayoutMetricsParams, GetNavigationHistoryParams, NavigateToHistoryEntryParams,
    ReloadParams, Viewport,
};
use chromiumoxide::cdp::browser_protocol::target::{CloseTargetParams, TargetId};
use chromiumoxide::cdp::js_protocol::runtime::{
    CallFunctionOnParams, EvaluateParams, ReleaseObjectGroupParams, RemoteObjectType, TimeDelta,
};
use chromiumoxide::conn::Connection;
use chromiumoxide::listeners::EventStream;
use chromiumoxide::types::{CdpJsonEventMessage, Message};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::BrowserConfig;
use super::cdp::{
    ACTIONABLE_JS, EXTRACT_JS, FOCUS_JS, SCROLL_JS, SELECT_JS, SERIALIZE_JS, SNAPSHOT_JS, Tab, VALUE_JS, WAIT_JS,
    describe_exception, gone_message, within,
};
use super::error::{BrowserError, BrowserResult};
use super::input::{
    BrowserAction, ElementState, ExtractFormat, MAX_BYTES_RANGE, MAX_TIMEOUT_MS, MouseButton, SNAPSHOT_LIMIT_RANGE,
    TabOp, WaitUntil,
};
use super::session::{Session, ViewportSpec};
use crate::output::truncation_mark;
use agentbox_core::LockExt;

/// What an action runs with besides the session.
pub(crate) struct Ctx<'a> {
    /// The tool's configuration.
    pub cfg: &'a BrowserConfig,
    /// Whether the sandbox has network access.
    pub network_enabled: bool,
}

type Out = Map<String, Value>;

/// How long to watch for a navigation started by a click or a key press.
const NAVIGATION_GRACE: Duration = Duration::from_millis(150);
/// How often waits check their condition.
const POLL: Duration = Duration::from_millis(100);
/// Tallest full-page screenshot, in CSS pixels.
const MAX_FULL_PAGE_HEIGHT: f64 = 16_384.0;

/// Runs one action.
pub(crate) async fn run(s: &mut Session, cx: &Ctx<'_>, action: BrowserAction) -> BrowserResult<Out> {
    let cfg = cx.cfg;
    s.sync_tabs(cfg.cdp_timeout).await?;
    match action {
        BrowserAction::Navigate { url, wait, selector, timeout_ms } => {
            let url = normalize_url(&url)?;
            let limit = limit(timeout_ms, cfg.navigation_timeout)?;
            navigate(s, cx, Start::Url(url), wait, selector, limit).await
        }
        BrowserAction::Back { wait, timeout_ms } => {
            navigate(s, cx, Start::History(-1), wait, None, limit(timeout_ms, cfg.navigation_timeout)?).await
        }
        BrowserAction::Forward { wait, timeout_ms } => {
            navigate(s, cx, Start::History(1), wait, None, limit(timeout_ms, cfg.navigation_timeout)?).await
        }
        BrowserAction::Reload { wait, timeout_ms } => {
            navigate(s, cx, Start::Reload, wait, None, limit(timeout_ms, cfg.navigation_timeout)?).await
        }
        BrowserAction::Click { reference, selector, button, double_click, force, timeout_ms } => {
            let target = Target::required(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout)?;
            click(s, cx, &target, button.unwrap_or_default(), double_click, force, limit).await
        }
        BrowserAction::Type { reference, selector, text, submit, clear, slowly, timeout_ms } => {
            let target = Target::required(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout)?;
            let opts = TypeOptions { submit, clear: clear.unwrap_or(true), slowly };
            type_text(s, cx, &target, &text, opts, limit).await
        }
        BrowserAction::Press { key, reference, selector, timeout_ms } => {
            let target = Target::optional(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout)?;
            press(s, cx, target.as_ref(), &key, limit).await
        }
        BrowserAction::Select { reference, selector, values, timeout_ms } => {
            let target = Target::required(reference, selector)?;
            select(s, cx, &target, &values, limit(timeout_ms, cfg.action_timeout)?).await
        }
        BrowserAction::Screenshot { full_page, path, return_data } => {
            screenshot(s, cx, full_page, path.as_deref(), return_data.unwrap_or(true)).await
        }
        BrowserAction::Extract { format, selector, reference, offset, max_bytes } => {
            let target = Target::optional(reference, selector)?;
            let max = bytes(max_bytes, cfg.extract_bytes, MAX_BYTES_RANGE, "max_bytes")?;
            extract(s, cx, target.as_ref(), format.unwrap_or_default(), offset.unwrap_or(0), max).await
        }
        BrowserAction::Evaluate { expression, max_bytes, timeout_ms } => {
            let max = bytes(max_bytes, cfg.extract_bytes, MAX_BYTES_RANGE, "max_bytes")?;
            evaluate(s, cx, &expression, max, limit(timeout_ms, cfg.action_timeout)?).await
        }
        BrowserAction::Snapshot { selector, interactive_only, offset, limit } => {
            let max = bytes(limit, cfg.snapshot_bytes, SNAPSHOT_LIMIT_RANGE, "limit")?;
            snapshot(s, cx, selector.as_deref(), interactive_only, offset.unwrap_or(0), max).await
        }
        BrowserAction::WaitFor { selector, reference, state, text, text_gone, timeout_ms } => {
            let target = Target::optional(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout)?;
            wait_for(s, cx, target.as_ref(), state, text, text_gone, limit).await
        }
        BrowserAction::Scroll { reference, selector, dx, dy, to } => {
            let target = Target::optional(reference, selector)?;
            let mut args = target.as_ref().map_or_else(|| json!({}), |t| t.args.clone());
            args["dx"] = json!(dx);
            args["dy"] = json!(dy);
            args["to"] = json!(to.map(|t| if t == super::input::ScrollTo::Top { "top" } else { "bottom" }));
            let r = s.tab(cfg.cdp_timeout).helper("scrolling", SCROLL_JS, &args).await?;
            check_status(&r, target.as_ref())?;
            let mut out = as_object(r);
            out.remove("status");
            Ok(out)
        }
        BrowserAction::SetViewport { width, height, device_scale_factor, mobile } => {
            set_viewport(s, cx, width, height, device_scale_factor.unwrap_or(1.0), mobile).await
        }
        BrowserAction::Tabs { op, url, index, id } => tabs(s, cx, op, url, index, id).await,
        BrowserAction::Downloads { wait, timeout_ms } => {
            downloads(s, wait, limit(timeout_ms, cfg.navigation_timeout)?).await
        }
        BrowserAction::Close {} => Ok(Out::new()),
    }
}

// ----- input checks -----

fn limit(ms: Option<u64>, default: Duration) -> BrowserResult<Duration> {
    match ms {
        None => Ok(default),
        Some(0) => Err(BrowserError::InvalidInput("timeout_ms must be at least 1".into())),
        Some(ms) if ms > MAX_TIMEOUT_MS => Err(BrowserError::InvalidInput(format!(
            "timeout_ms must be at most {MAX_TIMEOUT_MS} (5 minutes), got {ms}"
        ))),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

fn bytes(v: Option<usize>, default: usize, (min, max): (usize, usize), name: &str) -> BrowserResult<usize> {
    match v {
        None => Ok(default),
        Some(n) if n < min || n > max => {
            Err(BrowserError::InvalidInput(format!("{name} must be between {min} and {max} bytes, got {n}")))
        }
        Some(n) => Ok(n),
    }
}

/// `example.com` becomes `http://example.com`, `/home/user/a.html` becomes a file URL; only web, file, data and
/// about URLs are opened.
pub(crate) fn normalize_url(raw: &str) -> BrowserResult<String> {
    let url = raw.trim();
    if url.is_empty() {
        return Err(BrowserError::InvalidInput(
            "the url is empty: give an address such as http://127.0.0.1:8000/".into(),
        ));
    }
    let lower = url.to_ascii_lowercase();
    if ["http://", "https://", "file://", "data:", "about:"].iter().any(|p| lower.starts_with(p)) {
        return Ok(url.to_owned());
    }
    if url.starts_with('/') {
        return Ok(format!("file://{url}"));
    }
    if let Some((scheme, rest)) = lower.split_once(':') {
        let looks_like_scheme = scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
        let host_and_port = rest.chars().next().is_some_and(|c| c.is_ascii_digit());
        if looks_like_scheme && !host_and_port {
            return Err(BrowserError::InvalidInput(format!(
                "cannot open {url:?}: only http, https, file, data and about URLs are supported"
            )));
        }
    }
    Ok(format!("http://{url}"))
}

/// The element an action works on.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    args: Value,
    label: String,
    is_ref: bool,
}

impl Target {
    fn required(reference: Option<String>, selector: Option<String>) -> BrowserResult<Self> {
        Self::optional(reference, selector)?.ok_or_else(|| {
            BrowserError::InvalidInput(
                "give the element: `ref` (from a snapshot, such as e12) or a CSS `selector`".into(),
            )
        })
    }

    fn optional(reference: Option<String>, selector: Option<String>) -> BrowserResult<Option<Self>> {
        match (reference, selector) {
            (Some(_), Some(_)) => Err(BrowserError::InvalidInput("give either `ref` or `selector`, not both".into())),
            (Some(r), None) => {
                let r = r.trim().to_owned();
                let valid = r.len() > 1 && r.starts_with('e') && r[1..].chars().all(|c| c.is_ascii_digit());
                if !valid {
                    return Err(BrowserError::InvalidInput(format!(
                        "ref {r:?} is not a snapshot ref: refs look like e12 and come from the snapshot action"
                    )));
                }
                Ok(Some(Self { args: json!({"ref": r}), label: format!("ref {r}"), is_ref: true }))
            }
            (None, Some(sel)) => {
                if sel.trim().is_empty() {
                    return Err(BrowserError::InvalidInput("the selector is empty".into()));
                }
                Ok(Some(Self { label: format!("selector {sel:?}"), args: json!({"selector": sel}), is_ref: false }))
            }
            (None, None) => Ok(None),
        }
    }

    fn missing(&self) -> BrowserError {
        if self.is_ref {
            BrowserError::NotFound(format!(
                "{} is not on the page any more (the page changed or navigated since the snapshot): take a new snapshot",
                self.label
            ))
        } else {
            BrowserError::NotFound(format!("no element matches {}", self.label))
        }
    }
}

fn as_object(v: Value) -> Out {
    match v {
        Value::Object(m) => m,
        other => {
            let mut m = Out::new();
            m.insert("value".into(), other);
            m
        }
    }
}

/// Turns a helper's `status` into an error when it is not `ok`.
fn check_status(r: &Value, target: Option<&Target>) -> BrowserResult<()> {
    let status = r.get("status").and_then(Value::as_str).unwrap_or("ok");
    let element = r.get("element").and_then(Value::as_str).unwrap_or("the element");
    let label = target.map_or_else(|| "the element".to_owned(), |t| t.label.clone());
    match status {
        "ok" => Ok(()),
        "bad_selector" => Err(BrowserError::InvalidInput(format!(
            "{label} is not a valid CSS selector: {}",
            r.get("message").and_then(Value::as_str).unwrap_or_default()
        ))),
        "missing" => Err(target.map_or_else(|| BrowserError::NotFound("no such element".into()), Target::missing)),
        "hidden" => Err(BrowserError::Page(format!("{element} ({label}) is not visible"))),
        "disabled" => Err(BrowserError::Page(format!("{element} ({label}) is disabled"))),
        "not_editable" => Err(BrowserError::InvalidInput(format!(
            "{element} ({label}) is not a text field: type works on inputs, textareas and contenteditable elements"
        ))),
        "readonly" => Err(BrowserError::Page(format!("{element} ({label}) is read-only"))),
        "covered" => Err(BrowserError::Page(format!(
            "{element} ({label}) is covered by {} at the point a click would land; close what covers it, or pass \
             force=true to click the element directly",
            r.get("by").and_then(Value::as_str).unwrap_or("another element")
        ))),
        "not_select" => Err(BrowserError::InvalidInput(format!("{label} is not a <select> element"))),
        "not_multiple" => Err(BrowserError::InvalidInput(format!("{label} allows only one selected option"))),
        "no_option" => Err(BrowserError::NotFound(format!(
            "{label} has no option {}; its options are: {}",
            r.get("value").cloned().unwrap_or(Value::Null),
            r.get("options").cloned().unwrap_or(Value::Null)
        ))),
        other => Err(BrowserError::Page(format!("{label}: {other}"))),
    }
}

// ----- navigation -----

/// How a navigation starts.
enum Start {
    /// Page.navigate to a URL.
    Url(String),
    /// A step through the tab's history.
    History(i64),
    /// Page.reload.
    Reload,
}

/// What the command that starts a navigation reported.
struct Started {
    /// The new document's loader, when the command tells it.
    loader: Option<String>,
    /// A navigation within the same document (no load to wait for).
    same_document: bool,
}

/// Sends Page.navigate on its own connection to the tab, so that a navigation never queues behind an earlier one
/// that is still loading; returns the new document's loader (none for a same-document navigation).
async fn raw_navigate(ws_base: &str, target: &TargetId, url: &str, limit: Duration) -> BrowserResult<Started> {
    let what = "starting the navigation";
    let endpoint = format!("{ws_base}/devtools/page/{}", target.as_ref());
    let work = async {
        let mut conn =
            Connection::<CdpJsonEventMessage>::connect(&endpoint).await.map_err(|e| super::cdp::map_error(what, e))?;
        let id = conn
            .submit_command("Page.navigate".into(), None, json!({"url": url}))
            .map_err(|e| BrowserError::Protocol { what: what.into(), message: e.to_string() })?;
        while let Some(msg) = conn.next().await {
            match msg {
                Ok(Message::Response(r)) if r.id == id => {
                    if let Some(e) = r.error {
                        return Err(BrowserError::Navigation(format!("navigating to {url} failed: {}", e.message)));
                    }
                    let v = r.result.unwrap_or(Value::Null);
                    if let Some(text) = v.get("errorText").and_then(Value::as_str) {
                        return Err(BrowserError::Navigation(text.to_owned()));
                    }
                    let loader = v.get("loaderId").and_then(Value::as_str).map(str::to_owned);
                    return Ok(Started { same_document: loader.is_none(), loader });
                }
                Ok(_) => {}
                Err(e) => return Err(super::cdp::map_error(what, e)),
            }
        }
        Err(BrowserError::Gone(gone_message(what)))
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(BrowserError::Timeout(format!(
            "the browser did not start navigating to {url} within {} ms",
            limit.as_millis()
        ))),
    }
}

fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(u, _)| u)
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1" | "0.0.0.0") || host.starts_with("127.")
}

fn navigation_error(url: &str, text: &str, cx: &Ctx<'_>) -> BrowserError {
    let mut msg = format!("navigating to {url} failed: {text}");
    let web = url.starts_with("http://") || url.starts_with("https://");
    if web && !is_loopback(url) && !cx.network_enabled {
        msg.push_str(
            ". The sandbox has no network access (network.enabled is false): only pages served inside the sandbox \
             (http://127.0.0.1:PORT), file:// and data: URLs load. Enable the sandbox's network to reach other hosts",
        );
    } else if web && is_loopback(url) && text.contains("ERR_CONNECTION_REFUSED") {
        msg.push_str(". Nothing listens on that port inside the sandbox: start the server in the sandbox first");
    } else if web && (text.contains("ERR_TUNNEL_CONNECTION_FAILED") || text.contains("ERR_PROXY")) {
        msg.push_str(". The sandbox's network policy (its egress proxy) refused this host");
    }
    BrowserError::Navigation(msg)
}

async fn main_frame(page: &Page, limit: Duration) -> BrowserResult<FrameId> {
    within(limit, "finding the page's main frame", page.mainframe())
        .await?
        .ok_or_else(|| BrowserError::Protocol { what: "finding the page's main frame".into(), message: "none".into() })
}

async fn navigate(
    s: &mut Session,
    cx: &Ctx<'_>,
    start: Start,
    wait: Option<WaitUntil>,
    selector: Option<String>,
    limit: Duration,
) -> BrowserResult<Out> {
    let wait = wait.unwrap_or(if selector.is_some() { WaitUntil::Selector } else { WaitUntil::Load });
    match (&wait, &selector) {
        (WaitUntil::Selector, None) => {
            return Err(BrowserError::InvalidInput("wait=selector needs a `selector` to wait for".into()));
        }
        (w, Some(_)) if *w != WaitUntil::Selector => {
            return Err(BrowserError::InvalidInput("`selector` goes with wait=selector".into()));
        }
        _ => {}
    }
    let cdp = cx.cfg.cdp_timeout;
    let page = s.active.clone();
    let tab = Tab { page: &page, limit: cdp };
    let deadline = Instant::now() + limit;
    let main = main_frame(&page, cdp).await?;
    let mut lifecycle: EventStream<EventLifecycleEvent> =
        within(cdp, "watching the page load", page.event_listener::<EventLifecycleEvent>()).await?;
    let mut responses: EventStream<EventResponseReceived> =
        within(cdp, "watching the page load", page.event_listener::<EventResponseReceived>()).await?;

    let (label, start_fut): (
        String,
        std::pin::Pin<Box<dyn std::future::Future<Output = BrowserResult<Started>> + Send + '_>>,
    ) = match start {
        Start::Url(url) => {
            let ws_base = s.ws_base.clone();
            let target = page.target_id().clone();
            let shown = url.clone();
            (shown, Box::pin(async move { raw_navigate(&ws_base, &target, &url, limit).await }))
        }
        Start::History(step) => {
            let history = tab.exec("reading the tab's history", GetNavigationHistoryParams::default()).await?;
            let index = history.current_index + step;
            let entry = usize::try_from(index).ok().and_then(|i| history.entries.get(i)).ok_or_else(|| {
                BrowserError::NotFound(format!(
                    "there is no {} page in this tab's history",
                    if step < 0 { "previous" } else { "next" }
                ))
            })?;
            let current = usize::try_from(history.current_index)
                .ok()
                .and_then(|i| history.entries.get(i))
                .map(|e| e.url.clone())
                .unwrap_or_default();
            let same_document = strip_fragment(&current) == strip_fragment(&entry.url);
            let entry_id = entry.id;
            let url = entry.url.clone();
            (
                url,
                Box::pin(async move {
                    tab.exec("moving through the history", NavigateToHistoryEntryParams::new(entry_id)).await?;
                    Ok(Started { loader: None, same_document })
                }),
            )
        }
        Start::Reload => {
            let (url, _) = tab.location().await?;
            (
                url,
                Box::pin(async move {
                    tab.exec("reloading", ReloadParams::default()).await?;
                    Ok(Started { loader: None, same_document: false })
                }),
            )
        }
    };

    let want = wait.lifecycle_event();
    let mut start_fut = start_fut;
    let mut started: Option<Started> = None;
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    let mut last_init: Option<String> = None;
    let mut statuses: HashMap<String, i64> = HashMap::new();
    let mut responses_open = true;
    let loader = loop {
        if let Some(st) = &started {
            if st.same_document {
                break None;
            }
            if let Some(l) = st.loader.clone().or_else(|| last_init.clone()) {
                if seen.get(&l).is_some_and(|names| names.contains(want)) {
                    break Some(l);
                }
            }
        }
        tokio::select! {
            r = &mut start_fut, if started.is_none() => {
                match r {
                    Ok(st) => started = Some(st),
                    Err(BrowserError::Navigation(text)) => return Err(navigation_error(&label, &text, cx)),
                    Err(e) => return Err(e),
                }
            }
            ev = lifecycle.next() => {
                let Some(ev) = ev else { return Err(BrowserError::Gone(gone_message("waiting for the page to load"))) };
                if ev.frame_id == main {
                    let l = ev.loader_id.inner().clone();
                    if ev.name == "init" {
                        last_init = Some(l.clone());
                    }
                    seen.entry(l).or_default().insert(ev.name.clone());
                }
            }
            ev = responses.next(), if responses_open => {
                match ev {
                    Some(ev) if ev.r#type == ResourceType::Document && ev.frame_id.as_ref() == Some(&main) => {
                        statuses.insert(ev.loader_id.inner().clone(), ev.response.status);
                    }
                    Some(_) => {}
                    None => responses_open = false,
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let hint = if wait == WaitUntil::Load || wait == WaitUntil::Networkidle {
                    " (a resource may never finish loading): try wait=domcontentloaded, or a longer timeout_ms"
                } else {
                    ": the server may not be answering; try a longer timeout_ms"
                };
                return Err(BrowserError::Timeout(format!(
                    "navigating to {label} timed out: the page did not reach `{}` within {} ms{hint}",
                    wait.as_str(),
                    limit.as_millis()
                )));
            }
        }
    };
    drop(start_fut);
    if let Some(sel) = &selector {
        let target = Target { args: json!({"selector": sel}), label: format!("selector {sel:?}"), is_ref: false };
        wait_until(s, cx, Some(&target), Some(ElementState::Visible), None, None, deadline, limit).await?;
    }
    let (url, title) = s.tab(cdp).location().await?;
    if url.starts_with("chrome-error://") {
        return Err(navigation_error(&label, "the page could not be loaded", cx));
    }
    let mut out = Out::new();
    out.insert("url".into(), json!(url));
    out.insert("title".into(), json!(title));
    if let Some(status) = loader.as_ref().and_then(|l| statuses.get(l)) {
        out.insert("status".into(), json!(status));
    }
    Ok(out)
}

/// Watches for a navigation that an input event may start.
struct NavWatch {
    started: EventStream<EventFrameStartedLoading>,
    stopped: EventStream<EventFrameStoppedLoading>,
    main: FrameId,
}

/// What happened after an input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// No navigation started.
    Stayed,
    /// A navigation started and finished loading.
    Navigated,
    /// A navigation started and was still loading at the deadline.
    StillLoading,
}

impl NavWatch {
    async fn start(page: &Page, limit: Duration) -> BrowserResult<Self> {
        let main = main_frame(page, limit).await?;
        let started =
            within(limit, "watching for navigation", page.event_listener::<EventFrameStartedLoading>()).await?;
        let stopped =
            within(limit, "watching for navigation", page.event_listener::<EventFrameStoppedLoading>()).await?;
        Ok(Self { started, stopped, main })
    }

    async fn settle(mut self, deadline: Instant) -> BrowserResult<Settled> {
        let grace = (Instant::now() + NAVIGATION_GRACE).min(deadline);
        loop {
            tokio::select! {
                ev = self.started.next() => match ev {
                    Some(ev) if ev.frame_id == self.main => break,
                    Some(_) => {}
                    None => return Err(BrowserError::Gone(gone_message("watching for navigation"))),
                },
                () = tokio::time::sleep_until(grace) => return Ok(Settled::Stayed),
            }
        }
        loop {
            tokio::select! {
                ev = self.stopped.next() => match ev {
                    Some(ev) if ev.frame_id == self.main => return Ok(Settled::Navigated),
                    Some(_) => {}
                    None => return Err(BrowserError::Gone(gone_message("waiting for the page to load"))),
                },
                () = tokio::time::sleep_until(deadline) => return Ok(Settled::StillLoading),
            }
        }
    }
}

async fn describe_page(s: &Session, cx: &Ctx<'_>, out: &mut Out, settled: Settled) -> BrowserResult<()> {
    let (url, title) = s.tab(cx.cfg.cdp_timeout).location().await?;
    out.insert("url".into(), json!(url));
    out.insert("title".into(), json!(title));
    match settled {
        Settled::Stayed => {}
        Settled::Navigated => {
            out.insert("navigated".into(), json!(true));
        }
        Settled::StillLoading => {
            out.insert("navigated".into(), json!(true));
            out.insert("note".into(), json!("the new page was still loading when the action returned"));
        }
    }
    Ok(())
}

// ----- element actions -----

/// Waits until the target can be acted on; returns the point to click.
async fn actionable(
    s: &Session,
    cx: &Ctx<'_>,
    target: &Target,
    editable: bool,
    force: bool,
    deadline: Instant,
    limit: Duration,
) -> BrowserResult<(f64, f64, Value)> {
    let mut args = target.args.clone();
    args["editable"] = json!(editable);
    args["force"] = json!(force);
    loop {
        let r = s.tab(cx.cfg.cdp_timeout).helper("finding the element", ACTIONABLE_JS, &args).await?;
        let status = r.get("status").and_then(Value::as_str).unwrap_or_default();
        let retry = match status {
            "ok" => {
                let x = r.get("x").and_then(Value::as_f64).unwrap_or_default();
                let y = r.get("y").and_then(Value::as_f64).unwrap_or_default();
                return Ok((x, y, r));
            }
            "missing" => !target.is_ref,
            "hidden" | "disabled" | "covered" => true,
            _ => false,
        };
        if !retry || Instant::now() + POLL > deadline {
            let err = check_status(&r, Some(target)).err().unwrap_or_else(|| target.missing());
            return Err(match err {
                BrowserError::Page(m) if retry => {
                    BrowserError::Timeout(format!("{m} (waited {} ms)", limit.as_millis()))
                }
                BrowserError::NotFound(m) if retry => {
                    BrowserError::NotFound(format!("{m} (waited {} ms)", limit.as_millis()))
                }
                other => other,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn mouse(
    kind: DispatchMouseEventType,
    x: f64,
    y: f64,
    button: CdpMouseButton,
    clicks: i64,
) -> DispatchMouseEventParams {
    DispatchMouseEventParams {
        r#type: kind,
        x,
        y,
        modifiers: None,
        timestamp: None,
        button: Some(button),
        buttons: None,
        click_count: Some(clicks),
        force: None,
        tangential_pressure: None,
        tilt_x: None,
        tilt_y: None,
        twist: None,
        delta_x: None,
        delta_y: None,
        pointer_type: None,
    }
}

async fn click(
    s: &mut Session,
    cx: &Ctx<'_>,
    target: &Target,
    button: MouseButton,
    double: bool,
    force: bool,
    limit: Duration,
) -> BrowserResult<Out> {
    let deadline = Instant::now() + limit;
    let cdp = cx.cfg.cdp_timeout;
    let (x, y, info) = actionable(s, cx, target, false, force, deadline, limit).await?;
    let tabs_before = s.tabs.len();
    let watch = NavWatch::start(&s.active, cdp).await?;
    let tab = s.tab(cdp);
    let cdp_button = match button {
        MouseButton::Left => CdpMouseButton::Left,
        MouseButton::Right => CdpMouseButton::Right,
        MouseButton::Middle => CdpMouseButton::Middle,
    };
    let covered = force && info.get("covered").and_then(Value::as_bool).unwrap_or(false);
    if covered {
        let mut args = target.args.clone();
        args["double"] = json!(double);
        let js = "(find, a) => { const el = find(a).el; if (!el) return {status: 'missing'}; el.click(); \
                  if (a.double) { el.click(); el.dispatchEvent(new MouseEvent('dblclick', {bubbles: true})); } \
                  return {status: 'ok'}; }";
        let r = tab.helper("clicking", js, &args).await?;
        check_status(&r, Some(target))?;
    } else {
        tab.exec("moving the mouse", mouse(DispatchMouseEventType::MouseMoved, x, y, CdpMouseButton::None, 0)).await?;
        let rounds = if double { 2 } else { 1 };
        for n in 1..=rounds {
            tab.exec(
                "pressing the mouse button",
                mouse(DispatchMouseEventType::MousePressed, x, y, cdp_button.clone(), n),
            )
            .await?;
            tab.exec(
                "releasing the mouse button",
                mouse(DispatchMouseEventType::MouseReleased, x, y, cdp_button.clone(), n),
            )
            .await?;
        }
    }
    let settled = watch.settle(deadline).await?;
    let mut out = Out::new();
    out.insert("clicked".into(), json!(target.label));
    if let Some(el) = info.get("element") {
        out.insert("element".into(), el.clone());
    }
    if info.get("count").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        out.insert("matches".into(), info["count"].clone());
    }
    let targets = s.sync_tabs(cdp).await?;
    if targets.len() > tabs_before {
        let new: Vec<Value> = targets
            .iter()
            .enumerate()
            .skip(tabs_before)
            .map(|(i, t)| json!({"index": i, "id": t.target_id.as_ref(), "url": t.url}))
            .collect();
        out.insert("new_tabs".into(), json!(new));
    }
    describe_page(s, cx, &mut out, settled).await?;
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
struct TypeOptions {
    submit: bool,
    clear: bool,
    slowly: bool,
}

fn key_event(
    kind: DispatchKeyEventType,
    key: &chromiumoxide::keys::KeyDefinition,
    modifiers: i64,
    text: Option<&str>,
) -> DispatchKeyEventParams {
    DispatchKeyEventParams {
        r#type: kind,
        modifiers: (modifiers != 0).then_some(modifiers),
        timestamp: None,
        text: text.map(str::to_owned),
        unmodified_text: text.map(str::to_owned),
        key_identifier: None,
        code: Some(key.code.to_owned()),
        key: Some(key.key.to_owned()),
        windows_virtual_key_code: Some(key.key_code),
        native_virtual_key_code: Some(key.key_code),
        auto_repeat: None,
        is_keypad: None,
        is_system_key: None,
        location: None,
        commands: None,
    }
}

fn unknown_key(name: &str) -> BrowserError {
    BrowserError::InvalidInput(format!(
        "unknown key {name:?}: use a key name such as Enter, Tab, Escape, Backspace, Delete, ArrowDown, PageDown, \
         Home, F5, a single character, or a combination such as Control+a"
    ))
}

/// Presses one key (with modifiers: Alt=1, Control=2, Meta=4, Shift=8) and releases it.
async fn press_key(tab: Tab<'_>, name: &str, modifiers: i64) -> BrowserResult<()> {
    let Some(def) = chromiumoxide::keys::get_key_definition(name) else {
        return Err(unknown_key(name));
    };
    // Keys that produce text send it with the key down, unless a modifier other than Shift is held.
    let text =
        if modifiers & !8 != 0 { None } else { def.text.or_else(|| (def.key.chars().count() == 1).then_some(def.key)) };
    let down = if text.is_some() { DispatchKeyEventType::KeyDown } else { DispatchKeyEventType::RawKeyDown };
    let mut event = key_event(down, def, modifiers, text);
    if modifiers == 2 || modifiers == 4 {
        // Editing shortcuts are platform commands in headless Chromium.
        let command = match def.key.to_ascii_lowercase().as_str() {
            "a" => Some("selectAll"),
            "c" => Some("copy"),
            "x" => Some("cut"),
            "v" => Some("paste"),
            "z" => Some("undo"),
            _ => None,
        };
        event.commands = command.map(|c| vec![c.to_owned()]);
    }
    tab.exec("pressing a key", event).await?;
    tab.exec("releasing a key", key_event(DispatchKeyEventType::KeyUp, def, modifiers, None)).await?;
    Ok(())
}

/// Splits `Control+Shift+a` into the key and its modifier bits.
fn parse_key(combo: &str) -> BrowserResult<(String, i64)> {
    if combo.is_empty() {
        return Err(BrowserError::InvalidInput("the key is empty".into()));
    }
    if combo == "+" || !combo.contains('+') {
        return Ok((combo.to_owned(), 0));
    }
    let (mods, key) = match combo.strip_suffix("++") {
        Some(m) => (m, "+"),
        None => combo.rsplit_once('+').unwrap_or(("", combo)),
    };
    let mut bits = 0;
    for m in mods.split('+') {
        bits |= match m.to_ascii_lowercase().as_str() {
            "alt" => 1,
            "control" | "ctrl" => 2,
            "meta" | "command" | "cmd" => 4,
            "shift" => 8,
            other => {
                return Err(BrowserError::InvalidInput(format!(
                    "unknown modifier {other:?} in {combo:?}: use Alt, Control, Meta or Shift"
                )));
            }
        };
    }
    Ok((key.to_owned(), bits))
}

async fn type_text(
    s: &mut Session,
    cx: &Ctx<'_>,
    target: &Target,
    text: &str,
    opts: TypeOptions,
    limit: Duration,
) -> BrowserResult<Out> {
    let deadline = Instant::now() + limit;
    let cdp = cx.cfg.cdp_timeout;
    actionable(s, cx, target, true, false, deadline, limit).await?;
    let tab = s.tab(cdp);
    let mut args = target.args.clone();
    args["clear"] = json!(opts.clear);
    let r = tab.helper("focusing the field", FOCUS_JS, &args).await?;
    check_status(&r, Some(target))?;
    if text.is_empty() {
        if opts.clear {
            press_key(tab, "Backspace", 0).await?;
        }
    } else if opts.slowly {
        for c in text.chars() {
            let name = if c == '\n' { "Enter".to_owned() } else { c.to_string() };
            if chromiumoxide::keys::get_key_definition(&name).is_some() {
                press_key(tab, &name, 0).await?;
            } else {
                tab.exec("typing", InsertTextParams::new(c.to_string())).await?;
            }
        }
    } else {
        tab.exec("typing", InsertTextParams::new(text)).await?;
    }
    let value = tab.helper("reading the field", VALUE_JS, &target.args).await?;
    let mut settled = Settled::Stayed;
    if opts.submit {
        let watch = NavWatch::start(&s.active, cdp).await?;
        press_key(tab, "Enter", 0).await?;
        settled = watch.settle(deadline).await?;
    }
    let mut out = Out::new();
    out.insert("typed".into(), json!(text.chars().count()));
    out.insert("into".into(), json!(target.label));
    out.insert("value".into(), value);
    if opts.submit {
        out.insert("submitted".into(), json!(true));
    }
    describe_page(s, cx, &mut out, settled).await?;
    Ok(out)
}

async fn press(
    s: &mut Session,
    cx: &Ctx<'_>,
    target: Option<&Target>,
    key: &str,
    limit: Duration,
) -> BrowserResult<Out> {
    let deadline = Instant::now() + limit;
    let cdp = cx.cfg.cdp_timeout;
    let (name, modifiers) = parse_key(key)?;
    if chromiumoxide::keys::get_key_definition(&name).is_none() {
        return Err(unknown_key(&name));
    }
    if let Some(t) = target {
        actionable(s, cx, t, false, true, deadline, limit).await?;
        let js = "(find, a) => { const el = find(a).el; if (!el) return {status: 'missing'}; el.focus(); return {status: 'ok'}; }";
        let r = s.tab(cdp).helper("focusing the element", js, &t.args).await?;
        check_status(&r, Some(t))?;
    }
    let watch = NavWatch::start(&s.active, cdp).await?;
    press_key(s.tab(cdp), &name, modifiers).await?;
    let settled = watch.settle(deadline).await?;
    let mut out = Out::new();
    out.insert("pressed".into(), json!(key));
    describe_page(s, cx, &mut out, settled).await?;
    Ok(out)
}

async fn select(
    s: &mut Session,
    cx: &Ctx<'_>,
    target: &Target,
    values: &[String],
    limit: Duration,
) -> BrowserResult<Out> {
    if values.is_empty() {
        return Err(BrowserError::InvalidInput("give at least one value to select".into()));
    }
    let deadline = Instant::now() + limit;
    actionable(s, cx, target, false, true, deadline, limit).await?;
    let mut args = target.args.clone();
    args["values"] = json!(values);
    let r = s.tab(cx.cfg.cdp_timeout).helper("selecting options", SELECT_JS, &args).await?;
    check_status(&r, Some(target))?;
    let mut out = Out::new();
    out.insert("selected".into(), r.get("selected").cloned().unwrap_or(Value::Null));
    describe_page(s, cx, &mut out, Settled::Stayed).await?;
    Ok(out)
}

// ----- reading the page -----

/// Width and height of a PNG, from its header.
pub(crate) fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

async fn screenshot(
    s: &mut Session,
    cx: &Ctx<'_>,
    full_page: bool,
    path: Option<&str>,
    return_data: bool,
) -> BrowserResult<Out> {
    let tab = s.tab(cx.cfg.cdp_timeout);
    let mut params = CaptureScreenshotParams {
        format: Some(CaptureScreenshotFormat::Png),
        optimize_for_speed: Some(true),
        ..CaptureScreenshotParams::default()
    };
    let mut cut = false;
    if full_page {
        let m = tab.exec("measuring the page", GetLayoutMetricsParams::default()).await?;
        let width = m.css_content_size.width.max(1.0).ceil();
        let mut height = m.css_content_size.height.max(1.0).ceil();
        if height > MAX_FULL_PAGE_HEIGHT {
            height = MAX_FULL_PAGE_HEIGHT;
            cut = true;
        }
        params.capture_beyond_viewport = Some(true);
        params.clip = Some(Viewport { x: 0.0, y: 0.0, width, height, scale: 1.0 });
    }
    let shot = tab.exec("taking a screenshot", params).await?;
    let data: &str = shot.data.as_ref();
    let png = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| BrowserError::Protocol {
        what: "taking a screenshot".into(),
        message: format!("bad image data: {e}"),
    })?;
    let (width, height) = png_size(&png).unwrap_or((0, 0));
    let mut out = Out::new();
    out.insert("format".into(), json!("png"));
    out.insert("width".into(), json!(width));
    out.insert("height".into(), json!(height));
    out.insert("bytes".into(), json!(png.len()));
    if cut {
        out.insert(
            "note".into(),
            json!(format!("the page is taller than {MAX_FULL_PAGE_HEIGHT} px; the image shows its top")),
        );
    }
    if let Some(p) = path {
        save(p, &png).await?;
        out.insert("saved_to".into(), json!(p));
    }
    if return_data {
        if data.len() > cx.cfg.max_screenshot_bytes {
            return Err(BrowserError::InvalidInput(format!(
                "the screenshot is {} bytes of base64, over the limit of {} (max_screenshot_bytes): save it to a \
                 file with `path` and `return_data: false`, or take a smaller one (full_page: false)",
                data.len(),
                cx.cfg.max_screenshot_bytes
            )));
        }
        out.insert("data_base64".into(), json!(data));
    }
    Ok(out)
}

/// Writes a screenshot inside the sandbox, making its directory. The host resolved `path` (absolute).
async fn save(path: &str, png: &[u8]) -> BrowserResult<()> {
    let fail = |e: std::io::Error| BrowserError::Page(format!("saving the screenshot to {path} failed: {e}"));
    if let Some(dir) = std::path::Path::new(path).parent() {
        tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    }
    tokio::fs::write(path, png).await.map_err(fail)
}

/// Removes the snapshot's ref attributes from HTML.
fn strip_refs(html: &str) -> String {
    const ATTR: &str = " data-agentbox-ref=\"";
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find(ATTR) {
        out.push_str(&rest[..i]);
        let after = &rest[i + ATTR.len()..];
        match after.find('"') {
            Some(j) => rest = &after[j + 1..],
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Trailing spaces removed and runs of blank lines folded into one.
fn tidy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_owned()
}

/// The part of `text` from byte `offset` (moved to a character boundary), at most `max` bytes.
fn window(text: &str, offset: usize, max: usize) -> (usize, &str, Option<usize>) {
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut end = (start + max).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let next = (end < text.len()).then_some(end);
    (start, &text[start..end], next)
}

async fn extract(
    s: &mut Session,
    cx: &Ctx<'_>,
    target: Option<&Target>,
    format: ExtractFormat,
    offset: usize,
    max: usize,
) -> BrowserResult<Out> {
    let mut args = target.map_or_else(|| json!({}), |t| t.args.clone());
    args["format"] = json!(if format == ExtractFormat::Html { "html" } else { "text" });
    let tab = s.tab(cx.cfg.cdp_timeout);
    let r = tab.helper("extracting content", EXTRACT_JS, &args).await?;
    check_status(&r, target)?;
    let raw = r.get("content").and_then(Value::as_str).unwrap_or_default();
    let content = if format == ExtractFormat::Html { strip_refs(raw) } else { tidy_text(raw) };
    let (start, part, next) = window(&content, offset, max);
    let mut text = part.to_owned();
    if let Some(n) = next {
        let cut = (content.len() - n) as u64;
        text.push_str(truncation_mark(cut, None).trim_end());
        text.push_str(&format!(" (pass offset={n} to read on)"));
    }
    let (url, title) = tab.location().await?;
    let mut out = Out::new();
    out.insert("url".into(), json!(url));
    out.insert("title".into(), json!(title));
    out.insert("format".into(), json!(if format == ExtractFormat::Html { "html" } else { "text" }));
    out.insert("content".into(), json!(text));
    out.insert("offset".into(), json!(start));
    out.insert("total_bytes".into(), json!(content.len()));
    out.insert("truncated".into(), json!(next.is_some()));
    if let Some(n) = next {
        out.insert("next_offset".into(), json!(n));
    }
    if let Some(m) = r.get("matches").filter(|m| m.as_u64().is_some_and(|n| n > 1)) {
        out.insert("matches".into(), m.clone());
    }
    Ok(out)
}

async fn evaluate(s: &mut Session, cx: &Ctx<'_>, expression: &str, max: usize, limit: Duration) -> BrowserResult<Out> {
    if expression.trim().is_empty() {
        return Err(BrowserError::InvalidInput("the expression is empty".into()));
    }
    const GROUP: &str = "agentbox-evaluate";
    let tab = Tab { page: &s.active, limit: limit + Duration::from_secs(2) };
    #[allow(clippy::cast_precision_loss, reason = "a time limit in milliseconds is far below 2^52")]
    let ms = limit.as_millis() as f64;
    let params = EvaluateParams {
        expression: expression.to_owned(),
        object_group: Some(GROUP.into()),
        return_by_value: Some(false),
        await_promise: Some(true),
        user_gesture: Some(true),
        repl_mode: Some(true),
        timeout: Some(TimeDelta::new(ms)),
        ..EvaluateParams::new("")
    };
    let result = async {
        let r = tab.exec("evaluating the expression", params).await?;
        if let Some(ex) = r.exception_details {
            return Err(BrowserError::Page(format!("the expression threw: {}", describe_exception(&ex))));
        }
        let obj = r.result;
        if obj.r#type == RemoteObjectType::Undefined {
            return Ok(("undefined".to_owned(), "null".to_owned()));
        }
        let Some(object_id) = obj.object_id else {
            let text = match (&obj.value, &obj.unserializable_value) {
                (Some(v), _) => v.to_string(),
                (None, Some(u)) => Value::String(u.as_ref().to_owned()).to_string(),
                (None, None) => "null".to_owned(),
            };
            let kind =
                serde_json::to_value(&obj.r#type).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            return Ok((kind, text));
        };
        let call = CallFunctionOnParams {
            object_id: Some(object_id),
            return_by_value: Some(true),
            await_promise: Some(true),
            user_gesture: Some(true),
            object_group: Some(GROUP.into()),
            ..CallFunctionOnParams::new(SERIALIZE_JS)
        };
        let r = tab.exec("reading the result", call).await?;
        if let Some(ex) = r.exception_details {
            return Err(BrowserError::Page(format!("the expression threw: {}", describe_exception(&ex))));
        }
        let v = r.result.value.unwrap_or(Value::Null);
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("object").to_owned();
        let json = v.get("json").and_then(Value::as_str).unwrap_or("null").to_owned();
        Ok((kind, json))
    }
    .await;
    let _ = Tab { page: &s.active, limit: cx.cfg.cdp_timeout }
        .exec("releasing evaluation results", ReleaseObjectGroupParams::new(GROUP))
        .await;
    let (kind, json_text) = result?;
    let mut out = Out::new();
    out.insert("type".into(), json!(kind));
    if json_text.len() <= max {
        let value: Value = serde_json::from_str(&json_text).unwrap_or(Value::String(json_text));
        out.insert("result".into(), value);
    } else {
        let (_, part, next) = window(&json_text, 0, max);
        let cut = next.map_or(0, |n| (json_text.len() - n) as u64);
        out.insert("result_text".into(), json!(format!("{part}{}", truncation_mark(cut, None).trim_end())));
        out.insert("truncated".into(), json!(true));
        out.insert("total_bytes".into(), json!(json_text.len()));
    }
    Ok(out)
}

async fn snapshot(
    s: &mut Session,
    cx: &Ctx<'_>,
    selector: Option<&str>,
    interactive_only: bool,
    offset: usize,
    limit: usize,
) -> BrowserResult<Out> {
    if selector.is_some_and(|sel| sel.trim().is_empty()) {
        return Err(BrowserError::InvalidInput("the selector is empty".into()));
    }
    let args = json!({"selector": selector, "interactiveOnly": interactive_only, "offset": offset, "limit": limit});
    let tab = s.tab(cx.cfg.cdp_timeout);
    let r = tab.eval("taking a snapshot", format!("({SNAPSHOT_JS})({args})")).await?;
    match r.get("error").and_then(Value::as_str) {
        Some("bad_selector") => {
            return Err(BrowserError::InvalidInput(format!(
                "selector {:?} is not a valid CSS selector: {}",
                selector.unwrap_or_default(),
                r.get("message").and_then(Value::as_str).unwrap_or_default()
            )));
        }
        Some(_) => {
            return Err(BrowserError::NotFound(format!(
                "no element matches selector {:?}",
                selector.unwrap_or_default()
            )));
        }
        None => {}
    }
    let lines: Vec<&str> = r
        .get("lines")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let total = r.get("total").and_then(Value::as_u64).unwrap_or(0);
    let start = r.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let next = r.get("next_offset").and_then(Value::as_u64);
    let (url, title) = tab.location().await?;
    let mut out = Out::new();
    out.insert("url".into(), json!(url));
    out.insert("title".into(), json!(title));
    out.insert("snapshot".into(), json!(lines.join("\n")));
    out.insert("lines".into(), json!({"offset": start, "count": lines.len(), "total": total}));
    out.insert("truncated".into(), json!(next.is_some()));
    if let Some(n) = next {
        out.insert("next_offset".into(), json!(n));
        out.insert(
            "note".into(),
            json!(format!(
                "showing lines {start} to {} of {total}; call snapshot with offset={n} for more, or narrow it with \
                 selector or interactive_only",
                start + lines.len() as u64
            )),
        );
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn wait_until(
    s: &Session,
    cx: &Ctx<'_>,
    target: Option<&Target>,
    state: Option<ElementState>,
    text: Option<String>,
    text_gone: Option<String>,
    deadline: Instant,
    limit: Duration,
) -> BrowserResult<()> {
    let mut args = target.map_or_else(|| json!({}), |t| t.args.clone());
    args["state"] = json!(state.unwrap_or_default().as_str());
    args["text"] = json!(text);
    args["text_gone"] = json!(text_gone);
    loop {
        let r = match s.tab(cx.cfg.cdp_timeout).helper("waiting", WAIT_JS, &args).await {
            Ok(r) => r,
            // The page may be between documents; check again.
            Err(BrowserError::Page(_) | BrowserError::Protocol { .. }) => json!({}),
            Err(e) => return Err(e),
        };
        if r.get("error").and_then(Value::as_str) == Some("bad_selector") {
            return Err(BrowserError::InvalidInput(format!(
                "{} is not a valid CSS selector: {}",
                target.map(|t| t.label.clone()).unwrap_or_default(),
                r.get("message").and_then(Value::as_str).unwrap_or_default()
            )));
        }
        let mut pending = Vec::new();
        if target.is_some() && r.get("selector") != Some(&json!(true)) {
            let t = target.map(|t| t.label.clone()).unwrap_or_default();
            pending.push(format!("{t} to be {}", state.unwrap_or_default().as_str()));
        }
        if let Some(t) = &text {
            if r.get("text") != Some(&json!(true)) {
                pending.push(format!("text {t:?} to appear"));
            }
        }
        if let Some(t) = &text_gone {
            if r.get("text_gone") != Some(&json!(true)) {
                pending.push(format!("text {t:?} to disappear"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() + POLL > deadline {
            return Err(BrowserError::Timeout(format!(
                "waited {} ms for {}, in vain",
                limit.as_millis(),
                pending.join(" and ")
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_for(
    s: &mut Session,
    cx: &Ctx<'_>,
    target: Option<&Target>,
    state: Option<ElementState>,
    text: Option<String>,
    text_gone: Option<String>,
    limit: Duration,
) -> BrowserResult<Out> {
    if target.is_none() && text.is_none() && text_gone.is_none() {
        return Err(BrowserError::InvalidInput(
            "give something to wait for: selector or ref, text, or text_gone".into(),
        ));
    }
    if target.is_none() && state.is_some() {
        return Err(BrowserError::InvalidInput("`state` goes with a selector or a ref".into()));
    }
    let t0 = Instant::now();
    wait_until(s, cx, target, state, text, text_gone, t0 + limit, limit).await?;
    let mut out = Out::new();
    out.insert("waited_ms".into(), json!(u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)));
    describe_page(s, cx, &mut out, Settled::Stayed).await?;
    Ok(out)
}

async fn set_viewport(
    s: &mut Session,
    cx: &Ctx<'_>,
    width: u32,
    height: u32,
    scale: f64,
    mobile: bool,
) -> BrowserResult<Out> {
    if !(64..=8192).contains(&width) || !(64..=8192).contains(&height) {
        return Err(BrowserError::InvalidInput(format!(
            "width and height must be between 64 and 8192, got {width}x{height}"
        )));
    }
    if !(0.25..=4.0).contains(&scale) {
        return Err(BrowserError::InvalidInput(format!("device_scale_factor must be between 0.25 and 4, got {scale}")));
    }
    s.viewport = ViewportSpec { width, height, scale, mobile };
    let params = SetDeviceMetricsOverrideParams::new(i64::from(width), i64::from(height), scale, mobile);
    s.tab(cx.cfg.cdp_timeout).exec("setting the viewport", params).await?;
    let mut out = Out::new();
    out.insert("width".into(), json!(width));
    out.insert("height".into(), json!(height));
    out.insert("device_scale_factor".into(), json!(scale));
    out.insert("mobile".into(), json!(mobile));
    Ok(out)
}

async fn tab_list(s: &mut Session, cx: &Ctx<'_>) -> BrowserResult<Value> {
    let targets = s.sync_tabs(cx.cfg.cdp_timeout).await?;
    let active = s.active.target_id().clone();
    Ok(Value::Array(
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"index": i, "id": t.target_id.as_ref(), "url": t.url, "title": t.title, "active": t.target_id == active})
            })
            .collect(),
    ))
}

fn pick_tab(s: &Session, index: Option<usize>, id: Option<&str>) -> BrowserResult<Option<TargetId>> {
    match (index, id) {
        (Some(_), Some(_)) => Err(BrowserError::InvalidInput("give either `index` or `id`, not both".into())),
        (Some(i), None) => s.tabs.get(i).cloned().map(Some).ok_or_else(|| {
            BrowserError::NotFound(format!("there is no tab {i}; there are {} (list them with op=list)", s.tabs.len()))
        }),
        (None, Some(id)) => {
            s.tabs.iter().find(|t| t.as_ref() == id).cloned().map(Some).ok_or_else(|| {
                BrowserError::NotFound(format!("there is no tab with id {id:?} (list them with op=list)"))
            })
        }
        (None, None) => Ok(None),
    }
}

async fn tabs(
    s: &mut Session,
    cx: &Ctx<'_>,
    op: TabOp,
    url: Option<String>,
    index: Option<usize>,
    id: Option<String>,
) -> BrowserResult<Out> {
    let cdp = cx.cfg.cdp_timeout;
    if op != TabOp::New && url.is_some() {
        return Err(BrowserError::InvalidInput("`url` goes with op=new".into()));
    }
    if matches!(op, TabOp::List | TabOp::New) && (index.is_some() || id.is_some()) {
        return Err(BrowserError::InvalidInput("`index` and `id` go with op=switch or op=close".into()));
    }
    let mut out = Out::new();
    match op {
        TabOp::List => {}
        TabOp::New => {
            let url = url.map(|u| normalize_url(&u)).transpose()?;
            let page = within(cdp, "opening a tab", s.browser.new_page("about:blank")).await?;
            s.tabs.push(page.target_id().clone());
            s.active = page;
            s.prepare_tab(cdp).await?;
            if let Some(url) = url {
                let nav = navigate(s, cx, Start::Url(url), None, None, cx.cfg.navigation_timeout).await?;
                out.extend(nav);
            }
        }
        TabOp::Switch => {
            let Some(target) = pick_tab(s, index, id.as_deref())? else {
                return Err(BrowserError::InvalidInput("give the tab to switch to: `index` or `id`".into()));
            };
            s.switch_to(target, cdp).await?;
        }
        TabOp::Close => {
            let target = pick_tab(s, index, id.as_deref())?.unwrap_or_else(|| s.active.target_id().clone());
            within(cdp, "closing a tab", s.browser.execute(CloseTargetParams::new(target.clone()))).await?;
            // Target.closeTarget returns before the tab is gone; wait for it to leave the list.
            let deadline = Instant::now() + cdp;
            while s.page_targets(cdp).await?.iter().any(|t| t.target_id == target) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out.insert("closed".into(), json!(target.as_ref()));
        }
    }
    let list = tab_list(s, cx).await?;
    let active = list.as_array().and_then(|a| a.iter().position(|t| t["active"] == json!(true)));
    out.insert("tabs".into(), list);
    out.insert("active".into(), json!(active));
    Ok(out)
}

async fn downloads(s: &mut Session, wait: bool, limit: Duration) -> BrowserResult<Out> {
    let deadline = Instant::now() + limit;
    loop {
        let pending = {
            let inbox = s.inbox.lock_unpoisoned();
            inbox.downloads.iter().filter(|d| d.state == "in_progress").map(|d| d.path.clone()).collect::<Vec<_>>()
        };
        if !wait || pending.is_empty() {
            break;
        }
        if Instant::now() + POLL > deadline {
            return Err(BrowserError::Timeout(format!(
                "downloads still in progress after {} ms: {}",
                limit.as_millis(),
                pending.join(", ")
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let mut inbox = s.inbox.lock_unpoisoned();
    inbox.reported = inbox.downloads.len();
    let mut out = Out::new();
    out.insert("downloads".into(), json!(inbox.downloads));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_completed_or_refused() {
        assert_eq!(normalize_url("127.0.0.1:8000/a").ok().as_deref(), Some("http://127.0.0.1:8000/a"));
        assert_eq!(normalize_url("localhost:8000").ok().as_deref(), Some("http://localhost:8000"));
        assert_eq!(normalize_url("example.com").ok().as_deref(), Some("http://example.com"));
        assert_eq!(normalize_url("/home/user/a.html").ok().as_deref(), Some("file:///home/user/a.html"));
        assert_eq!(normalize_url("data:text/html,<p>x</p>").ok().as_deref(), Some("data:text/html,<p>x</p>"));
        assert!(normalize_url("javascript:alert(1)").is_err());
        assert!(normalize_url("chrome://settings").is_err());
        assert!(normalize_url("  ").is_err());
    }

    #[test]
    fn keys_parse_with_modifiers() {
        assert_eq!(parse_key("Enter").ok(), Some(("Enter".to_owned(), 0)));
        assert_eq!(parse_key("Control+a").ok(), Some(("a".to_owned(), 2)));
        assert_eq!(parse_key("Shift+Control+ArrowLeft").ok(), Some(("ArrowLeft".to_owned(), 10)));
        assert_eq!(parse_key("+").ok(), Some(("+".to_owned(), 0)));
        assert_eq!(parse_key("Control++").ok(), Some(("+".to_owned(), 2)));
        assert!(parse_key("Hyper+a").is_err());
    }

    #[test]
    fn refs_are_stripped_from_html_and_text_is_tidied() {
        assert_eq!(
            strip_refs(r#"<a data-agentbox-ref="e1" href="/">x</a><b data-agentbox-ref="e22">"#),
            r#"<a href="/">x</a><b>"#
        );
        assert_eq!(tidy_text("a  \n\n\n\nb\n"), "a\n\nb");
    }

    #[test]
    fn windows_respect_character_boundaries() {
        let text = "héllo wörld";
        let (start, part, next) = window(text, 2, 4);
        assert_eq!(start, 3);
        assert_eq!(part, "llo ");
        assert_eq!(next, Some(7));
        assert_eq!(window("abc", 0, 10), (0, "abc", None));
    }

    #[test]
    fn png_sizes_come_from_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((640, 480)));
        assert_eq!(png_size(b"GIF89a"), None);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:8000/x"));
        assert!(is_loopback("http://localhost/"));
        assert!(!is_loopback("https://example.com/"));
    }
}
