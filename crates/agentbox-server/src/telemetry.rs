//! The server's own Prometheus metrics: requests, latencies, in-flight requests and sandboxes by state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use agentbox_core::{ManagerStats, SandboxState};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

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
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
}

/// Counters and histograms of the HTTP server.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    series: Mutex<Series>,
    in_flight: AtomicI64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl ServerMetrics {
    /// Records one finished request.
    pub fn record(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut s = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *s.requests.entry((method.to_owned(), route.to_owned(), status)).or_default() += 1;
        s.latency.entry((method.to_owned(), route.to_owned())).or_default().observe(elapsed.as_secs_f64());
    }

    /// Renders the server's series as Prometheus text, with the sandboxes counted by state and the manager's counters.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // counters beyond 2^53 lose precision in Prometheus anyway
    pub fn render(&self, by_state: &BTreeMap<&'static str, usize>, stats: &ManagerStats) -> String {
        let mut out = String::new();
        let s = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ =
            writeln!(out, "# HELP agentbox_http_requests_total HTTP requests answered, by method, route and status.");
        let _ = writeln!(out, "# TYPE agentbox_http_requests_total counter");
        for ((method, route, status), n) in &s.requests {
            let _ = writeln!(
                out,
                "agentbox_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP agentbox_http_request_duration_seconds Time to answer a request (to the first byte of a stream)."
        );
        let _ = writeln!(out, "# TYPE agentbox_http_request_duration_seconds histogram");
        for ((method, route), h) in &s.latency {
            let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "agentbox_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "agentbox_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "agentbox_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "agentbox_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        drop(s);
        let _ = writeln!(out, "# HELP agentbox_http_requests_in_flight Requests being answered now.");
        let _ = writeln!(out, "# TYPE agentbox_http_requests_in_flight gauge");
        let _ = writeln!(out, "agentbox_http_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP agentbox_sandboxes Sandboxes held for runs, by state.");
        let _ = writeln!(out, "# TYPE agentbox_sandboxes gauge");
        for state in [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
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

/// Middleware counting every request by method, matched route and status.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(request).await;
    state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    state.metrics.record(&method, &route, response.status().as_u16(), started.elapsed());
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
    }
}
