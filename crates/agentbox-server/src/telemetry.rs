//! The server's own Prometheus metrics: requests, latencies, in-flight requests, sandboxes by state,
//! and the gauges of the server's budgets (descriptors, connections, memory, log lines left out).
//!
//! Label values come from fixed sets only: a known method or `other`, the matched route template
//! or `unmatched`, and the status code. Nothing a client sends becomes a label, and each metric has
//! at most `limits.max_metric_series` label sets (beyond it, requests count under `route="other"`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentbox_core::LockExt;
use agentbox_core::{ManagerStats, SandboxState};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::budget::{Connections, FdBudget, open_fds, resident_memory};

/// The methods counted under their own name; every other one is `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// The label for a request's method: a known method's name, else `other`.
#[must_use]
pub fn method_label(method: &axum::http::Method) -> &'static str {
    METHODS.iter().find(|m| **m == method.as_str()).copied().unwrap_or("other")
}

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Series {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    latency: BTreeMap<(&'static str, String), Histogram>,
}

/// Counters and histograms of the HTTP server, and the budgets it reports.
#[derive(Debug)]
pub struct ServerMetrics {
    series: Mutex<Series>,
    in_flight: AtomicI64,
    max_series: usize,
    fds: Option<FdBudget>,
    connections: Option<Arc<Connections>>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new(crate::config::Limits::default().max_metric_series, None, None)
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl ServerMetrics {
    /// Metrics of at most `max_series` label sets each, reporting the descriptor budget `fds` and
    /// the REST `connections` when given.
    #[must_use]
    pub fn new(max_series: usize, fds: Option<FdBudget>, connections: Option<Arc<Connections>>) -> Self {
        Self { series: Mutex::new(Series::default()), in_flight: AtomicI64::new(0), max_series, fds, connections }
    }

    /// Records one finished request; `method` and `route` must come from fixed sets ([`method_label`],
    /// a matched route template), and past `max_series` label sets new ones count as `route="other"`.
    pub fn record(&self, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        let mut s = self.series.lock_unpoisoned();
        let mut route = route;
        if s.requests.len() >= self.max_series && !s.requests.contains_key(&(method, route.to_owned(), status)) {
            route = "other";
        }
        *s.requests.entry((method, route.to_owned(), status)).or_default() += 1;
        s.latency.entry((method, route.to_owned())).or_default().observe(elapsed.as_secs_f64());
    }

    /// Label sets of the request counter (the histogram has at most as many).
    #[must_use]
    pub fn series(&self) -> usize {
        self.series.lock_unpoisoned().requests.len()
    }

    /// Renders the server's series as Prometheus text, with the sandboxes counted by state and the manager's counters.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // counters beyond 2^53 lose precision in Prometheus anyway
    pub fn render(&self, by_state: &BTreeMap<&'static str, usize>, stats: &ManagerStats) -> String {
        let mut out = String::new();
        let s = self.series.lock_unpoisoned();
        let _ =
            writeln!(out, "# HELP agentbox_http_requests_total HTTP requests answered, by method, route and status.");
        let _ = writeln!(out, "# TYPE agentbox_http_requests_total counter");
        for ((method, route, status), n) in &s.requests {
            let _ = writeln!(
                out,
                "agentbox_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP agentbox_http_request_duration_seconds Time to answer a request (to the first byte of a stream)."
        );
        let _ = writeln!(out, "# TYPE agentbox_http_request_duration_seconds histogram");
        for ((method, route), h) in &s.latency {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "agentbox_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "agentbox_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "agentbox_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "agentbox_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        let series = s.requests.len();
        drop(s);
        self.render_budgets(&mut out, series);
        let _ = writeln!(out, "# HELP agentbox_http_requests_in_flight Requests being answered now.");
        let _ = writeln!(out, "# TYPE agentbox_http_requests_in_flight gauge");
        let _ = writeln!(out, "agentbox_http_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP agentbox_sandboxes Sandboxes held for runs, by state.");
        let _ = writeln!(out, "# TYPE agentbox_sandboxes gauge");
        for state in [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Stopped,
            SandboxState::Unhealthy,
            SandboxState::Destroying,
        ] {
            let _ = writeln!(
                out,
                "agentbox_sandboxes{{state=\"{}\"}} {}",
                state.as_str(),
                by_state.get(state.as_str()).copied().unwrap_or(0)
            );
        }
        for (name, help, v) in [
            ("created", "Sandboxes created by the backend.", stats.created),
            ("destroyed", "Sandboxes destroyed.", stats.destroyed),
            ("expired", "Sandboxes destroyed for being idle.", stats.expired),
            ("recreated", "Sandboxes recreated after failing health checks.", stats.recreated),
            ("executions", "Executions started.", stats.executions),
        ] {
            let _ = writeln!(out, "# HELP agentbox_manager_{name}_total {help}");
            let _ = writeln!(out, "# TYPE agentbox_manager_{name}_total counter");
            let _ = writeln!(out, "agentbox_manager_{name}_total {}", v as f64);
        }
        out
    }
}

impl ServerMetrics {
    /// The budget gauges: descriptors, memory, REST connections, egress proxy connections, log lines.
    #[allow(clippy::cast_precision_loss)] // gauges beyond 2^53 lose precision in Prometheus anyway
    fn render_budgets(&self, out: &mut String, series: usize) {
        let mut gauge = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        if let Some(n) = open_fds() {
            gauge("agentbox_process_open_fds", "gauge", "File descriptors the server holds now.", n as f64);
        }
        if let Some(b) = &self.fds {
            gauge("agentbox_process_max_fds", "gauge", "The server's soft file descriptor limit.", b.limit as f64);
            gauge("agentbox_fd_reserve", "gauge", "File descriptors no connection may take.", b.reserve as f64);
        }
        if let Some((rss, peak)) = resident_memory() {
            gauge("agentbox_process_resident_memory_bytes", "gauge", "The server's resident memory.", rss as f64);
            gauge(
                "agentbox_process_resident_memory_peak_bytes",
                "gauge",
                "The server's largest resident memory since start.",
                peak as f64,
            );
        }
        if let Some(c) = &self.connections {
            gauge("agentbox_http_connections_open", "gauge", "REST connections open now.", c.open() as f64);
            gauge("agentbox_http_connections_limit", "gauge", "Most REST connections at once.", c.limit as f64);
            gauge(
                "agentbox_http_connections_per_client_limit",
                "gauge",
                "Most REST connections from one client address.",
                c.per_client as f64,
            );
            gauge(
                "agentbox_http_connections_refused_total",
                "counter",
                "REST connections closed at accept: over the per-client cap, or with the budget used up.",
                c.refused() as f64,
            );
            gauge(
                "agentbox_http_connections_evicted_total",
                "counter",
                "Silent REST connections closed to make room for another address's.",
                c.evicted() as f64,
            );
        }
        let pool = agentbox_core::budget::proxy_pool();
        let limits = pool.limits();
        gauge(
            "agentbox_proxy_fds_in_use",
            "gauge",
            "File descriptors the egress proxies of all sandboxes hold now.",
            pool.in_use() as f64,
        );
        gauge(
            "agentbox_proxy_fds_limit",
            "gauge",
            "File descriptors the egress proxies of all sandboxes may hold.",
            limits.max_fds as f64,
        );
        gauge(
            "agentbox_proxy_fds_per_sandbox_limit",
            "gauge",
            "File descriptors one sandbox's egress proxy may hold.",
            limits.max_fds_per_sandbox as f64,
        );
        gauge(
            "agentbox_proxy_active_sandboxes",
            "gauge",
            "Sandboxes whose egress proxy holds a connection now.",
            pool.active_sandboxes() as f64,
        );
        let (by_sandbox, by_server) = pool.refused();
        let _ = writeln!(
            out,
            "# HELP agentbox_proxy_connections_refused_total Egress proxy connections refused for lack of \
             descriptors, by the budget that refused them."
        );
        let _ = writeln!(out, "# TYPE agentbox_proxy_connections_refused_total counter");
        let _ = writeln!(out, "agentbox_proxy_connections_refused_total{{budget=\"sandbox\"}} {by_sandbox}");
        let _ = writeln!(out, "agentbox_proxy_connections_refused_total{{budget=\"server\"}} {by_server}");
        let mut gauge = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(
            "agentbox_log_lines_suppressed_total",
            "counter",
            "Client-driven log lines left out by the log rate limit (each window's count is logged in one line).",
            agentbox_core::budget::log_limiter().suppressed() as f64,
        );
        gauge("agentbox_http_metric_series", "gauge", "Label sets of agentbox_http_requests_total.", series as f64);
        gauge(
            "agentbox_http_metric_series_limit",
            "gauge",
            "Most label sets per HTTP metric; beyond it requests count under route=\"other\".",
            self.max_series as f64,
        );
    }
}

/// Middleware counting every request by method (a known one or `other`), matched route template and status.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(request).await;
    state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    state.metrics.record(method, &route, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_states() {
        let m = ServerMetrics::default();
        m.record("GET", "/api/sandboxes", 200, Duration::from_millis(3));
        m.record("GET", "/api/sandboxes", 200, Duration::from_millis(700));
        m.record("POST", "/api/sandboxes/create", 400, Duration::from_millis(1));
        let by_state = BTreeMap::from([("running", 2)]);
        let text = m.render(&by_state, &ManagerStats { created: 4, ..ManagerStats::default() });
        assert!(
            text.contains("agentbox_http_requests_total{method=\"GET\",route=\"/api/sandboxes\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "agentbox_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/sandboxes\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "agentbox_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/sandboxes\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("agentbox_sandboxes{state=\"running\"} 2\n"));
        assert!(text.contains("agentbox_sandboxes{state=\"unhealthy\"} 0\n"));
        assert!(text.contains("agentbox_manager_created_total 4\n"));
        assert!(text.contains("agentbox_proxy_fds_in_use "), "{text}");
    }

    #[test]
    fn unknown_methods_and_routes_past_the_cap_share_one_label() {
        let m = ServerMetrics::new(4, None, None);
        for i in 0..100u16 {
            let method = axum::http::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
            m.record(method_label(&method), "/health", 405, Duration::from_millis(1));
            m.record("GET", &format!("/r{i}"), 200, Duration::from_millis(1));
        }
        assert!(m.series() <= 5, "{}", m.series());
        let text = m.render(&BTreeMap::new(), &ManagerStats::default());
        assert!(
            text.contains("agentbox_http_requests_total{method=\"other\",route=\"/health\",status=\"405\"} 100\n"),
            "{text}"
        );
        assert!(!text.contains("X1"), "{text}");
    }
}
