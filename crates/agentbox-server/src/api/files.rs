//! File routes: raw download, raw or multipart upload, directory listing.

use agentbox_core::{CHUNK_BYTES, FileEntry, FileUpload, RunId};
use axum::Json;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyStream, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::{ApiQuery, RunIdParam, RunIdPath, check_declared_length};
use crate::AppState;
use crate::error::ApiError;

/// Pattern of file paths accepted by the file routes: no NUL, no `..` component.
pub const FILE_PATH_PATTERN: &str = r"^(?!([\s\S]*/)?\.\.(/[\s\S]*)?(?![\s\S]))[^\x00]+$";
/// Longest file path accepted, in characters.
pub const MAX_PATH_LEN: usize = 4096;

/// The file path in a query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// A path inside the sandbox; relative paths start at the home directory. No `..` components.
    #[param(min_length = 1, max_length = 4096, pattern = r"^(?!([\s\S]*/)?\.\.(/[\s\S]*)?(?![\s\S]))[^\x00]+$")]
    pub path: String,
}

impl FileQuery {
    /// The path, checked for traversal, NUL bytes and length.
    ///
    /// # Errors
    /// 400 saying what is wrong.
    pub fn checked(&self) -> Result<&str, ApiError> {
        check_path(&self.path)?;
        Ok(&self.path)
    }
}

/// Refuses empty, overlong, NUL-containing and `..`-containing paths.
///
/// # Errors
/// 400 saying what is wrong.
pub fn check_path(p: &str) -> Result<(), ApiError> {
    if p.is_empty() {
        return Err(ApiError::bad_request("path is empty: give a path inside the sandbox"));
    }
    if p.chars().count() > MAX_PATH_LEN {
        return Err(ApiError::bad_request(format!("path is longer than {MAX_PATH_LEN} characters")));
    }
    if p.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(ApiError::bad_request(
            "path must not contain `..` components; give the path inside the sandbox directly",
        ));
    }
    Ok(())
}

/// `GET /api/sandboxes/{run_id}/files/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// The directory listed, as given.
    pub path: String,
    /// Its entries.
    pub entries: Vec<FileEntry>,
}

/// One written file.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFile {
    /// Its path inside the sandbox.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// `PUT /api/sandboxes/{run_id}/files`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFiles {
    /// The files written.
    pub files: Vec<WrittenFile>,
}

/// A multipart upload: one or more `file` parts.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only
pub struct MultipartUpload {
    /// The file's content. With a `path` ending in `/`, several parts may be sent, each written under it by its file name.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

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
    let permit = transfer_permit(&state)?;
    let stream = state.manager.read_file_stream(&run, path).await.map_err(ApiError::from_operation)?;
    let size = stream.size;
    // The body pulls one chunk at a time: a slow client slows the sandbox read, and memory stays at a few chunks
    // whatever the file's size. The permit is held until the body is done.
    let chunks = futures_util::stream::unfold((stream.into_receiver(), permit), |(mut rx, permit)| async move {
        let chunk = rx.recv().await?;
        Some((chunk.map(Bytes::from).map_err(|e| std::io::Error::other(e.to_string())), (rx, permit)))
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// A slot among `limits.max_concurrent_transfers`, or 429.
fn transfer_permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.transfers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_transfers",
            format!(
                "{} file transfers are in progress, the server's limit; retry when one has finished",
                state.limits.max_concurrent_transfers
            ),
        )
        .with_retry_after(1)
    })
}

/// Streams a body's bytes into a sandbox file, in chunks of up to [`CHUNK_BYTES`], within the body read timeout.
/// Returns the bytes written. Nothing is left in the sandbox when the body fails, times out or is too large.
async fn stream_into<S>(state: &AppState, run: &RunId, path: &str, body: S, limit: usize) -> Result<u64, ApiError>
where
    S: futures_util::Stream<Item = Result<Bytes, ApiError>> + Send,
{
    let (tx, upload) = FileUpload::channel();
    let write = state.manager.write_file_stream(run, path, upload, limit as u64);
    let timeout = state.limits.body_read_timeout;
    let feed = async move {
        let read = async {
            futures_util::pin_mut!(body);
            let mut pending = Vec::new();
            while let Some(frame) = body.next().await {
                let bytes = frame?;
                pending.extend_from_slice(&bytes);
                if pending.len() >= CHUNK_BYTES && tx.send(Ok(std::mem::take(&mut pending))).await.is_err() {
                    return Ok(());
                }
            }
            if !pending.is_empty() {
                let _ = tx.send(Ok(pending)).await;
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::timeout("receiving the upload", timeout)),
        };
        if outcome.is_err() {
            // Abandons the upload: the backend removes what it wrote.
            let _ =
                tx.send(Err(agentbox_core::Error::InvalidRequest("the upload was not received whole".into()))).await;
        }
        outcome
    };
    let (written, fed) = tokio::join!(write, feed);
    fed?;
    written.map_err(ApiError::from_operation)
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
    let _permit = transfer_permit(&state)?;
    let request = Request::from_parts(parts, body);
    let mut files = Vec::new();
    if is_multipart(&request) {
        let (parts, body) = request.into_parts();
        let limited = Request::from_parts(parts, Body::new(Limited::new(body, limit)));
        let mut form = Multipart::from_request(limited, &state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart form: {}", e.body_text())))?;
        let into_dir = target.ends_with('/');
        // Each part is streamed into its file as it arrives; the body read timeout covers the whole form.
        let deadline = tokio::time::Instant::now() + state.limits.body_read_timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, form.next_field())
                .await
                .map_err(|_| ApiError::timeout("receiving the upload", state.limits.body_read_timeout))?;
            let Some(field) = next.map_err(multipart_error)? else { break };
            if field.name() != Some("file") {
                return Err(ApiError::bad_request(format!(
                    "unexpected form field {:?}: send the content in parts named `file`",
                    field.name().unwrap_or("")
                )));
            }
            if !into_dir && !files.is_empty() {
                return Err(ApiError::bad_request("several `file` parts need a directory `path` ending in `/`"));
            }
            let path = if into_dir {
                let name = field
                    .file_name()
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
            let chunks = futures_util::stream::unfold(field, |mut field| async move {
                match field.chunk().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), field)),
                    Ok(None) => None,
                    Err(e) => Some((Err(multipart_error(e)), field)),
                }
            });
            let size = stream_into(&state, &run, &path, chunks, limit).await?;
            files.push(WrittenFile { path, size });
        }
        if files.is_empty() {
            return Err(ApiError::bad_request("the form has no `file` part"));
        }
    } else {
        let body = Limited::new(request.into_body(), limit);
        let size = stream_into(
            &state,
            &run,
            &target,
            BodyStream::new(body).filter_map(|frame| async move {
                match frame {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Some(Err(ApiError::too_large(limit))),
                    Err(e) => Some(Err(ApiError::bad_request(format!("cannot read the upload: {e}")))),
                }
            }),
            limit,
        )
        .await?;
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
    let entries = state.manager.list_dir(&run, &path).await.map_err(ApiError::from_operation)?;
    Ok(Json(FileList { path, entries }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_traversal_or_nul_are_refused() {
        for bad in ["", "..", "../etc/passwd", "a/../../b", "/home/user/..", "a\0b"] {
            assert_eq!(check_path(bad).unwrap_err().status(), 400, "{bad:?}");
        }
        for good in ["/home/user/a.txt", "a/b", "...", "a..b", "/tmp/.hidden"] {
            check_path(good).unwrap();
        }
        assert!(check_path(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
        check_path(&"é".repeat(MAX_PATH_LEN)).unwrap();
    }
}
