//! The code interpreter (port 49999 by header): `POST /execute` answering NDJSON lines, and `/contexts`, on
//! agentbox-tools' stateful code contexts (a long-lived interpreter per context inside the sandbox).

use std::collections::BTreeMap;
use std::time::SystemTime;

use agentbox_e2b_wire::wire::{ExecuteLine, ExecuteRequest};
use agentbox_tools::ToolContext;
use agentbox_tools::TypedTool as _;
use agentbox_tools::code::{
    CodeContextInput, CodeContextTool, CodeLanguage, ContextAction, ContextInfo, RunCodeInput, RunCodeOutput,
    RunCodeTool,
};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;

use crate::state::{E2bSandbox, Shared, rfc3339};
use crate::{E2bApiError, fs, no_content};

/// How long `/execute` waits to answer with the outcome's own status before it starts a 200 stream.
const EARLY_ANSWER: std::time::Duration = std::time::Duration::from_millis(500);

/// Largest `/execute` or `/contexts` body.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The interpreter's routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", delete(delete_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn no_route(request: Request) -> E2bApiError {
    E2bApiError::NotFound(format!(
        "code interpreter route {} {} is not served by agentboxd's E2B API; see docs/E2B-API.md",
        request.method(),
        request.uri().path()
    ))
}

async fn health(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, E2bApiError> {
    state.for_call(&headers, false)?;
    Ok(no_content())
}

/// A language of the code interpreter, by E2B's names.
fn language(name: &str) -> Result<CodeLanguage, E2bApiError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "python" | "python3" => Ok(CodeLanguage::Python),
        "js" | "javascript" | "node" => Ok(CodeLanguage::Javascript),
        "ts" | "typescript" => Ok(CodeLanguage::Typescript),
        "bash" | "sh" => Ok(CodeLanguage::Bash),
        other => Err(E2bApiError::BadRequest(format!(
            "language {other:?} is not supported: use python, javascript, typescript or bash"
        ))),
    }
}

fn context_body(info: &ContextInfo, cwd: &str) -> serde_json::Value {
    serde_json::json!({"id": info.id, "language": info.language, "cwd": cwd})
}

fn tool_context(state: &Shared, sandbox: &E2bSandbox) -> ToolContext {
    ToolContext::new(state.manager.clone(), sandbox.run.clone())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, E2bApiError> {
    serde_json::from_slice(body).map_err(|e| E2bApiError::BadRequest(format!("invalid {what} body: {e}")))
}

/// Runs code through the code tool.
async fn run(
    ctx: &ToolContext,
    code: String,
    language: Option<CodeLanguage>,
    context_id: Option<String>,
) -> Result<RunCodeOutput, E2bApiError> {
    let input = RunCodeInput { code, language, context_id, timeout_secs: None };
    RunCodeTool.run(ctx, input).await.map_err(E2bApiError::tool("running the code"))
}

fn check_env_names(env: &BTreeMap<String, String>) -> Result<(), E2bApiError> {
    for name in env.keys() {
        let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(E2bApiError::BadRequest(format!(
                "env_vars name {name:?} is invalid: use letters, digits and '_', not starting with a digit"
            )));
        }
    }
    Ok(())
}

/// Code that sets `env` in a stateful context, remembering what it replaces, and code that puts it back.
fn env_around(language: CodeLanguage, env: &BTreeMap<String, String>) -> (String, String) {
    let json = serde_json::to_string(env).unwrap_or_else(|_| "{}".into());
    match language {
        CodeLanguage::Python => {
            // A JSON string literal is a Python string literal too.
            let literal = serde_json::to_string(&json).unwrap_or_else(|_| "\"{}\"".into());
            (
                format!(
                    "import os as __ab_os, json as __ab_json\n__ab_env = __ab_json.loads({literal})\n\
                     __ab_saved = {{k: __ab_os.environ.get(k) for k in __ab_env}}\n__ab_os.environ.update(__ab_env)"
                ),
                "for __ab_k, __ab_v in __ab_saved.items():\n    if __ab_v is None:\n        __ab_os.environ.pop(__ab_k, None)\n    \
                 else:\n        __ab_os.environ[__ab_k] = __ab_v"
                    .to_owned(),
            )
        }
        _ => (
            format!(
                "globalThis.__abEnv = {json}; globalThis.__abSaved = Object.fromEntries(Object.keys(globalThis.__abEnv)\
                 .map((k) => [k, process.env[k]])); Object.assign(process.env, globalThis.__abEnv); void 0"
            ),
            "for (const [k, v] of Object.entries(globalThis.__abSaved)) { if (v === undefined) delete process.env[k]; \
             else process.env[k] = v; } void 0"
                .to_owned(),
        ),
    }
}

