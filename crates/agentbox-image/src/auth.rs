//! Registry credentials: from the store's configuration, from the environment, or from docker's
//! `config.json`, in that order; anonymous when none applies. Credentials are only ever sent to the registry
//! they are configured for.
//!
//! With a user name and password the registry client does the token flow the registry asks for (a bearer
//! token from the realm in `WWW-Authenticate`), or basic auth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::config::{Credential, ImageConfig};

/// A credentials source that can't be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// docker's config.json exists but can't be read or parsed.
    #[error("can't read registry credentials from {path}: {reason}; fix or remove the file")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The environment variables holding credentials: `AGENTBOX_REGISTRY` names the one registry they are for,
/// with `AGENTBOX_REGISTRY_USERNAME` and `AGENTBOX_REGISTRY_PASSWORD`, or `AGENTBOX_REGISTRY_TOKEN`.
pub const ENV_REGISTRY: &str = "AGENTBOX_REGISTRY";

/// The credentials to use for `registry` (`host[:port]`, as named in the reference or a mirror).
pub fn resolve(
    config: &ImageConfig,
    registry: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RegistryAuth, AuthError> {
    if let Some(c) = config.credentials.get(registry) {
        return Ok(to_auth(c));
    }
    if let Some(c) = from_env(registry, env) {
        return Ok(to_auth(&c));
    }
    let path = match &config.docker_config {
        Some(p) => Some(p.clone()),
        None => default_docker_config(env),
    };
    if let Some(path) = path {
        if path.exists() {
            if let Some(c) = from_docker_config(&path, registry)? {
                return Ok(to_auth(&c));
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

fn to_auth(c: &Credential) -> RegistryAuth {
    match c {
        Credential::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
        Credential::Token { token } => RegistryAuth::Bearer(token.clone()),
    }
}

fn from_env(registry: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Credential> {
    let scoped = env(ENV_REGISTRY)?;
    if !same_registry(&scoped, registry) {
        return None;
    }
    if let Some(token) = env("AGENTBOX_REGISTRY_TOKEN") {
        return Some(Credential::Token { token });
    }
    Some(Credential::Basic {
        username: env("AGENTBOX_REGISTRY_USERNAME")?,
        password: env("AGENTBOX_REGISTRY_PASSWORD")?,
    })
}

fn default_docker_config(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = env("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    env("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Reads the entry for `registry` from a docker `config.json` (`auths`; `credsStore` and `credHelpers` are
/// not run: they would execute programs named by the file).
pub fn from_docker_config(path: &Path, registry: &str) -> Result<Option<Credential>, AuthError> {
    let err = |reason: String| AuthError::DockerConfig { path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    let Some(entry) = config.auths.iter().find(|(k, _)| same_registry(k, registry)).map(|(_, v)| v) else {
        return Ok(None);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(Credential::Token { token: token.clone() }));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credential::Basic { username: username.clone(), password: password.clone() }));
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| err(format!("the `auth` of {registry} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded).map_err(|_| err(format!("the `auth` of {registry} is not UTF-8")))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(err(format!("the `auth` of {registry} is not USER:PASSWORD")));
        };
        return Ok(Some(Credential::Basic { username: username.into(), password: password.into() }));
    }
    Ok(None)
}

/// Whether a key of docker's `auths` (or `AGENTBOX_REGISTRY`) names `registry`: keys may be URLs
/// (`https://index.docker.io/v1/`), and Docker Hub has several names.
fn same_registry(key: &str, registry: &str) -> bool {
    let key = key.trim_start_matches("https://").trim_start_matches("http://");
    let key = key.split('/').next().unwrap_or(key);
    let hub = |r: &str| matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    key == registry || (hub(key) && hub(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn docker_config_auth_is_decoded_and_scoped() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"ghcr.io":{{"registrytoken":"T"}}}},"credsStore":"desktop"}}"#
            ),
        )?;
        let config = ImageConfig { docker_config: Some(path), ..ImageConfig::in_dir(dir.path()) };
        assert_eq!(resolve(&config, "docker.io", &no_env)?, RegistryAuth::Basic("alice".into(), "s3cret".into()));
        assert_eq!(resolve(&config, "ghcr.io", &no_env)?, RegistryAuth::Bearer("T".into()));
        assert_eq!(resolve(&config, "quay.io", &no_env)?, RegistryAuth::Anonymous);
        Ok(())
    }

    #[test]
    fn config_then_env_then_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut config =
            ImageConfig { docker_config: Some(dir.path().join("absent.json")), ..ImageConfig::in_dir(dir.path()) };
        let env = |k: &str| match k {
            "AGENTBOX_REGISTRY" => Some("localhost:5000".to_owned()),
            "AGENTBOX_REGISTRY_USERNAME" => Some("bob".to_owned()),
            "AGENTBOX_REGISTRY_PASSWORD" => Some("pw".to_owned()),
            _ => None,
        };
        assert_eq!(resolve(&config, "localhost:5000", &env)?, RegistryAuth::Basic("bob".into(), "pw".into()));
        // The environment's credentials are for the registry it names only.
        assert_eq!(resolve(&config, "ghcr.io", &env)?, RegistryAuth::Anonymous);
        config.credentials.insert("localhost:5000".into(), Credential::Token { token: "tok".into() });
        assert_eq!(resolve(&config, "localhost:5000", &env)?, RegistryAuth::Bearer("tok".into()));
        Ok(())
    }

    #[test]
    fn unreadable_docker_config_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json")?;
        let config = ImageConfig { docker_config: Some(path), ..ImageConfig::in_dir(dir.path()) };
        assert!(matches!(resolve(&config, "docker.io", &no_env), Err(AuthError::DockerConfig { .. })));
        Ok(())
    }
}
