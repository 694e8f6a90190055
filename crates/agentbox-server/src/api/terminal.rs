//! Interactive terminals over WebSockets, and kept terminals that outlive their socket (docs/API.md).
//!
//! `GET /api/sandboxes/{run_id}/terminal` opens a terminal. Query: `rows`, `cols` (1-1000; 24x80 by
//! default), `command` (a bash command line instead of a login shell), `cwd`, and `keep`.
//!
//! Client to server: binary messages are typed input (Ctrl-C is byte 3); a text message
//! `{"resize": {"rows": R, "cols": C}}` resizes the terminal. Server to client: binary messages are
//! the terminal's output; when the process ends, one text message `{"exit": {...}}` (the fields of an
//! execution's `exit` event), then a close.
//!
//! Without `keep` (or with `keep=false`), closing the socket hangs the terminal up (SIGHUP).
//!
//! With `keep=true` the terminal is kept: closing the socket detaches, and the process runs on with
//! its recent output buffered (the last 256 KiB). The server's first message is then the text
//! `{"terminal": {"id": "term-1", "dropped_bytes": 0}}`, naming the kept terminal. Then:
//!
//! - `GET /api/sandboxes/{run_id}/terminals` lists the run's kept terminals (JSON: id, command, size,
//!   created_ms, attached, exited, exit_code, buffered_bytes, dropped_bytes).
//! - `GET /api/sandboxes/{run_id}/terminals/{terminal_id}/attach` reattaches over a WebSocket, with the same
//!   protocol: the `{"terminal": ...}` message first (`dropped_bytes`: output lost before the replayed
//!   part), then the buffered output as binary messages, then live output, then `{"exit": ...}` when
//!   the process ends. One client is attached at a time: a new attach takes over, and the previous
//!   client's socket is closed (with no `exit` message); so is a client that reads nothing for 5 s.
//! - `DELETE /api/sandboxes/{run_id}/terminals/{terminal_id}` hangs the kept terminal up (SIGHUP) and
//!   forgets it; an attached client gets its `exit`.
//!
//! A kept terminal whose process exits while no client is attached stays listed (`exited: true`) for
//! five minutes, so a later attach gets its output and exit (a run keeps its 8 most recent such exits). Destroying, stopping or restoring the
//! sandbox closes its kept terminals. A run may have 8 running at once; more are refused with 429
//! `limit_exceeded`.
//!
//! WebSockets are outside what OpenAPI describes, so the two WebSocket routes are documented in
//! docs/API.md only; the list and the hang-up are in the OpenAPI document.

use agentbox_core::{
    AttachedInput, AttachedOutput, AttachedTerminal, Command, ExecEvent, ExecStream, ExitStatus, RunId, Terminal,
    TerminalInput, TerminalRequest, TerminalSessionInfo, TerminalSize,
};
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiQuery, RunIdParam, RunIdPath};
use super::{AppState, ErrorResponses};
use crate::error::ApiError;

/// The largest message a client may send: input is typed, so this is generous.
const MAX_MESSAGE: usize = 1 << 20;

/// How long input still arriving on a connection that broke is read for.
const DRAIN_INPUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The terminal's initial size and what runs on it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    /// Rows (1-1000, default 24).
    rows: Option<u16>,
    /// Columns (1-1000, default 80).
    cols: Option<u16>,
    /// A bash command line to run instead of a login shell.
    command: Option<String>,
    /// Working directory (the user's home by default).
    cwd: Option<String>,
    /// Keep the terminal running when the socket closes, to reattach later (default false).
    keep: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: TerminalSize,
}

/// A run's kept terminal in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: handlers parse the path with `terminal_path`
pub struct TerminalPathParams {
    /// The run's id.
    #[param(pattern = r"^(?!create$)[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$", min_length = 1, max_length = 128)]
    run_id: String,
    /// The kept terminal's id, as listed by `GET /api/sandboxes/{run_id}/terminals`.
    #[param(min_length = 1, max_length = 64, example = "term-1")]
    terminal_id: String,
}

/// `GET /api/sandboxes/{run_id}/terminals`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TerminalList {
    /// The run's kept terminals, oldest first.
    pub terminals: Vec<TerminalSessionInfo>,
}

type PathResult = Result<Path<(String, String)>, axum::extract::rejection::PathRejection>;

fn terminal_path(path: PathResult) -> Result<(RunId, String), ApiError> {
    let Path((run, id)) =
        path.map_err(|e| ApiError::bad_request(format!("invalid path parameters: {}", e.body_text())))?;
    Ok((RunId::parse(&run)?, id))
}

/// Opens the terminal, then upgrades: errors before the upgrade are ordinary JSON errors.
pub async fn open(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiQuery(q): ApiQuery<TerminalQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let size = TerminalSize { rows: q.rows.unwrap_or(24), cols: q.cols.unwrap_or(80) };
    if !(1..=1000).contains(&size.rows) || !(1..=1000).contains(&size.cols) {
        return Err(ApiError::bad_request(format!("rows and cols must be 1 to 1000, got {}x{}", size.rows, size.cols)));
    }
    if q.cwd.as_deref().is_some_and(|c| c.contains('\0') || c.split('/').any(|p| p == "..")) {
        return Err(ApiError::bad_request("cwd must not contain NUL bytes or `..` components"));
    }
    let request = TerminalRequest { command: q.command.map(Command::Shell), cwd: q.cwd, size, ..Default::default() };
    let ws = ws.max_message_size(MAX_MESSAGE);
    if q.keep == Some(true) {
        let attached = state.manager.open_kept_terminal(&run, request).await.map_err(ApiError::from_operation)?;
        tracing::info!(run_id = %run, terminal = %attached.id, "kept terminal opened");
        return Ok(ws.on_upgrade(move |socket| pump(socket, Ends::kept(attached))));
    }
    let terminal = state.manager.open_terminal(&run, request).await.map_err(ApiError::from_operation)?;
    Ok(ws.on_upgrade(move |socket| pump(socket, Ends::plain(terminal))))
}

