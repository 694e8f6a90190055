//! Volume routes: make one, list them, delete one. A sandbox mounts volumes at create (`volumes`).

use agentbox_core::VolumeInfo;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::ApiJson;
use super::snapshots::check_name;
use crate::AppState;
use crate::error::ApiError;

/// `POST /api/volumes`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    /// Its name, unique on the server: 1-200 letters, digits, `.`, `_` or `-`.
    #[schema(pattern = r"^[A-Za-z0-9._\-]{1,200}$", min_length = 1, max_length = 200, example = "workspace")]
    pub name: String,
    /// The most it may hold, in GiB (1 when absent).
    #[serde(default, deserialize_with = "super::extract::present_u64")]
    #[schema(nullable = false, minimum = 1, maximum = 16384)]
    pub size_gb: Option<u64>,
}

/// `GET /api/volumes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VolumeList {
    /// Every volume, by name.
    pub volumes: Vec<VolumeInfo>,
}

/// A volume's name in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VolumeName {
    /// The volume's name.
    #[param(pattern = r"^[A-Za-z0-9._\-]{1,200}$")]
    pub name: String,
}

/// Makes a volume.
#[utoipa::path(
    post,
    path = "/api/volumes",
    operation_id = "createVolume",
    tag = "volumes",
    request_body = VolumeRequest,
    responses((status = 201, description = "Made", body = VolumeInfo), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn create_volume(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VolumeRequest>,
) -> Result<Response, ApiError> {
    check_name(&body.name)?;
    let size_gb = body.size_gb.unwrap_or(1);
    if !(1..=16384).contains(&size_gb) {
        return Err(ApiError::bad_request(format!("size_gb must be between 1 and 16384, got {size_gb}")));
    }
    let volume = state.lifecycle.create_volume(&body.name, size_gb << 30).await.map_err(ApiError::from_operation)?;
    Ok((StatusCode::CREATED, Json(volume)).into_response())
}

/// Lists every volume.
#[utoipa::path(
    get,
    path = "/api/volumes",
    operation_id = "listVolumes",
    tag = "volumes",
    responses((status = 200, description = "The volumes", body = VolumeList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_volumes(State(state): State<AppState>) -> Result<Json<VolumeList>, ApiError> {
    let volumes = state.manager.list_volumes().await?;
    Ok(Json(VolumeList { volumes }))
}

/// Deletes a volume and its files; refused (409) while a sandbox has it mounted.
#[utoipa::path(
    delete,
    path = "/api/volumes/{name}",
    operation_id = "deleteVolume",
    tag = "volumes",
    params(VolumeName),
    responses((status = 204, description = "Deleted"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn delete_volume(State(state): State<AppState>, Path(p): Path<VolumeName>) -> Result<StatusCode, ApiError> {
    check_name(&p.name)?;
    state.lifecycle.delete_volume(&p.name).await?;
    Ok(StatusCode::NO_CONTENT)
}
