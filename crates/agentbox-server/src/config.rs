//! The server's configuration: a TOML file, overridden by flags and the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentbox_core::ManagerConfig;
use serde::Deserialize;

use crate::{SecretConfigError, ServerError};

/// Why a server configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse, or names a key that does not exist.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// Settings out of range, each named with what is accepted.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Which backend hosts the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Sandboxes on this Linux host.
    #[default]
    Local,
    /// Sandboxes on E2B.
    E2b,
}

impl BackendKind {
    /// The name used in flags and files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::E2b => "e2b",
        }
    }
}

/// A name that is not a backend's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?} (expected local or e2b)")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "local" => Ok(Self::Local),
            "e2b" => Ok(Self::E2b),
            _ => Err(UnknownBackend(s.to_owned())),
        }
    }
}

/// Request limits and protections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Cap on live sandboxes; creating one more answers 429.
    pub max_sandboxes: usize,
    /// Largest JSON request body, in bytes.
    pub max_json_body_bytes: usize,
    /// Largest file upload, in bytes.
    pub max_upload_bytes: usize,
    /// File downloads and uploads in progress at once, over all clients (each holds a few 256 KiB chunks);
    /// one more answers 429 with Retry-After.
    pub max_concurrent_transfers: usize,
    /// Longest request target (path and query), in bytes.
    pub max_uri_bytes: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most open connections; further ones wait to be accepted. The server lowers it to its share
    /// of the file-descriptor budget when that is smaller (see `fd_reserve`, `proxy_fd_percent`).
    pub max_connections: usize,
    /// Most open connections from one client address (at most half of the connection budget);
    /// further ones are closed at once. One orchestrator driving every sandbox (streams included)
    /// needs a few per sandbox.
    pub max_connections_per_client: usize,
    /// File descriptors kept out of every connection budget, for the registry, sandbox control
    /// (pipes, pidfds, cgroup and namespace files), logs and name lookups.
    pub fd_reserve: usize,
    /// Percentage of the file descriptors beyond `fd_reserve` that the egress proxies of all
    /// sandboxes may hold together; the rest is for REST connections.
    pub proxy_fd_percent: u32,
    /// File descriptors the egress proxy of one sandbox may hold (one per connection from the
    /// sandbox, one per connection to a destination; a tunnel holds both until it closes).
    pub max_proxy_fds_per_sandbox: usize,
    /// Largest request head the egress proxy reads; it is also the size of its read buffer.
    pub proxy_max_head_bytes: usize,
    /// Time a sandbox's client has to send the proxy a request head or a SOCKS5 handshake, and the
    /// idle limit between requests.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub proxy_header_timeout: Duration,
    /// Size of each of the two copy buffers of a proxy tunnel.
    pub proxy_copy_buffer_bytes: usize,
    /// Log lines allowed per event kind and source (a sandbox, a client address) in each
    /// `log_window`; further ones are counted and summed up in one line.
    pub log_lines_per_window: u32,
    /// The window of `log_lines_per_window`.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub log_window: Duration,
    /// Most label sets per HTTP metric; requests beyond it are counted under `route="other"`.
    pub max_metric_series: usize,
    /// Time limit of ordinary requests.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub request_timeout: Duration,
    /// Time limit of a sandbox creation, package installs included.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub create_timeout: Duration,
    /// Time allowed beyond an execution's own time limit before the request is abandoned.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub exec_grace: Duration,
    /// Longest time limit of one browser action (a larger `timeout_ms` is lowered to it), at most 5 minutes:
    /// how long one call may hold a sandbox's browser.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub browser_max_timeout: Duration,
    /// Time a client has to send a request's head (slow clients are disconnected).
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub body_read_timeout: Duration,
    /// Sustained requests per second per token.
    pub rate_limit_per_second: u32,
    /// Burst of requests per token above the sustained rate.
    pub rate_limit_burst: u32,
    /// Requests with a missing or wrong token allowed per minute per client address.
    pub auth_failures_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sandboxes: 64,
            max_json_body_bytes: 4 << 20,
            max_upload_bytes: 128 << 20,
            max_concurrent_transfers: 32,
            max_uri_bytes: 8 << 10,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_connections: 1024,
            max_connections_per_client: 256,
            fd_reserve: 256,
            proxy_fd_percent: 50,
            max_proxy_fds_per_sandbox: 1024,
            proxy_max_head_bytes: 16 << 10,
            proxy_header_timeout: Duration::from_secs(10),
            proxy_copy_buffer_bytes: 16 << 10,
            log_lines_per_window: 20,
            log_window: Duration::from_secs(10),
            max_metric_series: 1024,
            request_timeout: Duration::from_secs(60),
            create_timeout: Duration::from_secs(15 * 60),
            exec_grace: Duration::from_secs(30),
            browser_max_timeout: Duration::from_secs(5 * 60),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            auth_failures_per_minute: 60,
        }
    }
}

