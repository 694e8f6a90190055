//! `GET /api/sandboxes/{run_id}/terminal`: an interactive terminal over a WebSocket (docs/API.md).
//!
//! Client to server: binary messages are typed input (Ctrl-C is byte 3); a text message
//! `{"resize": {"rows": R, "cols": C}}` resizes the terminal. Server to client: binary messages are
//! the terminal's output; when the process ends, one text message `{"exit": {...}}` (the fields of an
//! execution's `exit` event), then a close. Closing the socket hangs the terminal up (SIGHUP).
//!
//! WebSockets are outside what OpenAPI describes, so this route is documented in docs/API.md only.

use agentbox_core::{Command, ExecEvent, Terminal, TerminalInput, TerminalRequest, TerminalSize};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::AppState;
use super::extract::{ApiQuery, RunIdPath};
use crate::error::ApiError;

/// The largest message a client may send: input is typed, so this is generous.
const MAX_MESSAGE: usize = 1 << 20;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: TerminalSize,
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
    let terminal = state.manager.open_terminal(&run, request).await.map_err(ApiError::from_operation)?;
    Ok(ws.max_message_size(MAX_MESSAGE).on_upgrade(move |socket| pump(socket, terminal)))
}

async fn pump(socket: WebSocket, terminal: Terminal) {
    let (mut sink, mut messages) = socket.split();
    let Terminal { mut output, input } = terminal;
    let to_client = async {
        while let Some(event) = output.next().await {
            let message = match event {
                ExecEvent::Stdout(b) | ExecEvent::Stderr(b) => Message::Binary(b.into()),
                ExecEvent::Exit(status) => {
                    let exit = serde_json::json!({ "exit": {
                        "exit_code": status.exit_code, "signal": status.signal, "timed_out": status.timed_out,
                        "oom_killed": status.oom_killed,
                        "duration_ms": u64::try_from(status.duration.as_millis()).unwrap_or(u64::MAX),
                    }});
                    let _ = sink.send(Message::Text(exit.to_string().into())).await;
                    let _ = sink.close().await;
                    return;
                }
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
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
            if input.send(item).await.is_err() {
                break;
            }
        }
        // Dropping `input` here hangs the terminal up.
    };
    tokio::select! {
        () = to_client => {}
        () = from_client => {}
    }
}
