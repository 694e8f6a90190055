//! envd (port 49983 by header): `/health`, `GET`/`POST /files`, and the Connect RPCs of `process.Process` and
//! `filesystem.Filesystem` with the JSON codec (unary `application/json`, server streams
//! `application/connect+json`).

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{CHUNK_BYTES, FileUpload, RunId, TerminalInput, TerminalSize};
use agentbox_e2b_wire::connect::{decode_request, end_stream_frame, envelope};
use agentbox_e2b_wire::wire::{EventMessage, ListResponse, ProcessConfig, ProcessEvent, decode_base64};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest as _, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::process::{Proc, StartSpec, keepalive_event, start_event};
use crate::state::{E2bSandbox, Shared};
use crate::{E2bApiError, fs, no_content};

/// Largest RPC request body.
const MAX_RPC_BYTES: usize = 4 * 1024 * 1024;
/// How often an idle process stream carries a keepalive.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long an upload's body may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// envd's routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(read_file).post(write_file).layer(DefaultBodyLimit::disable()))
        .route("/process.Process/{method}", post(process_rpc))
        .route("/filesystem.Filesystem/{method}", post(filesystem_rpc))
        .fallback(no_route)
        .with_state(state)
}

async fn no_route(request: Request) -> E2bApiError {
    E2bApiError::NotFound(format!(
        "envd route {} {} is not served by agentboxd's E2B API; see docs/E2B-API.md",
        request.method(),
        request.uri().path()
    ))
}

async fn health(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, E2bApiError> {
    state.for_call(&headers, false)?;
    Ok(no_content())
}

fn is_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/connect+json"))
}

async fn read_body(body: Body) -> Result<Bytes, E2bApiError> {
    axum::body::to_bytes(body, MAX_RPC_BYTES).await.map_err(|e| {
        E2bApiError::BadRequest(format!("the RPC request body could not be read (at most {MAX_RPC_BYTES} bytes): {e}"))
    })
}

/// The JSON message of an RPC request, unary or enveloped.
fn message(stream: bool, body: &[u8]) -> Result<&[u8], E2bApiError> {
    if stream { decode_request(body).map_err(|e| E2bApiError::BadRequest(e.to_string())) } else { Ok(body) }
}

/// A failed call: the unary error body, or a stream of just an end-of-stream envelope with the error.
fn failure(stream: bool, e: &E2bApiError) -> Response {
    if stream { stream_response(Body::from(end_stream_frame(Some(&e.to_connect())))) } else { e.connect_response() }
}

fn stream_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/connect+json"));
    r
}

async fn filesystem_rpc(
    State(state): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let stream = is_stream(&headers);
    let result = async {
        let (sandbox, body) = open_call(&state, &headers, body).await?;
        let msg = message(stream, &body)?;
        match method.as_str() {
            "WatchDir" => return Ok(Answer::Stream(watch_dir(&state, &sandbox, msg).await?)),
            "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => {
                return watcher_call(&state, &sandbox, &method, msg).await.map(Answer::Unary);
            }
            _ => {}
        }
        fs::call(&state.manager, &sandbox.run, &method, msg).await.map(Answer::Unary)
    }
    .await;
    answer(stream, result)
}

/// `CreateWatcherRequest` and `WatchDirRequest`.
#[derive(Debug, Deserialize)]
struct WatchRequest {
    #[serde(default)]
    path: String,
    #[serde(default)]
    recursive: bool,
}

