//! Test helpers: an MCP server over real local sandboxes, and a client's view of tool results.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{ManagerConfig, RunId, SandboxBackend, SandboxId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_mcp::{McpConfig, McpServer};
use agentbox_tools::ToolRegistry;
use agentbox_tools::search::{SearchConfig, WebSearch};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::Value;

/// A server over the local backend, with the standard tools (no search provider configured).
pub fn server(config: McpConfig) -> (McpServer, Arc<dyn SandboxBackend>) {
    let backend: Arc<dyn SandboxBackend> =
        Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root; tests run as root"));
    let manager = SandboxManager::new(backend.clone(), ManagerConfig::default());
    let tools = ToolRegistry::standard(WebSearch::new(SearchConfig::default()).unwrap());
    (McpServer::new(Arc::new(manager), tools, config), backend)
}

/// What a tool call returned: the error flag, the text, and the structured content.
#[derive(Debug)]
pub struct Called {
    pub is_error: bool,
    pub text: String,
    pub json: Value,
}

/// Calls `name` with `args` (a JSON object) and flattens the result.
pub async fn call<S: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, S>,
    name: &str,
    args: Value,
) -> Called {
    let Value::Object(args) = args else { panic!("arguments must be an object") };
    let result: CallToolResult = client
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("calling {name} failed at the protocol level: {e}"));
    let text = result.content.iter().filter_map(|c| c.as_text()).map(|t| t.text.clone()).collect::<Vec<_>>().join("\n");
    Called { is_error: result.is_error == Some(true), text, json: result.structured_content.unwrap_or(Value::Null) }
}

/// Calls `name` and expects success.
pub async fn ok<S: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, S>,
    name: &str,
    args: Value,
) -> Value {
    let c = call(client, name, args).await;
    assert!(!c.is_error, "{name} failed: {}", c.text);
    c.json
}

/// Waits (bounded) until the manager no longer holds `run` and the backend no longer lists `sandbox`.
pub async fn wait_gone(server: &McpServer, backend: &Arc<dyn SandboxBackend>, run: &str, sandbox: &str) {
    let run = RunId::parse(run).unwrap();
    let sandbox = SandboxId::new_unchecked(sandbox);
    for _ in 0..600 {
        let held = server.manager().get(&run).is_ok();
        let listed = backend.list().await.unwrap().iter().any(|s| s.id == sandbox);
        if !held && !listed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sandbox {sandbox} of run {run} was not destroyed");
}

/// Whether the backend lists `sandbox`.
pub async fn listed(backend: &Arc<dyn SandboxBackend>, sandbox: &str) -> bool {
    backend.list().await.unwrap().iter().any(|s| s.id.as_str() == sandbox)
}

pub use agentbox_conformance::not_root;
