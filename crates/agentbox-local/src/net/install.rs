//! Package installs: pip and npm run inside the sandbox, through a proxy that also allows their registries.
//!
//! Each installer run gets its own short-lived HTTP proxy inside the sandbox
//! ([`Egress::installer_proxy`]) whose rules are the sandbox's plus the
//! package registry's hosts, even when the sandbox's policy refuses them or
//! networking is off. The sandbox's own policy is never changed, so nothing
//! needs restoring: when the run ends, successfully or not, the installer's
//! proxy stops and its connections are cut.

use std::collections::BTreeMap;
use std::time::Instant;

use agentbox_config::PackageSpec;
use agentbox_core::{Error, Result, SandboxBackend, SandboxId};

use super::Egress;

/// Hosts pip reaches when no index is configured.
const PYPI_HOSTS: [&str; 2] = ["pypi.org", "files.pythonhosted.org"];
/// The host npm reaches when no registry is configured.
const NPM_HOSTS: [&str; 1] = ["registry.npmjs.org"];
/// The hosts apt reaches in Debian images (their `sources.list`).
const APT_HOSTS: [&str; 2] = ["deb.debian.org", "security.debian.org"];

/// The host of a URL (`https://user@host:8080/x` gives `host`), without brackets for IPv6.
#[must_use]
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host =
        if let Some(v6) = hostport.strip_prefix('[') { v6.split(']').next()? } else { hostport.split(':').next()? };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn lookup<'a>(env: &'a BTreeMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| env.get(*n)).map(String::as_str).filter(|v| !v.trim().is_empty())
}

/// The registry hosts pip needs: the configured index (and extra indexes), else PyPI.
#[must_use]
pub fn pip_hosts(env: &BTreeMap<String, String>) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    if let Some(index) = lookup(env, &["PIP_INDEX_URL", "pip_index_url"]) {
        hosts.extend(url_host(index));
    } else {
        hosts.extend(PYPI_HOSTS.map(str::to_owned));
    }
    if let Some(extra) = lookup(env, &["PIP_EXTRA_INDEX_URL", "pip_extra_index_url"]) {
        hosts.extend(extra.split_whitespace().filter_map(url_host));
    }
    hosts.dedup();
    hosts
}

/// The registry hosts npm needs: the configured registry, else the npm registry.
#[must_use]
pub fn npm_hosts(env: &BTreeMap<String, String>) -> Vec<String> {
    match lookup(env, &["npm_config_registry", "NPM_CONFIG_REGISTRY"]) {
        Some(url) => url_host(url).into_iter().collect(),
        None => NPM_HOSTS.map(str::to_owned).into(),
    }
}

/// Installs `packages` in the sandbox: one apt run (as root, where `apt` allows it), one pip run and one npm run
/// at most, each through an installer proxy.
///
/// # Errors
/// [`Error::Unsupported`] for apt packages where `apt` doesn't allow them; [`Error::Backend`] with the
/// installer's stderr when it fails. The sandbox stays usable either way.
pub async fn install<B: SandboxBackend + ?Sized>(
    backend: &B,
    id: &SandboxId,
    egress: &Egress,
    configured_env: &BTreeMap<String, String>,
    packages: &[PackageSpec],
    apt: agentbox_core::install::AptSupport,
) -> Result<()> {
    for mut request in agentbox_core::install::install_requests(packages, apt)? {
        let argv = request.to_argv()?;
        let pip = argv.first().is_some_and(|a| a == "python3");
        let (manager, hosts) = match argv.first().map(String::as_str) {
            Some("python3") => ("pip", pip_hosts(configured_env)),
            Some("npm") => ("npm", npm_hosts(configured_env)),
            _ => ("apt", APT_HOSTS.map(str::to_owned).into()),
        };
        let proxy = egress.installer_proxy(&hosts).await?;
        request.env.extend(proxy.env());
        if pip {
            // Debian marks its Python as externally managed; a --user install under the home is safe.
            request.env.insert("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into());
            request.env.insert("PIP_PROGRESS_BAR".into(), "off".into());
        } else {
            request.env.insert("npm_config_update_notifier".into(), "false".into());
        }
        let label = argv.join(" ");
        tracing::info!(sandbox = %id, manager, hosts = ?hosts, command = %label, "installing packages");
        let started = Instant::now();
        let out = backend.exec(id, request).await?.collect(16 * 1024).await;
        drop(proxy);
        if out.exit_code != 0 {
            tracing::warn!(sandbox = %id, manager, exit_code = out.exit_code, "package install failed");
            return Err(Error::backend(format!(
                "{manager} install failed (exit {}{}): {label}\n{}",
                out.exit_code,
                if out.timed_out { ", timed out" } else { "" },
                out.stderr.trim_end()
            )));
        }
        tracing::info!(sandbox = %id, manager, elapsed_ms = started.elapsed().as_millis(), "packages installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_configuration() {
        assert_eq!(url_host("https://user:pw@Mirror.example:8443/simple/"), Some("mirror.example".into()));
        assert_eq!(url_host("http://[fd00::1]:3141/root/pypi"), Some("fd00::1".into()));
        assert_eq!(url_host("no scheme"), None);
        let mut env = BTreeMap::new();
        assert_eq!(pip_hosts(&env), ["pypi.org", "files.pythonhosted.org"]);
        assert_eq!(npm_hosts(&env), ["registry.npmjs.org"]);
        env.insert("PIP_INDEX_URL".into(), "http://pkgs.internal:8080/simple".into());
        env.insert("PIP_EXTRA_INDEX_URL".into(), "https://a.example/simple https://b.example/simple".into());
        env.insert("npm_config_registry".into(), "https://npm.internal/".into());
        assert_eq!(pip_hosts(&env), ["pkgs.internal", "a.example", "b.example"]);
        assert_eq!(npm_hosts(&env), ["npm.internal"]);
    }
}