/// The sandbox manager's background work.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerSettings {
    /// How often idle sandboxes are looked for.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub cleanup_interval: Duration,
    /// How often every sandbox is probed.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub health_check_interval: Duration,
    /// Deadline of one probe.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub health_check_timeout: Duration,
    /// Consecutive failed probes after which a sandbox is recreated.
    pub max_health_failures: u32,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        let m = ManagerConfig::default();
        Self {
            cleanup_interval: Duration::from_secs(60),
            health_check_interval: m.health_check_interval,
            health_check_timeout: m.health_check_timeout,
            max_health_failures: m.max_health_failures,
        }
    }
}

/// What a graceful shutdown does with live sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownPolicy {
    /// Keep them: those the backend can stop are stopped (their files kept; the next start lists them as
    /// stopped, and `start` or `create` runs them again), the others are left running for the next start to
    /// re-adopt.
    #[default]
    Keep,
    /// Destroy every sandbox.
    Destroy,
}

/// Everything the server needs besides its backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the registry database and the generated token.
    pub data_dir: Option<PathBuf>,
    /// The backend.
    pub backend: BackendKind,
    /// The API token (`AGENTBOX_API_TOKEN` takes precedence).
    pub api_token: Option<String>,
    /// Request limits.
    pub limits: Limits,
    /// Manager background tasks.
    pub manager: ManagerSettings,
    /// What a graceful shutdown does with live sandboxes.
    pub on_shutdown: ShutdownPolicy,
    /// How long a graceful shutdown waits for requests in flight.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub shutdown_grace: Duration,
    /// The MCP endpoint at `/mcp` (`[mcp]`: enabled, default_preset, allowed_hosts, allowed_origins, session_idle_timeout).
    pub mcp: agentbox_mcp::McpConfig,
    /// The E2B-compatible API (`[e2b_api]`: enabled, templates, max_timeout_secs, max_upload_bytes, max_sandboxes;
    /// see docs/E2B-API.md).
    pub e2b_api: agentbox_e2b_api::E2bApiConfig,
    /// The egress proxy's secrets and destination trust (`[egress]`; see docs/SECRETS.md).
    pub egress: EgressSettings,
    /// The image store of the local backend, which `/api/images` and `/api/templates` serve (`[images]`).
    pub images: ImageSettings,
}

/// Where the local backend's images live (docs/IMAGES.md).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSettings {
    /// The store's directory (default `/var/lib/agentbox/images`).
    pub dir: Option<PathBuf>,
}

impl ImageSettings {
    /// The store's configuration.
    #[must_use]
    pub fn config(&self) -> agentbox_image::ImageConfig {
        self.dir.clone().map_or_else(agentbox_image::ImageConfig::default, agentbox_image::ImageConfig::in_dir)
    }
}

/// Secrets the egress proxy injects, and the roots it trusts when it connects to hosts whose TLS it terminates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSettings {
    /// PEM files of certificate authorities trusted besides the host's system roots for destinations whose TLS
    /// the proxy terminates (a company CA, or a test CA).
    pub upstream_extra_roots: Vec<PathBuf>,
    /// Secrets by name (`[egress.secrets.GITHUB_TOKEN] env = "GITHUB_TOKEN"`); sandboxes name them in
    /// `network.secrets`, and `PUT /api/secrets/{name}` adds or replaces them at run time.
    pub secrets: std::collections::BTreeMap<String, SecretSourceConfig>,
}

/// Where a configured secret's value comes from: exactly one of `value`, `env` and `file`.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSourceConfig {
    /// The value itself.
    pub value: Option<String>,
    /// A variable of the server's environment, read at each use.
    pub env: Option<String>,
    /// A file, read at each use (rotate the secret by rewriting the file).
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for SecretSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSourceConfig")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("env", &self.env)
            .field("file", &self.file)
            .finish()
    }
}

