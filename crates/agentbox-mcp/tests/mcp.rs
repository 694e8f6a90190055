//! An rmcp client drives the MCP server over a byte stream and over streamable HTTP, on real local sandboxes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use agentbox_mcp::{McpConfig, SESSION_RUN_PREFIX, http_service};
use common::{call, listed, ok, server, wait_gone};
use rmcp::ServiceExt as _;
use rmcp::model::{ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The lifecycle of the newest protocol revision: `server/discover` and per-request metadata.
fn discover() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::LATEST] }
}

/// The default sandbox of the session, as sandbox_list reports it: (run_id, sandbox_id).
async fn session_sandbox<S: rmcp::service::Service<rmcp::service::RoleClient>>(
    client: &rmcp::service::RunningService<rmcp::service::RoleClient, S>,
) -> (String, String) {
    let list = ok(client, "sandbox_list", json!({})).await;
    let mine: Vec<_> = list["sandboxes"].as_array().unwrap().iter().filter(|s| s["session_default"] == true).collect();
    assert_eq!(mine.len(), 1, "{list}");
    (mine[0]["run_id"].as_str().unwrap().to_owned(), mine[0]["sandbox_id"].as_str().unwrap().to_owned())
}

/// What every transport must do: code with state, files, errors a model can read.
async fn exercise<S: rmcp::service::Service<rmcp::service::RoleClient>>(
    client: &rmcp::service::RunningService<rmcp::service::RoleClient, S>,
) {
    let written = ok(client, "write_file", json!({"path": "notes/hello.txt", "content": "hello from mcp\n"})).await;
    assert_eq!(written["path"], "/home/user/notes/hello.txt", "{written}");
    let read = call(client, "read_file", json!({"path": "/home/user/notes/hello.txt"})).await;
    assert!(!read.is_error && read.text.contains("hello from mcp"), "{read:?}");

    let first = ok(client, "run_code", json!({"code": "x = 6 * 7\nx"})).await;
    assert_eq!(first["results"][0]["text"], "42", "{first}");
    let second =
        ok(client, "run_code", json!({"code": "print(open('/home/user/notes/hello.txt').read().strip())\nx + 1"}))
            .await;
    assert_eq!(second["results"][0]["text"], "43", "{second}");
    assert_eq!(second["stdout"], "hello from mcp\n", "{second}");

    let shell = ok(client, "shell", json!({"command": "id -un && pwd"})).await;
    assert_eq!(shell["exit_code"], 0, "{shell}");
    assert!(shell["stdout"].as_str().unwrap().contains("/home/user"), "{shell}");

    let bad = call(client, "write_file", json!({"content": "no path"})).await;
    assert!(bad.is_error, "{bad:?}");
    assert!(bad.text.starts_with("invalid_input: ") && bad.text.contains("path"), "{}", bad.text);
    assert_eq!(bad.json["kind"], "invalid_input");

    let missing = call(client, "read_file", json!({"path": "nope.txt"})).await;
    assert!(missing.is_error && missing.text.contains("not found") && missing.text.contains("/home/user/nope.txt"));

    let unknown = call(client, "shell", json!({"command": "true", "run_id": "no-such-run"})).await;
    assert!(unknown.is_error && unknown.text.contains("sandbox_create"), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_transport_serves_every_tool_and_destroys_the_session_sandbox_at_eof() {
    if common::not_root() {
        return;
    }
    let (server, backend) = server(McpConfig::default());
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (r, w) = tokio::io::split(server_io);
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(r, w, std::future::pending()).await }
    });
    // The newest protocol revision (server/discover, no initialize handshake): the connection is still the session.
    let client = ClientConfig::default().serve_with_lifecycle(client_io, discover()).await.unwrap();

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in [
        "sandbox_create",
        "sandbox_list",
        "sandbox_destroy",
        "sandbox_metrics",
        "sandbox_pause",
        "sandbox_resume",
        "sandbox_stop",
        "sandbox_start",
        "sandbox_snapshot",
        "sandbox_restore",
        "snapshot_list",
        "snapshot_delete",
        "sandbox_egress",
        "shell",
        "run_code",
        "code_context",
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "web_search",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for t in &tools {
        assert!(t.description.as_ref().is_some_and(|d| d.len() > 40), "{} has no useful description", t.name);
        assert_eq!(t.input_schema["type"], "object", "{}", t.name);
    }
    let schema = |name: &str| tools.iter().find(|t| t.name == name).unwrap().input_schema.clone();
    assert_eq!(schema("shell")["properties"]["run_id"]["type"], "string");
    assert!(schema("web_search")["properties"].get("run_id").is_none(), "web_search needs no sandbox");
    assert!(schema("sandbox_create")["properties"]["overrides"]["properties"]["memory_mb"].is_object());

    // No sandbox exists until a call needs one.
    assert!(server.session_sandboxes().is_empty());
    exercise(&client).await;
    let (run, sandbox) = session_sandbox(&client).await;
    assert!(run.starts_with(SESSION_RUN_PREFIX), "{run}");
    assert_eq!(server.session_sandboxes().len(), 1);
    assert!(listed(&backend, &sandbox).await);

    let metrics = ok(&client, "sandbox_metrics", json!({})).await;
    assert!(metrics["execution_count"].as_u64().unwrap() >= 3, "{metrics}");
    assert_eq!(metrics["limits"]["memory_mb"], 512, "{metrics}");
    // Networking is off: the egress log is empty, and answers with the run it is of.
    let egress = ok(&client, "sandbox_egress", json!({"refused_only": true})).await;
    assert_eq!(
        (egress["records"].as_array().map(Vec::len), egress["dropped"].as_u64()),
        (Some(0), Some(0)),
        "{egress}"
    );

    // A snapshot of the session's sandbox, a fork from it that is independent, then the snapshot deleted.
    let snap_name = format!("mcp-snap-{}", std::process::id());
    let snap = ok(&client, "sandbox_snapshot", json!({"name": snap_name})).await;
    assert_eq!(snap["snapshot"]["name"], snap_name.as_str(), "{snap}");
    let again = call(&client, "sandbox_snapshot", json!({"name": snap_name})).await;
    assert!(again.is_error && again.text.starts_with("conflict: "), "{again:?}");
    let listed_snaps = ok(&client, "snapshot_list", json!({})).await;
    assert!(listed_snaps["snapshots"].as_array().unwrap().iter().any(|s| s["name"] == snap_name.as_str()));
    let fork = ok(&client, "sandbox_create", json!({"run_id": "mcp-fork", "from_snapshot": snap_name})).await;
    assert_eq!(fork["created"], true, "{fork}");
    let read = ok(
        &client,
        "shell",
        json!({"run_id": "mcp-fork", "command": "cat notes/hello.txt; echo changed > notes/hello.txt"}),
    )
    .await;
    assert_eq!(read["stdout"], "hello from mcp\n", "{read}");
    let original = ok(&client, "shell", json!({"command": "cat notes/hello.txt"})).await;
    assert_eq!(original["stdout"], "hello from mcp\n", "{original}");
    // Restoring the fork puts its files back to the snapshot, in a new sandbox under the same run_id.
    let restored = ok(&client, "sandbox_restore", json!({"run_id": "mcp-fork", "name": snap_name})).await;
    assert_eq!(restored["restored_from"], snap_name.as_str(), "{restored}");
    let back = ok(&client, "shell", json!({"run_id": "mcp-fork", "command": "cat notes/hello.txt"})).await;
    assert_eq!(back["stdout"], "hello from mcp\n", "{back}");
    let deleted = ok(&client, "snapshot_delete", json!({"name": snap_name})).await;
    assert_eq!(deleted["deleted"], true);
    let gone = call(&client, "snapshot_delete", json!({"name": snap_name})).await;
    assert!(gone.is_error && gone.text.starts_with("not_found: "), "{gone:?}");
    let paused = ok(&client, "sandbox_pause", json!({"run_id": "mcp-fork"})).await;
    assert_eq!(paused["state"], "paused", "{paused}");
    let refused = call(&client, "shell", json!({"run_id": "mcp-fork", "command": "true"})).await;
    assert!(refused.is_error && refused.text.contains("resume"), "{refused:?}");
    let resumed = ok(&client, "sandbox_resume", json!({"run_id": "mcp-fork"})).await;
    assert_eq!(resumed["state"], "running", "{resumed}");
    // Stopped, its files stay and commands are refused; started, a fresh sandbox has them.
    let stopped = ok(&client, "sandbox_stop", json!({"run_id": "mcp-fork"})).await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let refused = call(&client, "shell", json!({"run_id": "mcp-fork", "command": "true"})).await;
    assert!(refused.is_error && refused.text.contains("is stopped; start it first"), "{refused:?}");
    let started = ok(&client, "sandbox_start", json!({"run_id": "mcp-fork"})).await;
    assert_eq!(started["state"], "running", "{started}");
    let kept = ok(&client, "shell", json!({"run_id": "mcp-fork", "command": "cat notes/hello.txt"})).await;
    assert_eq!(kept["stdout"], "hello from mcp\n", "{kept}");
    ok(&client, "sandbox_destroy", json!({"run_id": "mcp-fork"})).await;

    let search = call(&client, "web_search", json!({"query": "rust"})).await;
    assert!(search.is_error && search.text.starts_with("not_configured: "), "{search:?}");

    // EOF: the client goes away, the session ends, its sandbox is destroyed.
    client.cancel().await.unwrap();
    serving.await.unwrap().unwrap();
    assert!(server.session_sandboxes().is_empty());
    wait_gone(&server, &backend, &run, &sandbox).await;
    server.manager().shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn named_sandboxes_are_created_sized_and_destroyed_by_tools() {
    if common::not_root() {
        return;
    }
    let (server, backend) = server(McpConfig::default());
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (r, w) = tokio::io::split(server_io);
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(r, w, std::future::pending()).await }
    });
    let client = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
        .serve(client_io)
        .await
        .unwrap();

    let invalid = call(
        &client,
        "sandbox_create",
        json!({"run_id": "mcp-named", "preset": "lightweight", "overrides": {"memory_mb": 1, "cpu_count": 0}}),
    )
    .await;
    assert!(invalid.is_error, "{invalid:?}");
    assert!(invalid.text.contains("memory_mb") && invalid.text.contains("cpu_count"), "{}", invalid.text);
    let typo = call(&client, "sandbox_create", json!({"run_id": "mcp-named", "preset": "huge"})).await;
    assert!(typo.is_error && typo.text.contains("lightweight"), "{}", typo.text);
    let reserved = call(&client, "sandbox_create", json!({"run_id": format!("{SESSION_RUN_PREFIX}x")})).await;
    assert!(reserved.is_error && reserved.text.contains("reserved"), "{}", reserved.text);

    let created = ok(
        &client,
        "sandbox_create",
        json!({"run_id": "mcp-named", "preset": "lightweight", "overrides": {"memory_mb": 200, "environment_variables": {"GREETING": "hi"}}}),
    )
    .await;
    assert_eq!(created["created"], true, "{created}");
    assert_eq!(created["limits"]["memory_mb"], 200);
    assert_eq!(created["limits"]["cpu_count"], 1);
    assert_eq!(created["session_default"], false);
    let sandbox = created["sandbox_id"].as_str().unwrap().to_owned();
    let again = ok(&client, "sandbox_create", json!({"run_id": "mcp-named"})).await;
    assert_eq!((again["created"].clone(), again["sandbox_id"].clone()), (json!(false), json!(sandbox)));

    let shell = ok(&client, "shell", json!({"command": "echo $GREETING", "run_id": "mcp-named"})).await;
    assert_eq!(shell["stdout"], "hi\n", "{shell}");
    // The named sandbox is not the session's: nothing default was made.
    assert!(server.session_sandboxes().is_empty());
    let metrics = ok(&client, "sandbox_metrics", json!({"run_id": "mcp-named"})).await;
    assert_eq!(metrics["execution_count"], 1, "{metrics}");
    // Root inside only where the sandbox was created allowing it.
    let refused = call(&client, "shell", json!({"command": "id -u", "run_id": "mcp-named", "as_root": true})).await;
    assert!(refused.is_error && refused.text.contains("allow_root_inside"), "{}", refused.text);
    ok(&client, "sandbox_create", json!({"run_id": "mcp-root", "overrides": {"allow_root_inside": true}})).await;
    let root = ok(&client, "shell", json!({"command": "id -u", "run_id": "mcp-root", "as_root": true})).await;
    assert_eq!(root["stdout"], "0\n", "{root}");
    ok(&client, "sandbox_destroy", json!({"run_id": "mcp-root"})).await;
    let none_yet = call(&client, "sandbox_metrics", json!({})).await;
    assert!(none_yet.is_error && none_yet.text.contains("does not exist yet"), "{}", none_yet.text);

    // The session's default sandbox can be sized before first use, and destroyed and remade.
    let default = ok(&client, "sandbox_create", json!({"preset": "lightweight"})).await;
    assert_eq!(default["session_default"], true, "{default}");
    let default_sandbox = default["sandbox_id"].as_str().unwrap().to_owned();
    let destroyed = ok(&client, "sandbox_destroy", json!({})).await;
    assert_eq!(destroyed["destroyed"], true);
    assert!(!listed(&backend, &default_sandbox).await);
    ok(&client, "shell", json!({"command": "true"})).await;
    let (_, fresh) = session_sandbox(&client).await;
    assert_ne!(fresh, default_sandbox);

    ok(&client, "sandbox_destroy", json!({"run_id": "mcp-named"})).await;
    assert!(!listed(&backend, &sandbox).await);
    let twice = call(&client, "sandbox_destroy", json!({"run_id": "mcp-named"})).await;
    assert!(twice.is_error && twice.text.starts_with("not_found: "), "{}", twice.text);

    client.cancel().await.unwrap();
    serving.await.unwrap().unwrap();
    assert!(!listed(&backend, &fresh).await);
    server.manager().shutdown().await;
}

