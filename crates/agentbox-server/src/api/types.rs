//! Request and response bodies of the REST API, with their OpenAPI schemas.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_config::{NetworkConfig, Preset, SandboxConfig};
use agentbox_core::{
    CodeRequest, Command, CreateOptions, ExecOutput, ExecRequest, FileEntry, FileKind, Language, ManagedSandbox,
    SandboxState,
};
use agentbox_metrics::SandboxMetrics;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// Pattern of run ids (see [`agentbox_core::RunId::parse`]).
pub const RUN_ID_PATTERN: &str = r"^(?!create$)[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$";
/// Pattern of file paths accepted by the file routes: no NUL, no `..` component.
pub const FILE_PATH_PATTERN: &str = r"^(?!([\s\S]*/)?\.\.(/[\s\S]*)?(?![\s\S]))[^\x00]+$";
/// Longest file path accepted, in characters.
pub const MAX_PATH_LEN: usize = 4096;

/// A JSON number that is a whole number, written as an integer or as a float like `16.0` (JSON Schema's integer).
fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        // 2^64 as f64; every whole float below it converts exactly.
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)] // whole, non-negative and below 2^64
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!("expected a non-negative whole number, got {n}"))),
    }
}

pub(super) fn present_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d).map(Some)
}

fn present_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = whole(d)?;
    u32::try_from(v).map(Some).map_err(|_| serde::de::Error::custom(format!("{v} is too large")))
}

fn nullable_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => whole(serde_json::Value::Number(n)).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Deserializes a field that may be absent but, when present, must not be `null`.
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn seconds(field: &str, secs: f64, min: f64, max: f64) -> Result<Duration, ApiError> {
    if !(min..=max).contains(&secs) {
        return Err(ApiError::bad_request(format!("{field} must be between {min} and {max} seconds, got {secs}")));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// Time limits of a new sandbox, in seconds.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// How long creating the sandbox may take.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 1, maximum = 3600)]
    pub startup: Option<f64>,
    /// Default time limit of one execution.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 0.1, maximum = 86400)]
    pub execution: Option<f64>,
    /// The sandbox is destroyed (or paused, or stopped: see `on_idle`) after being unused for this long.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 1, maximum = 2592000)]
    pub idle: Option<f64>,
    /// What happens to it then: `destroy` (the default), `pause` (frozen, memory kept, until resumed) or `stop`
    /// (processes end, files kept on disk, until started). A backend that can't pause or stop destroys it.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = IdleActionDoc)]
    pub on_idle: Option<agentbox_config::IdleAction>,
}

/// What happens to an idle sandbox.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(as = IdleAction)]
#[allow(dead_code)] // documentation only: requests deserialize into agentbox_config::IdleAction
enum IdleActionDoc {
    /// Destroyed with its files.
    #[schema(rename = "destroy")]
    Destroy,
    /// Frozen until resumed.
    #[schema(rename = "pause")]
    Pause,
    /// Stopped (files kept) until started.
    #[schema(rename = "stop")]
    Stop,
}

/// The named presets.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(as = Preset)]
#[allow(dead_code)] // documentation only: requests deserialize into agentbox_config::Preset
enum PresetDoc {
    /// 2 CPUs, 512 MiB, 10 GiB.
    #[schema(rename = "default")]
    Default,
    /// 1 CPU, 256 MiB, 5 GiB.
    #[schema(rename = "lightweight")]
    Lightweight,
    /// 4 CPUs, 2048 MiB, 20 GiB.
    #[schema(rename = "heavy_compute")]
    HeavyCompute,
    /// 2 CPUs, 1024 MiB, 10 GiB, large /dev/shm for a browser.
    #[schema(rename = "browser")]
    Browser,
}

/// `POST /api/sandboxes/{run_id}/snapshots`: the snapshot to take.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Its name, unique on the server.
    #[schema(pattern = r"^[A-Za-z0-9._\-]{1,200}$", min_length = 1, max_length = 200, example = "before-refactor")]
    pub name: String,
}

/// A named, read-only, point-in-time copy of a sandbox's files (its home), without process memory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotView {
    /// Its name.
    pub name: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Bytes it references (shared with the sandbox it came from until either changes them).
    pub size_bytes: u64,
}

