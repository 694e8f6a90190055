//! How to reach E2B: credentials, URLs, templates, time limits and retries.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use agentbox_config::Preset;
use reqwest::Url;

/// The port of envd, the daemon inside every E2B sandbox.
pub const ENVD_PORT: u16 = 49983;
/// The port of the code interpreter server in code-interpreter templates.
pub const CODE_INTERPRETER_PORT: u16 = 49999;
/// E2B's public cloud domain.
pub const DEFAULT_DOMAIN: &str = "e2b.app";
/// E2B's public code interpreter template, the default for every preset.
pub const DEFAULT_TEMPLATE: &str = "code-interpreter-v1";
/// The sandbox URL template used when none is configured.
pub const DEFAULT_SANDBOX_URL: &str = "https://{port}-{sandbox_id}.{domain}";

/// A problem with the E2B configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No API key was given.
    #[error(
        "E2B_API_KEY is not set: create an API key in the E2B dashboard (or on your self-hosted E2B) and export \
         E2B_API_KEY=e2b_...; set E2B_DOMAIN or E2B_API_URL too for a self-hosted E2B"
    )]
    MissingApiKey,
    /// A setting has a value that can't be used.
    #[error("{name}={value:?} is invalid: {expected}")]
    InvalidValue {
        /// The setting (environment variable or field).
        name: String,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// An API key; its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the `X-API-Key` header.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("ApiKey(<empty>)") } else { f.write_str("ApiKey(<redacted>)") }
    }
}

/// Which E2B template each preset runs, and which templates serve the code interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateMap {
    /// The template of a sandbox without a preset, and of presets missing from `presets`.
    pub default: String,
    /// Per-preset templates (an E2B template fixes CPU, memory and disk, so a preset maps to a template built with
    /// its sizes).
    pub presets: BTreeMap<Preset, String>,
    /// Templates that run E2B's code interpreter on port 49999; `run_code` goes to it there, and through the process
    /// API everywhere else.
    pub code_interpreter: BTreeSet<String>,
}

impl Default for TemplateMap {
    fn default() -> Self {
        Self {
            default: DEFAULT_TEMPLATE.to_owned(),
            presets: BTreeMap::new(),
            code_interpreter: ["code-interpreter-v1", "code-interpreter", "code-interpreter-beta"]
                .map(str::to_owned)
                .into(),
        }
    }
}

impl TemplateMap {
    /// The template for a preset name (as stored in a create request's `preset` metadata).
    #[must_use]
    pub fn for_preset(&self, preset: Option<&str>) -> &str {
        preset
            .and_then(|p| p.parse::<Preset>().ok())
            .and_then(|p| self.presets.get(&p))
            .map_or(&self.default, String::as_str)
    }

    /// Whether a template serves the code interpreter.
    #[must_use]
    pub fn has_code_interpreter(&self, template: &str) -> bool {
        self.code_interpreter.contains(template)
    }
}

/// Time limits of the HTTP calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// One request and its whole response, for calls that are not streams.
    pub request: Duration,
    /// Creating a sandbox (E2B boots a VM).
    pub create: Duration,
    /// Longest silence on an output stream before it counts as broken (envd sends keep-alives meanwhile).
    pub stream_idle: Duration,
    /// How often envd is asked to send keep-alive events on quiet streams.
    pub keepalive_ping: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
            create: Duration::from_secs(120),
            stream_idle: Duration::from_secs(150),
            keepalive_ping: Duration::from_secs(50),
        }
    }
}

/// How failed calls are retried: idempotent calls (and sandbox creation) on 429, transient 5xx and connection
/// failures, with exponential backoff and jitter, honouring `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Pause before the first retry; it doubles each time.
    pub initial_backoff: Duration,
    /// Longest pause between two attempts.
    pub max_backoff: Duration,
    /// Longest `Retry-After` that is waited out; a longer one fails the call at once with the wait in its message.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (0 for the first retry), before jitter.
    #[must_use]
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(16));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Everything the E2B backend needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bConfig {
    /// The team's API key (`X-API-Key`).
    pub api_key: ApiKey,
    /// The E2B domain: `e2b.app` for E2B's cloud, your own for a self-hosted E2B.
    pub domain: String,
    /// The control-plane URL; `https://api.{domain}` when absent.
    pub api_url: Option<String>,
    /// The sandbox URL template with `{port}`, `{sandbox_id}` and `{domain}`; [`DEFAULT_SANDBOX_URL`] when absent.
    /// A template without `{sandbox_id}` (e.g. `https://sandbox.{domain}` or `http://127.0.0.1:3002`) routes
    /// through the `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers instead of the host name.
    pub sandbox_url: Option<String>,
    /// Templates per preset.
    pub templates: TemplateMap,
    /// The user commands and files run as (`user` in E2B's templates).
    pub user: String,
    /// Ask E2B for an envd access token, so only holders of it reach the sandbox's daemon.
    pub secure: bool,
    /// Let E2B pause sandboxes at their timeout instead of killing them.
    pub auto_pause: bool,
    /// Longest sandbox lifetime E2B accepts for the team (1 hour on the Hobby tier, 24 on Pro); keep-alives never
    /// ask for more.
    pub max_sandbox_timeout: Duration,
    /// HTTP time limits.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryPolicy,
}

