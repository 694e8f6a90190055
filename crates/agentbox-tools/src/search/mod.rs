//! Web search over Tavily, Serper and SearXNG: providers tried in order with fallback on
//! error, timeout or 429; normalized results; a TTL cache; per-provider rate limits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentbox_tools::search::SearchError> {
//! use agentbox_tools::search::{SearchConfig, SearchRequest, WebSearch};
//! let search = WebSearch::new(SearchConfig::from_env())?;
//! let answer = search.search(&SearchRequest::new("rust async runtimes")).await?;
//! for r in &answer.results {
//!     println!("{} <{}>", r.title, r.url);
//! }
//! # Ok(()) }
//! ```

mod providers;
mod tool;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use tool::WebSearchTool;

/// A search provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Tavily (`POST /search`, Bearer key).
    Tavily,
    /// Serper, Google results (`POST /search`, `X-API-KEY`).
    Serper,
    /// A SearXNG instance (`GET /search?format=json`).
    Searxng,
}

impl ProviderKind {
    /// Every provider, in the default order.
    pub const ALL: [Self; 3] = [Self::Tavily, Self::Serper, Self::Searxng];

    /// Its name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tavily => "tavily",
            Self::Serper => "serper",
            Self::Searxng => "searxng",
        }
    }

    /// The settings that configure it.
    #[must_use]
    pub fn settings(self) -> &'static str {
        match self {
            Self::Tavily => "TAVILY_API_KEY (and AGENTBOX_TAVILY_URL for a proxy)",
            Self::Serper => "SERPER_API_KEY (and AGENTBOX_SERPER_URL for a proxy)",
            Self::Searxng => "SEARXNG_URL",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = SearchError;
    fn from_str(s: &str) -> Result<Self, SearchError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tavily" => Ok(Self::Tavily),
            "serper" => Ok(Self::Serper),
            "searxng" | "searx" => Ok(Self::Searxng),
            _ => Err(SearchError::InvalidRequest(format!(
                "unknown search provider {s:?} (expected tavily, serper or searxng)"
            ))),
        }
    }
}

/// One configured provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Which provider.
    pub kind: ProviderKind,
    /// Base URL: `https://api.tavily.com`, `https://google.serper.dev`, or the SearXNG instance.
    pub base_url: String,
    /// API key (Tavily, Serper).
    pub api_key: Option<String>,
    /// Requests allowed per minute, enforced locally; a provider at its limit is skipped.
    pub requests_per_minute: u32,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

impl ProviderConfig {
    /// Tavily with `api_key` at its public URL.
    #[must_use]
    pub fn tavily(api_key: impl Into<String>) -> Self {
        Self {
            kind: ProviderKind::Tavily,
            base_url: "https://api.tavily.com".into(),
            api_key: Some(api_key.into()),
            requests_per_minute: 60,
        }
    }

    /// Serper with `api_key` at its public URL.
    #[must_use]
    pub fn serper(api_key: impl Into<String>) -> Self {
        Self {
            kind: ProviderKind::Serper,
            base_url: "https://google.serper.dev".into(),
            api_key: Some(api_key.into()),
            requests_per_minute: 60,
        }
    }

    /// A SearXNG instance at `base_url`.
    #[must_use]
    pub fn searxng(base_url: impl Into<String>) -> Self {
        Self { kind: ProviderKind::Searxng, base_url: base_url.into(), api_key: None, requests_per_minute: 60 }
    }

    /// Replaces the base URL.
    #[must_use]
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Replaces the rate limit.
    #[must_use]
    pub fn with_rate_limit(mut self, requests_per_minute: u32) -> Self {
        self.requests_per_minute = requests_per_minute;
        self
    }
}

/// How web search is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchConfig {
    /// Providers, tried in this order.
    pub providers: Vec<ProviderConfig>,
    /// Time limit of one provider request.
    pub timeout: Duration,
    /// How long a response is served from the cache.
    pub cache_ttl: Duration,
    /// Responses kept in the cache.
    pub cache_capacity: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            timeout: Duration::from_secs(15),
            cache_ttl: Duration::from_secs(600),
            cache_capacity: 1000,
        }
    }
}

impl SearchConfig {
    /// Providers from the process environment: `TAVILY_API_KEY`, `SERPER_API_KEY`, `SEARXNG_URL`,
    /// with `AGENTBOX_TAVILY_URL` and `AGENTBOX_SERPER_URL` overriding base URLs; tried in that order.
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `get`.
    #[must_use]
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut providers = Vec::new();
        if let Some(key) = get("TAVILY_API_KEY") {
            let mut p = ProviderConfig::tavily(key);
            if let Some(url) = get("AGENTBOX_TAVILY_URL") {
                p.base_url = url;
            }
            providers.push(p);
        }
        if let Some(key) = get("SERPER_API_KEY") {
            let mut p = ProviderConfig::serper(key);
            if let Some(url) = get("AGENTBOX_SERPER_URL") {
                p.base_url = url;
            }
            providers.push(p);
        }
        if let Some(url) = get("SEARXNG_URL") {
            providers.push(ProviderConfig::searxng(url));
        }
        Self { providers, ..Self::default() }
    }

    /// Adds a provider at the end of the order.
    #[must_use]
    pub fn with_provider(mut self, provider: ProviderConfig) -> Self {
        self.providers.push(provider);
        self
    }
}

