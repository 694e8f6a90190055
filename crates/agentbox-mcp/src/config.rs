//! How the MCP server behaves: the session sandbox's preset, tool sizing and the HTTP transport's protections.

use std::time::Duration;

use agentbox_config::Preset;
use agentbox_tools::ToolsConfig;
use serde::Deserialize;

/// Settings of the MCP server.
///
/// In `agentboxd`'s configuration file they are the `[mcp]` table:
///
/// ```toml
/// [mcp]
/// enabled = true
/// default_preset = "lightweight"
/// allowed_hosts = ["localhost", "127.0.0.1", "::1", "agentbox.internal:8080"]
/// allowed_origins = []
/// session_idle_timeout = "30m"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Whether `agentboxd` serves MCP at `/mcp` (stdio ignores it).
    pub enabled: bool,
    /// Preset of the sandbox each session gets by default (created on first use).
    pub default_preset: Preset,
    /// `Host` header values (`name` or `name:port`) the HTTP transport answers, against DNS rebinding.
    /// Empty allows every host: only do that behind a proxy that checks it.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`scheme://host:port`, `:*` for any port) allowed to call the HTTP transport.
    /// Empty accepts requests with any `Origin`; requests without one are always accepted.
    pub allowed_origins: Vec<String>,
    /// An HTTP session with no request for this long is closed, and its default sandbox destroyed.
    #[serde(deserialize_with = "agentbox_config::deserialize_duration")]
    pub session_idle_timeout: Duration,
    /// How tools size their output (not read from files).
    #[serde(skip)]
    pub tools: ToolsConfig,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_preset: Preset::Default,
            allowed_hosts: ["localhost", "127.0.0.1", "::1"].map(str::to_owned).into(),
            allowed_origins: Vec::new(),
            session_idle_timeout: Duration::from_secs(30 * 60),
            tools: ToolsConfig::default(),
        }
    }
}

/// Settings that make no sense, each named with what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct InvalidSettings(pub Vec<String>);

impl McpConfig {
    /// Checks the settings make sense.
    ///
    /// # Errors
    /// Every bad setting, named.
    pub fn check(&self) -> Result<(), InvalidSettings> {
        let mut problems = Vec::new();
        if self.session_idle_timeout.is_zero() {
            problems.push("mcp.session_idle_timeout must be longer than zero".to_owned());
        }
        for host in &self.allowed_hosts {
            if host.trim().is_empty() || host.contains(['/', ' ']) {
                problems.push(format!("mcp.allowed_hosts: {host:?} is not a host name or host:port"));
            }
        }
        for origin in &self.allowed_origins {
            if origin != "null" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!(
                    "mcp.allowed_origins: {origin:?} needs a scheme, such as https://app.example.com:443"
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(InvalidSettings(problems)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_and_names_bad_settings() {
        let c: McpConfig = toml_like(
            r#"{"default_preset": "lightweight", "session_idle_timeout": "90s", "allowed_hosts": ["example.com:8080"]}"#,
        );
        assert_eq!(c.default_preset, Preset::Lightweight);
        assert_eq!(c.session_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.allowed_hosts, ["example.com:8080"]);
        assert!(c.enabled);
        c.check().unwrap();

        let bad = McpConfig {
            session_idle_timeout: Duration::ZERO,
            allowed_origins: vec!["app.example.com".into()],
            ..McpConfig::default()
        };
        let err = bad.check().unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let err = err.to_string();
        assert!(err.contains("session_idle_timeout") && err.contains("needs a scheme"), "{err}");
        assert!(
            serde_json::from_str::<McpConfig>(r#"{"allowed_host": []}"#)
                .unwrap_err()
                .to_string()
                .contains("allowed_host")
        );
    }

    fn toml_like(json: &str) -> McpConfig {
        serde_json::from_str(json).unwrap()
    }
}
