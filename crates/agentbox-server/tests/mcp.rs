//! The MCP endpoint of the API server: /mcp behind the bearer token, on real local sandboxes.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::SandboxBackend;
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_server::{Registry, ServerConfig};
use common::{TOKEN, TestServer, expect_error};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// Calls a tool; returns (isError, text, structured content).
async fn call<S: rmcp::service::Service<rmcp::service::RoleClient>>(
    client: &rmcp::service::RunningService<rmcp::service::RoleClient, S>,
    name: &str,
    args: Value,
) -> (bool, String, Value) {
    let Value::Object(args) = args else { panic!("arguments must be an object") };
    let r = client.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args)).await.unwrap();
    let text = r.content.iter().filter_map(|c| c.as_text()).map(|t| t.text.clone()).collect::<Vec<_>>().join("\n");
    (r.is_error == Some(true), text, r.structured_content.unwrap_or(Value::Null))
}

async fn local_server(config: ServerConfig) -> (TestServer, Arc<dyn SandboxBackend>) {
    let backend: Arc<dyn SandboxBackend> =
        Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root; tests run as root"));
    (TestServer::start(backend.clone(), config, Registry::in_memory().unwrap()).await, backend)
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_is_served_behind_the_bearer_token_and_session_sandboxes_are_cleaned_up() {
    let (server, backend) = local_server(ServerConfig::default()).await;

    let anonymous = server
        .client
        .post(server.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#)
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "unauthorized").await;

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(server.url("/mcp")).auth_header(TOKEN),
    );
    let client = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
        .serve(transport)
        .await
        .unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "run_code") && tools.iter().any(|t| t.name == "sandbox_create"));

    let (err, text, _) =
        call(&client, "write_file", json!({"path": "a.py", "content": "print('from a file')\n"})).await;
    assert!(!err, "{text}");
    let (err, text, out) = call(&client, "shell", json!({"command": "python3 a.py"})).await;
    assert!(!err && out["stdout"] == "from a file\n", "{text}");
    let (err, text, out) = call(&client, "run_code", json!({"code": "sum(range(10))"})).await;
    assert!(!err && out["results"][0]["text"] == "45", "{text}");
    let (err, text, _) = call(&client, "read_file", json!({"path": 7})).await;
    assert!(err && text.starts_with("invalid_input: "), "{text}");

    // A sandbox made over MCP is a sandbox of the API like any other.
    let (err, text, _) =
        call(&client, "sandbox_create", json!({"run_id": "mcp-over-rest", "preset": "lightweight"})).await;
    assert!(!err, "{text}");
    let rest = server.get("/api/sandboxes/mcp-over-rest").send().await.unwrap();
    assert_eq!(rest.status(), 200);

    let (_, _, list) = call(&client, "sandbox_list", json!({})).await;
    let mine = list["sandboxes"].as_array().unwrap().iter().find(|s| s["session_default"] == true).unwrap().clone();
    let (run, sandbox) = (mine["run_id"].as_str().unwrap().to_owned(), mine["sandbox_id"].as_str().unwrap().to_owned());
    assert_eq!(server.get(&format!("/api/sandboxes/{run}")).send().await.unwrap().status(), 200);

    // Closing the MCP session destroys its default sandbox; the named one stays.
    client.cancel().await.unwrap();
    let mut gone = false;
    for _ in 0..300 {
        let status = server.get(&format!("/api/sandboxes/{run}")).send().await.unwrap().status();
        let listed = backend.list().await.unwrap().iter().any(|s| s.id.as_str() == sandbox);
        if status == 404 && !listed {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the session's sandbox {sandbox} outlived the session");
    assert_eq!(server.get("/api/sandboxes/mcp-over-rest").send().await.unwrap().status(), 200);
    assert_eq!(server.delete("/api/sandboxes/mcp-over-rest").send().await.unwrap().status(), 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_can_be_disabled_and_checks_the_host() {
    let mut config = ServerConfig::default();
    config.mcp.enabled = false;
    let (off, _) = local_server(config).await;
    let r = off.post("/mcp", &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    off.stop().await;

    let (on, _) = local_server(ServerConfig::default()).await;
    let r = on
        .post("/mcp", &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .header("host", "rebound.example")
        .header("accept", "application/json, text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a Host outside mcp.allowed_hosts is refused");
    on.stop().await;

    let err = ServerConfig::from_toml("[mcp]\nsession_idle_timeout = 0\n").unwrap_err().to_string();
    assert!(err.contains("mcp.session_idle_timeout"), "{err}");
    let c =
        ServerConfig::from_toml("[mcp]\nallowed_hosts = [\"sandbox.example.com\"]\ndefault_preset = \"lightweight\"\n")
            .unwrap();
    assert_eq!(c.mcp.allowed_hosts, ["sandbox.example.com"]);
}
