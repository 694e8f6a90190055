//! Sandbox lifecycle routes.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_config::{Preset, SandboxConfig, VolumeMount};
use agentbox_core::{CreateOptions, ManagedSandbox, ProcessInfo, SandboxState};
use agentbox_metrics::SandboxMetrics;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::{ApiJson, ApiQuery, RunIdParam, RunIdPath, seconds};
use super::network::NetworkSpec;
use crate::AppState;
use crate::error::ApiError;

/// Time limits of a new sandbox, in seconds.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// How long creating the sandbox may take.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, minimum = 1, maximum = 3600)]
    pub startup: Option<f64>,
    /// Default time limit of one execution.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, minimum = 0.1, maximum = 86400)]
    pub execution: Option<f64>,
    /// The sandbox is destroyed (or paused, or stopped: see `on_idle`) after being unused for this long.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, minimum = 1, maximum = 2592000)]
    pub idle: Option<f64>,
    /// What happens to it then: `destroy` (the default), `pause` (frozen, memory kept, until resumed) or `stop`
    /// (processes end, files kept on disk, until started). A backend that can't pause or stop destroys it.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, value_type = agentbox_config::IdleAction)]
    pub on_idle: Option<agentbox_config::IdleAction>,
}

/// `POST /api/sandboxes/create`: a run's sandbox, from a preset with optional overrides.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// The caller's id of the task; one sandbox per run id.
    #[schema(
        pattern = r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}$",
        min_length = 1,
        max_length = 128,
        example = "task-123"
    )]
    pub run_id: String,
    /// Preset to start from (`default` when absent).
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, value_type = Preset)]
    pub preset: Option<Preset>,
    /// The root filesystem: an OCI image reference (`python:3.12-slim`, `localhost:5000/team/agent:1`), pulled
    /// on first use, or `host` (the default) for the host's own system.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 512,
        pattern = r"^[^\s\-/.:@][^\s]*$",
        example = "python:3.12-slim"
    )]
    pub image: Option<String>,
    /// The root filesystem from a template built on this host (`agentbox template build -t NAME`); instead of
    /// `image`.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$", example = "data-science")]
    pub template: Option<String>,
    /// CPUs.
    #[serde(default, deserialize_with = "super::extract::present_u32")]
    #[schema(nullable = false, minimum = 1, maximum = 256)]
    pub cpu_count: Option<u32>,
    /// Memory limit in MiB.
    #[serde(default, deserialize_with = "super::extract::present_u64")]
    #[schema(nullable = false, minimum = 16, maximum = 1048576)]
    pub memory_mb: Option<u64>,
    /// Writable storage in GiB.
    #[serde(default, deserialize_with = "super::extract::present_u64")]
    #[schema(nullable = false, minimum = 1, maximum = 16384)]
    pub disk_gb: Option<u64>,
    /// Network access and egress policy (off when absent).
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub network: Option<NetworkSpec>,
    /// Packages to install at creation: `pip:NAME[==V]`, `npm:NAME[@V]`; a bare name means pip.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, example = json!(["pip:pandas"]))]
    pub pre_install_packages: Option<Vec<String>>,
    /// Environment variables every process in the sandbox sees.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub environment_vars: Option<BTreeMap<String, String>>,
    /// Time limits.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub timeouts: Option<TimeoutsSpec>,
    /// Cap on the captured stdout and stderr of one execution, each, in bytes.
    #[serde(default, deserialize_with = "super::extract::present_u64")]
    #[schema(nullable = false, minimum = 1024, maximum = 1073741824)]
    pub max_output_bytes: Option<u64>,
    /// Named volumes to mount (made with `POST /api/volumes`); they outlive the sandbox.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub volumes: Option<Vec<VolumeMount>>,
    /// Let commands run as root inside the sandbox (`"user": "root"` on an execution): root of the sandbox's own
    /// user namespace, for `apt-get install` in an image's root. Off by default.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    pub allow_root_inside: Option<bool>,
    /// What runs when the sandbox starts (created, started again, forked), as a background process listed with
    /// its processes: `"none"`, `"image"` (the image's Entrypoint and Cmd) or `{"command": [program, args...]}`.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(schema_with = agentbox_config::start_schema)]
    pub start: Option<agentbox_config::StartProcess>,
    /// Start from this snapshot's files (a fork of the sandbox it was taken from). The run must be new.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, pattern = r"^[A-Za-z0-9._\-]{1,200}$", example = "before-refactor")]
    pub from_snapshot: Option<String>,
}

