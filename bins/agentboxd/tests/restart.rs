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
    // The sandboxes died with the server; their files were kept, so both runs are back, stopped.
    let (status, list) = api.call(reqwest::Method::GET, "/api/sandboxes", None).await;
    assert_eq!(status, 200);
    let states: Vec<(&str, &str)> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["run_id"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("one", "stopped"), ("two", "stopped")], "{list}");
    let (status, out) =
        api.call(reqwest::Method::POST, "/api/sandboxes/one/execute/command", Some(json!({"command": "true"}))).await;
    assert_eq!(status, 409, "a stopped run runs nothing until started: {out}");
    // Create starts a stopped run (200: it exists), on its files.
    for run in ["one", "two"] {
        let (status, body) =
            api.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({"run_id": run}))).await;
        assert_eq!((status, body["state"].as_str()), (200, Some("running")), "{run}: {body}");
    }
    let (status, out) = api
        .call(reqwest::Method::POST, "/api/sandboxes/one/execute/command", Some(json!({"command": "cat note"})))
        .await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("hi\n")), "{out}");
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
    assert_eq!(listed, ["one"], "a deleted run stays deleted; the other was stopped at shutdown, its files kept");
    for run in &listed {
        let (status, body) = api.call(reqwest::Method::POST, &format!("/api/sandboxes/{run}/start"), None).await;
        assert_eq!(status, 200, "{run}: {body}");
        let (status, out) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/sandboxes/{run}/execute/command"),
                Some(json!({"command": "cat note"})),
            )
            .await;
        assert_eq!((status, out["stdout"].as_str()), (200, Some("hi\n")), "{run}: {out}");
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

