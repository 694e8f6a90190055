//! Web search against local fake providers that follow each provider's documented API,
//! auth headers included.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbox_tools::search::{
    ProviderConfig, ProviderKind, SearchConfig, SearchDepth, SearchError, SearchRequest, TimeRange, WebSearch,
};
use agentbox_tools::{ToolContext, ToolErrorKind, ToolRegistry};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// What a fake provider answers.
#[derive(Clone)]
enum Reply {
    /// The provider's normal answer for the query it was sent.
    Normal,
    /// A status with a JSON body.
    Status(u16, Value),
    /// Raw bytes with 200.
    Raw(&'static str),
    /// The normal answer, after a delay.
    Slow(Duration),
}

#[derive(Default)]
struct Seen {
    hits: usize,
    headers: Vec<HeaderMap>,
    bodies: Vec<Value>,
    queries: Vec<HashMap<String, String>>,
}

#[derive(Clone)]
struct Fake {
    kind: ProviderKind,
    key: &'static str,
    reply: Arc<Mutex<Reply>>,
    seen: Arc<Mutex<Seen>>,
    url: String,
}

impl Fake {
    async fn start(kind: ProviderKind, reply: Reply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Self { kind, key: "test-key-123", reply: Arc::new(Mutex::new(reply)), seen: Arc::default(), url };
        let app = match kind {
            ProviderKind::Tavily => Router::new().route("/search", post(tavily)),
            ProviderKind::Serper => Router::new().route("/search", post(serper)),
            ProviderKind::Searxng => Router::new().route("/search", get(searxng)),
        }
        .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    fn config(&self) -> ProviderConfig {
        match self.kind {
            ProviderKind::Tavily => ProviderConfig::tavily(self.key).with_base_url(&self.url),
            ProviderKind::Serper => ProviderConfig::serper(self.key).with_base_url(&self.url),
            ProviderKind::Searxng => ProviderConfig::searxng(&self.url),
        }
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().hits
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn last_body(&self) -> Value {
        self.seen.lock().unwrap().bodies.last().cloned().unwrap()
    }

    fn last_headers(&self) -> HeaderMap {
        self.seen.lock().unwrap().headers.last().cloned().unwrap()
    }

    fn last_query(&self) -> HashMap<String, String> {
        self.seen.lock().unwrap().queries.last().cloned().unwrap()
    }

    /// Records the request and answers it: `normal` builds the provider's documented response.
    async fn answer(&self, headers: HeaderMap, body: Value, query: HashMap<String, String>, normal: Value) -> Response {
        {
            let mut seen = self.seen.lock().unwrap();
            seen.hits += 1;
            seen.headers.push(headers);
            seen.bodies.push(body);
            seen.queries.push(query);
        }
        let reply = self.reply.lock().unwrap().clone();
        match reply {
            Reply::Normal => axum::Json(normal).into_response(),
            Reply::Slow(d) => {
                tokio::time::sleep(d).await;
                axum::Json(normal).into_response()
            }
            Reply::Status(code, body) => (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response(),
            Reply::Raw(text) => ([("content-type", "application/json")], text).into_response(),
        }
    }
}

fn not_json() -> Response {
    (StatusCode::BAD_REQUEST, "body is not JSON").into_response()
}

/// Tavily: POST /search, `Authorization: Bearer tvly-...`, JSON body; 401 with `{"detail": {"error": ...}}` otherwise.
async fn tavily(State(f): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return not_json() };
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {}", f.key)) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"detail": {"error": "Unauthorized: missing or invalid API key."}})),
        )
            .into_response();
    }
    let q = body["query"].as_str().unwrap_or_default().to_owned();
    let normal = json!({
        "query": q,
        "follow_up_questions": null,
        "answer": format!("Tavily's answer about {q}"),
        "images": [],
        "results": [
            {"title": "Tokio - docs.rs", "url": "https://docs.rs/tokio", "content": "An  event-driven,\n non-blocking I/O platform.", "score": 0.93, "raw_content": null, "favicon": "https://docs.rs/favicon.ico"},
            {"title": "Tokio news", "url": "https://tokio.rs/blog", "content": "Announcing a release.", "score": 0.71, "raw_content": null, "published_date": "Mon, 02 Nov 2026 10:00:00 GMT"},
            {"title": "no url entry", "content": "dropped", "score": 0.1}
        ],
        "response_time": 1.2,
        "request_id": "123e4567-e89b-12d3-a456-426614174111"
    });
    f.answer(headers, body, HashMap::new(), normal).await
}

/// Serper: POST /search with `X-API-KEY`, JSON body `{q, num, tbs}`; 403 `{"message": "Unauthorized.", "statusCode": 403}` otherwise.
async fn serper(State(f): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return not_json() };
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(f.key) {
        return (StatusCode::FORBIDDEN, axum::Json(json!({"message": "Unauthorized.", "statusCode": 403})))
            .into_response();
    }
    let q = body["q"].as_str().unwrap_or_default().to_owned();
    let normal = json!({
        "searchParameters": {"q": q, "type": "search", "engine": "google"},
        "answerBox": {"title": "Tokio", "answer": "A runtime for writing reliable asynchronous applications with Rust."},
        "knowledgeGraph": {"title": "Tokio", "description": "Rust library"},
        "organic": [
            {"title": "Tokio - An asynchronous Rust runtime", "link": "https://tokio.rs/", "snippet": "Tokio is an asynchronous runtime.", "position": 1},
            {"title": "tokio - Rust", "link": "https://docs.rs/tokio/latest/tokio/", "snippet": "A runtime for writing reliable network applications.", "date": "Oct 3, 2026", "position": 2},
            {"title": "r/rust on tokio", "link": "https://www.reddit.com/r/rust/tokio", "snippet": "Discussion.", "position": 3}
        ],
        "peopleAlsoAsk": [],
        "relatedSearches": [{"query": "tokio vs async-std"}],
        "credits": 1
    });
    f.answer(headers, body, HashMap::new(), normal).await
}

