//! Types shared by every backend and the manager.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use agentbox_config::{Preset, SandboxConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string without checking it; use [`parse`](Self::parse) for untrusted input.
            #[must_use]
            pub fn new_unchecked(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            /// Checks that `s` is 1 to 128 characters of letters, digits, `-`, `_` and `.`, not starting with `.`.
            ///
            /// # Errors
            /// [`Error::InvalidRequest`] naming the accepted characters.
            pub fn parse(s: &str) -> Result<Self> {
                let ok = !s.is_empty()
                    && s.len() <= 128
                    && !s.starts_with('.')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(Error::InvalidRequest(format!(
                        concat!(stringify!($name), " {:?} is invalid: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"),
                        s
                    )))
                }
            }

            /// The id as a string.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A backend's identifier of one sandbox.
    SandboxId
);
id_type!(
    /// The caller's identifier of a task; the manager keeps one sandbox per run id.
    RunId
);

/// Lifecycle state of a sandbox.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Being created.
    Creating,
    /// Ready for work.
    Running,
    /// Suspended (backends that support pause).
    Paused,
    /// No processes: its files are kept on disk until it is started again (backends that support stop).
    Stopped,
    /// Failing health checks.
    Unhealthy,
    /// Being destroyed.
    Destroying,
    /// Gone.
    Destroyed,
}

impl SandboxState {
    /// The state's name as serialized.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Unhealthy => "unhealthy",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
        }
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateRequest {
    /// The full configuration.
    pub config: SandboxConfig,
    /// Labels stored with the sandbox (the manager stores `run_id` and `preset` here).
    pub metadata: BTreeMap<String, String>,
    /// Start from this snapshot's files (a fork) instead of an empty home. Backends without snapshots refuse it.
    pub from_snapshot: Option<String>,
}

impl CreateRequest {
    /// A request for `config` with no metadata.
    #[must_use]
    pub fn new(config: SandboxConfig) -> Self {
        Self { config, metadata: BTreeMap::new(), from_snapshot: None }
    }

    /// A request for a preset's configuration.
    #[must_use]
    pub fn preset(preset: Preset) -> Self {
        Self::new(preset.config())
    }
}

/// A named, persistent volume with a quota of its own, mounted into sandboxes at create
/// (`storage.volumes`); it outlives the sandboxes that use it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its name, unique in the backend.
    pub name: String,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The most it may hold, in bytes.
    pub limit_bytes: u64,
    /// What it holds, in bytes.
    pub used_bytes: u64,
    /// How many of this process's sandboxes have it mounted now.
    pub mounted_by: u32,
}

/// A named, read-only, point-in-time copy of a sandbox's files (its home), taken while it runs. Process memory
/// is not part of it. A new sandbox can start from it (a fork).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its name, unique in the backend.
    pub name: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Bytes it references (shared with the sandbox it came from until either changes).
    pub size_bytes: u64,
}

/// The label naming who adopts a sandbox's files after the process that ran it crashed (a server's registry);
/// backends that keep such files set it from their configuration, never from a caller's labels.
pub const KEEPER_LABEL: &str = "agentbox.keeper";

/// The files of a stopped sandbox, kept by the backend under `key` until it is started again or discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedSandbox {
    /// What [`start`](crate::SandboxBackend::start) and
    /// [`discard_stopped`](crate::SandboxBackend::discard_stopped) take; unique in the backend.
    pub key: String,
    /// When it was stopped, in milliseconds since the Unix epoch.
    pub stopped_at_ms: u64,
    /// Bytes its files take.
    pub size_bytes: u64,
    /// Kept when the process that ran the sandbox died without stopping it (a crash), rather than by a stop,
    /// for the keeper its [`KEEPER_LABEL`] label names.
    #[serde(default)]
    pub after_crash: bool,
    /// The labels of the sandbox whose files these are (its run, for one), when the backend keeps them.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A sandbox as a backend reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// The backend's id.
    pub id: SandboxId,
    /// Backend name (`local`, `e2b`).
    pub backend: String,
    /// Current state.
    pub state: SandboxState,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Labels given at creation.
    pub metadata: BTreeMap<String, String>,
}

/// The program an execution runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// A program and its arguments, run directly.
    Argv(Vec<String>),
    /// A command line run by `bash -c`.
    Shell(String),
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// What to run.
    pub command: Command,
    /// Working directory inside the sandbox; the user's home when absent.
    pub cwd: Option<String>,
    /// Extra environment variables for this execution.
    pub env: BTreeMap<String, String>,
    /// Bytes written to stdin, which is then closed. Without it stdin is empty.
    pub stdin: Option<Vec<u8>>,
    /// Time limit; the sandbox's execution_timeout when absent.
    pub timeout: Option<Duration>,
    /// Who runs it: the sandbox's user when absent (or named), or `root` where the sandbox allows root inside
    /// (`security.allow_root_inside`).
    pub user: Option<String>,
}