/// The names in a listing (`{"snapshots": [...]}` or `{"volumes": [...]}`).
async fn names(api: &Api, path: &str, field: &str) -> Vec<String> {
    let (status, list) = api.call(reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "{list}");
    list[field].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

/// A crash can come between any backend step and its record. Each window is reproduced by killing the server
/// and writing the registry as the crash would have left it; the next server finishes or undoes each one, and
/// loses no files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_interrupted_by_kill_9_are_finished_by_the_next_server() {
    use agentbox_server::registry::{KeptKind, KeptRecord, KeptStatus, RecordStatus, Registry};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = "interrupted-token-0123456789";
    let first = Daemon::start(&data, Some(token));
    let api = Api { client: reqwest::Client::new(), base: first.base.clone(), token: token.into() };
    // Names are unique to this test: the storage pool is the host's, shared with other tests.
    let (snap_kept, snap_doomed, snap_never, vol) =
        ("restart-mid-create", "restart-mid-delete", "restart-never-made", "restart-kept-volume");
    // What an earlier run of this test that failed half-way left goes first.
    for path in
        [format!("/api/snapshots/{snap_kept}"), format!("/api/snapshots/{snap_doomed}"), format!("/api/volumes/{vol}")]
    {
        let _ = api.call(reqwest::Method::DELETE, &path, None).await;
    }
    for run in ["mid-stop", "mid-start"] {
        let (status, body) =
            api.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({"run_id": run}))).await;
        assert_eq!(status, 201, "{body}");
        let (status, out) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/sandboxes/{run}/execute/command"),
                Some(json!({"command": format!("echo files of {run} > notes.txt")})),
            )
            .await;
        assert_eq!(status, 200, "{out}");
    }
    // A sandbox the registry does not record (its row is dropped below, as for a sandbox made outside it).
    let (status, body) =
        api.call(reqwest::Method::POST, "/api/sandboxes/create", Some(json!({"run_id": "unrecorded"}))).await;
    assert_eq!(status, 201, "{body}");
    let unrecorded_id = body["sandbox_id"].as_str().unwrap().to_owned();
    for snap in [snap_kept, snap_doomed] {
        let (status, body) =
            api.call(reqwest::Method::POST, "/api/sandboxes/mid-stop/snapshots", Some(json!({"name": snap}))).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) =
        api.call(reqwest::Method::POST, "/api/volumes", Some(json!({"name": vol, "size_gb": 1}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = api.call(reqwest::Method::POST, "/api/sandboxes/mid-stop/stop", None).await;
    assert_eq!(status, 200);
    let (status, _) = api.call(reqwest::Method::POST, "/api/sandboxes/mid-start/stop", None).await;
    assert_eq!(status, 200);
    let (status, _) = api.call(reqwest::Method::POST, "/api/sandboxes/mid-start/start", None).await;
    assert_eq!(status, 200);
    first.signal(libc::SIGKILL);
    drop(first);

    // The registry as each crash would have left it.
    let registry = Registry::open(&data.join("registry.db")).unwrap();
    let rows = registry.load().await.unwrap();
    let row = |run: &str| rows.iter().find(|r| r.run_id == run).unwrap().clone();
    // The stop kept the files, and the server died before recording it.
    assert_eq!(row("mid-stop").status, RecordStatus::Stopped);
    registry
        .upsert(agentbox_server::registry::Record { status: RecordStatus::Ready, ..row("mid-stop") })
        .await
        .unwrap();
    // The start took the files off the shelf and made the sandbox, and the server died before recording it.
    let stale = agentbox_server::registry::Record {
        status: RecordStatus::Stopped,
        sandbox_id: Some("a-key-no-longer-on-the-shelf".into()),
        ..row("mid-start")
    };
    registry.upsert(stale).await.unwrap();
    registry.remove("unrecorded").await.unwrap();
    let kept = registry.load_kept().await.unwrap();
    let names_kept: Vec<&str> = kept.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names_kept, [snap_kept, snap_doomed, vol], "every snapshot and volume the server made is recorded");
    assert!(kept.iter().all(|k| k.status == KeptStatus::Ready && k.backend == "local"), "{kept:?}");
    let set = |name: &str, status| {
        let mut k = kept.iter().find(|k| k.name == name).unwrap().clone();
        k.status = status;
        k
    };
    registry.upsert_kept(set(snap_kept, KeptStatus::Creating)).await.unwrap();
    registry.upsert_kept(set(snap_doomed, KeptStatus::Deleting)).await.unwrap();
    let never = KeptRecord { name: snap_never.into(), status: KeptStatus::Creating, ..kept[0].clone() };
    registry.upsert_kept(never).await.unwrap();
    drop(registry);

    let second = Daemon::start(&data, Some(token));
    let api = Api { base: second.base.clone(), ..api };
    let (status, list) = api.call(reqwest::Method::GET, "/api/sandboxes", None).await;
    assert_eq!(status, 200);
    let mut states: Vec<(&str, &str)> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["run_id"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    states.sort_unstable();
    // The started sandbox died with the server; its files were kept, and found by its run's label.
    assert_eq!(states, [("mid-start", "stopped"), ("mid-stop", "stopped")], "{list}");
    for run in ["mid-start", "mid-stop"] {
        let (status, _) = api.call(reqwest::Method::POST, &format!("/api/sandboxes/{run}/start"), None).await;
        assert_eq!(status, 200);
        let (status, out) = api
            .call(
                reqwest::Method::POST,
                &format!("/api/sandboxes/{run}/execute/command"),
                Some(json!({"command": "cat notes.txt"})),
            )
            .await;
        assert_eq!((status, out["stdout"].as_str()), (200, Some(format!("files of {run}\n").as_str())), "{out}");
    }
    let shelf = std::path::Path::new("/var/lib/agentbox/storage/pool/stopped");
    assert!(!shelf.join(&unrecorded_id).exists(), "files a crash kept that no record claims are discarded");
    let snapshots = names(&api, "/api/snapshots", "snapshots").await;
    assert!(snapshots.iter().any(|n| n == snap_kept), "a snapshot made before the crash is kept: {snapshots:?}");
    assert!(!snapshots.iter().any(|n| n == snap_doomed), "an interrupted deletion is finished: {snapshots:?}");
    assert!(names(&api, "/api/volumes", "volumes").await.iter().any(|n| n == vol));
    let registry = Registry::open(&data.join("registry.db")).unwrap();
    let kept: Vec<(KeptKind, String, KeptStatus)> =
        registry.load_kept().await.unwrap().into_iter().map(|k| (k.kind, k.name, k.status)).collect();
    assert_eq!(
        kept,
        [
            (KeptKind::Snapshot, snap_kept.to_owned(), KeptStatus::Ready),
            (KeptKind::Volume, vol.to_owned(), KeptStatus::Ready)
        ],
        "rows are settled: the interrupted creation recorded, the deletion and the never-made snapshot dropped"
    );

    // Deleting through the API drops the records with the files.
    for path in [format!("/api/snapshots/{snap_kept}"), format!("/api/volumes/{vol}")] {
        let (status, body) = api.call(reqwest::Method::DELETE, &path, None).await;
        assert_eq!(status, 204, "{path}: {body}");
    }
    for run in ["mid-stop", "mid-start"] {
        let (status, _) = api.call(reqwest::Method::DELETE, &format!("/api/sandboxes/{run}"), None).await;
        assert_eq!(status, 204);
    }
    assert!(registry.load_kept().await.unwrap().is_empty());
    assert!(registry.load().await.unwrap().is_empty());
}
