//! E2B's messages as JSON: the control plane (spec/openapi.yml), envd's process and filesystem services in
//! proto3 JSON (lowerCamelCase names, original names also accepted, defaults omitted, 64-bit integers as strings,
//! bytes as base64, enums by name) and the code interpreter's NDJSON.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

// ---------------------------------------------------------------------------------------------------------------
// Control plane

/// `NewSandbox`: the body of `POST /sandboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSandbox {
    /// Template id or alias.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Time to live in seconds (E2B's default, 300, when absent).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Pause instead of kill at the timeout.
    #[serde(rename = "autoPause", default)]
    pub auto_pause: bool,
    /// Require the envd access token.
    #[serde(default)]
    pub secure: bool,
    /// Outbound internet access (`false` is `denyOut: ["0.0.0.0/0"]`).
    #[serde(rename = "allow_internet_access", default)]
    pub allow_internet_access: bool,
    /// Egress allow and deny lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<SandboxNetwork>,
    /// Labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Environment of every process.
    #[serde(rename = "envVars", default)]
    pub env_vars: BTreeMap<String, String>,
}

fn default_timeout() -> u64 {
    300
}

/// `SandboxNetworkConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    /// Allowed destinations (IPs, CIDRs, and on current E2B host names for HTTP/TLS); they win over `denyOut`.
    #[serde(rename = "allowOut", default, skip_serializing_if = "Vec::is_empty")]
    pub allow_out: Vec<String>,
    /// Denied destinations (IPs and CIDRs).
    #[serde(rename = "denyOut", default, skip_serializing_if = "Vec::is_empty")]
    pub deny_out: Vec<String>,
}

/// E2B's `Sandbox`: what `POST /sandboxes` and `POST /sandboxes/{id}/connect` return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedSandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Client id (legacy; the SDKs require it).
    #[serde(rename = "clientID", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// envd's version.
    #[serde(rename = "envdVersion", default)]
    pub envd_version: Option<String>,
    /// Token for `X-Access-Token`, present for secure sandboxes.
    #[serde(rename = "envdAccessToken", default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Token for other ports when public traffic is off.
    #[serde(rename = "trafficAccessToken", default, skip_serializing_if = "Option::is_none")]
    pub traffic_access_token: Option<String>,
    /// The domain the sandbox is reached under, when it differs from the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// `ListedSandbox` and `SandboxDetail` (the fields used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedSandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Start time, RFC 3339.
    #[serde(rename = "startedAt")]
    pub started_at: String,
    /// Expiry time, RFC 3339.
    #[serde(rename = "endAt", default)]
    pub end_at: Option<String>,
    /// Labels.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `running` or `paused`.
    #[serde(default)]
    pub state: Option<String>,
    /// envd access token (detail only).
    #[serde(rename = "envdAccessToken", default)]
    pub envd_access_token: Option<String>,
    /// Domain (detail only).
    #[serde(default)]
    pub domain: Option<String>,
}

/// `SandboxMetric`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxMetric {
    /// Sample time, RFC 3339 (required by the SDKs, ignored by the backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Sample time, seconds since the epoch.
    #[serde(rename = "timestampUnix")]
    pub timestamp_unix: i64,
    /// CPUs.
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    /// CPU use in percent of all CPUs.
    #[serde(rename = "cpuUsedPct")]
    pub cpu_used_pct: f64,
    /// Memory used, bytes.
    #[serde(rename = "memUsed")]
    pub mem_used: u64,
    /// Memory total, bytes.
    #[serde(rename = "memTotal")]
    pub mem_total: u64,
    /// Page cache, bytes (required by the SDKs, ignored by the backend).
    #[serde(rename = "memCache", default, skip_serializing_if = "Option::is_none")]
    pub mem_cache: Option<u64>,
    /// Disk used, bytes.
    #[serde(rename = "diskUsed")]
    pub disk_used: u64,
    /// Disk total, bytes.
    #[serde(rename = "diskTotal")]
    pub disk_total: u64,
}

/// envd's `GET /metrics` (snake_case).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvdMetrics {
    /// Sample time, seconds since the epoch.
    #[serde(default)]
    pub ts: i64,
    /// CPUs.
    #[serde(default)]
    pub cpu_count: u32,
    /// CPU use in percent of all CPUs.
    #[serde(default)]
    pub cpu_used_pct: f64,
    /// Memory used, bytes.
    #[serde(default)]
    pub mem_used: u64,
    /// Memory total, bytes.
    #[serde(default)]
    pub mem_total: u64,
    /// Disk used, bytes.
    #[serde(default)]
    pub disk_used: u64,
    /// Disk total, bytes.
    #[serde(default)]
    pub disk_total: u64,
}

