//! The tools as MCP lists them, and tool results as MCP returns them.

use std::sync::Arc;

use agentbox_tools::{ToolError, ToolRegistry, schema_of};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::sandboxes::{
    CREATE_DESCRIPTION, CreateInput, DESTROY_DESCRIPTION, EGRESS_DESCRIPTION, EgressInput, LIST_DESCRIPTION, ListInput,
    METRICS_DESCRIPTION, PAUSE_DESCRIPTION, RESTORE_DESCRIPTION, RESUME_DESCRIPTION, RunInput, SANDBOX_CREATE,
    SANDBOX_DESTROY, SANDBOX_EGRESS, SANDBOX_LIST, SANDBOX_METRICS, SANDBOX_PAUSE, SANDBOX_RESTORE, SANDBOX_RESUME,
    SANDBOX_SNAPSHOT, SANDBOX_START, SANDBOX_STOP, SNAPSHOT_DELETE, SNAPSHOT_DELETE_DESCRIPTION, SNAPSHOT_DESCRIPTION,
    SNAPSHOT_LIST, SNAPSHOT_LIST_DESCRIPTION, START_DESCRIPTION, STOP_DESCRIPTION, SnapshotInput, SnapshotNameInput,
};

/// The `run_id` property added to every tool that works in a sandbox.
pub(crate) const RUN_ID: &str = "run_id";

const RUN_ID_DESCRIPTION: &str = "Sandbox to work in, as named in sandbox_create. Leave it out to use this session's \
    default sandbox (created on first use, destroyed when the session ends).";

/// The JSON Schema pattern of a run id (see `agentbox_core::RunId::parse`).
const RUN_ID_PATTERN: &str = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$";

fn object(schema: Value) -> JsonObject {
    match schema {
        Value::Object(mut map) => {
            map.entry("type").or_insert_with(|| json!("object"));
            map
        }
        _ => JsonObject::from_iter([("type".to_owned(), json!("object"))]),
    }
}

/// Adds the optional `run_id` property to a tool's input schema.
fn with_run_id(schema: Value) -> JsonObject {
    let mut map = object(schema);
    let props = map.entry("properties").or_insert_with(|| json!({}));
    if let Some(props) = props.as_object_mut() {
        props.insert(
            RUN_ID.to_owned(),
            json!({"type": "string", "description": RUN_ID_DESCRIPTION, "pattern": RUN_ID_PATTERN}),
        );
    }
    map
}

fn annotations(name: &str) -> Option<ToolAnnotations> {
    let (title, read_only, destructive, open_world) = match name {
        SANDBOX_CREATE => ("Create a sandbox", false, false, false),
        SANDBOX_LIST => ("List sandboxes", true, false, false),
        SANDBOX_DESTROY => ("Destroy a sandbox", false, true, false),
        SANDBOX_METRICS => ("Sandbox resource use", true, false, false),
        SANDBOX_PAUSE => ("Pause a sandbox", false, false, false),
        SANDBOX_RESUME => ("Resume a sandbox", false, false, false),
        SANDBOX_STOP => ("Stop a sandbox, keeping its files", false, false, false),
        SANDBOX_START => ("Start a stopped sandbox", false, false, false),
        SANDBOX_SNAPSHOT => ("Snapshot a sandbox's files", false, false, false),
        SNAPSHOT_LIST => ("List snapshots", true, false, false),
        SNAPSHOT_DELETE => ("Delete a snapshot", false, true, false),
        SANDBOX_EGRESS => ("Sandbox network log", true, false, false),
        "shell" => ("Run a shell command", false, true, true),
        "run_code" => ("Run code", false, true, true),
        "code_context" => ("Manage code contexts", false, true, false),
        "read_file" => ("Read a file", true, false, false),
        "write_file" => ("Write a file", false, true, false),
        "edit_file" => ("Edit a file", false, true, false),
        "list_files" => ("List files", true, false, false),
        "delete_file" => ("Delete a file", false, true, false),
        "upload_file" => ("Upload a file", false, true, false),
        "download_file" => ("Download a file", true, false, false),
        "web_search" => ("Search the web", true, false, true),
        "browser" => ("Use a web browser", false, true, true),
        _ => return None,
    };
    let mut a = ToolAnnotations::with_title(title).read_only(read_only).open_world(open_world);
    if !read_only {
        a = a.destructive(destructive);
    }
    if name == SANDBOX_CREATE {
        a = a.idempotent(true);
    }
    Some(a)
}

fn tool(name: &str, description: &str, schema: JsonObject) -> Tool {
    let mut t = Tool::new(name.to_owned(), description.to_owned(), Arc::new(schema));
    if let Some(a) = annotations(name) {
        t = t.with_annotations(a);
    }
    t
}

