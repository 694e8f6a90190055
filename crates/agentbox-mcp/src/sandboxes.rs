//! The sandbox lifecycle tools: `sandbox_create`, `sandbox_list`, `sandbox_destroy`, `sandbox_metrics`, and the
//! snapshot tools `sandbox_snapshot`, `sandbox_restore`, `snapshot_list`, `snapshot_delete`.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_config::{ConfigOverrides, NetworkOverride, Preset, SandboxConfig, VolumeMount};
use agentbox_core::{CreateOptions, ManagedSandbox, RunId};
use agentbox_tools::{ToolError, ToolErrorKind, ToolResult};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Names of the lifecycle tools.
pub const SANDBOX_CREATE: &str = "sandbox_create";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_LIST: &str = "sandbox_list";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_DESTROY: &str = "sandbox_destroy";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_METRICS: &str = "sandbox_metrics";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_PAUSE: &str = "sandbox_pause";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_RESUME: &str = "sandbox_resume";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_STOP: &str = "sandbox_stop";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_START: &str = "sandbox_start";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_SNAPSHOT: &str = "sandbox_snapshot";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_RESTORE: &str = "sandbox_restore";
/// See [`SANDBOX_CREATE`].
pub const SNAPSHOT_LIST: &str = "snapshot_list";
/// See [`SANDBOX_CREATE`].
pub const SNAPSHOT_DELETE: &str = "snapshot_delete";
/// See [`SANDBOX_CREATE`].
pub const SANDBOX_EGRESS: &str = "sandbox_egress";

pub(crate) const EGRESS_DESCRIPTION: &str = "The sandbox's egress log: every network connection it made or was \
    refused (host, port, address, decision and the rule that decided, bytes, duration), and each request to hosts \
    whose traffic the proxy inspects (method, path, status, secrets added by name). Use it to see why a request was \
    refused. Paged: pass the previous answer's next as after. Without run_id, this session's default sandbox.";

pub(crate) const SNAPSHOT_DESCRIPTION: &str = "Save a sandbox's files (its home) as a named, read-only snapshot, \
    taken at once while it runs: before a risky step, or to try two approaches. Running processes and memory are \
    not saved. Start a new sandbox from it with sandbox_create's from_snapshot (a fork: its own copy, changes don't \
    show in the original). Without run_id, this session's default sandbox.";
pub(crate) const RESTORE_DESCRIPTION: &str = "Put a sandbox's files back to a snapshot (see sandbox_snapshot): a \
    new sandbox starts from the snapshot's files and takes the run_id's place, with the same settings. Running \
    processes don't survive. Without run_id, this session's default sandbox.";
pub(crate) const PAUSE_DESCRIPTION: &str = "Pause a sandbox: every process is frozen where it is and uses no CPU; \
    memory and files stay. Commands are refused until sandbox_resume; files can still be read and written. Without \
    run_id, this session's default sandbox.";
pub(crate) const RESUME_DESCRIPTION: &str = "Resume a paused sandbox: its processes continue where they stopped. Without run_id, this session's default sandbox.";
pub(crate) const STOP_DESCRIPTION: &str = "Stop a sandbox to come back to it later: its processes end and its \
    files (home, installed packages, volumes) stay on disk, across server restarts, using no memory or CPU. Commands \
    are refused until sandbox_start (sandbox_create with its run_id starts it too). Without run_id, this \
    session's default sandbox.";
pub(crate) const START_DESCRIPTION: &str = "Start a stopped sandbox: a fresh sandbox with the same settings boots on \
    its files (processes from before the stop are gone). Without run_id, this session's default sandbox.";
pub(crate) const SNAPSHOT_LIST_DESCRIPTION: &str = "List the saved snapshots: name, size in bytes, when taken.";
pub(crate) const SNAPSHOT_DELETE_DESCRIPTION: &str =
    "Delete a snapshot by name; sandboxes started from it keep their files.";