impl E2bConfig {
    /// A configuration for E2B's cloud with this key and every default.
    #[must_use]
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: ApiKey::new(api_key),
            domain: DEFAULT_DOMAIN.to_owned(),
            api_url: None,
            sandbox_url: None,
            templates: TemplateMap::default(),
            user: "user".to_owned(),
            secure: true,
            auto_pause: false,
            max_sandbox_timeout: Duration::from_secs(3600),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// Reads the configuration from the process environment (see [`from_lookup`](Self::from_lookup)).
    ///
    /// # Errors
    /// [`ConfigError`] for a missing API key or an unusable value.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (an environment).
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `E2B_API_KEY` | API key (required) | |
    /// | `E2B_DOMAIN` | domain | `e2b.app` |
    /// | `E2B_API_URL` | control-plane URL | `https://api.{domain}` |
    /// | `E2B_SANDBOX_URL` | sandbox URL template | `https://{port}-{sandbox_id}.{domain}` |
    /// | `E2B_TEMPLATE` | template of sandboxes without a preset's own | `code-interpreter-v1` |
    /// | `E2B_TEMPLATE_DEFAULT`, `_LIGHTWEIGHT`, `_HEAVY_COMPUTE`, `_BROWSER` | per-preset templates | `E2B_TEMPLATE` |
    /// | `E2B_CODE_INTERPRETER_TEMPLATES` | comma-separated templates serving the code interpreter | the code-interpreter templates |
    /// | `E2B_USER` | user of commands and files | `user` |
    /// | `E2B_SECURE` | ask for an envd access token | `true` |
    /// | `E2B_AUTO_PAUSE` | pause instead of kill at timeout | `false` |
    /// | `E2B_MAX_SANDBOX_TIMEOUT` | longest lifetime asked for | `1h` |
    /// | `E2B_CONNECT_TIMEOUT`, `E2B_REQUEST_TIMEOUT`, `E2B_CREATE_TIMEOUT`, `E2B_STREAM_IDLE_TIMEOUT` | time limits | 10s, 60s, 120s, 150s |
    /// | `E2B_MAX_ATTEMPTS` | attempts per retryable call | `4` |
    ///
    /// Durations take humantime forms (`90s`, `5m`) or plain seconds.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing API key or an unusable value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let key = get("E2B_API_KEY").ok_or(ConfigError::MissingApiKey)?;
        let mut c = Self::new(key);
        if let Some(d) = get("E2B_DOMAIN") {
            c.domain = d;
        }
        c.api_url = get("E2B_API_URL");
        c.sandbox_url = get("E2B_SANDBOX_URL");
        if let Some(t) = get("E2B_TEMPLATE") {
            c.templates.default = t;
        }
        for preset in Preset::ALL {
            let name = format!("E2B_TEMPLATE_{}", preset.name().to_ascii_uppercase());
            if let Some(t) = get(&name) {
                c.templates.presets.insert(preset, t);
            }
        }
        if let Some(list) = get("E2B_CODE_INTERPRETER_TEMPLATES") {
            c.templates.code_interpreter =
                list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        if let Some(u) = get("E2B_USER") {
            c.user = u;
        }
        if let Some(v) = get("E2B_SECURE") {
            c.secure = parse_bool("E2B_SECURE", &v)?;
        }
        if let Some(v) = get("E2B_AUTO_PAUSE") {
            c.auto_pause = parse_bool("E2B_AUTO_PAUSE", &v)?;
        }
        let duration = |name: &str, slot: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = get(name) {
                *slot = parse_duration(name, &v)?;
            }
            Ok(())
        };
        duration("E2B_MAX_SANDBOX_TIMEOUT", &mut c.max_sandbox_timeout)?;
        duration("E2B_CONNECT_TIMEOUT", &mut c.timeouts.connect)?;
        duration("E2B_REQUEST_TIMEOUT", &mut c.timeouts.request)?;
        duration("E2B_CREATE_TIMEOUT", &mut c.timeouts.create)?;
        duration("E2B_STREAM_IDLE_TIMEOUT", &mut c.timeouts.stream_idle)?;
        if let Some(v) = get("E2B_MAX_ATTEMPTS") {
            c.retry.max_attempts =
                v.parse().ok().filter(|n| (1..=20).contains(n)).ok_or_else(|| ConfigError::InvalidValue {
                    name: "E2B_MAX_ATTEMPTS".into(),
                    value: v.clone(),
                    expected: "a whole number from 1 to 20".into(),
                })?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first unusable value, with what is accepted.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, value: &str, expected: &str| ConfigError::InvalidValue {
            name: name.into(),
            value: value.into(),
            expected: expected.into(),
        };
        if self.api_key.expose().is_empty() {
            return Err(ConfigError::MissingApiKey);
        }
        if self.api_key.expose().chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid("E2B_API_KEY", "<redacted>", "a key without spaces or control characters"));
        }
        let domain_ok = !self.domain.is_empty()
            && self
                .domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            || self.domain.parse::<std::net::IpAddr>().is_ok()
            || split_host_port(&self.domain).is_some();
        if !domain_ok {
            return Err(invalid("E2B_DOMAIN", &self.domain, "a domain name such as e2b.app (optionally with :port)"));
        }
        self.api_base()?;
        self.sandbox_base("probe", ENVD_PORT, None)?;
        if let Some(t) = self.sandbox_url.as_deref() {
            if !t.contains("{port}") && t.contains("{sandbox_id}") {
                return Err(invalid("E2B_SANDBOX_URL", t, "a template with {port} wherever it has {sandbox_id}"));
            }
        }
        let template_ok = |t: &str| {
            !t.is_empty() && t.len() <= 128 && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
        };
        for t in std::iter::once(&self.templates.default).chain(self.templates.presets.values()) {
            if !template_ok(t) {
                return Err(invalid(
                    "E2B_TEMPLATE",
                    t,
                    "a template id or name of letters, digits, '-', '_', '.', '/' or ':'",
                ));
            }
        }
        if self.user.is_empty() || !self.user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(invalid("E2B_USER", &self.user, "a user name such as user or root"));
        }
        if self.max_sandbox_timeout < Duration::from_secs(60)
            || self.max_sandbox_timeout > Duration::from_secs(30 * 86_400)
        {
            return Err(invalid(
                "E2B_MAX_SANDBOX_TIMEOUT",
                &format!("{:?}", self.max_sandbox_timeout),
                "between 1 minute and 30 days",
            ));
        }
        for (name, d) in [
            ("E2B_CONNECT_TIMEOUT", self.timeouts.connect),
            ("E2B_REQUEST_TIMEOUT", self.timeouts.request),
            ("E2B_CREATE_TIMEOUT", self.timeouts.create),
            ("E2B_STREAM_IDLE_TIMEOUT", self.timeouts.stream_idle),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
                return Err(invalid(name, &format!("{d:?}"), "between 100 ms and 1 day"));
            }
        }
        if self.timeouts.stream_idle <= self.timeouts.keepalive_ping {
            return Err(invalid(
                "E2B_STREAM_IDLE_TIMEOUT",
                &format!("{:?}", self.timeouts.stream_idle),
                &format!("longer than the keep-alive interval ({:?})", self.timeouts.keepalive_ping),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("E2B_MAX_ATTEMPTS", "0", "at least 1"));
        }
        Ok(())
    }

    /// The control-plane base URL.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] for `E2B_API_URL`, saying why the URL is unusable.
    pub fn api_base(&self) -> Result<Url, ConfigError> {
        let raw = self.api_url.clone().unwrap_or_else(|| format!("https://api.{}", self.domain));
        parse_http_url(&raw).map_err(|reason| invalid_value("E2B_API_URL", &raw, &reason))
    }

    /// The base URL of a port of a sandbox, for the sandbox's own domain (E2B may return one per sandbox) or the
    /// configured one.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] for `E2B_SANDBOX_URL`, saying why the URL is unusable.
    pub fn sandbox_base(&self, sandbox_id: &str, port: u16, domain: Option<&str>) -> Result<Url, ConfigError> {
        let template = self.sandbox_url.as_deref().unwrap_or(DEFAULT_SANDBOX_URL);
        let raw = template
            .replace("{port}", &port.to_string())
            .replace("{sandbox_id}", sandbox_id)
            .replace("{domain}", domain.unwrap_or(&self.domain));
        parse_http_url(&raw).map_err(|reason| invalid_value("E2B_SANDBOX_URL", template, &reason))
    }

    /// Whether sandboxes are addressed with routing headers rather than by host name.
    #[must_use]
    pub fn routes_by_header(&self) -> bool {
        self.sandbox_url.as_deref().is_some_and(|t| !t.contains("{sandbox_id}"))
    }
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    Some((host, port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
}

fn invalid_value(name: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue { name: name.into(), value: value.into(), expected: expected.into() }
}

fn parse_http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("the scheme must be http or https, got {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".into());
    }
    Ok(url)
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::InvalidValue { name: name.into(), value: v.into(), expected: "true or false".into() }),
    }
}

