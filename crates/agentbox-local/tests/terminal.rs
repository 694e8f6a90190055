//! Interactive terminals: a login shell on a pseudo-terminal in the sandbox, typed at, resized and
//! interrupted the way a person at a terminal would.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use agentbox_core::{Command, ExecEvent, SandboxBackend, TerminalInput, TerminalRequest, TerminalSize};
use common::Sandbox;

/// Reads output until `needle` shows up (the screen so far is returned), or fails after 20 s.
async fn until(output: &mut agentbox_core::ExecStream, screen: &mut String, needle: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_a_terminal_is_typed_at_resized_and_interrupted() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let request = TerminalRequest { size: TerminalSize { rows: 30, cols: 90 }, ..TerminalRequest::default() };
    let mut term = sb.backend.open_terminal(&sb.id, request).await.unwrap();
    let mut screen = String::new();
    let type_in = |s: &str| TerminalInput::Data(s.as_bytes().to_vec());

    term.input.send(type_in("stty size; tty; echo \"term=$TERM\"\r")).await.unwrap();
    until(&mut term.output, &mut screen, "30 90").await;
    until(&mut term.output, &mut screen, "/dev/pts/").await;
    until(&mut term.output, &mut screen, "term=xterm-256color").await;

    term.input.send(TerminalInput::Resize(TerminalSize { rows: 50, cols: 120 })).await.unwrap();
    term.input.send(type_in("stty size\r")).await.unwrap();
    until(&mut term.output, &mut screen, "50 120").await;

    // Ctrl-C reaches the foreground process through the terminal, not the shell.
    term.input.send(type_in("sleep 60; echo not-$((0 + 1))-interrupted\r")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.input.send(TerminalInput::Data(vec![0x03])).await.unwrap();
    term.input.send(type_in("echo after-$((40 + 2))\r")).await.unwrap();
    until(&mut term.output, &mut screen, "after-42").await;
    assert!(!screen.contains("not-1-interrupted"), "{screen}");

    term.input.send(type_in("exit 7\r")).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
    assert_eq!(rest.exit_code, 7, "{screen}{}", rest.stdout);
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_input_hangs_the_terminal_up() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let request = TerminalRequest {
        command: Some(Command::Argv(vec!["sleep".into(), "600".into()])),
        ..TerminalRequest::default()
    };
    let term = sb.backend.open_terminal(&sb.id, request).await.unwrap();
    drop(term.input);
    let out = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
    assert_eq!(out.signal, Some(libc::SIGHUP), "{out:?}");
    // Nothing of it is left running.
    let ps = sb.sh("pgrep -x sleep || true").await;
    assert_eq!(ps.stdout, "");
    sb.destroy().await;
}

/// A resize sent right after the terminal's process starts (while its shell is still starting up) is what
/// the first command sees, as E2B's SDKs do it: start, resize, type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_right_after_start_is_seen_by_the_first_command() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    for round in 0..20 {
        let request = TerminalRequest {
            command: Some(Command::Argv(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo started-$$; exec \"$@\"".into(),
                "sh".into(),
                "/bin/bash".into(),
                "-i".into(),
                "-l".into(),
            ])),
            size: TerminalSize { rows: 24, cols: 80 },
            ..TerminalRequest::default()
        };
        let mut term = sb.backend.open_terminal(&sb.id, request).await.unwrap();
        let mut screen = String::new();
        until(&mut term.output, &mut screen, "started-").await;
        term.input.send(TerminalInput::Resize(TerminalSize { rows: 24, cols: 100 })).await.unwrap();
        term.input.send(TerminalInput::Data(b"tput cols\nexit\n".to_vec())).await.unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(20), term.output.collect(1 << 20)).await.unwrap();
        screen.push_str(&rest.stdout);
        assert!(screen.contains("\r100\r\n"), "round {round}: {screen:?}");
    }
    sb.destroy().await;
}