impl SecretSourceConfig {
    /// The source, when exactly one field is set.
    ///
    /// # Errors
    /// [`SecretConfigError::NotOneSource`] when none or several are set.
    pub fn source(&self) -> Result<agentbox_core::egress::SecretSource, SecretConfigError> {
        use agentbox_core::egress::{SecretSource, SecretValue};
        match (&self.value, &self.env, &self.file) {
            (Some(v), None, None) => Ok(SecretSource::Value(SecretValue::new(v.clone()))),
            (None, Some(e), None) => Ok(SecretSource::Env(e.clone())),
            (None, None, Some(f)) => Ok(SecretSource::File(f.clone())),
            _ => Err(SecretConfigError::NotOneSource),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: None,
            backend: BackendKind::Local,
            api_token: None,
            limits: Limits::default(),
            manager: ManagerSettings::default(),
            on_shutdown: ShutdownPolicy::Keep,
            images: ImageSettings::default(),
            shutdown_grace: Duration::from_secs(30),
            mcp: agentbox_mcp::McpConfig::default(),
            e2b_api: agentbox_e2b_api::E2bApiConfig::default(),
            egress: EgressSettings::default(),
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// [`ServerError::DataDir`] if it can't be read, [`ServerError::Config`] naming the bad key otherwise.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ServerError::DataDir { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the bad key, or [`ConfigError::Invalid`] naming every bad setting.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Checks the limits make sense.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming every bad setting.
    pub fn check(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let mut problems = Vec::new();
        for (name, v) in [
            ("limits.max_sandboxes", l.max_sandboxes),
            ("limits.max_json_body_bytes", l.max_json_body_bytes),
            ("limits.max_upload_bytes", l.max_upload_bytes),
            ("limits.max_concurrent_transfers", l.max_concurrent_transfers),
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_client", l.max_connections_per_client),
            ("limits.max_proxy_fds_per_sandbox", l.max_proxy_fds_per_sandbox),
            ("limits.log_lines_per_window", l.log_lines_per_window as usize),
            ("limits.max_metric_series", l.max_metric_series),
            ("limits.max_headers", l.max_headers),
            ("limits.rate_limit_per_second", l.rate_limit_per_second as usize),
            ("limits.rate_limit_burst", l.rate_limit_burst as usize),
            ("limits.auth_failures_per_minute", l.auth_failures_per_minute as usize),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if l.browser_max_timeout > Duration::from_secs(5 * 60) {
            problems.push("limits.browser_max_timeout must be at most 5m (the largest timeout_ms)".to_owned());
        }
        if l.max_uri_bytes < 256 {
            problems.push("limits.max_uri_bytes must be at least 256".to_owned());
        }
        if l.max_header_bytes < 8192 {
            problems.push("limits.max_header_bytes must be at least 8192".to_owned());
        }
        if l.proxy_max_head_bytes < 8192 {
            problems.push("limits.proxy_max_head_bytes must be at least 8192".to_owned());
        }
        if l.proxy_copy_buffer_bytes < 1024 {
            problems.push("limits.proxy_copy_buffer_bytes must be at least 1024".to_owned());
        }
        if l.proxy_fd_percent == 0 || l.proxy_fd_percent > 90 {
            problems.push("limits.proxy_fd_percent must be between 1 and 90".to_owned());
        }
        for (name, d) in [
            ("limits.request_timeout", l.request_timeout),
            ("limits.create_timeout", l.create_timeout),
            ("limits.browser_max_timeout", l.browser_max_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.body_read_timeout", l.body_read_timeout),
            ("limits.proxy_header_timeout", l.proxy_header_timeout),
            ("limits.log_window", l.log_window),
            ("manager.cleanup_interval", self.manager.cleanup_interval),
            ("manager.health_check_interval", self.manager.health_check_interval),
            ("manager.health_check_timeout", self.manager.health_check_timeout),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be longer than zero"));
            }
        }
        if let Err(e) = self.mcp.check() {
            problems.extend(e.0);
        }
        if let Err(e) = self.e2b_api.check() {
            problems.push(e.to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The manager configuration these settings describe.
    #[must_use]
    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            cleanup_interval: self.manager.cleanup_interval,
            health_check_interval: self.manager.health_check_interval,
            health_check_timeout: self.manager.health_check_timeout,
            max_health_failures: self.manager.max_health_failures,
            max_sandboxes: Some(self.limits.max_sandboxes),
            ..ManagerConfig::default()
        }
    }
}

pub use agentbox_config::paths::default_data_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_override_defaults_and_bad_keys_are_named() {
        let c = ServerConfig::from_toml(
            "listen = \"0.0.0.0:9000\"\nbackend = \"e2b\"\n[limits]\nmax_sandboxes = 3\nrequest_timeout = \"2m\"\n[manager]\nhealth_check_interval = 10\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.backend, BackendKind::E2b);
        assert_eq!(c.limits.max_sandboxes, 3);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(120));
        assert_eq!(c.manager.health_check_interval, Duration::from_secs(10));
        assert_eq!(c.manager_config().max_sandboxes, Some(3));
        let err = ServerConfig::from_toml("[limits]\nmax_sandbox = 3\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)) && err.to_string().contains("max_sandbox"), "{err}");
        let err = ServerConfig::from_toml("[limits]\nmax_sandboxes = 0\nrate_limit_burst = 0\n").unwrap_err();
        let ConfigError::Invalid(problems) = err else { panic!("{err}") };
        assert!(problems.iter().any(|p| p.contains("limits.max_sandboxes")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("limits.rate_limit_burst")), "{problems:?}");
    }
}
