//! The browser route: one action of the sandbox's headless Chromium (the `browser` tool; see docs/BROWSER.md).

use agentbox_tools::browser::BrowserTool;
use std::sync::OnceLock;

use agentbox_tools::{Tool, ToolContext, ToolErrorKind};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

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
/// with the `browser` preset. A body that doesn't match the schema is 400; one that does but that the tool
/// can't act on (a click on no element, a selector the page can't parse) is 422.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/browser",
    operation_id = "browserAction",
    tag = "execution",
    params(RunIdParam),
    // Replaced by the tool's own input schema in the served document (`publish_input_schema`).
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
    check_input(&state.browser, &input)?;
    let ctx = ToolContext::new(state.manager.clone(), run);
    state.browser.call(&ctx, input).await.map(Json).map_err(|e| match e.kind {
        // The body matches the published schema, so what the tool still refuses (a click with neither `ref` nor
        // `selector`, a selector the page can't parse) is well-formed input it can't act on.
        ToolErrorKind::InvalidInput => ApiError::from_operation(agentbox_core::Error::InvalidRequest(e.message)),
        _ => tool_error(e),
    })
}

/// The browser tool's input schema, compiled on first use.
static INPUT_VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();

/// Checks a body against the published input schema, so that 400 means exactly "not what the document allows".
fn check_input(tool: &BrowserTool, input: &Value) -> Result<(), ApiError> {
    let validator = INPUT_VALIDATOR
        .get_or_init(|| jsonschema::validator_for(&tool.input_schema()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the browser tool's input schema does not compile ({e}); report this as a bug"),
            )
        })?;
    let problems: Vec<String> = validator
        .iter_errors(input)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "invalid input for browser: {}; the body is the browser tool's input (`BrowserInput` in /openapi.json)",
        problems.join("; ")
    )))
}

/// The name of the browser route's body in the document's components.
const INPUT_SCHEMA: &str = "BrowserInput";

/// Publishes the `browser` tool's own input schema as the browser route's body.
///
/// The route has one fixed input, the tool's, so the document says exactly what the tool accepts (an `action`
/// and the fields that action takes) rather than "any object": a body the schema allows is one the tool
/// parses. The schema is the tool's JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) as the tool
/// lists it in `GET /api/tools`, without its `$schema`, which the document's dialect replaces.
pub(super) fn publish_input_schema(doc: &mut Value, tool: &BrowserTool) {
    let mut schema = tool.input_schema();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    doc["components"]["schemas"][INPUT_SCHEMA] = schema;
    let body = &mut doc["paths"]["/api/sandboxes/{run_id}/browser"]["post"]["requestBody"];
    body["content"]["application/json"]["schema"] = json!({"$ref": format!("#/components/schemas/{INPUT_SCHEMA}")});
    body["required"] = json!(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_against_the_published_schema() {
        let tool = BrowserTool::default();
        let refused = |body: Value| check_input(&tool, &body).unwrap_err().message().to_owned();
        assert!(refused(json!({})).contains("action"), "{}", refused(json!({})));
        assert!(refused(json!({"action": "fly"})).contains("fly"));
        assert!(refused(json!({"action": "click", "url": "http://x/"})).contains("url"));
        check_input(&tool, &json!({"action": "navigate", "url": "http://127.0.0.1:8000/"})).unwrap();
        check_input(&tool, &json!({"action": "click", "ref": "e3"})).unwrap();
    }
}
