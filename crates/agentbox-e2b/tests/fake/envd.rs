//! E2B's sandbox proxy and envd: routing by `E2b-Sandbox-Id` / `E2b-Sandbox-Port` (502 for a sandbox that is
//! gone), envd's access token and Basic-auth user, `/health`, `/metrics`, `/files`, and the Connect services
//! `process.Process` and `filesystem.Filesystem`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Query, Request, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Process, Sandbox, State, api_error, connect_error, host, interp, rfc3339};

pub const ENVD_PORT: u16 = 49983;
pub const INTERPRETER_PORT: u16 = 49999;

/// The sandbox and port a request was routed to.
#[derive(Clone)]
pub struct Routed {
    pub sandbox: Arc<Sandbox>,
    pub port: u16,
}

type S = Extract<Arc<State>>;
type R = axum::Extension<Routed>;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/files", get(download).post(upload))
        .route("/process.Process/Start", post(start))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .merge(interp::routes())
        .layer(middleware::from_fn_with_state(state.clone(), route))
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(state)
}

fn is_envd_path(path: &str) -> bool {
    matches!(path, "/health" | "/metrics" | "/files")
        || path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
}

/// E2B's proxy: find the sandbox and port, then envd's own checks of the access token and user.
async fn route(Extract(state): S, mut request: Request, next: Next) -> Response {
    super::control::record(&state, &request);
    let headers = request.headers();
    let id = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let port: u16 =
        headers.get("e2b-sandbox-port").and_then(|v| v.to_str().ok()).and_then(|p| p.parse().ok()).unwrap_or(0);
    let gone = |message: &str| {
        (StatusCode::BAD_GATEWAY, axum::Json(json!({"code": 502, "message": message, "sandboxId": id}))).into_response()
    };
    let Some(sandbox) = state.sandbox(&id) else { return gone("The sandbox was not found") };
    if *sandbox.paused.lock().unwrap() {
        return gone("The sandbox is paused");
    }
    let path = request.uri().path().to_owned();
    let open = match port {
        ENVD_PORT => is_envd_path(&path),
        INTERPRETER_PORT => {
            state.interpreter_templates.contains(&sandbox.template) && (path == "/health" || !is_envd_path(&path))
        }
        _ => false,
    };
    if !open {
        return gone(&format!("The sandbox is running but port {port} is not open"));
    }
    if let Some(token) = &sandbox.token {
        if headers.get("x-access-token").and_then(|v| v.to_str().ok()) != Some(token.as_str()) && path != "/health" {
            return if path.starts_with("/process.") || path.starts_with("/filesystem.") {
                connect_error("unauthenticated", "invalid access token")
            } else {
                api_error(StatusCode::UNAUTHORIZED, "invalid access token")
            };
        }
    }
    if port == ENVD_PORT && path != "/health" {
        let user = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        if user.as_deref() != Some("user:") {
            return api_error(
                StatusCode::UNAUTHORIZED,
                &format!("error looking up user '{}': unknown user", user.unwrap_or_default()),
            );
        }
    }
    request.extensions_mut().insert(Routed { sandbox, port });
    next.run(request).await
}

async fn health(axum::Extension(r): R) -> Response {
    if r.port == ENVD_PORT { StatusCode::NO_CONTENT.into_response() } else { axum::Json("OK").into_response() }
}

async fn metrics(Extract(state): S, axum::Extension(r): R) -> Response {
    let (ts, cpus, pct, mem_used, mem_total, disk_used, disk_total) = super::control::sample(&state, &r.sandbox);
    axum::Json(json!({"ts": ts, "cpu_count": cpus, "cpu_used_pct": pct, "mem_total": mem_total, "mem_used": mem_used,
        "disk_used": disk_used, "disk_total": disk_total}))
    .into_response()
}

