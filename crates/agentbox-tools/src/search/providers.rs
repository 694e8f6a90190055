//! The providers' wire formats, as their documentation gives them.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ProviderConfig, ProviderKind, SearchDepth, SearchRequest, SearchResult, TimeRange};

type Found = (Option<String>, Vec<SearchResult>);

pub(super) async fn search(
    http: &reqwest::Client,
    p: &ProviderConfig,
    req: &SearchRequest,
    timeout: Duration,
) -> Result<Found, String> {
    let base = p.base_url.trim_end_matches('/');
    let key = p.api_key.as_deref().unwrap_or_default();
    let builder = match p.kind {
        ProviderKind::Tavily => http.post(format!("{base}/search")).bearer_auth(key).json(&tavily_body(req)),
        ProviderKind::Serper => http.post(format!("{base}/search")).header("X-API-KEY", key).json(&serper_body(req)),
        ProviderKind::Searxng => http.get(format!("{base}/search")).query(&searxng_query(req)),
    };
    let response = builder.send().await.map_err(|e| describe_send_error(&e, timeout))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| describe_send_error(&e, timeout))?;
    if !status.is_success() {
        return Err(describe_status(p.kind, status, &body));
    }
    let parsed = match p.kind {
        ProviderKind::Tavily => parse_tavily(&body),
        ProviderKind::Serper => parse_serper(&body),
        ProviderKind::Searxng => parse_searxng(&body),
    };
    parsed.map_err(|e| format!("returned a malformed response ({e}); first bytes: {}", preview(&body)))
}

fn describe_send_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("timed out after {timeout:?}")
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        format!("request failed: {e}")
    }
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

fn describe_status(kind: ProviderKind, status: reqwest::StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/detail/error")
                .or_else(|| v.get("detail"))
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
                .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned))
        })
        .unwrap_or_else(|| preview(body));
    let hint = match (kind, status.as_u16()) {
        (_, 429) => " (rate limited by the provider)".to_owned(),
        (ProviderKind::Searxng, 403) => {
            " (the instance refuses format=json: enable `json` under search.formats in its settings.yml)".to_owned()
        }
        (ProviderKind::Tavily | ProviderKind::Serper, 401 | 403) => format!(" (check {})", kind.settings()),
        (ProviderKind::Tavily, 432 | 433) => " (the Tavily plan's usage limit is reached)".to_owned(),
        _ => String::new(),
    };
    format!("HTTP {status}{hint}: {detail}")
}

// ---- Tavily: POST /search, `Authorization: Bearer KEY`, JSON body.

fn tavily_body(req: &SearchRequest) -> Value {
    let mut body = json!({
        "query": req.query,
        "search_depth": match req.depth.unwrap_or_default() { SearchDepth::Basic => "basic", SearchDepth::Advanced => "advanced" },
        "max_results": req.max_results(),
        "include_answer": true,
    });
    if let Some(t) = req.time_range {
        body["time_range"] = json!(t.as_str());
    }
    if !req.include_domains.is_empty() {
        body["include_domains"] = json!(req.include_domains);
    }
    if !req.exclude_domains.is_empty() {
        body["exclude_domains"] = json!(req.exclude_domains);
    }
    body
}

#[derive(Deserialize)]
struct TavilyResponse {
    #[serde(default)]
    answer: Option<String>,
    results: Vec<TavilyResult>,
}

#[derive(Deserialize)]
struct TavilyResult {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    published_date: Option<String>,
}

fn parse_tavily(body: &[u8]) -> Result<Found, String> {
    let r: TavilyResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let results = r
        .results
        .into_iter()
        .filter_map(|x| normalized(x.title, &x.url?, x.content, x.score, x.published_date))
        .collect();
    Ok((r.answer.filter(|a| !a.trim().is_empty()), results))
}

// ---- Serper: POST /search, `X-API-KEY: KEY`, JSON body {q, num, tbs}.

fn site_filters(req: &SearchRequest) -> String {
    let mut q = req.query.trim().to_owned();
    if !req.include_domains.is_empty() {
        let sites: Vec<String> = req.include_domains.iter().map(|d| format!("site:{d}")).collect();
        q.push_str(&format!(" ({})", sites.join(" OR ")));
    }
    for d in &req.exclude_domains {
        q.push_str(&format!(" -site:{d}"));
    }
    q
}