/// SearXNG: GET /search?q=...&format=json; 403 when a format is not enabled.
async fn searxng(State(f): State<Fake>, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if query.get("format").map(String::as_str) != Some("json") {
        return (StatusCode::FORBIDDEN, "403 Forbidden").into_response();
    }
    let q = query.get("q").cloned().unwrap_or_default();
    let normal = json!({
        "query": q,
        "number_of_results": 0,
        "results": [
            {"url": "https://tokio.rs/", "title": "Tokio", "content": "Build reliable network applications.", "engine": "duckduckgo", "engines": ["duckduckgo", "brave"], "positions": [1, 2], "score": 4.0, "category": "general", "publishedDate": null},
            {"url": "https://github.com/tokio-rs/tokio", "title": "tokio-rs/tokio", "content": "A runtime for Rust.", "engine": "brave", "engines": ["brave"], "positions": [3], "score": 0.5, "category": "general", "publishedDate": "2026-10-01T00:00:00"}
        ],
        "answers": [{"answer": "Tokio is an async runtime", "url": "https://tokio.rs/", "engine": "wikipedia"}],
        "corrections": [],
        "infoboxes": [],
        "suggestions": ["tokio rust"],
        "unresponsive_engines": []
    });
    f.answer(headers, Value::Null, query, normal).await
}

fn client(fakes: &[&Fake]) -> WebSearch {
    client_with(fakes, |_| {})
}

fn client_with(fakes: &[&Fake], tweak: impl FnOnce(&mut SearchConfig)) -> WebSearch {
    let mut config = SearchConfig { timeout: Duration::from_secs(10), ..SearchConfig::default() };
    config.providers = fakes.iter().map(|f| f.config()).collect();
    tweak(&mut config);
    WebSearch::new(config).unwrap()
}

#[tokio::test]
async fn tavily_gets_a_bearer_key_and_a_json_body_and_results_are_normalized() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let search = client(&[&t]);
    let request = SearchRequest {
        max_results: Some(3),
        depth: Some(SearchDepth::Advanced),
        time_range: Some(TimeRange::Week),
        include_domains: vec!["docs.rs".into(), "tokio.rs".into()],
        exclude_domains: vec!["reddit.com".into()],
        ..SearchRequest::new("tokio runtime")
    };
    let r = search.search(&request).await.unwrap();
    assert_eq!(t.last_headers()["authorization"], "Bearer test-key-123");
    assert_eq!(t.last_headers()["content-type"], "application/json");
    assert_eq!(
        t.last_body(),
        json!({
            "query": "tokio runtime", "search_depth": "advanced", "max_results": 3, "include_answer": true,
            "time_range": "week", "include_domains": ["docs.rs", "tokio.rs"], "exclude_domains": ["reddit.com"]
        })
    );
    assert_eq!(r.provider, ProviderKind::Tavily);
    assert_eq!(r.answer.as_deref(), Some("Tavily's answer about tokio runtime"));
    assert!(!r.cached);
    let v = serde_json::to_value(&r.results).unwrap();
    assert_eq!(
        v,
        json!([
            {"title": "Tokio - docs.rs", "url": "https://docs.rs/tokio", "snippet": "An event-driven, non-blocking I/O platform.", "score": 0.93},
            {"title": "Tokio news", "url": "https://tokio.rs/blog", "snippet": "Announcing a release.", "score": 0.71, "published": "Mon, 02 Nov 2026 10:00:00 GMT"}
        ]),
        "entries without a url are dropped"
    );
}

