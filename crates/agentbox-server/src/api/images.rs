//! Image routes: the server's image store (docs/IMAGES.md), where sandbox roots come from. List it, pull into
//! it (progress as Server-Sent Events on request), remove an image, collect unused layers.

use std::convert::Infallible;
use std::time::Duration;

use agentbox_image::{ImageRecord, ImageRef, PullEvent, Store};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::exec::wants_events;
use super::extract::{ApiJson, ApiQuery};
use crate::AppState;
use crate::error::ApiError;

/// The longest image reference taken.
const MAX_REFERENCE: usize = 1024;
/// Progress events buffered for a slow reader of the event stream; later ones are dropped until it catches up
/// (the final event never is).
const PROGRESS_BUFFER: usize = 256;

/// An image in the store.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageView {
    /// The normalized reference (`docker.io/library/python:3.12-slim`).
    pub reference: String,
    /// The platform manifest's digest.
    pub manifest_digest: String,
    /// The config's digest (the image id).
    pub config_digest: String,
    /// The platform (`linux/amd64`).
    pub platform: String,
    /// Its layers.
    pub layers: usize,
    /// The layers' compressed sizes added up, in bytes.
    pub size_bytes: u64,
    /// Ports the image declares (`8080/tcp`).
    pub exposed_ports: Vec<String>,
    /// When it was pulled, in seconds since the Unix epoch.
    pub pulled_at: u64,
    /// When it was last pulled or used by a sandbox, in seconds since the Unix epoch.
    pub last_used: u64,
}

impl From<ImageRecord> for ImageView {
    fn from(r: ImageRecord) -> Self {
        Self {
            size_bytes: r.layers.iter().map(|l| l.size).sum(),
            layers: r.layers.len(),
            reference: r.reference,
            manifest_digest: r.manifest_digest.to_string(),
            config_digest: r.config_digest.to_string(),
            platform: r.platform,
            exposed_ports: r.config.exposed_ports,
            pulled_at: r.pulled_at,
            last_used: r.last_used,
        }
    }
}

/// `GET /api/images`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageList {
    /// Every image in the store.
    pub images: Vec<ImageView>,
}

/// `POST /api/images/pull`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The image (`python:3.12-slim`, `localhost:5000/team/agent:1`, `name@sha256:...`).
    #[schema(min_length = 1, max_length = 1024, example = "python:3.12-slim")]
    pub reference: String,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PullResult {
    /// The image, as stored.
    pub image: ImageView,
    /// The registry or mirror it came from (`store` when nothing was asked of a registry).
    pub source: String,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Layers unpacked by this pull.
    pub layers_unpacked: usize,
    /// Layers already in the store.
    pub layers_reused: usize,
}

/// An image named in the query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImageQuery {
    /// The image's reference.
    #[param(min_length = 1, max_length = 1024)]
    pub reference: String,
}

/// What a collection of unused layers did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PruneResult {
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Unpacked layers removed.
    pub layers_removed: usize,
    /// Images evicted to get under the store's budget, least recently used first.
    pub images_evicted: Vec<String>,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// The store's size afterwards, in bytes.
    pub bytes_after: u64,
}

fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.images.as_ref().ok_or_else(|| {
        ApiError::from(agentbox_core::Error::Unsupported(format!(
            "the {} backend has no image store on this server: images are the local backend's (run agentboxd as root \
             with the local backend)",
            state.manager.backend().name()
        )))
    })
}

/// A reference from the request: 422 when it is not one (the schema can only say "a string").
fn reference(s: &str) -> Result<ImageRef, ApiError> {
    if s.len() > MAX_REFERENCE {
        return Err(ApiError::bad_request(format!("reference: at most {MAX_REFERENCE} bytes")));
    }
    ImageRef::parse(s)
        .map_err(|e| ApiError::from_operation(agentbox_core::Error::InvalidRequest(format!("reference {s:?}: {e}"))))
}

fn store_failure(e: &agentbox_image::StoreError) -> ApiError {
    tracing::error!(error = %e, "the image store failed");
    ApiError::from(agentbox_core::Error::backend("the image store failed; see the server's log"))
}

/// Lists the images in the store.
#[utoipa::path(
    get,
    path = "/api/images",
    operation_id = "listImages",
    tag = "images",
    responses((status = 200, description = "The store's images", body = ImageList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_images(State(state): State<AppState>) -> Result<Json<ImageList>, ApiError> {
    let store = store(&state)?.clone();
    let records = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("listing images: {e}"))))?
        .map_err(|e| store_failure(&e))?;
    Ok(Json(ImageList { images: records.into_iter().map(ImageView::from).collect() }))
}

