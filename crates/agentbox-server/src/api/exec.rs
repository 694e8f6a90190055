//! Execution routes: collected JSON results, or Server-Sent Events as output happens.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use agentbox_core::{CodeRequest, Command, ExecEvent, ExecOutput, ExecRequest, ExecStream, Language, RunId};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ErrorResponses;
use super::extract::{ApiJson, RunIdParam, RunIdPath, seconds};
use super::files::MAX_PATH_LEN;
use crate::AppState;
use crate::error::ApiError;

/// `POST /api/sandboxes/{run_id}/execute/command`. Give exactly one of `command` and `argv`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCommandRequest {
    /// A command line run by bash.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, example = "ls -la", pattern = r"^[^\x00]*$")]
    pub command: Option<String>,
    /// A program and its arguments, run directly.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, min_items = 1)]
    pub argv: Option<Vec<String>>,
    /// Working directory inside the sandbox (the home when absent).
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub env: Option<BTreeMap<String, String>>,
    /// Text written to stdin, which is then closed.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub stdin: Option<String>,
    /// Time limit in seconds (the sandbox's execution timeout when absent).
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, minimum = 0.1, maximum = 86400)]
    pub timeout: Option<f64>,
    /// Who runs it: the sandbox's user when absent, or `root` in a sandbox created with `allow_root_inside`
    /// (422 otherwise).
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, example = "root", pattern = r"^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "env: invalid variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

fn check_cwd(cwd: Option<&String>) -> Result<(), ApiError> {
    if let Some(c) = cwd {
        if c.is_empty() || c.len() > MAX_PATH_LEN || c.contains('\0') {
            return Err(ApiError::bad_request("cwd must be a path of 1 to 4096 characters without NUL"));
        }
    }
    Ok(())
}

impl ExecuteCommandRequest {
    /// The core request.
    ///
    /// # Errors
    /// 400 unless exactly one of `command` and `argv` is given, or for NUL bytes and bad limits.
    pub fn into_exec(self) -> Result<ExecRequest, ApiError> {
        let command = match (self.command, self.argv) {
            (Some(c), None) => Command::Shell(c),
            (None, Some(a)) => Command::Argv(a),
            (Some(_), Some(_)) => return Err(ApiError::bad_request("give either `command` or `argv`, not both")),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give `command` (a shell command line) or `argv` (a program and its arguments)",
                ));
            }
        };
        check_cwd(self.cwd.as_ref())?;
        let env = self.env.unwrap_or_default();
        check_env(&env)?;
        let timeout = self.timeout.map(|t| seconds("timeout", t, 0.1, 86_400.0)).transpose()?;
        let request = ExecRequest {
            command,
            cwd: self.cwd,
            env,
            stdin: self.stdin.map(String::into_bytes),
            timeout,
            user: self.user,
        };
        request.to_argv().map_err(ApiError::from)?;
        Ok(request)
    }
}

/// `POST /api/sandboxes/{run_id}/execute/code`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCodeRequest {
    /// The language.
    pub language: Language,
    /// The source.
    #[schema(example = "print(6 * 7)", pattern = r"^[^\x00]*$")]
    pub code: String,
    /// Working directory inside the sandbox.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub env: Option<BTreeMap<String, String>>,
    /// Time limit in seconds.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, minimum = 0.1, maximum = 86400)]
    pub timeout: Option<f64>,
}

impl ExecuteCodeRequest {
    /// The core request.
    ///
    /// # Errors
    /// 400 for NUL bytes and bad limits.
    pub fn into_code(self) -> Result<CodeRequest, ApiError> {
        if self.code.contains('\0') {
            return Err(ApiError::bad_request("code must not contain NUL bytes"));
        }
        check_cwd(self.cwd.as_ref())?;
        let env = self.env.unwrap_or_default();
        check_env(&env)?;
        let timeout = self.timeout.map(|t| seconds("timeout", t, 0.1, 86_400.0)).transpose()?;
        Ok(CodeRequest { language: self.language, code: self.code, cwd: self.cwd, env, timeout })
    }
}

