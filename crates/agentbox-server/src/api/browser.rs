//! The browser route: one action of the sandbox's headless Chromium (the `browser` tool; see docs/BROWSER.md).

use agentbox_tools::{Tool, ToolContext};
use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::ErrorResponses;
use super::extract::RunIdParam;
use super::extract::{ApiJson, RunIdPath};
use super::tools::tool_error;
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