impl From<agentbox_core::SnapshotInfo> for SnapshotView {
    fn from(s: agentbox_core::SnapshotInfo) -> Self {
        Self { name: s.name, created_at_ms: s.created_at_ms, size_bytes: s.size_bytes }
    }
}

/// `GET /api/snapshots`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotList {
    /// Every snapshot, by name.
    pub snapshots: Vec<SnapshotView>,
}

/// A volume to mount into a new sandbox.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMountSpec {
    /// The volume's name.
    #[schema(pattern = r"^[A-Za-z0-9._\-]{1,200}$", example = "workspace")]
    pub name: String,
    /// Where it appears inside: a normalized absolute path other than `/` and the home, not under `/proc`,
    /// `/dev`, `/sys`, `/etc` or `/tmp` (422 otherwise: the sandbox can't mount it there).
    #[schema(pattern = r"^/.+$", max_length = 1024, example = "/home/user/work")]
    pub mount_path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /api/sandboxes/create`: a run's sandbox, from a preset with optional overrides.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// The caller's id of the task; one sandbox per run id.
    #[schema(
        pattern = r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$",
        min_length = 1,
        max_length = 128,
        example = "task-123"
    )]
    pub run_id: String,
    /// Preset to start from (`default` when absent).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = PresetDoc)]
    pub preset: Option<Preset>,
    /// The root filesystem: an OCI image reference (`python:3.12-slim`, `localhost:5000/team/agent:1`), pulled
    /// on first use, or `host` (the default) for the host's own system.
    #[serde(default, deserialize_with = "present")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 512,
        pattern = r"^[^\s\-/.:@][^\s]*$",
        example = "python:3.12-slim"
    )]
    pub image: Option<String>,
    /// The root filesystem from a template built on this host (`agentbox template build -t NAME`); instead of
    /// `image`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$", example = "data-science")]
    pub template: Option<String>,
    /// CPUs.
    #[serde(default, deserialize_with = "present_u32")]
    #[schema(nullable = false, minimum = 1, maximum = 256)]
    pub cpu_count: Option<u32>,
    /// Memory limit in MiB.
    #[serde(default, deserialize_with = "present_u64")]
    #[schema(nullable = false, minimum = 16, maximum = 1048576)]
    pub memory_mb: Option<u64>,
    /// Writable storage in GiB.
    #[serde(default, deserialize_with = "present_u64")]
    #[schema(nullable = false, minimum = 1, maximum = 16384)]
    pub disk_gb: Option<u64>,
    /// Network access and egress policy (off when absent).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub network: Option<NetworkSpec>,
    /// Packages to install at creation: `pip:NAME[==V]`, `npm:NAME[@V]`; a bare name means pip.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, example = json!(["pip:pandas"]))]
    pub pre_install_packages: Option<Vec<String>>,
    /// Environment variables every process in the sandbox sees.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub environment_vars: Option<BTreeMap<String, String>>,
    /// Time limits.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub timeouts: Option<TimeoutsSpec>,
    /// Cap on the captured stdout and stderr of one execution, each, in bytes.
    #[serde(default, deserialize_with = "present_u64")]
    #[schema(nullable = false, minimum = 1024, maximum = 1073741824)]
    pub max_output_bytes: Option<u64>,
    /// Named volumes to mount (made with `POST /api/volumes`); they outlive the sandbox.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub volumes: Option<Vec<VolumeMountSpec>>,
    /// Let commands run as root inside the sandbox (`"user": "root"` on an execution): root of the sandbox's own
    /// user namespace, for `apt-get install` in an image's root. Off by default.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub allow_root_inside: Option<bool>,
    /// Start from this snapshot's files (a fork of the sandbox it was taken from). The run must be new.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = r"^[A-Za-z0-9._\-]{1,200}$", example = "before-refactor")]
    pub from_snapshot: Option<String>,
}

impl CreateSandboxRequest {
    fn overrides_anything(&self) -> bool {
        self.image.is_some()
            || self.template.is_some()
            || self.allow_root_inside.is_some()
            || self.volumes.is_some()
            || self.cpu_count.is_some()
            || self.memory_mb.is_some()
            || self.disk_gb.is_some()
            || self.network.is_some()
            || self.pre_install_packages.is_some()
            || self.environment_vars.is_some()
            || self.timeouts.is_some()
            || self.max_output_bytes.is_some()
    }

    /// The manager's options: the preset alone, or its config with the overrides applied.
    ///
    /// # Errors
    /// 400 for out-of-range timeouts.
    pub fn to_options(&self) -> Result<CreateOptions, ApiError> {
        if !self.overrides_anything() {
            return Ok(CreateOptions { preset: self.preset, config: None });
        }
        let mut c: SandboxConfig = self.preset.unwrap_or_default().config();
        let image = match (&self.image, &self.template) {
            (Some(_), Some(_)) => {
                // Each is valid alone; together they can't both be the root.
                return Err(ApiError::from_operation(agentbox_core::Error::InvalidRequest(
                    "give either `image` or `template`, not both".into(),
                )));
            }
            (Some(v), None) => {
                // The schema can't say what an image reference is: one it allows but that is none is unusable.
                if let Some(problem) = agentbox_config::image_reference_problem(v) {
                    return Err(ApiError::from_operation(agentbox_core::Error::InvalidRequest(problem)));
                }
                Some(v.clone())
            }
            (None, Some(t)) => Some(agentbox_config::template_image(t)),
            (None, None) => None,
        };
        if let Some(v) = &self.volumes {
            let home = c.security.run_as.home();
            let mut seen = std::collections::BTreeSet::new();
            for (i, m) in v.iter().enumerate() {
                let problem = agentbox_config::mount_path_problem(&m.mount_path, &home)
                    .or_else(|| (!seen.insert(m.mount_path.as_str())).then(|| "is used by another volume".to_owned()));
                if let Some(problem) = problem {
                    return Err(ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable",
                        format!("volumes[{i}].mount_path {problem}"),
                    ));
                }
            }
        }
        let t = self.timeouts.clone().unwrap_or_default();
        let overrides = agentbox_config::ConfigOverrides {
            image,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            network: self.network.clone().map(|n| agentbox_config::NetworkOverride::Replace(Box::new(n.into_config()))),
            volumes: self.volumes.as_ref().map(|v| {
                v.iter()
                    .map(|m| agentbox_config::VolumeMount {
                        name: m.name.clone(),
                        mount_path: m.mount_path.clone(),
                        read_only: m.read_only,
                    })
                    .collect()
            }),
            startup_timeout: t.startup.map(|s| seconds("timeouts.startup", s, 1.0, 3600.0)).transpose()?,
            execution_timeout: t.execution.map(|s| seconds("timeouts.execution", s, 0.1, 86_400.0)).transpose()?,
            idle_timeout: t.idle.map(|s| seconds("timeouts.idle", s, 1.0, 2_592_000.0)).transpose()?,
            on_idle: t.on_idle,
            environment_variables: self.environment_vars.clone(),
            pre_install_packages: self.pre_install_packages.clone(),
            max_output_bytes: self.max_output_bytes,
            allow_root_inside: self.allow_root_inside,
        };
        overrides.apply(&mut c);
        Ok(CreateOptions { preset: self.preset, config: Some(c) })
    }
}

/// A network policy. Off by default: loopback only.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Whether the sandbox may reach anything beyond its own loopback.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
    /// Destinations the sandbox may reach: exact (`pypi.org`) or wildcard (`*.example.com`) names, optionally
    /// with a port (`api.github.com:443`), methods and a path (`GET api.github.com/repos/*`); empty means all.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    allowed_domains: Option<Vec<String>>,
    /// Destinations the sandbox may never reach, in the same form; deny wins over allow.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    denied_domains: Option<Vec<String>>,
    /// Hosts whose TLS the proxy terminates so that request rules apply and requests are logged.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<Vec<super::egress::SecretHost>>)]
    inspect_domains: Option<Vec<String>>,
    /// Secrets the proxy adds to requests to chosen hosts (values are defined on the server).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    secrets: Option<Vec<super::egress::SecretRuleSpec>>,
    /// Resolvers (IP addresses); empty means the host's.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    dns_servers: Option<Vec<String>>,
    /// Private, loopback or link-local ranges (CIDR) allowed anyway.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    allowed_cidrs: Option<Vec<String>>,
    /// Download limit in bytes per second; null for none.
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(minimum = 1)]
    bandwidth_in_bytes_per_sec: Option<u64>,
    /// Upload limit in bytes per second; null for none.
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(minimum = 1)]
    bandwidth_out_bytes_per_sec: Option<u64>,
}

impl NetworkSpec {
    /// The policy, with defaults for the fields left out.
    pub(crate) fn into_config(self) -> NetworkConfig {
        let d = NetworkConfig::default();
        NetworkConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            allowed_domains: self.allowed_domains.unwrap_or(d.allowed_domains),
            denied_domains: self.denied_domains.unwrap_or(d.denied_domains),
            inspect_domains: self.inspect_domains.unwrap_or(d.inspect_domains),
            secrets: self.secrets.map_or(d.secrets, |s| s.into_iter().map(Into::into).collect()),
            dns_servers: self.dns_servers.unwrap_or(d.dns_servers),
            allowed_cidrs: self.allowed_cidrs.unwrap_or(d.allowed_cidrs),
            bandwidth_in_bytes_per_sec: self.bandwidth_in_bytes_per_sec,
            bandwidth_out_bytes_per_sec: self.bandwidth_out_bytes_per_sec,
        }
    }
}

/// The effective configuration of a sandbox (durations in seconds, or as text like `"1m 30s"` when fractional).
#[derive(Debug, Clone, ToSchema)]
#[schema(as = SandboxConfig)]
#[allow(dead_code)] // documentation only: responses serialize agentbox_config::SandboxConfig
pub struct SandboxConfigDoc {
    /// The root's image reference; absent for the host's system.
    #[schema(nullable = false)]
    image: Option<String>,
    cpu_count: u32,
    memory_mb: u64,
    disk_gb: u64,
    #[schema(value_type = Object)]
    network: (),
    #[schema(value_type = Object)]
    storage: (),
    #[schema(value_type = Object)]
    security: (),
    #[schema(value_type = Value)]
    startup_timeout: (),
    #[schema(value_type = Value)]
    execution_timeout: (),
    #[schema(value_type = Value)]
    idle_timeout: (),
    #[schema(value_type = IdleActionDoc)]
    on_idle: (),
    pre_install_packages: Vec<String>,
    environment_variables: BTreeMap<String, String>,
    max_output_bytes: u64,
}

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// Being created.
    Creating,
    /// Ready for work.
    Running,
    /// Suspended.
    Paused,
    /// No processes; its files are kept until it is started again.
    Stopped,
    /// Failing health checks.
    Unhealthy,
    /// Being destroyed.
    Destroying,
    /// Gone.
    Destroyed,
}

impl StateName {
    /// The core state.
    #[must_use]
    pub fn state(self) -> SandboxState {
        match self {
            Self::Creating => SandboxState::Creating,
            Self::Running => SandboxState::Running,
            Self::Paused => SandboxState::Paused,
            Self::Stopped => SandboxState::Stopped,
            Self::Unhealthy => SandboxState::Unhealthy,
            Self::Destroying => SandboxState::Destroying,
            Self::Destroyed => SandboxState::Destroyed,
        }
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A run's sandbox.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxView {
    /// The run.
    pub run_id: String,
    /// The backend's id of the sandbox.
    pub sandbox_id: String,
    /// Backend name (`local`, `e2b`).
    pub backend: String,
    /// Lifecycle state.
    #[schema(value_type = StateName)]
    pub state: SandboxState,
    /// The preset it started from, if any.
    pub preset: Option<String>,
    /// The effective configuration.
    #[schema(value_type = SandboxConfigDoc)]
    pub config: SandboxConfig,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Executions run.
    pub execution_count: u64,
    /// Exit code of the last execution.
    pub last_exit_code: Option<i32>,
    /// Whether the last health probe passed.
    pub healthy: bool,
    /// Consecutive failed health probes.
    pub health_check_failures: u32,
}

impl From<ManagedSandbox> for SandboxView {
    fn from(m: ManagedSandbox) -> Self {
        Self {
            run_id: m.run_id.to_string(),
            sandbox_id: m.sandbox.id.to_string(),
            backend: m.sandbox.backend,
            state: m.state,
            preset: m.preset.map(|p| p.name().to_owned()),
            config: m.config,
            created_at: rfc3339(m.sandbox.created_at_ms),
            created_at_ms: m.sandbox.created_at_ms,
            execution_count: m.execution_count,
            last_exit_code: m.last_exit_code,
            healthy: m.healthy,
            health_check_failures: m.health_check_failures,
        }
    }
}

/// `GET /api/sandboxes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    /// The sandboxes, by run id.
    pub sandboxes: Vec<SandboxView>,
}

/// Filter of `GET /api/sandboxes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only sandboxes in this state.
    #[param(value_type = Option<StateName>, nullable = false)]
    pub state: Option<StateName>,
}

/// The run id in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: handlers parse the run id with RunIdPath
pub struct RunIdParam {
    /// The run's id.
    #[param(pattern = r"^(?!create$)[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$", min_length = 1, max_length = 128)]
    run_id: String,
}

/// `POST /api/sandboxes/{run_id}/execute/command`. Give exactly one of `command` and `argv`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCommandRequest {
    /// A command line run by bash.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, example = "ls -la", pattern = r"^[^\x00]*$")]
    pub command: Option<String>,
    /// A program and its arguments, run directly.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, min_items = 1)]
    pub argv: Option<Vec<String>>,
    /// Working directory inside the sandbox (the home when absent).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub env: Option<BTreeMap<String, String>>,
    /// Text written to stdin, which is then closed.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub stdin: Option<String>,
    /// Time limit in seconds (the sandbox's execution timeout when absent).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 0.1, maximum = 86400)]
    pub timeout: Option<f64>,
    /// Who runs it: the sandbox's user when absent, or `root` in a sandbox created with `allow_root_inside`
    /// (422 otherwise).
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, example = "root", pattern = r"^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "env: invalid variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

fn check_cwd(cwd: Option<&String>) -> Result<(), ApiError> {
    if let Some(c) = cwd {
        if c.is_empty() || c.len() > MAX_PATH_LEN || c.contains('\0') {
            return Err(ApiError::bad_request("cwd must be a path of 1 to 4096 characters without NUL"));
        }
    }
    Ok(())
}

impl ExecuteCommandRequest {
    /// The core request.
    ///
    /// # Errors
    /// 400 unless exactly one of `command` and `argv` is given, or for NUL bytes and bad limits.
    pub fn into_exec(self) -> Result<ExecRequest, ApiError> {
        let command = match (self.command, self.argv) {
            (Some(c), None) => Command::Shell(c),
            (None, Some(a)) => Command::Argv(a),
            (Some(_), Some(_)) => return Err(ApiError::bad_request("give either `command` or `argv`, not both")),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give `command` (a shell command line) or `argv` (a program and its arguments)",
                ));
            }
        };
        check_cwd(self.cwd.as_ref())?;
        let env = self.env.unwrap_or_default();
        check_env(&env)?;
        let timeout = self.timeout.map(|t| seconds("timeout", t, 0.1, 86_400.0)).transpose()?;
        let request = ExecRequest {
            command,
            cwd: self.cwd,
            env,
            stdin: self.stdin.map(String::into_bytes),
            timeout,
            user: self.user,
        };
        request.to_argv().map_err(ApiError::from)?;
        Ok(request)
    }
}

/// A language.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(as = Language)]
#[allow(dead_code)] // documentation only
enum LanguageDoc {
    /// Python 3.
    #[schema(rename = "python")]
    Python,
    /// JavaScript on Node.js.
    #[schema(rename = "javascript")]
    Javascript,
    /// TypeScript on Node.js.
    #[schema(rename = "typescript")]
    Typescript,
    /// Bash.
    #[schema(rename = "bash")]
    Bash,
}

/// `POST /api/sandboxes/{run_id}/execute/code`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCodeRequest {
    /// The language.
    #[schema(value_type = LanguageDoc)]
    pub language: Language,
    /// The source.
    #[schema(example = "print(6 * 7)", pattern = r"^[^\x00]*$")]
    pub code: String,
    /// Working directory inside the sandbox.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub env: Option<BTreeMap<String, String>>,
    /// Time limit in seconds.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, minimum = 0.1, maximum = 86400)]
    pub timeout: Option<f64>,
}

impl ExecuteCodeRequest {
    /// The core request.
    ///
    /// # Errors
    /// 400 for NUL bytes and bad limits.
    pub fn into_code(self) -> Result<CodeRequest, ApiError> {
        if self.code.contains('\0') {
            return Err(ApiError::bad_request("code must not contain NUL bytes"));
        }
        check_cwd(self.cwd.as_ref())?;
        let env = self.env.unwrap_or_default();
        check_env(&env)?;
        let timeout = self.timeout.map(|t| seconds("timeout", t, 0.1, 86_400.0)).transpose()?;
        Ok(CodeRequest { language: self.language, code: self.code, cwd: self.cwd, env, timeout })
    }
}

/// The outcome of an execution.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit code; 128+signal when killed, 124 on timeout.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Killed at its time limit.
    pub timed_out: bool,
    /// Killed by the out-of-memory killer.
    pub oom_killed: bool,
    /// Standard output (UTF-8, lossy), with a truncation mark if capped.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Whether either stream was cut at the sandbox's max_output_bytes.
    pub truncated: bool,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
}

impl From<ExecOutput> for ExecResult {
    fn from(o: ExecOutput) -> Self {
        Self {
            exit_code: o.exit_code,
            signal: o.signal,
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            stdout: o.stdout,
            stderr: o.stderr,
            truncated: o.truncated,
            duration_ms: o.duration_ms,
        }
    }
}

/// `GET /api/sandboxes/{run_id}/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxHealth {
    /// Whether the probe just made passed.
    pub healthy: bool,
    /// Consecutive failed probes.
    pub health_check_failures: u32,
    /// Lifecycle state.
    #[schema(value_type = StateName)]
    pub state: SandboxState,
    /// Time of the last probe (RFC 3339).
    pub last_check: Option<String>,
}

impl From<&ManagedSandbox> for SandboxHealth {
    fn from(m: &ManagedSandbox) -> Self {
        Self {
            healthy: m.healthy,
            health_check_failures: m.health_check_failures,
            state: m.state,
            last_check: m.last_check_ms.map(rfc3339),
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// `GET /api/sandboxes/{run_id}/metrics`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsView {
    /// CPU use over the last interval, percent of one CPU.
    pub cpu_usage_percent: f64,
    /// CPU time consumed since creation, seconds.
    pub cpu_time_seconds: f64,
    /// Memory in use, MiB.
    pub memory_used_mb: f64,
    /// Peak memory use, MiB.
    pub memory_peak_mb: f64,
    /// Writable storage in use, GiB.
    pub disk_used_gb: f64,
    /// Bytes received from the network.
    pub network_in_bytes: u64,
    /// Bytes sent to the network.
    pub network_out_bytes: u64,
    /// Executions run.
    pub execution_count: u64,
    /// Exit code of the last execution.
    pub last_exit_code: Option<i32>,
    /// Whether the last health check passed.
    pub is_healthy: bool,
    /// Consecutive failed health checks.
    pub health_check_failures: u32,
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
}

impl From<SandboxMetrics> for MetricsView {
    fn from(m: SandboxMetrics) -> Self {
        Self {
            cpu_usage_percent: finite(m.cpu_usage_percent),
            cpu_time_seconds: finite(m.cpu_time_seconds),
            memory_used_mb: finite(m.memory_used_mb),
            memory_peak_mb: finite(m.memory_peak_mb),
            disk_used_gb: finite(m.disk_used_gb),
            network_in_bytes: m.network_in_bytes,
            network_out_bytes: m.network_out_bytes,
            execution_count: m.execution_count,
            last_exit_code: m.last_exit_code,
            is_healthy: m.is_healthy,
            health_check_failures: m.health_check_failures,
            sampled_at_ms: m.sampled_at_ms,
        }
    }
}

/// The file path in a query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// A path inside the sandbox; relative paths start at the home directory. No `..` components.
    #[param(min_length = 1, max_length = 4096, pattern = r"^(?!([\s\S]*/)?\.\.(/[\s\S]*)?(?![\s\S]))[^\x00]+$")]
    pub path: String,
}