fn watcher_id(msg: &[u8]) -> Result<String, E2bApiError> {
    let raw: serde_json::Value = parse(msg, "watcher request")?;
    raw.get("watcherId")
        .or_else(|| raw.get("watcher_id"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| E2bApiError::BadRequest("the request needs a watcherId".into()))
}

async fn watcher_call(
    state: &Shared,
    sandbox: &E2bSandbox,
    method: &str,
    msg: &[u8],
) -> Result<serde_json::Value, E2bApiError> {
    match method {
        "CreateWatcher" => {
            let r: WatchRequest = parse(msg, "CreateWatcherRequest")?;
            let limit = Duration::from_secs(state.config.max_timeout_secs);
            let dir = fs::absolute(&r.path);
            let (id, _) = sandbox.watchers.start(&state.manager, &sandbox.run, &dir, r.recursive, limit).await?;
            Ok(serde_json::json!({ "watcherId": id }))
        }
        "GetWatcherEvents" => {
            let watcher = sandbox.watchers.get(&watcher_id(msg)?)?;
            Ok(serde_json::json!({ "events": watcher.take_settled().await }))
        }
        _ => {
            sandbox.watchers.remove(&state.manager, &sandbox.run, &watcher_id(msg)?).await?;
            Ok(serde_json::json!({}))
        }
    }
}

/// The response body of `WatchDir`: a start event, then the directory's events as they come (with a keepalive
/// when idle). The watcher stops when the client goes away.
async fn watch_dir(state: &Shared, sandbox: &Arc<E2bSandbox>, msg: &[u8]) -> Result<Body, E2bApiError> {
    let r: WatchRequest = parse(msg, "WatchDirRequest")?;
    let limit = Duration::from_secs(state.config.max_timeout_secs);
    let dir = fs::absolute(&r.path);
    let (id, watcher) = sandbox.watchers.start(&state.manager, &sandbox.run, &dir, r.recursive, limit).await?;
    let (tx, out) = mpsc::channel::<Bytes>(16);
    let (state, sandbox) = (state.clone(), sandbox.clone());
    tokio::spawn(async move {
        let frame = |v: serde_json::Value| Bytes::from(envelope(0, v.to_string().as_bytes()));
        let mut open = tx.send(frame(serde_json::json!({"start": {}}))).await.is_ok();
        while open {
            let changed = watcher.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            for event in watcher.take() {
                if tx.send(frame(serde_json::json!({ "filesystem": event }))).await.is_err() {
                    open = false;
                    break;
                }
            }
            if !open || watcher.ended() {
                break;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(KEEPALIVE) => {
                    open = tx.send(frame(serde_json::json!({"keepalive": {}}))).await.is_ok();
                }
            }
        }
        if open {
            let e = E2bApiError::StreamCut(0);
            let _ = tx.send(Bytes::from(end_stream_frame(Some(&e.to_connect())))).await;
        }
        let _ = sandbox.watchers.remove(&state.manager, &sandbox.run, &id).await;
    });
    let chunks = futures_util::stream::unfold(out, |mut out| async move {
        let chunk = out.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), out))
    });
    Ok(Body::from_stream(chunks))
}

