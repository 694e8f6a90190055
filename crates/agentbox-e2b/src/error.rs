//! Errors of this crate and how E2B's answers become [`agentbox_core::Error`]s.

use std::time::Duration;

use agentbox_core::Error;

use crate::config::ConfigError;
use crate::connect::{self, ProtocolError};
use crate::transport::TransportError;
use crate::wire::ApiError;

/// Everything that can go wrong in this crate before an answer is mapped onto [`agentbox_core::Error`].
#[derive(Debug, thiserror::Error)]
pub enum E2bError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// E2B broke the wire format.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The HTTP exchange failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl From<E2bError> for Error {
    fn from(e: E2bError) -> Self {
        match e {
            E2bError::Config(c) => Error::InvalidRequest(format!("E2B backend configuration: {c}")),
            E2bError::Protocol(p) => Error::backend(format!("E2B protocol error: {p}")),
            E2bError::Transport(t) => t.into(),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        E2bError::from(e).into()
    }
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout { .. } => Error::Timeout(e.to_string()),
            TransportError::Connect { .. } | TransportError::Other { .. } => Error::backend(e.to_string()),
        }
    }
}

/// Which E2B service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The control plane (`api.{domain}`).
    Control,
    /// A port of a sandbox behind E2B's proxy (envd or the code interpreter).
    Sandbox,
}

/// What a failed call was doing, for the error message.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Which service.
    pub plane: Plane,
    /// The action in the infinitive: "create a sandbox", "read /home/user/a.txt".
    pub action: &'a str,
    /// What a 404 / `not_found` means is missing: "sandbox i123", "/home/user/a.txt".
    pub subject: &'a str,
    /// The sandbox, for sandbox-plane calls.
    pub sandbox: Option<&'a str>,
}

fn short(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}...", text.chars().take(300).collect::<String>())
    } else {
        text.to_owned()
    }
}

fn message_of(body: &[u8]) -> String {
    if let Some(c) = connect::parse_error_body(body) {
        return c.message;
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) if !e.message.is_empty() => e.message,
        _ => short(body),
    }
}

/// The error for a non-success HTTP status.
#[must_use]
pub fn http_error(call: Call<'_>, status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    if call.plane == Plane::Sandbox {
        if let Some(c) = connect::parse_error_body(body) {
            return connect_error(call, &c.code, &c.message);
        }
    }
    let msg = message_of(body);
    let action = call.action;
    match (call.plane, status) {
        (Plane::Sandbox, 502) if msg.contains("port") && msg.contains("not open") => Error::Unsupported(format!(
            "cannot {action}: E2B's proxy says \"{msg}\": nothing listens on that port in sandbox {}; for run_code this \
             means the template has no code interpreter, so leave it out of E2B_CODE_INTERPRETER_TEMPLATES",
            call.sandbox.unwrap_or("?")
        )),
        (Plane::Sandbox, 502) => gone(call, &msg),
        (_, 400 | 422) => Error::InvalidRequest(format!("E2B refused to {action}: {msg}")),
        (Plane::Control, 401) => Error::PermissionDenied(format!(
            "E2B rejected the API key while trying to {action} ({msg}): check that E2B_API_KEY holds a current key of \
             your team and that E2B_DOMAIN / E2B_API_URL point at the E2B that issued it"
        )),
        (Plane::Sandbox, 401) => Error::PermissionDenied(format!(
            "the sandbox refused to {action} ({msg}): its envd access token is missing or wrong, or the user does not \
             exist in the template; check E2B_SECURE and E2B_USER"
        )),
        (_, 403) => Error::PermissionDenied(format!(
            "E2B refused to {action} ({msg}): the API key's team has no access to this (template visibility, tier, \
             or a feature it has not enabled)"
        )),
        (_, 404) => Error::NotFound(call.subject.to_owned()),
        (_, 409) => Error::Conflict(format!("cannot {action}: {msg}")),
        (_, 429) => Error::LimitExceeded(format!(
            "E2B's rate or concurrency limit was hit while trying to {action} ({msg}){}: wait, or run fewer sandboxes \
             at once",
            retry_after.map(|d| format!("; it asks to retry after {} s", d.as_secs())).unwrap_or_default()
        )),
        (_, 507) => Error::LimitExceeded(format!("cannot {action}: the sandbox's disk is full ({msg})")),
        _ => Error::backend(format!("E2B failed to {action}: HTTP {status}: {msg}")),
    }
}

fn gone(call: Call<'_>, msg: &str) -> Error {
    Error::NotFound(format!(
        "sandbox {} (E2B's proxy answered 502 \"{msg}\": the sandbox is gone, usually because its timeout passed or \
         it was killed; create a new one)",
        call.sandbox.unwrap_or("?")
    ))
}

