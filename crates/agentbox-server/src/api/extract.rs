//! Extractors that answer malformed requests with the API's JSON errors and enforce body limits.

use agentbox_core::RunId;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// Reads a whole body, at most `limit` bytes, within the body read timeout.
///
/// # Errors
/// 413 past the limit, 408 when the client is too slow, 400 when the connection fails.
pub async fn read_body(state: &AppState, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, limit);
    match tokio::time::timeout(state.limits.body_read_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body was not received within {}",
                humantime::format_duration(state.limits.body_read_timeout)
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large(limit)),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
    }
}

fn content_length_over(parts: &Parts, limit: usize) -> bool {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// Checks a declared Content-Length against `limit` before reading.
///
/// # Errors
/// 413 when the declared length is over the limit.
pub fn check_declared_length(parts: &Parts, limit: usize) -> Result<(), ApiError> {
    if content_length_over(parts, limit) { Err(ApiError::too_large(limit)) } else { Ok(()) }
}

/// A JSON body, limited to the server's JSON size limit.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let limit = state.limits.max_json_body_bytes;
        check_declared_length(&parts, limit)?;
        let bytes = read_body(state, body, limit).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A query string, parsed strictly.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

/// The `{run_id}` path segment, validated.
#[derive(Debug)]
pub struct RunIdPath(pub RunId);

impl<S: Send + Sync> FromRequestParts<S> for RunIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid run id in the path: {}", e.body_text())))?;
        RunId::parse(&raw).map(RunIdPath).map_err(ApiError::from)
    }
}
