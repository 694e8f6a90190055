//! The control plane: `/sandboxes` and `/v2/sandboxes`, authenticated by `X-API-KEY`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentbox_core::{CreateOptions, RunId};
use agentbox_e2b_wire::wire::{CreatedSandbox, NewSandbox, SandboxDetail, SandboxMetric, SandboxTimeout};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::state::{CLIENT_ID, E2bSandbox, ENVD_VERSION, NewEntry, Shared, random_hex, rfc3339};
use crate::{E2bApiError, no_content};

/// Largest control-plane request body.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most sandboxes in one page of `GET /v2/sandboxes`.
const MAX_PAGE: usize = 100;

/// The control plane's routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(from_fn_with_state(state.clone(), require_key))
        .with_state(state)
}

async fn no_route(request: Request) -> E2bApiError {
    E2bApiError::NotFound(format!(
        "no E2B control-plane route {} {}; see docs/E2B-API.md for what agentboxd serves",
        request.method(),
        request.uri().path()
    ))
}

async fn require_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let presented = request.headers().get("x-api-key").map(HeaderValue::as_bytes).unwrap_or_default();
    if presented.is_empty() || !(state.check_key)(presented) {
        return E2bApiError::Unauthorized(
            "missing or wrong X-API-KEY: set E2B_API_KEY to agentboxd's API token".into(),
        )
        .into_response();
    }
    next.run(request).await
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, E2bApiError> {
    serde_json::from_slice(body).map_err(|e| E2bApiError::BadRequest(format!("invalid {what} body: {e}")))
}

fn sandbox_body(sandbox: &E2bSandbox) -> CreatedSandbox {
    CreatedSandbox {
        template_id: sandbox.template_id.clone(),
        sandbox_id: sandbox.id.clone(),
        client_id: Some(CLIENT_ID.to_owned()),
        envd_version: Some(ENVD_VERSION.to_owned()),
        envd_access_token: sandbox.access_token.clone(),
        traffic_access_token: None,
        domain: None,
    }
}

fn detail_body(state: &Shared, sandbox: &E2bSandbox, with_token: bool) -> SandboxDetail {
    let paused = state.is_paused(sandbox);
    SandboxDetail {
        template_id: sandbox.template_id.clone(),
        sandbox_id: sandbox.id.clone(),
        client_id: CLIENT_ID.to_owned(),
        started_at: rfc3339(sandbox.started_at),
        end_at: rfc3339(sandbox.deadline().unwrap_or_else(SystemTime::now)),
        envd_version: ENVD_VERSION.to_owned(),
        cpu_count: sandbox.cpu_count,
        memory_mb: sandbox.memory_mb,
        disk_size_mb: sandbox.disk_mb,
        state: if paused { "paused" } else { "running" }.to_owned(),
        metadata: sandbox.metadata.clone(),
        envd_access_token: if with_token { sandbox.access_token.clone() } else { None },
    }
}

fn check_timeout(state: &Shared, timeout: u64) -> Result<Duration, E2bApiError> {
    let max = state.config.max_timeout_secs;
    if timeout == 0 || timeout > max {
        return Err(E2bApiError::BadRequest(format!(
            "timeout {timeout} s is out of range: use 1 to {max} seconds ([e2b_api] max_timeout_secs)"
        )));
    }
    Ok(Duration::from_secs(timeout))
}

