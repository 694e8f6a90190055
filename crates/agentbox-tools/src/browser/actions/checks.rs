//! Checks of an action's input (limits, sizes, URLs, targets) and of the answers CDP gives.

#[allow(clippy::wildcard_imports)]
use super::*;

/// An action's time limit: `timeout_ms`, else `default`, lowered to the configuration's
/// [`max_timeout`](crate::browser::BrowserConfig::max_timeout).
pub(super) fn limit(ms: Option<u64>, default: Duration, cfg: &BrowserConfig) -> BrowserResult<Duration> {
    let most = cfg.max_timeout();
    match ms {
        None => Ok(default.min(most)),
        Some(0) => Err(BrowserError::InvalidInput("timeout_ms must be at least 1".into())),
        Some(ms) if ms > MAX_TIMEOUT_MS => Err(BrowserError::InvalidInput(format!(
            "timeout_ms must be at most {MAX_TIMEOUT_MS} (5 minutes), got {ms}"
        ))),
        Some(ms) => Ok(Duration::from_millis(ms).min(most)),
    }
}

pub(super) fn bytes(v: Option<usize>, default: usize, (min, max): (usize, usize), name: &str) -> BrowserResult<usize> {
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
    pub(super) args: Value,
    pub(super) label: String,
    pub(super) is_ref: bool,
}

impl Target {
    pub(super) fn required(reference: Option<String>, selector: Option<String>) -> BrowserResult<Self> {
        Self::optional(reference, selector)?.ok_or_else(|| {
            BrowserError::InvalidInput(
                "give the element: `ref` (from a snapshot, such as e12) or a CSS `selector`".into(),
            )
        })
    }

    pub(super) fn optional(reference: Option<String>, selector: Option<String>) -> BrowserResult<Option<Self>> {
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

    pub(super) fn missing(&self) -> BrowserError {
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

pub(super) fn as_object(v: Value) -> Out {
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
pub(super) fn check_status(r: &Value, target: Option<&Target>) -> BrowserResult<()> {
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