impl FileQuery {
    /// The path, checked for traversal, NUL bytes and length.
    ///
    /// # Errors
    /// 400 saying what is wrong.
    pub fn checked(&self) -> Result<&str, ApiError> {
        check_path(&self.path)?;
        Ok(&self.path)
    }
}

/// Refuses empty, overlong, NUL-containing and `..`-containing paths.
///
/// # Errors
/// 400 saying what is wrong.
pub fn check_path(p: &str) -> Result<(), ApiError> {
    if p.is_empty() {
        return Err(ApiError::bad_request("path is empty: give a path inside the sandbox"));
    }
    if p.chars().count() > MAX_PATH_LEN {
        return Err(ApiError::bad_request(format!("path is longer than {MAX_PATH_LEN} characters")));
    }
    if p.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(ApiError::bad_request(
            "path must not contain `..` components; give the path inside the sandbox directly",
        ));
    }
    Ok(())
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else.
    Other,
}

/// A directory entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileEntryView {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Last path component.
    pub name: String,
    /// Kind.
    pub kind: KindName,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_ms: u64,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
}

impl From<FileEntry> for FileEntryView {
    fn from(e: FileEntry) -> Self {
        Self {
            path: e.path,
            name: e.name,
            kind: match e.kind {
                FileKind::File => KindName::File,
                FileKind::Dir => KindName::Dir,
                FileKind::Symlink => KindName::Symlink,
                FileKind::Other => KindName::Other,
            },
            size: e.size,
            mode: e.mode,
            modified_ms: e.modified_ms,
            symlink_target: e.symlink_target,
        }
    }
}