fn parse_duration(name: &str, v: &str) -> Result<Duration, ConfigError> {
    if let Ok(secs) = u64::from_str(v) {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| ConfigError::InvalidValue {
        name: name.into(),
        value: v.into(),
        expected: format!("a duration such as 90s or 5m ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<E2bConfig, ConfigError> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        E2bConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_target_the_e2b_cloud() {
        let c = load(&[("E2B_API_KEY", "e2b_123")]).unwrap();
        assert_eq!(c.api_base().unwrap().as_str(), "https://api.e2b.app/");
        assert_eq!(c.sandbox_base("iabc", ENVD_PORT, None).unwrap().as_str(), "https://49983-iabc.e2b.app/");
        assert_eq!(
            c.sandbox_base("iabc", ENVD_PORT, Some("eu.e2b.dev")).unwrap().as_str(),
            "https://49983-iabc.eu.e2b.dev/"
        );
        assert!(!c.routes_by_header());
        assert_eq!(c.templates.for_preset(Some("heavy_compute")), "code-interpreter-v1");
        assert!(c.templates.has_code_interpreter("code-interpreter-v1"));
        assert!(c.secure);
        assert_eq!(format!("{:?}", c.api_key), "ApiKey(<redacted>)");
    }

    #[test]
    fn self_hosted_overrides() {
        let c = load(&[
            ("E2B_API_KEY", "k"),
            ("E2B_DOMAIN", "e2b.example.com"),
            ("E2B_SANDBOX_URL", "http://127.0.0.1:3002"),
            ("E2B_TEMPLATE", "base"),
            ("E2B_TEMPLATE_HEAVY_COMPUTE", "big-4cpu"),
            ("E2B_CODE_INTERPRETER_TEMPLATES", "ci-a, ci-b"),
            ("E2B_REQUEST_TIMEOUT", "90s"),
            ("E2B_CONNECT_TIMEOUT", "3"),
            ("E2B_MAX_ATTEMPTS", "2"),
            ("E2B_SECURE", "false"),
        ])
        .unwrap();
        assert_eq!(c.api_base().unwrap().as_str(), "https://api.e2b.example.com/");
        assert_eq!(c.sandbox_base("iabc", ENVD_PORT, None).unwrap().as_str(), "http://127.0.0.1:3002/");
        assert!(c.routes_by_header());
        assert_eq!(c.templates.for_preset(Some("heavy_compute")), "big-4cpu");
        assert_eq!(c.templates.for_preset(Some("browser")), "base");
        assert_eq!(c.templates.for_preset(None), "base");
        assert_eq!(c.templates.code_interpreter, BTreeSet::from(["ci-a".to_owned(), "ci-b".to_owned()]));
        assert_eq!(c.timeouts.request, Duration::from_secs(90));
        assert_eq!(c.timeouts.connect, Duration::from_secs(3));
        assert_eq!(c.retry.max_attempts, 2);
        assert!(!c.secure);
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(load(&[]).unwrap_err(), ConfigError::MissingApiKey);
        assert!(load(&[]).unwrap_err().to_string().contains("export E2B_API_KEY"));
        let e = load(&[("E2B_API_KEY", "k"), ("E2B_API_URL", "ftp://x")]).unwrap_err();
        assert!(e.to_string().contains("E2B_API_URL") && e.to_string().contains("http or https"), "{e}");
        let e = load(&[("E2B_API_KEY", "k"), ("E2B_SANDBOX_URL", "https://{sandbox_id}.x")]).unwrap_err();
        assert!(e.to_string().contains("{port}"), "{e}");
        let e = load(&[("E2B_API_KEY", "k"), ("E2B_REQUEST_TIMEOUT", "soon")]).unwrap_err();
        assert!(e.to_string().contains("E2B_REQUEST_TIMEOUT"), "{e}");
        let e = load(&[("E2B_API_KEY", "k"), ("E2B_SECURE", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
        let e = load(&[("E2B_API_KEY", "k"), ("E2B_MAX_ATTEMPTS", "0")]).unwrap_err();
        assert!(e.to_string().contains("1 to 20"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0), Duration::from_millis(250));
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(10), Duration::from_secs(8));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(8));
    }
}
