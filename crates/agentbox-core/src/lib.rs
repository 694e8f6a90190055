//! The core of agentbox: the provider-agnostic [`SandboxBackend`] trait, the
//! types it speaks, one [`Error`] type, and the [`SandboxManager`] that keeps
//! one sandbox per run with pooling, idle expiry and health checks.
//!
//! This crate does no I/O of its own (one scheduler hint, [`sched`], aside): everything goes through a backend and
//! tokio's clock, so every lifecycle rule is testable with a mock backend and
//! a paused clock.

mod backend;
pub mod budget;
pub mod egress;
mod error;
pub mod install;
mod manager;
pub mod sched;
mod sync;
pub mod terminal;
mod transfer;
mod types;

#[cfg(any(test, feature = "mock"))]
pub use backend::MockSandboxBackend;
pub use backend::{SandboxBackend, exec_or_destroy};
pub use error::{Error, Result};
#[cfg(feature = "mock")]
pub use manager::doc_backend;
pub use manager::{CreateOptions, ManagedSandbox, ManagerConfig, ManagerStats, SandboxManager};
pub use sync::{LockExt, RwLockExt};
pub use terminal::sessions::{
    AttachedInput, AttachedOutput, AttachedTerminal, EXITED_TERMINAL_KEEP, HANGUP_GRACE, MAX_TERMINALS_PER_RUN,
    SLOW_CLIENT_WAIT, TERMINAL_BUFFER_BYTES, TerminalSessionInfo,
};
pub use terminal::{Terminal, TerminalInput, TerminalRequest, TerminalSize};
pub use transfer::{CHANNEL_CHUNKS, CHUNK_BYTES, FileStream, FileUpload};
pub use types::{
    CappedBuffer, CodeRequest, Command, CreateRequest, ExecEvent, ExecOutput, ExecRequest, ExecStream, ExitStatus,
    FileEntry, FileKind, HealthStatus, KEEPER_LABEL, Language, ProcessInfo, RunId, SandboxId, SandboxInfo,
    SandboxState, SnapshotInfo, StoppedSandbox, VolumeInfo,
};

pub use agentbox_config as config;
pub use agentbox_metrics as metrics;
