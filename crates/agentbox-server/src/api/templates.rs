//! Template routes: templates are images built from a Dockerfile on this server's host, each `RUN` in a sandbox
//! of its backend (docs/IMAGES.md). List them, build one, remove one.

use std::collections::BTreeMap;

use agentbox_template::{BuildReport, BuildRequest, TemplateError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::ApiQuery;
use crate::AppState;
use crate::error::ApiError;

/// The largest build context taken (an uncompressed tar).
pub const MAX_CONTEXT_BYTES: usize = 256 << 20;
/// The most files and directories a build context may hold.
const MAX_CONTEXT_ENTRIES: u64 = 100_000;
/// The largest Dockerfile taken.
const MAX_DOCKERFILE_BYTES: usize = 1 << 20;

/// A built template.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateView {
    /// Its name.
    pub name: String,
    /// Its image reference in the store (`agentbox.local/templates/NAME:latest`).
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// Its layers.
    pub layers: usize,
    /// When it was built, in seconds since the Unix epoch.
    pub built_at: u64,
}

/// `GET /api/templates`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateList {
    /// Every built template.
    pub templates: Vec<TemplateView>,
}

/// `POST /api/templates/{name}/build` with a JSON body: a Dockerfile without a build context (no `COPY`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildBody {
    /// The Dockerfile's text.
    #[schema(min_length = 1, max_length = 1048576, example = "FROM debian:bookworm\nRUN apt-get install -y jq\n")]
    pub dockerfile: String,
    /// `ARG` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Domains `RUN` steps may reach besides the package registries.
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// Address ranges `RUN` steps may reach although they are not public (a mirror on a private network).
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
}

/// With an `application/x-tar` body (the build context): where the Dockerfile is in it, and the build's settings.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildQuery {
    /// The Dockerfile's path in the context (default `Dockerfile`).
    #[param(max_length = 4096)]
    pub dockerfile: Option<String>,
    /// `ARG` values, `NAME=VALUE`, comma-separated.
    #[param(max_length = 65536)]
    pub build_args: Option<String>,
    /// Domains `RUN` steps may reach besides the package registries, comma-separated.
    #[param(max_length = 65536)]
    pub allow_domains: Option<String>,
    /// Address ranges `RUN` steps may reach although they are not public, comma-separated.
    #[param(max_length = 65536)]
    pub allow_cidrs: Option<String>,
}

/// One step of a build.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepView {
    /// The instruction.
    pub instruction: String,
    /// Its layer came from the cache.
    pub cached: bool,
    /// The layer it made (none for steps that only change the image's settings).
    pub layer: Option<String>,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// What a build made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BuildResult {
    /// The image's reference in the store; `template = "NAME"` at create starts a sandbox from it.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// Each step, in order.
    pub steps: Vec<StepView>,
    /// The whole build, in milliseconds.
    pub millis: u64,
}

impl From<BuildReport> for BuildResult {
    fn from(r: BuildReport) -> Self {
        Self {
            reference: r.reference,
            digest: r.digest,
            steps: r
                .steps
                .into_iter()
                .map(|s| StepView { instruction: s.instruction, cached: s.cached, layer: s.layer, millis: s.millis })
                .collect(),
            millis: r.millis,
        }
    }
}

/// A template's name in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TemplateName {
    /// The template's name: lowercase letters, digits, `.`, `_` and `-`.
    #[param(pattern = r"^[a-z0-9][a-z0-9._\-]{0,127}$")]
    pub name: String,
}

fn builder(state: &AppState) -> Result<&agentbox_template::Builder, ApiError> {
    state.templates.as_deref().ok_or_else(|| {
        ApiError::from(agentbox_core::Error::Unsupported(format!(
            "the {} backend builds no templates on this server: templates are the local backend's (run agentboxd as \
             root with the local backend)",
            state.manager.backend().name()
        )))
    })
}

/// What a build's failure is for the caller: its Dockerfile, its context or a step is the request's problem
/// (422, with the step's output); the store or a sandbox that can't start is the server's.
fn build_failure(e: TemplateError) -> ApiError {
    match e {
        e @ (TemplateError::Dockerfile(_)
        | TemplateError::Name { .. }
        | TemplateError::Context { .. }
        | TemplateError::StepFailed { .. }) => {
            ApiError::from_operation(agentbox_core::Error::InvalidRequest(e.to_string()))
        }
        TemplateError::Sandbox { source, .. } => ApiError::from_operation(source),
        e => {
            tracing::error!(error = %e, "a template build failed on the server");
            ApiError::from(agentbox_core::Error::backend(format!("the build failed on the server: {e}")))
        }
    }
}

fn unprocessable(message: String) -> ApiError {
    ApiError::from_operation(agentbox_core::Error::InvalidRequest(message))
}