fn serper_body(req: &SearchRequest) -> Value {
    let mut body = json!({ "q": site_filters(req), "num": req.max_results() });
    if let Some(t) = req.time_range {
        let tbs = match t {
            TimeRange::Day => "qdr:d",
            TimeRange::Week => "qdr:w",
            TimeRange::Month => "qdr:m",
            TimeRange::Year => "qdr:y",
        };
        body["tbs"] = json!(tbs);
    }
    body
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SerperResponse {
    organic: Vec<SerperResult>,
    #[serde(default)]
    answer_box: Option<SerperAnswerBox>,
    #[serde(default)]
    knowledge_graph: Option<SerperKnowledgeGraph>,
}

#[derive(Deserialize)]
struct SerperResult {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    snippet: Option<String>,
    #[serde(default)]
    date: Option<String>,
}

#[derive(Deserialize)]
struct SerperAnswerBox {
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    snippet: Option<String>,
}

#[derive(Deserialize)]
struct SerperKnowledgeGraph {
    #[serde(default)]
    description: Option<String>,
}

fn parse_serper(body: &[u8]) -> Result<Found, String> {
    let r: SerperResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let answer = r
        .answer_box
        .and_then(|b| b.answer.or(b.snippet))
        .or_else(|| r.knowledge_graph.and_then(|k| k.description))
        .filter(|a| !a.trim().is_empty());
    let results =
        r.organic.into_iter().filter_map(|x| normalized(x.title, &x.link?, x.snippet, None, x.date)).collect();
    Ok((answer, results))
}

// ---- SearXNG: GET /search?q=...&format=json[&time_range=day|month|year].

fn searxng_query(req: &SearchRequest) -> Vec<(&'static str, String)> {
    let mut q = vec![("q", site_filters(req)), ("format", "json".to_owned()), ("pageno", "1".to_owned())];
    if let Some(t) = req.time_range {
        // SearXNG documents day, month and year; a week is served by the nearest wider range.
        let range = match t {
            TimeRange::Day => "day",
            TimeRange::Week | TimeRange::Month => "month",
            TimeRange::Year => "year",
        };
        q.push(("time_range", range.to_owned()));
    }
    q
}

#[derive(Deserialize)]
struct SearxngResponse {
    results: Vec<SearxngResult>,
    #[serde(default)]
    answers: Vec<Value>,
}

#[derive(Deserialize)]
struct SearxngResult {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default, rename = "publishedDate")]
    published_date: Option<String>,
}

fn parse_searxng(body: &[u8]) -> Result<Found, String> {
    let r: SearxngResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    // Answers are plain strings in older releases and {"answer": ..., "url": ...} objects in newer ones.
    let answer = r
        .answers
        .iter()
        .find_map(|a| {
            a.as_str().map(str::to_owned).or_else(|| a.get("answer").and_then(Value::as_str).map(str::to_owned))
        })
        .filter(|a| !a.trim().is_empty());
    let results = r
        .results
        .into_iter()
        .filter_map(|x| normalized(x.title, &x.url?, x.content, x.score, x.published_date))
        .collect();
    Ok((answer, results))
}

fn normalized(
    title: Option<String>,
    url: &str,
    snippet: Option<String>,
    score: Option<f64>,
    published: Option<String>,
) -> Option<SearchResult> {
    let url = url.trim().to_owned();
    if url.is_empty() {
        return None;
    }
    let title = title.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).unwrap_or_else(|| url.clone());
    let snippet = snippet.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default();
    Some(SearchResult { title, url, snippet, score, published: published.filter(|p| !p.trim().is_empty()) })
}

fn host_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url).ok()?.host_str().map(str::to_ascii_lowercase)
}

fn matches_domain(host: &str, domain: &str) -> bool {
    let domain = domain.trim().trim_start_matches('.').to_ascii_lowercase();
    host == domain || host.ends_with(&format!(".{domain}"))
}

/// Applies include/exclude domains to results, for providers that only take them as query hints.
pub(super) fn filter_domains(results: &mut Vec<SearchResult>, req: &SearchRequest) {
    if req.include_domains.is_empty() && req.exclude_domains.is_empty() {
        return;
    }
    results.retain(|r| {
        let Some(host) = host_of(&r.url) else { return false };
        (req.include_domains.is_empty() || req.include_domains.iter().any(|d| matches_domain(&host, d)))
            && !req.exclude_domains.iter().any(|d| matches_domain(&host, d))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_subdomains_only_on_label_boundaries() {
        assert!(matches_domain("docs.rs", "docs.rs"));
        assert!(matches_domain("www.docs.rs", "docs.rs"));
        assert!(!matches_domain("notdocs.rs", "docs.rs"));
    }

    #[test]
    fn serper_query_carries_site_operators() {
        let mut r = SearchRequest::new("tokio");
        r.include_domains = vec!["docs.rs".into(), "github.com".into()];
        r.exclude_domains = vec!["reddit.com".into()];
        assert_eq!(site_filters(&r), "tokio (site:docs.rs OR site:github.com) -site:reddit.com");
    }
}