pub(crate) const CREATE_DESCRIPTION: &str = "Create an isolated Linux sandbox (bash, python3, node; files under /home/user) \
    and name it with run_id. Pass the same run_id to shell, run_code and the file tools to work in it; a sandbox keeps its \
    files, processes and code contexts until destroyed or idle for idle_timeout_secs. You rarely need this tool: calls \
    without run_id use this session's default sandbox, created on first use. Use it for a separate sandbox, or to size \
    one: preset (default: 2 CPUs/512 MiB/10 GiB, lightweight: 1/256 MiB/5 GiB, heavy_compute: 4/2048 MiB/20 GiB, \
    browser: 2/1024 MiB with a large /dev/shm) plus overrides (network is off unless overrides.network.enabled). \
    Without run_id it configures this session's default sandbox, which must not exist yet. Calling it again with the \
    same run_id and settings returns the existing sandbox.";
pub(crate) const LIST_DESCRIPTION: &str = "List the live sandboxes: run_id, state, limits, executions run, health, and \
    which one is this session's default.";
pub(crate) const DESTROY_DESCRIPTION: &str = "Destroy a sandbox and everything in it (files, processes, code contexts). \
    Without run_id, destroys this session's default sandbox; the next call without run_id starts a fresh one.";
pub(crate) const METRICS_DESCRIPTION: &str = "Resource use of a sandbox now: CPU percent and time, memory used and \
    peak in MiB, disk used in GiB, network bytes, executions run, last exit code and health, with its limits. Without \
    run_id, this session's default sandbox.";

/// The presets, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PresetName {
    /// 2 CPUs, 512 MiB memory, 10 GiB disk.
    Default,
    /// 1 CPU, 256 MiB memory, 5 GiB disk.
    Lightweight,
    /// 4 CPUs, 2048 MiB memory, 20 GiB disk.
    HeavyCompute,
    /// 2 CPUs, 1024 MiB memory, 512 MiB /dev/shm and more processes, for a headless browser.
    Browser,
}

impl From<PresetName> for Preset {
    fn from(p: PresetName) -> Self {
        match p {
            PresetName::Default => Self::Default,
            PresetName::Lightweight => Self::Lightweight,
            PresetName::HeavyCompute => Self::HeavyCompute,
            PresetName::Browser => Self::Browser,
        }
    }
}

/// Network settings over the preset's.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkOverrides {
    /// Allow traffic beyond the sandbox's own loopback (off by default).
    pub enabled: Option<bool>,
    /// Only these names may be reached: exact (`pypi.org`) or wildcard (`*.github.com`). Empty: all public names.
    pub allowed_domains: Option<Vec<String>>,
    /// Names never reached; wins over allowed_domains.
    pub denied_domains: Option<Vec<String>>,
}

/// Settings over the preset's. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Overrides {
    /// CPUs (a CPU quota), 1 or more.
    #[schemars(range(min = 1))]
    pub cpu_count: Option<u32>,
    /// Memory limit in MiB, at least 16.
    #[schemars(range(min = 16))]
    pub memory_mb: Option<u64>,
    /// Writable storage in GiB (home and /tmp together).
    #[schemars(range(min = 1))]
    pub disk_gb: Option<u64>,
    /// Network access.
    pub network: Option<NetworkOverrides>,
    /// Default time limit of one command or code run, in seconds.
    #[schemars(range(min = 1))]
    pub execution_timeout_secs: Option<u64>,
    /// The sandbox is destroyed (or paused, or stopped: see on_idle) after this many seconds without use.
    #[schemars(range(min = 1))]
    pub idle_timeout_secs: Option<u64>,
    /// What happens then: destroy (the default), pause (frozen with its memory until sandbox_resume) or stop
    /// (its files kept on disk until sandbox_start).
    pub on_idle: Option<OnIdle>,
    /// Environment variables every process in the sandbox sees.
    pub environment_variables: Option<BTreeMap<String, String>>,
    /// Packages installed at creation: `pip:NAME[==VERSION]`, `npm:NAME[@VERSION]`; a bare name means pip. Needs network.
    pub pre_install_packages: Option<Vec<String>>,
    /// Cap on the captured stdout and stderr of one execution, each, in bytes.
    #[schemars(range(min = 1))]
    pub max_output_bytes: Option<u64>,
    /// Let shell commands run as root inside (shell's as_root), for apt-get install in an image's root: root of
    /// the sandbox's own user namespace, nothing outside it.
    pub allow_root_inside: Option<bool>,
    /// What runs when the sandbox starts (and starts again), as a background process: "none", "image" (the
    /// image's Entrypoint and Cmd), or {"command": [program, args...]}.
    pub start: Option<Start>,
}