impl CreateSandboxRequest {
    fn overrides_anything(&self) -> bool {
        self.image.is_some()
            || self.template.is_some()
            || self.allow_root_inside.is_some()
            || self.start.is_some()
            || self.volumes.is_some()
            || self.cpu_count.is_some()
            || self.memory_mb.is_some()
            || self.disk_gb.is_some()
            || self.network.is_some()
            || self.pre_install_packages.is_some()
            || self.environment_vars.is_some()
            || self.timeouts.is_some()
            || self.max_output_bytes.is_some()
    }

    /// The manager's options: the preset alone, or its config with the overrides applied.
    ///
    /// # Errors
    /// 400 for out-of-range timeouts.
    pub fn to_options(&self) -> Result<CreateOptions, ApiError> {
        if !self.overrides_anything() {
            return Ok(CreateOptions { preset: self.preset, config: None });
        }
        let mut c: SandboxConfig = self.preset.unwrap_or_default().config();
        let image = match (&self.image, &self.template) {
            (Some(_), Some(_)) => {
                // Each is valid alone; together they can't both be the root.
                return Err(ApiError::from_operation(agentbox_core::Error::InvalidRequest(
                    "give either `image` or `template`, not both".into(),
                )));
            }
            (Some(v), None) => {
                // The schema can't say what an image reference is: one it allows but that is none is unusable.
                if let Some(problem) = agentbox_config::image_reference_problem(v) {
                    return Err(ApiError::from_operation(agentbox_core::Error::InvalidRequest(problem)));
                }
                Some(v.clone())
            }
            (None, Some(t)) => Some(agentbox_config::template_image(t)),
            (None, None) => None,
        };
        if let Some(v) = &self.volumes {
            let home = c.security.run_as.home();
            let mut seen = std::collections::BTreeSet::new();
            for (i, m) in v.iter().enumerate() {
                let problem = agentbox_config::mount_path_problem(&m.mount_path, &home)
                    .or_else(|| (!seen.insert(m.mount_path.as_str())).then(|| "is used by another volume".to_owned()));
                if let Some(problem) = problem {
                    return Err(ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable",
                        format!("volumes[{i}].mount_path {problem}"),
                    ));
                }
            }
        }
        let t = self.timeouts.clone().unwrap_or_default();
        let overrides = agentbox_config::ConfigOverrides {
            image,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            network: self.network.clone().map(|n| agentbox_config::NetworkOverride::Replace(Box::new(n.into_config()))),
            volumes: self.volumes.clone(),
            startup_timeout: t.startup.map(|s| seconds("timeouts.startup", s, 1.0, 3600.0)).transpose()?,
            execution_timeout: t.execution.map(|s| seconds("timeouts.execution", s, 0.1, 86_400.0)).transpose()?,
            idle_timeout: t.idle.map(|s| seconds("timeouts.idle", s, 1.0, 2_592_000.0)).transpose()?,
            on_idle: t.on_idle,
            environment_variables: self.environment_vars.clone(),
            pre_install_packages: self.pre_install_packages.clone(),
            max_output_bytes: self.max_output_bytes,
            allow_root_inside: self.allow_root_inside,
            start: self.start.clone(),
        };
        overrides.apply(&mut c);
        // The schema can't say that a command needs a program, or that "image" needs an image.
        if let Some((path, problem)) = agentbox_config::start_problem(&c) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!("{path}: {problem}"),
            ));
        }
        Ok(CreateOptions { preset: self.preset, config: Some(c) })
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A run's sandbox.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxView {
    /// The run.
    pub run_id: String,
    /// The backend's id of the sandbox.
    pub sandbox_id: String,
    /// Backend name (`local`, `e2b`).
    pub backend: String,
    /// Lifecycle state.
    pub state: SandboxState,
    /// The preset it started from, if any.
    pub preset: Option<String>,
    /// The effective configuration.
    pub config: SandboxConfig,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Executions run.
    pub execution_count: u64,
    /// Exit code of the last execution.
    pub last_exit_code: Option<i32>,
    /// Whether the last health probe passed.
    pub healthy: bool,
    /// Consecutive failed health probes.
    pub health_check_failures: u32,
}