/// Reattaches to a kept terminal: its buffered output, then live output (see the module's protocol).
/// Another client attached to it is detached.
pub async fn attach(
    State(state): State<AppState>,
    path: PathResult,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (run, id) = terminal_path(path)?;
    let attached = state.manager.attach_terminal(&run, &id)?;
    Ok(ws.max_message_size(MAX_MESSAGE).on_upgrade(move |socket| pump(socket, Ends::kept(attached))))
}

/// Lists the run's kept terminals (opened with `GET /api/sandboxes/{run_id}/terminal?keep=true`, a
/// WebSocket): running ones, attached or not, and exited ones no client has seen exit yet.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/terminals",
    operation_id = "listTerminals",
    tag = "execution",
    params(RunIdParam),
    responses((status = 200, description = "The kept terminals", body = TerminalList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_terminals(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<TerminalList>, ApiError> {
    Ok(Json(TerminalList { terminals: state.manager.terminals(&run)? }))
}

/// Hangs up a kept terminal (its processes get SIGHUP) and forgets it; an attached client gets its exit.
/// (`GET` on this path, a WebSocket, reattaches to it.)
#[utoipa::path(
    delete,
    path = "/api/sandboxes/{run_id}/terminals/{terminal_id}",
    operation_id = "closeTerminal",
    tag = "execution",
    params(TerminalPathParams),
    responses((status = 204, description = "Hung up"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn close_terminal(State(state): State<AppState>, path: PathResult) -> Result<Response, ApiError> {
    let (run, id) = terminal_path(path)?;
    state.manager.close_terminal(&run, &id)?;
    tracing::info!(run_id = %run, terminal = %id, "kept terminal closed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A terminal's two ends, as the socket sees them.
struct Ends {
    /// Sent first: names a kept terminal.
    hello: Option<String>,
    output: Output,
    input: Input,
}

enum Output {
    Plain(ExecStream),
    Kept(AttachedOutput),
}

enum Input {
    /// Dropping it hangs the terminal up.
    Plain(mpsc::Sender<TerminalInput>),
    /// Dropping it detaches.
    Kept(AttachedInput),
}

impl Ends {
    fn plain(terminal: Terminal) -> Self {
        Self { hello: None, output: Output::Plain(terminal.output), input: Input::Plain(terminal.input) }
    }

    fn kept(attached: AttachedTerminal) -> Self {
        let hello = serde_json::json!({ "terminal": { "id": attached.id, "dropped_bytes": attached.dropped_bytes } });
        Self {
            hello: Some(hello.to_string()),
            output: Output::Kept(attached.output),
            input: Input::Kept(attached.input),
        }
    }
}

impl Output {
    /// The next event; `None` when a kept terminal's client was detached.
    async fn next(&mut self) -> Option<ExecEvent> {
        match self {
            Self::Plain(s) => s.next().await,
            Self::Kept(o) => o.next().await,
        }
    }
}

impl Input {
    /// Whether the input was taken.
    async fn send(&self, item: TerminalInput) -> bool {
        match self {
            Self::Plain(tx) => tx.send(item).await.is_ok(),
            Self::Kept(input) => input.send(item).await.is_ok(),
        }
    }
}

fn exit_message(status: &ExitStatus) -> Message {
    let exit = serde_json::json!({ "exit": {
        "exit_code": status.exit_code, "signal": status.signal, "timed_out": status.timed_out,
        "oom_killed": status.oom_killed,
        "duration_ms": u64::try_from(status.duration.as_millis()).unwrap_or(u64::MAX),
    }});
    Message::Text(exit.to_string().into())
}

async fn pump(socket: WebSocket, ends: Ends) {
    let (mut sink, mut messages) = socket.split();
    let Ends { hello, mut output, input } = ends;
    // Answers whether it ended because the terminal did (rather than the connection).
    let to_client = async {
        if let Some(hello) = hello {
            if sink.send(Message::Text(hello.into())).await.is_err() {
                return false;
            }
        }
        while let Some(event) = output.next().await {
            let message = match event {
                ExecEvent::Stdout(b) | ExecEvent::Stderr(b) => Message::Binary(b.into()),
                ExecEvent::Exit(status) => {
                    let _ = sink.send(exit_message(&status)).await;
                    break;
                }
            };
            if sink.send(message).await.is_err() {
                return false;
            }
        }
        // Exited, or (a kept terminal) another client took over or it was closed.
        let _ = sink.close().await;
        true
    };
    let from_client = async {
        while let Some(Ok(message)) = messages.next().await {
            let item = match message {
                Message::Binary(b) => TerminalInput::Data(b.to_vec()),
                Message::Text(t) => match serde_json::from_str::<Control>(t.as_str()) {
                    Ok(c) if c.resize.rows > 0 && c.resize.cols > 0 => TerminalInput::Resize(c.resize),
                    _ => continue,
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if !input.send(item).await {
                break;
            }
        }
        // Dropping the input here hangs a plain terminal up, and detaches from a kept one.
    };
    tokio::pin!(to_client, from_client);
    tokio::select! {
        ended = &mut to_client => {
            if !ended {
                // The connection broke while output was written: input it delivered before is still taken.
                let _ = tokio::time::timeout(DRAIN_INPUT, &mut from_client).await;
            }
        }
        () = &mut from_client => {}
    }
}
