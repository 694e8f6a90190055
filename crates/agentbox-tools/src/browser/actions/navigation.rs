//! Navigation: going to a URL, waiting for the page to settle, and describing where it ended.

#[allow(clippy::wildcard_imports)]
use super::*;

/// How a navigation starts.
pub(super) enum Start {
    /// Page.navigate to a URL.
    Url(String),
    /// A step through the tab's history.
    History(i64),
    /// Page.reload.
    Reload,
}

/// What the command that starts a navigation reported.
pub(super) struct Started {
    /// The new document's loader, when the command tells it.
    pub(super) loader: Option<String>,
    /// A navigation within the same document (no load to wait for).
    pub(super) same_document: bool,
}

/// Sends Page.navigate on its own connection to the tab, so that a navigation never queues behind an earlier one
/// that is still loading; returns the new document's loader (none for a same-document navigation).
pub(super) async fn raw_navigate(
    ws_base: &str,
    target: &TargetId,
    url: &str,
    limit: Duration,
) -> BrowserResult<Started> {
    let what = "starting the navigation";
    let endpoint = format!("{ws_base}/devtools/page/{}", target.as_ref());
    let work = async {
        let mut conn = Connection::<CdpJsonEventMessage>::connect(&endpoint)
            .await
            .map_err(|e| crate::browser::cdp::map_error(what, e))?;
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
                Err(e) => return Err(crate::browser::cdp::map_error(what, e)),
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

pub(super) fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(u, _)| u)
}

pub(super) fn is_loopback(url: &str) -> bool {
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

pub(super) fn navigation_error(url: &str, text: &str, cx: &Ctx<'_>) -> BrowserError {
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

pub(super) async fn main_frame(page: &Page, limit: Duration) -> BrowserResult<FrameId> {
    within(limit, "finding the page's main frame", page.mainframe())
        .await?
        .ok_or_else(|| BrowserError::Protocol { what: "finding the page's main frame".into(), message: "none".into() })
}

pub(super) async fn navigate(
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
pub(super) struct NavWatch {
    pub(super) started: EventStream<EventFrameStartedLoading>,
    pub(super) stopped: EventStream<EventFrameStoppedLoading>,
    pub(super) main: FrameId,
}

/// What happened after an input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// No navigation started.
    Stayed,
    /// A navigation started and finished loading.
    Navigated,
    /// A navigation started and was still loading at the deadline.
    StillLoading,
}

impl NavWatch {
    pub(super) async fn start(page: &Page, limit: Duration) -> BrowserResult<Self> {
        let main = main_frame(page, limit).await?;
        let started =
            within(limit, "watching for navigation", page.event_listener::<EventFrameStartedLoading>()).await?;
        let stopped =
            within(limit, "watching for navigation", page.event_listener::<EventFrameStoppedLoading>()).await?;
        Ok(Self { started, stopped, main })
    }

    pub(super) async fn settle(mut self, deadline: Instant) -> BrowserResult<Settled> {
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

pub(super) async fn describe_page(s: &Session, cx: &Ctx<'_>, out: &mut Out, settled: Settled) -> BrowserResult<()> {
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