/// The error body of the control plane (and of E2B's sandbox proxy): `{"code": 404, "message": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    /// The message.
    #[serde(default)]
    pub message: String,
}

/// The error body a server of the control plane writes: `{"code": 404, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// The HTTP status, repeated.
    pub code: u16,
    /// What went wrong and what to do.
    pub message: String,
}

/// `SandboxDetail` and `ListedSandbox` as a server writes them: every field the SDKs require.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxDetail {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Client id (legacy).
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Start time, RFC 3339.
    #[serde(rename = "startedAt")]
    pub started_at: String,
    /// Expiry time, RFC 3339.
    #[serde(rename = "endAt")]
    pub end_at: String,
    /// envd's version.
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    /// CPUs.
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    /// Memory, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Disk, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: String,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// envd access token (detail only).
    #[serde(rename = "envdAccessToken", default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
}

/// The body of `POST /sandboxes/{id}/timeout` and `POST /sandboxes/{id}/connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxTimeout {
    /// Seconds from now.
    pub timeout: u64,
}

// ---------------------------------------------------------------------------------------------------------------
// envd: process.Process

/// `ProcessConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// The program.
    pub cmd: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `StartRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// What to run.
    pub process: ProcessConfig,
    /// A tag to find the process by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether stdin stays open for `SendInput` (envd's default is true for old clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// Run the process on a pseudo-terminal of this size: its output then comes as `pty` data and its input goes
    /// through `SendInput`'s `pty` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// `PTY`: a pseudo-terminal's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// Its size.
    pub size: PtySize,
}

/// `PTY.Size`, in character cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    #[serde(default)]
    pub cols: u32,
    /// Rows.
    #[serde(default)]
    pub rows: u32,
}

/// `UpdateRequest`: resizes a process's terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// Which process.
    pub process: PidSelector,
    /// The terminal's new settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// `ProcessSelector` (by pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidSelector {
    /// The pid.
    pub pid: u32,
}

/// `SendInputRequest`, `SendSignalRequest` and `CloseStdinRequest` share this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRequest {
    /// Which process.
    pub process: PidSelector,
    /// `ProcessInput` for `SendInput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
    /// `SIGNAL_SIGTERM` or `SIGNAL_SIGKILL` for `SendSignal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// `ProcessInput`: a oneof, written as the one member set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessInput {
    /// Bytes for stdin, base64.
    Stdin(String),
    /// Bytes typed at the process's terminal, base64.
    Pty(String),
}

/// `StartResponse` / `ConnectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessage {
    /// The event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ProcessEvent>,
}

/// `ProcessEvent`: exactly one member is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    /// The process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartEvent>,
    /// Output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataEvent>,
    /// The process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndEvent>,
    /// Nothing happened for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<serde_json::Value>,
}

/// `StartEvent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEvent {
    /// The pid.
    #[serde(default)]
    pub pid: u32,
}

/// `DataEvent`: base64 bytes of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataEvent {
    /// Standard output.
    #[serde(
        default,
        deserialize_with = "de_bytes",
        serialize_with = "ser_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub stdout: Option<Vec<u8>>,
    /// Standard error.
    #[serde(
        default,
        deserialize_with = "de_bytes",
        serialize_with = "ser_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub stderr: Option<Vec<u8>>,
    /// Terminal output.
    #[serde(
        default,
        deserialize_with = "de_bytes",
        serialize_with = "ser_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub pty: Option<Vec<u8>>,
}

/// `EndEvent`. proto3 JSON omits defaults: an absent `exitCode` is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndEvent {
    /// Exit code (-1 when killed by a signal).
    #[serde(default, rename = "exitCode", alias = "exit_code", skip_serializing_if = "is_zero_i32")]
    pub exit_code: i32,
    /// Whether the process exited on its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
    /// Go's `ProcessState.String()`: `exit status 3`, `signal: killed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// The wait error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `ListResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Running processes.
    #[serde(default)]
    pub processes: Vec<ListedProcess>,
}

/// `ProcessInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedProcess {
    /// How it was started.
    #[serde(default)]
    pub config: ProcessConfig,
    /// The pid.
    #[serde(default)]
    pub pid: u32,
    /// Its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// envd: filesystem.Filesystem

/// `StatRequest`, `MakeDirRequest`, `RemoveRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    /// The path.
    pub path: String,
}

/// `ListDirRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    /// The directory.
    pub path: String,
    /// How deep to go (1: the directory's own entries).
    pub depth: u32,
}

