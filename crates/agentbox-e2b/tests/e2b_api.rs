//! The E2B backend's use of E2B's API: headers, retries, rate limits, gone sandboxes, broken streams, re-attaching,
//! pause and resume, through a local fake that follows the published API.
#![allow(clippy::unwrap_used)]

mod fake;

use std::time::{Duration, SystemTime};

use agentbox_config::{Preset, SandboxConfig};
use agentbox_core::{CodeRequest, CreateRequest, Error, ExecRequest, Language, SandboxBackend, SandboxState};
use agentbox_e2b::E2bBackend;
use fake::{FakeE2b, FakeOptions};

/// One fake and a backend on it.
async fn setup() -> (FakeE2b, E2bBackend) {
    let fake = FakeE2b::start(FakeOptions::default()).await;
    let backend = E2bBackend::new(fake.config()).unwrap();
    (fake, backend)
}

async fn sh(
    backend: &E2bBackend,
    id: &agentbox_core::SandboxId,
    line: &str,
) -> agentbox_core::Result<agentbox_core::ExecOutput> {
    Ok(backend.exec(id, ExecRequest::shell(line)).await?.collect(1 << 20).await)
}

#[tokio::test]
async fn every_call_carries_the_headers_the_spec_asks_for() {
    let (fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, "echo hi").await.unwrap().stdout, "hi\n");
    backend.write_file(&sb.id, "/tmp/a.txt", b"x".to_vec()).await.unwrap();
    backend.stat(&sb.id, "/tmp/a.txt").await.unwrap();
    let token = fake.sandbox(sb.id.as_str()).unwrap().token.clone().expect("sandboxes are created secure");
    let seen = fake.seen();
    let create = seen.iter().find(|s| s.path == "/sandboxes" && s.method == "POST").unwrap();
    assert_eq!(create.headers.get("x-api-key").map(String::as_str), Some("e2b_fake_key"));
    for path in ["/process.Process/Start", "/files", "/filesystem.Filesystem/Stat"] {
        let s = seen.iter().find(|s| s.path == path).unwrap_or_else(|| panic!("no call to {path}"));
        assert_eq!(s.headers.get("x-access-token"), Some(&token), "{path}");
        assert_eq!(
            s.headers.get("authorization").map(String::as_str),
            Some("Basic dXNlcjo="),
            "{path}: user via Basic auth"
        );
        assert_eq!(s.headers.get("e2b-sandbox-id").map(String::as_str), Some(sb.id.as_str()), "{path}");
        assert_eq!(s.headers.get("e2b-sandbox-port").map(String::as_str), Some("49983"), "{path}");
        assert!(!s.headers.contains_key("x-api-key"), "{path}: the API key never goes to the sandbox");
    }
    let start = seen.iter().find(|s| s.path == "/process.Process/Start").unwrap();
    assert_eq!(start.headers.get("content-type").map(String::as_str), Some("application/connect+json"));
    assert_eq!(start.headers.get("connect-protocol-version").map(String::as_str), Some("1"));
    assert!(start.headers.contains_key("keepalive-ping-interval"));
    assert!(start.headers.contains_key("connect-timeout-ms"));
    let stat = seen.iter().find(|s| s.path == "/filesystem.Filesystem/Stat").unwrap();
    assert_eq!(stat.headers.get("content-type").map(String::as_str), Some("application/json"));
    backend.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn a_wrong_api_key_says_what_to_check() {
    let fake = FakeE2b::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.api_key = agentbox_e2b::ApiKey::new("e2b_wrong");
    let backend = E2bBackend::new(config).unwrap();
    match backend.create(CreateRequest::default()).await {
        Err(Error::PermissionDenied(m)) => assert!(m.contains("E2B_API_KEY") && m.contains("Invalid API key"), "{m}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(matches!(backend.list().await, Err(Error::PermissionDenied(_))));
}

#[tokio::test]
async fn creation_is_retried_on_transient_failures_and_rate_limits() {
    let (fake, backend) = setup().await;
    fake.state.faults.lock().unwrap().create.extend([(503, None), (429, Some(1)), (502, None)]);
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    let creates = fake.seen().iter().filter(|s| s.path == "/sandboxes" && s.method == "POST").count();
    assert_eq!(creates, 4, "three failures, then success");
    backend.destroy(&sb.id).await.unwrap();

    fake.state.faults.lock().unwrap().create.extend([(500, None); 4]);
    match backend.create(CreateRequest::default()).await {
        Err(Error::Backend { message: m, .. }) => assert!(m.contains("500"), "{m}"),
        other => panic!("the retry bound should give up with the last error, got {other:?}"),
    }
    fake.state.faults.lock().unwrap().create.push_back((429, Some(3600)));
    match backend.create(CreateRequest::default()).await {
        Err(Error::LimitExceeded(m)) => assert!(m.contains("3600 s"), "{m}"),
        other => panic!("a long Retry-After should be reported, got {other:?}"),
    }
}

#[tokio::test]
async fn a_sandbox_e2b_ended_is_reported_gone() {
    let (fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    sh(&backend, &sb.id, "true").await.unwrap();
    fake.expire(sb.id.as_str());
    match sh(&backend, &sb.id, "true").await {
        Err(Error::NotFound(m)) => {
            assert!(m.contains("502") && m.contains("gone") && m.contains(sb.id.as_str()), "{m}");
        }
        other => panic!("expected NotFound for a sandbox E2B ended, got {other:?}"),
    }
    assert!(matches!(backend.read_file(&sb.id, "/tmp/x").await, Err(Error::NotFound(_))));
    assert!(matches!(backend.health(&sb.id).await, Err(Error::NotFound(_))));
    backend.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn a_stream_that_breaks_midway_is_an_error_not_a_truncation() {
    let (fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    fake.state.faults.lock().unwrap().break_stream_after = Some(1);
    let out = sh(&backend, &sb.id, "echo one; sleep 0.3; echo two; sleep 0.3; echo three").await.unwrap();
    assert_eq!(out.exit_code, 255, "{out:?}");
    assert!(out.stderr.contains("output stream broke"), "{out:?}");
    assert!(out.stdout.starts_with("one\n") && !out.stdout.contains("three"), "{out:?}");
    assert_eq!(sh(&backend, &sb.id, "echo fine").await.unwrap().stdout, "fine\n", "later calls work");
    backend.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn sandboxes_of_an_earlier_process_are_listed_and_usable() {
    let (fake, first) = setup().await;
    let mut request =
        CreateRequest::new(SandboxConfig { execution_timeout: Duration::from_secs(2), ..SandboxConfig::default() });
    request.metadata.insert("run_id".into(), "run-42".into());
    let sb = first.create(request).await.unwrap();

    let second = E2bBackend::new(fake.config()).unwrap();
    let listed = second.list().await.unwrap();
    let found = listed.iter().find(|s| s.id == sb.id).expect("listed by a fresh backend");
    assert_eq!(found.metadata.get("run_id").map(String::as_str), Some("run-42"));
    assert!(found.metadata.keys().all(|k| !k.starts_with("agentbox.")), "{:?}", found.metadata);
    assert_eq!(
        sh(&second, &sb.id, "echo again").await.unwrap().stdout,
        "again\n",
        "the access token comes from GET /sandboxes/{{id}}"
    );
    let out = sh(&second, &sb.id, "sleep 30").await.unwrap();
    assert!(out.timed_out, "the execution_timeout given at creation is remembered: {out:?}");
    second.destroy(&sb.id).await.unwrap();
    assert!(first.list().await.unwrap().iter().all(|s| s.id != sb.id));
}

#[tokio::test]
async fn foreign_sandboxes_are_not_listed() {
    let (fake, backend) = setup().await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/sandboxes", fake.api_url))
        .header("X-API-Key", "e2b_fake_key")
        .json(&serde_json::json!({"templateID": "base", "timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert!(backend.list().await.unwrap().is_empty(), "a sandbox made by another E2B client is not ours");
}

#[tokio::test]
async fn pause_and_resume() {
    let (_fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    backend.write_file(&sb.id, "kept.txt", b"state".to_vec()).await.unwrap();
    backend.pause(&sb.id).await.unwrap();
    let listed = backend.list().await.unwrap();
    assert_eq!(listed.iter().find(|s| s.id == sb.id).map(|s| s.state), Some(SandboxState::Paused));
    assert!(matches!(sh(&backend, &sb.id, "true").await, Err(Error::Conflict(m)) if m.contains("resume")));
    let info = backend.resume(&sb.id, Duration::from_secs(300)).await.unwrap();
    assert_eq!(info.state, SandboxState::Running);
    assert_eq!(backend.read_file(&sb.id, "kept.txt").await.unwrap(), b"state");
    backend.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn keep_alive_and_use_extend_the_e2b_timeout() {
    let (fake, backend) = setup().await;
    let config = SandboxConfig { idle_timeout: Duration::from_secs(120), ..SandboxConfig::default() };
    let sb = backend.create(CreateRequest::new(config)).await.unwrap();
    let end = || *fake.sandbox(sb.id.as_str()).unwrap().end_at.lock().unwrap();
    let remaining = |t: SystemTime| t.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(remaining(end()) <= Duration::from_secs(120), "created with the idle timeout as E2B timeout");
    backend.keep_alive(&sb.id, 900).await.unwrap();
    assert!(remaining(end()) > Duration::from_secs(600), "keep_alive sets the E2B timeout");
    let out = backend
        .exec(&sb.id, ExecRequest { timeout: Some(Duration::from_secs(3000)), ..ExecRequest::shell("true") })
        .await
        .unwrap()
        .collect(1024)
        .await;
    assert_eq!(out.exit_code, 0);
    assert!(remaining(end()) > Duration::from_secs(3000), "a long execution extends the lease beyond its limit");
    backend.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn templates_follow_the_preset_and_unknown_ones_are_not_found() {
    let fake = FakeE2b::start(FakeOptions::default()).await;
    let mut config = fake.config();
    config.templates.presets.insert(Preset::HeavyCompute, "missing-template".into());
    let backend = E2bBackend::new(config).unwrap();
    let mut request = CreateRequest::preset(Preset::HeavyCompute);
    request.metadata.insert("preset".into(), "heavy_compute".into());
    match backend.create(request).await {
        Err(Error::NotFound(m)) => assert!(m.contains("missing-template"), "{m}"),
        other => panic!("expected NotFound for the template, got {other:?}"),
    }
    let sb = backend.create(CreateRequest::preset(Preset::Lightweight)).await.unwrap();
    assert_eq!(fake.sandbox(sb.id.as_str()).unwrap().template, "code-interpreter-v1");
}

#[tokio::test]
async fn network_rules_reach_e2b_or_are_refused_before_creating() {
    let (fake, backend) = setup().await;
    let mut config = SandboxConfig::default();
    config.network.enabled = true;
    config.network.allowed_domains = vec!["pypi.org".into(), "*.pythonhosted.org".into()];
    let sb = backend.create(CreateRequest::new(config.clone())).await.unwrap();
    let body = fake.sandbox(sb.id.as_str()).unwrap().body.clone();
    assert_eq!(body["allow_internet_access"], true);
    assert_eq!(body["network"]["allowOut"], serde_json::json!(["pypi.org", "*.pythonhosted.org"]));
    assert_eq!(body["network"]["denyOut"], serde_json::json!(["0.0.0.0/0"]));

    let off = backend.create(CreateRequest::default()).await.unwrap();
    assert_eq!(fake.sandbox(off.id.as_str()).unwrap().body["allow_internet_access"], false);

    config.network.bandwidth_in_bytes_per_sec = Some(1 << 20);
    let before = fake.state.sandboxes.lock().unwrap().len();
    assert!(
        matches!(backend.create(CreateRequest::new(config)).await, Err(Error::Unsupported(m)) if m.contains("bandwidth"))
    );
    assert_eq!(fake.state.sandboxes.lock().unwrap().len(), before);
    assert!(matches!(
        backend.update_network(&sb.id, agentbox_config::NetworkConfig::default()).await,
        Err(Error::Unsupported(_))
    ));
}

#[tokio::test]
async fn metrics_before_e2b_has_a_sample_come_from_envd() {
    let (fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    let m = backend.metrics(&sb.id).await.unwrap();
    assert!(m.memory_used_mb > 0.0, "{m:?}");
    assert!(fake.seen().iter().any(|s| s.path == "/metrics"), "the young sandbox's metrics came from envd");
    sh(&backend, &sb.id, "exit 4").await.unwrap();
    let m = backend.metrics(&sb.id).await.unwrap();
    assert_eq!((m.execution_count, m.last_exit_code), (1, Some(4)));
    backend.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn code_interpreter_results_errors_and_the_process_fallback() {
    let (fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    let out =
        backend.run_code(&sb.id, CodeRequest::new(Language::Python, "x = 6\nx * 7")).await.unwrap().collect(4096).await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "42\n"), "the value of the last expression is shown");
    let out = backend
        .run_code(&sb.id, CodeRequest::new(Language::Python, "print('a')\n1/0"))
        .await
        .unwrap()
        .collect(4096)
        .await;
    assert_eq!(out.exit_code, 1);
    assert_eq!(out.stdout, "a\n");
    assert!(out.stderr.contains("ZeroDivisionError"), "{out:?}");
    assert!(fake.seen().iter().any(|s| s.path == "/execute"));
    backend.destroy(&sb.id).await.unwrap();

    let mut config = fake.config();
    config.templates.default = "base".into();
    let plain = E2bBackend::new(config).unwrap();
    let sb = plain.create(CreateRequest::default()).await.unwrap();
    let before = fake.seen().iter().filter(|s| s.path == "/execute").count();
    let out =
        plain.run_code(&sb.id, CodeRequest::new(Language::Python, "print(6 * 7)")).await.unwrap().collect(4096).await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "42\n"));
    assert_eq!(fake.seen().iter().filter(|s| s.path == "/execute").count(), before, "no interpreter in this template");
    let leftovers = plain.list_dir(&sb.id, "/tmp/agentbox-code").await.unwrap();
    assert!(leftovers.is_empty(), "the source file is removed after the run: {leftovers:?}");
    plain.destroy(&sb.id).await.unwrap();
}

#[tokio::test]
async fn stdin_larger_than_a_pipe_buffer_does_not_deadlock() {
    let (_fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let request = ExecRequest { stdin: Some(data.clone()), ..ExecRequest::argv(["cat"]) };
    let out = backend.exec(&sb.id, request).await.unwrap().collect(4 << 20).await;
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.as_bytes(), data.as_slice());
    backend.destroy(&sb.id).await.unwrap();
}

/// The fake is as strict as E2B where a lenient fake would hide a client bug: the code interpreter takes JSON
/// bodies only (with that content type, each field of its type), and envd takes exactly one envelope.
#[tokio::test]
async fn the_fake_refuses_what_e2b_refuses() {
    use base64::Engine as _;
    let (fake, backend) = setup().await;
    let sb = backend.create(CreateRequest::default()).await.unwrap();
    let token = fake.sandbox(sb.id.as_str()).unwrap().token.clone().unwrap();
    let client = reqwest::Client::new();
    let to = |port: &str, path: &str| {
        client
            .post(format!("{}{path}", fake.sandbox_url))
            .header("E2b-Sandbox-Id", sb.id.as_str())
            .header("E2b-Sandbox-Port", port)
            .header("X-Access-Token", &token)
    };
    let status_and_text = |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };
    for (what, content_type, body, status, says) in [
        ("malformed JSON", "application/json", "{\"language\": ", 422, "malformed JSON"),
        ("a language that is not a string", "application/json", "{\"language\": 3}", 422, "language must be a string"),
        ("a body that is not an object", "application/json", "[]", 422, "expected a JSON object"),
        ("another content type", "text/plain", "{\"language\": \"python\"}", 422, "expected application/json"),
    ] {
        let r = to("49999", "/contexts").header("Content-Type", content_type).body(body).send().await.unwrap();
        let (got, text) = status_and_text(r).await;
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
    }
    let r =
        to("49999", "/execute").header("Content-Type", "text/plain").body("{\"code\": \"1\"}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422, "/execute takes JSON only");
    let r = to("49999", "/execute").json(&serde_json::json!({"code": 1})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422, "code must be a string");

    // A Connect envelope whose length disagrees with the body, either way, is refused rather than trimmed.
    let user = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user:"));
    let payload = br#"{"process":{"cmd":"/bin/true"}}"#;
    for claimed in [payload.len() - 3, payload.len() + 3] {
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(claimed).unwrap().to_be_bytes());
        body.extend_from_slice(payload);
        let r = to("49983", "/process.Process/Start")
            .header("Content-Type", "application/connect+json")
            .header("Authorization", &user)
            .body(body)
            .send()
            .await
            .unwrap();
        let (got, text) = status_and_text(r).await;
        assert_eq!(got, 400, "an envelope claiming {claimed} of {} bytes: {text}", payload.len());
        assert!(text.contains(&format!("the envelope says {claimed} bytes")), "{text}");
    }
    backend.destroy(&sb.id).await.unwrap();
}
