//! The agent tool routes: the tool registry's list, and one call of a tool on a run's sandbox.

use agentbox_core::RunId;
use agentbox_tools::search::{SearchConfig, WebSearch};
use agentbox_tools::{ToolContext, ToolError, ToolErrorKind, ToolRegistry};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::ApiJson;
use crate::error::ApiError;
use crate::{AppState, ServerError};

/// The server's tools: shell, code, files, web search (providers from the environment: `TAVILY_API_KEY`,
/// `SERPER_API_KEY`, `SEARXNG_URL`, `AGENTBOX_TAVILY_URL`, `AGENTBOX_SERPER_URL`) and, with the `browser`
/// feature, `browser` (the same browsers as the browser route).
///
/// # Errors
/// [`ServerError::Config`] when the search settings in the environment are invalid.
pub(crate) fn registry(
    #[cfg(feature = "browser")] browser: &agentbox_tools::browser::BrowserTool,
) -> Result<ToolRegistry, ServerError> {
    let search = WebSearch::new(SearchConfig::from_env())
        .map_err(|e| ServerError::Config(format!("web search settings in the environment: {e}")))?;
    #[cfg_attr(not(feature = "browser"), allow(unused_mut))]
    let mut tools = ToolRegistry::standard(search);
    #[cfg(feature = "browser")]
    tools.register(browser.clone());
    Ok(tools)
}

/// One tool as a model sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolView {
    /// Unique name, used in `POST /api/sandboxes/{run_id}/tools/{name}`.
    pub name: String,
    /// What it does and when to use it.
    pub description: String,
    /// JSON Schema (draft 2020-12) of the input the tool accepts.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// Whether the tool works on the sandbox (false for `web_search`, which only needs the run to exist).
    pub needs_sandbox: bool,
}

/// `GET /api/tools`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolList {
    /// The tools, by name.
    pub tools: Vec<ToolView>,
}

/// The run id and tool name in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: the handler parses the path itself
pub struct ToolPathParams {
    /// The run's id.
    #[param(pattern = r"^(?!create$)[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$", min_length = 1, max_length = 128)]
    run_id: String,
    /// The tool's name, as listed by `GET /api/tools`.
    #[param(min_length = 1, max_length = 128, example = "shell")]
    name: String,
}

/// Lists the tools: names, descriptions and input schemas.
#[utoipa::path(
    get,
    path = "/api/tools",
    operation_id = "listTools",
    tag = "tools",
    responses((status = 200, description = "The tools, by name", body = ToolList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_tools(State(state): State<AppState>) -> Json<ToolList> {
    let tools = state
        .tools
        .specs()
        .into_iter()
        .map(|s| {
            let needs_sandbox = state.tools.get(&s.name).is_none_or(|t| t.needs_sandbox());
            ToolView { name: s.name, description: s.description, input_schema: s.input_schema, needs_sandbox }
        })
        .collect();
    Json(ToolList { tools })
}

/// Calls one tool on the run's sandbox with the body as the tool's input.
///
/// The body is the tool's input, a JSON object matching its `input_schema` from `GET /api/tools`,
/// such as `{"command": "ls -la"}` for `shell` or `{"code": "x = 21\nx * 2"}` for `run_code`. The
/// answer is the tool's output. The run must exist, for every tool: `web_search` does not use the
/// sandbox, but is called on behalf of a run like the others. A tool's failure is an error response
/// whose status follows its kind: 400 for input the tool refuses, 404 for an unknown tool or a missing
/// file, 422 for a failed operation or an unconfigured feature (web search without a provider), 504
/// for a time limit.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/tools/{name}",
    operation_id = "callTool",
    tag = "tools",
    params(ToolPathParams),
    request_body(content = Object, description = "The tool's input (see its `input_schema`)", content_type = "application/json"),
    responses((status = 200, description = "The tool's output", body = Object), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn call_tool(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    ApiJson(input): ApiJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let Path((run, name)) =
        path.map_err(|e| ApiError::bad_request(format!("invalid path parameters: {}", e.body_text())))?;
    let run = RunId::parse(&run)?;
    state.manager.get(&run)?;
    if state.tools.get(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "no tool named {name:?}; available: {} (GET /api/tools lists them)",
            state.tools.names().join(", ")
        )));
    }
    let ctx = ToolContext::new(state.manager.clone(), run);
    state.tools.call(&name, &ctx, Value::Object(input)).await.map(Json).map_err(tool_error)
}

/// A failed tool call as an API error: the status follows the failure's kind.
pub(crate) fn tool_error(e: ToolError) -> ApiError {
    let (status, code) = match e.kind {
        ToolErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_request"),
        ToolErrorKind::NotFound | ToolErrorKind::UnknownTool => (StatusCode::NOT_FOUND, "not_found"),
        ToolErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ToolErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ToolErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        ToolErrorKind::LimitExceeded => (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"),
        ToolErrorKind::Unsupported => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
        ToolErrorKind::NotConfigured => (StatusCode::UNPROCESSABLE_ENTITY, "not_configured"),
        ToolErrorKind::Failed => (StatusCode::UNPROCESSABLE_ENTITY, "action_failed"),
    };
    ApiError::new(status, code, e.message)
}
