//! Interactive terminals ([`SandboxBackend::open_terminal`]), checked the way a person at a terminal uses one:
//! typed at, resized, interrupted, hung up. Backends with terminals run these from their own tests (they need a
//! real pty in a real sandbox, which a fake server has not); each returns a [`Failure`] saying what was seen.

use std::time::Duration;

use agentbox_core::{
    Command, ExecEvent, ExecOutput, ExecRequest, ExecStream, SandboxBackend, SandboxId, TerminalInput, TerminalRequest,
    TerminalSize,
};

use crate::Failure;

/// What a backend's terminals do that differs between backends.
#[derive(Debug, Clone, Copy)]
pub struct TerminalTraits {
    /// The signal a terminal's processes get when its input is dropped (SIGHUP locally; E2B's envd can only
    /// send SIGKILL).
    pub hangup_signal: i32,
}

const WAIT: Duration = Duration::from_secs(20);

fn failure(check: &'static str, message: String) -> Failure {
    Failure { check, message }
}

fn type_in(s: &str) -> TerminalInput {
    TerminalInput::Data(s.as_bytes().to_vec())
}

/// Reads `output` into `screen` until `needle` shows up.
async fn until(check: &'static str, output: &mut ExecStream, screen: &mut String, needle: &str) -> Result<(), Failure> {
    let read = tokio::time::timeout(WAIT, async {
        while !screen.contains(needle) {
            match output.next().await {
                Some(ExecEvent::Stdout(b) | ExecEvent::Stderr(b)) => screen.push_str(&String::from_utf8_lossy(&b)),
                other => return Err(format!("the terminal ended before {needle:?}: {other:?}\n{screen}")),
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => Ok(()),
        Ok(Err(m)) => Err(failure(check, m)),
        Err(_) => Err(failure(check, format!("no {needle:?} on the terminal within {WAIT:?}:\n{screen}"))),
    }
}

async fn send(
    check: &'static str,
    input: &tokio::sync::mpsc::Sender<TerminalInput>,
    item: TerminalInput,
) -> Result<(), Failure> {
    input.send(item).await.map_err(|_| failure(check, "the terminal stopped taking input".into()))
}

async fn rest(check: &'static str, output: ExecStream) -> Result<ExecOutput, Failure> {
    tokio::time::timeout(WAIT, output.collect(1 << 20))
        .await
        .map_err(|_| failure(check, format!("the terminal did not end within {WAIT:?}")))
}

async fn sh(check: &'static str, backend: &dyn SandboxBackend, id: &SandboxId, line: &str) -> Result<String, Failure> {
    let stream = backend.exec(id, ExecRequest::shell(line)).await.map_err(|e| failure(check, e.to_string()))?;
    Ok(rest(check, stream).await?.stdout)
}

/// A login shell: its size, its tty and `TERM`; a resize it sees; Ctrl-C stopping its foreground command and not
/// the shell; `exit 7` ending it with 7.
///
/// # Errors
/// The rule that broke.
pub async fn typed_at_resized_and_interrupted(backend: &dyn SandboxBackend, id: &SandboxId) -> Result<(), Failure> {
    const CHECK: &str = "terminal_typed_at_resized_and_interrupted";
    let request = TerminalRequest { size: TerminalSize { rows: 30, cols: 90 }, ..TerminalRequest::default() };
    let mut term = backend.open_terminal(id, request).await.map_err(|e| failure(CHECK, e.to_string()))?;
    let mut screen = String::new();
    send(CHECK, &term.input, type_in("stty size; tty; echo \"term=$TERM\"\r")).await?;
    until(CHECK, &mut term.output, &mut screen, "30 90").await?;
    until(CHECK, &mut term.output, &mut screen, "/dev/pts/").await?;
    until(CHECK, &mut term.output, &mut screen, "term=xterm-256color").await?;

    send(CHECK, &term.input, TerminalInput::Resize(TerminalSize { rows: 50, cols: 120 })).await?;
    send(CHECK, &term.input, type_in("stty size\r")).await?;
    until(CHECK, &mut term.output, &mut screen, "50 120").await?;

    // Ctrl-C reaches the foreground process through the terminal, not the shell.
    send(CHECK, &term.input, type_in("sleep 60; echo not-$((0 + 1))-interrupted\r")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(CHECK, &term.input, TerminalInput::Data(vec![0x03])).await?;
    send(CHECK, &term.input, type_in("echo after-$((40 + 2))\r")).await?;
    until(CHECK, &mut term.output, &mut screen, "after-42").await?;
    if screen.contains("not-1-interrupted") {
        return Err(failure(CHECK, format!("Ctrl-C did not stop the foreground command:\n{screen}")));
    }

    send(CHECK, &term.input, type_in("exit 7\r")).await?;
    let out = rest(CHECK, term.output).await?;
    if (out.exit_code, out.signal) != (7, None) {
        return Err(failure(CHECK, format!("`exit 7` ended the terminal with {out:?}\n{screen}")));
    }
    Ok(())
}

/// Dropping the input ends the terminal with `traits.hangup_signal` and leaves nothing of it running: neither a
/// lone program nor a shell's job that ignores SIGHUP (with `traits.hangup_signal` SIGKILL) or its foreground
/// command.
///
/// # Errors
/// The rule that broke.
pub async fn dropping_the_input_hangs_up(
    backend: &dyn SandboxBackend,
    id: &SandboxId,
    traits: TerminalTraits,
) -> Result<(), Failure> {
    const CHECK: &str = "terminal_dropping_the_input_hangs_up";
    let request = TerminalRequest {
        command: Some(Command::Argv(vec!["sleep".into(), "600".into()])),
        ..TerminalRequest::default()
    };
    let term = backend.open_terminal(id, request).await.map_err(|e| failure(CHECK, e.to_string()))?;
    drop(term.input);
    let out = rest(CHECK, term.output).await?;
    if out.signal != Some(traits.hangup_signal) {
        return Err(failure(CHECK, format!("a hung-up terminal ended with {out:?}")));
    }
    let left = sh(CHECK, backend, id, "pgrep -x sleep || true").await?;
    if !left.is_empty() {
        return Err(failure(CHECK, format!("the hung-up program still runs: {left}")));
    }
    // SIGHUP leaves a job that ignores it running, as closing a terminal window does.
    if traits.hangup_signal != SIGKILL {
        return Ok(());
    }
    // A shell with a job that ignores SIGHUP, and a foreground command: the whole tree goes.
    let mut term =
        backend.open_terminal(id, TerminalRequest::default()).await.map_err(|e| failure(CHECK, e.to_string()))?;
    let mut screen = String::new();
    send(CHECK, &term.input, type_in("(trap '' HUP; exec sleep 500) & echo started-$((1 + 1))\r")).await?;
    until(CHECK, &mut term.output, &mut screen, "started-2").await?;
    send(CHECK, &term.input, type_in("sleep 600\r")).await?;
    let mut sleeping = String::new();
    for _ in 0..100 {
        sleeping = sh(CHECK, backend, id, "pgrep -x sleep | wc -l").await?.trim().to_owned();
        if sleeping == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if sleeping != "2" {
        return Err(failure(CHECK, format!("both sleeps should run before the hang-up, {sleeping} do:\n{screen}")));
    }
    drop(term.input);
    let out = rest(CHECK, term.output).await?;
    let left = sh(CHECK, backend, id, "pgrep -x sleep || true").await?;
    if out.signal != Some(traits.hangup_signal) || !left.is_empty() {
        return Err(failure(CHECK, format!("after the hang-up ({out:?}) these still run: {left}")));
    }
    Ok(())
}

/// SIGKILL's number, 9 on every architecture Linux runs on.
const SIGKILL: i32 = 9;

/// A resize sent right after a shell starts (while it is still starting up) is what its first command sees:
/// input and resizes reach the terminal in the order given.
///
/// # Errors
/// The rule that broke.
pub async fn a_resize_right_after_start_is_seen(
    backend: &dyn SandboxBackend,
    id: &SandboxId,
    rounds: usize,
) -> Result<(), Failure> {
    const CHECK: &str = "terminal_a_resize_right_after_start_is_seen";
    for round in 0..rounds {
        let request = TerminalRequest {
            command: Some(Command::Argv(vec!["/bin/bash".into(), "-i".into(), "-l".into()])),
            size: TerminalSize { rows: 24, cols: 80 },
            ..TerminalRequest::default()
        };
        let term = backend.open_terminal(id, request).await.map_err(|e| failure(CHECK, e.to_string()))?;
        send(CHECK, &term.input, TerminalInput::Resize(TerminalSize { rows: 24, cols: 100 })).await?;
        send(CHECK, &term.input, type_in("tput cols\nexit\n")).await?;
        let out = rest(CHECK, term.output).await?;
        if !out.stdout.contains("100\r\n") || out.exit_code != 0 {
            return Err(failure(
                CHECK,
                format!("round {round}: `tput cols` after a resize to 100 said {:?}", out.stdout),
            ));
        }
    }
    Ok(())
}

/// A program that read the terminal's size before a resize and writes it back after (as GNU readline does each
/// time it prepares for a line) does not undo the resize: the size the host asked for is what comes next.
///
/// # Errors
/// The rule that broke.
pub async fn a_size_written_back_from_before_a_resize_is_undone(
    backend: &dyn SandboxBackend,
    id: &SandboxId,
) -> Result<(), Failure> {
    const CHECK: &str = "terminal_a_size_written_back_from_before_a_resize_is_undone";
    // Without echo, nothing comes out between the resize and the prompt; `stty rows R cols C` is two writes.
    let script = "stty -echo; set -- $(stty size); echo ready; read go; stty rows \"$1\" cols \"$2\"; echo 'prompt>'; \
                  read line; echo \"size $(stty size).\"";
    let request = TerminalRequest {
        command: Some(Command::Argv(vec!["/bin/sh".into(), "-c".into(), script.into()])),
        size: TerminalSize { rows: 24, cols: 80 },
        ..TerminalRequest::default()
    };
    let mut term = backend.open_terminal(id, request).await.map_err(|e| failure(CHECK, e.to_string()))?;
    let mut screen = String::new();
    until(CHECK, &mut term.output, &mut screen, "ready").await?;
    send(CHECK, &term.input, TerminalInput::Resize(TerminalSize { rows: 50, cols: 120 })).await?;
    send(CHECK, &term.input, type_in("\r")).await?;
    until(CHECK, &mut term.output, &mut screen, "prompt>").await?;
    send(CHECK, &term.input, type_in("\r")).await?;
    let out = rest(CHECK, term.output).await?;
    screen.push_str(&out.stdout);
    if !screen.contains("size 50 120.") {
        return Err(failure(CHECK, format!("the size written back from before the resize stood:\n{screen}")));
    }
    Ok(())
}
