//! Sandbox configuration for agentbox.
//!
//! A [`SandboxConfig`] says how big a sandbox is (CPU, memory, disk), what it may
//! reach on the network, how its storage and security are set up, its timeouts,
//! the packages to pre-install and its environment. Start from a [`Preset`],
//! layer a TOML file, `AGENTBOX_*` environment variables and explicit overrides
//! on top with [`ConfigLoader`], then [`SandboxConfig::validate`] it.
//!
//! ```
//! use agentbox_config::{Preset, SandboxConfig};
//!
//! let mut config = SandboxConfig::preset(Preset::Lightweight);
//! assert_eq!((config.cpu_count, config.memory_mb, config.disk_gb), (1, 256, 5));
//! config.memory_mb = 0;
//! let err = config.validate().unwrap_err();
//! assert_eq!(err.to_string(), "memory_mb: must be at least 16, got 0");
//! ```

mod duration;
pub mod egress;
mod load;
mod overrides;
mod package;
pub mod paths;
mod preset;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::{DurationError, deserialize as deserialize_duration, parse as parse_duration};
pub use egress::{EgressEntry, EgressError, PathMatch, SecretRule};
pub use load::{ConfigLoader, LoadError};
pub use overrides::{ConfigOverrides, NetworkOverride};
pub use package::{PackageManager, PackageSpec, PackageSpecError};
pub use preset::{Preset, UnknownPreset};
pub use validate::{ValidationError, ValidationErrors, image_reference_problem, mount_path_problem, start_problem};

/// What happens to a sandbox unused for its `idle_timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum IdleAction {
    /// It is destroyed, with its files.
    #[default]
    Destroy,
    /// Its processes are frozen (no CPU; memory and files stay) until it is resumed.
    Pause,
    /// Its processes end and its files stay on disk (no CPU or memory) until it is started.
    Stop,
}

impl IdleAction {
    /// The action's name as configured.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Pause => "pause",
            Self::Stop => "stop",
        }
    }
}

/// What a sandbox runs when it starts (created, started again after a stop, or forked): a long-lived process such
/// as a server, run as a background process (listed with the sandbox's processes, its output in its log file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StartProcess {
    /// Nothing: executions only.
    #[default]
    None,
    /// The image's `Entrypoint` followed by its `Cmd`, as `docker run IMAGE` runs them. Needs an `image`.
    Image,
    /// This program and its arguments (looked up in `PATH`).
    Command(Vec<String>),
}

/// The OpenAPI schema of [`StartProcess`] as serde reads it: `"none"` or `"image"`, or `{"command": [...]}` with
/// no other key.
#[cfg(feature = "utoipa")]
#[must_use]
pub fn start_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["none", "image"]))
                .description(Some("Nothing, or the image's Entrypoint and Cmd")),
        )
        .item(
            ObjectBuilder::new()
                .property(
                    "command",
                    ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)).min_items(Some(1)),
                )
                .required("command")
                .additional_properties(Some(AdditionalProperties::<utoipa::openapi::schema::Schema>::FreeForm(false)))
                .description(Some("A program and its arguments")),
        )
        .into()
}

/// Everything that defines one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The sandbox's root filesystem: an OCI image reference (`docker.io/library/python:3.12-slim`,
    /// `localhost:5000/team/agent:1`, `...@sha256:...`), pulled on first use, whose layers become the read-only
    /// lower side of the sandbox's root. `None` (or `"host"`): the host's own system directories, read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(nullable = false))]
    pub image: Option<String>,
    /// CPUs the sandbox may use, enforced as a CPU quota.
    pub cpu_count: u32,
    /// Memory limit in MiB, enforced by the memory cgroup.
    pub memory_mb: u64,
    /// Writable storage cap in GiB (home and /tmp together).
    pub disk_gb: u64,
    /// Network access and egress policy.
    pub network: NetworkConfig,
    /// Writable storage layout, quotas and cleanup.
    pub storage: StorageConfig,
    /// Process hardening.
    pub security: SecurityConfig,
    /// How long creating a sandbox may take.
    #[serde(with = "duration")]
    #[cfg_attr(feature = "utoipa", schema(schema_with = duration::schema))]
    pub startup_timeout: Duration,
    /// Default time limit of one execution.
    #[serde(with = "duration")]
    #[cfg_attr(feature = "utoipa", schema(schema_with = duration::schema))]
    pub execution_timeout: Duration,
    /// A sandbox unused for this long is destroyed, paused or stopped by the manager, as `on_idle` says.
    #[serde(with = "duration")]
    #[cfg_attr(feature = "utoipa", schema(schema_with = duration::schema))]
    pub idle_timeout: Duration,
    /// What the manager does with a sandbox unused for `idle_timeout`.
    pub on_idle: IdleAction,
    /// Packages installed at creation: `pip:NAME[==V]`, `npm:NAME[@V]`, `apt:NAME`; a bare name means pip.
    pub pre_install_packages: Vec<String>,
    /// Environment variables every process in the sandbox sees.
    pub environment_variables: BTreeMap<String, String>,
    /// Cap on the captured stdout and stderr of one execution, each, in bytes.
    pub max_output_bytes: u64,
    /// The largest file the host reads whole into memory (the file API's whole-file read, the tools); larger
    /// files are refused with the limit named, and are read in ranges or downloaded as a stream instead.
    pub max_read_bytes: u64,
    /// What runs when the sandbox starts: nothing, the image's `Entrypoint` and `Cmd`, or a command.
    #[cfg_attr(feature = "utoipa", schema(schema_with = start_schema))]
    pub start: StartProcess,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: None,
            cpu_count: 2,
            memory_mb: 512,
            disk_gb: 10,
            network: NetworkConfig::default(),
            storage: StorageConfig::default(),
            security: SecurityConfig::default(),
            startup_timeout: Duration::from_secs(30),
            execution_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(3600),
            on_idle: IdleAction::Destroy,
            pre_install_packages: Vec::new(),
            environment_variables: BTreeMap::new(),
            max_output_bytes: 1024 * 1024,
            max_read_bytes: 64 * 1024 * 1024,
            start: StartProcess::None,
        }
    }
}

