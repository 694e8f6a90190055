//! Snapshot routes: take one of a run's sandbox, list them, delete one, put a run back to one. A fork is a
//! create with `from_snapshot`.

use agentbox_core::SnapshotInfo;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::{ApiJson, RunIdParam, RunIdPath};
use super::sandboxes::SandboxView;
use crate::AppState;
use crate::error::ApiError;

/// `POST /api/sandboxes/{run_id}/snapshots`: the snapshot to take.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Its name, unique on the server.
    #[schema(pattern = r"^[A-Za-z0-9._\-]{1,200}$", min_length = 1, max_length = 200, example = "before-refactor")]
    pub name: String,
}

/// `GET /api/snapshots`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotList {
    /// Every snapshot, by name.
    pub snapshots: Vec<SnapshotInfo>,
}

/// Refuses a snapshot name that is not 1 to 200 letters, digits, `.`, `_` or `-` (and not `.` or `..`).
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    let well_formed =
        !name.is_empty() && name.len() <= 200 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let message = format!("snapshot name {name:?} is invalid: use 1 to 200 letters, digits, '.', '_' and '-'");
    if !well_formed {
        Err(ApiError::bad_request(message))
    } else if name == "." || name == ".." {
        // The schema's characters, but a name that would be a directory itself: unusable rather than malformed.
        Err(ApiError::from_operation(agentbox_core::Error::InvalidRequest(format!("{message}, other than . and .."))))
    } else {
        Ok(())
    }
}

/// Takes a read-only snapshot of the run's files (its home) while it runs. Process memory is not included.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/snapshots",
    operation_id = "createSnapshot",
    tag = "snapshots",
    params(RunIdParam),
    request_body = SnapshotRequest,
    responses((status = 201, description = "Taken", body = SnapshotInfo), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn create_snapshot(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiJson(body): ApiJson<SnapshotRequest>,
) -> Result<Response, ApiError> {
    check_name(&body.name)?;
    let snapshot = state.lifecycle.snapshot(&run, &body.name).await.map_err(ApiError::from_operation)?;
    Ok((StatusCode::CREATED, Json(snapshot)).into_response())
}

/// Puts the run's files back to a snapshot: a new sandbox, with the run's configuration, starts from the
/// snapshot's files and takes the run's place; the old sandbox and its processes are gone.
#[utoipa::path(
    post,
    path = "/api/sandboxes/{run_id}/restore",
    operation_id = "restoreSandbox",
    tag = "snapshots",
    params(RunIdParam),
    request_body = SnapshotRequest,
    responses((status = 200, description = "Restored", body = SandboxView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn restore_sandbox(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiJson(body): ApiJson<SnapshotRequest>,
) -> Result<Json<SandboxView>, ApiError> {
    check_name(&body.name)?;
    let restored = state.lifecycle.restore(&run, &body.name).await.map_err(ApiError::from_operation)?;
    Ok(Json(restored.into()))
}

/// Lists every snapshot.
#[utoipa::path(
    get,
    path = "/api/snapshots",
    operation_id = "listSnapshots",
    tag = "snapshots",
    responses((status = 200, description = "The snapshots", body = SnapshotList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_snapshots(State(state): State<AppState>) -> Result<Json<SnapshotList>, ApiError> {
    let snapshots = state.manager.list_snapshots().await?;
    Ok(Json(SnapshotList { snapshots }))
}

/// A snapshot's name in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SnapshotName {
    /// The snapshot's name.
    #[param(pattern = r"^[A-Za-z0-9._\-]{1,200}$")]
    pub name: String,
}

/// Deletes a snapshot; sandboxes forked from it keep their files.
#[utoipa::path(
    delete,
    path = "/api/snapshots/{name}",
    operation_id = "deleteSnapshot",
    tag = "snapshots",
    params(SnapshotName),
    responses((status = 204, description = "Deleted"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    Path(p): Path<SnapshotName>,
) -> Result<StatusCode, ApiError> {
    check_name(&p.name)?;
    state.lifecycle.delete_snapshot(&p.name).await?;
    Ok(StatusCode::NO_CONTENT)
}