/// What a sandbox runs when it starts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Nothing.
    None,
    /// The image's Entrypoint and Cmd.
    Image,
    /// This program and its arguments.
    Command(Vec<String>),
}

impl From<Start> for agentbox_config::StartProcess {
    fn from(v: Start) -> Self {
        match v {
            Start::None => Self::None,
            Start::Image => Self::Image,
            Start::Command(argv) => Self::Command(argv),
        }
    }
}

/// What happens to an idle sandbox.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    /// Destroyed with its files.
    Destroy,
    /// Frozen until resumed.
    Pause,
    /// Stopped, its files kept, until started.
    Stop,
}

impl From<OnIdle> for agentbox_config::IdleAction {
    fn from(v: OnIdle) -> Self {
        match v {
            OnIdle::Destroy => Self::Destroy,
            OnIdle::Pause => Self::Pause,
            OnIdle::Stop => Self::Stop,
        }
    }
}

impl From<Overrides> for ConfigOverrides {
    fn from(o: Overrides) -> Self {
        Self {
            cpu_count: o.cpu_count,
            memory_mb: o.memory_mb,
            disk_gb: o.disk_gb,
            network: o.network.map(|n| NetworkOverride::Patch {
                enabled: n.enabled,
                allowed_domains: n.allowed_domains,
                denied_domains: n.denied_domains,
            }),
            execution_timeout: o.execution_timeout_secs.map(Duration::from_secs),
            idle_timeout: o.idle_timeout_secs.map(Duration::from_secs),
            on_idle: o.on_idle.map(Into::into),
            allow_root_inside: o.allow_root_inside,
            start: o.start.map(Into::into),
            environment_variables: o.environment_variables,
            pre_install_packages: o.pre_install_packages,
            max_output_bytes: o.max_output_bytes,
            ..Self::default()
        }
    }
}

/// Input of `sandbox_create`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInput {
    /// Name of the sandbox, used as run_id by every other tool: 1-128 letters, digits, '-', '_' or '.'.
    /// Leave it out to configure this session's default sandbox.
    pub run_id: Option<String>,
    /// Starting configuration; `default` when absent.
    pub preset: Option<PresetName>,
    /// Settings over the preset's.
    pub overrides: Option<Overrides>,
    /// Start with the files of this snapshot (see sandbox_snapshot); the sandbox must not exist yet.
    pub from_snapshot: Option<String>,
    /// Root filesystem from this OCI image (`python:3.12-slim`, `localhost:5000/team/agent:1`), pulled on first
    /// use; `host` (the default) is the host's own system.
    pub image: Option<String>,
    /// Root filesystem from a template built on this host (`agentbox template build -t NAME`), instead of image.
    pub template: Option<String>,
    /// Named volumes to mount (made beforehand by the server's operator); their files outlive the sandbox.
    pub volumes: Option<Vec<VolumeInput>>,
}

/// A volume to mount into a new sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VolumeInput {
    /// The volume's name.
    pub name: String,
    /// Where it appears inside, an absolute path such as /home/user/work (not under /proc, /dev, /sys, /etc, /tmp).
    pub mount_path: String,
    /// Mount it read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl CreateInput {
    /// The manager's options for this input.
    pub(crate) fn options(self) -> CreateOptions {
        if self.preset.is_none()
            && self.overrides.is_none()
            && self.image.is_none()
            && self.template.is_none()
            && self.volumes.is_none()
        {
            // Reuses an existing sandbox whatever its settings; a new one gets the default preset.
            return CreateOptions::default();
        }
        let preset = self.preset.map(Preset::from).unwrap_or_default();
        let mut overrides = self.overrides.map(ConfigOverrides::from);
        if let Some(image) = self.image.or_else(|| self.template.as_deref().map(agentbox_config::template_image)) {
            overrides.get_or_insert_default().image = Some(image);
        }
        if let Some(volumes) = self.volumes {
            overrides.get_or_insert_default().volumes = Some(
                volumes
                    .into_iter()
                    .map(|v| VolumeMount { name: v.name, mount_path: v.mount_path, read_only: v.read_only })
                    .collect(),
            );
        }
        CreateOptions { preset: Some(preset), config: overrides.map(|o| o.applied_to(preset.config())) }
    }
}

