//! The code interpreter of code-interpreter templates: `GET /health`, `POST|GET /contexts`,
//! `POST /contexts/{id}/restart`, `DELETE /contexts/{id}` and `POST /execute` streaming NDJSON (`stdout`, `stderr`,
//! `result`, `error`, `number_of_executions`, always ending with `end_of_execution`).
//!
//! Each execution runs a real interpreter process: Python through a driver that, like a Jupyter kernel, reports the
//! value of a final expression as a result and an exception as an error event; JavaScript through `vm`; TypeScript
//! compiled to JavaScript (with the transformer the local backend uses), then as JavaScript; Bash plainly.
//!
//! Request bodies are JSON with `Content-Type: application/json`, as the interpreter's FastAPI server parses
//! them: anything else (another content type, malformed JSON, a field of the wrong type) is refused with 422.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::envd::Routed;
use super::{CodeContext, Sandbox, State, host};

type S = Extract<Arc<State>>;
type R = axum::Extension<Routed>;

const PYTHON_DRIVER: &str = r#"import ast, json, sys, traceback
src, events = sys.argv[1], sys.argv[2]
code = open(src).read()
sys.argv = ['<cell>']
def emit(obj):
    with open(events, 'a') as f:
        f.write(json.dumps(obj) + '\n')
try:
    tree = ast.parse(code, '<cell>')
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    scope = {'__name__': '__main__'}
    exec(compile(tree, '<cell>', 'exec'), scope)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), '<cell>', 'eval'), scope)
        if value is not None:
            emit({'type': 'result', 'text': repr(value), 'is_main_result': True})
except BaseException as e:
    sys.stdout.flush()
    emit({'type': 'error', 'name': type(e).__name__, 'value': str(e), 'traceback': traceback.format_exc()})
"#;

const JS_DRIVER: &str = r#"const fs = require('fs'); const vm = require('vm');
const [src, events] = process.argv.slice(process.argv.length - 2);
const emit = (o) => fs.appendFileSync(events, JSON.stringify(o) + '\n');
try {
  const value = vm.runInThisContext(fs.readFileSync(src, 'utf8'), { filename: '<cell>' });
  if (value !== undefined) emit({ type: 'result', text: String(value), is_main_result: true });
} catch (e) {
  emit({ type: 'error', name: (e && e.name) || 'Error', value: (e && e.message) || String(e), traceback: (e && e.stack) || String(e) });
}
"#;

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}/restart", post(restart_context))
        .route("/contexts/{id}", delete(remove_context))
        .route("/execute", post(execute))
}

fn normalize_language(l: Option<&str>) -> String {
    match l.map(|l| l.trim().to_ascii_lowercase()) {
        None => "python".into(),
        Some(l) if l.is_empty() => "python".into(),
        Some(l) if l == "js" => "javascript".into(),
        Some(l) if l == "ts" => "typescript".into(),
        Some(l) => l,
    }
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

fn supported(language: &str) -> bool {
    matches!(language, "python" | "javascript" | "typescript" | "bash")
}

/// The JSON object of a request body; 422 (FastAPI's validation error) for another content type or malformed JSON.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ct.split(';').next().map(str::trim) != Some("application/json") {
        return Err(text(StatusCode::UNPROCESSABLE_ENTITY, &format!("expected application/json, got {ct:?}")));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(text(StatusCode::UNPROCESSABLE_ENTITY, &format!("expected a JSON object, got {other}"))),
        Err(e) => Err(text(StatusCode::UNPROCESSABLE_ENTITY, &format!("malformed JSON: {e}"))),
    }
}

/// An optional string field: absent or null is `None`; any other type is a 422.
fn optional_str(v: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(text(StatusCode::UNPROCESSABLE_ENTITY, &format!("{key} must be a string, got {other}"))),
    }
}

fn new_context(state: &State, sb: &Sandbox, language: &str, cwd: &str) -> Result<Value, Response> {
    if !supported(language) {
        return Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Failed to create context: No such kernel named {language}"),
        ));
    }
    let id = format!("ctx-{:08x}", state.next());
    sb.contexts
        .lock()
        .unwrap()
        .insert(id.clone(), CodeContext { language: language.to_owned(), cwd: cwd.to_owned(), running: None });
    Ok(json!({"id": id, "language": language, "cwd": cwd}))
}

async fn create_context(Extract(state): S, axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let fields = json_body(&headers, &body).and_then(|v| Ok((optional_str(&v, "language")?, optional_str(&v, "cwd")?)));
    let (language, cwd) = match fields {
        Ok(f) => f,
        Err(e) => return e,
    };
    let language = normalize_language(language.as_deref());
    let cwd = cwd.unwrap_or_else(|| "/home/user".to_owned());
    match new_context(&state, &r.sandbox, &language, &cwd) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e,
    }
}

async fn list_contexts(axum::Extension(r): R) -> Response {
    let all: Vec<Value> = r
        .sandbox
        .contexts
        .lock()
        .unwrap()
        .iter()
        .map(|(id, c)| json!({"id": id, "language": c.language, "cwd": c.cwd}))
        .collect();
    axum::Json(all).into_response()
}