impl From<ManagedSandbox> for SandboxView {
    fn from(m: ManagedSandbox) -> Self {
        Self {
            run_id: m.run_id.to_string(),
            sandbox_id: m.sandbox.id.to_string(),
            backend: m.sandbox.backend,
            state: m.state,
            preset: m.preset.map(|p| p.name().to_owned()),
            config: m.config,
            created_at: rfc3339(m.sandbox.created_at_ms),
            created_at_ms: m.sandbox.created_at_ms,
            execution_count: m.execution_count,
            last_exit_code: m.last_exit_code,
            healthy: m.healthy,
            health_check_failures: m.health_check_failures,
        }
    }
}

/// `GET /api/sandboxes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    /// The sandboxes, by run id.
    pub sandboxes: Vec<SandboxView>,
}

/// Filter of `GET /api/sandboxes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only sandboxes in this state.
    #[param(value_type = Option<SandboxState>, nullable = false)]
    pub state: Option<SandboxState>,
}

/// `GET /api/sandboxes/{run_id}/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxHealth {
    /// Whether the probe just made passed.
    pub healthy: bool,
    /// Consecutive failed probes.
    pub health_check_failures: u32,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Time of the last probe (RFC 3339).
    pub last_check: Option<String>,
}

impl From<&ManagedSandbox> for SandboxHealth {
    fn from(m: &ManagedSandbox) -> Self {
        Self {
            healthy: m.healthy,
            health_check_failures: m.health_check_failures,
            state: m.state,
            last_check: m.last_check_ms.map(rfc3339),
        }
    }
}

/// `GET /api/sandboxes/{run_id}/processes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessList {
    /// The background processes, by pid.
    pub processes: Vec<ProcessInfo>,
}

/// The metrics as served: a value the sampler could not compute (NaN, infinite) is 0, which JSON can carry.
fn finite(mut m: SandboxMetrics) -> SandboxMetrics {
    for v in [
        &mut m.cpu_usage_percent,
        &mut m.cpu_time_seconds,
        &mut m.memory_used_mb,
        &mut m.memory_peak_mb,
        &mut m.disk_used_gb,
    ] {
        if !v.is_finite() {
            *v = 0.0;
        }
    }
    m
}

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
    let wanted = q.state;
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
    responses((status = 200, description = "Resource use and counters", body = SandboxMetrics), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn sandbox_metrics(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
) -> Result<Json<SandboxMetrics>, ApiError> {
    Ok(Json(finite(state.manager.metrics(&run).await?)))
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
    Ok(Json(ProcessList { processes }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_layer_overrides_on_the_preset() {
        let r: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
            "run_id": "t", "preset": "lightweight", "memory_mb": 300, "timeouts": {"execution": 1.5}
        }))
        .unwrap();
        let c = r.to_options().unwrap().config.unwrap();
        assert_eq!((c.cpu_count, c.memory_mb, c.execution_timeout), (1, 300, Duration::from_millis(1500)));
        let bare: CreateSandboxRequest = serde_json::from_value(serde_json::json!({"run_id": "t"})).unwrap();
        assert_eq!(bare.to_options().unwrap(), CreateOptions::default());
        assert!(
            serde_json::from_value::<CreateSandboxRequest>(serde_json::json!({"run_id": "t", "memory_mb": null}))
                .is_err()
        );
        assert!(serde_json::from_value::<CreateSandboxRequest>(serde_json::json!({"run_id": "t", "mem": 1})).is_err());
    }

    #[test]
    fn metrics_are_served_as_sampled_with_non_finite_values_as_zero() {
        let m = SandboxMetrics { cpu_usage_percent: f64::NAN, memory_used_mb: 12.5, ..SandboxMetrics::default() };
        let json = serde_json::to_value(finite(m)).unwrap();
        assert_eq!((json["cpu_usage_percent"].as_f64(), json["memory_used_mb"].as_f64()), (Some(0.0), Some(12.5)));
        assert_eq!(json["last_exit_code"], serde_json::Value::Null);
    }
}
