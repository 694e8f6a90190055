//! End-to-end tests of the REST API over real HTTP on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use agentbox_server::{Limits, Registry, ServerConfig};
use common::{HostBackend, TOKEN, TestServer, expect_error};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn config_with(limits: Limits) -> ServerConfig {
    ServerConfig { limits, ..ServerConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;

    let created = t.create("task-123").await;
    assert_eq!(created["run_id"], "task-123");
    assert_eq!(created["backend"], "host-test");
    assert_eq!(created["state"], "running");
    assert_eq!(created["config"]["memory_mb"], 512);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'), "{created}");
    let sandbox_id = created["sandbox_id"].as_str().unwrap().to_owned();

    // The same run again, with no config or the same one, is the same sandbox with 200.
    let again = t.post("/api/sandboxes/create", &json!({"run_id": "task-123"})).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["sandbox_id"], sandbox_id.as_str());
    let same =
        t.post("/api/sandboxes/create", &json!({"run_id": "task-123", "preset": "default"})).send().await.unwrap();
    assert_eq!(same.status(), 200);
    let other =
        t.post("/api/sandboxes/create", &json!({"run_id": "task-123", "memory_mb": 1024})).send().await.unwrap();
    expect_error(other, 409, "conflict").await;

    // A second run with overrides gets them in its effective config.
    let r = t
        .post(
            "/api/sandboxes/create",
            &json!({"run_id": "task-2", "preset": "lightweight", "memory_mb": 300, "environment_vars": {"GREETING": "hi"},
                    "timeouts": {"execution": 20, "idle": 600, "on_idle": "stop"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let second: Value = r.json().await.unwrap();
    assert_eq!((second["config"]["cpu_count"].as_u64(), second["config"]["memory_mb"].as_u64()), (Some(1), Some(300)));
    assert_eq!(second["config"]["execution_timeout"], 20);
    assert_eq!(second["config"]["on_idle"], "stop");
    assert_eq!(second["preset"], "lightweight");

    let one: Value = t.get("/api/sandboxes/task-123").send().await.unwrap().json().await.unwrap();
    assert_eq!(one["sandbox_id"], sandbox_id.as_str());
    let list: Value = t.get("/api/sandboxes").send().await.unwrap().json().await.unwrap();
    let runs: Vec<&str> = list["sandboxes"].as_array().unwrap().iter().map(|s| s["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs, ["task-123", "task-2"]);
    let running: Value = t.get("/api/sandboxes?state=running").send().await.unwrap().json().await.unwrap();
    assert_eq!(running["sandboxes"].as_array().unwrap().len(), 2);
    let unhealthy: Value = t.get("/api/sandboxes?state=unhealthy").send().await.unwrap().json().await.unwrap();
    assert_eq!(unhealthy["sandboxes"].as_array().unwrap().len(), 0);
    expect_error(t.get("/api/sandboxes?state=sleepy").send().await.unwrap(), 400, "invalid_request").await;

    // Commands: shell line, argv with stdin, env and cwd; exit codes come back.
    let out = t.sh("task-123", "echo hello; echo oops >&2; exit 3").await;
    assert_eq!(
        (out["stdout"].as_str(), out["stderr"].as_str(), out["exit_code"].as_i64()),
        (Some("hello\n"), Some("oops\n"), Some(3))
    );
    assert_eq!(out["timed_out"], false);
    assert_eq!(out["truncated"], false);
    assert!(out["duration_ms"].is_u64());
    let r = t
        .post(
            "/api/sandboxes/task-123/execute/command",
            &json!({"argv": ["sh", "-c", "cat; echo \" $X\"; pwd"], "stdin": "from stdin", "env": {"X": "y"}, "cwd": "/tmp"}),
        )
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["stdout"].as_str().unwrap().lines().next(), Some("from stdin y"), "{out}");
    assert!(out["stdout"].as_str().unwrap().trim_end().ends_with("/root/tmp"), "{out}");
    let env = t.sh("task-2", "echo $GREETING").await;
    assert_eq!(env["stdout"], "hi\n");
    let timed = t
        .post("/api/sandboxes/task-123/execute/command", &json!({"command": "sleep 5", "timeout": 0.3}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!((timed["timed_out"].as_bool(), timed["exit_code"].as_i64()), (Some(true), Some(124)));

    // Code in each language.
    for (language, code, want) in [
        ("python", "print(6 * 7)", "42\n"),
        ("javascript", "console.log([1, 2].map(x => x * 2).join(','))", "2,4\n"),
        ("bash", "echo $((40 + 2))", "42\n"),
    ] {
        let r = t
            .post("/api/sandboxes/task-123/execute/code", &json!({"language": language, "code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let out: Value = r.json().await.unwrap();
        assert_eq!(out["stdout"], want, "{language}: {out}");
    }
    let bad_lang = t
        .post("/api/sandboxes/task-123/execute/code", &json!({"language": "cobol", "code": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(bad_lang, 400, "invalid_request").await;

    // Metrics count the executions; health probes now.
    let metrics: Value = t.get("/api/sandboxes/task-123/metrics").send().await.unwrap().json().await.unwrap();
    assert_eq!(metrics["execution_count"], 6, "{metrics}");
    assert_eq!(metrics["last_exit_code"], 0);
    for field in [
        "cpu_usage_percent",
        "memory_used_mb",
        "disk_used_gb",
        "network_in_bytes",
        "is_healthy",
        "health_check_failures",
    ] {
        assert!(metrics.get(field).is_some(), "{field}");
    }
    let health: Value = t.get("/api/sandboxes/task-123/health").send().await.unwrap().json().await.unwrap();
    assert_eq!((health["healthy"].as_bool(), health["health_check_failures"].as_u64()), (Some(true), Some(0)));
    assert_eq!(health["state"], "running");
    assert!(health["last_check"].as_str().unwrap().ends_with('Z'));

    // Delete: 204, then 404 everywhere.
    assert_eq!(t.delete("/api/sandboxes/task-123").send().await.unwrap().status(), 204);
    expect_error(t.delete("/api/sandboxes/task-123").send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get("/api/sandboxes/task-123").send().await.unwrap(), 404, "not_found").await;
    assert!(!dir.path().join("sandboxes").join(&sandbox_id).exists(), "the backend destroyed it");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("r").await;

    // Invalid config: 400 listing every problem.
    let r = t.post(
        "/api/sandboxes/create",
        &json!({"run_id": "bad", "memory_mb": 1, "pre_install_packages": ["brew:wget"]}),
    );
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_config");
    let paths: Vec<&str> =
        body["error"]["details"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["memory_mb", "pre_install_packages[0]"], "{body}");
    assert_eq!(t.get("/api/sandboxes/bad").send().await.unwrap().status(), 404, "nothing was created");

    for (body, what) in [
        (json!({"run_id": "x", "memroy_mb": 5}), "memroy_mb"),
        (json!({"run_id": "x", "memory_mb": null}), "null"),
        (json!({"run_id": "../x"}), "invalid"),
        (json!({"run_id": "create"}), "reserved"),
        (json!({"run_id": "x", "timeouts": {"execution": -1}}), "timeouts.execution"),
        (json!({"memory_mb": 5}), "run_id"),
    ] {
        let msg =
            expect_error(t.post("/api/sandboxes/create", &body).send().await.unwrap(), 400, "invalid_request").await;
        assert!(msg.contains(what), "{what}: {msg}");
    }
    let r = t
        .client
        .post(t.url("/api/sandboxes/create"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json");
    expect_error(r.send().await.unwrap(), 400, "invalid_request").await;
    let r = t.client.post(t.url("/api/sandboxes/create")).bearer_auth(TOKEN).body(r#"{"run_id":"x"}"#);
    expect_error(r.send().await.unwrap(), 415, "unsupported_media_type").await;

    for body in [json!({}), json!({"command": "ls", "argv": ["ls"]}), json!({"argv": []}), json!({"argv": ["a\u{0}b"]})]
    {
        let r = t.post("/api/sandboxes/r/execute/command", &body).send().await.unwrap();
        expect_error(r, 400, "invalid_request").await;
    }

    // Unknown runs are 404 on every per-run route.
    let ghost = "/api/sandboxes/ghost";
    expect_error(t.get(ghost).send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get(&format!("{ghost}/metrics")).send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get(&format!("{ghost}/health")).send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get(&format!("{ghost}/files?path=a")).send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get(&format!("{ghost}/files/list?path=/")).send().await.unwrap(), 404, "not_found").await;
    expect_error(t.put(&format!("{ghost}/files?path=a")).body("x").send().await.unwrap(), 404, "not_found").await;
    let cmd = t.post(&format!("{ghost}/execute/command"), &json!({"command": "true"}));
    expect_error(cmd.send().await.unwrap(), 404, "not_found").await;
    let code = t.post(&format!("{ghost}/execute/code"), &json!({"language": "bash", "code": "true"}));
    expect_error(code.send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get("/api/sandboxes/bad%20id").send().await.unwrap(), 400, "invalid_request").await;

    // Unknown routes and methods answer JSON too.
    expect_error(t.get("/api/nothing").send().await.unwrap(), 404, "not_found").await;
    // The Allow header and the message name every method of the route (the literal route over a parameter).
    for (method, path, allow) in [
        (reqwest::Method::PATCH, "/api/sandboxes/r", "GET,HEAD,DELETE"),
        (reqwest::Method::PUT, "/api/sandboxes", "GET,HEAD"),
        (reqwest::Method::GET, "/api/sandboxes/create", "POST"),
        (reqwest::Method::POST, "/api/sandboxes/r/terminal", "GET,HEAD"),
    ] {
        let r = t.client.request(method.clone(), t.url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        let message = expect_error(r, 405, "method_not_allowed").await;
        assert!(message.ends_with(&allow.replace(',', ", ")), "{message}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_and_docs_requires_the_token() {
    let dir = tempfile::tempdir().unwrap();
    // Three refused attempts per route would cross the per-address limit of failed authentications.
    let limits = agentbox_server::Limits { auth_failures_per_minute: 10_000, ..agentbox_server::Limits::default() };
    let t = TestServer::host(dir.path(), ServerConfig { limits, ..ServerConfig::default() }).await;
    t.create("r").await;
    let doc: Value = t.client.get(t.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut walked = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let url = t.url(&path.replace("{run_id}", "r").replace("{name}", "shell"));
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            walked.push(format!("{method} {path}"));
            let open = path == "/health";
            assert_eq!(op.get("security").is_none(), open, "{method} {path}: security declared iff protected");
            for auth in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
                let mut req = t.client.request(method.clone(), &url);
                if let Some(token) = auth {
                    req = req.header("authorization", format!("Bearer {token}"));
                }
                let r = req.send().await.unwrap();
                if open {
                    assert_eq!(r.status(), 200, "{method} {path}");
                } else {
                    assert_eq!(
                        r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()),
                        Some("Bearer".to_owned()),
                        "{method} {path}: {}",
                        r.status()
                    );
                    let msg = expect_error(r, 401, "unauthorized").await;
                    assert!(!msg.contains("wrong-token"), "the presented token is never echoed");
                }
            }
            // With the token the route is reachable (never 401).
            let r = t.client.request(method.clone(), &url).bearer_auth(TOKEN).send().await.unwrap();
            assert_ne!(r.status(), 401, "{method} {path}");
        }
    }
    walked.sort();
    let mut expected = vec![
        "DELETE /api/sandboxes/{run_id}",
        "GET /api/sandboxes",
        "GET /api/sandboxes/{run_id}",
        "GET /api/sandboxes/{run_id}/files",
        "GET /api/sandboxes/{run_id}/files/list",
        "GET /api/sandboxes/{run_id}/health",
        "GET /api/sandboxes/{run_id}/metrics",
        "DELETE /api/snapshots/{name}",
        "DELETE /api/volumes/{name}",
        "GET /api/snapshots",
        "GET /api/volumes",
        "GET /api/tools",
        "GET /health",
        "GET /metrics",
        "POST /api/sandboxes/create",
        "POST /api/sandboxes/{run_id}/execute/code",
        "POST /api/sandboxes/{run_id}/execute/command",
        "POST /api/sandboxes/{run_id}/pause",
        "POST /api/sandboxes/{run_id}/restore",
        "POST /api/sandboxes/{run_id}/resume",
        "POST /api/sandboxes/{run_id}/snapshots",
        "POST /api/sandboxes/{run_id}/start",
        "POST /api/sandboxes/{run_id}/stop",
        "POST /api/sandboxes/{run_id}/tools/{name}",
        "POST /api/volumes",
        "PUT /api/sandboxes/{run_id}/files",
        "PUT /api/sandboxes/{run_id}/network",
        "GET /api/sandboxes/{run_id}/egress",
        "GET /api/sandboxes/{run_id}/processes",
        "GET /api/sandboxes/{run_id}/terminals",
        "DELETE /api/sandboxes/{run_id}/terminals/{terminal_id}",
        "GET /api/secrets",
        "PUT /api/secrets/{name}",
        "DELETE /api/secrets/{name}",
        "GET /api/images",
        "DELETE /api/images",
        "POST /api/images/pull",
        "POST /api/images/prune",
        "GET /api/templates",
        "DELETE /api/templates/{name}",
        "POST /api/templates/{name}/build",
    ];
    if cfg!(feature = "browser") {
        expected.push("POST /api/sandboxes/{run_id}/browser");
    }
    expected.sort_unstable();
    assert_eq!(walked, expected);
    // The docs are open.
    let ui = t.client.get(t.url("/docs/")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("swagger"), "the Swagger UI is served from vendored assets");
    t.stop().await;
}

/// Every `$ref` in a document names a schema the document has.
fn dangling_refs(doc: &Value, node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let found = r.strip_prefix('#').is_some_and(|pointer| doc.pointer(pointer).is_some());
                if !found {
                    out.push(r.clone());
                }
            }
            map.values().for_each(|v| dangling_refs(doc, v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dangling_refs(doc, v, out)),
        _ => {}
    }
}

/// The schema a reference names, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap(),
        None => schema,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_says_what_each_body_must_be() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("d").await;
    let doc: Value = t.client.get(t.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut dangling = Vec::new();
    dangling_refs(&doc, &doc, &mut dangling);
    assert!(dangling.is_empty(), "references to schemas the document lacks: {dangling:?}");

    // The browser route takes the browser tool's input, so its body is the tool's own schema, which requires an
    // action: `{}` is not a valid body, and the server refuses it.
    if cfg!(feature = "browser") {
        let body = &doc["paths"]["/api/sandboxes/{run_id}/browser"]["post"]["requestBody"];
        assert_eq!(body["required"], true);
        let schema = resolve(&doc, &body["content"]["application/json"]["schema"]);
        let required: Vec<&str> = schema["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(required, ["action"], "{schema}");
        let tools: Value = t.get("/api/tools").send().await.unwrap().json().await.unwrap();
        let tool = tools["tools"].as_array().unwrap().iter().find(|tool| tool["name"] == "browser").unwrap();
        let mut listed = tool["input_schema"].clone();
        listed.as_object_mut().unwrap().remove("$schema");
        assert_eq!(schema, &listed, "the route publishes the schema the tool lists");
        let r = t.post("/api/sandboxes/d/browser", &json!({})).send().await.unwrap();
        let message = expect_error(r, 400, "invalid_request").await;
        assert!(message.contains("action"), "{message}");
        // What the schema allows but the tool can't act on (a click on no element) is 422, never 400.
        let r = t.post("/api/sandboxes/d/browser", &json!({"action": "click"})).send().await.unwrap();
        assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
    }

    // An upload's body may be empty (an empty file is a legitimate upload), and the document says so. A request
    // without any body, as from `curl -X PUT` (no Content-Length, no Transfer-Encoding), is an empty body in
    // HTTP/1.1 and writes an empty file too.
    let upload = &doc["paths"]["/api/sandboxes/{run_id}/files"]["put"]["requestBody"];
    assert_eq!(upload["required"], false, "{upload}");
    let addr = t.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "PUT /api/sandboxes/d/files?path=bodiless.txt HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"files":[{"path":"bodiless.txt","size":0}]}"#), "{answer}");
    assert_eq!(t.sh("d", "wc -c < bodiless.txt").await["stdout"], "0\n");

    // Responses carry every field of the types they serialize; the document requires the ones always written.
    let schemas = &doc["components"]["schemas"];
    let required = |name: &str| -> Vec<String> {
        schemas[name]["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    };
    assert!(required("SandboxMetrics").contains(&"cpu_usage_percent".to_owned()));
    assert!(!required("SandboxMetrics").contains(&"last_exit_code".to_owned()), "null when no execution ran");
    assert!(required("SandboxConfig").contains(&"max_read_bytes".to_owned()));
    assert!(!required("SandboxConfig").contains(&"image".to_owned()), "written only when set");
    t.stop().await;
}

/// Reads SSE events (name, data) from a response until the stream ends.
async fn next_event<S, B>(stream: &mut S, buf: &mut String) -> Option<(String, Value)>
where
    S: futures_util::Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            return Some((name, serde_json::from_str(&data).unwrap()));
        }
        let chunk = stream.next().await?.unwrap();
        buf.push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_stream_events_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("s").await;
    // The command waits for a file that the test writes only after seeing the first event:
    // the event must have been delivered while the command was still running.
    let r = t
        .post(
            "/api/sandboxes/s/execute/command",
            &json!({"command": "echo first; while [ ! -f go ]; do sleep 0.05; done; echo second; echo warn >&2; printf 'caf\\xc3'; printf '\\xa9\\n'; exit 3"}),
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let (name, data) = next_event(&mut stream, &mut buf).await.unwrap();
    assert_eq!((name.as_str(), data["data"].as_str()), ("stdout", Some("first\n")));
    let w = t.put("/api/sandboxes/s/files?path=go").body("").send().await.unwrap();
    assert_eq!(w.status(), 200);
    let mut stdout = String::new();
    let mut stderr = String::new();
    let exit = loop {
        let (name, data) = next_event(&mut stream, &mut buf).await.expect("an exit event");
        match name.as_str() {
            "stdout" => stdout.push_str(data["data"].as_str().unwrap()),
            "stderr" => stderr.push_str(data["data"].as_str().unwrap()),
            "exit" => break data,
            other => panic!("unexpected event {other}"),
        }
    };
    assert_eq!(stdout, "second\ncafé\n", "a character split across writes arrives whole");
    assert_eq!(stderr, "warn\n");
    assert_eq!(
        (exit["exit_code"].as_i64(), exit["timed_out"].as_bool(), exit["truncated"].as_bool()),
        (Some(3), Some(false), Some(false))
    );
    assert!(next_event(&mut stream, &mut buf).await.is_none(), "the stream ends after the exit event");

    // Code streams too.
    let r = t
        .post(
            "/api/sandboxes/s/execute/code",
            &json!({"language": "python", "code": "import sys; print('py'); sys.exit(2)"}),
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut stream, &mut buf).await {
        events.push(e);
    }
    let out: String = events.iter().filter(|(n, _)| n == "stdout").map(|(_, d)| d["data"].as_str().unwrap()).collect();
    assert_eq!(out, "py\n");
    assert_eq!(events.last().unwrap().1["exit_code"], 2);
    // Errors before the stream starts are plain JSON errors.
    let r = t
        .post("/api/sandboxes/nope/execute/command", &json!({"command": "true"}))
        .header("accept", "text/event-stream");
    expect_error(r.send().await.unwrap(), 404, "not_found").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_traversal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("f").await;
    let binary: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0]).collect();
    let w: Value = t
        .put("/api/sandboxes/f/files?path=data/blob.bin")
        .body(binary.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(w, json!({"files": [{"path": "data/blob.bin", "size": 259}]}));
    let r = t.get("/api/sandboxes/f/files?path=data/blob.bin").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().to_vec(), binary);
    assert_eq!(t.sh("f", "wc -c < data/blob.bin").await["stdout"], "259\n", "the sandbox sees the upload");
    // An empty body writes an empty file.
    let w: Value = t.put("/api/sandboxes/f/files?path=empty.txt").send().await.unwrap().json().await.unwrap();
    assert_eq!(w, json!({"files": [{"path": "empty.txt", "size": 0}]}));
    let r = t.get("/api/sandboxes/f/files?path=empty.txt").send().await.unwrap();
    assert_eq!(
        (r.headers()["content-length"].to_str().unwrap().to_owned(), r.bytes().await.unwrap().len()),
        ("0".to_owned(), 0)
    );

    // Multipart: one part to a file path, several to a directory.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"one".to_vec()).file_name("x.txt"));
    let w: Value = t
        .put("/api/sandboxes/f/files?path=/home/user/single.txt")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(w["files"][0], json!({"path": "/home/user/single.txt", "size": 3}));
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"aa".to_vec()).file_name("a.txt"))
        .part("file", reqwest::multipart::Part::bytes(b"bbb".to_vec()).file_name("b.txt"));
    let w: Value = t.put("/api/sandboxes/f/files?path=up/").multipart(form).send().await.unwrap().json().await.unwrap();
    assert_eq!(w["files"], json!([{"path": "up/a.txt", "size": 2}, {"path": "up/b.txt", "size": 3}]));
    let two = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"1".to_vec()).file_name("a"))
        .part("file", reqwest::multipart::Part::bytes(b"2".to_vec()).file_name("b"));
    expect_error(
        t.put("/api/sandboxes/f/files?path=one.txt").multipart(two).send().await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let evil = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("../../x"));
    expect_error(
        t.put("/api/sandboxes/f/files?path=up/").multipart(evil).send().await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let stray = reqwest::multipart::Form::new().text("other", "x");
    expect_error(t.put("/api/sandboxes/f/files?path=a").multipart(stray).send().await.unwrap(), 400, "invalid_request")
        .await;

    let list: Value = t.get("/api/sandboxes/f/files/list?path=up").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["path"], "up");
    let names: Vec<(&str, &str, u64)> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["kind"].as_str().unwrap(), e["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(names, [("a.txt", "file", 2), ("b.txt", "file", 3)]);
    expect_error(t.get("/api/sandboxes/f/files?path=missing.txt").send().await.unwrap(), 404, "not_found").await;
    expect_error(t.get("/api/sandboxes/f/files").send().await.unwrap(), 400, "invalid_request").await;

    // Traversal in every spelling: refused before the backend is asked, never host content.
    t.sh("f", "ln -s / escape").await;
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    for path in [
        "../../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "data/../../../../../etc/passwd",
        "/home/user/..",
        "a%00b",
        "escape/etc/passwd",
        "/etc/passwd",
    ] {
        for route in ["files", "files/list"] {
            let r = t.get(&format!("/api/sandboxes/f/{route}?path={path}")).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!([400, 403, 404].contains(&status), "{route} {path}: {status} {body}");
            assert!(!body.contains("root:x:0:0"), "{route} {path} leaked host content");
            assert!(!host_passwd.is_empty());
        }
        if path == "/etc/passwd" {
            continue; // the sandbox's own /etc, not the host's (checked below)
        }
        let w = t.put(&format!("/api/sandboxes/f/files?path={path}")).body("pwned").send().await.unwrap();
        assert!([400, 403, 404].contains(&w.status().as_u16()), "PUT {path}: {}", w.status());
    }
    let long = "a/".repeat(2100);
    expect_error(t.get(&format!("/api/sandboxes/f/files?path={long}")).send().await.unwrap(), 400, "invalid_request")
        .await;
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), host_passwd);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_414_and_429() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_sandboxes: 1,
        max_json_body_bytes: 1024,
        max_upload_bytes: 2048,
        max_uri_bytes: 512,
        rate_limit_per_second: 1,
        rate_limit_burst: 12,
        ..Limits::default()
    };
    let t = TestServer::host(dir.path(), config_with(limits)).await;
    t.create("only").await;
    let msg = expect_error(
        t.post("/api/sandboxes/create", &json!({"run_id": "second"})).send().await.unwrap(),
        429,
        "limit_exceeded",
    )
    .await;
    assert!(msg.contains("maximum is 1"), "{msg}");
    let big = json!({"command": "x".repeat(2000)});
    expect_error(t.post("/api/sandboxes/only/execute/command", &big).send().await.unwrap(), 413, "payload_too_large")
        .await;
    expect_error(
        t.put("/api/sandboxes/only/files?path=big").body(vec![1u8; 4096]).send().await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    let chunks = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![7u8; 512])));
    let streamed = t.put("/api/sandboxes/only/files?path=big").body(reqwest::Body::wrap_stream(chunks));
    expect_error(streamed.send().await.unwrap(), 413, "payload_too_large").await;
    let long = format!("/api/sandboxes?{}", "x".repeat(600));
    expect_error(t.get(&long).send().await.unwrap(), 414, "uri_too_long").await;
    // The burst runs out: 429 with Retry-After.
    let mut limited = None;
    for _ in 0..30 {
        let r = t.get("/api/sandboxes").send().await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the rate limit triggers");
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    expect_error(r, 429, "rate_limited").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_cover_sandboxes_and_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("m").await;
    t.sh("m", "exit 4").await;
    let r = t.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    assert!(text.contains("agentbox_sandbox_execution_count{run_id=\"m\""), "{text}");
    assert!(text.contains("agentbox_sandbox_last_exit_code{run_id=\"m\""), "{text}");
    assert!(text.contains("agentbox_http_requests_total{method=\"POST\",route=\"/api/sandboxes/{run_id}/execute/command\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains(
            "agentbox_http_request_duration_seconds_count{method=\"POST\",route=\"/api/sandboxes/create\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("agentbox_sandboxes{state=\"running\"} 1"), "{text}");
    assert!(text.contains("agentbox_manager_executions_total 1"), "{text}");
    assert!(text.contains("\nagentbox_file_transfers 0\n"), "{text}");
    assert!(text.contains("\nagentbox_file_transfers_limit 32\n"), "{text}");
    assert!(!text.contains(TOKEN));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_readopts_live_sandboxes_and_forgets_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sandboxes = dir.path().join("sandboxes");
    let db = dir.path().join("registry.db");
    let first = TestServer::start(
        Arc::new(HostBackend::new(&sandboxes)),
        ServerConfig::default(),
        Registry::open(&db).unwrap(),
    )
    .await;
    first.create("alive").await;
    let dead = first.create("dead").await;
    first.sh("alive", "echo kept > note.txt").await;
    // The process goes away without a clean shutdown, and one sandbox dies while it is down.
    drop(first);
    let backend = HostBackend::new(&sandboxes);
    agentbox_core::SandboxBackend::destroy(
        &backend,
        &agentbox_core::SandboxId::new_unchecked(dead["sandbox_id"].as_str().unwrap()),
    )
    .await
    .unwrap();

    let second = TestServer::start(Arc::new(backend), ServerConfig::default(), Registry::open(&db).unwrap()).await;
    assert_eq!(second.server.recovery().adopted, ["alive"]);
    assert_eq!(second.server.recovery().forgotten, ["dead"]);
    let list: Value = second.get("/api/sandboxes").send().await.unwrap().json().await.unwrap();
    let runs: Vec<&str> = list["sandboxes"].as_array().unwrap().iter().map(|s| s["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs, ["alive"]);
    assert_eq!(second.sh("alive", "cat note.txt").await["stdout"], "kept\n");
    assert_eq!(second.get("/api/sandboxes/dead").send().await.unwrap().status(), 404);
    second.create("dead").await;
    assert_eq!(second.delete("/api/sandboxes/alive").send().await.unwrap().status(), 204);
    second.stop().await;

    let rows = Registry::open(&db).unwrap().load().await.unwrap();
    let runs: Vec<&str> = rows.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(runs, ["dead"], "the registry follows creations and deletions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("g").await;
    let slow = t.post(
        "/api/sandboxes/g/execute/command",
        &json!({"command": "while [ ! -f go ]; do sleep 0.05; done; echo done"}),
    );
    let pending = tokio::spawn(slow.send());
    // Wait until the execution is in flight, then stop the server and let the command finish.
    loop {
        let s: Value = t.get("/api/sandboxes/g").send().await.unwrap().json().await.unwrap();
        if s["execution_count"] == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let client = t.client.clone();
    let url = t.url("/api/sandboxes/g/files?path=go");
    let stopping = tokio::spawn(t.stop());
    tokio::task::yield_now().await;
    std::fs::write(
        std::fs::read_dir(dir.path().join("sandboxes"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("root/home/user/go"),
        "",
    )
    .unwrap();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["stdout"], "done\n");
    stopping.await.unwrap();
    assert!(client.get(url).bearer_auth(TOKEN).send().await.is_err(), "no new connections after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changes_on_a_backend_without_live_updates_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestServer::host(dir.path(), ServerConfig::default()).await;
    t.create("net").await;
    let put = |run: &str, body: Value| t.put(&format!("/api/sandboxes/{run}/network")).json(&body).send();
    let msg = expect_error(put("net", json!({"enabled": true})).await.unwrap(), 422, "unsupported").await;
    assert!(msg.contains("cannot change network policy of a running sandbox"), "{msg}");
    let view: Value = t.get("/api/sandboxes/net").send().await.unwrap().json().await.unwrap();
    assert_eq!(view["config"]["network"]["enabled"], false, "the policy is unchanged");
    // The body is checked before the run: every problem is listed.
    let r =
        put("nobody", json!({"allowed_domains": ["not a domain"], "bandwidth_out_bytes_per_sec": 0})).await.unwrap();
    let text = r.text().await.unwrap();
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], "invalid_config", "{text}");
    assert_eq!(err["error"]["details"].as_array().unwrap().len(), 2, "{text}");
    expect_error(put("nobody", json!({"enabled": true})).await.unwrap(), 404, "not_found").await;
    t.stop().await;
}
