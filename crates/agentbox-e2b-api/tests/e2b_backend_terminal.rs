//! Interactive terminals through the E2B backend (`agentbox-e2b`, a client of E2B's API) against this crate's
//! E2B-compatible API, served on loopback over real local sandboxes: the backend starts a process with envd's
//! `pty`, types at it with `SendInput`, resizes it with `Update` and hangs it up, as E2B's SDKs do; the checks
//! are the conformance suite's terminal checks, which the local backend runs too. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use agentbox_conformance::terminal::{self, TerminalTraits};
use agentbox_core::{CreateRequest, SandboxBackend};

/// envd signals only SIGKILL and SIGTERM: a hang-up kills the terminal's process tree.
const TRAITS: TerminalTraits = TerminalTraits { hangup_signal: libc::SIGKILL };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_terminals_are_typed_at_resized_interrupted_and_hung_up() {
    if agentbox_conformance::not_root() {
        return;
    }
    let (backend, _served) = common::e2b_backend_over_local().await;
    let id = backend.create(CreateRequest::default()).await.unwrap().id;
    terminal::typed_at_resized_and_interrupted(&backend, &id).await.unwrap();
    terminal::dropping_the_input_hangs_up(&backend, &id, TRAITS).await.unwrap();
    terminal::a_resize_right_after_start_is_seen(&backend, &id, 5).await.unwrap();
    terminal::a_size_written_back_from_before_a_resize_is_undone(&backend, &id).await.unwrap();
    backend.destroy(&id).await.unwrap();
}
