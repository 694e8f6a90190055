//! The E2B-compatible API mounted on agentboxd's listener (`[e2b_api] enabled`): E2B's routes and header-routed
//! envd calls reach it, everything else the agentbox API, and each side keeps its own authentication.
#![allow(clippy::unwrap_used)]

mod common;

use agentbox_server::ServerConfig;
use common::{TOKEN, TestServer};
use serde_json::{Value, json};

fn enabled() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.e2b_api.enabled = true;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_routes_share_the_listener_with_their_own_auth() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), enabled()).await;
    let create = |key: Option<&str>, body: Value| {
        let mut r = t.client.post(t.url("/v2/sandboxes")).json(&body);
        if let Some(k) = key {
            r = r.header("X-API-KEY", k);
        }
        r.send()
    };

    // The bearer token is not an API key, and a wrong key is refused with E2B's error body.
    let r = t.client.post(t.url("/v2/sandboxes")).bearer_auth(TOKEN).json(&json!({"templateID": "base"})).send();
    assert_eq!(r.await.unwrap().status(), 401);
    let r = create(Some("e2b_wrong"), json!({"templateID": "base"})).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 401);
    assert!(body["message"].as_str().unwrap().contains("X-API-KEY"), "{body}");

    let r = create(Some(TOKEN), json!({"templateID": "nope", "timeout": 60})).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("nope"));

    let r = create(Some(TOKEN), json!({"templateID": "base", "timeout": 60, "metadata": {"k": "v"}})).await.unwrap();
    assert_eq!(r.status(), 201);
    let sandbox: Value = r.json().await.unwrap();
    let id = sandbox["sandboxID"].as_str().unwrap().to_owned();
    let token = sandbox["envdAccessToken"].as_str().unwrap().to_owned();
    assert_eq!(sandbox["templateID"], "base");
    assert!(sandbox["envdVersion"].is_string() && sandbox["clientID"].is_string());

    // /health without the header is agentboxd's; with it, the sandbox's envd.
    let own = t.client.get(t.url("/health")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    let envd = t.client.get(t.url("/health")).header("E2b-Sandbox-Id", &id).send().await.unwrap();
    assert_eq!(envd.status(), 204);

    // envd calls need the sandbox's access token.
    let list = |with_token: bool| {
        let mut r = t
            .client
            .post(t.url("/process.Process/List"))
            .header("E2b-Sandbox-Id", &id)
            .header("E2b-Sandbox-Port", "49983")
            .header("Content-Type", "application/json")
            .body("{}");
        if with_token {
            r = r.header("X-Access-Token", &token);
        }
        r.send()
    };
    let r = list(false).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthenticated");
    assert_eq!(list(true).await.unwrap().status(), 200);

    // The E2B sandbox is a run of the manager, visible in agentboxd's own API too.
    let runs: Value =
        t.client.get(t.url("/api/sandboxes")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert!(runs.to_string().contains(&id), "{runs}");

    let listed: Value = t
        .client
        .get(t.url("/v2/sandboxes?metadata=k%3Dv"))
        .header("X-API-KEY", TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["sandboxID"], id.as_str());

    let kill = t.client.delete(t.url(&format!("/sandboxes/{id}"))).header("X-API-KEY", TOKEN).send().await.unwrap();
    assert_eq!(kill.status(), 204);
    let again = t.client.delete(t.url(&format!("/sandboxes/{id}"))).header("X-API-KEY", TOKEN).send().await.unwrap();
    assert_eq!(again.status(), 404);
    let gone = t.client.get(t.url("/health")).header("E2b-Sandbox-Id", &id).send().await.unwrap();
    assert_eq!(gone.status(), 502);
    assert!(gone.text().await.unwrap().contains("was not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_e2b_api_is_off_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    let r = t
        .client
        .post(t.url("/v2/sandboxes"))
        .header("X-API-KEY", TOKEN)
        .json(&json!({"templateID": "base"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "without [e2b_api], E2B's routes don't exist");
    let envd = t.client.get(t.url("/health")).header("E2b-Sandbox-Id", "i0123").send().await.unwrap();
    assert_eq!(envd.status(), 200, "and the header routes nothing: /health is agentboxd's");
}