/// Every tool served: the sandbox lifecycle tools, then the registry's tools (sorted by name).
pub(crate) fn build(registry: &ToolRegistry) -> Vec<Tool> {
    let mut out = vec![
        tool(SANDBOX_CREATE, CREATE_DESCRIPTION, object(schema_of::<CreateInput>())),
        tool(SANDBOX_LIST, LIST_DESCRIPTION, object(schema_of::<ListInput>())),
        tool(SANDBOX_DESTROY, DESTROY_DESCRIPTION, object(schema_of::<RunInput>())),
        tool(SANDBOX_METRICS, METRICS_DESCRIPTION, object(schema_of::<RunInput>())),
        tool(SANDBOX_PAUSE, PAUSE_DESCRIPTION, object(schema_of::<RunInput>())),
        tool(SANDBOX_RESUME, RESUME_DESCRIPTION, object(schema_of::<RunInput>())),
        tool(SANDBOX_STOP, STOP_DESCRIPTION, object(schema_of::<RunInput>())),
        tool(SANDBOX_START, START_DESCRIPTION, object(schema_of::<RunInput>())),
        tool(SANDBOX_SNAPSHOT, SNAPSHOT_DESCRIPTION, object(schema_of::<SnapshotInput>())),
        tool(SANDBOX_RESTORE, RESTORE_DESCRIPTION, object(schema_of::<SnapshotInput>())),
        tool(SNAPSHOT_LIST, SNAPSHOT_LIST_DESCRIPTION, object(schema_of::<ListInput>())),
        tool(SNAPSHOT_DELETE, SNAPSHOT_DELETE_DESCRIPTION, object(schema_of::<SnapshotNameInput>())),
        tool(SANDBOX_EGRESS, EGRESS_DESCRIPTION, object(schema_of::<EgressInput>())),
    ];
    for spec in registry.specs() {
        if out.iter().any(|t| t.name == spec.name) {
            tracing::warn!(tool = %spec.name, "a registry tool has the name of a sandbox tool; not served");
            continue;
        }
        let needs_sandbox = registry.get(&spec.name).is_none_or(|t| t.needs_sandbox());
        let schema = if needs_sandbox { with_run_id(spec.input_schema) } else { object(spec.input_schema) };
        out.push(tool(&spec.name, &spec.description, schema));
    }
    out
}

/// Moves base64 images out of a result's `results` (rich outputs of code) into image content, so a
/// model sees the picture instead of a long string.
fn take_images(value: &mut Value) -> Vec<ContentBlock> {
    let mut images = Vec::new();
    let Some(results) = value.get_mut("results").and_then(Value::as_array_mut) else {
        return images;
    };
    for item in results {
        for (key, mime) in [("png", "image/png"), ("jpeg", "image/jpeg")] {
            if let Some(Value::String(data)) = item.get_mut(key) {
                let data = std::mem::take(data);
                images.push(ContentBlock::image(data, mime));
                item[key] = Value::String(format!("<{mime}: attached as image {}>", images.len()));
            }
        }
    }
    images
}

/// A successful call: the output as JSON text (and structured content), plus any images.
pub(crate) fn success(mut value: Value) -> CallToolResult {
    let images = take_images(&mut value);
    let text = serde_json::to_string(&value).unwrap_or_default();
    let mut content = vec![ContentBlock::text(text)];
    content.extend(images);
    let mut result = CallToolResult::success(content);
    if value.is_object() {
        result.structured_content = Some(value);
    }
    result
}

/// A failed call: `isError` with the reason as text a model can act on.
pub(crate) fn failure(error: &ToolError) -> CallToolResult {
    let mut result =
        CallToolResult::error(vec![ContentBlock::text(format!("{}: {}", error.kind.as_str(), error.message))]);
    result.structured_content = Some(error.to_json());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_is_added_to_sandbox_tools_only() {
        let with =
            with_run_id(json!({"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}));
        assert_eq!(with["properties"]["run_id"]["type"], "string");
        assert_eq!(with["required"], json!(["code"]));
        let bare = with_run_id(json!({}));
        assert_eq!(bare["type"], "object");
        assert!(bare["properties"]["run_id"].is_object());
    }

    #[test]
    fn images_become_image_content() {
        let r = success(json!({"results": [{"text": "<Figure>", "png": "iVBORw0KGgo="}], "stdout": ""}));
        assert_eq!(r.content.len(), 2);
        let text = r.content[0].as_text().unwrap().text.clone();
        assert!(text.contains("attached as image 1") && !text.contains("iVBORw0KGgo="), "{text}");
        assert!(
            matches!(&r.content[1], ContentBlock::Image(i) if i.data == "iVBORw0KGgo=" && i.mime_type == "image/png")
        );
        assert_eq!(r.is_error, Some(false));
    }

    #[test]
    fn errors_are_tool_errors_with_readable_text() {
        let r = failure(&ToolError::not_found("file not found: /home/user/x.py"));
        assert_eq!(r.is_error, Some(true));
        assert_eq!(r.content[0].as_text().unwrap().text, "not_found: file not found: /home/user/x.py");
        assert_eq!(r.structured_content.unwrap()["kind"], "not_found");
    }
}
