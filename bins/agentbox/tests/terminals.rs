//! Kept terminals against a real server on loopback (`agentbox serve`, which is agentboxd) with the
//! local backend: over the WebSocket protocol (through the client library), and through the binary's
//! `shell --keep`, `attach` and `terminals` on a real terminal (tmux).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use agentbox_client::{Client, ClientConfig, ClientError, TerminalOptions, TerminalOutput, TerminalSession};
use common::server::Server;
use common::tmux::{pane_until, tmux};

fn not_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1) != 0
}

fn client(s: &Server) -> Client {
    Client::new(ClientConfig {
        url: s.url.clone(),
        token: Some(s.token.clone()),
        connect_timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// Reads the session's output until it contains every one of `needles`; answers it all.
async fn read_until(session: &mut TerminalSession, needles: &[&str]) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !needles.iter().all(|n| seen.contains(n)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, session.next()).await {
            Ok(Ok(Some(TerminalOutput::Data(d)))) => seen.push_str(&String::from_utf8_lossy(&d)),
            Ok(other) => panic!("expected output, got {other:?} after {seen:?}"),
            Err(_) => panic!("the terminal never showed {needles:?}:\n{seen}"),
        }
    }
    seen
}

async fn kept_id(session: &mut TerminalSession) -> (String, u64) {
    match session.next().await.unwrap() {
        Some(TerminalOutput::Kept { id, dropped_bytes }) => (id, dropped_bytes),
        other => panic!("a kept terminal names itself first, got {other:?}"),
    }
}

/// Polls the list until `check` holds.
async fn list_until(c: &Client, run: &str, check: impl Fn(&[agentbox_client::TerminalInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = c.terminals(run).await.unwrap();
        if check(&list) {
            return;
        }
        assert!(Instant::now() < deadline, "the list never settled: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_terminal_survives_its_socket_and_replays_what_it_printed() {
    if not_root() {
        return;
    }
    let s = Server::start("kept-ws");
    let c = client(&s);
    c.create(&serde_json::json!({"run_id": "kept"})).await.unwrap();

    // A plain terminal is not kept: closing it hangs it up, and it is never listed.
    let plain = c.terminal("kept", &TerminalOptions::default()).await.unwrap();
    drop(plain);
    assert!(c.terminals("kept").await.unwrap().is_empty());

    let options = TerminalOptions { size: Some((30, 100)), keep: true, ..TerminalOptions::default() };
    let mut first = c.terminal("kept", &options).await.unwrap();
    let (id, dropped) = kept_id(&mut first).await;
    assert_eq!(dropped, 0);
    first.send(b"echo one-$((1+1))\r".to_vec()).await.unwrap();
    read_until(&mut first, &["one-2"]).await;
    // Typed before leaving, printed while nobody is attached.
    first.send(b"sleep 1; echo two-$((2+2))\r".to_vec()).await.unwrap();
    first.close().await.unwrap();

    list_until(&c, "kept", |l| l.len() == 1 && !l[0].attached).await;
    let listed = &c.terminals("kept").await.unwrap()[0];
    assert_eq!((listed.id.as_str(), listed.exited, listed.command.as_str()), (id.as_str(), false, "bash -l"));
    assert_eq!((listed.size.rows, listed.size.cols), (30, 100));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.terminals("kept").await.unwrap()[0].buffered_bytes > 0);

    // Reattached: what it printed before and while detached, then live output.
    let mut again = c.attach_terminal("kept", &id).await.unwrap();
    assert_eq!(kept_id(&mut again).await, (id.clone(), 0));
    let replayed = read_until(&mut again, &["one-2", "two-4"]).await;
    assert!(replayed.find("one-2").unwrap() < replayed.rfind("two-4").unwrap(), "{replayed}");
    again.send(b"echo three-$((3+3))\r".to_vec()).await.unwrap();
    read_until(&mut again, &["three-6"]).await;
    list_until(&c, "kept", |l| l[0].attached).await;

    // A second client takes over; the first one's connection ends without an exit.
    let mut third = c.attach_terminal("kept", &id).await.unwrap();
    kept_id(&mut third).await;
    read_until(&mut third, &["three-6"]).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match again.next().await {
                Ok(Some(TerminalOutput::Data(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");

    // Unknown ids are 404s that say where the list is.
    match c.attach_terminal("kept", "term-999").await {
        Err(ClientError::NotFound { message: m }) => assert!(m.contains("/terminals lists them"), "{m}"),
        other => panic!("expected a 404, got {other:?}"),
    }
    assert!(matches!(c.close_terminal("kept", "term-999").await, Err(ClientError::NotFound { .. })));

    // DELETE hangs it up: the attached client gets the exit (SIGHUP), the list empties.
    c.close_terminal("kept", &id).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match third.next().await.unwrap() {
                Some(TerminalOutput::Data(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    match exit {
        Some(TerminalOutput::Exit(e)) => assert_eq!(e.exit_code, 129, "{e:?}"),
        other => panic!("expected the exit, got {other:?}"),
    }
    assert!(c.terminals("kept").await.unwrap().is_empty());

    // Destroying the sandbox ends the kept terminals left.
    let mut left = c.terminal("kept", &options).await.unwrap();
    let (left_id, _) = kept_id(&mut left).await;
    drop(left);
    list_until(&c, "kept", |l| l.len() == 1).await;
    c.delete("kept").await.unwrap();
    assert!(matches!(c.terminals("kept").await, Err(ClientError::NotFound { .. })));
    c.create(&serde_json::json!({"run_id": "kept"})).await.unwrap();
    assert!(c.terminals("kept").await.unwrap().is_empty(), "a new sandbox of the same run starts with none");
    assert!(matches!(c.attach_terminal("kept", &left_id).await, Err(ClientError::NotFound { .. })));
    c.delete("kept").await.unwrap();
}

#[test]
fn shell_keep_detaches_with_ctrl_p_ctrl_q_and_attach_comes_back() {
    if not_root() {
        return;
    }
    let s = Server::start("kept-cli");
    assert!(s.agentbox(&["create", "cli-keep"]).status.success());
    let socket = format!("agentbox-keep-test-{}", std::process::id());
    let env = format!("AGENTBOX_URL={} AGENTBOX_API_TOKEN={}", s.url, s.token);
    let bin = env!("CARGO_BIN_EXE_agentbox");
    let line = format!("{env} {bin} shell cli-keep --keep; echo DETACHED=$?; exec bash --norc");
    tmux(&socket, &["new-session", "-d", "-s", "s", "-x", "120", "-y", "30", &line]);
    let keys = |k: &[&str]| {
        let mut args = vec!["send-keys", "-t", "s"];
        args.extend_from_slice(k);
        tmux(&socket, &args);
    };
    let pane = pane_until(&socket, "user@sandbox:~$");
    let id = pane.split("terminal ").nth(1).and_then(|r| r.split(':').next()).unwrap().to_owned();
    assert!(id.starts_with("term-"), "{pane}");
    keys(&["echo kept-$((3+3))", "Enter"]);
    pane_until(&socket, "kept-6");
    keys(&["sleep 1; echo later-$((4+4))", "Enter"]);
    keys(&["C-p", "C-q"]);
    pane_until(&socket, "DETACHED=0");

    // Listed, detached; then reattached on the terminal, replaying both lines.
    let o = s.agentbox(&["terminals", "cli-keep"]);
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(listing.lines().any(|l| l.starts_with(&id) && l.contains("detached")), "{listing}");
    let o = s.agentbox(&["terminals", "cli-keep", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    std::thread::sleep(Duration::from_millis(1500));
    keys(&["clear", "Enter"]);
    keys(&[&format!("{env} {bin} attach cli-keep {id}; echo ATTACH=$?"), "Enter"]);
    pane_until(&socket, "later-8");
    pane_until(&socket, "kept-6");
    keys(&["exit 7", "Enter"]);
    pane_until(&socket, "ATTACH=7");
    let o = s.agentbox(&["terminals", "cli-keep"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no kept terminals"), "{o:?}");

    // Closed from the command line.
    let o = s.agentbox(&["terminals", "cli-keep", "--close", "term-404"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    tmux(&socket, &["kill-server"]);
    assert!(s.agentbox(&["rm", "cli-keep"]).status.success());
}
