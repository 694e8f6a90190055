//! The wire protocol between the host and a sandbox's init/agent process.
//!
//! Frames on a unix stream socket: `[kind u8][id u32 BE][len u32 BE][payload]`.
//! Control payloads are JSON; output chunks are raw bytes.
//!
//! The agent runs inside the sandbox, so everything it sends is untrusted input for the host. The
//! host reads the agent only through [`read_agent_frame`], which checks a frame's kind and length
//! against [`agent_frame_limit`] before allocating anything for its payload, and decodes payloads
//! only through the `decode_*` functions here, which refuse (or replace) what does not parse.
//! `tests/proto_fuzz.rs` feeds both arbitrary bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest payload accepted in one frame (host to agent, and the agent's process lists).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest output chunk the agent sends (it reads its pipes 64 KiB at a time).
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;
/// Largest payload of the agent's other messages (ready, started, exited, failure, pong).
pub const MAX_CONTROL: usize = 64 * 1024;
/// Longest message text the agent puts in a failure or a note on stderr.
pub const MAX_MESSAGE: usize = 4096;
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
    /// host -> agent: [`TermSize`], the new size of an execution's terminal.
    Resize = 13,
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
            13 => Self::Resize,
            _ => return None,
        })
    }
}

/// The largest payload the host accepts in a frame of this kind from the agent; `None` for kinds the
/// agent never sends.
#[must_use]
pub fn agent_frame_limit(kind: u8) -> Option<usize> {
    Some(match Kind::from_u8(kind)? {
        Kind::Stdout | Kind::Stderr => MAX_OUTPUT_CHUNK,
        Kind::ListProcs => MAX_FRAME,
        Kind::Ready | Kind::Started | Kind::Exited | Kind::Failure | Kind::Ping => MAX_CONTROL,
        Kind::Setup | Kind::Exec | Kind::Stdin | Kind::Kill | Kind::Resize => return None,
    })
}

/// One frame from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: Kind,
    /// The request it belongs to.
    pub id: u32,
    /// Its payload, within the kind's limit.
    pub payload: Vec<u8>,
}

/// Why a frame from the agent was refused. The connection is unusable after any of them.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A kind the agent never sends.
    #[error("the sandbox agent sent a frame of kind {0}, which it never sends")]
    UnexpectedKind(u8),
    /// A payload over its kind's limit (nothing was allocated for it).
    #[error("the sandbox agent sent a {len}-byte frame of kind {kind}, over that kind's limit of {max} bytes")]
    TooLarge {
        /// The kind byte.
        kind: u8,
        /// The length the header claims.
        len: usize,
        /// The kind's limit.
        max: usize,
    },
    /// The socket failed or closed inside a frame.
    #[error("reading from the sandbox agent failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a header from the agent: a kind it sends, and a length within that kind's limit.
///
/// # Errors
/// [`FrameError::UnexpectedKind`] or [`FrameError::TooLarge`].
pub fn check_agent_header(h: &[u8; HEADER]) -> Result<(Kind, u32, usize), FrameError> {
    let (k, id, len) = parse_header(h);
    let max = agent_frame_limit(k).ok_or(FrameError::UnexpectedKind(k))?;
    if len > max {
        return Err(FrameError::TooLarge { kind: k, len, max });
    }
    let kind = Kind::from_u8(k).ok_or(FrameError::UnexpectedKind(k))?;
    Ok((kind, id, len))
}

/// Reads one frame from the agent; `None` at a clean end of stream (between frames). The header is
/// checked ([`check_agent_header`]) before the payload's buffer is allocated.
///
/// # Errors
/// A refused header, or an I/O failure (an end of stream inside a frame included).
pub async fn read_agent_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = rd.read(&mut h[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        got += n;
    }
    let (kind, id, len) = check_agent_header(&h)?;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, id, payload }))
}

/// Most JSON elements (array items, object members) in a process list: parsed, an element costs
/// tens of bytes however short its text, so the frame's byte limit alone would let a list cost the
/// host several times its size.
pub const MAX_LIST_ELEMENTS: usize = 256 * 1024;

/// A payload from the agent that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a message of the expected shape.
    #[error("the sandbox agent sent an invalid {what}: {source}")]
    Invalid {
        /// What was expected.
        what: &'static str,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// More elements than the message may hold (refused before parsing).
    #[error("the sandbox agent sent a {what} of more than {max} elements")]
    TooManyElements {
        /// What was expected.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, payload: &'a [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError::Invalid { what, source })
}

/// How many elements JSON text holds at least: commas, colons and opening brackets outside strings.
/// One pass, no allocation.
#[must_use]
pub fn json_elements(bytes: &[u8]) -> usize {
    let (mut count, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b',' | b':' | b'[' | b'{') {
            count += 1;
        }
    }
    count
}