impl Default for Command {
    fn default() -> Self {
        Self::Argv(Vec::new())
    }
}

impl ExecRequest {
    /// Runs `line` with bash.
    #[must_use]
    pub fn shell(line: impl Into<String>) -> Self {
        Self { command: Command::Shell(line.into()), ..Self::default() }
    }

    /// Runs a program with arguments.
    #[must_use]
    pub fn argv<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { command: Command::Argv(args.into_iter().map(Into::into).collect()), ..Self::default() }
    }

    /// The argv to execute: the program itself, or `bash -c LINE`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for an empty command or NUL bytes.
    pub fn to_argv(&self) -> Result<Vec<String>> {
        let argv = match &self.command {
            Command::Argv(a) => a.clone(),
            Command::Shell(s) => vec!["/bin/bash".into(), "-c".into(), s.clone()],
        };
        if argv.first().is_none_or(String::is_empty) {
            return Err(Error::InvalidRequest("the command is empty: give a program to run".into()));
        }
        if argv.iter().any(|a| a.contains('\0'))
            || self.env.iter().any(|(k, v)| k.contains(['\0', '=']) || k.is_empty() || v.contains('\0'))
        {
            return Err(Error::InvalidRequest(
                "arguments and environment must not contain NUL bytes, and names not '='".into(),
            ));
        }
        Ok(argv)
    }
}

/// A programming language for [`CodeRequest`].
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3.
    Python,
    /// JavaScript on Node.js.
    Javascript,
    /// TypeScript on Node.js (type stripping).
    Typescript,
    /// Bash.
    Bash,
}

impl Language {
    /// Every language.
    pub const ALL: [Self; 4] = [Self::Python, Self::Javascript, Self::Typescript, Self::Bash];

    /// The name used in requests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Javascript => "javascript",
            Self::Typescript => "typescript",
            Self::Bash => "bash",
        }
    }

    /// The usual file extension.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Python => "py",
            Self::Javascript => "js",
            Self::Typescript => "ts",
            Self::Bash => "sh",
        }
    }
}

impl std::str::FromStr for Language {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Self::Python),
            "javascript" | "js" | "node" => Ok(Self::Javascript),
            "typescript" | "ts" => Ok(Self::Typescript),
            "bash" | "sh" | "shell" => Ok(Self::Bash),
            _ => Err(Error::InvalidRequest(format!(
                "unknown language {s:?} (expected python, javascript, typescript or bash)"
            ))),
        }
    }
}

/// Code to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRequest {
    /// The language.
    pub language: Language,
    /// The source.
    pub code: String,
    /// Working directory, environment and time limit as for commands.
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Time limit.
    pub timeout: Option<Duration>,
}

impl CodeRequest {
    /// Code in `language` with default options.
    #[must_use]
    pub fn new(language: Language, code: impl Into<String>) -> Self {
        Self { language, code: code.into(), cwd: None, env: BTreeMap::new(), timeout: None }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; 128+signal when killed, 124 on timeout.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Killed because it ran past its time limit.
    pub timed_out: bool,
    /// Killed by the sandbox's out-of-memory killer.
    pub oom_killed: bool,
    /// Wall-clock duration.
    #[serde(with = "duration_ms")]
    pub duration: Duration,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// One event of a running execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of standard output.
    Stdout(Vec<u8>),
    /// A chunk of standard error.
    Stderr(Vec<u8>),
    /// The process ended; always the last event.
    Exit(ExitStatus),
}

/// The collected result of an execution.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code; 128+signal when killed, 124 on timeout.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Killed at its time limit.
    pub timed_out: bool,
    /// Killed by the out-of-memory killer.
    pub oom_killed: bool,
    /// Standard output, lossily decoded, with a truncation mark if capped.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Whether either stream was cut.
    pub truncated: bool,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
}

/// Keeps the head and the tail of a stream within a byte cap, and says how much was cut.
#[derive(Debug, Clone)]
pub struct CappedBuffer {
    cap: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
}