/// `MoveRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// From.
    pub source: String,
    /// To.
    pub destination: String,
}

/// `StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    /// The entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `ListDirResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirResponse {
    /// Entries.
    #[serde(default)]
    pub entries: Vec<EntryInfo>,
}

/// `EntryInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Last path component.
    #[serde(default)]
    pub name: String,
    /// `FILE_TYPE_FILE`, `FILE_TYPE_DIRECTORY`, `FILE_TYPE_SYMLINK` (or the enum number).
    #[serde(default, rename = "type", deserialize_with = "de_enum")]
    pub kind: String,
    /// Absolute path.
    #[serde(default)]
    pub path: String,
    /// Size (int64: a JSON string or number; written as a string).
    #[serde(default, deserialize_with = "de_i64", serialize_with = "ser_i64")]
    pub size: i64,
    /// Mode bits.
    #[serde(default)]
    pub mode: u32,
    /// `ls -l`-style permissions (`-rw-r--r--`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub permissions: String,
    /// Modification time, RFC 3339.
    #[serde(default, rename = "modifiedTime", alias = "modified_time", skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    /// Target of a symlink.
    #[serde(default, rename = "symlinkTarget", alias = "symlink_target", skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Whether the entry itself is a symlink (`type` then describes its target).
    #[serde(default, rename = "isSymlink", alias = "is_symlink", skip_serializing_if = "std::ops::Not::not")]
    pub is_symlink: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// Code interpreter

/// The body of `POST /execute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// The code.
    pub code: String,
    /// The context to run it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// The language, when no context is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Extra environment for this execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// The body of `POST /contexts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContext {
    /// `python`, `javascript`, `typescript`, `bash`, ...
    pub language: String,
    /// Working directory.
    pub cwd: String,
}

/// A context as the interpreter reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Its id.
    pub id: String,
    /// Its language.
    #[serde(default)]
    pub language: String,
    /// Its working directory.
    #[serde(default)]
    pub cwd: String,
}

/// One NDJSON line of `/execute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OutputLine {
    /// `stdout`, `stderr`, `result`, `error`, `number_of_executions`, `end_of_execution`, `keepalive`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Text of stdout/stderr lines and the plain-text form of results.
    #[serde(default)]
    pub text: Option<String>,
    /// Whether a result is the cell's value.
    #[serde(default)]
    pub is_main_result: bool,
    /// Error name (`ValueError`).
    #[serde(default)]
    pub name: Option<String>,
    /// Error value (the message).
    #[serde(default)]
    pub value: Option<String>,
    /// Error traceback.
    #[serde(default, deserialize_with = "de_traceback")]
    pub traceback: Option<String>,
}

/// One NDJSON line of `/execute` as a server writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecuteLine {
    /// Standard output.
    Stdout {
        /// The text.
        text: String,
        /// When, RFC 3339.
        timestamp: String,
    },
    /// Standard error.
    Stderr {
        /// The text.
        text: String,
        /// When, RFC 3339.
        timestamp: String,
    },
    /// A rich result: its formats, flattened.
    Result(serde_json::Map<String, serde_json::Value>),
    /// The error the code raised.
    Error {
        /// Exception class.
        name: String,
        /// Its message.
        value: String,
        /// The traceback.
        traceback: String,
    },
    /// How many executions the context has run.
    NumberOfExecutions {
        /// The count.
        execution_count: u64,
    },
    /// The last line.
    EndOfExecution,
}

// ---------------------------------------------------------------------------------------------------------------
// Lenient proto3 JSON readers

/// Base64 with or without padding, standard or URL-safe, as proto3 JSON allows.
///
/// # Errors
/// When the text is not base64.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
}

/// Standard padded base64, as proto3 JSON writers use.
#[must_use]
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[allow(clippy::ref_option, reason = "serde's serialize_with passes a reference to the field")]
fn ser_bytes<S: serde::Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => s.serialize_str(&encode_base64(b)),
        None => s.serialize_none(),
    }
}

#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's serialize_with passes a reference to the field")]
fn ser_i64<S: serde::Serializer>(n: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&n.to_string())
}

#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference to the field")]
fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| decode_base64(&s).map_err(serde::de::Error::custom)).transpose()
}

fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| serde::de::Error::custom("int64 out of range")),
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        serde_json::Value::Null => Ok(0),
        other => Err(serde::de::Error::custom(format!("expected an int64, got {other}"))),
    }
}