/// Serves `/mcp` on a loopback port; returns its URL and the token that stops it.
async fn serve_http(server: &agentbox_mcp::McpServer) -> (String, CancellationToken) {
    let ct = CancellationToken::new();
    let router = axum::Router::new().route_service("/mcp", http_service(server, ct.child_token()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = ct.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled_owned().await })
            .await
            .unwrap();
    });
    (format!("http://{addr}/mcp"), ct)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sessions_get_their_own_sandbox_and_lose_it_when_closed() {
    if common::not_root() {
        return;
    }
    let (server, backend) = server(McpConfig::default());
    let (url, stop) = serve_http(&server).await;
    let connect = || {
        ClientConfig::default().with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE).serve(
            StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.clone())),
        )
    };
    let a = connect().await.unwrap();
    let b = connect().await.unwrap();
    assert!(a.list_all_tools().await.unwrap().iter().any(|t| t.name == "run_code"));
    exercise(&a).await;
    ok(&b, "shell", json!({"command": "echo b > /home/user/b.txt"})).await;
    let (run_a, sandbox_a) = session_sandbox(&a).await;
    let (run_b, sandbox_b) = session_sandbox(&b).await;
    assert_ne!(sandbox_a, sandbox_b, "each session has its own sandbox");
    let other = call(&a, "read_file", json!({"path": "/home/user/b.txt"})).await;
    assert!(other.is_error, "session a must not see session b's files: {other:?}");

    // Closing a session (DELETE) destroys its sandbox, and only its.
    a.cancel().await.unwrap();
    wait_gone(&server, &backend, &run_a, &sandbox_a).await;
    assert!(listed(&backend, &sandbox_b).await);
    ok(&b, "read_file", json!({"path": "b.txt"})).await;

    // Server shutdown destroys the sandboxes of the sessions still open.
    stop.cancel();
    server.shutdown().await;
    wait_gone(&server, &backend, &run_b, &sandbox_b).await;
    drop(b);
    server.manager().shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_sessions_expire_and_stateless_requests_need_a_run_id() {
    if common::not_root() {
        return;
    }
    let config = McpConfig { session_idle_timeout: Duration::from_secs(2), ..McpConfig::default() };
    let (server, backend) = server(config);
    let (url, stop) = serve_http(&server).await;

    // A session left idle expires, and its sandbox goes with it.
    let idle = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
        .serve(StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.clone())))
        .await
        .unwrap();
    ok(&idle, "shell", json!({"command": "true"})).await;
    let (run, sandbox) = session_sandbox(&idle).await;
    wait_gone(&server, &backend, &run, &sandbox).await;

    // The newest protocol revision has no sessions: calls name their sandbox.
    let stateless = ClientConfig::default()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.clone())),
            discover(),
        )
        .await
        .unwrap();
    let refused = call(&stateless, "shell", json!({"command": "true"})).await;
    assert!(refused.is_error && refused.text.contains("sandbox_create"), "{}", refused.text);
    ok(&stateless, "sandbox_create", json!({"run_id": "mcp-stateless", "preset": "lightweight"})).await;
    let out = ok(&stateless, "shell", json!({"command": "echo ok", "run_id": "mcp-stateless"})).await;
    assert_eq!(out["stdout"], "ok\n");
    ok(&stateless, "sandbox_destroy", json!({"run_id": "mcp-stateless"})).await;

    // Requests naming a host that is not allowed are refused (DNS rebinding).
    let response = reqwest::Client::new()
        .post(&url)
        .header("host", "attacker.example")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);

    drop(idle);
    drop(stateless);
    stop.cancel();
    server.shutdown().await;
    server.manager().shutdown().await;
}
