//! DevTools calls with a time limit each, and page helpers written in JavaScript.

use std::future::Future;
use std::time::Duration;

use chromiumoxide::Page;
use chromiumoxide::cdp::js_protocol::runtime::{EvaluateParams, ExceptionDetails};
use chromiumoxide::error::CdpError;
use chromiumoxide::types::Command;
use serde_json::Value;

use super::error::{BrowserError, BrowserResult};

/// JavaScript that finds an action's target element by ref or selector.
pub(crate) const FIND_JS: &str = include_str!("js/find.js");
/// JavaScript that checks whether an element can be clicked or typed into.
pub(crate) const ACTIONABLE_JS: &str = include_str!("js/actionable.js");
/// JavaScript that focuses a field before typing.
pub(crate) const FOCUS_JS: &str = include_str!("js/focus.js");
/// JavaScript that reads a field's value.
pub(crate) const VALUE_JS: &str = include_str!("js/value.js");
/// JavaScript that selects options of a <select>.
pub(crate) const SELECT_JS: &str = include_str!("js/select.js");
/// JavaScript that checks the conditions of a wait.
pub(crate) const WAIT_JS: &str = include_str!("js/wait.js");
/// JavaScript that scrolls.
pub(crate) const SCROLL_JS: &str = include_str!("js/scroll.js");
/// JavaScript that extracts text or HTML.
pub(crate) const EXTRACT_JS: &str = include_str!("js/extract.js");
/// JavaScript that serializes an evaluated value.
pub(crate) const SERIALIZE_JS: &str = include_str!("js/serialize.js");
/// JavaScript that builds the accessibility snapshot.
pub(crate) const SNAPSHOT_JS: &str = include_str!("js/snapshot.js");

/// The message of a call that failed because the browser went away.
pub(crate) fn gone_message(what: &str) -> String {
    format!(
        "the connection to the browser closed while {what}: the browser stopped (it crashed, was killed, or ran out \
         of memory). The next browser call starts it again"
    )
}

/// Maps a DevTools error met while doing `what`.
pub(crate) fn map_error(what: &str, err: CdpError) -> BrowserError {
    match err {
        CdpError::Ws(_) | CdpError::ChannelSendError(_) | CdpError::NoResponse | CdpError::Io(_) => {
            BrowserError::Gone(gone_message(what))
        }
        CdpError::Timeout => BrowserError::Timeout(format!("the browser did not answer in time while {what}")),
        CdpError::Chrome(e) => BrowserError::Protocol { what: what.to_owned(), message: e.message },
        CdpError::JavascriptException(d) => {
            BrowserError::Page(format!("a script failed while {what}: {}", describe_exception(&d)))
        }
        other => BrowserError::Protocol { what: what.to_owned(), message: other.to_string() },
    }
}

/// Runs one DevTools call (or a short sequence) with a time limit.
pub(crate) async fn within<T, F>(limit: Duration, what: &str, fut: F) -> BrowserResult<T>
where
    F: Future<Output = chromiumoxide::error::Result<T>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_error(what, e)),
        Err(_) => Err(BrowserError::Timeout(format!(
            "the browser did not answer within {} ms while {what}; the page may be busy (a long-running script) \
             or the browser overloaded",
            limit.as_millis()
        ))),
    }
}

/// The text of a script exception: its description (with the error's name and stack) or its message.
pub(crate) fn describe_exception(d: &ExceptionDetails) -> String {
    let text = d
        .exception
        .as_ref()
        .and_then(|e| e.description.clone().or_else(|| e.value.as_ref().map(ToString::to_string)))
        .unwrap_or_else(|| d.text.clone());
    let first_lines: Vec<&str> = text.lines().take(4).collect();
    first_lines.join("\n")
}

/// A tab with a time limit on each call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tab<'a> {
    /// The page.
    pub page: &'a Page,
    /// Time limit of one call.
    pub limit: Duration,
}

impl Tab<'_> {
    /// Sends a DevTools command to the page.
    pub async fn exec<C: Command>(&self, what: &str, cmd: C) -> BrowserResult<C::Response> {
        Ok(within(self.limit, what, self.page.execute(cmd)).await?.result)
    }

    /// Evaluates an expression and returns its JSON value (promises awaited).
    pub async fn eval(&self, what: &str, expression: String) -> BrowserResult<Value> {
        let params = EvaluateParams {
            expression,
            return_by_value: Some(true),
            await_promise: Some(true),
            user_gesture: Some(true),
            ..EvaluateParams::new("")
        };
        let r = self.exec(what, params).await?;
        if let Some(ex) = r.exception_details {
            return Err(BrowserError::Page(format!("a script failed while {what}: {}", describe_exception(&ex))));
        }
        Ok(r.result.value.unwrap_or(Value::Null))
    }

    /// Calls one of the page helpers (a function of `find` and its arguments).
    pub async fn helper(&self, what: &str, source: &str, args: &Value) -> BrowserResult<Value> {
        let expression = format!("(() => {{ const find = ({FIND_JS}); return ({source})(find, {args}); }})()");
        self.eval(what, expression).await
    }

    /// The page's URL and title.
    pub async fn location(&self) -> BrowserResult<(String, String)> {
        let v = self.eval("reading the page's address", "[location.href, document.title]".into()).await?;
        let s = |i: usize| v.get(i).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok((s(0), s(1)))
    }
}
