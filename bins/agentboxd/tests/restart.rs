//! The real `agentboxd` binary with the local backend: generated token, kill -9 and restart, SIGTERM.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// A running `agentboxd`, its address and the stderr lines it printed before listening.
struct Daemon {
    child: Child,
    base: String,
    banner: Vec<String>,
}

impl Daemon {
    fn start(data_dir: &Path, token: Option<&str>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentboxd"));
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .env_remove("AGENTBOX_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("AGENTBOX_API_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let base = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("agentboxd did not start: {banner:?}"));
            banner.push(line.clone());
            if let Some(rest) = line.strip_prefix("agentboxd listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // The token lines follow the address.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            banner.push(line);
        }
        Self { child, base, banner }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        let rc = unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), sig) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn runs(&self) -> Vec<String> {
        let (status, list) = self.call(reqwest::Method::GET, "/api/sandboxes", None).await;
        assert_eq!(status, 200);
        list["sandboxes"].as_array().unwrap().iter().map(|s| s["run_id"].as_str().unwrap().to_owned()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_leaves_a_list_consistent_with_reality() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // First start: no token configured, so one is generated, printed once and stored 0600.
    let first = Daemon::start(&data, None);
    let token_file = data.join("api-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(first.banner.iter().any(|l| l.trim() == token), "the generated token is printed once: {:?}", first.banner);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    let api = Api { client: reqwest::Client::new(), base: first.base.clone(), token: token.clone() };
    for run in ["one", "two"] {
        let (status, body) =
            api.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({"run_id": run}))).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["backend"], "local");
    }
    let (status, out) = api
        .call(
            reqwest::Method::POST,
            "/api/sandboxes/one/execute/command",
            Some(json!({"command": "echo hi > note; cat note"})),
        )
        .await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("hi\n")), "{out}");
    assert_eq!(api.runs().await, ["one", "two"]);

    // kill -9: no chance to clean up or write anything.
    first.signal(libc::SIGKILL);
    drop(first);

    // Second start: the stored token is reused (and not printed again).
    let second = Daemon::start(&data, None);
    assert!(!second.banner.iter().any(|l| l.contains(token.trim())), "{:?}", second.banner);
    let api = Api { base: second.base.clone(), ..api };
    let listed = api.runs().await;
    // Every listed sandbox really works; every unlisted run is really gone.
    for run in ["one", "two"] {
        let (status, out) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/sandboxes/{run}/execute/command"),
                Some(json!({"command": "echo alive"})),
            )
            .await;
        if listed.iter().any(|r| r == run) {
            assert_eq!((status, out["stdout"].as_str()), (200, Some("alive\n")), "{run}: {out}");
        } else {
            assert_eq!(status, 404, "{run}: {out}");
        }
    }
    // The runs can be used again either way: create answers 200 for a re-adopted run, 201 for a forgotten one.
    for run in ["one", "two"] {
        let (status, body) =
            api.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({"run_id": run}))).await;
        let want = if listed.iter().any(|r| r == run) { 200 } else { 201 };
        assert_eq!(status, want, "{run}: {body}");
    }
    assert_eq!(api.runs().await, ["one", "two"]);
    let (status, _) = api.call(reqwest::Method::DELETE, "/api/sandboxes/two", None).await;
    assert_eq!(status, 204);

    // SIGTERM: a graceful stop, exit status 0.
    let mut second = second;
    second.signal(libc::SIGTERM);
    let status = second.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    drop(second);

    // Third start with a configured token: the registry still matches reality.
    let third = Daemon::start(&data, Some("configured-token-0123456789"));
    let api = Api { base: third.base.clone(), token: "configured-token-0123456789".into(), ..api };
    let listed = api.runs().await;
    assert!(!listed.iter().any(|r| r == "two"), "a deleted run stays deleted: {listed:?}");
    for run in &listed {
        let (status, out) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/sandboxes/{run}/execute/command"),
                Some(json!({"command": "true"})),
            )
            .await;
        assert_eq!(status, 200, "{run}: {out}");
    }
    let (status, _) = api.call(reqwest::Method::GET, "/api/sandboxes", None).await;
    assert_eq!(status, 200);
    let old = Api { token: token.trim().to_owned(), ..api };
    let (status, _) = old.call(reqwest::Method::GET, "/api/sandboxes", None).await;
    assert_eq!(status, 401, "the configured token replaces the stored one");
    for run in listed {
        let (status, _) = old.call(reqwest::Method::DELETE, &format!("/api/sandboxes/{run}"), None).await;
        assert_eq!(status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sandbox_survives_kill_9_and_starts_with_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = "stop-start-token-0123456789";
    let first = Daemon::start(&data, Some(token));
    let api = Api { client: reqwest::Client::new(), base: first.base.clone(), token: token.into() };
    let (status, body) =
        api.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({"run_id": "kept"}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, out) = api
        .call(
            reqwest::Method::POST,
            "/api/sandboxes/kept/execute/command",
            Some(json!({"command": "echo day one > notes.txt; echo ok"})),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let (status, stopped) = api.call(reqwest::Method::POST, "/api/sandboxes/kept/stop", None).await;
    assert_eq!((status, stopped["state"].as_str()), (200, Some("stopped")), "{stopped}");
    let (status, out) =
        api.call(reqwest::Method::POST, "/api/sandboxes/kept/execute/command", Some(json!({"command": "true"}))).await;
    assert_eq!(status, 409, "{out}");
    assert!(out.to_string().contains("start it first"), "{out}");

    // kill -9, then a new server: the stopped run is still there, stopped, with its files.
    first.signal(libc::SIGKILL);
    drop(first);
    let second = Daemon::start(&data, Some(token));
    let api = Api { base: second.base.clone(), ..api };
    let (status, list) = api.call(reqwest::Method::GET, "/api/sandboxes?state=stopped", None).await;
    assert_eq!(status, 200);
    let runs: Vec<&str> = list["sandboxes"].as_array().unwrap().iter().map(|s| s["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs, ["kept"], "{list}");
    let (status, started) = api.call(reqwest::Method::POST, "/api/sandboxes/kept/start", None).await;
    assert_eq!((status, started["state"].as_str()), (200, Some("running")), "{started}");
    let (status, out) = api
        .call(reqwest::Method::POST, "/api/sandboxes/kept/execute/command", Some(json!({"command": "cat notes.txt"})))
        .await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("day one\n")), "{out}");

    // Stopped again, then SIGTERM: a graceful stop keeps a stopped run's files too; rm deletes them.
    let (status, _) = api.call(reqwest::Method::POST, "/api/sandboxes/kept/stop", None).await;
    assert_eq!(status, 200);
    let mut second = second;
    second.signal(libc::SIGTERM);
    assert!(second.child.wait().unwrap().success());
    drop(second);
    let third = Daemon::start(&data, Some(token));
    let api = Api { base: third.base.clone(), ..api };
    assert_eq!(api.runs().await, ["kept"]);
    let (status, _) = api.call(reqwest::Method::DELETE, "/api/sandboxes/kept", None).await;
    assert_eq!(status, 204);
    assert!(api.runs().await.is_empty());
}
