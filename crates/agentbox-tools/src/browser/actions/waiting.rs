//! Waiting for a condition or an element, and the viewport.

#[allow(clippy::wildcard_imports)]
use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn wait_until(
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

pub(super) async fn wait_for(
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

pub(super) async fn set_viewport(
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
