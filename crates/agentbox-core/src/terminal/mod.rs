//! Interactive terminals: a process on a pseudo-terminal in a sandbox, with its input and window size
//! sent as they change and its output streamed, as `docker exec -it` gives; and kept terminals
//! ([`sessions`]), which outlive their client and can be reattached, as `docker attach` or tmux give.

pub mod sessions;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Command, ExecStream};

/// A terminal's size in character cells.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for TerminalSize {
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// What to run on a new terminal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TerminalRequest {
    /// The program; a login shell (`bash -l`) when absent.
    pub command: Option<Command>,
    /// Working directory; the user's home when absent.
    pub cwd: Option<String>,
    /// Extra environment variables (`TERM` defaults to `xterm-256color`).
    pub env: BTreeMap<String, String>,
    /// The initial size.
    pub size: TerminalSize,
}

/// Input to a running terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalInput {
    /// Bytes typed: they go through the terminal's line discipline, so Ctrl-C (`0x03`) interrupts the
    /// foreground process as it would locally.
    Data(Vec<u8>),
    /// The window changed size: the foreground process gets `SIGWINCH`.
    Resize(TerminalSize),
}

/// A process running on a terminal.
#[derive(Debug)]
pub struct Terminal {
    /// Its output (everything it writes, as [`ExecEvent::Stdout`](crate::ExecEvent::Stdout)), then its
    /// exit. Terminals have no time limit.
    pub output: ExecStream,
    /// Where input and resizes go. Dropping it hangs the terminal up: its processes get `SIGHUP`, as
    /// when a terminal window closes. (A kept terminal, [`sessions`], is hung up explicitly instead.)
    pub input: tokio::sync::mpsc::Sender<TerminalInput>,
}