/// The image reference of the template `name`, built on this host into the local image store.
#[must_use]
pub fn template_image(name: &str) -> String {
    format!("agentbox.local/templates/{name}:latest")
}

impl SandboxConfig {
    /// The image reference of the sandbox's root, `None` for the host's system (`image` unset or `"host"`).
    #[must_use]
    pub fn image_reference(&self) -> Option<&str> {
        self.image.as_deref().filter(|r| *r != "host")
    }

    /// The configuration of a named preset.
    #[must_use]
    pub fn preset(preset: Preset) -> Self {
        preset.config()
    }

    /// Parses `pre_install_packages` into typed specs.
    ///
    /// # Errors
    /// Returns every malformed entry at once, as [`validate`](Self::validate) does.
    pub fn packages(&self) -> Result<Vec<PackageSpec>, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut out = Vec::with_capacity(self.pre_install_packages.len());
        for (i, p) in self.pre_install_packages.iter().enumerate() {
            match p.parse::<PackageSpec>() {
                Ok(spec) => out.push(spec),
                Err(e) => errors.push(format!("pre_install_packages[{i}]"), e.to_string()),
            }
        }
        errors.into_result().map(|()| out)
    }
}

/// Network access for a sandbox. Off by default: loopback only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Whether the sandbox may reach anything beyond its own loopback.
    pub enabled: bool,
    /// Destinations the sandbox may reach: exact (`pypi.org`) or wildcard (`*.example.com`) names, optionally
    /// with a port (`api.github.com:443`), HTTP methods and a path (`GET api.github.com/repos/*`; see
    /// [`EgressEntry`]). Empty means all public names.
    pub allowed_domains: Vec<String>,
    /// Destinations the sandbox may never reach, in the same form; deny wins over allow.
    pub denied_domains: Vec<String>,
    /// Hosts whose TLS the proxy terminates so that method and path rules apply to each request and the
    /// egress log records it (`api.example.com`, `*.example.com:443`). Hosts of secrets, and of entries
    /// with a method or a path, are inspected anyway.
    pub inspect_domains: Vec<String>,
    /// Credentials the proxy adds to requests to chosen hosts; the sandbox never sees their values.
    pub secrets: Vec<SecretRule>,
    /// Resolvers used for the sandbox's lookups (IP addresses). Empty means the host's.
    pub dns_servers: Vec<String>,
    /// Address ranges (CIDR) allowed even though they are private, loopback or link-local.
    pub allowed_cidrs: Vec<String>,
    /// Download limit in bytes per second.
    pub bandwidth_in_bytes_per_sec: Option<u64>,
    /// Upload limit in bytes per second.
    pub bandwidth_out_bytes_per_sec: Option<u64>,
}

/// What happens to a sandbox's storage when it is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Remove everything the sandbox wrote.
    #[default]
    Delete,
    /// Keep the sandbox's files on the host for inspection (the caller removes them).
    Keep,
}

/// A size cap on one directory inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuota {
    /// Absolute path inside the sandbox, under the user's home ([`RunAs::home`]) or /tmp.
    pub path: String,
    /// Cap in MiB.
    pub size_mb: u64,
}

