//! Extractors that answer malformed requests with the API's JSON errors and enforce body limits, and the
//! helpers request bodies share: the run id path parameter and strict number and presence rules.

use std::time::Duration;

use agentbox_core::RunId;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use utoipa::IntoParams;

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

/// Pattern of run ids (see [`agentbox_core::RunId::parse`]).
pub const RUN_ID_PATTERN: &str = r"^(?!create$)[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$";

/// The run id in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation only: handlers parse the run id with RunIdPath
pub struct RunIdParam {
    /// The run's id.
    #[param(pattern = r"^(?!create$)[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$", min_length = 1, max_length = 128)]
    run_id: String,
}

/// A JSON number that is a whole number, written as an integer or as a float like `16.0` (JSON Schema's integer).
fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        // 2^64 as f64; every whole float below it converts exactly.
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)] // whole, non-negative and below 2^64
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!("expected a non-negative whole number, got {n}"))),
    }
}

/// Deserializes a whole number (see `whole`) that may be absent but, when present, must not be `null`.
pub(crate) fn present_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d).map(Some)
}

/// [`present_u64`], within `u32`.
pub(crate) fn present_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = whole(d)?;
    u32::try_from(v).map(Some).map_err(|_| serde::de::Error::custom(format!("{v} is too large")))
}

/// Deserializes a whole number that may be absent or `null`.
pub(crate) fn nullable_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => whole(serde_json::Value::Number(n)).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Deserializes a field that may be absent but, when present, must not be `null`.
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A duration given in seconds, within `min..=max`.
///
/// # Errors
/// 400 naming `field` when `secs` is out of range.
pub(crate) fn seconds(field: &str, secs: f64, min: f64, max: f64) -> Result<Duration, ApiError> {
    if !(min..=max).contains(&secs) {
        return Err(ApiError::bad_request(format!("{field} must be between {min} and {max} seconds, got {secs}")));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}
