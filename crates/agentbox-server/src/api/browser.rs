//! The browser route: one action of the sandbox's headless Chromium (the `browser` tool; see docs/BROWSER.md).

use agentbox_tools::{Tool, ToolContext, ToolError, ToolErrorKind};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::ErrorResponses;
use super::extract::{ApiJson, RunIdPath};
use super::types::RunIdParam;
use crate::AppState;
use crate::error::ApiError;

/// Runs one browser action in the run's sandbox.
///
/// The body is the `browser` tool's input: an `action` and that action's fields, such as
/// `{"action": "navigate", "url": "http://127.0.0.1:8000/"}`, `{"action": "snapshot"}` or
/// `{"action": "click", "ref": "e12"}`. Actions: navigate, back, forward, reload, click, type, press,
/// select, screenshot, extract, evaluate, snapshot, wait_for, scroll, set_viewport, tabs, downloads,
/// close. Chromium runs inside the sandbox, started on the first call and reused; create the sandbox
/// with the `browser` preset.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/browser",
    operation_id = "browserAction",
    tag = "execution",
    params(RunIdParam),
    request_body(content = Object, description = "The browser tool's input: `action` and its fields", content_type = "application/json"),
    responses((status = 200, description = "The action's result", body = Object), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn browser_action(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiJson(input): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    state.manager.get(&run)?;
    let ctx = ToolContext::new(state.manager.clone(), run);
    state.browser.call(&ctx, input).await.map(Json).map_err(tool_error)
}

/// A failed browser action as an API error.
fn tool_error(e: ToolError) -> ApiError {
    let (status, code) = match e.kind {
        ToolErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_request"),
        ToolErrorKind::NotFound | ToolErrorKind::UnknownTool => (StatusCode::NOT_FOUND, "not_found"),
        ToolErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ToolErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ToolErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        ToolErrorKind::LimitExceeded => (StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded"),
        ToolErrorKind::Unsupported | ToolErrorKind::NotConfigured => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
        ToolErrorKind::Failed => (StatusCode::UNPROCESSABLE_ENTITY, "action_failed"),
    };
    ApiError::new(status, code, e.message)
}