/// A named volume (made beforehand, persistent, with a quota of its own) mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name: 1-200 letters, digits, `.`, `_` or `-`.
    #[cfg_attr(feature = "utoipa", schema(pattern = r"^[A-Za-z0-9._\-]{1,200}$", example = "workspace"))]
    pub name: String,
    /// Where it appears inside the sandbox: a normalized absolute path, not `/` and not under `/proc`, `/dev`,
    /// `/sys`, `/etc` or `/tmp`.
    #[cfg_attr(feature = "utoipa", schema(pattern = r"^/.+$", max_length = 1024, example = "/home/user/work"))]
    pub mount_path: String,
    /// Mounted read-only: nothing in the sandbox can change it.
    #[serde(default)]
    pub read_only: bool,
}

/// Writable storage of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Extra caps on directories inside the sandbox, each smaller than disk_gb.
    pub quotas: Vec<DirectoryQuota>,
    /// Cap on the number of files and directories.
    pub max_inodes: u64,
    /// Size of /dev/shm in MiB (browsers need a large one).
    pub shm_size_mb: u64,
    /// What destroy does with the sandbox's files.
    pub cleanup: CleanupPolicy,
    /// Named volumes mounted into the sandbox; they outlive it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            quotas: Vec::new(),
            max_inodes: 262_144,
            shm_size_mb: 64,
            cleanup: CleanupPolicy::Delete,
            volumes: Vec::new(),
        }
    }
}

/// Which seccomp filter confines sandboxed code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    /// Docker's default denials plus io_uring and namespace syscalls.
    #[default]
    Default,
    /// The default, also denying ptrace and personality changes entirely.
    Strict,
}

/// Process hardening inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// The seccomp filter to apply.
    pub seccomp_profile: SeccompProfile,
    /// Mount the sandbox's root read-only (home, /tmp and /dev/shm stay writable).
    pub read_only_root: bool,
    /// Drop every capability before running user code.
    pub drop_capabilities: bool,
    /// Set no_new_privs so setuid binaries can't gain privileges.
    pub no_new_privileges: bool,
    /// Maximum number of processes and threads in the sandbox.
    pub max_processes: u32,
    /// Maximum open files per process.
    pub max_open_files: u64,
    /// Largest file a process may write, in MiB.
    pub max_file_size_mb: u64,
    /// Unprivileged user that runs sandboxed code.
    pub run_as: RunAs,
    /// Confine file access with landlock where the kernel supports it.
    pub landlock: bool,
    /// Let executions ask to run as root inside the sandbox (`ExecRequest::user = "root"`), for `apt-get
    /// install` in an image's writable root or a `sudo` agents expect. Root inside is root of the sandbox's
    /// own user namespace only: an unprivileged host uid, with a container's default capabilities over the
    /// sandbox's own files and processes and none outside. Off by default: every execution runs as `run_as`.
    pub allow_root_inside: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            seccomp_profile: SeccompProfile::Default,
            read_only_root: true,
            drop_capabilities: true,
            no_new_privileges: true,
            max_processes: 256,
            max_open_files: 1024,
            max_file_size_mb: 10 * 1024,
            run_as: RunAs::default(),
            landlock: true,
            allow_root_inside: false,
        }
    }
}

/// The identity sandboxed code runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RunAs {
    /// User name (in the sandbox's /etc/passwd).
    pub name: String,
    /// User id inside the sandbox.
    pub uid: u32,
    /// Group id inside the sandbox.
    pub gid: u32,
}

impl Default for RunAs {
    fn default() -> Self {
        Self { name: "user".to_owned(), uid: 1000, gid: 1000 }
    }
}

impl RunAs {
    /// The user's home directory inside the sandbox, `/home/<name>`: the one place it is defined.
    /// Executions start there, relative paths are taken from it, and it is the user's writable storage.
    #[must_use]
    pub fn home(&self) -> String {
        format!("/home/{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trips_losslessly() {
        let mut c = SandboxConfig::preset(Preset::Browser);
        c.execution_timeout = Duration::from_millis(1500);
        c.pre_install_packages = vec!["pip:pandas".into(), "npm:lodash".into()];
        c.environment_variables.insert("A".into(), "b".into());
        c.network.allowed_domains.push("*.example.com".into());
        c.storage.quotas.push(DirectoryQuota { path: "/tmp".into(), size_mb: 100 });
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SandboxConfig>(&json).unwrap(), c);
        let toml = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<SandboxConfig>(&toml).unwrap(), c);
    }

    #[test]
    fn durations_accept_strings_and_seconds() {
        let c: SandboxConfig =
            serde_json::from_str(r#"{"execution_timeout":"5m","idle_timeout":90,"startup_timeout":"90s"}"#).unwrap();
        assert_eq!(c.execution_timeout, Duration::from_secs(300));
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.startup_timeout, Duration::from_secs(90));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<SandboxConfig>(r#"{"memroy_mb":1}"#).unwrap_err();
        assert!(err.to_string().contains("memroy_mb"));
    }
}
