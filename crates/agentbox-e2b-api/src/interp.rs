//! The code interpreter (port 49999 by header): `POST /execute` answering NDJSON lines, and `/contexts`, on
//! agentbox-tools' stateful code contexts (a long-lived interpreter per context inside the sandbox).

use std::time::SystemTime;

use agentbox_e2b_wire::wire::{ExecuteLine, ExecuteRequest};
use agentbox_tools::ToolContext;
use agentbox_tools::TypedTool as _;
use agentbox_tools::code::{
    CodeContextInput, CodeContextTool, CodeLanguage, ContextAction, ContextInfo, RunCodeInput, RunCodeTool,
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

async fn execute(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, true)?;
    let request: ExecuteRequest = parse(&body, "execute")?;
    if request.env_vars.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(E2bApiError::BadRequest(
            "per-execution env_vars are not supported: code contexts keep one interpreter; set envs when creating \
             the sandbox, or set os.environ in the code"
                .into(),
        ));
    }
    let language = request.language.as_deref().map(language).transpose()?;
    let input = RunCodeInput { code: request.code, language, context_id: request.context_id, timeout_secs: None };
    let out =
        RunCodeTool.run(&tool_context(&state, &sandbox), input).await.map_err(E2bApiError::tool("running the code"))?;
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
    let mut ndjson = Vec::new();
    for line in &lines {
        if serde_json::to_writer(&mut ndjson, line).is_ok() {
            ndjson.push(b'\n');
        }
    }
    let mut response = Response::new(Body::from(ndjson));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
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
    let body: Vec<_> = out.contexts.iter().map(|c| context_body(c, &sandbox.cwd_of(&c.id))).collect();
    Ok(Json(body).into_response())
}

async fn delete_context(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, E2bApiError> {
    let sandbox = state.for_call(&headers, false)?;
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
