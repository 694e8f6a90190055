//! `agentbox mcp` as an MCP client launches it: the real binary on stdio, driven by an rmcp client.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;

use agentbox_local::LocalConfig;
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, ClientConfig, ProtocolVersion};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

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

/// `agentbox mcp` started as a client starts it, with an rmcp client on its stdio.
struct Launched {
    child: tokio::process::Child,
    client: rmcp::service::RunningService<rmcp::service::RoleClient, ClientConfig>,
    /// Counts the lines the server wrote on stdout, each checked to be a JSON-RPC message.
    relay: tokio::task::JoinHandle<usize>,
    stderr: tokio::process::ChildStderr,
}

async fn launch(args: &[&str]) -> Launched {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .arg("mcp")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (client_end, mut feed) = tokio::io::duplex(1 << 20);
    let relay = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut count = 0usize;
        while let Some(line) = lines.next_line().await.unwrap() {
            let message: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not protocol on stdout: {line:?}: {e}"));
            assert_eq!(message["jsonrpc"], "2.0", "{line}");
            count += 1;
            if feed.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                break;
            }
        }
        count
    });
    let (client_read, _) = tokio::io::split(client_end);
    let client = ClientConfig::default()
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
        .serve((client_read, stdin))
        .await
        .unwrap();
    Launched { child, client, relay, stderr }
}

/// Whether a local sandbox exists on the host (its cgroups are there from creation to destroy).
fn on_host(sandbox: &str) -> bool {
    !agentbox_local::LocalBackend::host_cgroups(&LocalConfig::default(), sandbox).is_empty()
}

/// The session's default sandbox id, from sandbox_list.
async fn session_sandbox(
    client: &rmcp::service::RunningService<rmcp::service::RoleClient, ClientConfig>,
) -> (String, Value) {
    let (_, _, list) = call(client, "sandbox_list", json!({})).await;
    let mine = list["sandboxes"][0].clone();
    assert_eq!(mine["session_default"], true, "{list}");
    (mine["sandbox_id"].as_str().unwrap().to_owned(), mine)
}

#[tokio::test(flavor = "multi_thread")]
async fn agentbox_mcp_serves_stdio_and_destroys_its_sandbox_at_eof() {
    let Launched { mut child, client, relay, mut stderr } = launch(&["--preset", "lightweight"]).await;
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "agentbox");
    assert!(info.instructions.as_deref().is_some_and(|i| i.contains("run_id")));

    let tools = client.list_all_tools().await.unwrap();
    for name in [
        "sandbox_create",
        "sandbox_list",
        "sandbox_destroy",
        "sandbox_metrics",
        "shell",
        "run_code",
        "read_file",
        "write_file",
    ] {
        assert!(tools.iter().any(|t| t.name == name), "{name} missing");
    }

    let (err, text, _) = call(&client, "write_file", json!({"path": "data.csv", "content": "a,b\n1,2\n3,4\n"})).await;
    assert!(!err, "{text}");
    let (err, text, out) = call(&client, "run_code", json!({"code": "import csv\nrows = list(csv.DictReader(open('/home/user/data.csv')))\nsum(int(r['b']) for r in rows)"})).await;
    assert!(!err, "{text}");
    assert_eq!(out["results"][0]["text"], "6", "{out}");
    let (err, text, out) = call(&client, "read_file", json!({"path": "data.csv"})).await;
    assert!(!err && out["content"].as_str().unwrap().contains("3,4"), "{text}");
    let (err, text, _) = call(&client, "run_code", json!({"code": 42})).await;
    assert!(err && text.starts_with("invalid_input: "), "{text}");

    let (sandbox, mine) = session_sandbox(&client).await;
    assert_eq!(mine["limits"]["memory_mb"], 256, "the --preset applies: {mine}");
    assert!(on_host(&sandbox), "{sandbox} missing while the session lives");

    // The client goes away: stdin reaches EOF, the server destroys the sandbox and exits cleanly.
    client.cancel().await.unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(relay.await.unwrap() >= 7, "one line per response");
    assert!(!on_host(&sandbox), "the sandbox {sandbox} outlived the session");
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).await.unwrap();
    assert!(logs.contains("serving MCP on stdio"), "{logs}");
    assert!(logs.contains("destroyed the session's default sandbox"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agentbox_mcp_destroys_every_sandbox_on_sigterm() {
    let Launched { mut child, client, relay, stderr: _stderr } = launch(&[]).await;
    let (err, text, _) = call(&client, "shell", json!({"command": "touch /home/user/mark"})).await;
    assert!(!err, "{text}");
    let (err, text, named) =
        call(&client, "sandbox_create", json!({"run_id": "sigterm-named", "preset": "lightweight"})).await;
    assert!(!err, "{text}");
    let (sandbox, _) = session_sandbox(&client).await;
    let named = named["sandbox_id"].as_str().unwrap().to_owned();
    assert!(on_host(&sandbox) && on_host(&named));

    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill has no memory-safety preconditions; pid is our live child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!on_host(&sandbox) && !on_host(&named), "sandboxes outlived the server");
    drop(client);
    relay.await.unwrap();
}
