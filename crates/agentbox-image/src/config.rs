//! The image store's configuration: where it lives, how big it may grow, which registries it may reach over
//! plain http, mirrors, credentials, retries and unpack limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the image store and its puller need. Serializes as TOML/JSON (`deny_unknown_fields`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// The store's directory (created 0700). Default `/var/lib/agentbox/images`.
    pub dir: PathBuf,
    /// Garbage collection keeps the store under this many bytes (blobs plus unpacked layers), evicting
    /// unreferenced data first, then the least recently used images. `None`: no budget, only unreferenced data
    /// is collected.
    pub budget_bytes: Option<u64>,
    /// Registries (`host` or `host:port`) reached over plain http. Loopback registries (`localhost`,
    /// 127.0.0.0/8, `[::1]`) always may be; every other registry is https only.
    pub insecure_registries: Vec<String>,
    /// Mirrors per registry, tried in order before the registry itself: `{"docker.io" = ["mirror:5000"]}`.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Credentials per registry host. Looked up before the environment and docker's config.json.
    pub credentials: BTreeMap<String, Credential>,
    /// docker's `config.json` to read credentials from. `None`: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`, when it exists.
    pub docker_config: Option<PathBuf>,
    /// The platform picked from a multi-platform index. Default: the host's (`linux/amd64`, `linux/arm64`).
    pub platform: Platform,
    /// Retries of registry requests that failed in a way that may pass (connection errors, 5xx, 429).
    pub retry: RetryConfig,
    /// Bounds on what unpacking an image may produce.
    pub limits: UnpackLimits,
    /// Layers pulled and unpacked at the same time.
    pub concurrency: usize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/agentbox/images"),
            budget_bytes: None,
            insecure_registries: Vec::new(),
            mirrors: BTreeMap::new(),
            credentials: BTreeMap::new(),
            docker_config: None,
            platform: Platform::host(),
            retry: RetryConfig::default(),
            limits: UnpackLimits::default(),
            concurrency: 3,
        }
    }
}

impl ImageConfig {
    /// The default configuration with the store in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), ..Self::default() }
    }
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, untagged)]
pub enum Credential {
    /// A user name and password (or personal access token): used for HTTP basic auth, or to obtain a bearer
    /// token from the registry's token service.
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
    /// A bearer token sent as is.
    Token {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Token { .. } => write!(f, "Token(<redacted>)"),
        }
    }
}

/// An OCI platform (`os/architecture[/variant]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ... (OCI's names, Go's GOARCH).
    pub architecture: String,
    /// `v8` for arm64, `v7` for arm; `None` accepts any.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Self { os: "linux".into(), architecture: architecture.into(), variant: None }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Retries with exponential backoff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; doubled for each next one.
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { attempts: 4, initial_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(4) }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Bounds on one image's unpacking: a decompression bomb stops at the first bound it crosses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnpackLimits {
    /// Uncompressed bytes (the tar streams, headers included, and sparse files as written) of all layers of
    /// one image together. Default 16 GiB. It also bounds the compressed sizes a manifest may declare.
    pub max_bytes: u64,
    /// Tar entries of all layers of one image together. Default 1,000,000.
    pub max_entries: u64,
    /// The largest manifest, index or config blob accepted. Default 4 MiB.
    pub max_metadata_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self { max_bytes: 16 << 30, max_entries: 1_000_000, max_metadata_bytes: 4 << 20 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml_and_refuses_unknown_fields() {
        let text = r#"
            dir = "/srv/images"
            budget_bytes = 10000000000
            insecure_registries = ["registry.lan:5000"]
            concurrency = 2

            [mirrors]
            "docker.io" = ["mirror.lan:5000"]

            [credentials."ghcr.io"]
            token = "t"

            [credentials."registry.lan:5000"]
            username = "u"
            password = "p"

            [retry]
            attempts = 2
            initial_backoff = 100
            max_backoff = 1000

            [limits]
            max_bytes = 1000
        "#;
        let c: ImageConfig = toml::from_str(text).expect("valid config");
        assert_eq!(c.budget_bytes, Some(10_000_000_000));
        assert_eq!(c.mirrors["docker.io"], vec!["mirror.lan:5000".to_owned()]);
        assert_eq!(c.credentials["ghcr.io"], Credential::Token { token: "t".into() });
        assert_eq!(
            c.credentials["registry.lan:5000"],
            Credential::Basic { username: "u".into(), password: "p".into() }
        );
        assert_eq!(c.retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(c.limits.max_bytes, 1000);
        assert_eq!(c.limits.max_entries, UnpackLimits::default().max_entries);
        let again: ImageConfig = toml::from_str(&toml::to_string(&c).expect("serializes")).expect("parses back");
        assert_eq!(again, c);
        assert!(toml::from_str::<ImageConfig>("dir = \"/x\"\nbudget = 1").is_err());
        // Secrets never show in debug output.
        let shown = format!("{:?}", c.credentials);
        assert!(
            shown.contains("<redacted>") && !shown.contains("password: \"p\"") && !shown.contains("\"t\""),
            "{shown}"
        );
    }
}