/// Input of the tools that take only a run id.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunInput {
    /// The sandbox's run_id; this session's default sandbox when absent.
    pub run_id: Option<String>,
}

/// Input of `sandbox_egress`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EgressInput {
    /// The sandbox's run_id; this session's default sandbox when absent.
    pub run_id: Option<String>,
    /// Only records after this seq (the previous answer's next).
    pub after: Option<u64>,
    /// At most this many records (default 100, at most 1000).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
    /// Only connections and requests to this host.
    pub host: Option<String>,
    /// Only refused connections and requests.
    pub refused_only: Option<bool>,
}

/// Input of `sandbox_snapshot`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotInput {
    /// The sandbox's run_id; this session's default sandbox when absent.
    pub run_id: Option<String>,
    /// Name of the snapshot: 1-200 letters, digits, '.', '_' or '-', unique.
    pub name: String,
}

/// Input of `snapshot_delete`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotNameInput {
    /// The snapshot's name.
    pub name: String,
}

/// Input of `sandbox_list`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListInput {}

/// A sandbox's limits, as a model needs them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Limits {
    cpu_count: u32,
    memory_mb: u64,
    disk_gb: u64,
    network_enabled: bool,
    execution_timeout_secs: u64,
    idle_timeout_secs: u64,
}

impl Limits {
    fn of(c: &SandboxConfig) -> Self {
        Self {
            cpu_count: c.cpu_count,
            memory_mb: c.memory_mb,
            disk_gb: c.disk_gb,
            network_enabled: c.network.enabled,
            execution_timeout_secs: c.execution_timeout.as_secs(),
            idle_timeout_secs: c.idle_timeout.as_secs(),
        }
    }
}

/// One sandbox in a tool's output.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    run_id: String,
    sandbox_id: String,
    backend: String,
    state: &'static str,
    preset: Option<&'static str>,
    session_default: bool,
    created_at_ms: u64,
    execution_count: u64,
    healthy: bool,
    limits: Limits,
}

impl Summary {
    pub(crate) fn of(s: &ManagedSandbox, session_default: &RunId) -> Self {
        Self {
            run_id: s.run_id.to_string(),
            sandbox_id: s.sandbox.id.to_string(),
            backend: s.sandbox.backend.clone(),
            state: s.state.as_str(),
            preset: s.preset.map(Preset::name),
            session_default: s.run_id == *session_default,
            created_at_ms: s.sandbox.created_at_ms,
            execution_count: s.execution_count,
            healthy: s.healthy,
            limits: Limits::of(&s.config),
        }
    }
}

/// Output of `sandbox_create`.
pub(crate) fn created(s: &ManagedSandbox, created: bool, session_default: &RunId) -> Value {
    let mut v = serde_json::to_value(Summary::of(s, session_default)).unwrap_or_default();
    v["created"] = Value::Bool(created);
    v["next"] = Value::String(if s.run_id == *session_default {
        "calls without run_id now work in this sandbox".to_owned()
    } else {
        format!("pass run_id {:?} to shell, run_code and the file tools to work in this sandbox", s.run_id.as_str())
    });
    v
}

/// Parses a tool's JSON input.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(tool: &str, input: Value) -> ToolResult<T> {
    serde_json::from_value(input)
        .map_err(|e| ToolError::invalid_input(format!("invalid input for {tool}: {e}; see the tool's input schema")))
}

/// Parses a run id given by the model.
pub(crate) fn run_id(s: &str) -> ToolResult<RunId> {
    RunId::parse(s).map_err(|e| ToolError::new(ToolErrorKind::InvalidInput, format!("run_id: {e}")))
}