impl CappedBuffer {
    /// A buffer keeping at most `cap` bytes (half from the start, half from the end).
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self { cap, head: Vec::new(), tail: std::collections::VecDeque::new(), dropped: 0 }
    }

    /// Appends a chunk.
    pub fn push(&mut self, mut chunk: &[u8]) {
        let head_cap = self.cap - self.cap / 2;
        if self.head.len() < head_cap {
            let n = chunk.len().min(head_cap - self.head.len());
            self.head.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
        }
        let tail_cap = self.cap / 2;
        self.tail.extend(chunk);
        while self.tail.len() > tail_cap {
            let excess = self.tail.len() - tail_cap;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// Whether anything was dropped.
    #[must_use]
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// The kept text with `[... N bytes truncated ...]` where bytes were dropped.
    #[must_use]
    pub fn into_string(self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            out.push_str(&format!("\n[... {} bytes truncated ...]\n", self.dropped));
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

type ExitHook = Box<dyn FnOnce(&ExitStatus) + Send>;

/// A running execution's events: stdout/stderr chunks, then one [`ExecEvent::Exit`].
///
/// Dropping the stream before its exit event abandons the execution: backends end its process tree
/// (nobody reads its output any more, and it would otherwise hold the sandbox until its time limit).
pub struct ExecStream {
    rx: tokio::sync::mpsc::Receiver<ExecEvent>,
    on_exit: Vec<ExitHook>,
    guards: Vec<Box<dyn Send + Sync>>,
    finished: bool,
}

impl fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecStream").field("finished", &self.finished).finish_non_exhaustive()
    }
}

impl ExecStream {
    /// A stream fed by a backend through `rx`.
    #[must_use]
    pub fn new(rx: tokio::sync::mpsc::Receiver<ExecEvent>) -> Self {
        Self { rx, on_exit: Vec::new(), guards: Vec::new(), finished: false }
    }

    /// A stream of already known events (for tests and simple backends).
    #[must_use]
    pub fn from_events(events: Vec<ExecEvent>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(events.len().max(1));
        for e in events {
            let _ = tx.try_send(e);
        }
        Self::new(rx)
    }

    /// Calls `hook` with the exit status when it passes through.
    #[must_use]
    pub fn on_exit(mut self, hook: impl FnOnce(&ExitStatus) + Send + 'static) -> Self {
        self.on_exit.push(Box::new(hook));
        self
    }

    /// Keeps `guard` alive until the exit event has passed or the stream is dropped, whichever comes
    /// first; guards are dropped in the order they were added.
    #[must_use]
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guards.push(Box::new(guard));
        self
    }

    /// The next event; `None` after the exit event.
    ///
    /// If the backend vanishes without an exit event, a synthetic failure exit
    /// (code 255) is returned so callers always see how it ended.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        if self.finished {
            return None;
        }
        let event = self.rx.recv().await.unwrap_or(ExecEvent::Exit(ExitStatus {
            exit_code: 255,
            signal: None,
            timed_out: false,
            oom_killed: false,
            duration: Duration::ZERO,
        }));
        if let ExecEvent::Exit(status) = &event {
            self.finished = true;
            for hook in self.on_exit.drain(..) {
                hook(status);
            }
            self.guards.clear();
        }
        Some(event)
    }

    /// Drains the stream into an [`ExecOutput`], keeping at most `cap` bytes of each stream.
    pub async fn collect(mut self, cap: usize) -> ExecOutput {
        let mut out = CappedBuffer::new(cap);
        let mut err = CappedBuffer::new(cap);
        let mut status = None;
        while let Some(ev) = self.next().await {
            match ev {
                ExecEvent::Stdout(b) => out.push(&b),
                ExecEvent::Stderr(b) => err.push(&b),
                ExecEvent::Exit(s) => status = Some(s),
            }
        }
        let s = status.unwrap_or(ExitStatus {
            exit_code: 255,
            signal: None,
            timed_out: false,
            oom_killed: false,
            duration: Duration::ZERO,
        });
        let truncated = out.truncated() || err.truncated();
        ExecOutput {
            exit_code: s.exit_code,
            signal: s.signal,
            timed_out: s.timed_out,
            oom_killed: s.oom_killed,
            stdout: out.into_string(),
            stderr: err.into_string(),
            truncated,
            duration_ms: u64::try_from(s.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Kind of a directory entry.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (not followed).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// A file or directory inside a sandbox.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Last path component.
    pub name: String,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: u64,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
}

/// Result of a health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Whether the sandbox answered correctly within the deadline.
    pub healthy: bool,
    /// Round-trip time of the probe, in microseconds.
    pub latency_us: u64,
    /// What failed, when unhealthy.
    pub message: Option<String>,
}

/// A background process started in a sandbox.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id inside the sandbox.
    pub pid: u32,
    /// Its argv.
    pub argv: Vec<String>,
    /// Whether it still runs.
    pub running: bool,
    /// Exit code once it ended.
    pub exit_code: Option<i32>,
    /// File inside the sandbox that receives its stdout and stderr.
    pub output_path: Option<String>,
}
