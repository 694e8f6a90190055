//! Sandbox lifecycle routes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::ErrorResponses;
use super::extract::{ApiJson, ApiQuery, RunIdPath};
use super::types::{
    CreateSandboxRequest, ListQuery, MetricsView, ProcessList, ProcessView, RunIdParam, SandboxHealth, SandboxList,
    SandboxView,
};
use crate::AppState;
use crate::error::ApiError;

/// Creates the run's sandbox, or returns the one it has.
#[utoipa::path(
    post,
    path = "/api/sandboxes/create",
    operation_id = "createSandbox",
    tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "Created", body = SandboxView),
        (status = 200, description = "The run already had a sandbox with this (or no) configuration", body = SandboxView),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn create_sandbox(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateSandboxRequest>,
) -> Result<Response, ApiError> {
    let run = agentbox_core::RunId::parse(&body.run_id)?;
    if run.as_str() == "create" {
        return Err(ApiError::bad_request("run id \"create\" is reserved by the API's paths; choose another"));
    }
    let options = body.to_options()?;
    let limit = state.limits.create_timeout;
    if let Some(name) = &body.from_snapshot {
        super::snapshots::check_name(name)?;
    }
    let create = state.lifecycle.create_from(&run, options, body.from_snapshot.as_deref());
    let (sandbox, created) = tokio::time::timeout(limit, create)
        .await
        .map_err(|_| ApiError::timeout("creating the sandbox", limit))?
        .map_err(create_error)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(SandboxView::from(sandbox))).into_response())
}

/// Lists sandboxes, optionally only those in one state.
#[utoipa::path(
    get,
    path = "/api/sandboxes",
    operation_id = "listSandboxes",
    tag = "sandboxes",
    params(ListQuery),
    responses((status = 200, description = "The sandboxes", body = SandboxList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_sandboxes(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Json<SandboxList> {
    let wanted = q.state.map(super::types::StateName::state);
    let sandboxes = state
        .manager
        .list()
        .into_iter()
        .filter(|s| wanted.is_none_or(|w| s.state == w))
        .map(SandboxView::from)
        .collect();
    Json(SandboxList { sandboxes })
}

/// One run's sandbox.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}",
    operation_id = "getSandbox",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "The sandbox", body = SandboxView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn get_sandbox(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(state.manager.get(&run)?.into()))
}

/// Pauses the run's sandbox: every process is frozen where it is (no CPU; memory and files stay), executions
/// answer 409 until it is resumed, and its files can still be read and written.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/pause",
    operation_id = "pauseSandbox",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "Paused (or already paused)", body = SandboxView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn pause_sandbox(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(state.manager.pause(&run).await?.into()))
}

/// Resumes the run's paused sandbox: its processes continue where they stopped.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/resume",
    operation_id = "resumeSandbox",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "Running again", body = SandboxView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn resume_sandbox(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(state.manager.resume(&run).await?.into()))
}

/// Stops the run's sandbox: its processes end and its files (home, writable root, volumes) stay on disk, where
/// they survive a restart of agentboxd and of the host. The run stays, `stopped`, using no memory or CPU;
/// executions answer 409 until it is started. Needs disk-backed storage (501 without).
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/stop",
    operation_id = "stopSandbox",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "Stopped (or already stopped)", body = SandboxView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn stop_sandbox(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(state.lifecycle.stop(&run).await?.into()))
}

/// Starts the run's stopped sandbox: a fresh sandbox with the run's configuration boots on its files (no
/// process from before the stop survives). Starting a running run returns it as it is.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/start",
    operation_id = "startSandbox",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "Running", body = SandboxView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn start_sandbox(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(state.lifecycle.start(&run).await?.into()))
}

/// Destroys the run's sandbox.
#[utoipa::path(
    delete,
    path = "/api/sandboxes/{run_id}",
    operation_id = "deleteSandbox",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 204, description = "Destroyed"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn delete_sandbox(State(state): State<AppState>, RunIdPath(run): RunIdPath) -> Result<StatusCode, ApiError> {
    state.lifecycle.destroy(&run).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Samples the sandbox's resource use.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/metrics",
    operation_id = "getSandboxMetrics",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "Resource use and counters", body = MetricsView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn sandbox_metrics(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<MetricsView>, ApiError> {
    Ok(Json(state.manager.metrics(&run).await?.into()))
}

/// The sandbox's background processes (started by the `shell` tool with `background`, or the E2B API), each
/// with the file inside the sandbox its output goes to (read it with `GET /files`).
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/processes",
    operation_id = "listSandboxProcesses",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "The background processes", body = ProcessList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_processes(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<ProcessList>, ApiError> {
    let processes = state.manager.list_processes(&run).await?;
    Ok(Json(ProcessList { processes: processes.into_iter().map(ProcessView::from).collect() }))
}

/// Probes the sandbox now.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/health",
    operation_id = "getSandboxHealth",
    tag = "sandboxes",
    params(RunIdParam),
    responses((status = 200, description = "The probe's outcome", body = SandboxHealth), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn sandbox_health(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxHealth>, ApiError> {
    let checked = state.lifecycle.check_health(&run).await?;
    Ok(Json(SandboxHealth::from(&checked)))
}

/// Package installs that fail (backends say "<manager> install failed (exit N)") are the request's problem (a missing package, or no network to fetch it), not the server's.
fn create_error(e: agentbox_core::Error) -> ApiError {
    match e {
        agentbox_core::Error::Backend { message: m, .. } if m.contains("install failed (exit") => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "package_install_failed",
            format!(
                "{m}\ncheck the package names, and that the sandbox's network policy lets the installer reach its index"
            ),
        ),
        // A request the backend can't carry out as asked (an image that can't be pulled, say) is well-formed.
        e => ApiError::from_operation(e),
    }
}
