//! What signals do to `agentboxd`, decided here rather than left to their defaults.
//!
//! | signal | effect |
//! |---|---|
//! | `SIGTERM`, `SIGINT` | graceful shutdown: stop accepting, finish requests, destroy every sandbox |
//! | `SIGHUP` | logged and otherwise ignored: there is no configuration reload (restart to apply changes), and a hang-up of a terminal must not kill the server with every tenant's sandboxes |
//! | `SIGTSTP`, `SIGTTIN`, `SIGTTOU` | logged and otherwise ignored: no terminal can stop the server |
//! | `SIGPIPE` | ignored (the Rust runtime's default): a closed peer is an I/O error on that connection |
//!
//! The server never has a controlling terminal that a sandbox can reach: every host-side open of a sandbox path
//! carries `O_NOCTTY` (`agentbox-hostfs`). These handlers are the second line: even a terminal the server was
//! started from, or one acquired by a bug, can neither stop nor hang up the process.
//!
//! They are handlers, not `SIG_IGN`: an ignored disposition would be inherited by every sandbox process the
//! server starts, while handlers are reset by `execve`.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Starts watching the terminal signals (see the module docs). Call once, inside the runtime.
///
/// # Errors
/// When a handler can't be installed.
pub fn watch_terminal_signals() -> std::io::Result<()> {
    for (name, kind) in [
        ("SIGHUP", SignalKind::hangup()),
        ("SIGTSTP", SignalKind::from_raw(libc::SIGTSTP)),
        ("SIGTTIN", SignalKind::from_raw(libc::SIGTTIN)),
        ("SIGTTOU", SignalKind::from_raw(libc::SIGTTOU)),
    ] {
        let stream = signal(kind)?;
        tokio::spawn(log_each(name, stream));
    }
    Ok(())
}

async fn log_each(name: &'static str, mut stream: Signal) {
    let mut last_logged: Option<tokio::time::Instant> = None;
    let mut unlogged = 0u64;
    while stream.recv().await.is_some() {
        // At most one line a minute per signal, with a count of the ones in between.
        let now = tokio::time::Instant::now();
        if last_logged.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(60)) {
            unlogged += 1;
            continue;
        }
        last_logged = Some(now);
        tracing::warn!(
            signal = name,
            since_last_line = unlogged,
            "ignored a terminal signal: agentboxd stops on SIGTERM or SIGINT only"
        );
        unlogged = 0;
    }
}
