//! `POST /api/sandboxes/{run_id}/browser` end to end: a real local sandbox with the browser preset,
//! Chromium inside it, driven over loopback HTTP.
#![cfg(feature = "browser")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_server::{Registry, ServerConfig};
use common::{TestServer, expect_error};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_actions_run_in_the_sandbox_over_http() {
    let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
    let server = TestServer::start(backend, ServerConfig::default(), Registry::in_memory().unwrap()).await;
    let run = "browser-http";
    let r = server.post("/api/sandboxes/create", &json!({"run_id": run, "preset": "browser"})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let call = |body: Value| {
        server.post(&format!("/api/sandboxes/{run}/browser"), &body).timeout(Duration::from_secs(90)).send()
    };
    let page = "data:text/html,<title>Form</title><input id=q placeholder=Query><button onclick=\"document.title='Sent: '+q.value\">Go</button>";
    let nav = call(json!({"action": "navigate", "url": page})).await.unwrap();
    assert_eq!(nav.status(), 200);
    let nav: Value = nav.json().await.unwrap();
    assert_eq!((nav["title"].clone(), nav["browser_started"].clone()), (json!("Form"), json!(true)), "{nav}");

    let snap: Value = call(json!({"action": "snapshot"})).await.unwrap().json().await.unwrap();
    let tree = snap["snapshot"].as_str().unwrap().to_owned();
    let go = tree.lines().find(|l| l.contains("button \"Go\"")).unwrap();
    let go_ref = go.split("[ref=").nth(1).unwrap().trim_end_matches(']').to_owned();
    let typed: Value =
        call(json!({"action": "type", "selector": "#q", "text": "rust"})).await.unwrap().json().await.unwrap();
    assert_eq!(typed["value"], "rust");
    let clicked: Value = call(json!({"action": "click", "ref": go_ref})).await.unwrap().json().await.unwrap();
    assert_eq!(clicked["title"], "Sent: rust", "{clicked}");

    // Errors map to the API's JSON errors.
    expect_error(call(json!({"action": "fly"})).await.unwrap(), 400, "invalid_request").await;
    expect_error(call(json!({"action": "click", "ref": "e999"})).await.unwrap(), 404, "not_found").await;
    let r = server.post("/api/sandboxes/nobody/browser", &json!({"action": "snapshot"})).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    let r =
        server.client.post(server.url(&format!("/api/sandboxes/{run}/browser"))).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let r = server.delete(&format!("/api/sandboxes/{run}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    server.stop().await;
}
