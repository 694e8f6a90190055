//! Interactive terminals: a login shell on a pseudo-terminal in the sandbox, typed at, resized, interrupted and
//! hung up the way a person at a terminal would; the conformance suite's terminal checks, which the E2B backend
//! runs too.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use agentbox_conformance::terminal::{self, TerminalTraits};
use common::Sandbox;

/// A dropped input hangs the terminal up as a closed window does: SIGHUP.
const TRAITS: TerminalTraits = TerminalTraits { hangup_signal: libc::SIGHUP };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_a_terminal_is_typed_at_resized_and_interrupted() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    terminal::typed_at_resized_and_interrupted(sb.backend.as_ref(), &sb.id).await.unwrap();
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_input_hangs_the_terminal_up() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    terminal::dropping_the_input_hangs_up(sb.backend.as_ref(), &sb.id, TRAITS).await.unwrap();
    sb.destroy().await;
}

/// E2B's SDKs start a terminal, resize it and type at once, while its shell is still starting up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_right_after_start_is_seen_by_the_first_command() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    terminal::a_resize_right_after_start_is_seen(sb.backend.as_ref(), &sb.id, 20).await.unwrap();
    sb.destroy().await;
}

/// bash's line editor reads the size and writes it back as it prepares each line: a resize in between must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_written_back_from_before_a_resize_is_undone() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    terminal::a_size_written_back_from_before_a_resize_is_undone(sb.backend.as_ref(), &sb.id).await.unwrap();
    sb.destroy().await;
}
