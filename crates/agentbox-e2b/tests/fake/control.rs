//! The control plane: `POST /sandboxes`, `GET /v2/sandboxes`, `GET|DELETE /sandboxes/{id}`,
//! `POST /sandboxes/{id}/timeout|pause|connect`, `GET /sandboxes/{id}/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, Request, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Sandbox, Seen, State, api_error, host, rfc3339};

type S = Extract<Arc<State>>;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/sandboxes", post(create))
        .route("/v2/sandboxes", get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

pub fn record(state: &State, request: &Request) {
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    state.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        headers,
    });
}

async fn authenticate(Extract(state): S, request: Request, next: Next) -> Response {
    record(&state, &request);
    match request.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(key) if key == state.api_key => next.run(request).await,
        Some(_) => api_error(StatusCode::UNAUTHORIZED, "Invalid API key, it must start with 'e2b_'"),
        None => api_error(StatusCode::UNAUTHORIZED, "Missing API key"),
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

async fn create(Extract(state): S, body: String) -> Response {
    if let Some((status, retry_after)) = state.faults.lock().unwrap().create.pop_front() {
        let mut response = api_error(StatusCode::from_u16(status).unwrap(), "injected failure");
        if let Some(secs) = retry_after {
            response.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
        }
        return response;
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return api_error(StatusCode::BAD_REQUEST, "malformed body");
    };
    let Some(template) = body.get("templateID").and_then(Value::as_str) else {
        return api_error(StatusCode::BAD_REQUEST, "templateID is required");
    };
    if template == "missing-template" {
        return api_error(StatusCode::NOT_FOUND, &format!("template '{template}' not found"));
    }
    let timeout = body.get("timeout").and_then(Value::as_u64).unwrap_or(15);
    let secure = body.get("secure").and_then(Value::as_bool).unwrap_or(false);
    let id = format!("i{:019}", state.next());
    let fs = host::SandboxFs::create(state.root.join(&id)).unwrap();
    let token = secure.then(|| format!("tok-{id}-{}", state.next()));
    let now = SystemTime::now();
    let sandbox = Sandbox {
        id: id.clone(),
        template: template.to_owned(),
        token: token.clone(),
        metadata: string_map(body.get("metadata").unwrap_or(&Value::Null)),
        env_vars: string_map(body.get("envVars").unwrap_or(&Value::Null)),
        started_at: now,
        end_at: Mutex::new(now + Duration::from_secs(timeout)),
        paused: Mutex::new(false),
        fs,
        processes: Mutex::new(HashMap::new()),
        contexts: Mutex::new(HashMap::new()),
        body: body.clone(),
    };
    state.sandboxes.lock().unwrap().insert(id.clone(), Arc::new(sandbox));
    let mut out = json!({"templateID": template, "sandboxID": id, "clientID": "fake", "envdVersion": "0.4.0"});
    if let Some(t) = token {
        out["envdAccessToken"] = json!(t);
    }
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

fn listed(sb: &Sandbox) -> Value {
    json!({
        "templateID": sb.template,
        "sandboxID": sb.id,
        "clientID": "fake",
        "startedAt": rfc3339(sb.started_at),
        "endAt": rfc3339(*sb.end_at.lock().unwrap()),
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 10240,
        "metadata": sb.metadata,
        "state": if *sb.paused.lock().unwrap() { "paused" } else { "running" },
        "envdVersion": "0.4.0",
    })
}

async fn list(Extract(state): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let wanted: Vec<(String, String)> = q.get("metadata").map(|m| url_pairs(m)).unwrap_or_default();
    let states: Vec<&str> = q.get("state").map_or(vec!["running", "paused"], |s| s.split(',').collect());
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100).clamp(1, 100);
    let start: usize = q.get("nextToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let ids: Vec<String> = {
        let mut ids: Vec<String> = state.sandboxes.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    };
    let mut all = Vec::new();
    for id in ids {
        let Some(sb) = state.sandbox(&id) else { continue };
        let st = if *sb.paused.lock().unwrap() { "paused" } else { "running" };
        if states.contains(&st) && wanted.iter().all(|(k, v)| sb.metadata.get(k) == Some(v)) {
            all.push(listed(&sb));
        }
    }
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let mut response = axum::Json(page).into_response();
    if start + limit < all.len() {
        response.headers_mut().insert("x-next-token", (start + limit).to_string().parse().unwrap());
    }
    response
}

/// Parses `k=v&k2=v2` (the `metadata` query parameter, itself URL-encoded).
fn url_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn missing(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, &format!("sandbox \"{id}\" doesn't exist or you don't have access to it"))
}