/// The error for a Connect error code (unary error body or end-of-stream error).
#[must_use]
pub fn connect_error(call: Call<'_>, code: &str, message: &str) -> Error {
    let action = call.action;
    match code {
        "not_found" => Error::NotFound(call.subject.to_owned()),
        "invalid_argument" | "failed_precondition" | "out_of_range" => {
            Error::InvalidRequest(format!("cannot {action}: {message}"))
        }
        "already_exists" | "aborted" => Error::Conflict(format!("cannot {action}: {message}")),
        "permission_denied" => Error::PermissionDenied(format!("cannot {action}: {message}")),
        "unauthenticated" => Error::PermissionDenied(format!(
            "the sandbox refused to {action} ({message}): its envd access token is missing or wrong; check E2B_SECURE"
        )),
        "resource_exhausted" => Error::LimitExceeded(format!("cannot {action}: {message}")),
        "deadline_exceeded" => Error::Timeout(format!("{action}: {message}")),
        "unimplemented" => Error::Unsupported(format!(
            "the sandbox's envd cannot {action} ({message}); rebuild the template on a current E2B base image"
        )),
        _ => Error::backend(format!("the sandbox failed to {action}: {code}: {message}")),
    }
}

/// Reads `Retry-After` in seconds (the form E2B sends).
#[must_use]
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: Call<'static> =
        Call { plane: Plane::Control, action: "create a sandbox", subject: "E2B template base", sandbox: None };
    const ENVD: Call<'static> =
        Call { plane: Plane::Sandbox, action: "read /home/user/a", subject: "/home/user/a", sandbox: Some("i1") };

    #[test]
    fn control_plane_statuses() {
        let body = br#"{"code":401,"message":"Invalid API key"}"#;
        let e = http_error(CONTROL, 401, body, None);
        assert!(
            matches!(&e, Error::PermissionDenied(m) if m.contains("E2B_API_KEY") && m.contains("Invalid API key")),
            "{e}"
        );
        assert!(matches!(http_error(CONTROL, 403, b"{}", None), Error::PermissionDenied(_)));
        assert!(matches!(http_error(CONTROL, 404, b"{}", None), Error::NotFound(s) if s == "E2B template base"));
        let e = http_error(CONTROL, 429, br#"{"code":429,"message":"rate limit"}"#, Some(Duration::from_secs(7)));
        assert!(matches!(&e, Error::LimitExceeded(m) if m.contains("7 s") && m.contains("rate limit")), "{e}");
        assert!(matches!(http_error(CONTROL, 409, b"{}", None), Error::Conflict(_)));
        assert!(
            matches!(http_error(CONTROL, 400, br#"{"message":"bad timeout"}"#, None), Error::InvalidRequest(m) if m.contains("bad timeout"))
        );
        assert!(
            matches!(http_error(CONTROL, 503, b"upstream down", None), Error::Backend { message: m, .. } if m.contains("503") && m.contains("upstream down"))
        );
    }

    #[test]
    fn sandbox_plane_statuses_and_connect_codes() {
        let e = http_error(ENVD, 502, br#"{"code":502,"message":"The sandbox was not found","sandboxId":"i1"}"#, None);
        assert!(matches!(&e, Error::NotFound(m) if m.contains("sandbox i1") && m.contains("gone")), "{e}");
        let e = http_error(
            ENVD,
            502,
            br#"{"code":502,"message":"The sandbox is running but port is not open","sandboxId":"i1"}"#,
            None,
        );
        assert!(matches!(&e, Error::Unsupported(m) if m.contains("E2B_CODE_INTERPRETER_TEMPLATES")), "{e}");
        assert!(
            matches!(http_error(ENVD, 404, br#"{"code":404,"message":"path not found"}"#, None), Error::NotFound(s) if s == "/home/user/a")
        );
        assert!(matches!(http_error(ENVD, 401, b"{}", None), Error::PermissionDenied(m) if m.contains("access token")));
        assert!(matches!(http_error(ENVD, 507, b"{}", None), Error::LimitExceeded(m) if m.contains("disk is full")));
        let e = http_error(ENVD, 400, br#"{"code":"invalid_argument","message":"path is a directory"}"#, None);
        assert!(matches!(&e, Error::InvalidRequest(m) if m.contains("path is a directory")), "{e}");
        assert!(matches!(connect_error(ENVD, "not_found", "x"), Error::NotFound(_)));
        assert!(matches!(connect_error(ENVD, "unimplemented", "x"), Error::Unsupported(m) if m.contains("rebuild")));
        assert!(matches!(connect_error(ENVD, "unauthenticated", "x"), Error::PermissionDenied(_)));
        assert!(matches!(connect_error(ENVD, "resource_exhausted", "x"), Error::LimitExceeded(_)));
        assert!(
            matches!(connect_error(ENVD, "internal", "boom"), Error::Backend { message: m, .. } if m.contains("boom"))
        );
        assert_eq!(retry_after(Some(" 12 ")), Some(Duration::from_secs(12)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
    }
}
