//! A local E2B for tests, following E2B's published API: the control plane (spec/openapi.yml), E2B's sandbox
//! proxy routing by the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers, envd (spec/envd: Connect with JSON, server
//! streams in `[flags][len u32 BE][json]` envelopes with an end-of-stream message, proto3 JSON with defaults
//! omitted; `/files`), and the code interpreter (`/contexts`, `/execute` as NDJSON ending in `end_of_execution`).
//! Sandboxes are directories of a temporary directory, and commands are real processes (see `host`).
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc, clippy::result_large_err)]

pub mod control;
pub mod envd;
pub mod host;
pub mod interp;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::process::ChildStdin;

/// Knobs for failure tests.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answers for the next `POST /sandboxes` calls: status and optional Retry-After seconds.
    pub create: VecDeque<(u16, Option<u64>)>,
    /// Cut the next process stream after this many output events, without an end-of-stream message.
    pub break_stream_after: Option<usize>,
}

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Process {
    pub config: serde_json::Value,
    pub tag: Option<String>,
    pub stdin: Option<ChildStdin>,
}

#[derive(Debug, Clone)]
pub struct CodeContext {
    pub language: String,
    pub cwd: String,
    pub running: Option<u32>,
}

#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub template: String,
    pub token: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub started_at: SystemTime,
    pub end_at: Mutex<SystemTime>,
    pub paused: Mutex<bool>,
    pub fs: host::SandboxFs,
    pub processes: Mutex<HashMap<u32, Process>>,
    pub contexts: Mutex<HashMap<String, CodeContext>>,
    pub body: serde_json::Value,
}

impl Sandbox {
    pub fn kill_everything(&self) {
        let pids: Vec<u32> = self.processes.lock().unwrap().keys().copied().collect();
        for pid in pids {
            host::kill_tree(pid);
        }
        let running: Vec<u32> = self.contexts.lock().unwrap().values().filter_map(|c| c.running).collect();
        for pid in running {
            host::kill_tree(pid);
        }
    }
}

pub struct State {
    pub api_key: String,
    pub root: std::path::PathBuf,
    pub interpreter_templates: Vec<String>,
    pub sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    pub faults: Mutex<Faults>,
    pub seen: Mutex<Vec<Seen>>,
    pub seq: AtomicU64,
    pub cpu: Mutex<(u64, u64)>,
}

impl State {
    pub fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A live sandbox; one past its end time is killed and forgotten, as E2B does.
    pub fn sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        let mut all = self.sandboxes.lock().unwrap();
        let sb = all.get(id)?.clone();
        if *sb.end_at.lock().unwrap() <= SystemTime::now() {
            all.remove(id);
            drop(all);
            sb.kill_everything();
            return None;
        }
        Some(sb)
    }
}

/// The control plane's error body.
pub fn api_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"code": status.as_u16(), "message": message}))).into_response()
}

/// A Connect unary error.
pub fn connect_error(code: &str, message: &str) -> Response {
    let status = match code {
        "not_found" => StatusCode::NOT_FOUND,
        "invalid_argument" | "failed_precondition" => StatusCode::BAD_REQUEST,
        "already_exists" => StatusCode::CONFLICT,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "permission_denied" => StatusCode::FORBIDDEN,
        "unimplemented" => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({"code": code, "message": message}))).into_response()
}

/// A running fake E2B: a control plane and a sandbox proxy on two loopback ports.
pub struct FakeE2b {
    pub api_url: String,
    pub sandbox_url: String,
    pub state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// How to start the fake.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Templates that serve the code interpreter on port 49999.
    pub interpreter_templates: Vec<String>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self { interpreter_templates: vec!["code-interpreter-v1".into()] }
    }
}

impl FakeE2b {
    pub async fn start(options: FakeOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State {
            api_key: "e2b_fake_key".into(),
            root: dir.path().to_path_buf(),
            interpreter_templates: options.interpreter_templates,
            sandboxes: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            seen: Mutex::new(Vec::new()),
            seq: AtomicU64::new(1),
            cpu: Mutex::new(host::cpu_jiffies()),
        });
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let sandbox_url = format!("http://{}", proxy.local_addr().unwrap());
        let control = control::router(state.clone());
        let sandboxes = envd::router(state.clone());
        let tasks = vec![
            tokio::spawn(async move { axum::serve(api, control).await.unwrap() }),
            tokio::spawn(async move { axum::serve(proxy, sandboxes).await.unwrap() }),
        ];
        Self { api_url, sandbox_url, state, tasks, _dir: dir }
    }

    /// An E2B configuration pointing at this fake (routing by headers, plain http).
    pub fn config(&self) -> agentbox_e2b::E2bConfig {
        let mut c = agentbox_e2b::E2bConfig::new(self.state.api_key.clone());
        c.domain = "e2b.test".into();
        c.api_url = Some(self.api_url.clone());
        c.sandbox_url = Some(self.sandbox_url.clone());
        c.retry.initial_backoff = Duration::from_millis(10);
        c.timeouts.request = Duration::from_secs(30);
        c
    }

    /// Ends a sandbox behind the backend's back, as E2B does when its timeout passes.
    pub fn expire(&self, id: &str) {
        if let Some(sb) = self.state.sandboxes.lock().unwrap().get(id) {
            *sb.end_at.lock().unwrap() = SystemTime::UNIX_EPOCH;
        }
    }

    pub fn sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.state.sandboxes.lock().unwrap().get(id).cloned()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeE2b {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let all: Vec<Arc<Sandbox>> = self.state.sandboxes.lock().unwrap().drain().map(|(_, s)| s).collect();
        for sb in all {
            sb.kill_everything();
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as Go's JSON writes times.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