/// A `ProcessSelector`: by pid or by tag.
#[derive(Debug, Deserialize)]
struct Selector {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

/// `ProcessInput`.
#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

/// `SendInputRequest`.
#[derive(Debug, Deserialize)]
struct InputRequest {
    process: Selector,
    #[serde(default)]
    input: Option<Input>,
}

#[derive(Debug, Deserialize)]
struct SelectRequest {
    process: Selector,
    #[serde(default)]
    signal: Option<String>,
}

fn select(sandbox: &E2bSandbox, s: &Selector) -> Result<Arc<Proc>, E2bApiError> {
    match (s.pid, &s.tag) {
        (Some(pid), _) => sandbox.processes.get(pid),
        (None, Some(tag)) => sandbox.processes.by_tag(tag),
        (None, None) => Err(E2bApiError::BadRequest("the process selector needs a pid or a tag".into())),
    }
}

async fn process_rpc(
    State(state): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let stream = is_stream(&headers);
    let result = async {
        let (sandbox, body) = open_call(&state, &headers, body).await?;
        let msg = message(stream, &body)?;
        process_call(&state, &sandbox, &method, msg, basic_auth_user(&headers)).await
    }
    .await;
    answer(stream, result)
}

/// The start of every RPC: the body is read first, even for a call refused next (a response sent before its
/// request's body is read makes the server close the connection, which a client may already be reusing), then
/// the sandbox the headers name is looked up.
async fn open_call(state: &Shared, headers: &HeaderMap, body: Body) -> Result<(Arc<E2bSandbox>, Bytes), E2bApiError> {
    let body = read_body(body).await?;
    let sandbox = state.for_call(headers, true)?;
    Ok((sandbox, body))
}

/// An RPC's answer, as a unary JSON body or, for a streaming call, envelopes ended by an end-of-stream frame.
fn answer(stream: bool, result: Result<Answer, E2bApiError>) -> Response {
    match result {
        Ok(Answer::Stream(body)) => stream_response(body),
        Ok(Answer::Unary(v)) if stream => {
            let mut out = envelope(0, v.to_string().as_bytes());
            out.extend(end_stream_frame(None));
            stream_response(Body::from(out))
        }
        Ok(Answer::Unary(v)) => Json(v).into_response(),
        Err(e) => failure(stream, &e),
    }
}

enum Answer {
    Unary(serde_json::Value),
    Stream(Body),
}

fn parse<T: serde::de::DeserializeOwned>(msg: &[u8], what: &str) -> Result<T, E2bApiError> {
    serde_json::from_slice(msg).map_err(|e| E2bApiError::BadRequest(format!("invalid {what}: {e}")))
}

/// The user an envd call names in its `Authorization: Basic base64(user:)` header (the SDKs send it when the
/// caller gives one, as `user="root"`); `None` without one.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = decode_base64(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?;
    (!user.is_empty()).then(|| user.to_owned())
}

async fn process_call(
    state: &Shared,
    sandbox: &Arc<E2bSandbox>,
    method: &str,
    msg: &[u8],
    user: Option<String>,
) -> Result<Answer, E2bApiError> {
    match method {
        "Start" => {
            let raw: serde_json::Value = parse(msg, "StartRequest")?;
            let pty = raw.get("pty").filter(|p| !p.is_null()).map(terminal_size).transpose()?;
            let process: ProcessConfig = serde_json::from_value(raw.get("process").cloned().unwrap_or_default())
                .map_err(|e| E2bApiError::BadRequest(format!("invalid StartRequest.process: {e}")))?;
            let tag = raw.get("tag").and_then(serde_json::Value::as_str).map(str::to_owned);
            // envd keeps stdin open unless told otherwise (older clients never say).
            let stdin = raw.get("stdin").and_then(serde_json::Value::as_bool).unwrap_or(true);
            let limit = Duration::from_secs(state.config.max_timeout_secs);
            let (proc, rx) = sandbox
                .processes
                .start(&state.manager, &sandbox.run, StartSpec { config: process, tag, stdin, pty, user }, limit)
                .await?;
            Ok(Answer::Stream(event_stream(proc.pid, rx)))
        }
        "Connect" => {
            let r: SelectRequest = parse(msg, "ConnectRequest")?;
            let proc = select(sandbox, &r.process)?;
            Ok(Answer::Stream(event_stream(proc.pid, proc.subscribe())))
        }
        "List" => Ok(Answer::Unary(
            serde_json::to_value(ListResponse { processes: sandbox.processes.list() }).unwrap_or_default(),
        )),
        "SendSignal" => {
            let r: SelectRequest = parse(msg, "SendSignalRequest")?;
            let proc = select(sandbox, &r.process)?;
            let signal = r.signal.unwrap_or_else(|| "SIGNAL_SIGKILL".to_owned());
            sandbox.processes.signal(&state.manager, &sandbox.run, proc.pid, &signal).await?;
            Ok(Answer::Unary(serde_json::json!({})))
        }
        "SendInput" => {
            let r: InputRequest = parse(msg, "SendInputRequest")?;
            let proc = select(sandbox, &r.process)?;
            let input = r.input.unwrap_or_default();
            let decode = |b64: &str| {
                decode_base64(b64).map_err(|e| E2bApiError::BadRequest(format!("SendInput input is not base64: {e}")))
            };
            match (input.stdin, input.pty) {
                (_, Some(b64)) => {
                    sandbox.processes.to_terminal(proc.pid, TerminalInput::Data(decode(&b64)?)).await?;
                }
                (Some(b64), None) => {
                    sandbox.processes.send_input(&state.manager, &sandbox.run, proc.pid, decode(&b64)?).await?;
                }
                (None, None) => {}
            }
            Ok(Answer::Unary(serde_json::json!({})))
        }
        "CloseStdin" => {
            let r: SelectRequest = parse(msg, "CloseStdinRequest")?;
            let proc = select(sandbox, &r.process)?;
            sandbox.processes.close_stdin(&state.manager, &sandbox.run, proc.pid).await?;
            Ok(Answer::Unary(serde_json::json!({})))
        }
        "Update" => {
            let raw: serde_json::Value = parse(msg, "UpdateRequest")?;
            let selector: Selector = serde_json::from_value(raw.get("process").cloned().unwrap_or_default())
                .map_err(|e| E2bApiError::BadRequest(format!("invalid UpdateRequest.process: {e}")))?;
            let proc = select(sandbox, &selector)?;
            if let Some(pty) = raw.get("pty").filter(|p| !p.is_null()) {
                sandbox.processes.to_terminal(proc.pid, TerminalInput::Resize(terminal_size(pty)?)).await?;
            }
            Ok(Answer::Unary(serde_json::json!({})))
        }
        "StreamInput" => Err(E2bApiError::Unimplemented(
            "process.Process/StreamInput (a client stream) is not supported by agentboxd's E2B API; send input with \
             SendInput"
                .into(),
        )),
        other => Err(E2bApiError::NotFound(format!("process.Process has no method {other:?}"))),
    }
}