pub(super) fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream")))
}

/// How long a collected execution may hold the request: its own limit plus the grace.
fn deadline(state: &AppState, run: &RunId, requested: Option<Duration>) -> Result<Duration, ApiError> {
    let own = match requested {
        Some(t) => t,
        None => state.manager.get(run)?.config.execution_timeout,
    };
    Ok(own + state.limits.exec_grace)
}

fn output_cap(state: &AppState, run: &RunId) -> Result<u64, ApiError> {
    Ok(state.manager.get(run)?.config.max_output_bytes)
}

/// Runs a command.
///
/// With `Accept: text/event-stream` the answer is a stream of `stdout` and `stderr` events
/// (`{"data": "..."}`) as output happens, then one `exit` event with the exit status.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/execute/command",
    operation_id = "executeCommand",
    tag = "execution",
    params(RunIdParam),
    request_body = ExecuteCommandRequest,
    responses(
        (status = 200, description = "The execution's outcome, or its events", content(
            (ExecOutput = "application/json"),
            (String = "text/event-stream"),
        )),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn execute_command(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecuteCommandRequest>,
) -> Result<Response, ApiError> {
    let request = body.into_exec()?;
    let timeout = request.timeout;
    respond(&state, &run, &headers, timeout, state.manager.exec(&run, request)).await
}

/// Runs code in python, javascript, typescript or bash.
///
/// Streams events like `executeCommand` with `Accept: text/event-stream`.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/execute/code",
    operation_id = "executeCode",
    tag = "execution",
    params(RunIdParam),
    request_body = ExecuteCodeRequest,
    responses(
        (status = 200, description = "The execution's outcome, or its events", content(
            (ExecOutput = "application/json"),
            (String = "text/event-stream"),
        )),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn execute_code(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecuteCodeRequest>,
) -> Result<Response, ApiError> {
    let request = body.into_code()?;
    let timeout = request.timeout;
    respond(&state, &run, &headers, timeout, state.manager.run_code(&run, request)).await
}

/// Answers an execution: its events as they happen when the client asked for them, otherwise the collected
/// result, bounded by the execution's limit plus the grace.
async fn respond(
    state: &AppState,
    run: &RunId,
    headers: &HeaderMap,
    timeout: Option<Duration>,
    start: impl std::future::Future<Output = agentbox_core::Result<ExecStream>>,
) -> Result<Response, ApiError> {
    let cap = output_cap(state, run)?;
    if wants_events(headers) {
        let stream = start.await.map_err(ApiError::from_operation)?;
        return Ok(events(stream, cap).into_response());
    }
    let limit = deadline(state, run, timeout)?;
    let collected =
        async { Ok::<_, agentbox_core::Error>(start.await?.collect(usize::try_from(cap).unwrap_or(usize::MAX)).await) };
    let out = tokio::time::timeout(limit, collected)
        .await
        .map_err(|_| ApiError::timeout("the execution", limit))?
        .map_err(ApiError::from_operation)?;
    Ok(Json(out).into_response())
}

/// Length of an incomplete UTF-8 sequence at the end of `bytes` (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for i in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - i];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > i { i } else { 0 };
    }
    0
}

/// Decodes a byte stream to text chunk by chunk, never splitting a character across events.
#[derive(Debug, Default)]
struct Utf8Decoder {
    carry: Vec<u8>,
}

impl Utf8Decoder {
    fn push(&mut self, chunk: &[u8]) -> String {
        self.carry.extend_from_slice(chunk);
        let keep = incomplete_tail(&self.carry);
        let ready: Vec<u8> = self.carry.drain(..self.carry.len() - keep).collect();
        String::from_utf8_lossy(&ready).into_owned()
    }

    fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// One output stream's share of the cap.
#[derive(Debug, Default)]
struct Channel {
    decoder: Utf8Decoder,
    sent: u64,
}

impl Channel {
    /// Text to send for `chunk`, and whether bytes were dropped at the cap.
    fn take(&mut self, chunk: &[u8], cap: u64) -> (String, bool) {
        let room = usize::try_from(cap.saturating_sub(self.sent)).unwrap_or(usize::MAX);
        let kept = &chunk[..chunk.len().min(room)];
        self.sent += kept.len() as u64;
        (self.decoder.push(kept), kept.len() < chunk.len())
    }
}

struct EventState {
    stream: ExecStream,
    cap: u64,
    stdout: Channel,
    stderr: Channel,
    truncated: bool,
    pending: VecDeque<Event>,
    done: bool,
}

fn data_event(name: &'static str, text: &str) -> Event {
    Event::default().event(name).data(serde_json::json!({ "data": text }).to_string())
}

fn events(stream: ExecStream, cap: u64) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = EventState {
        stream,
        cap,
        stdout: Channel::default(),
        stderr: Channel::default(),
        truncated: false,
        pending: VecDeque::new(),
        done: false,
    };
    let s = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok(e), st));
            }
            if st.done {
                return None;
            }
            match st.stream.next().await {
                Some(ExecEvent::Stdout(b)) => {
                    let (text, cut) = st.stdout.take(&b, st.cap);
                    st.truncated |= cut;
                    if !text.is_empty() {
                        st.pending.push_back(data_event("stdout", &text));
                    }
                }
                Some(ExecEvent::Stderr(b)) => {
                    let (text, cut) = st.stderr.take(&b, st.cap);
                    st.truncated |= cut;
                    if !text.is_empty() {
                        st.pending.push_back(data_event("stderr", &text));
                    }
                }
                Some(ExecEvent::Exit(status)) => {
                    for (name, text) in [("stdout", st.stdout.decoder.finish()), ("stderr", st.stderr.decoder.finish())]
                    {
                        if !text.is_empty() {
                            st.pending.push_back(data_event(name, &text));
                        }
                    }
                    let exit = serde_json::json!({
                        "exit_code": status.exit_code,
                        "signal": status.signal,
                        "timed_out": status.timed_out,
                        "oom_killed": status.oom_killed,
                        "truncated": st.truncated,
                        "duration_ms": u64::try_from(status.duration.as_millis()).unwrap_or(u64::MAX),
                    });
                    st.pending.push_back(Event::default().event("exit").data(exit.to_string()));
                    st.done = true;
                }
                None => st.done = true,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_stay_whole() {
        let text = "héllo €𝄞";
        let bytes = text.as_bytes();
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push(std::slice::from_ref(b)));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn channels_stop_at_the_cap() {
        let mut c = Channel::default();
        assert_eq!(c.take(b"abcd", 6), ("abcd".to_owned(), false));
        assert_eq!(c.take(b"efgh", 6), ("ef".to_owned(), true));
        assert_eq!(c.take(b"ij", 6), (String::new(), true));
    }

    #[test]
    fn accept_header_selects_events() {
        let mut h = HeaderMap::new();
        assert!(!wants_events(&h));
        h.insert(header::ACCEPT, "application/json, text/event-stream;q=0.9".parse().unwrap());
        assert!(wants_events(&h));
    }

    #[test]
    fn exec_requests_need_exactly_one_command() {
        let r = |v| serde_json::from_value::<ExecuteCommandRequest>(v).unwrap().into_exec();
        assert_eq!(r(serde_json::json!({"command": "ls"})).unwrap().command, Command::Shell("ls".into()));
        assert!(r(serde_json::json!({})).is_err());
        assert!(r(serde_json::json!({"command": "ls", "argv": ["ls"]})).is_err());
        assert!(r(serde_json::json!({"argv": [""]})).is_err());
        assert!(r(serde_json::json!({"argv": ["ls"], "timeout": 0})).is_err());
        assert!(r(serde_json::json!({"argv": ["ls"], "env": {"A=B": "x"}})).is_err());
    }
}