fn de_enum<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(match n.as_u64() {
            Some(1) => "FILE_TYPE_FILE".into(),
            Some(2) => "FILE_TYPE_DIRECTORY".into(),
            Some(3) => "FILE_TYPE_SYMLINK".into(),
            _ => "FILE_TYPE_UNSPECIFIED".into(),
        }),
        _ => Ok("FILE_TYPE_UNSPECIFIED".into()),
    }
}

fn de_traceback<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Array(lines) => Some(lines.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto3_json_defaults_and_encodings() {
        let m: EventMessage =
            serde_json::from_str(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#).unwrap();
        let end = m.event.unwrap().end.unwrap();
        assert_eq!(end.exit_code, 0, "an absent exitCode is 0");
        let m: EventMessage =
            serde_json::from_str(r#"{"event":{"end":{"exitCode":-1,"status":"signal: killed"}}}"#).unwrap();
        assert_eq!(m.event.unwrap().end.unwrap().exit_code, -1);
        let m: EventMessage = serde_json::from_str(r#"{"event":{"data":{"stdout":"aGVsbG8K"}}}"#).unwrap();
        assert_eq!(m.event.unwrap().data.unwrap().stdout.unwrap(), b"hello\n");
        let m: EventMessage = serde_json::from_str(r#"{"event":{"data":{"stderr":"-_8"}}}"#).unwrap();
        assert_eq!(m.event.unwrap().data.unwrap().stderr.unwrap(), vec![0xfb, 0xff]);
        let e: EntryInfo = serde_json::from_str(
            r#"{"name":"a","type":"FILE_TYPE_FILE","path":"/a","size":"12","mode":420,"modifiedTime":"2024-05-01T10:00:00.5Z"}"#,
        )
        .unwrap();
        assert_eq!((e.size, e.kind.as_str(), e.mode), (12, "FILE_TYPE_FILE", 420));
        let e: EntryInfo =
            serde_json::from_str(r#"{"name":"d","type":2,"path":"/d","size":4096,"symlink_target":"x"}"#).unwrap();
        assert_eq!((e.size, e.kind.as_str(), e.symlink_target.as_deref()), (4096, "FILE_TYPE_DIRECTORY", Some("x")));
        let line: OutputLine =
            serde_json::from_str(r#"{"type":"error","name":"E","value":"v","traceback":["a","b"]}"#).unwrap();
        assert_eq!(line.traceback.as_deref(), Some("a\nb"));
    }

    #[test]
    fn terminal_messages_use_envds_names() {
        let start = StartRequest {
            process: ProcessConfig { cmd: "/bin/bash".into(), ..ProcessConfig::default() },
            tag: None,
            stdin: None,
            pty: Some(Pty { size: PtySize { cols: 90, rows: 30 } }),
        };
        let v = serde_json::to_value(&start).unwrap();
        assert_eq!(v["pty"], serde_json::json!({"size": {"cols": 90, "rows": 30}}));
        assert!(v.get("stdin").is_none() && v.get("tag").is_none(), "{v}");
        let input = ProcessRequest {
            process: PidSelector { pid: 7 },
            input: Some(ProcessInput::Pty(encode_base64(b"ls\r"))),
            signal: None,
        };
        assert_eq!(
            serde_json::to_value(&input).unwrap(),
            serde_json::json!({"process": {"pid": 7}, "input": {"pty": "bHMN"}})
        );
        let stdin = serde_json::to_value(ProcessInput::Stdin(encode_base64(b"x"))).unwrap();
        assert_eq!(stdin, serde_json::json!({"stdin": "eA=="}));
        let update =
            UpdateRequest { process: PidSelector { pid: 7 }, pty: Some(Pty { size: PtySize { cols: 120, rows: 50 } }) };
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            serde_json::json!({"process": {"pid": 7}, "pty": {"size": {"cols": 120, "rows": 50}}})
        );
    }

    #[test]
    fn new_sandbox_uses_the_spec_names() {
        let body = NewSandbox {
            template_id: "base".into(),
            timeout: 300,
            auto_pause: false,
            secure: true,
            allow_internet_access: false,
            network: Some(SandboxNetwork { allow_out: vec!["pypi.org".into()], deny_out: vec!["0.0.0.0/0".into()] }),
            metadata: BTreeMap::from([("run_id".into(), "r1".into())]),
            env_vars: BTreeMap::new(),
        };
        let v = serde_json::to_value(&body).unwrap();
        for key in ["templateID", "timeout", "autoPause", "secure", "allow_internet_access", "metadata", "envVars"] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["network"]["allowOut"][0], "pypi.org");
        assert_eq!(v["network"]["denyOut"][0], "0.0.0.0/0");
    }
}