/// Pulls an image into the store (or makes sure it is complete there). With `Accept: text/event-stream` the
/// answer is a stream of progress events (`resolved`, `progress`, `reused`, `unpacked`), then one `done` event
/// with the result or one `error` event; the pull goes on to its end if the client leaves.
#[utoipa::path(
    post,
    path = "/api/images/pull",
    operation_id = "pullImage",
    tag = "images",
    request_body = PullRequest,
    responses(
        (status = 200, description = "Pulled (or already complete)", body = PullResult, content(
            (PullResult = "application/json"),
            (String = "text/event-stream"),
        )),
        ErrorResponses
    ),
    security(("bearer" = []))
)]
pub async fn pull_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PullRequest>,
) -> Result<Response, ApiError> {
    let image = reference(&body.reference)?;
    if agentbox_image::is_local(&image) {
        return Err(ApiError::from_operation(agentbox_core::Error::InvalidRequest(format!(
            "{image} names an image built on this host (a template), which is never pulled"
        ))));
    }
    let store = store(&state)?.clone();
    if !wants_events(&headers) {
        let (record, report) = store.pull(&image).await.map_err(|e| pull_failure(&e))?;
        return Ok(Json(pull_result(record, report)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(PROGRESS_BUFFER);
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |e: PullEvent| {
            let name = match &e {
                PullEvent::Resolved { .. } => "resolved",
                PullEvent::Progress { .. } => "progress",
                PullEvent::Reused { .. } => "reused",
                PullEvent::Unpacked { .. } => "unpacked",
            };
            if let Ok(event) = Event::default().event(name).json_data(&e) {
                // A reader that falls behind misses progress, never the end.
                let _ = progress_tx.try_send(event);
            }
        };
        let last = match store.pull_with_progress(&image, Some(&progress)).await {
            Ok((record, report)) => Event::default().event("done").json_data(pull_result(record, report)),
            Err(e) => {
                let err = pull_failure(&e);
                Event::default().event("error").json_data(err.body())
            }
        };
        if let Ok(last) = last {
            let _ = tx.send(last).await;
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

fn pull_result(record: ImageRecord, report: agentbox_image::PullReport) -> PullResult {
    PullResult {
        image: record.into(),
        source: report.source,
        bytes_downloaded: report.bytes_downloaded,
        layers_unpacked: report.layers_unpacked,
        layers_reused: report.layers_reused,
    }
}

/// A failed pull is the request's problem (a reference the registry can't serve, unreachable, unauthorized, or
/// content that fails its checks): 422 with the puller's message, which says what to check.
fn pull_failure(e: &agentbox_image::PullError) -> ApiError {
    ApiError::from_operation(agentbox_core::Error::InvalidRequest(e.to_string()))
}

/// Removes an image from the store (its layers go at the next prune unless another image uses them).
#[utoipa::path(
    delete,
    path = "/api/images",
    operation_id = "removeImage",
    tag = "images",
    params(ImageQuery),
    responses((status = 204, description = "Removed"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn remove_image(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ImageQuery>,
) -> Result<StatusCode, ApiError> {
    let image = reference(&q.reference)?;
    let store = store(&state)?.clone();
    let removed = tokio::task::spawn_blocking(move || store.remove(&image))
        .await
        .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("removing an image: {e}"))))?
        .map_err(|e| store_failure(&e))?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("image {} not found", q.reference)))
    }
}

/// Removes unreferenced blobs and layers, then evicts the least recently used images over the store's budget.
#[utoipa::path(
    post,
    path = "/api/images/prune",
    operation_id = "pruneImages",
    tag = "images",
    responses((status = 200, description = "Collected", body = PruneResult), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn prune_images(State(state): State<AppState>) -> Result<Json<PruneResult>, ApiError> {
    let store = store(&state)?.clone();
    let r = tokio::task::spawn_blocking(move || store.gc(&[]))
        .await
        .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("collecting layers: {e}"))))?
        .map_err(|e| store_failure(&e))?;
    Ok(Json(PruneResult {
        blobs_removed: r.blobs_removed,
        layers_removed: r.layers_removed,
        images_evicted: r.images_evicted,
        bytes_freed: r.bytes_freed,
        bytes_after: r.bytes_after,
    }))
}
