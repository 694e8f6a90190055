//! Validation that reports every problem at once, each with its field path.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::SandboxConfig;
use crate::egress::{EgressEntry, valid_secret_name};

/// What is wrong with a config's `start`, as the path of the setting and the problem: `"image"` without an
/// image, or a command with no program, a NUL byte or more than 1024 arguments.
#[must_use]
pub fn start_problem(c: &SandboxConfig) -> Option<(&'static str, String)> {
    match &c.start {
        crate::StartProcess::None => None,
        crate::StartProcess::Image if c.image_reference().is_none() => {
            Some(("start", "\"image\" runs the image's Entrypoint and Cmd, so it needs an `image`".to_owned()))
        }
        crate::StartProcess::Image => None,
        crate::StartProcess::Command(argv) if argv.first().is_none_or(String::is_empty) => {
            Some(("start.command", "must name a program first".to_owned()))
        }
        crate::StartProcess::Command(argv) if argv.iter().any(|a| a.contains('\0')) || argv.len() > 1024 => {
            Some(("start.command", "must be at most 1024 arguments without NUL bytes".to_owned()))
        }
        crate::StartProcess::Command(_) => None,
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    /// Path of the field, e.g. `network.dns_servers[1]`.
    pub path: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    /// Records a problem.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError { path: path.into(), message: message.into() });
    }

    /// `Ok` when no problem was recorded.
    ///
    /// # Errors
    /// Returns `self` when it holds problems.
    pub fn into_result(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Whether no problem was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

fn range(errors: &mut ValidationErrors, path: &str, got: u64, min: u64, max: u64) {
    if got < min {
        errors.push(path, format!("must be at least {min}, got {got}"));
    } else if got > max {
        errors.push(path, format!("must be at most {max}, got {got}"));
    }
}

fn duration(errors: &mut ValidationErrors, path: &str, got: Duration, min: Duration, max: Duration) {
    if got < min || got > max {
        errors.push(
            path,
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(got)
            ),
        );
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return s.parse::<IpAddr>().is_ok();
    };
    match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SandboxConfig {
    /// Checks every field and reports all problems at once.
    ///
    /// # Errors
    /// Returns each invalid field with its path and the accepted values.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        range(&mut e, "cpu_count", u64::from(self.cpu_count), 1, 256);
        range(&mut e, "memory_mb", self.memory_mb, 16, 1024 * 1024);
        range(&mut e, "disk_gb", self.disk_gb, 1, 16 * 1024);
        range(&mut e, "max_output_bytes", self.max_output_bytes, 1024, 1024 * 1024 * 1024);
        range(&mut e, "max_read_bytes", self.max_read_bytes, 1024, 4 * 1024 * 1024 * 1024);
        duration(&mut e, "startup_timeout", self.startup_timeout, Duration::from_secs(1), Duration::from_secs(3600));
        duration(
            &mut e,
            "execution_timeout",
            self.execution_timeout,
            Duration::from_millis(100),
            Duration::from_secs(86_400),
        );
        duration(&mut e, "idle_timeout", self.idle_timeout, Duration::from_secs(1), Duration::from_secs(30 * 86_400));

        if let Some(problem) = self.image.as_deref().and_then(image_reference_problem) {
            e.push("image", problem);
        }
        let net = &self.network;
        for (field, list) in [
            ("allowed_domains", &net.allowed_domains),
            ("denied_domains", &net.denied_domains),
            ("inspect_domains", &net.inspect_domains),
        ] {
            for (i, d) in list.iter().enumerate() {
                if field == "inspect_domains" && d.len() > 253 {
                    e.push(format!("network.{field}[{i}]"), "must be at most 253 characters, port included");
                    continue;
                }
                match EgressEntry::parse(d) {
                    Ok(entry) if field == "inspect_domains" && entry.host.contains(':') => e.push(
                        format!("network.{field}[{i}]"),
                        format!("{d:?} is an IPv6 address; inspect_domains takes names and IPv4 addresses"),
                    ),
                    Ok(entry) if field == "inspect_domains" && entry.is_request_level() => e.push(
                        format!("network.{field}[{i}]"),
                        format!("{d:?} has a method or a path; inspect_domains takes hosts, optionally with a port"),
                    ),
                    Ok(_) => {}
                    Err(err) => e.push(format!("network.{field}[{i}]"), err.to_string()),
                }
            }
        }
        for (i, secret) in net.secrets.iter().enumerate() {
            let path = format!("network.secrets[{i}]");
            if !valid_secret_name(&secret.name) {
                e.push(
                    format!("{path}.name"),
                    format!(
                        "invalid secret name {:?} (expected upper-case letters, digits and _, like \"GITHUB_TOKEN\")",
                        secret.name
                    ),
                );
            }
            if secret.hosts.is_empty() {
                e.push(format!("{path}.hosts"), "must name at least one host that may receive the secret");
            }
            for (j, h) in secret.hosts.iter().enumerate() {
                if h.len() > 253 {
                    e.push(format!("{path}.hosts[{j}]"), "must be at most 253 characters, port included");
                    continue;
                }
                match EgressEntry::parse(h) {
                    Ok(entry) if entry.host.contains(':') => e.push(
                        format!("{path}.hosts[{j}]"),
                        format!("{h:?} is an IPv6 address; secret hosts are names and IPv4 addresses"),
                    ),
                    Ok(entry) if entry.is_request_level() => e.push(
                        format!("{path}.hosts[{j}]"),
                        format!("{h:?} has a method or a path; secret hosts are hosts, optionally with a port"),
                    ),
                    Ok(_) => {}
                    Err(err) => e.push(format!("{path}.hosts[{j}]"), err.to_string()),
                }
            }
            if let Err(err) = secret.header_parts() {
                e.push(format!("{path}.header"), err.to_string());
            }
        }
        for (i, s) in net.dns_servers.iter().enumerate() {
            if s.parse::<IpAddr>().is_err() {
                e.push(
                    format!("network.dns_servers[{i}]"),
                    format!("invalid IP address {s:?} (expected e.g. \"1.1.1.1\")"),
                );
            }
        }
        for (i, s) in net.allowed_cidrs.iter().enumerate() {
            if !valid_cidr(s) {
                e.push(
                    format!("network.allowed_cidrs[{i}]"),
                    format!("invalid CIDR {s:?} (expected e.g. \"127.0.0.0/8\")"),
                );
            }
        }
        for (field, v) in [
            ("bandwidth_in_bytes_per_sec", net.bandwidth_in_bytes_per_sec),
            ("bandwidth_out_bytes_per_sec", net.bandwidth_out_bytes_per_sec),
        ] {
            if v == Some(0) {
                e.push(format!("network.{field}"), "must be at least 1 byte/s, or absent for no limit");
            }
        }

        let disk_mb = self.disk_gb.saturating_mul(1024);
        let home = self.security.run_as.home();
        for (i, q) in self.storage.quotas.iter().enumerate() {
            let p = &q.path;
            let inside = [home.as_str(), "/tmp"].iter().any(|root| p == root || p.starts_with(&format!("{root}/")));
            if !inside || p.split('/').any(|c| c == ".." || c == ".") || p.contains("//") || p.ends_with('/') {
                e.push(
                    format!("storage.quotas[{i}].path"),
                    format!("must be a normalized absolute path under {home} or /tmp, got {p:?}"),
                );
            }
            if q.size_mb == 0 || q.size_mb > disk_mb {
                e.push(
                    format!("storage.quotas[{i}].size_mb"),
                    format!("must be between 1 and disk_gb*1024 ({disk_mb}), got {}", q.size_mb),
                );
            }
        }
        let mut targets = std::collections::BTreeSet::new();
        for (i, v) in self.storage.volumes.iter().enumerate() {
            let name_ok = !v.name.is_empty()
                && v.name.len() <= 200
                && v.name != "."
                && v.name != ".."
                && v.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                e.push(
                    format!("storage.volumes[{i}].name"),
                    format!("must be 1-200 letters, digits, '.', '_' or '-', got {:?}", v.name),
                );
            }
            let p = &v.mount_path;
            if let Some(problem) = mount_path_problem(p, &home) {
                e.push(format!("storage.volumes[{i}].mount_path"), problem);
            } else if !targets.insert(p.clone()) {
                e.push(format!("storage.volumes[{i}].mount_path"), format!("{p:?} is used by another volume"));
            }
        }
        range(&mut e, "storage.max_inodes", self.storage.max_inodes, 1024, 1 << 32);
        range(&mut e, "storage.shm_size_mb", self.storage.shm_size_mb, 1, 64 * 1024);

        let sec = &self.security;
        range(&mut e, "security.max_processes", u64::from(sec.max_processes), 8, 1 << 22);
        range(&mut e, "security.max_open_files", sec.max_open_files, 64, 1 << 20);
        range(&mut e, "security.max_file_size_mb", sec.max_file_size_mb, 1, 1 << 24);
        if sec.run_as.uid == 0 || sec.run_as.gid == 0 {
            e.push("security.run_as", "must be an unprivileged user: uid and gid must not be 0");
        }
        if sec.run_as.uid > 65_000 || sec.run_as.gid > 65_000 {
            e.push(
                "security.run_as",
                format!("uid and gid must be at most 65000, got {}:{}", sec.run_as.uid, sec.run_as.gid),
            );
        }
        if sec.run_as.name.is_empty()
            || !sec.run_as.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            e.push("security.run_as.name", format!("must be a lower-case user name, got {:?}", sec.run_as.name));
        }

        if let Some((path, problem)) = start_problem(self) {
            e.push(path, problem);
        }

        for (i, p) in self.pre_install_packages.iter().enumerate() {
            if let Err(err) = p.parse::<crate::PackageSpec>() {
                e.push(format!("pre_install_packages[{i}]"), err.to_string());
            }
        }
        for (k, v) in &self.environment_variables {
            if !valid_env_name(k) {
                e.push(
                    format!("environment_variables.{k}"),
                    "names must be letters, digits and '_', not starting with a digit",
                );
            }
            if v.contains('\0') {
                e.push(format!("environment_variables.{k}"), "values must not contain NUL bytes");
            }
        }
        e.into_result()
    }
}