/// A `PTY` message's size (`{"size": {"cols", "rows"}}`), within what a terminal can be.
fn terminal_size(pty: &serde_json::Value) -> Result<TerminalSize, E2bApiError> {
    let size = pty.get("size").unwrap_or(pty);
    let dim = |name: &str, default: u16| -> Result<u16, E2bApiError> {
        match size.get(name).and_then(serde_json::Value::as_u64) {
            None => Ok(default),
            Some(n) => u16::try_from(n)
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| E2bApiError::BadRequest(format!("pty {name} {n} is out of range: use 1 to 1000"))),
        }
    };
    Ok(TerminalSize { rows: dim("rows", 24)?, cols: dim("cols", 80)? })
}

fn frame(event: ProcessEvent) -> Bytes {
    let json = serde_json::to_vec(&EventMessage { event: Some(event) }).unwrap_or_else(|_| b"{}".to_vec());
    Bytes::from(envelope(0, &json))
}

/// The response body of `Start` and `Connect`: the start event, then the process's events as they come (with a
/// keepalive when idle), its end event and the end of the stream.
fn event_stream(pid: u32, mut rx: broadcast::Receiver<ProcessEvent>) -> Body {
    let (tx, out) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if tx.send(frame(start_event(pid))).await.is_err() {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = keepalive.tick() => {
                    if tx.send(frame(keepalive_event())).await.is_err() { return; }
                    continue;
                }
            };
            match event {
                Ok(event) => {
                    let ended = event.end.is_some();
                    if tx.send(frame(event)).await.is_err() {
                        return;
                    }
                    if ended {
                        let _ = tx.send(Bytes::from(end_stream_frame(None))).await;
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(pid, missed = n, "a process stream fell behind and missed output");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The sandbox went away under the process (killed, or its timeout expired); the SDKs probe its
                    // health to say which.
                    let e = E2bApiError::StreamCut(pid);
                    let _ = tx.send(Bytes::from(end_stream_frame(Some(&e.to_connect())))).await;
                    return;
                }
            }
        }
    });
    let chunks = futures_util::stream::unfold(out, |mut out| async move {
        let chunk = out.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), out))
    });
    Body::from_stream(chunks)
}