/// Search errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// No provider is configured.
    #[error(
        "web search is not configured: set TAVILY_API_KEY, SERPER_API_KEY or SEARXNG_URL \
         (AGENTBOX_TAVILY_URL and AGENTBOX_SERPER_URL override the base URLs)"
    )]
    NotConfigured,
    /// The request is invalid.
    #[error("invalid search request: {0}")]
    InvalidRequest(String),
    /// A provider was asked for that is not configured.
    #[error("search provider {0} is not configured: set {settings}", settings = .0.settings())]
    UnknownProvider(ProviderKind),
    /// Every provider is at its local rate limit.
    #[error("every search provider is at its rate limit; retry in {retry_after_secs}s")]
    RateLimited {
        /// Seconds until one provider has capacity again.
        retry_after_secs: u64,
    },
    /// Every provider failed; each failure is listed.
    #[error("web search failed: {}", .0.iter().map(|(k, e)| format!("{k}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<(ProviderKind, String)>),
}

/// How deep to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchDepth {
    /// Fast (default).
    #[default]
    Basic,
    /// Slower, better results where the provider supports it (Tavily).
    Advanced,
}

/// How recent results must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeRange {
    /// The last day.
    Day,
    /// The last week.
    Week,
    /// The last month.
    Month,
    /// The last year.
    Year,
}

impl TimeRange {
    fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// A search query and its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to search for.
    pub query: String,
    /// Results wanted, 1 to 20 (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_results: Option<u32>,
    /// basic (default) or advanced (Tavily only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<SearchDepth>,
    /// Only results from the last day, week, month or year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
    /// Only results from these domains (e.g. "docs.rs").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_domains: Vec<String>,
    /// No results from these domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_domains: Vec<String>,
    /// Use only this provider instead of the configured order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
}

impl SearchRequest {
    /// A query with default options.
    #[must_use]
    pub fn new(query: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            max_results: None,
            depth: None,
            time_range: None,
            include_domains: Vec::new(),
            exclude_domains: Vec::new(),
            provider: None,
        }
    }

    /// Results wanted.
    #[must_use]
    pub fn max_results(&self) -> u32 {
        self.max_results.unwrap_or(5)
    }

    fn validate(&self) -> Result<(), SearchError> {
        if self.query.trim().is_empty() {
            return Err(SearchError::InvalidRequest("the query is empty".into()));
        }
        if self.query.len() > 2000 {
            return Err(SearchError::InvalidRequest(format!(
                "the query is {} bytes; keep it under 2000",
                self.query.len()
            )));
        }
        if let Some(n) = self.max_results.filter(|n| !(1..=20).contains(n)) {
            return Err(SearchError::InvalidRequest(format!("max_results must be 1 to 20, got {n}")));
        }
        for d in self.include_domains.iter().chain(&self.exclude_domains) {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
            if !ok {
                return Err(SearchError::InvalidRequest(format!("{d:?} is not a domain name (write it like docs.rs)")));
            }
        }
        Ok(())
    }

    /// The cache key: the query with whitespace collapsed and case folded, and the options normalized.
    fn cache_key(&self) -> String {
        let norm = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|d| d.trim().to_ascii_lowercase()).collect();
            v.sort();
            v.dedup();
            v.join(",")
        };
        format!(
            "{}\u{1f}{}\u{1f}{:?}\u{1f}{:?}\u{1f}{}\u{1f}{}\u{1f}{:?}",
            self.query.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase(),
            self.max_results(),
            self.depth.unwrap_or_default(),
            self.time_range,
            norm(&self.include_domains),
            norm(&self.exclude_domains),
            self.provider,
        )
    }
}

/// One result, the same shape whichever provider found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchResult {
    /// Page title.
    pub title: String,
    /// Page URL.
    pub url: String,
    /// Text from the page about the query.
    pub snippet: String,
    /// Relevance score, where the provider gives one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// Publication date as the provider gives it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub published: Option<String>,
}

/// A search's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchResponse {
    /// The query.
    pub query: String,
    /// The provider that answered.
    pub provider: ProviderKind,
    /// The provider's direct answer, where it gives one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub answer: Option<String>,
    /// Results, best first.
    pub results: Vec<SearchResult>,
    /// Whether this came from the cache.
    pub cached: bool,
}

struct Provider {
    config: ProviderConfig,
    limiter: DefaultDirectRateLimiter,
}