/// `env` set ahead of stateless code.
fn env_prefix(language: CodeLanguage, env: &BTreeMap<String, String>) -> String {
    match language {
        CodeLanguage::Bash => env.iter().map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', r"'\''"))).collect(),
        _ => format!("Object.assign(process.env, {});\n", serde_json::to_string(env).unwrap_or_else(|_| "{}".into())),
    }
}

async fn execute(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, true)?;
    let request: ExecuteRequest = parse(&body, "execute")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(execute_code(&state, &sandbox, request).await);
    });
    let mut done_rx = done_rx;
    // A quick answer (or a refusal, such as an unknown context) comes with its own status. Code that runs longer
    // gets its headers now, as E2B's interpreter streams them, so a client can time it out and restart its context.
    let early = tokio::select! {
        r = &mut done_rx => Some(r),
        () = tokio::time::sleep(EARLY_ANSWER) => None,
    };
    let body = match early {
        Some(r) => Body::from(ndjson(r.map_err(|_| E2bApiError::Internal("the execution was dropped".into()))??)),
        None => {
            let stream = futures_util::stream::once(async move {
                let out = match done_rx.await {
                    Ok(Ok(out)) => ndjson(out),
                    Ok(Err(e)) => failed(&e),
                    Err(_) => failed(&E2bApiError::Internal("the execution was dropped".into())),
                };
                Ok::<_, std::convert::Infallible>(Bytes::from(out))
            });
            Body::from_stream(stream)
        }
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// An execution that failed after the response began: an error line, then the end.
fn failed(e: &E2bApiError) -> Vec<u8> {
    let lines = [
        ExecuteLine::Error { name: "ExecutionError".into(), value: e.to_string(), traceback: String::new() },
        ExecuteLine::EndOfExecution,
    ];
    write_lines(&lines)
}

fn write_lines(lines: &[ExecuteLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if serde_json::to_writer(&mut out, line).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

async fn execute_code(
    state: &Shared,
    sandbox: &E2bSandbox,
    request: ExecuteRequest,
) -> Result<RunCodeOutput, E2bApiError> {
    let env = request.env_vars.unwrap_or_default();
    check_env_names(&env)?;
    let explicit = request.language.as_deref().map(language).transpose()?;
    // A bash or typescript context keeps no state: it names its language.
    let (lang, context_id) = match request.context_id {
        Some(id) => match sandbox.stateless_context(&id) {
            Some(l) => (Some(l), None),
            None => (explicit, Some(id)),
        },
        None => (explicit, None),
    };
    let ctx = tool_context(state, sandbox);
    let out = if env.is_empty() {
        run(&ctx, request.code, lang, context_id).await?
    } else if context_id.is_some() || lang.unwrap_or(CodeLanguage::Python).has_contexts() {
        // Per-execution variables in a stateful context: set, run, put back, in that context.
        let context_lang = match &context_id {
            Some(_) => {
                let probe = run(&ctx, "1".into(), None, context_id.clone()).await?;
                probe.language
            }
            None => lang.unwrap_or(CodeLanguage::Python),
        };
        let (set, restore) = env_around(context_lang, &env);
        let prepared = run(&ctx, set, lang, context_id.clone()).await?;
        if let Some(e) = prepared.error {
            return Err(E2bApiError::Internal(format!("setting env_vars failed: {}: {}", e.name, e.value)));
        }
        let out = run(&ctx, request.code, lang, context_id.clone()).await;
        let _ = run(&ctx, restore, lang, context_id).await;
        out?
    } else {
        let l = lang.unwrap_or(CodeLanguage::Python);
        run(&ctx, env_prefix(l, &env) + &request.code, Some(l), None).await?
    };
    Ok(out)
}

/// The NDJSON lines of a finished execution.
fn ndjson(out: RunCodeOutput) -> Vec<u8> {
    let now = rfc3339(SystemTime::now());
    let mut lines = Vec::new();
    if !out.stdout.is_empty() {
        lines.push(ExecuteLine::Stdout { text: out.stdout, timestamp: now.clone() });
    }
    if !out.stderr.is_empty() {
        lines.push(ExecuteLine::Stderr { text: out.stderr, timestamp: now });
    }
    for result in out.results {
        let mut map = match serde_json::to_value(&result) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        map.remove("truncated");
        map.remove("files");
        lines.push(ExecuteLine::Result(map));
    }
    if let Some(error) = out.error {
        lines.push(ExecuteLine::Error { name: error.name, value: error.value, traceback: error.traceback });
    } else if out.timed_out {
        lines.push(ExecuteLine::Error {
            name: "TimeoutError".into(),
            value: "the execution hit its time limit and was interrupted".into(),
            traceback: String::new(),
        });
    } else if let Some(code) = out.exit_code.filter(|c| *c != 0) {
        lines.push(ExecuteLine::Error {
            name: "ExitCodeError".into(),
            value: format!("the code exited with status {code}"),
            traceback: String::new(),
        });
    }
    lines.push(ExecuteLine::EndOfExecution);
    write_lines(&lines)
}

#[derive(Debug, Default, Deserialize)]
struct NewContext {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

async fn create_context(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, false)?;
    let request: NewContext =
        if body.iter().all(u8::is_ascii_whitespace) { NewContext::default() } else { parse(&body, "context")? };
    let lang = language(request.language.as_deref().unwrap_or("python"))?;
    if !lang.has_contexts() {
        let id = format!("ctx-{}-{}", lang.as_str(), crate::state::random_hex(6)?);
        sandbox.add_stateless_context(&id, lang)?;
        let cwd = fs::absolute(request.cwd.as_deref().unwrap_or(fs::HOME));
        if cwd != fs::HOME {
            sandbox.remember_cwd(&id, &cwd);
        }
        let info = ContextInfo { id, language: lang.as_str().to_owned(), status: "alive".into() };
        return Ok(Json(context_body(&info, &cwd)).into_response());
    }
    let ctx = tool_context(&state, &sandbox);
    let input = CodeContextInput { action: ContextAction::Create, language: Some(lang), context_id: None };
    let out = CodeContextTool.run(&ctx, input).await.map_err(E2bApiError::tool("creating the context"))?;
    let info = out.contexts.into_iter().next().ok_or_else(|| E2bApiError::Internal("no context was created".into()))?;
    let cwd = fs::absolute(request.cwd.as_deref().unwrap_or(fs::HOME));
    if cwd != fs::HOME {
        let quoted = serde_json::to_string(&cwd).unwrap_or_default();
        let code = match lang {
            CodeLanguage::Python => {
                format!("import os as __agentbox_os; __agentbox_os.chdir({quoted}); del __agentbox_os")
            }
            _ => format!("process.chdir({quoted})"),
        };
        let input = RunCodeInput { code, language: None, context_id: Some(info.id.clone()), timeout_secs: Some(30) };
        let out = RunCodeTool.run(&ctx, input).await.map_err(E2bApiError::tool("entering the context's cwd"))?;
        if let Some(e) = out.error {
            return Err(E2bApiError::BadRequest(format!("cwd {cwd}: {}: {}", e.name, e.value)));
        }
        sandbox.remember_cwd(&info.id, &cwd);
    }
    Ok(Json(context_body(&info, &cwd)).into_response())
}

async fn list_contexts(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, false)?;
    let input = CodeContextInput { action: ContextAction::List, language: None, context_id: None };
    let out = CodeContextTool
        .run(&tool_context(&state, &sandbox), input)
        .await
        .map_err(E2bApiError::tool("listing the contexts"))?;
    let mut body: Vec<_> = out.contexts.iter().map(|c| context_body(c, &sandbox.cwd_of(&c.id))).collect();
    for (id, lang) in sandbox.stateless_contexts() {
        let info = ContextInfo { id: id.clone(), language: lang.as_str().to_owned(), status: "alive".into() };
        body.push(context_body(&info, &sandbox.cwd_of(&id)));
    }
    Ok(Json(body).into_response())
}

async fn delete_context(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, false)?;
    if sandbox.remove_stateless_context(&id) {
        sandbox.forget_cwd(&id);
        return Ok(no_content());
    }
    let input = CodeContextInput { action: ContextAction::Delete, language: None, context_id: Some(id.clone()) };
    CodeContextTool
        .run(&tool_context(&state, &sandbox), input)
        .await
        .map_err(E2bApiError::tool("removing the context"))?;
    sandbox.forget_cwd(&id);
    Ok(no_content())
}

async fn restart_context(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, false)?;
    if sandbox.stateless_context(&id).is_some() {
        return Ok(no_content());
    }
    let input = CodeContextInput { action: ContextAction::Restart, language: None, context_id: Some(id.clone()) };
    CodeContextTool
        .run(&tool_context(&state, &sandbox), input)
        .await
        .map_err(E2bApiError::tool("restarting the context"))?;
    sandbox.forget_cwd(&id);
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_by_e2b_names() {
        assert_eq!(language("js").unwrap(), CodeLanguage::Javascript);
        assert_eq!(language("Python").unwrap(), CodeLanguage::Python);
        assert!(language("r").unwrap_err().to_string().contains("python"));
    }
}
