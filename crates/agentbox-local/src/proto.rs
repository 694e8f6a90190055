//! The wire protocol between the host and a sandbox's init/agent process.
//!
//! Frames on a unix stream socket: `[kind u8][id u32 BE][len u32 BE][payload]`.
//! Control payloads are JSON; output chunks are raw bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest payload accepted in one frame.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Header size.
pub const HEADER: usize = 9;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// host -> agent: [`Setup`].
    Setup = 1,
    /// agent -> host: [`Ready`].
    Ready = 2,
    /// host -> agent: [`Exec`].
    Exec = 3,
    /// host -> agent: stdin bytes for an exec (empty payload closes stdin).
    Stdin = 4,
    /// host -> agent: [`Kill`].
    Kill = 5,
    /// host -> agent: ping; agent -> host: pong (same kind, same id).
    Ping = 6,
    /// agent -> host: [`Started`].
    Started = 7,
    /// agent -> host: stdout chunk.
    Stdout = 8,
    /// agent -> host: stderr chunk.
    Stderr = 9,
    /// agent -> host: [`Exited`].
    Exited = 10,
    /// agent -> host: [`Failure`] for a request, or for setup with id 0.
    Failure = 11,
    /// host -> agent: list processes; agent -> host: [`ProcList`].
    ListProcs = 12,
}

impl Kind {
    /// Decodes a kind byte.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Setup,
            2 => Self::Ready,
            3 => Self::Exec,
            4 => Self::Stdin,
            5 => Self::Kill,
            6 => Self::Ping,
            7 => Self::Started,
            8 => Self::Stdout,
            9 => Self::Stderr,
            10 => Self::Exited,
            11 => Self::Failure,
            12 => Self::ListProcs,
            _ => return None,
        })
    }
}

/// Encodes one frame.
#[must_use]
pub fn encode(kind: Kind, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&id.to_be_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a frame with a JSON payload.
#[must_use]
pub fn encode_json<T: Serialize>(kind: Kind, id: u32, value: &T) -> Vec<u8> {
    encode(kind, id, &serde_json::to_vec(value).unwrap_or_default())
}

/// Parses a header: kind byte, id and payload length.
#[must_use]
pub fn parse_header(h: &[u8; HEADER]) -> (u8, u32, usize) {
    let id = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    (h[0], id, len)
}

/// A bind mount of a host path into the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: String,
    /// Path inside the sandbox.
    pub target: String,
    /// Whether it is a directory (else a file).
    pub dir: bool,
}

/// A size-capped tmpfs inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quota {
    /// Path inside the sandbox.
    pub path: String,
    /// Size cap in bytes.
    pub bytes: u64,
}

/// Everything the init process needs to build the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Setup {
    /// Host name inside.
    pub hostname: String,
    /// Read-only bind mounts (system directories and /etc files).
    pub binds: Vec<BindMount>,
    /// Symlinks to create in the new root: (link path, target).
    pub symlinks: Vec<(String, String)>,
    /// Files to write into the new /etc: (path, content).
    pub files: Vec<(String, String)>,
    /// A host directory bound read-only as the whole /etc (a template holding the /etc
    /// entries and files above, built once on the host); `binds` and `files` then hold none.
    pub etc: Option<String>,
    /// Cgroup files the init joins by writing `0` (v1 `tasks`, v2 `cgroup.procs`) before anything else.
    pub cgroups: Vec<String>,
    /// Size of the writable storage (home and /tmp) in bytes.
    pub storage_bytes: u64,
    /// Inode cap of the writable storage.
    pub storage_inodes: u64,
    /// Extra per-directory quotas.
    pub quotas: Vec<Quota>,
    /// Size of /dev/shm in bytes.
    pub shm_bytes: u64,
    /// Mount the root read-only after setup.
    pub read_only_root: bool,
    /// Sandbox user.
    pub uid: u32,
    /// Sandbox group.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Base environment of every exec.
    pub env: BTreeMap<String, String>,
    /// rlimits: open files.
    pub nofile: u64,
    /// rlimits: file size in bytes.
    pub fsize: u64,
    /// Drop all capabilities.
    pub drop_caps: bool,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Compiled seccomp filters (each a list of (code, jt, jf, k)), installed in order.
    pub seccomp: Vec<Vec<(u16, u8, u8, u32)>>,
    /// Apply landlock (write access only to home, /tmp and /dev/shm).
    pub landlock: bool,
    /// Per-exec cgroup tracking: how to mount the cgroup fs privately ("v2", "v1:pids", or "none").
    pub exec_cgroups: String,
}

/// host -> zygote: start a sandbox init (the control socket rides along as `SCM_RIGHTS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpawnInit {
    /// The host directory the init mounts its root on.
    pub root: String,
}

/// zygote -> host: the init's host pid (its pidfd rides along), or why it could not start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitSpawned {
    /// Host pid of the init; 0 on failure.
    pub pid: i32,
    /// What failed, when it failed.
    pub error: Option<String>,
    /// The errno of the failure.
    pub errno: Option<i32>,
}

/// Sent when the sandbox is ready.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ready {
    /// Landlock status: "enforced", "partial", or why not.
    pub landlock: String,
    /// Whether each exec gets its own cgroup for tree kills.
    pub exec_cgroups: bool,
    /// Time the agent spent building the sandbox, in microseconds.
    pub setup_micros: u64,
}

/// One execution.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exec {
    /// argv; `argv[0]` is looked up in PATH if it has no slash.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Extra environment over the base.
    pub env: BTreeMap<String, String>,
    /// Time limit in milliseconds (0 = none).
    pub timeout_ms: u64,
    /// Whether stdin bytes will follow as Stdin frames (else stdin is /dev/null).
    pub stdin: bool,
    /// Background: output to this file inside the sandbox, no streaming.
    pub output_path: Option<String>,
}

/// An execution started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    /// Pid inside the sandbox.
    pub pid: i32,
}

/// An execution ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exited {
    /// Exit code (128+signal when killed, 124 on timeout).
    pub code: i32,
    /// Killing signal.
    pub signal: Option<i32>,
    /// Killed at its deadline.
    pub timed_out: bool,
    /// Wall time in microseconds.
    pub micros: u64,
}

/// Signal an execution's whole process tree.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kill {
    /// Signal number.
    pub signal: i32,
}

/// A request failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    /// What failed, for the user.
    pub message: String,
    /// errno, when a syscall failed.
    pub errno: Option<i32>,
}

/// A tracked process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    /// Exec id.
    pub id: u32,
    /// Pid inside.
    pub pid: i32,
    /// argv.
    pub argv: Vec<String>,
    /// Exit code once ended.
    pub exit_code: Option<i32>,
    /// Output file.
    pub output_path: Option<String>,
}

/// Reply to ListProcs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcList {
    /// Background processes.
    pub procs: Vec<Proc>,
}
