//! Reading the page: screenshots, text and HTML extraction, evaluation, and the snapshot with its refs.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Width and height of a PNG, from its header.
pub(crate) fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

pub(super) async fn screenshot(
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
pub(super) async fn save(path: &str, png: &[u8]) -> BrowserResult<()> {
    let fail = |e: std::io::Error| BrowserError::Page(format!("saving the screenshot to {path} failed: {e}"));
    if let Some(dir) = std::path::Path::new(path).parent() {
        tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    }
    tokio::fs::write(path, png).await.map_err(fail)
}

/// Removes the snapshot's ref attributes from HTML.
pub(super) fn strip_refs(html: &str) -> String {
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
pub(super) fn tidy_text(text: &str) -> String {
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
pub(super) fn window(text: &str, offset: usize, max: usize) -> (usize, &str, Option<usize>) {
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

pub(super) async fn extract(
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

pub(super) async fn evaluate(
    s: &mut Session,
    cx: &Ctx<'_>,
    expression: &str,
    max: usize,
    limit: Duration,
) -> BrowserResult<Out> {
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

pub(super) async fn snapshot(
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