/// A sandbox path made absolute (relative to the home) and normalized.
pub fn normalize(path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_owned() } else { format!("/home/user/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn writable(path: &str) -> bool {
    path.starts_with("/home/") || path.starts_with("/tmp/")
}

// ---------------------------------------------------------------------------------------------------------------
// /files

async fn download(axum::Extension(r): R, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let path = normalize(q.get("path").map_or("", String::as_str));
    let host = r.sandbox.fs.host_path(&path);
    match std::fs::metadata(&host) {
        Err(_) => api_error(StatusCode::NOT_FOUND, &format!("path '{path}' does not exist")),
        Ok(m) if m.is_dir() => api_error(StatusCode::BAD_REQUEST, &format!("path '{path}' is a directory")),
        Ok(_) => match std::fs::read(&host) {
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
            Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("error opening file '{path}': {e}")),
        },
    }
}

async fn upload(
    axum::Extension(r): R,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (name, data) = if content_type.starts_with("multipart/form-data") {
        let Ok(mut multipart) = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &()).await else {
            return api_error(StatusCode::BAD_REQUEST, "malformed multipart body");
        };
        let mut found = None;
        while let Ok(Some(field)) = multipart.next_field().await {
            if field.name() == Some("file") {
                let filename = field.file_name().map(str::to_owned);
                let Ok(bytes) = field.bytes().await else {
                    return api_error(StatusCode::BAD_REQUEST, "unreadable file part");
                };
                found = Some((filename, bytes.to_vec()));
            }
        }
        let Some(found) = found else { return api_error(StatusCode::BAD_REQUEST, "no `file` part") };
        found
    } else if content_type.starts_with("application/octet-stream") {
        let Ok(bytes) = axum::body::to_bytes(request.into_body(), 64 << 20).await else {
            return api_error(StatusCode::BAD_REQUEST, "unreadable body");
        };
        (None, bytes.to_vec())
    } else {
        return api_error(StatusCode::BAD_REQUEST, &format!("unsupported content type {content_type}"));
    };
    let Some(raw) = q.get("path").cloned().or(name) else { return api_error(StatusCode::BAD_REQUEST, "no path given") };
    let path = normalize(&raw);
    if !writable(&path) {
        return api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("error opening file '{path}': permission denied"),
        );
    }
    let host = r.sandbox.fs.host_path(&path);
    if host.is_dir() {
        return api_error(StatusCode::BAD_REQUEST, &format!("path '{path}' is a directory"));
    }
    if let Some(parent) = host.parent() {
        if let Err(e) = std::fs::create_dir_all(parent) {
            return api_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("error creating parents of '{path}': {e}"));
        }
    }
    if let Err(e) = std::fs::write(&host, data) {
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("error writing '{path}': {e}"));
    }
    let name = path.rsplit('/').next().unwrap_or_default().to_owned();
    axum::Json(json!([{"path": path, "name": name, "type": "file"}])).into_response()
}

// ---------------------------------------------------------------------------------------------------------------
// filesystem.Filesystem (Connect unary, JSON)

fn unary_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported content type {ct}")).into_response());
    }
    serde_json::from_slice(body).map_err(|e| connect_error("invalid_argument", &format!("malformed request: {e}")))
}

fn path_arg(v: &Value, key: &str) -> String {
    normalize(v.get(key).and_then(Value::as_str).unwrap_or_default())
}