/// `GET /api/sandboxes/{run_id}/files/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// The directory listed, as given.
    pub path: String,
    /// Its entries.
    pub entries: Vec<FileEntryView>,
}

/// One written file.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFile {
    /// Its path inside the sandbox.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// `PUT /api/sandboxes/{run_id}/files`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFiles {
    /// The files written.
    pub files: Vec<WrittenFile>,
}

/// A multipart upload: one or more `file` parts.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only
pub struct MultipartUpload {
    /// The file's content. With a `path` ending in `/`, several parts may be sent, each written under it by its file name.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerHealth {
    /// Always `ok` while the server answers.
    pub status: String,
    /// Server version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_traversal_or_nul_are_refused() {
        for bad in ["", "..", "../etc/passwd", "a/../../b", "/home/user/..", "a\0b"] {
            assert_eq!(check_path(bad).unwrap_err().status(), 400, "{bad:?}");
        }
        for good in ["/home/user/a.txt", "a/b", "...", "a..b", "/tmp/.hidden"] {
            check_path(good).unwrap();
        }
        assert!(check_path(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
        check_path(&"é".repeat(MAX_PATH_LEN)).unwrap();
    }

    #[test]
    fn create_requests_layer_overrides_on_the_preset() {
        let r: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
            "run_id": "t", "preset": "lightweight", "memory_mb": 300, "timeouts": {"execution": 1.5}
        }))
        .unwrap();
        let c = r.to_options().unwrap().config.unwrap();
        assert_eq!((c.cpu_count, c.memory_mb, c.execution_timeout), (1, 300, Duration::from_millis(1500)));
        let bare: CreateSandboxRequest = serde_json::from_value(serde_json::json!({"run_id": "t"})).unwrap();
        assert_eq!(bare.to_options().unwrap(), CreateOptions::default());
        assert!(
            serde_json::from_value::<CreateSandboxRequest>(serde_json::json!({"run_id": "t", "memory_mb": null}))
                .is_err()
        );
        assert!(serde_json::from_value::<CreateSandboxRequest>(serde_json::json!({"run_id": "t", "mem": 1})).is_err());
    }

    #[test]
    fn exec_requests_need_exactly_one_command() {
        let r = |v| serde_json::from_value::<ExecuteCommandRequest>(v).unwrap().into_exec();
        assert_eq!(r(serde_json::json!({"command": "ls"})).unwrap().command, Command::Shell("ls".into()));
        assert!(r(serde_json::json!({})).is_err());
        assert!(r(serde_json::json!({"command": "ls", "argv": ["ls"]})).is_err());
        assert!(r(serde_json::json!({"argv": [""]})).is_err());
        assert!(r(serde_json::json!({"argv": ["ls"], "timeout": 0})).is_err());
        assert!(r(serde_json::json!({"argv": ["ls"], "env": {"A=B": "x"}})).is_err());
    }
}

/// A background process.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessView {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// Its argv.
    pub argv: Vec<String>,
    /// Whether it still runs.
    pub running: bool,
    /// Its exit code once it ended.
    pub exit_code: Option<i32>,
    /// The file inside the sandbox its stdout and stderr go to.
    pub output_path: Option<String>,
}

impl From<agentbox_core::ProcessInfo> for ProcessView {
    fn from(p: agentbox_core::ProcessInfo) -> Self {
        Self { pid: p.pid, argv: p.argv, running: p.running, exit_code: p.exit_code, output_path: p.output_path }
    }
}

/// `GET /api/sandboxes/{run_id}/processes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessList {
    /// The background processes, by pid.
    pub processes: Vec<ProcessView>,
}