/// The search client: providers in order, a cache and rate limits. Cheap to clone.
#[derive(Clone)]
pub struct WebSearch {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Vec<Provider>,
    http: reqwest::Client,
    cache: moka::future::Cache<String, SearchResponse>,
    timeout: Duration,
}

impl fmt::Debug for WebSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSearch").field("providers", &self.providers()).finish_non_exhaustive()
    }
}

impl WebSearch {
    /// A client for `config`. With no providers it is still built; searches then fail with [`SearchError::NotConfigured`].
    ///
    /// # Errors
    /// [`SearchError::InvalidRequest`] for a malformed base URL or a zero rate limit.
    pub fn new(config: SearchConfig) -> Result<Self, SearchError> {
        let mut providers = Vec::new();
        for p in config.providers {
            let url = reqwest::Url::parse(&p.base_url).map_err(|e| {
                SearchError::InvalidRequest(format!("{} base URL {:?} is invalid: {e}", p.kind, p.base_url))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(SearchError::InvalidRequest(format!(
                    "{} base URL {:?} must be http or https",
                    p.kind, p.base_url
                )));
            }
            if p.kind != ProviderKind::Searxng && p.api_key.as_deref().is_none_or(str::is_empty) {
                return Err(SearchError::InvalidRequest(format!(
                    "{} needs an API key: set {}",
                    p.kind,
                    p.kind.settings()
                )));
            }
            let per_minute = NonZeroU32::new(p.requests_per_minute).ok_or_else(|| {
                SearchError::InvalidRequest(format!("{} rate limit must be at least 1 request per minute", p.kind))
            })?;
            let limiter = RateLimiter::direct(Quota::per_minute(per_minute));
            providers.push(Provider { config: p, limiter });
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("agentbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SearchError::InvalidRequest(format!("cannot build the HTTP client: {e}")))?;
        let cache =
            moka::future::Cache::builder().max_capacity(config.cache_capacity).time_to_live(config.cache_ttl).build();
        Ok(Self { inner: Arc::new(Inner { providers, http, cache, timeout: config.timeout }) })
    }

    /// The configured providers, in order.
    #[must_use]
    pub fn providers(&self) -> Vec<ProviderKind> {
        self.inner.providers.iter().map(|p| p.config.kind).collect()
    }

    /// Whether any provider is configured.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        !self.inner.providers.is_empty()
    }

    /// Searches: from the cache when the same normalized request was answered within the TTL,
    /// otherwise through the providers in order, falling back on error, timeout, 429 or rate limit.
    ///
    /// # Errors
    /// [`SearchError::NotConfigured`] with no provider, [`SearchError::InvalidRequest`],
    /// [`SearchError::UnknownProvider`], [`SearchError::RateLimited`], or [`SearchError::AllFailed`] listing each failure.
    pub async fn search(&self, request: &SearchRequest) -> Result<SearchResponse, SearchError> {
        request.validate()?;
        if self.inner.providers.is_empty() {
            return Err(SearchError::NotConfigured);
        }
        let candidates: Vec<&Provider> = match request.provider {
            Some(kind) => {
                let found: Vec<&Provider> = self.inner.providers.iter().filter(|p| p.config.kind == kind).collect();
                if found.is_empty() {
                    return Err(SearchError::UnknownProvider(kind));
                }
                found
            }
            None => self.inner.providers.iter().collect(),
        };
        let key = request.cache_key();
        if let Some(mut hit) = self.inner.cache.get(&key).await {
            hit.cached = true;
            return Ok(hit);
        }
        let mut failures = Vec::new();
        let mut wait: Option<Duration> = None;
        for p in candidates {
            if let Err(not_until) = p.limiter.check() {
                let w = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                wait = Some(wait.map_or(w, |x: Duration| x.min(w)));
                tracing::debug!(provider = %p.config.kind, "search provider at its rate limit; trying the next");
                failures.push((
                    p.config.kind,
                    format!("at its rate limit of {} requests per minute", p.config.requests_per_minute),
                ));
                continue;
            }
            match providers::search(&self.inner.http, &p.config, request, self.inner.timeout).await {
                Ok((answer, mut results)) => {
                    providers::filter_domains(&mut results, request);
                    results.truncate(request.max_results() as usize);
                    let response = SearchResponse {
                        query: request.query.clone(),
                        provider: p.config.kind,
                        answer,
                        results,
                        cached: false,
                    };
                    self.inner.cache.insert(key, response.clone()).await;
                    return Ok(response);
                }
                Err(e) => {
                    tracing::warn!(provider = %p.config.kind, error = %e, "search provider failed; trying the next");
                    failures.push((p.config.kind, e));
                }
            }
        }
        if let Some(w) = wait.filter(|_| failures.iter().all(|(_, e)| e.starts_with("at its rate limit"))) {
            return Err(SearchError::RateLimited { retry_after_secs: w.as_secs().max(1) });
        }
        Err(SearchError::AllFailed(failures))
    }
}
