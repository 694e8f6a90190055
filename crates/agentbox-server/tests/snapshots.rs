//! Snapshots and forks over REST, on the local backend: take one of a running sandbox, fork a new run from it,
//! list and delete; bad names and unknown snapshots get clear errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use agentbox_server::{Registry, ServerConfig};
use common::{TestServer, expect_error};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_fork_list_delete() {
    let backend = Arc::new(agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default()).unwrap());
    let t = TestServer::start(backend, ServerConfig::default(), Registry::in_memory().unwrap()).await;
    t.create("snap-src").await;
    t.sh("snap-src", "echo v1 > ~/state.txt").await;
    let name = format!("rest-{}", std::process::id());

    let r = t.post("/api/sandboxes/snap-src/snapshots", &json!({ "name": name })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let snap: Value = r.json().await.unwrap();
    assert_eq!(snap["name"], name.as_str());
    assert!(snap["created_at_ms"].as_u64().unwrap() > 0);
    let r = t.post("/api/sandboxes/snap-src/snapshots", &json!({ "name": name })).send().await.unwrap();
    expect_error(r, 409, "conflict").await;
    let r = t.post("/api/sandboxes/snap-src/snapshots", &json!({ "name": "../x" })).send().await.unwrap();
    expect_error(r, 400, "invalid_request").await;
    let r = t.post("/api/sandboxes/nobody/snapshots", &json!({ "name": "n" })).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    t.sh("snap-src", "echo v2 > ~/state.txt").await;

    // A fork: a new run from the snapshot, independent of its source.
    let r =
        t.post("/api/sandboxes/create", &json!({ "run_id": "snap-fork", "from_snapshot": name })).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(t.sh("snap-fork", "cat ~/state.txt").await["stdout"], "v1\n");
    t.sh("snap-fork", "echo fork > ~/state.txt").await;
    assert_eq!(t.sh("snap-src", "cat ~/state.txt").await["stdout"], "v2\n");
    // Forking into a run that exists is a conflict; from an unknown snapshot, not found.
    let r =
        t.post("/api/sandboxes/create", &json!({ "run_id": "snap-fork", "from_snapshot": name })).send().await.unwrap();
    expect_error(r, 409, "conflict").await;
    let r = t
        .post("/api/sandboxes/create", &json!({ "run_id": "snap-x", "from_snapshot": "no-such" }))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    assert_eq!(t.get("/api/sandboxes/snap-x").send().await.unwrap().status(), 404);

    // Restore: the source's files go back to the snapshot, in a new sandbox under the same run id.
    let before: Value = t.get("/api/sandboxes/snap-src").send().await.unwrap().json().await.unwrap();
    let r = t.post("/api/sandboxes/snap-src/restore", &json!({ "name": name })).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["run_id"], "snap-src");
    assert_ne!(after["sandbox_id"], before["sandbox_id"], "{after}");
    assert_eq!(t.sh("snap-src", "cat ~/state.txt").await["stdout"], "v1\n");
    t.sh("snap-src", "echo v2 > ~/state.txt").await;
    let r = t.post("/api/sandboxes/snap-src/restore", &json!({ "name": "no-such" })).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    assert_eq!(t.sh("snap-src", "cat ~/state.txt").await["stdout"], "v2\n", "a failed restore keeps the sandbox");
    let r = t.post("/api/sandboxes/nobody/restore", &json!({ "name": name })).send().await.unwrap();
    expect_error(r, 404, "not_found").await;

    let list: Value = t.get("/api/snapshots").send().await.unwrap().json().await.unwrap();
    assert!(list["snapshots"].as_array().unwrap().iter().any(|s| s["name"] == name.as_str()), "{list}");
    assert_eq!(t.delete(&format!("/api/snapshots/{name}")).send().await.unwrap().status(), 204);
    expect_error(t.delete(&format!("/api/snapshots/{name}")).send().await.unwrap(), 404, "not_found").await;
    assert_eq!(t.sh("snap-fork", "cat ~/state.txt").await["stdout"], "fork\n");

    // Pause and resume over REST: executions answer 409 while paused, files stay readable.
    let r = t.post("/api/sandboxes/snap-src/pause", &json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "paused", "{v}");
    let r = t.post("/api/sandboxes/snap-src/execute/command", &json!({ "command": "true" })).send().await.unwrap();
    let m = expect_error(r, 409, "conflict").await;
    assert!(m.contains("resume"), "{m}");
    let r = t.get("/api/sandboxes/snap-src/files?path=state.txt").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v2\n");
    let r = t.post("/api/sandboxes/snap-src/resume", &json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    expect_error(t.post("/api/sandboxes/snap-src/resume", &json!({})).send().await.unwrap(), 409, "conflict").await;
    assert_eq!(t.sh("snap-src", "cat ~/state.txt").await["stdout"], "v2\n");

    for run in ["snap-src", "snap-fork"] {
        assert_eq!(t.delete(&format!("/api/sandboxes/{run}")).send().await.unwrap().status(), 204);
    }
    t.stop().await;
}