/// `EntryInfo` in proto3 JSON: lowerCamelCase, int64 size as a string, enum names, defaults omitted.
pub fn entry(sb: &Sandbox, sandbox_path: &str) -> Option<Value> {
    let host = sb.fs.host_path(sandbox_path);
    let meta = host.symlink_metadata().ok()?;
    let is_symlink = meta.file_type().is_symlink();
    let target = if is_symlink { host.metadata().ok() } else { Some(meta.clone()) };
    let kind = match &target {
        Some(m) if m.is_dir() => "FILE_TYPE_DIRECTORY",
        Some(m) if m.is_file() => "FILE_TYPE_FILE",
        _ => "FILE_TYPE_UNSPECIFIED",
    };
    let mode = meta.permissions().mode() & 0o777;
    let mtime = meta.modified().ok()?;
    let name = sandbox_path.rsplit('/').next().unwrap_or_default();
    let mut v = json!({
        "name": name,
        "type": kind,
        "path": sandbox_path,
        "size": meta.len().to_string(),
        "mode": mode,
        "permissions": format!("{mode:o}"),
        "owner": "user",
        "group": "user",
        "modifiedTime": rfc3339(mtime),
    });
    // EntryInfo has no "is a symlink" field: a link is known by its target.
    if is_symlink {
        let t = std::fs::read_link(&host).map(|t| t.display().to_string()).unwrap_or_default();
        v["symlinkTarget"] = json!(t);
    }
    Some(v)
}

async fn stat(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let path = path_arg(&v, "path");
    match entry(&r.sandbox, &path) {
        Some(e) => axum::Json(json!({"entry": e})).into_response(),
        None => connect_error("not_found", &format!("file not found: {path}")),
    }
}

async fn list_dir(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let path = path_arg(&v, "path");
    let host = r.sandbox.fs.host_path(&path);
    let dir = match std::fs::read_dir(&host) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return connect_error("not_found", &format!("directory not found: {path}"));
        }
        Err(_) => return connect_error("invalid_argument", &format!("path is not a directory: {path}")),
    };
    let entries: Vec<Value> = dir
        .flatten()
        .filter_map(|e| {
            entry(&r.sandbox, &format!("{}/{}", path.trim_end_matches('/'), e.file_name().to_string_lossy()))
        })
        .collect();
    axum::Json(json!({"entries": entries})).into_response()
}

async fn make_dir(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let path = path_arg(&v, "path");
    if !writable(&path) {
        return connect_error("permission_denied", &format!("cannot create {path}: permission denied"));
    }
    let host = r.sandbox.fs.host_path(&path);
    if host.symlink_metadata().is_ok() {
        return connect_error("already_exists", &format!("directory already exists: {path}"));
    }
    match std::fs::create_dir_all(&host) {
        Ok(()) => axum::Json(json!({"entry": entry(&r.sandbox, &path)})).into_response(),
        Err(e) => connect_error("internal", &format!("error creating directory: {e}")),
    }
}

async fn move_entry(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let (from, to) = (path_arg(&v, "source"), path_arg(&v, "destination"));
    if !writable(&from) || !writable(&to) {
        return connect_error("permission_denied", "moves are only allowed under /home and /tmp");
    }
    let (hf, ht) = (r.sandbox.fs.host_path(&from), r.sandbox.fs.host_path(&to));
    if hf.symlink_metadata().is_err() {
        return connect_error("not_found", &format!("source file not found: {from}"));
    }
    if let Some(parent) = ht.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::rename(&hf, &ht) {
        Ok(()) => axum::Json(json!({"entry": entry(&r.sandbox, &to)})).into_response(),
        Err(e) => connect_error("internal", &format!("error renaming: {e}")),
    }
}