/// `text` cut to [`MAX_MESSAGE`] bytes on a character boundary, with a mark when cut.
#[must_use]
pub fn clip_message(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut end = MAX_MESSAGE - 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" [... {cut} bytes cut]"));
    text
}

/// Decodes the agent's ready message.
///
/// # Errors
/// When it is not one.
pub fn decode_ready(payload: &[u8]) -> Result<Ready, DecodeError> {
    let mut r: Ready = decode("ready message", payload)?;
    r.landlock = clip_message(r.landlock);
    Ok(r)
}

/// Decodes the agent's report that an execution started.
///
/// # Errors
/// When it is not one.
pub fn decode_started(payload: &[u8]) -> Result<Started, DecodeError> {
    decode("start report", payload)
}

/// Decodes the agent's report that an execution ended.
///
/// # Errors
/// When it is not one (the host then ends the connection: the agent broke the protocol).
pub fn decode_exited(payload: &[u8]) -> Result<Exited, DecodeError> {
    decode("exit report", payload)
}

/// Decodes a failure; one that does not parse reads as an unknown failure. The message is clipped to
/// [`MAX_MESSAGE`].
#[must_use]
pub fn decode_failure(payload: &[u8]) -> Failure {
    match decode::<Failure>("failure", payload) {
        Ok(f) => Failure { message: clip_message(f.message), errno: f.errno },
        Err(_) => Failure { message: "unknown failure (the sandbox agent's report did not parse)".into(), errno: None },
    }
}

/// Decodes a process list of at most [`MAX_LIST_ELEMENTS`] elements.
///
/// # Errors
/// When it is not one, or too large (refused before parsing).
pub fn decode_proc_list(payload: &[u8]) -> Result<ProcList, DecodeError> {
    if json_elements(payload) > MAX_LIST_ELEMENTS {
        return Err(DecodeError::TooManyElements { what: "process list", max: MAX_LIST_ELEMENTS });
    }
    decode("process list", payload)
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
///
/// # Errors
/// When `value` can't be encoded as JSON.
pub fn try_encode_json<T: Serialize>(kind: Kind, id: u32, value: &T) -> Result<Vec<u8>, serde_json::Error> {
    Ok(encode(kind, id, &serde_json::to_vec(value)?))
}

/// Encodes a frame with a JSON payload; a value that can't be encoded (none of this protocol's
/// messages can fail: their fields are strings, numbers and string-keyed maps) becomes a
/// [`Kind::Failure`] frame for the same id that says so, never an empty payload the peer misreads.
#[must_use]
pub fn encode_json<T: Serialize>(kind: Kind, id: u32, value: &T) -> Vec<u8> {
    try_encode_json(kind, id, value).unwrap_or_else(|e| {
        encode(Kind::Failure, id, failure_json(&format!("encoding a {kind:?} message failed: {e}")).as_bytes())
    })
}

/// A [`Failure`] with `message` as JSON, built without a serializer that could fail.
#[must_use]
pub fn failure_json(message: &str) -> String {
    serde_json::json!({ "message": message, "errno": null }).to_string()
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

/// The capabilities root inside keeps (bounding set, and what a root execution holds): a container runtime's
/// defaults, less `CAP_MKNOD` and `CAP_NET_RAW`. They act on the sandbox's user namespace only: its files
/// (owned by ids it maps) and its processes.
pub const ROOT_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    18, // CAP_SYS_CHROOT
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

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
    /// Cgroup files the init joins by writing `0` (v1 `tasks`, v2 `cgroup.procs`) before anything else: a
    /// process moving itself skips the kernel's global threadgroup lock. Empty when the host moved it.
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Size of the writable storage (home and /tmp, or /tmp alone with `home_source`) in bytes.
    pub storage_bytes: u64,
    /// A host directory on disk (the sandbox's layer of the storage pool, under its quota) bound as the home
    /// instead of a directory of the memory-backed storage.
    #[serde(default)]
    pub home_source: Option<String>,
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
    /// Drop all capabilities (all but [`ROOT_CAPS`] from the bounding set when `allow_root`).
    pub drop_caps: bool,
    /// Executions may run as root inside (uid 0 of the sandbox's user namespace), with [`ROOT_CAPS`].
    #[serde(default)]
    pub allow_root: bool,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Compiled seccomp filters (each a list of (code, jt, jf, k)), installed in order.
    pub seccomp: Vec<Vec<(u16, u8, u8, u32)>>,
    /// Apply landlock (write access only to home, /tmp and /dev/shm).
    pub landlock: bool,
    /// Per-exec cgroup tracking: how to mount the cgroup fs privately ("v2", "v1:pids", or "none").
    pub exec_cgroups: String,
    /// The host directories that ride along with this message, in order, as detached mounts (`open_tree`
    /// clones) that the init moves into place instead of binding `etc` and `home_source` by path: the init,
    /// root of its own user namespace and so not the host's root, may be unable to reach them by path (a
    /// 0700 state directory, say).
    #[serde(default)]
    pub passed: Vec<PassedDir>,
    /// The root is an overlay of an image: its layers (passed as `Lower`, top first) under the `root` directory
    /// of the sandbox's storage layer (passed as `Layer`, with overlayfs's `work` beside it). The root is then
    /// writable and on disk, and `binds`, `symlinks` and `etc` are not used; generated `/etc` files are written
    /// into it (`passwd` and `group` gain the lines of names they lack).
    #[serde(default)]
    pub image_root: bool,
    /// Volumes mounted into the sandbox, in order, each passed as `Volume` (a detached mount, idmapped into the
    /// sandbox's user namespace, read-only when asked).
    #[serde(default)]
    pub volumes: Vec<VolumeTarget>,
    /// The init runs in a user namespace of its own (overlayfs then keeps its attributes as `user.overlay.*`).
    #[serde(default)]
    pub user_namespace: bool,
}

/// A host directory passed to the init as a detached mount with its setup message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PassedDir {
    /// The layer directory mounted as the home (`home_source`).
    Home,
    /// The `/etc` template (`etc`).
    Etc,
    /// One layer of the image root, top first (`image_root`).
    Lower,
    /// The sandbox's storage layer, holding the overlay's `root` and `work` (`image_root`).
    Layer,
    /// A volume's files, for the next entry of `volumes`.
    Volume,
}