/// Why `image` can't be an image reference, if it can't (the full grammar is the image store's; this catches
/// what is never one).
#[must_use]
pub fn image_reference_problem(image: &str) -> Option<String> {
    let ok = !image.is_empty()
        && image.len() <= 512
        && image.bytes().all(|b| b.is_ascii_graphic())
        && !image.starts_with(['-', '/', '.', ':', '@']);
    (!ok).then(|| {
        format!(
            "invalid image reference {image:?} (expected \"host\" or a reference like \"python:3.12-slim\" or \"localhost:5000/team/agent:1\")"
        )
    })
}

/// Why a volume can't be mounted at `path` in a sandbox whose home is `home`, if it can't: the path must be a
/// normalized absolute path other than `/` and the home, and not under `/proc`, `/dev`, `/sys`, `/etc` or `/tmp`.
#[must_use]
pub fn mount_path_problem(path: &str, home: &str) -> Option<String> {
    let normalized = path.starts_with('/')
        && path.len() > 1
        && path.len() <= 1024
        && !path.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..")
        && !path.contains('\0');
    let reserved = ["/proc", "/dev", "/sys", "/etc", "/tmp", "/.agentbox"]
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")));
    (!normalized || reserved || path == home).then(|| {
        format!(
            "must be a normalized absolute path other than /, the home ({home}), and anything under /proc, /dev, \
             /sys, /etc or /tmp, got {path:?}"
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::{DirectoryQuota, RunAs, SandboxConfig};

    #[test]
    fn quotas_follow_the_home_of_the_configured_user() {
        let mut c = SandboxConfig::default();
        c.security.run_as = RunAs { name: "alice".into(), uid: 1001, gid: 1001 };
        assert_eq!(c.security.run_as.home(), "/home/alice");
        c.storage.quotas = vec![DirectoryQuota { path: "/home/alice/data".into(), size_mb: 5 }];
        assert!(c.validate().is_ok());
        c.storage.quotas = vec![DirectoryQuota { path: "/home/user/data".into(), size_mb: 5 }];
        let err = c.validate().unwrap_err();
        assert!(err.0[0].message.contains("under /home/alice or /tmp"), "{err:?}");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut c = SandboxConfig { memory_mb: 0, cpu_count: 0, ..SandboxConfig::default() };
        c.pre_install_packages = vec!["pandas".into(), "npm:lodash".into(), "brew:wget".into()];
        c.network.dns_servers = vec!["1.1.1.1".into(), "dns.google".into()];
        c.storage.quotas = vec![DirectoryQuota { path: "/etc".into(), size_mb: 5 }];
        c.environment_variables.insert("1BAD".into(), "x".into());
        let err = c.validate().unwrap_err();
        let lines: Vec<String> = err.0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        assert!(lines.contains(&"memory_mb: must be at least 16, got 0".to_owned()), "{lines:?}");
        assert!(lines.contains(&"cpu_count: must be at least 1, got 0".to_owned()), "{lines:?}");
        assert!(
            lines.contains(
                &r#"pre_install_packages[2]: unknown package manager "brew" (expected pip, npm or apt)"#.to_owned()
            ),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.starts_with("network.dns_servers[1]: invalid IP address")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("storage.quotas[0].path")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("environment_variables.1BAD")), "{lines:?}");
        assert_eq!(err.0.len(), 6, "{lines:?}");
    }

    #[test]
    fn egress_entries_and_secrets_are_checked_with_their_paths() {
        use crate::SecretRule;
        let mut c = SandboxConfig::default();
        c.network.allowed_domains = vec!["GET api.github.com:443/repos/*".into(), "api.github.com:99999".into()];
        c.network.denied_domains = vec!["get x.com".into()];
        c.network.inspect_domains = vec!["GET a.com/x".into()];
        c.network.secrets = vec![
            SecretRule {
                name: "GH".into(),
                hosts: vec!["api.github.com:443".into()],
                header: Some("Authorization: Bearer {value}".into()),
                ..SecretRule::default()
            },
            SecretRule { name: "lower".into(), hosts: vec!["POST a.com/x".into()], ..SecretRule::default() },
            SecretRule {
                name: "GH".into(),
                header: Some("X-Key: fixed".into()),
                replace_in_body: true,
                ..SecretRule::default()
            },
        ];
        let err = c.validate().unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "network.allowed_domains[1]",
                "network.denied_domains[0]",
                "network.inspect_domains[0]",
                "network.secrets[1].name",
                "network.secrets[1].hosts[0]",
                "network.secrets[2].hosts",
                "network.secrets[2].header",
            ],
            "{err}"
        );
        assert!(err.to_string().contains(r#"invalid port "99999" (expected 1 to 65535)"#), "{err}");
    }
}
