//! Every tool's input schema is valid JSON Schema, and it accepts exactly what the tool accepts.
#![allow(clippy::unwrap_used, missing_docs)]

use agentbox_tools::search::{SearchConfig, WebSearch};
use agentbox_tools::{ToolContext, ToolErrorKind, ToolRegistry};
use serde_json::{Value, json};

fn registry() -> ToolRegistry {
    ToolRegistry::standard(WebSearch::new(SearchConfig::default()).unwrap())
}

/// (tool, input, whether it is valid)
fn samples() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("shell", json!({"command": "ls"}), true),
        (
            "shell",
            json!({"command": "ls", "cwd": "/tmp", "env": {"A": "1"}, "timeout_secs": 5, "background": false}),
            true,
        ),
        ("shell", json!({}), false),
        ("shell", json!({"command": 5}), false),
        ("shell", json!({"command": "ls", "timeout_secs": 0}), false),
        ("shell", json!({"command": "ls", "env": {"A": 1}}), false),
        ("shell", json!({"command": "ls", "bogus": true}), false),
        ("run_code", json!({"code": "1 + 1"}), true),
        ("run_code", json!({"code": "1", "language": "javascript", "context_id": "c1", "timeout_secs": 10}), true),
        ("run_code", json!({"code": "1", "language": "ruby"}), false),
        ("run_code", json!({"language": "python"}), false),
        ("code_context", json!({"action": "list"}), true),
        ("code_context", json!({"action": "create", "language": "python", "context_id": "x"}), true),
        ("code_context", json!({"action": "explode"}), false),
        ("read_file", json!({"path": "a.txt", "start_line": 1, "end_line": 3}), true),
        ("read_file", json!({"path": "a.txt", "start_line": 0}), false),
        ("read_file", json!({"path": ["a"]}), false),
        ("write_file", json!({"path": "a.txt", "content": ""}), true),
        ("write_file", json!({"path": "a.txt"}), false),
        ("list_files", json!({}), true),
        ("list_files", json!({"path": "/tmp", "recursive": true, "include_hidden": true}), true),
        ("list_files", json!({"recursive": "yes"}), false),
        ("edit_file", json!({"path": "a", "old_text": "x", "new_text": "y", "replace_all": true}), true),
        ("edit_file", json!({"path": "a", "old_text": "x"}), false),
        ("delete_file", json!({"path": "a"}), true),
        ("delete_file", json!({"paths": ["a"]}), false),
        ("upload_file", json!({"path": "a", "content_base64": "aGk="}), true),
        ("upload_file", json!({"path": "a", "content": "hi"}), false),
        ("download_file", json!({"path": "a"}), true),
        ("download_file", json!({}), false),
        ("web_search", json!({"query": "q"}), true),
        (
            "web_search",
            json!({"query": "q", "max_results": 20, "depth": "advanced", "time_range": "week",
                   "include_domains": ["docs.rs"], "exclude_domains": ["x.com"], "provider": "searxng"}),
            true,
        ),
        ("web_search", json!({"query": "q", "max_results": 21}), false),
        ("web_search", json!({"query": "q", "max_results": 0}), false),
        ("web_search", json!({"query": "q", "depth": "deep"}), false),
        ("web_search", json!({"query": "q", "time_range": "decade"}), false),
        ("web_search", json!({"query": "q", "provider": "bing"}), false),
        ("web_search", json!({"q": "q"}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "navigate", "url": "http://127.0.0.1:8000/"}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "navigate", "url": "x", "wait": "networkidle", "timeout_ms": 5000}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "click", "ref": "e3", "double_click": true}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "type", "selector": "#q", "text": "hi", "submit": true}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "snapshot", "offset": 40, "limit": 4096, "interactive_only": true}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "tabs", "op": "switch", "index": 1}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "set_viewport", "width": 800, "height": 600, "device_scale_factor": 2}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "close"}), true),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "navigate"}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "navigate", "url": "x", "timeout_ms": 0}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "click", "ref": "e3", "text": "x"}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "snapshot", "limit": 100}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "set_viewport", "width": 10, "height": 600}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "tabs", "op": "rename"}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"action": "fly"}), false),
        #[cfg(feature = "browser")]
        ("browser", json!({"url": "x"}), false),
    ]
}

#[test]
fn every_schema_is_valid_json_schema_describing_an_object() {
    let specs = registry().specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let browser: &[&str] = if cfg!(feature = "browser") { &["browser"] } else { &[] };
    assert_eq!(
        names,
        [
            browser,
            &[
                "code_context",
                "delete_file",
                "download_file",
                "edit_file",
                "list_files",
                "read_file",
                "run_code",
                "shell",
                "upload_file",
                "web_search",
                "write_file",
            ],
        ]
        .concat()
    );
    for spec in &specs {
        assert!(
            jsonschema::meta::is_valid(&spec.input_schema),
            "{} has an invalid schema: {}",
            spec.name,
            spec.input_schema
        );
        assert_eq!(spec.input_schema["type"], "object", "{}", spec.name);
        assert_eq!(spec.input_schema["additionalProperties"], false, "{}", spec.name);
        assert!(!spec.description.is_empty());
        assert!(!spec.input_schema.to_string().contains("$ref"), "{} schema is self-contained", spec.name);
    }
    let all_tools: std::collections::BTreeSet<&str> = samples().iter().map(|s| s.0).collect();
    assert_eq!(all_tools.len(), specs.len(), "every tool has samples");
}

#[tokio::test]
async fn schemas_accept_exactly_what_the_tools_accept() {
    let registry = registry();
    // Without a sandbox, a well-formed input gets past parsing and fails for want of a sandbox (or a search provider).
    let ctx = ToolContext::without_sandbox();
    for (tool, input, valid) in samples() {
        let schema = registry.get(tool).unwrap().input_schema();
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert_eq!(validator.is_valid(&input), valid, "schema of {tool} on {input}");
        let err = registry.call(tool, &ctx, input.clone()).await.unwrap_err();
        if valid {
            assert!(
                matches!(err.kind, ToolErrorKind::Unsupported | ToolErrorKind::NotConfigured),
                "{tool} should accept {input}: {err:?}"
            );
        } else {
            assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{tool} should refuse {input}: {err:?}");
        }
    }
}

#[tokio::test]
async fn an_unknown_tool_names_the_ones_there_are() {
    let err = registry().call("sudo", &ToolContext::without_sandbox(), json!({})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::UnknownTool);
    assert!(err.message.starts_with("no tool named \"sudo\"; available: "), "{err}");
    assert!(err.message.contains("code_context, delete_file"), "{err}");
    assert_eq!(err.to_json(), json!({"kind": "unknown_tool", "message": err.message}));
}
