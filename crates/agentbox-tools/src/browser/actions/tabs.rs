//! Tabs and downloads.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) async fn tab_list(s: &mut Session, cx: &Ctx<'_>) -> BrowserResult<Value> {
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

pub(super) fn pick_tab(s: &Session, index: Option<usize>, id: Option<&str>) -> BrowserResult<Option<TargetId>> {
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

pub(super) async fn tabs(
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

pub(super) async fn downloads(s: &mut Session, wait: bool, limit: Duration) -> BrowserResult<Out> {
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