/// `?path=&username=` of `/files`.
#[derive(Debug, Deserialize)]
struct FileQuery {
    #[serde(default)]
    path: Option<String>,
}

async fn read_file(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, true)?;
    let path = fs::absolute(q.path.as_deref().unwrap_or_default());
    let stream = state.manager.read_file_stream(&sandbox.run, &path).await.map_err(|e| match e {
        agentbox_core::Error::NotFound(_) => E2bApiError::NotFound(format!("path {path} not found")),
        other => E2bApiError::Sandbox { what: "reading the file", source: other },
    })?;
    let size = stream.size;
    let chunks = futures_util::stream::unfold(stream.into_receiver(), |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((chunk.map(Bytes::from).map_err(|e| std::io::Error::other(e.to_string())), rx))
    });
    let mut response = Body::from_stream(chunks).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// Streams chunks into a sandbox file under `limit` bytes; nothing is left behind when the body fails.
async fn stream_into<S>(state: &Shared, run: &RunId, path: &str, body: S, gzip: bool) -> Result<u64, E2bApiError>
where
    S: futures_util::Stream<Item = Result<Bytes, E2bApiError>> + Send,
{
    let max = state.config.max_upload_bytes;
    let (tx, upload) = FileUpload::channel();
    let write = state.manager.write_file_stream(run, path, upload, max);
    let feed = async move {
        let read = async {
            futures_util::pin_mut!(body);
            let mut pending = Vec::new();
            let mut gunzip = gzip.then(|| Gunzip::new(max));
            while let Some(bytes) = body.next().await {
                let bytes = bytes?;
                match &mut gunzip {
                    // Fed in small pieces, so one piece's output stays small however well it compresses.
                    Some(g) => {
                        for piece in bytes.chunks(GZIP_PIECE) {
                            pending.extend(g.feed(piece)?);
                            if pending.len() >= CHUNK_BYTES && tx.send(Ok(std::mem::take(&mut pending))).await.is_err()
                            {
                                return Ok(());
                            }
                        }
                    }
                    None => pending.extend_from_slice(&bytes),
                }
                if pending.len() >= CHUNK_BYTES && tx.send(Ok(std::mem::take(&mut pending))).await.is_err() {
                    return Ok(());
                }
            }
            if let Some(g) = gunzip {
                pending.extend(g.finish()?);
            }
            if !pending.is_empty() {
                let _ = tx.send(Ok(pending)).await;
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(UPLOAD_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => Err(E2bApiError::BadRequest(format!("the upload did not arrive within {UPLOAD_TIMEOUT:?}"))),
        };
        if outcome.is_err() {
            let _ =
                tx.send(Err(agentbox_core::Error::InvalidRequest("the upload was not received whole".into()))).await;
        }
        outcome
    };
    let (written, fed) = tokio::join!(write, feed);
    fed?;
    written.map_err(E2bApiError::sandbox("writing the file"))
}

/// Compressed bytes fed to the decoder at a time: deflate expands at most ~1032 times, so about 1 MiB out.
const GZIP_PIECE: usize = 1024;

/// A gzip decoder that refuses more than `max` bytes of output.
struct Gunzip {
    decoder: flate2::write::GzDecoder<Vec<u8>>,
    total: u64,
    max: u64,
}

impl Gunzip {
    fn new(max: u64) -> Self {
        Self { decoder: flate2::write::GzDecoder::new(Vec::new()), total: 0, max }
    }

    fn take(&mut self) -> Result<Vec<u8>, E2bApiError> {
        let out = std::mem::take(self.decoder.get_mut());
        self.total += out.len() as u64;
        if self.total > self.max {
            return Err(E2bApiError::BadRequest(format!(
                "the gzip upload inflates to more than {} bytes ([e2b_api] max_upload_bytes)",
                self.max
            )));
        }
        Ok(out)
    }

    fn feed(&mut self, piece: &[u8]) -> Result<Vec<u8>, E2bApiError> {
        use std::io::Write as _;
        self.decoder
            .write_all(piece)
            .map_err(|e| E2bApiError::BadRequest(format!("the upload is not valid gzip: {e}")))?;
        self.take()
    }

    fn finish(mut self) -> Result<Vec<u8>, E2bApiError> {
        self.decoder.try_finish().map_err(|e| E2bApiError::BadRequest(format!("the gzip upload is truncated: {e}")))?;
        self.take()
    }
}

fn written(path: &str) -> serde_json::Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    serde_json::json!({"name": name, "type": "file", "path": path})
}

async fn write_file(
    State(state): State<Shared>,
    Query(q): Query<FileQuery>,
    request: Request,
) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(request.headers(), true)?;
    let gzip = match request.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim()) {
        None | Some("" | "identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(E2bApiError::BadRequest(format!(
                "content encoding {other:?} is not supported: send the file as is or gzip-compressed"
            )));
        }
    };
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    let mut files = Vec::new();
    if multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| E2bApiError::BadRequest(format!("invalid multipart form: {}", e.body_text())))?;
        loop {
            let field = form
                .next_field()
                .await
                .map_err(|e| E2bApiError::BadRequest(format!("invalid multipart form: {}", e.body_text())))?;
            let Some(field) = field else { break };
            if field.name() != Some("file") {
                return Err(E2bApiError::BadRequest(format!(
                    "unexpected form field {:?}: send the content in parts named `file`",
                    field.name().unwrap_or("")
                )));
            }
            // One part goes to `path`; several each go to their file name (a path), as envd does.
            let target = match (&q.path, files.is_empty()) {
                (Some(p), true) if !p.is_empty() => p.clone(),
                _ => field.file_name().map(str::to_owned).filter(|n| !n.is_empty()).ok_or_else(|| {
                    E2bApiError::BadRequest("a `file` part needs a path: give ?path= or the part's file name".into())
                })?,
            };
            let path = fs::absolute(&target);
            let chunks = futures_util::stream::unfold(field, |mut field| async move {
                match field.chunk().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), field)),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(E2bApiError::BadRequest(format!("invalid multipart form: {}", e.body_text()))),
                        field,
                    )),
                }
            });
            stream_into(&state, &sandbox.run, &path, chunks, gzip).await?;
            files.push(written(&path));
        }
        if files.is_empty() {
            return Err(E2bApiError::BadRequest("the form has no `file` part".into()));
        }
    } else {
        let path = fs::absolute(
            q.path
                .as_deref()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| E2bApiError::BadRequest("an octet-stream upload needs ?path=".into()))?,
        );
        let body = request
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(|e| E2bApiError::BadRequest(format!("cannot read the upload: {e}"))));
        stream_into(&state, &sandbox.run, &path, body, gzip).await?;
        files.push(written(&path));
    }
    Ok((StatusCode::OK, Json(files)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_uploads_are_bounded() {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        let mut g = Gunzip::new(1 << 20);
        let mut out = Vec::new();
        for piece in gz.chunks(GZIP_PIECE) {
            out.extend(g.feed(piece).unwrap());
        }
        out.extend(g.finish().unwrap());
        assert_eq!(out.len(), 1 << 20);
        let mut small = Gunzip::new(1000);
        let over = gz.chunks(GZIP_PIECE).map(|p| small.feed(p)).find(Result::is_err);
        assert!(over.is_some_and(|e| e.unwrap_err().to_string().contains("max_upload_bytes")));
        assert!(Gunzip::new(10).feed(b"not gzip at all").is_err());
    }

    #[test]
    fn events_are_enveloped_proto3_json() {
        let f = frame(start_event(1000));
        assert_eq!(f[0], 0);
        assert_eq!(&f[5..], br#"{"event":{"start":{"pid":1000}}}"#);
        assert_eq!(agentbox_e2b_wire::connect::FLAG_END_STREAM, 2);
    }
}
