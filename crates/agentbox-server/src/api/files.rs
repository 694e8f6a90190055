//! File routes: raw download, raw or multipart upload, directory listing.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;

use super::ErrorResponses;
use super::extract::{ApiQuery, RunIdPath, check_declared_length, read_body};
use super::types::{
    FileEntryView, FileList, FileQuery, MultipartUpload, RunIdParam, WrittenFile, WrittenFiles, check_path,
};
use crate::AppState;
use crate::error::ApiError;

/// Downloads a file's bytes.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/files",
    operation_id = "readFile",
    tag = "files",
    params(RunIdParam, FileQuery),
    responses(
        (status = 200, description = "The file's content", content_type = "application/octet-stream", body = Vec<u8>),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn read_file(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    let path = q.checked()?;
    let data = state.manager.read_file(&run, path).await.map_err(ApiError::from_operation)?;
    let mut response = Body::from(data).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(response)
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// Writes a file: the raw body, or the `file` parts of a multipart form.
///
/// With multipart and a `path` ending in `/`, every `file` part is written under that directory by its file name;
/// otherwise exactly one `file` part is written to `path`. Missing parent directories are created.
#[utoipa::path(
    put,
    path = "/api/sandboxes/{run_id}/files",
    operation_id = "writeFile",
    tag = "files",
    params(RunIdParam, FileQuery),
    request_body(content(
        (Vec<u8> = "application/octet-stream"),
        (MultipartUpload = "multipart/form-data"),
    )),
    responses((status = 200, description = "Written", body = WrittenFiles), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn write_file(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiQuery(q): ApiQuery<FileQuery>,
    request: Request,
) -> Result<Json<WrittenFiles>, ApiError> {
    let target = q.checked()?.to_owned();
    state.manager.get(&run)?;
    let limit = state.limits.max_upload_bytes;
    let (parts, body) = request.into_parts();
    check_declared_length(&parts, limit)?;
    let request = Request::from_parts(parts, body);
    let mut files = Vec::new();
    if is_multipart(&request) {
        let (parts, body) = request.into_parts();
        let limited = Request::from_parts(parts, Body::new(Limited::new(body, limit)));
        let mut form = Multipart::from_request(limited, &state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart form: {}", e.body_text())))?;
        let into_dir = target.ends_with('/');
        let mut uploads = Vec::new();
        let read = async {
            while let Some(field) = form.next_field().await.map_err(multipart_error)? {
                if field.name() != Some("file") {
                    return Err(ApiError::bad_request(format!(
                        "unexpected form field {:?}: send the content in parts named `file`",
                        field.name().unwrap_or("")
                    )));
                }
                let name = field.file_name().map(str::to_owned);
                let data = field.bytes().await.map_err(multipart_error)?;
                uploads.push((name, data));
            }
            Ok(())
        };
        tokio::time::timeout(state.limits.body_read_timeout, read)
            .await
            .map_err(|_| ApiError::timeout("receiving the upload", state.limits.body_read_timeout))??;
        if uploads.is_empty() {
            return Err(ApiError::bad_request("the form has no `file` part"));
        }
        if !into_dir && uploads.len() > 1 {
            return Err(ApiError::bad_request("several `file` parts need a directory `path` ending in `/`"));
        }
        for (name, data) in uploads {
            let path = if into_dir {
                let name = name
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| ApiError::bad_request("a `file` part sent to a directory needs a file name"))?;
                if name.contains('/') || name == "." || name == ".." {
                    return Err(ApiError::bad_request(format!("file name {name:?} must be a single path component")));
                }
                format!("{target}{name}")
            } else {
                target.clone()
            };
            check_path(&path)?;
            let size = data.len() as u64;
            state.manager.write_file(&run, &path, data.to_vec()).await.map_err(ApiError::from_operation)?;
            files.push(WrittenFile { path, size });
        }
    } else {
        let data = read_body(&state, request.into_body(), limit).await?;
        let size = data.len() as u64;
        state.manager.write_file(&run, &target, data.to_vec()).await.map_err(ApiError::from_operation)?;
        files.push(WrittenFile { path: target, size });
    }
    Ok(Json(WrittenFiles { files }))
}

#[allow(clippy::needless_pass_by_value)] // used as a map_err function
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let text = e.body_text();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE || text.contains("limit") {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the upload is too large: {text}"),
        )
    } else {
        ApiError::bad_request(format!("invalid multipart form: {text}"))
    }
}

/// Lists a directory.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/files/list",
    operation_id = "listFiles",
    tag = "files",
    params(RunIdParam, FileQuery),
    responses((status = 200, description = "The directory's entries", body = FileList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_files(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Json<FileList>, ApiError> {
    let path = q.checked()?.to_owned();
    let entries = state
        .manager
        .list_dir(&run, &path)
        .await
        .map_err(ApiError::from_operation)?
        .into_iter()
        .map(FileEntryView::from)
        .collect();
    Ok(Json(FileList { path, entries }))
}