async fn remove(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let path = path_arg(&v, "path");
    if !writable(&path) {
        return connect_error("permission_denied", &format!("cannot remove {path}: permission denied"));
    }
    let host = r.sandbox.fs.host_path(&path);
    // envd removes like os.RemoveAll: a missing path is fine.
    let result = match host.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&host),
        Ok(_) => std::fs::remove_file(&host),
        Err(_) => Ok(()),
    };
    match result {
        Ok(()) => axum::Json(json!({})).into_response(),
        Err(e) => connect_error("internal", &format!("error removing file or directory: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// process.Process

fn frame(flags: u8, json: &Value) -> Bytes {
    let payload = serde_json::to_vec(json).unwrap();
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flags);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    Bytes::from(out)
}

fn end_frame(error: Option<(&str, &str)>) -> Bytes {
    match error {
        Some((code, message)) => frame(2, &json!({"error": {"code": code, "message": message}})),
        None => frame(2, &json!({})),
    }
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

fn stream_response(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn start(Extract(state): S, axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ct != "application/connect+json" {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected application/connect+json").into_response();
    }
    if body.len() < 5 || body[0] != 0 {
        return (StatusCode::BAD_REQUEST, "expected one uncompressed envelope").into_response();
    }
    // One envelope, exactly: a length that disagrees with the body is a broken request, not one to trim.
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len != body.len() - 5 {
        return (
            StatusCode::BAD_REQUEST,
            format!("the envelope says {len} bytes but {} follow its header", body.len() - 5),
        )
            .into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body[5..]) else {
        return (StatusCode::BAD_REQUEST, "malformed envelope").into_response();
    };
    let keepalive =
        headers.get("keepalive-ping-interval").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let (tx, rx) = mpsc::channel(256);
    let response = stream_response(rx);
    let process = req.get("process").cloned().unwrap_or(Value::Null);
    let cmd = process.get("cmd").and_then(Value::as_str).unwrap_or_default().to_owned();
    let args: Vec<String> = process
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let envs: BTreeMap<String, String> = process
        .get("envs")
        .and_then(Value::as_object)
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    let cwd = normalize(process.get("cwd").and_then(Value::as_str).unwrap_or("/home/user"));
    let tag = req.get("tag").and_then(Value::as_str).map(str::to_owned);
    let stdin = req.get("stdin").and_then(Value::as_bool).unwrap_or(true);
    let sb = r.sandbox.clone();
    if !sb.fs.host_path(&cwd).is_dir() {
        let _ = tx.send(Ok(end_frame(Some(("invalid_argument", &format!("cwd '{cwd}' does not exist")))))).await;
        return response;
    }
    let mut env = host::base_env(&sb.env_vars);
    env.extend(envs);
    let mut child = match host::spawn(&sb.fs, &cmd, &args, &env, &cwd, stdin) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Ok(end_frame(Some(("internal", &format!("error starting process: {e}")))))).await;
            return response;
        }
    };
    let pid = child.id().unwrap_or(0);
    sb.processes.lock().unwrap().insert(pid, Process { config: process, tag, stdin: child.stdin.take() });
    let break_after = state.faults.lock().unwrap().break_stream_after.take();
    tokio::spawn(drive(sb, pid, child, tx, keepalive, break_after));
    response
}

/// Streams a process's events: start, output as it comes, keep-alives, end, end-of-stream. The process outlives a
/// client that goes away, as with envd.
async fn drive(
    sb: Arc<Sandbox>,
    pid: u32,
    mut child: tokio::process::Child,
    tx: Tx,
    keepalive: Option<u64>,
    break_after: Option<usize>,
) {
    let mut connected = tx.send(Ok(frame(0, &json!({"event": {"start": {"pid": pid}}})))).await.is_ok();
    let (out_tx, mut out_rx) = mpsc::channel::<(&'static str, Vec<u8>)>(64);
    for (name, pipe) in [
        ("stdout", child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
        ("stderr", child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out_tx.send((name, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(out_tx);
    let mut ticker = tokio::time::interval(Duration::from_secs(keepalive.unwrap_or(3600).max(1)));
    ticker.tick().await;
    let mut sent = 0usize;
    loop {
        tokio::select! {
            chunk = out_rx.recv() => match chunk {
                Some((name, bytes)) => {
                    if break_after.is_some_and(|n| sent >= n) && connected {
                        let _ = tx.send(Err(std::io::Error::new(ErrorKind::ConnectionReset, "injected break"))).await;
                        connected = false;
                    }
                    let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    if connected {
                        connected = tx.send(Ok(frame(0, &json!({"event": {"data": {name: data}}})))).await.is_ok();
                        sent += 1;
                    }
                }
                None => break,
            },
            _ = ticker.tick(), if keepalive.is_some() && connected => {
                connected = tx.send(Ok(frame(0, &json!({"event": {"keepalive": {}}})))).await.is_ok();
            }
        }
    }
    let status = child.wait().await;
    sb.processes.lock().unwrap().remove(&pid);
    if !connected {
        return;
    }
    let end = match status {
        Ok(status) => {
            let (code, exited, text) = host::go_status(status);
            let mut end = json!({"status": text});
            if code != 0 {
                end["exitCode"] = json!(code);
            }
            if exited {
                end["exited"] = json!(true);
            }
            if code != 0 {
                end["error"] = json!(text);
            }
            end
        }
        Err(e) => json!({"exitCode": -1, "status": "unknown", "error": e.to_string()}),
    };
    let _ = tx.send(Ok(frame(0, &json!({"event": {"end": end}})))).await;
    let _ = tx.send(Ok(end_frame(None))).await;
}

async fn list(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = unary_body(&headers, &body) {
        return e;
    }
    let processes: Vec<Value> = r
        .sandbox
        .processes
        .lock()
        .unwrap()
        .iter()
        .map(|(pid, p)| {
            let mut v = json!({"config": p.config, "pid": pid});
            if let Some(t) = &p.tag {
                v["tag"] = json!(t);
            }
            v
        })
        .collect();
    axum::Json(json!({"processes": processes})).into_response()
}

fn selected_pid(v: &Value) -> Option<u32> {
    v.get("process")?.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

async fn send_input(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let Some(pid) = selected_pid(&v) else { return connect_error("invalid_argument", "process selector required") };
    let Some(data) = v.get("input").and_then(|i| i.get("stdin")).and_then(Value::as_str) else {
        return connect_error("invalid_argument", "stdin input required");
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return connect_error("invalid_argument", "bad base64");
    };
    let stdin = r.sandbox.processes.lock().unwrap().get_mut(&pid).map(|p| p.stdin.take());
    let Some(stdin) = stdin else { return connect_error("not_found", &format!("process with pid {pid} not found")) };
    let Some(mut stdin) = stdin else {
        return connect_error("failed_precondition", "stdin is not enabled or already closed");
    };
    let result = stdin.write_all(&bytes).await;
    if let Some(p) = r.sandbox.processes.lock().unwrap().get_mut(&pid) {
        p.stdin = Some(stdin);
    }
    match result {
        Ok(()) => axum::Json(json!({})).into_response(),
        Err(e) => connect_error("internal", &format!("error writing to stdin: {e}")),
    }
}

async fn close_stdin(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let Some(pid) = selected_pid(&v) else { return connect_error("invalid_argument", "process selector required") };
    match r.sandbox.processes.lock().unwrap().get_mut(&pid) {
        Some(p) => {
            p.stdin = None;
            axum::Json(json!({})).into_response()
        }
        None => connect_error("not_found", &format!("process with pid {pid} not found")),
    }
}

async fn send_signal(axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let v = match unary_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let Some(pid) = selected_pid(&v) else { return connect_error("invalid_argument", "process selector required") };
    let signal = match v.get("signal") {
        Some(Value::String(s)) if s == "SIGNAL_SIGKILL" => libc::SIGKILL,
        Some(Value::String(s)) if s == "SIGNAL_SIGTERM" => libc::SIGTERM,
        Some(Value::Number(n)) if n.as_i64() == Some(9) => libc::SIGKILL,
        Some(Value::Number(n)) if n.as_i64() == Some(15) => libc::SIGTERM,
        _ => return connect_error("invalid_argument", "invalid signal"),
    };
    if !r.sandbox.processes.lock().unwrap().contains_key(&pid) {
        return connect_error("not_found", &format!("process with pid {pid} not found"));
    }
    host::kill(pid, signal);
    axum::Json(json!({})).into_response()
}