async fn create(State(state): State<Shared>, body: Bytes) -> Result<Response, E2bApiError> {
    let raw: serde_json::Value = parse_json(&body, "NewSandbox")?;
    let request: NewSandbox = parse_json(&body, "NewSandbox")?;
    let preset = state.config.templates.preset(&request.template_id)?;
    let timeout = check_timeout(&state, request.timeout)?;
    // E2B's own defaults for fields an SDK leaves out: internet on, secure (an access token) on.
    let internet = raw.get("allow_internet_access").and_then(serde_json::Value::as_bool).unwrap_or(true);
    let secure = raw.get("secure").and_then(serde_json::Value::as_bool).unwrap_or(true);
    if request.network.as_ref().is_some_and(|n| !n.allow_out.is_empty() || !n.deny_out.is_empty()) {
        return Err(E2bApiError::Unimplemented(
            "network allowOut/denyOut lists are not supported by agentboxd's E2B API; leave them out, or use \
             allow_internet_access=false to cut the sandbox off"
                .into(),
        ));
    }
    state.reserve()?;
    let mut config = preset.config();
    config.environment_variables.extend(request.env_vars.clone());
    // E2B sandboxes let their commands run as root (`user="root"`): here, root of the sandbox's own user namespace.
    config.security.allow_root_inside = state.config.allow_root;
    if !internet {
        config.network.enabled = false;
    }
    // The E2B timeout, not the manager's idle expiry, ends the sandbox.
    config.idle_timeout = Duration::from_secs(state.config.max_timeout_secs.saturating_add(3600));
    let id = format!("i{}", random_hex(10)?);
    let run = RunId::parse(&id).map_err(E2bApiError::sandbox("naming the sandbox"))?;
    let resources = (config.cpu_count, config.memory_mb, config.disk_gb.saturating_mul(1024));
    state
        .manager
        .get_or_create(&run, CreateOptions { preset: Some(preset), config: Some(config) })
        .await
        .map_err(E2bApiError::sandbox("creating the sandbox"))?;
    let entry = NewEntry {
        template_id: request.template_id,
        metadata: request.metadata,
        timeout,
        auto_pause: request.auto_pause,
        secure,
        resources,
    };
    let sandbox = match state.insert(&id, run.clone(), entry) {
        Ok(s) => s,
        Err(e) => {
            let _ = state.manager.destroy(&run).await;
            return Err(e);
        }
    };
    Ok((StatusCode::CREATED, Json(sandbox_body(&sandbox))).into_response())
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The filters of a list call.
struct Filter {
    metadata: BTreeMap<String, String>,
    states: Vec<String>,
    limit: usize,
    next_token: Option<String>,
    template: Option<String>,
    started_after: Option<SystemTime>,
    ascending: bool,
}

fn filter(query: Option<&str>, default_states: &[&str]) -> Result<Filter, E2bApiError> {
    let mut f = Filter {
        metadata: BTreeMap::new(),
        states: Vec::new(),
        limit: MAX_PAGE,
        next_token: None,
        template: None,
        started_after: None,
        ascending: false,
    };
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "metadata" | "query" => {
                // `k1=v1&k2=v2` with each key and value percent-encoded, the whole encoded once more (the SDKs
                // quote each, urlencode the pairs, and the HTTP client encodes the parameter).
                for (k, v) in query_pairs(Some(&value)) {
                    f.metadata.insert(percent_decode(&k), percent_decode(&v));
                }
            }
            "state" => f.states.extend(value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())),
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| E2bApiError::BadRequest(format!("limit {value:?} is not a number of sandboxes")))?;
                f.limit = n.clamp(1, MAX_PAGE);
            }
            "nextToken" => f.next_token = Some(value).filter(|v| !v.is_empty()),
            "template" => f.template = Some(value).filter(|v| !v.is_empty()),
            "startedAfter" => f.started_after = Some(parse_time(&value)?),
            "order" => {
                f.ascending = match value.to_ascii_lowercase().as_str() {
                    "asc" => true,
                    "desc" | "" => false,
                    other => {
                        return Err(E2bApiError::BadRequest(format!("order {other:?} is unknown: use asc or desc")));
                    }
                };
            }
            _ => {}
        }
    }
    for s in &f.states {
        if s != "running" && s != "paused" {
            return Err(E2bApiError::BadRequest(format!("state {s:?} is unknown: use running or paused")));
        }
    }
    if f.states.is_empty() {
        f.states = default_states.iter().map(|s| (*s).to_owned()).collect();
    }
    Ok(f)
}