/// Where a volume goes inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeTarget {
    /// The mount path inside.
    pub path: String,
    /// Mounted read-only (the detached mount is read-only already; executions get no write rule for it).
    pub read_only: bool,
}

/// host -> zygote: start a sandbox init (the control socket rides along as `SCM_RIGHTS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpawnInit {
    /// The host directory the init mounts its root on (the zygote clones it from there: the init finds it as
    /// its working directory, in its own mount namespace, without looking its path up).
    pub root: String,
    /// The first host id of the sandbox's id range: the init gets a user namespace of its own, owned by that
    /// id and mapping ids `0..65536` inside onto the range. `None`: no user namespace (host ids inside).
    #[serde(default)]
    pub ids: Option<u32>,
    /// The capability bounding set the sandbox's executions keep (bit `n`: capability `n`), when it is known at the
    /// clone: the init drops every other capability from it before its setup message comes (see
    /// [`kept_capabilities`]). `None`: the setup message says.
    #[serde(default)]
    pub bounding: Option<u64>,
}

/// The capability bounding set executions keep under a setup's `drop_caps` and `allow_root`, as
/// [`SpawnInit::bounding`] carries it: `None` when nothing is dropped.
#[must_use]
pub fn kept_capabilities(drop_caps: bool, allow_root: bool) -> Option<u64> {
    match (drop_caps, allow_root) {
        (false, _) => None,
        (true, false) => Some(0),
        (true, true) => Some(ROOT_CAPS.iter().fold(0, |mask, cap| mask | 1 << cap)),
    }
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
    /// Where to start instead when `cwd` can't be entered (the home, under an image's working directory).
    #[serde(default)]
    pub cwd_fallback: Option<String>,
    /// Extra environment over the base.
    pub env: BTreeMap<String, String>,
    /// Time limit in milliseconds (0 = none).
    pub timeout_ms: u64,
    /// Whether stdin bytes will follow as Stdin frames (else stdin is /dev/null).
    pub stdin: bool,
    /// Background: output to this file inside the sandbox, no streaming.
    pub output_path: Option<String>,
    /// Run as root inside (only where the setup's `allow_root` says so), instead of the sandbox's user.
    #[serde(default)]
    pub root: bool,
    /// Run on a new terminal of this size: stdin, stdout and stderr are its slave side, output comes
    /// back as stdout, input goes in as stdin, and [`Kind::Resize`] changes its size.
    #[serde(default)]
    pub tty: Option<TermSize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TermSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_set_kept_is_none_when_nothing_is_dropped_and_root_caps_for_root_inside() {
        assert_eq!(kept_capabilities(false, true), None);
        assert_eq!(kept_capabilities(true, false), Some(0));
        let root = kept_capabilities(true, true).unwrap_or(0);
        assert!(ROOT_CAPS.iter().all(|cap| root & (1 << cap) != 0));
        assert_eq!(usize::try_from(root.count_ones()).ok(), Some(ROOT_CAPS.len()));
    }
}