#[tokio::test]
async fn serper_gets_its_header_and_site_operators_and_domains_are_enforced() {
    let s = Fake::start(ProviderKind::Serper, Reply::Normal).await;
    let search = client(&[&s]);
    let request = SearchRequest {
        max_results: Some(10),
        time_range: Some(TimeRange::Month),
        exclude_domains: vec!["reddit.com".into()],
        ..SearchRequest::new("  tokio   runtime ")
    };
    let r = search.search(&request).await.unwrap();
    assert_eq!(s.last_headers()["x-api-key"], "test-key-123");
    assert!(s.last_headers().get("authorization").is_none());
    assert_eq!(s.last_body(), json!({"q": "tokio   runtime -site:reddit.com", "num": 10, "tbs": "qdr:m"}));
    assert_eq!(r.provider, ProviderKind::Serper);
    assert_eq!(r.answer.as_deref(), Some("A runtime for writing reliable asynchronous applications with Rust."));
    let urls: Vec<&str> = r.results.iter().map(|x| x.url.as_str()).collect();
    assert_eq!(
        urls,
        ["https://tokio.rs/", "https://docs.rs/tokio/latest/tokio/"],
        "reddit is excluded even if the engine returns it"
    );
    assert_eq!(r.results[1].published.as_deref(), Some("Oct 3, 2026"));
    assert_eq!(r.results[0].score, None);

    let only = SearchRequest { include_domains: vec!["docs.rs".into()], ..SearchRequest::new("tokio") };
    let r = search.search(&only).await.unwrap();
    assert_eq!(s.last_body()["q"], "tokio (site:docs.rs)");
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].url, "https://docs.rs/tokio/latest/tokio/");
}

#[tokio::test]
async fn searxng_is_queried_with_format_json_and_answers_are_read() {
    let x = Fake::start(ProviderKind::Searxng, Reply::Normal).await;
    let search = client(&[&x]);
    let request =
        SearchRequest { max_results: Some(1), time_range: Some(TimeRange::Day), ..SearchRequest::new("tokio") };
    let r = search.search(&request).await.unwrap();
    let q = x.last_query();
    assert_eq!((q["q"].as_str(), q["format"].as_str(), q["time_range"].as_str()), ("tokio", "json", "day"));
    assert_eq!(r.provider, ProviderKind::Searxng);
    assert_eq!(r.answer.as_deref(), Some("Tokio is an async runtime"));
    assert_eq!(r.results.len(), 1, "max_results is applied to SearXNG's fixed page");
    assert_eq!(r.results[0].score, Some(4.0));
    assert_eq!(r.results[0].published, None);

    let r = search.search(&SearchRequest::new("tokio rs")).await.unwrap();
    assert_eq!(r.results[1].published.as_deref(), Some("2026-10-01T00:00:00"));
}

#[tokio::test]
async fn providers_are_tried_in_order_with_fallback_on_errors_and_429() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Status(500, json!({"detail": {"error": "internal"}}))).await;
    let s = Fake::start(
        ProviderKind::Serper,
        Reply::Status(429, json!({"message": "Too many requests", "statusCode": 429})),
    )
    .await;
    let x = Fake::start(ProviderKind::Searxng, Reply::Normal).await;
    let search = client(&[&t, &s, &x]);
    let r = search.search(&SearchRequest::new("fallback")).await.unwrap();
    assert_eq!(r.provider, ProviderKind::Searxng);
    assert_eq!((t.hits(), s.hits(), x.hits()), (1, 1, 1));

    x.set(Reply::Status(503, json!({"error": "maintenance"})));
    let err = search.search(&SearchRequest::new("everything fails")).await.unwrap_err();
    let SearchError::AllFailed(failures) = &err else { panic!("{err:?}") };
    let order: Vec<ProviderKind> = failures.iter().map(|(k, _)| *k).collect();
    assert_eq!(order, [ProviderKind::Tavily, ProviderKind::Serper, ProviderKind::Searxng]);
    let msg = err.to_string();
    assert!(msg.contains("tavily: HTTP 500 Internal Server Error: internal"), "{msg}");
    assert!(
        msg.contains("serper: HTTP 429 Too Many Requests (rate limited by the provider): Too many requests"),
        "{msg}"
    );
    assert!(msg.contains("searxng: HTTP 503 Service Unavailable: maintenance"), "{msg}");

    // A provider asked for by name is the only one used.
    x.set(Reply::Normal);
    let r = search
        .search(&SearchRequest { provider: Some(ProviderKind::Searxng), ..SearchRequest::new("named") })
        .await
        .unwrap();
    assert_eq!(r.provider, ProviderKind::Searxng);
    assert_eq!((t.hits(), s.hits()), (2, 2));
}

