//! Element actions: finding an actionable element, then clicking, typing, pressing, hovering, selecting.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Waits until the target can be acted on; returns the point to click.
pub(super) async fn actionable(
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

pub(super) fn mouse(
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

pub(super) async fn click(
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
pub(super) struct TypeOptions {
    pub(super) submit: bool,
    pub(super) clear: bool,
    pub(super) slowly: bool,
}

pub(super) fn key_event(
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

pub(super) fn unknown_key(name: &str) -> BrowserError {
    BrowserError::InvalidInput(format!(
        "unknown key {name:?}: use a key name such as Enter, Tab, Escape, Backspace, Delete, ArrowDown, PageDown, \
         Home, F5, a single character, or a combination such as Control+a"
    ))
}

/// Presses one key (with modifiers: Alt=1, Control=2, Meta=4, Shift=8) and releases it.
pub(super) async fn press_key(tab: Tab<'_>, name: &str, modifiers: i64) -> BrowserResult<()> {
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
pub(super) fn parse_key(combo: &str) -> BrowserResult<(String, i64)> {
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

pub(super) async fn type_text(
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

pub(super) async fn press(
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

pub(super) async fn select(
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
