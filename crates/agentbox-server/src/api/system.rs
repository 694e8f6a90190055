//! Liveness and Prometheus routes.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_metrics::{MetricsLabels, render_prometheus};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::ErrorResponses;
use crate::AppState;

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerHealth {
    /// Always `ok` while the server answers.
    pub status: String,
    /// Server version.
    pub version: String,
}

/// Liveness: answers while the server runs. Needs no token.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "serverHealth",
    tag = "server",
    responses((status = 200, description = "The server is up", body = ServerHealth))
)]
pub async fn health() -> Json<ServerHealth> {
    Json(ServerHealth { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// Prometheus text: every sandbox's resource use, and the server's requests, latencies and sandboxes by state.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "prometheusMetrics",
    tag = "server",
    responses(
        (status = 200, description = "Prometheus text exposition 0.0.4", content_type = "text/plain", body = String),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn prometheus(State(state): State<AppState>) -> Response {
    let sandboxes = state.manager.list();
    let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in &sandboxes {
        *by_state.entry(s.state.as_str()).or_default() += 1;
    }
    let samples =
        futures_util::future::join_all(sandboxes.iter().map(|s| {
            let manager = state.manager.clone();
            let run = s.run_id.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), manager.metrics(&run)).await.ok().and_then(Result::ok)
            }
        }))
        .await;
    let labelled: Vec<_> = sandboxes
        .iter()
        .zip(samples)
        .filter_map(|(s, m)| {
            m.map(|m| {
                let labels = MetricsLabels {
                    run_id: s.run_id.to_string(),
                    sandbox_id: s.sandbox.id.to_string(),
                    backend: s.sandbox.backend.clone(),
                };
                (labels, m)
            })
        })
        .collect();
    let mut text = render_prometheus(&labelled);
    text.push_str(&state.metrics.render(&by_state, &state.manager.stats()));
    // File transfers hold a few 256 KiB chunks each (see api/files.rs).
    let limit = state.limits.max_concurrent_transfers;
    let active = limit.saturating_sub(state.transfers.available_permits());
    let _ = std::fmt::Write::write_fmt(
        &mut text,
        format_args!(
            "# HELP agentbox_file_transfers File downloads and uploads in progress.\n# TYPE agentbox_file_transfers gauge\nagentbox_file_transfers {active}\n# HELP agentbox_file_transfers_limit Most file transfers at once (limits.max_concurrent_transfers).\n# TYPE agentbox_file_transfers_limit gauge\nagentbox_file_transfers_limit {limit}\n"
        ),
    );
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