async fn detail(Extract(state): S, Path(id): Path<String>) -> Response {
    let Some(sb) = state.sandbox(&id) else { return missing(&id) };
    let mut v = listed(&sb);
    if let Some(t) = &sb.token {
        v["envdAccessToken"] = json!(t);
    }
    axum::Json(v).into_response()
}

async fn kill(Extract(state): S, Path(id): Path<String>) -> Response {
    let Some(sb) = state.sandbox(&id) else { return missing(&id) };
    state.sandboxes.lock().unwrap().remove(&id);
    sb.kill_everything();
    let _ = std::fs::remove_dir_all(&sb.fs.root);
    StatusCode::NO_CONTENT.into_response()
}

async fn set_timeout(Extract(state): S, Path(id): Path<String>, body: String) -> Response {
    let Some(sb) = state.sandbox(&id) else { return missing(&id) };
    let Some(secs) = serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("timeout")?.as_u64()) else {
        return api_error(StatusCode::BAD_REQUEST, "timeout is required");
    };
    *sb.end_at.lock().unwrap() = SystemTime::now() + Duration::from_secs(secs);
    StatusCode::NO_CONTENT.into_response()
}

async fn pause(Extract(state): S, Path(id): Path<String>) -> Response {
    let Some(sb) = state.sandbox(&id) else { return missing(&id) };
    let mut paused = sb.paused.lock().unwrap();
    if *paused {
        return api_error(StatusCode::CONFLICT, "sandbox is already paused");
    }
    *paused = true;
    StatusCode::NO_CONTENT.into_response()
}

async fn connect(Extract(state): S, Path(id): Path<String>, body: String) -> Response {
    let Some(sb) = state.sandbox(&id) else { return missing(&id) };
    let secs = serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("timeout")?.as_u64()).unwrap_or(15);
    let was_paused = std::mem::replace(&mut *sb.paused.lock().unwrap(), false);
    *sb.end_at.lock().unwrap() = SystemTime::now() + Duration::from_secs(secs);
    let mut out = json!({"templateID": sb.template, "sandboxID": sb.id, "clientID": "fake", "envdVersion": "0.4.0"});
    if let Some(t) = &sb.token {
        out["envdAccessToken"] = json!(t);
    }
    let status = if was_paused { StatusCode::CREATED } else { StatusCode::OK };
    (status, axum::Json(out)).into_response()
}

/// One sample of the host's real use, with the sandbox's own disk use.
pub fn sample(state: &State, sb: &Sandbox) -> (i64, u32, f64, u64, u64, u64, u64) {
    let (busy, total) = host::cpu_jiffies();
    let (last_busy, last_total) = std::mem::replace(&mut *state.cpu.lock().unwrap(), (busy, total));
    let pct = if total > last_total {
        (busy - last_busy.min(busy)) as f64 * 100.0 / (total - last_total) as f64
    } else {
        0.0
    };
    let (mem_used, mem_total) = host::memory();
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    (i64::try_from(ts).unwrap(), cpus, pct, mem_used, mem_total, host::disk_used(&sb.fs.root), 10 << 30)
}

async fn metrics(Extract(state): S, Path(id): Path<String>, _headers: HeaderMap) -> Response {
    let Some(sb) = state.sandbox(&id) else { return missing(&id) };
    // E2B samples every few seconds: a sandbox younger than a second has no sample yet.
    if sb.started_at.elapsed().unwrap_or_default() < Duration::from_secs(1) {
        return axum::Json(Vec::<Value>::new()).into_response();
    }
    let (ts, cpus, pct, mem_used, mem_total, disk_used, disk_total) = sample(&state, &sb);
    axum::Json(json!([{
        "timestamp": rfc3339(UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap())),
        "timestampUnix": ts,
        "cpuCount": cpus,
        "cpuUsedPct": pct,
        "memUsed": mem_used,
        "memTotal": mem_total,
        "diskUsed": disk_used,
        "diskTotal": disk_total,
    }]))
    .into_response()
}
