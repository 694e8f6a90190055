//! Per-request changes to a preset's configuration, as the REST API's `POST /api/sandboxes` and MCP's
//! `sandbox_create` take them: one place that says which field each setting replaces.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{IdleAction, NetworkConfig, SandboxConfig, StartProcess, VolumeMount};

/// How a request changes the network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkOverride {
    /// The whole network configuration, in place of the preset's.
    Replace(Box<NetworkConfig>),
    /// Some switches and lists over the preset's; `None` keeps the preset's value.
    Patch {
        /// Whether traffic beyond the sandbox's loopback is allowed.
        enabled: Option<bool>,
        /// `network.allowed_domains`.
        allowed_domains: Option<Vec<String>>,
        /// `network.denied_domains`.
        denied_domains: Option<Vec<String>>,
    },
}

/// Settings a request gives over a preset's configuration; each `Some` replaces the preset's value.
///
/// Checking the values is the configuration's [`validate`](SandboxConfig::validate); a front end checks only
/// what it must answer before (its own ranges, or a status of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOverrides {
    /// The root's image reference (a template's is [`template_image`](crate::template_image)).
    pub image: Option<String>,
    /// CPUs.
    pub cpu_count: Option<u32>,
    /// Memory limit in MiB.
    pub memory_mb: Option<u64>,
    /// Writable storage in GiB.
    pub disk_gb: Option<u64>,
    /// Network access and egress policy.
    pub network: Option<NetworkOverride>,
    /// Named volumes to mount, in place of the preset's.
    pub volumes: Option<Vec<VolumeMount>>,
    /// How long the sandbox may take to start.
    pub startup_timeout: Option<Duration>,
    /// Default time limit of one execution.
    pub execution_timeout: Option<Duration>,
    /// Time without use after which `on_idle` applies.
    pub idle_timeout: Option<Duration>,
    /// What happens to an idle sandbox.
    pub on_idle: Option<IdleAction>,
    /// Environment variables every process sees, in place of the preset's.
    pub environment_variables: Option<BTreeMap<String, String>>,
    /// Packages installed at creation, in place of the preset's.
    pub pre_install_packages: Option<Vec<String>>,
    /// Cap on the captured stdout and stderr of one execution, each, in bytes.
    pub max_output_bytes: Option<u64>,
    /// Whether commands may run as root inside.
    pub allow_root_inside: Option<bool>,
    /// What runs when the sandbox starts.
    pub start: Option<StartProcess>,
}

impl ConfigOverrides {
    /// Applies every given setting to `c`.
    pub fn apply(self, c: &mut SandboxConfig) {
        let Self {
            image,
            cpu_count,
            memory_mb,
            disk_gb,
            network,
            volumes,
            startup_timeout,
            execution_timeout,
            idle_timeout,
            on_idle,
            environment_variables,
            pre_install_packages,
            max_output_bytes,
            allow_root_inside,
            start,
        } = self;
        set(&mut c.image, image.map(Some));
        set(&mut c.cpu_count, cpu_count);
        set(&mut c.memory_mb, memory_mb);
        set(&mut c.disk_gb, disk_gb);
        match network {
            Some(NetworkOverride::Replace(n)) => c.network = *n,
            Some(NetworkOverride::Patch { enabled, allowed_domains, denied_domains }) => {
                set(&mut c.network.enabled, enabled);
                set(&mut c.network.allowed_domains, allowed_domains);
                set(&mut c.network.denied_domains, denied_domains);
            }
            None => {}
        }
        set(&mut c.storage.volumes, volumes);
        set(&mut c.startup_timeout, startup_timeout);
        set(&mut c.execution_timeout, execution_timeout);
        set(&mut c.idle_timeout, idle_timeout);
        set(&mut c.on_idle, on_idle);
        set(&mut c.environment_variables, environment_variables);
        set(&mut c.pre_install_packages, pre_install_packages);
        set(&mut c.max_output_bytes, max_output_bytes);
        set(&mut c.security.allow_root_inside, allow_root_inside);
        set(&mut c.start, start);
    }

    /// `base` with every given setting applied.
    #[must_use]
    pub fn applied_to(self, mut base: SandboxConfig) -> SandboxConfig {
        self.apply(&mut base);
        base
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Preset;

    #[test]
    fn nothing_given_changes_nothing() {
        let base = Preset::Browser.config();
        assert_eq!(ConfigOverrides::default().applied_to(base.clone()), base);
    }

    #[test]
    fn each_given_setting_replaces_the_presets() {
        let volume = VolumeMount { name: "data".into(), mount_path: "/home/user/data".into(), read_only: true };
        let c = ConfigOverrides {
            image: Some("python:3.12-slim".into()),
            cpu_count: Some(3),
            memory_mb: Some(700),
            disk_gb: Some(9),
            volumes: Some(vec![volume.clone()]),
            startup_timeout: Some(Duration::from_secs(7)),
            execution_timeout: Some(Duration::from_millis(1500)),
            idle_timeout: Some(Duration::from_secs(60)),
            on_idle: Some(IdleAction::Stop),
            environment_variables: Some(BTreeMap::from([("A".into(), "1".into())])),
            pre_install_packages: Some(vec!["pip:rich".into()]),
            max_output_bytes: Some(4096),
            allow_root_inside: Some(true),
            start: Some(StartProcess::Image),
            network: None,
        }
        .applied_to(Preset::Default.config());
        assert_eq!(c.image.as_deref(), Some("python:3.12-slim"));
        assert_eq!((c.cpu_count, c.memory_mb, c.disk_gb), (3, 700, 9));
        assert_eq!(c.storage.volumes, vec![volume]);
        assert_eq!(c.startup_timeout, Duration::from_secs(7));
        assert_eq!(c.execution_timeout, Duration::from_millis(1500));
        assert_eq!((c.idle_timeout, c.on_idle), (Duration::from_secs(60), IdleAction::Stop));
        assert_eq!(c.environment_variables.get("A").map(String::as_str), Some("1"));
        assert_eq!(c.pre_install_packages, vec!["pip:rich".to_owned()]);
        assert_eq!(c.max_output_bytes, 4096);
        assert!(c.security.allow_root_inside);
        assert_eq!(c.start, StartProcess::Image);
        assert_eq!(c.network, Preset::Default.config().network);
    }

    #[test]
    fn a_network_patch_keeps_what_it_does_not_name_and_a_replacement_does_not() {
        let mut base = Preset::Default.config();
        base.network.denied_domains = vec!["evil.example".into()];
        base.network.dns_servers = vec!["1.1.1.1".into()];
        let patched = ConfigOverrides {
            network: Some(NetworkOverride::Patch {
                enabled: Some(true),
                allowed_domains: Some(vec!["pypi.org".into()]),
                denied_domains: None,
            }),
            ..ConfigOverrides::default()
        }
        .applied_to(base.clone());
        assert!(patched.network.enabled);
        assert_eq!(patched.network.allowed_domains, vec!["pypi.org".to_owned()]);
        assert_eq!(patched.network.denied_domains, vec!["evil.example".to_owned()]);
        assert_eq!(patched.network.dns_servers, vec!["1.1.1.1".to_owned()]);

        let replaced = ConfigOverrides {
            network: Some(NetworkOverride::Replace(Box::new(NetworkConfig {
                enabled: true,
                ..NetworkConfig::default()
            }))),
            ..ConfigOverrides::default()
        }
        .applied_to(base);
        assert_eq!(replaced.network, NetworkConfig { enabled: true, ..NetworkConfig::default() });
    }
}
