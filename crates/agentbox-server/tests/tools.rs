//! `GET /api/tools` and `POST /api/sandboxes/{run_id}/tools/{name}` end to end over loopback HTTP.
//!
//! Web search is configured from the server's environment, so it is tested in a child process of
//! this test binary started with the environment under test: a fake SearXNG (following its documented
//! `GET /search?format=json` API) that the parent runs on loopback, or no provider at all.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentbox_server::ServerConfig;
use common::{TOKEN, TestServer, expect_error};
use serde_json::{Value, json};

/// Set in the child process: the web search test's server side runs only there.
const CHILD: &str = "AGENTBOX_SERVER_TOOLS_TEST_CHILD";

const SEARCH_VARS: [&str; 5] =
    ["TAVILY_API_KEY", "SERPER_API_KEY", "SEARXNG_URL", "AGENTBOX_TAVILY_URL", "AGENTBOX_SERPER_URL"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_and_called_on_a_runs_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;

    let list: Value = t.get("/api/tools").send().await.unwrap().json().await.unwrap();
    let tools = list["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    // The browser tool comes with agentbox-tools' `browser` feature (on by default), whether or not
    // this crate's browser route is built.
    assert!(names.contains(&"browser") || !cfg!(feature = "browser"), "{names:?}");
    let names: Vec<&str> = names.into_iter().filter(|n| *n != "browser").collect();
    let expected = [
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
    ];
    assert_eq!(names, expected);
    for tool in tools {
        assert!(!tool["description"].as_str().unwrap().is_empty(), "{tool}");
        assert_eq!(tool["input_schema"]["type"], "object", "{tool}");
        assert_eq!(tool["needs_sandbox"], tool["name"] != "web_search", "{tool}");
    }
    let shell = tools.iter().find(|t| t["name"] == "shell").unwrap();
    assert!(shell["input_schema"]["properties"]["command"].is_object(), "{shell}");
    assert_eq!(shell["input_schema"]["required"], json!(["command"]));

    t.create("tools-1").await;
    let call = |name: &str, body: Value| t.post(&format!("/api/sandboxes/tools-1/tools/{name}"), &body).send();

    let out: Value =
        call("shell", json!({"command": "echo hi; echo err >&2; exit 3"})).await.unwrap().json().await.unwrap();
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str(), out["stderr"].as_str()),
        (Some(3), Some("hi\n"), Some("err\n"))
    );
    assert_eq!(out["timed_out"], false);

    // Files written by a tool are the sandbox's files, as the file routes see them.
    let r = call("write_file", json!({"path": "notes/a.txt", "content": "one\ntwo\n"})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"path": "/home/user/notes/a.txt", "bytes_written": 8}));
    let raw = t.get("/api/sandboxes/tools-1/files?path=notes/a.txt").send().await.unwrap().text().await.unwrap();
    assert_eq!(raw, "one\ntwo\n");
    let read: Value = call("read_file", json!({"path": "/home/user/notes/a.txt", "start_line": 2}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((read["start_line"].as_u64(), read["total_lines"].as_u64()), (Some(2), Some(2)), "{read}");
    let content = read["content"].as_str().unwrap();
    assert!(content.contains("two") && !content.contains("one"), "{read}");

    // Failures are the API's JSON errors, with the tool's message.
    let msg = expect_error(call("read_file", json!({"path": "missing.txt"})).await.unwrap(), 404, "not_found").await;
    assert!(msg.contains("file not found: /home/user/missing.txt"), "{msg}");
    let msg = expect_error(call("shell", json!({"comand": "ls"})).await.unwrap(), 400, "invalid_request").await;
    assert!(msg.contains("invalid input for shell"), "{msg}");
    let msg = expect_error(call("shell", json!({"command": "  "})).await.unwrap(), 400, "invalid_request").await;
    assert!(msg.contains("command is empty"), "{msg}");
    let msg = expect_error(call("fly", json!({})).await.unwrap(), 404, "not_found").await;
    assert!(msg.contains("no tool named \"fly\"") && msg.contains("shell"), "{msg}");
    let r = t.client.post(t.url("/api/sandboxes/tools-1/tools/shell")).bearer_auth(TOKEN).json(&json!(["ls"]));
    expect_error(r.send().await.unwrap(), 400, "invalid_request").await;
    let r = t.client.post(t.url("/api/sandboxes/tools-1/tools/shell")).bearer_auth(TOKEN).body("{\"command\": \"ls\"}");
    expect_error(r.send().await.unwrap(), 415, "unsupported_media_type").await;

    // The run must exist, for every tool, including web search, which does not use the sandbox.
    for name in ["shell", "web_search", "fly"] {
        let r = t.post(&format!("/api/sandboxes/nobody/tools/{name}"), &json!({"query": "x"})).send().await.unwrap();
        let msg = expect_error(r, 404, "not_found").await;
        assert!(msg.contains("nobody"), "{msg}");
    }
    let r = t.post("/api/sandboxes/bad%20id/tools/shell", &json!({"command": "ls"})).send().await.unwrap();
    expect_error(r, 400, "invalid_request").await;
    t.stop().await;
}

/// A fake SearXNG: `GET /search?q=...&format=json` as documented, counting the requests it answers.
async fn fake_searxng() -> (String, Arc<AtomicUsize>) {
    use axum::extract::{Query, State};
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/search",
            axum::routing::get(|State(hits): State<Arc<AtomicUsize>>, Query(q): Query<HashMap<String, String>>| async move {
                if q.get("format").map(String::as_str) != Some("json") {
                    return (axum::http::StatusCode::FORBIDDEN, "403 Forbidden").into_response();
                }
                hits.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({
                    "query": q.get("q").cloned().unwrap_or_default(),
                    "number_of_results": 0,
                    "results": [
                        {"url": "https://tokio.rs/", "title": "Tokio", "content": "Build reliable network applications.",
                         "engine": "duckduckgo", "engines": ["duckduckgo"], "positions": [1], "score": 2.0,
                         "category": "general", "publishedDate": null}
                    ],
                    "answers": [],
                    "corrections": [],
                    "infoboxes": [],
                    "suggestions": [],
                    "unresponsive_engines": []
                }))
                .into_response()
            }),
        )
        .with_state(hits.clone());
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

