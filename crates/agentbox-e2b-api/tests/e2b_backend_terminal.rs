//! Interactive terminals through the E2B backend (`agentbox-e2b`, a client of E2B's API) against this crate's
//! E2B-compatible API, served on loopback over real local sandboxes: the backend starts a process with envd's
//! `pty`, types at it with `SendInput`, resizes it with `Update` and hangs it up, as E2B's SDKs do. Needs root,
//! as every local-backend test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{
    Command, CreateRequest, ExecEvent, ExecRequest, ExecStream, ManagerConfig, SandboxBackend, SandboxId,
    SandboxManager, TerminalInput, TerminalRequest, TerminalSize,
};
use agentbox_e2b_api::{E2bApi, E2bApiConfig};

const KEY: &str = "e2b_00112233445566778899aabbccddeeff00112233";

/// The E2B backend pointed at agentboxd's E2B API over the local backend, and one sandbox of it; the API's server
/// task stops and the sandbox goes with it.
struct Served {
    backend: agentbox_e2b::E2bBackend,
    id: SandboxId,
    server: tokio::task::JoinHandle<()>,
    _api: E2bApi,
}

impl Served {
    async fn new() -> Self {
        let local = agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default())
            .expect("local backend (tests run as root)");
        let manager = SandboxManager::new(Arc::new(local), ManagerConfig::default());
        let config = E2bApiConfig { enabled: true, ..E2bApiConfig::default() };
        let api = E2bApi::new(manager, Arc::new(|key: &[u8]| key == KEY.as_bytes()), config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = api.router();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let mut e2b = agentbox_e2b::E2bConfig::new(KEY);
        e2b.domain = "agentbox.test".into();
        e2b.api_url = Some(base.clone());
        e2b.sandbox_url = Some(base);
        let backend = agentbox_e2b::E2bBackend::new(e2b).unwrap();
        let id = backend.create(CreateRequest::default()).await.unwrap().id;
        Self { backend, id, server, _api: api }
    }

    /// Runs `line` with bash through the backend's exec.
    async fn sh(&self, line: &str) -> agentbox_core::ExecOutput {
        let stream = self.backend.exec(&self.id, ExecRequest::shell(line)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), stream.collect(1 << 20)).await.unwrap()
    }

    async fn destroy(self) {
        self.backend.destroy(&self.id).await.unwrap();
        self.server.abort();
    }
}

/// Reads output until `needle` shows up (the screen so far is returned), or fails after 20 s.
async fn until(output: &mut ExecStream, screen: &mut String, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while !screen.contains(needle) {
            match output.next().await {
                Some(ExecEvent::Stdout(b)) => screen.push_str(&String::from_utf8_lossy(&b)),
                other => panic!("the terminal ended before {needle:?}: {other:?}\n{screen}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {needle:?} on the terminal:\n{screen}");
}

fn type_in(s: &str) -> TerminalInput {
    TerminalInput::Data(s.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_an_e2b_terminal_is_typed_at_resized_and_interrupted() {
    if agentbox_conformance::not_root() {
        return;
    }
    let sb = Served::new().await;
    let request = TerminalRequest { size: TerminalSize { rows: 30, cols: 90 }, ..TerminalRequest::default() };
    let mut term = sb.backend.open_terminal(&sb.id, request).await.unwrap();
    let mut screen = String::new();

    term.input.send(type_in("stty size; tty; echo \"term=$TERM lang=$LC_ALL\"\r")).await.unwrap();
    until(&mut term.output, &mut screen, "30 90").await;
    until(&mut term.output, &mut screen, "/dev/pts/").await;
    until(&mut term.output, &mut screen, "term=xterm-256color lang=C.UTF-8").await;

    term.input.send(TerminalInput::Resize(TerminalSize { rows: 50, cols: 120 })).await.unwrap();
    term.input.send(type_in("stty size\r")).await.unwrap();
    until(&mut term.output, &mut screen, "50 120").await;

    // Ctrl-C reaches the foreground process through the terminal, not the shell.
    term.input.send(type_in("sleep 60; echo not-$((0 + 1))-interrupted\r")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    term.input.send(TerminalInput::Data(vec![0x03])).await.unwrap();
    term.input.send(type_in("echo after-$((40 + 2))\r")).await.unwrap();
    until(&mut term.output, &mut screen, "after-42").await;
    assert!(!screen.contains("not-1-interrupted"), "{screen}");

    term.input.send(type_in("exit 7\r")).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
    assert_eq!((rest.exit_code, rest.signal), (7, None), "{screen}{}", rest.stdout);
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_input_hangs_the_e2b_terminal_up_and_leaves_nothing_running() {
    if agentbox_conformance::not_root() {
        return;
    }
    let sb = Served::new().await;

    let request = TerminalRequest {
        command: Some(Command::Argv(vec!["sleep".into(), "600".into()])),
        ..TerminalRequest::default()
    };
    let term = sb.backend.open_terminal(&sb.id, request).await.unwrap();
    drop(term.input);
    let out = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out:?}");
    assert_eq!(sb.sh("pgrep -x sleep || true").await.stdout, "");

    // A shell with a job that ignores SIGHUP, and a foreground command: the whole tree goes.
    let mut term = sb.backend.open_terminal(&sb.id, TerminalRequest::default()).await.unwrap();
    let mut screen = String::new();
    term.input.send(type_in("(trap '' HUP; exec sleep 500) & echo started-$((1 + 1))\r")).await.unwrap();
    until(&mut term.output, &mut screen, "started-2").await;
    term.input.send(type_in("sleep 600\r")).await.unwrap();
    let mut sleeping = String::new();
    for _ in 0..100 {
        sleeping = sb.sh("pgrep -x sleep | wc -l").await.stdout.trim().to_owned();
        if sleeping == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sleeping, "2", "both sleeps run before the hang-up: {screen}");
    drop(term.input);
    let out = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
    assert_eq!(out.signal, Some(libc::SIGKILL), "{out:?}");
    assert_eq!(sb.sh("pgrep -x sleep || true").await.stdout, "");
    sb.destroy().await;
}

/// A resize sent right after the terminal's process starts (while its shell is still starting up) is what the
/// first command sees: input and resizes reach envd in the order they were given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_right_after_start_is_seen_by_the_first_command_on_an_e2b_terminal() {
    if agentbox_conformance::not_root() {
        return;
    }
    let sb = Served::new().await;
    for round in 0..5 {
        let request = TerminalRequest { size: TerminalSize { rows: 24, cols: 80 }, ..TerminalRequest::default() };
        let term = sb.backend.open_terminal(&sb.id, request).await.unwrap();
        term.input.send(TerminalInput::Resize(TerminalSize { rows: 24, cols: 100 })).await.unwrap();
        term.input.send(type_in("tput cols\nexit\n")).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
        assert!(out.stdout.contains("100\r\n"), "round {round}: {:?}", out.stdout);
        assert_eq!(out.exit_code, 0, "round {round}: {:?}", out.stdout);
    }
    sb.destroy().await;
}
