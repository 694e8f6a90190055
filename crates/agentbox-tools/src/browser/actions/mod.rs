//! The browser's actions, each over the active tab of a running [`Session`].

mod checks;
mod elements;
mod navigation;
mod reading;
mod tabs;
mod waiting;

#[allow(clippy::wildcard_imports)]
use checks::*;
#[allow(clippy::wildcard_imports)]
use elements::*;
#[allow(clippy::wildcard_imports)]
use navigation::*;
#[allow(clippy::wildcard_imports)]
use reading::*;
#[allow(clippy::wildcard_imports)]
use tabs::*;
#[allow(clippy::wildcard_imports)]
use waiting::*;

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

use crate::browser::BrowserConfig;
use crate::browser::cdp::{
    ACTIONABLE_JS, EXTRACT_JS, FOCUS_JS, SCROLL_JS, SELECT_JS, SERIALIZE_JS, SNAPSHOT_JS, Tab, VALUE_JS, WAIT_JS,
    describe_exception, gone_message, within,
};
use crate::browser::error::{BrowserError, BrowserResult};
use crate::browser::input::{
    BrowserAction, ElementState, ExtractFormat, MAX_BYTES_RANGE, MAX_TIMEOUT_MS, MouseButton, SNAPSHOT_LIMIT_RANGE,
    TabOp, WaitUntil,
};
use crate::browser::session::{Session, ViewportSpec};
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
            let limit = limit(timeout_ms, cfg.navigation_timeout, cfg)?;
            navigate(s, cx, Start::Url(url), wait, selector, limit).await
        }
        BrowserAction::Back { wait, timeout_ms } => {
            navigate(s, cx, Start::History(-1), wait, None, limit(timeout_ms, cfg.navigation_timeout, cfg)?).await
        }
        BrowserAction::Forward { wait, timeout_ms } => {
            navigate(s, cx, Start::History(1), wait, None, limit(timeout_ms, cfg.navigation_timeout, cfg)?).await
        }
        BrowserAction::Reload { wait, timeout_ms } => {
            navigate(s, cx, Start::Reload, wait, None, limit(timeout_ms, cfg.navigation_timeout, cfg)?).await
        }
        BrowserAction::Click { reference, selector, button, double_click, force, timeout_ms } => {
            let target = Target::required(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout, cfg)?;
            click(s, cx, &target, button.unwrap_or_default(), double_click, force, limit).await
        }
        BrowserAction::Type { reference, selector, text, submit, clear, slowly, timeout_ms } => {
            let target = Target::required(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout, cfg)?;
            let opts = TypeOptions { submit, clear: clear.unwrap_or(true), slowly };
            type_text(s, cx, &target, &text, opts, limit).await
        }
        BrowserAction::Press { key, reference, selector, timeout_ms } => {
            let target = Target::optional(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout, cfg)?;
            press(s, cx, target.as_ref(), &key, limit).await
        }
        BrowserAction::Select { reference, selector, values, timeout_ms } => {
            let target = Target::required(reference, selector)?;
            select(s, cx, &target, &values, limit(timeout_ms, cfg.action_timeout, cfg)?).await
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
            evaluate(s, cx, &expression, max, limit(timeout_ms, cfg.action_timeout, cfg)?).await
        }
        BrowserAction::Snapshot { selector, interactive_only, offset, limit } => {
            let max = bytes(limit, cfg.snapshot_bytes, SNAPSHOT_LIMIT_RANGE, "limit")?;
            snapshot(s, cx, selector.as_deref(), interactive_only, offset.unwrap_or(0), max).await
        }
        BrowserAction::WaitFor { selector, reference, state, text, text_gone, timeout_ms } => {
            let target = Target::optional(reference, selector)?;
            let limit = limit(timeout_ms, cfg.action_timeout, cfg)?;
            wait_for(s, cx, target.as_ref(), state, text, text_gone, limit).await
        }
        BrowserAction::Scroll { reference, selector, dx, dy, to } => {
            let target = Target::optional(reference, selector)?;
            let mut args = target.as_ref().map_or_else(|| json!({}), |t| t.args.clone());
            args["dx"] = json!(dx);
            args["dy"] = json!(dy);
            args["to"] = json!(to.map(|t| if t == crate::browser::input::ScrollTo::Top { "top" } else { "bottom" }));
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
            downloads(s, wait, limit(timeout_ms, cfg.navigation_timeout, cfg)?).await
        }
        BrowserAction::Close {} => Ok(Out::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limits_are_lowered_to_the_configured_most() {
        let cfg = BrowserConfig { max_timeout: Duration::from_secs(20), ..BrowserConfig::default() };
        assert_eq!(limit(Some(300_000), cfg.action_timeout, &cfg).ok(), Some(Duration::from_secs(20)));
        assert_eq!(limit(Some(1500), cfg.action_timeout, &cfg).ok(), Some(Duration::from_millis(1500)));
        let short = BrowserConfig { max_timeout: Duration::from_secs(5), ..BrowserConfig::default() };
        assert_eq!(limit(None, short.navigation_timeout, &short).ok(), Some(Duration::from_secs(5)));
        let wide = BrowserConfig { max_timeout: Duration::from_secs(3600), ..BrowserConfig::default() };
        assert_eq!(wide.max_timeout(), Duration::from_millis(MAX_TIMEOUT_MS));
        assert!(limit(Some(0), cfg.action_timeout, &cfg).is_err());
        assert!(limit(Some(MAX_TIMEOUT_MS + 1), cfg.action_timeout, &cfg).is_err());
    }

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