#[tokio::test]
async fn a_repeated_query_is_served_from_the_cache_without_a_second_request() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let search = client(&[&t]);
    let first = search.search(&SearchRequest::new("Rust  Sandboxes")).await.unwrap();
    let again = search.search(&SearchRequest::new("  rust sandboxes ")).await.unwrap();
    assert_eq!(t.hits(), 1);
    assert!(again.cached);
    assert_eq!(again.results, first.results);
    // Other options are another entry.
    search.search(&SearchRequest { max_results: Some(2), ..SearchRequest::new("rust sandboxes") }).await.unwrap();
    assert_eq!(t.hits(), 2);
    // Domain order and case do not matter.
    let a = SearchRequest { include_domains: vec!["a.com".into(), "B.com".into()], ..SearchRequest::new("q") };
    let b = SearchRequest { include_domains: vec!["b.com".into(), "a.com".into()], ..SearchRequest::new("q") };
    search.search(&a).await.unwrap();
    assert!(search.search(&b).await.unwrap().cached);
    assert_eq!(t.hits(), 3);
}

#[tokio::test]
async fn cache_entries_expire_after_their_ttl() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let search = client_with(&[&t], |c| c.cache_ttl = Duration::from_millis(50));
    search.search(&SearchRequest::new("ttl")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!search.search(&SearchRequest::new("ttl")).await.unwrap().cached);
    assert_eq!(t.hits(), 2);
}

#[tokio::test]
async fn a_provider_at_its_rate_limit_is_skipped_and_a_lone_one_says_when_to_retry() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let s = Fake::start(ProviderKind::Serper, Reply::Normal).await;
    let config = SearchConfig { providers: vec![t.config().with_rate_limit(1), s.config()], ..SearchConfig::default() };
    let search = WebSearch::new(config).unwrap();
    assert_eq!(search.search(&SearchRequest::new("one")).await.unwrap().provider, ProviderKind::Tavily);
    assert_eq!(search.search(&SearchRequest::new("two")).await.unwrap().provider, ProviderKind::Serper);
    assert_eq!((t.hits(), s.hits()), (1, 1));

    let config = SearchConfig { providers: vec![t.config().with_rate_limit(1)], ..SearchConfig::default() };
    let lone = WebSearch::new(config).unwrap();
    lone.search(&SearchRequest::new("three")).await.unwrap();
    let err = lone.search(&SearchRequest::new("four")).await.unwrap_err();
    let SearchError::RateLimited { retry_after_secs } = err else { panic!("{err:?}") };
    assert!((1..=60).contains(&retry_after_secs));
    assert_eq!(t.hits(), 2, "the limited request never reached the provider");
}

#[tokio::test]
async fn a_slow_provider_times_out_and_the_next_one_answers() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Slow(Duration::from_secs(30))).await;
    let s = Fake::start(ProviderKind::Serper, Reply::Normal).await;
    // The limit is far below the slow provider's 30 s and far above what a loopback answer takes on a busy
    // machine, so the normal provider always answers within it.
    let search = client_with(&[&t, &s], |c| c.timeout = Duration::from_secs(2));
    let r = search.search(&SearchRequest::new("slow")).await.unwrap();
    assert_eq!(r.provider, ProviderKind::Serper);

    let lone = client_with(&[&t], |c| c.timeout = Duration::from_secs(2));
    let err = lone.search(&SearchRequest::new("slow again")).await.unwrap_err().to_string();
    assert_eq!(err, "web search failed: tavily: timed out after 2s");
}