/// Lists the built templates.
#[utoipa::path(
    get,
    path = "/api/templates",
    operation_id = "listTemplates",
    tag = "templates",
    responses((status = 200, description = "The built templates", body = TemplateList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_templates(State(state): State<AppState>) -> Result<Json<TemplateList>, ApiError> {
    let list = builder(&state)?.list().map_err(build_failure)?;
    Ok(Json(TemplateList {
        templates: list
            .into_iter()
            .map(|t| TemplateView {
                name: t.name,
                reference: t.reference,
                digest: t.digest,
                layers: t.layers,
                built_at: t.built_at,
            })
            .collect(),
    }))
}

/// Builds a template from a Dockerfile, each `RUN` in a sandbox (root inside, network to the package registries
/// and `allow_domains` only), each step a cached layer; answers when the build is done. The body is either JSON
/// (a Dockerfile without a build context) or an `application/x-tar` build context holding the Dockerfile, whose
/// files `COPY` takes.
#[utoipa::path(
    post,
    path = "/api/templates/{name}/build",
    operation_id = "buildTemplate",
    tag = "templates",
    params(TemplateName, BuildQuery),
    request_body(content(
        (BuildBody = "application/json"),
        (Vec<u8> = "application/x-tar"),
    )),
    responses((status = 200, description = "Built", body = BuildResult), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn build_template(
    State(state): State<AppState>,
    Path(p): Path<TemplateName>,
    ApiQuery(q): ApiQuery<BuildQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BuildResult>, ApiError> {
    let builder = builder(&state)?;
    let tar = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-tar")));
    let context = tempfile::Builder::new()
        .prefix(".agentbox-build-context-")
        .tempdir()
        .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("making a build context directory: {e}"))))?;
    let request = if tar {
        if body.len() > MAX_CONTEXT_BYTES {
            return Err(ApiError::too_large(MAX_CONTEXT_BYTES));
        }
        let dir = context.path().join("context");
        let digest = agentbox_image::Digest::of(&body);
        let budget = agentbox_image::unpack::Budget::new(MAX_CONTEXT_BYTES as u64 * 4, MAX_CONTEXT_ENTRIES);
        let unpacked = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || {
                agentbox_image::unpack::unpack_layer_from(std::io::Cursor::new(body), &digest, &digest, &dir, &budget)
            }
        })
        .await
        .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("unpacking the build context: {e}"))))?;
        unpacked.map_err(|e| unprocessable(format!("the build context is not a usable tar: {e}")))?;
        let root = dir;
        let name = q.dockerfile.as_deref().unwrap_or("Dockerfile");
        // Read as a sandbox's file is: the context is the client's, and may hold a link or a FIFO by that name.
        let dir = std::fs::File::open(&root)
            .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("opening the build context: {e}"))))?;
        let owner = agentbox_hostfs::Owner { uid: 0, gid: 0 };
        let file = agentbox_hostfs::Root::from_dir(dir.into(), "/", owner)
            .read(name, MAX_DOCKERFILE_BYTES as u64)
            .map_err(|e| unprocessable(format!("the Dockerfile {name:?} in the build context: {e}")))?;
        let dockerfile =
            String::from_utf8(file).map_err(|_| unprocessable(format!("the Dockerfile {name:?} is not UTF-8")))?;
        let mut request = BuildRequest::new(p.name.clone(), dockerfile, root);
        for arg in q.build_args.iter().flat_map(|a| a.split(',')).filter(|a| !a.is_empty()) {
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| ApiError::bad_request(format!("build_args: {arg:?} is not NAME=VALUE")))?;
            request.build_args.insert(k.to_owned(), v.to_owned());
        }
        let list = |v: &Option<String>| -> Vec<String> {
            v.iter().flat_map(|a| a.split(',')).filter(|a| !a.is_empty()).map(str::to_owned).collect()
        };
        request.allow_domains = list(&q.allow_domains);
        request.allow_cidrs = list(&q.allow_cidrs);
        request
    } else {
        let body: BuildBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not a build request: {e}")))?;
        if body.dockerfile.len() > MAX_DOCKERFILE_BYTES {
            return Err(ApiError::bad_request(format!("dockerfile: at most {MAX_DOCKERFILE_BYTES} bytes")));
        }
        let empty = context.path().join("empty");
        std::fs::create_dir(&empty)
            .map_err(|e| ApiError::from(agentbox_core::Error::backend(format!("making a build context: {e}"))))?;
        let mut request = BuildRequest::new(p.name.clone(), body.dockerfile, empty);
        request.build_args = body.build_args;
        request.allow_domains = body.allow_domains;
        request.allow_cidrs = body.allow_cidrs;
        request
    };
    let report = builder.build(&request).await.map_err(build_failure)?;
    Ok(Json(report.into()))
}

/// Removes a template (its layers go at the next image prune unless cached steps or images use them).
#[utoipa::path(
    delete,
    path = "/api/templates/{name}",
    operation_id = "removeTemplate",
    tag = "templates",
    params(TemplateName),
    responses((status = 204, description = "Removed"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn remove_template(
    State(state): State<AppState>,
    Path(p): Path<TemplateName>,
) -> Result<StatusCode, ApiError> {
    if builder(&state)?.remove(&p.name).map_err(build_failure)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("template {} not found", p.name)))
    }
}