fn matching(state: &Shared, f: &Filter) -> Vec<Arc<E2bSandbox>> {
    state
        .list()
        .into_iter()
        .filter(|s| f.metadata.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .filter(|s| f.template.as_ref().is_none_or(|t| *t == s.template_id))
        .filter(|s| f.started_after.is_none_or(|t| s.started_at >= t))
        .filter(|s| {
            let st = if state.is_paused(s) { "paused" } else { "running" };
            f.states.iter().any(|x| x == st)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev_if(!f.ascending)
}

/// Newest first unless asked otherwise, as E2B lists.
trait RevIf: Iterator + DoubleEndedIterator + Sized {
    fn rev_if(self, reverse: bool) -> Vec<Self::Item> {
        if reverse { self.rev().collect() } else { self.collect() }
    }
}

impl<I: Iterator + DoubleEndedIterator> RevIf for I {}

/// An RFC 3339 time, with `Z` or a `+HH:MM` offset (Python's `isoformat()`).
fn parse_time(text: &str) -> Result<SystemTime, E2bApiError> {
    let bad = || E2bApiError::BadRequest(format!("time {text:?} is not RFC 3339 (2024-05-01T10:00:00Z)"));
    let t = text.trim();
    let (base, offset_secs) = match t.len().checked_sub(6).and_then(|i| t.get(i..).map(|tail| (i, tail))) {
        Some((i, tail))
            if (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = tail[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = tail[4..6].parse().map_err(|_| bad())?;
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (&t[..i], sign * (hours * 3600 + minutes * 60))
        }
        _ => (t.trim_end_matches(['Z', 'z']), 0),
    };
    let local = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    Ok(if offset_secs >= 0 { local - shift } else { local + shift })
}

async fn list_v1(State(state): State<Shared>, RawQuery(query): RawQuery) -> Result<Response, E2bApiError> {
    let f = filter(query.as_deref(), &["running"])?;
    let body: Vec<SandboxDetail> = matching(&state, &f).iter().map(|s| detail_body(&state, s, false)).collect();
    Ok(Json(body).into_response())
}

async fn list_v2(State(state): State<Shared>, RawQuery(query): RawQuery) -> Result<Response, E2bApiError> {
    let f = filter(query.as_deref(), &["running", "paused"])?;
    let all = matching(&state, &f);
    // The token is the id of the last sandbox of the previous page; pages keep the listing's order.
    let start = match &f.next_token {
        Some(token) => all.iter().position(|s| &s.id == token).map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<_> = all.iter().skip(start).take(f.limit).collect();
    let more = start + page.len() < all.len();
    let body: Vec<SandboxDetail> = page.iter().map(|s| detail_body(&state, s, false)).collect();
    let mut response = Json(body).into_response();
    if more {
        if let Some(last) = page.last() {
            if let Ok(v) = HeaderValue::from_str(&last.id) {
                response.headers_mut().insert("x-next-token", v);
            }
        }
    }
    Ok(response)
}

async fn detail(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, E2bApiError> {
    let sandbox = state.get(&id)?;
    Ok(Json(detail_body(&state, &sandbox, true)).into_response())
}

async fn kill(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, E2bApiError> {
    state.kill(&id).await?;
    Ok(no_content())
}

async fn set_timeout(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, E2bApiError> {
    let request: SandboxTimeout = parse_json(&body, "timeout")?;
    let timeout = check_timeout(&state, request.timeout)?;
    let sandbox = state.get(&id)?;
    if !state.is_paused(&sandbox) {
        sandbox.set_deadline(Some(SystemTime::now() + timeout));
    }
    Ok(no_content())
}

async fn pause(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, E2bApiError> {
    let sandbox = state.get(&id)?;
    if state.is_paused(&sandbox) {
        return Err(E2bApiError::Conflict(format!("sandbox {id} is already paused")));
    }
    state.manager.pause(&sandbox.run).await.map_err(E2bApiError::sandbox("pausing the sandbox"))?;
    sandbox.set_deadline(None);
    Ok(no_content())
}

async fn connect(State(state): State<Shared>, Path(id): Path<String>, body: Bytes) -> Result<Response, E2bApiError> {
    // The body is optional, and so is its timeout (E2B's default, 300 s, then).
    let raw: serde_json::Value =
        if body.iter().all(u8::is_ascii_whitespace) { serde_json::json!({}) } else { parse_json(&body, "connect")? };
    let timeout = match raw.get("timeout") {
        None | Some(serde_json::Value::Null) => Duration::from_secs(300),
        Some(t) => check_timeout(
            &state,
            t.as_u64()
                .ok_or_else(|| E2bApiError::BadRequest(format!("connect timeout {t} is not a number of seconds")))?,
        )?,
    };
    let sandbox = state.get(&id)?;
    let resumed = state.is_paused(&sandbox);
    if resumed {
        state.manager.resume(&sandbox.run).await.map_err(E2bApiError::sandbox("resuming the sandbox"))?;
    }
    // Connecting never shortens the sandbox's life.
    let wanted = SystemTime::now() + timeout;
    let deadline = sandbox.deadline().map_or(wanted, |d| d.max(wanted));
    sandbox.set_deadline(Some(deadline));
    let status = if resumed { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(sandbox_body(&sandbox))).into_response())
}

async fn metrics(
    State(state): State<Shared>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, E2bApiError> {
    let sandbox = state.get(&id)?;
    // One sample, taken now: an asked-for window it is not in gets none.
    let mut window = (None::<u64>, None::<u64>);
    for (key, value) in query_pairs(query.as_deref()) {
        let secs = || {
            value.parse::<u64>().map_err(|_| E2bApiError::BadRequest(format!("{key} {value:?} is not unix seconds")))
        };
        match key.as_str() {
            "start" => window.0 = Some(secs()?),
            "end" => window.1 = Some(secs()?),
            _ => {}
        }
    }
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    if window.0.is_some_and(|s| s > now) || window.1.is_some_and(|e| e < now) {
        return Ok(Json(Vec::<SandboxMetric>::new()).into_response());
    }
    let m = state.manager.metrics(&sandbox.run).await.map_err(E2bApiError::sandbox("reading the sandbox's metrics"))?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(m.sampled_at_ms);
    let at = if m.sampled_at_ms == 0 { SystemTime::now() } else { at };
    let unix = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "non-negative sizes far below 2^53")]
    let sample = SandboxMetric {
        timestamp: Some(rfc3339(at)),
        timestamp_unix: i64::try_from(unix).unwrap_or(i64::MAX),
        cpu_count: sandbox.cpu_count,
        cpu_used_pct: m.cpu_usage_percent,
        mem_used: (m.memory_used_mb.max(0.0) * 1024.0 * 1024.0) as u64,
        mem_total: sandbox.memory_mb.saturating_mul(1024 * 1024),
        mem_cache: Some(0),
        disk_used: (m.disk_used_gb.max(0.0) * 1024.0 * 1024.0 * 1024.0) as u64,
        disk_total: sandbox.disk_mb.saturating_mul(1024 * 1024),
    };
    Ok(Json(vec![sample]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_decode_metadata_and_states() {
        let f = filter(Some("metadata=user%3Dalice%26app%3Dx%25252F&state=running&state=paused&limit=5"), &["running"])
            .unwrap();
        assert_eq!(f.metadata.get("user").map(String::as_str), Some("alice"));
        assert_eq!(f.metadata.get("app").map(String::as_str), Some("x/"));
        assert_eq!(f.states, ["running", "paused"]);
        assert_eq!(f.limit, 5);
        assert!(filter(Some("state=dead"), &["running"]).is_err());
        assert_eq!(filter(None, &["running"]).unwrap().states, ["running"]);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz%41"), "a%zzA");
        let z = parse_time("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(parse_time("2024-05-01T12:00:00.000000+02:00").unwrap(), z);
        assert_eq!(parse_time("2024-05-01T08:30:00-01:30").unwrap(), z);
        assert!(parse_time("yesterday").is_err());
    }
}