#[tokio::test]
async fn malformed_and_partial_responses_give_clear_errors() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Raw(r#"{"query": "x", "results": [{"title": "cut"#)).await;
    let search = client(&[&t]);
    let err = search.search(&SearchRequest::new("truncated")).await.unwrap_err().to_string();
    assert!(err.starts_with("web search failed: tavily: returned a malformed response (EOF while parsing"), "{err}");
    assert!(err.contains(r#"first bytes: {"query": "x""#), "{err}");

    t.set(Reply::Raw(r#"{"query": "x", "answer": "no results field"}"#));
    let err = search.search(&SearchRequest::new("partial")).await.unwrap_err().to_string();
    assert!(err.contains("malformed response (missing field `results`"), "{err}");

    t.set(Reply::Raw("<html>gateway error</html>"));
    let err = search.search(&SearchRequest::new("html")).await.unwrap_err().to_string();
    assert!(err.contains("malformed response (expected value") && err.contains("<html>gateway error</html>"), "{err}");

    let s = Fake::start(ProviderKind::Serper, Reply::Raw(r#"{"organic": [{"title": "t", "link": 5}]}"#)).await;
    let err = client(&[&s]).search(&SearchRequest::new("bad type")).await.unwrap_err().to_string();
    assert!(
        err.contains("serper: returned a malformed response (invalid type: integer `5`, expected a string"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_keys_and_disabled_json_say_what_to_fix() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let s = Fake::start(ProviderKind::Serper, Reply::Normal).await;
    let config = SearchConfig {
        providers: vec![
            ProviderConfig::tavily("wrong").with_base_url(&t.url),
            ProviderConfig::serper("wrong").with_base_url(&s.url),
        ],
        ..SearchConfig::default()
    };
    let err = WebSearch::new(config).unwrap().search(&SearchRequest::new("q")).await.unwrap_err().to_string();
    assert!(
        err.contains("tavily: HTTP 401 Unauthorized (check TAVILY_API_KEY (and AGENTBOX_TAVILY_URL for a proxy)): Unauthorized: missing or invalid API key."),
        "{err}"
    );
    assert!(err.contains("serper: HTTP 403 Forbidden (check SERPER_API_KEY"), "{err}");

    let x = Fake::start(ProviderKind::Searxng, Reply::Status(403, json!("Forbidden"))).await;
    let err = client(&[&x]).search(&SearchRequest::new("q")).await.unwrap_err().to_string();
    assert!(err.contains("enable `json` under search.formats"), "{err}");
}

#[tokio::test]
async fn without_providers_the_error_names_the_settings_and_nothing_is_made_up() {
    let search = WebSearch::new(SearchConfig::default()).unwrap();
    let err = search.search(&SearchRequest::new("anything")).await.unwrap_err();
    assert_eq!(err, SearchError::NotConfigured);
    let msg = err.to_string();
    for setting in ["TAVILY_API_KEY", "SERPER_API_KEY", "SEARXNG_URL", "AGENTBOX_TAVILY_URL", "AGENTBOX_SERPER_URL"] {
        assert!(msg.contains(setting), "{msg}");
    }
    let registry = ToolRegistry::standard(search);
    let err = registry.call("web_search", &ToolContext::without_sandbox(), json!({"query": "x"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::NotConfigured);

    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let err = client(&[&t])
        .search(&SearchRequest { provider: Some(ProviderKind::Serper), ..SearchRequest::new("q") })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "search provider serper is not configured: set SERPER_API_KEY (and AGENTBOX_SERPER_URL for a proxy)"
    );
    assert_eq!(t.hits(), 0);
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_provider_is_asked() {
    let t = Fake::start(ProviderKind::Tavily, Reply::Normal).await;
    let search = client(&[&t]);
    for (req, want) in [
        (SearchRequest::new("   "), "the query is empty"),
        (SearchRequest { max_results: Some(0), ..SearchRequest::new("q") }, "max_results must be 1 to 20, got 0"),
        (
            SearchRequest { include_domains: vec!["https://x.com/".into()], ..SearchRequest::new("q") },
            "is not a domain name",
        ),
    ] {
        let err = search.search(&req).await.unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(t.hits(), 0);
}

#[test]
fn config_comes_from_the_environment_in_order_with_url_overrides() {
    let env: HashMap<&str, &str> = [
        ("SEARXNG_URL", "http://127.0.0.1:8888"),
        ("SERPER_API_KEY", "serper-key"),
        ("TAVILY_API_KEY", "tvly-key"),
        ("AGENTBOX_TAVILY_URL", "http://127.0.0.1:9000/tavily"),
    ]
    .into();
    let config = SearchConfig::from_lookup(|k| env.get(k).map(|v| (*v).to_owned()));
    let got: Vec<(ProviderKind, &str, Option<&str>)> =
        config.providers.iter().map(|p| (p.kind, p.base_url.as_str(), p.api_key.as_deref())).collect();
    assert_eq!(
        got,
        [
            (ProviderKind::Tavily, "http://127.0.0.1:9000/tavily", Some("tvly-key")),
            (ProviderKind::Serper, "https://google.serper.dev", Some("serper-key")),
            (ProviderKind::Searxng, "http://127.0.0.1:8888", None),
        ]
    );
    assert!(!format!("{config:?}").contains("tvly-key"), "keys are not printed");
    assert!(SearchConfig::from_lookup(|_| Some("  ".into())).providers.is_empty());
}
