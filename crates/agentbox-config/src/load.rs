//! Layered loading: preset, then a TOML file, then `AGENTBOX_*` environment
//! variables, then explicit overrides.

use std::collections::HashMap;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};

use crate::{Preset, SandboxConfig, ValidationErrors};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A source could not be read or parsed, or a value has the wrong type.
    #[error("cannot load sandbox configuration: {0}")]
    Source(#[from] config::ConfigError),
    /// The merged configuration is invalid.
    #[error("invalid sandbox configuration: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// Top-level keys of [`SandboxConfig`]; environment variables with other names
/// (such as `AGENTBOX_API_TOKEN`) belong to other components and are skipped.
const FIELDS: &[&str] = &[
    "image",
    "cpu_count",
    "memory_mb",
    "disk_gb",
    "network",
    "storage",
    "security",
    "startup_timeout",
    "execution_timeout",
    "idle_timeout",
    "on_idle",
    "pre_install_packages",
    "environment_variables",
    "max_output_bytes",
    "max_read_bytes",
];

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "pre_install_packages",
    "network.allowed_domains",
    "network.denied_domains",
    "network.dns_servers",
    "network.allowed_cidrs",
];

/// Builds a [`SandboxConfig`] from layered sources.
///
/// ```
/// use agentbox_config::{ConfigLoader, Preset};
///
/// let config = ConfigLoader::new(Preset::HeavyCompute)
///     .env_vars([("AGENTBOX_MEMORY_MB".to_owned(), "4096".to_owned())])
///     .set("network.enabled", false)
///     .load()
///     .unwrap();
/// assert_eq!((config.cpu_count, config.memory_mb), (4, 4096));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    preset: Preset,
    file: Option<PathBuf>,
    toml: Option<String>,
    env: Option<HashMap<String, String>>,
    overrides: Vec<(String, config::Value)>,
}

impl ConfigLoader {
    /// Starts from `preset`. Without [`env_vars`](Self::env_vars), the process environment is read.
    #[must_use]
    pub fn new(preset: Preset) -> Self {
        Self { preset, ..Self::default() }
    }

    /// Layers a TOML file over the preset.
    #[must_use]
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Layers TOML text over the preset (after the file, if any).
    #[must_use]
    pub fn toml(mut self, text: impl Into<String>) -> Self {
        self.toml = Some(text.into());
        self
    }

    /// Uses these variables instead of the process environment.
    #[must_use]
    pub fn env_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = Some(vars.into_iter().collect());
        self
    }

    /// Sets one field (dotted path such as `network.enabled`) over everything else.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<config::Value>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// Merges the layers, deserializes and validates.
    ///
    /// # Errors
    /// [`LoadError::Source`] for unreadable or mistyped input, [`LoadError::Invalid`] with every problem otherwise.
    pub fn load(mut self) -> Result<SandboxConfig, LoadError> {
        let vars: HashMap<String, String> = self.env.take().unwrap_or_else(|| std::env::vars().collect());
        let ours: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("AGENTBOX_").is_some_and(|rest| {
                    let first = rest.split("__").next().unwrap_or_default().to_ascii_lowercase();
                    FIELDS.contains(&first.as_str())
                })
            })
            .collect();
        if self.file.is_none() && self.toml.is_none() && ours.is_empty() && self.overrides.is_empty() {
            // Nothing layered over the preset: skip the merge, a quarter of a millisecond of every
            // `agentbox run` (the preset's round trip through the merge is tested to change nothing).
            let config = self.preset.config();
            config.validate()?;
            return Ok(config);
        }
        self.merge(ours)
    }

    /// The layered merge behind [`load`](Self::load), given the `AGENTBOX_*` variables that name a field.
    fn merge(self, ours: HashMap<String, String>) -> Result<SandboxConfig, LoadError> {
        let base = Config::try_from(&self.preset.config())?;
        let mut builder = Config::builder().add_source(base);
        if let Some(path) = &self.file {
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml).required(true));
        }
        if let Some(text) = &self.toml {
            builder = builder.add_source(File::from_str(text, FileFormat::Toml));
        }
        let mut env = Environment::with_prefix("AGENTBOX")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(ours));
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        builder = builder.add_source(env);
        for (k, v) in self.overrides {
            builder = builder.set_override(k, v)?;
        }
        let config: SandboxConfig = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_preset_alone_is_what_the_merge_makes_of_it() {
        for preset in [Preset::Default, Preset::Lightweight, Preset::HeavyCompute, Preset::Browser] {
            let fast = ConfigLoader::new(preset).env_vars(env(&[("PATH", "/usr/bin")])).load().unwrap();
            let merged = ConfigLoader::new(preset).env_vars(Vec::new()).merge(HashMap::new()).unwrap();
            assert_eq!(serde_json::to_value(&fast).unwrap(), serde_json::to_value(&merged).unwrap(), "{preset:?}");
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let config = ConfigLoader::new(Preset::Lightweight)
            .toml("memory_mb = 300\ndisk_gb = 7\nexecution_timeout = \"5m\"\n[network]\ndns_servers = [\"9.9.9.9\"]\n")
            .env_vars(env(&[
                ("AGENTBOX_DISK_GB", "8"),
                ("AGENTBOX_NETWORK__ALLOWED_DOMAINS", "pypi.org,*.pythonhosted.org"),
                ("AGENTBOX_SECURITY__MAX_PROCESSES", "64"),
                ("AGENTBOX_API_TOKEN", "not-a-sandbox-field"),
                ("AGENTBOX_IDLE_TIMEOUT", "90s"),
            ]))
            .set("disk_gb", 9)
            .load()
            .unwrap();
        assert_eq!(config.cpu_count, 1, "from the preset");
        assert_eq!(config.memory_mb, 300, "from the file");
        assert_eq!(config.execution_timeout, Duration::from_secs(300));
        assert_eq!(config.disk_gb, 9, "override beats env beats file");
        assert_eq!(config.network.allowed_domains, ["pypi.org", "*.pythonhosted.org"]);
        assert_eq!(config.network.dns_servers, ["9.9.9.9"]);
        assert_eq!(config.security.max_processes, 64);
        assert_eq!(config.idle_timeout, Duration::from_secs(90));
    }

    #[test]
    fn invalid_layers_report_every_problem() {
        let err = ConfigLoader::new(Preset::Default)
            .env_vars(env(&[("AGENTBOX_MEMORY_MB", "0"), ("AGENTBOX_PRE_INSTALL_PACKAGES", "pandas,brew:x")]))
            .load()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("memory_mb: must be at least 16, got 0"), "{msg}");
        assert!(msg.contains("pre_install_packages[1]: unknown package manager \"brew\""), "{msg}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err =
            ConfigLoader::new(Preset::Default).file("/nonexistent/agentbox.toml").env_vars([]).load().unwrap_err();
        assert!(matches!(err, LoadError::Source(_)), "{err}");
    }
}