/// Runs [`web_search_child`] in a child process with `searxng` (or no provider) in its environment.
async fn run_child(searxng: Option<&str>) {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["web_search_child", "--exact", "--nocapture", "--test-threads=1"]).env(CHILD, "1");
    for var in SEARCH_VARS {
        cmd.env_remove(var);
    }
    if let Some(url) = searxng {
        cmd.env("SEARXNG_URL", url);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("1 passed"), "child failed:\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_search_uses_the_providers_in_the_servers_environment() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let (url, hits) = fake_searxng().await;
    run_child(Some(&url)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the second, identical search is answered from the cache");
    run_child(None).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// The server side of [`web_search_uses_the_providers_in_the_servers_environment`]; does nothing
/// unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_search_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("search").await;
    let search =
        || t.post("/api/sandboxes/search/tools/web_search", &json!({"query": "tokio", "max_results": 3})).send();
    if std::env::var_os("SEARXNG_URL").is_some() {
        let first: Value = search().await.unwrap().json().await.unwrap();
        assert_eq!((first["provider"].as_str(), first["cached"].as_bool()), (Some("searxng"), Some(false)), "{first}");
        assert_eq!(first["results"][0]["url"], "https://tokio.rs/", "{first}");
        assert_eq!(first["results"][0]["snippet"], "Build reliable network applications.", "{first}");
        let second: Value = search().await.unwrap().json().await.unwrap();
        assert_eq!(second["cached"], true, "{second}");
        let r = t.post("/api/sandboxes/search/tools/web_search", &json!({"query": ""})).send().await.unwrap();
        expect_error(r, 400, "invalid_request").await;
    } else {
        let msg = expect_error(search().await.unwrap(), 422, "not_configured").await;
        assert!(msg.contains("TAVILY_API_KEY") && msg.contains("SEARXNG_URL"), "{msg}");
    }
    t.stop().await;
}