async fn restart_context(axum::Extension(r): R, Path(id): Path<String>) -> Response {
    let running = match r.sandbox.contexts.lock().unwrap().get_mut(&id) {
        Some(c) => c.running.take(),
        None => return text(StatusCode::NOT_FOUND, &format!("Context {id} not found")),
    };
    if let Some(pid) = running {
        host::kill_tree(pid);
    }
    StatusCode::OK.into_response()
}

async fn remove_context(axum::Extension(r): R, Path(id): Path<String>) -> Response {
    match r.sandbox.contexts.lock().unwrap().remove(&id) {
        Some(c) => {
            if let Some(pid) = c.running {
                host::kill_tree(pid);
            }
            StatusCode::OK.into_response()
        }
        None => text(StatusCode::NOT_FOUND, &format!("Context {id} not found")),
    }
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

async fn execute(Extract(state): S, axum::Extension(r): R, headers: HeaderMap, body: Bytes) -> Response {
    let fields = json_body(&headers, &body).and_then(|v| {
        Ok((optional_str(&v, "code")?, optional_str(&v, "context_id")?, optional_str(&v, "language")?, v))
    });
    let (code, context_id, language, v) = match fields {
        Ok(f) => f,
        Err(e) => return e,
    };
    let Some(code) = code else {
        return text(StatusCode::UNPROCESSABLE_ENTITY, "code is required");
    };
    if context_id.is_some() && language.is_some() {
        return text(StatusCode::BAD_REQUEST, "Only one of context_id or language can be provided");
    }
    let sb = r.sandbox.clone();
    let context_id = match context_id {
        Some(id) => {
            if !sb.contexts.lock().unwrap().contains_key(&id) {
                return text(StatusCode::NOT_FOUND, &format!("Context {id} not found"));
            }
            id
        }
        None => match new_context(&state, &sb, &normalize_language(language.as_deref()), "/home/user") {
            Ok(c) => c["id"].as_str().unwrap().to_owned(),
            Err(e) => return e,
        },
    };
    let context = sb.contexts.lock().unwrap().get(&context_id).cloned().unwrap();
    let env_vars: BTreeMap<String, String> = v
        .get("env_vars")
        .and_then(Value::as_object)
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();

    let n = state.next();
    let dir = "/tmp/.fake-kernel";
    let ext = match context.language.as_str() {
        "python" => "py",
        "javascript" | "typescript" => "js",
        _ => "sh",
    };
    let code = if context.language == "typescript" {
        // Code that does not compile throws the compiler's message, as a kernel reports a syntax error.
        match agentbox_local::typescript::to_javascript(&code) {
            Ok(js) => js.code,
            Err(e) => format!("throw new SyntaxError({});", json!(e.to_string())),
        }
    } else {
        code
    };
    let (src, events, driver) =
        (format!("{dir}/cell-{n}.{ext}"), format!("{dir}/events-{n}.jsonl"), format!("{dir}/driver-{n}"));
    std::fs::create_dir_all(sb.fs.host_path(dir)).unwrap();
    std::fs::write(sb.fs.host_path(&src), &code).unwrap();
    let (cmd, args): (&str, Vec<String>) = match context.language.as_str() {
        "python" => {
            std::fs::write(sb.fs.host_path(&driver), PYTHON_DRIVER).unwrap();
            ("python3", vec![driver.clone(), src.clone(), events.clone()])
        }
        "javascript" | "typescript" => {
            std::fs::write(sb.fs.host_path(&driver), JS_DRIVER).unwrap();
            ("node", vec![driver.clone(), src.clone(), events.clone()])
        }
        _ => ("/bin/bash", vec![src.clone()]),
    };
    let mut env = host::base_env(&sb.env_vars);
    env.extend(env_vars);
    let cwd = if sb.fs.host_path(&context.cwd).is_dir() { context.cwd.clone() } else { "/home/user".to_owned() };
    let mut child = match host::spawn(&sb.fs, cmd, &args, &env, &cwd, false) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot start the kernel: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    if let Some(c) = sb.contexts.lock().unwrap().get_mut(&context_id) {
        c.running = Some(pid);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        let (out_tx, mut out_rx) = mpsc::channel::<(&'static str, Vec<u8>)>(64);
        for (name, pipe) in [
            ("stdout", child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
            ("stderr", child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let out_tx = out_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 || out_tx.send((name, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(out_tx);
        while let Some((name, bytes)) = out_rx.recv().await {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let _ = tx.send(Ok(line(&json!({"type": name, "text": text, "timestamp": now_ms()})))).await;
        }
        let _ = child.wait().await;
        if let Some(c) = sb.contexts.lock().unwrap().get_mut(&context_id) {
            if c.running == Some(pid) {
                c.running = None;
            }
        }
        if let Ok(events) = std::fs::read_to_string(sb.fs.host_path(&events)) {
            for l in events.lines().filter(|l| !l.trim().is_empty()) {
                let _ = tx.send(Ok(Bytes::from(format!("{l}\n")))).await;
            }
        }
        for p in [&src, &events, &driver] {
            let _ = std::fs::remove_file(sb.fs.host_path(p));
        }
        let _ = tx.send(Ok(line(&json!({"type": "number_of_executions", "execution_count": n})))).await;
        let _ = tx.send(Ok(line(&json!({"type": "end_of_execution"})))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap()
}
