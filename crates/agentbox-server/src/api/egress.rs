//! Secrets and the egress audit log (see docs/SECRETS.md): the server's secrets, which are set but
//! never read back, and each run's log of connections and inspected requests.

use agentbox_config::SecretRule;
use agentbox_core::egress::{EgressDecision, EgressPage, EgressQuery, SecretInfo, SecretSource, SecretValue};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ErrorResponses;
use super::extract::RunIdParam;
use super::extract::{ApiJson, ApiQuery, RunIdPath};
use crate::AppState;
use crate::error::ApiError;

/// A secret the egress proxy adds to requests to chosen hosts (`network.secrets`); its value is
/// defined on the server under the same name (`PUT /api/secrets/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRuleSpec {
    /// The secret's name: upper-case letters, digits and `_`.
    #[schema(pattern = r"^[A-Z_][A-Z0-9_]{0,63}$", example = "GITHUB_TOKEN")]
    pub name: String,
    /// Hosts that may receive it, optionally with a port (`api.github.com`, `*.openai.com:443`).
    #[schema(min_items = 1, value_type = Vec<SecretHost>, example = json!(["api.github.com:443"]))]
    pub hosts: Vec<String>,
    /// A header set on requests to those hosts, `Name: template` with `{value}` for the secret.
    #[serde(default, deserialize_with = "super::extract::present", skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = false,
        pattern = r"^[A-Za-z0-9_\-]+:[ -~]*\{value\}[ -~]*$",
        example = "Authorization: Bearer {value}"
    )]
    pub header: Option<String>,
    /// Whether the sandbox sees `AGENTBOX_SECRET_<NAME>`, a placeholder the proxy replaces in
    /// requests to those hosts.
    #[serde(default)]
    pub placeholder: bool,
    /// Whether the placeholder is replaced in request bodies too.
    #[serde(default)]
    pub replace_in_body: bool,
}

/// Pattern of a host that may receive a secret, or be inspected: a name, `*.` and a name, or an IPv4 address,
/// optionally with `:PORT`.
const SECRET_HOST_PATTERN: &str = r"^((\*\.)?[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)*\.?)(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$";

/// Documentation only: hosts are strings, checked by the configuration's validation.
pub struct SecretHost;

impl utoipa::PartialSchema for SecretHost {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A host, optionally with a port (`api.github.com:443`); at most 253 characters."))
            .min_length(Some(1))
            .max_length(Some(253))
            .pattern(Some(SECRET_HOST_PATTERN))
            .into()
    }
}

impl ToSchema for SecretHost {}

impl From<SecretRuleSpec> for SecretRule {
    fn from(s: SecretRuleSpec) -> Self {
        Self {
            name: s.name,
            hosts: s.hosts,
            header: s.header,
            placeholder: s.placeholder,
            replace_in_body: s.replace_in_body,
        }
    }
}

impl From<SecretRule> for SecretRuleSpec {
    fn from(s: SecretRule) -> Self {
        Self {
            name: s.name,
            hosts: s.hosts,
            header: s.header,
            placeholder: s.placeholder,
            replace_in_body: s.replace_in_body,
        }
    }
}

/// A secret's name in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecretName {
    /// The secret's name.
    #[param(pattern = r"^[A-Z_][A-Z0-9_]{0,63}$")]
    pub name: String,
}

/// Where a secret's value comes from: exactly one of `value`, `env` and `file`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SecretSourceSpec {
    /// The value itself.
    Value(ValueSource),
    /// A variable of the server's environment.
    Env(EnvSource),
    /// A file on the server's host.
    File(FileSource),
}

/// The value itself (kept in the server's memory only, never returned).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueSource {
    /// The value: visible ASCII and spaces.
    #[schema(min_length = 1, max_length = 16384, pattern = "^[ -~]+$")]
    pub value: String,
}

/// A variable of the server's environment, read at each use.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSource {
    /// The variable's name.
    #[schema(min_length = 1, max_length = 255)]
    pub env: String,
}

/// A file on the server's host, read at each use.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// The file's absolute path.
    #[schema(min_length = 1, max_length = 4096, pattern = "^/")]
    pub file: String,
}

impl std::fmt::Debug for SecretSourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::Env(e) => write!(f, "{e:?}"),
            Self::File(p) => write!(f, "{p:?}"),
        }
    }
}

impl SecretSourceSpec {
    fn into_source(self) -> Result<SecretSource, ApiError> {
        match self {
            Self::Value(v) => Ok(SecretSource::Value(SecretValue::new(v.value))),
            Self::Env(e) if !e.env.is_empty() && e.env.len() <= 255 => Ok(SecretSource::Env(e.env)),
            Self::File(p) if p.file.starts_with('/') && p.file.len() <= 4096 => Ok(SecretSource::File(p.file.into())),
            Self::Env(_) => Err(ApiError::bad_request("env: must be 1 to 255 characters")),
            Self::File(_) => Err(ApiError::bad_request("file: must be an absolute path on the server's host")),
        }
    }
}

/// `GET /api/secrets`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SecretList {
    /// The server's secrets, by name.
    pub secrets: Vec<SecretInfo>,
}

fn store(state: &AppState) -> Result<agentbox_core::egress::SecretStore, ApiError> {
    state.manager.backend().secrets().ok_or_else(|| {
        agentbox_core::Error::Unsupported("this server's backend can't inject secrets (use the local backend)".into())
            .into()
    })
}

fn check_secret_name(name: &str) -> Result<(), ApiError> {
    if agentbox_config::egress::valid_secret_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "secret name {name:?} is invalid: use 1 to 64 upper-case letters, digits and '_', not starting with a digit"
        )))
    }
}

/// Lists the server's secrets: names and kinds of source, never values.
#[utoipa::path(
    get,
    path = "/api/secrets",
    operation_id = "listSecrets",
    tag = "secrets",
    responses((status = 200, description = "The secrets", body = SecretList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_secrets(State(state): State<AppState>) -> Result<Json<SecretList>, ApiError> {
    let secrets = store(&state)?.list();
    Ok(Json(SecretList { secrets }))
}

/// Defines or replaces a secret. The next request of every sandbox that names it uses the new value;
/// the value is never returned by any route.
#[utoipa::path(
    put,
    path = "/api/secrets/{name}",
    operation_id = "setSecret",
    tag = "secrets",
    params(SecretName),
    request_body = SecretSourceSpec,
    responses((status = 200, description = "Set", body = SecretInfo), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn set_secret(
    State(state): State<AppState>,
    Path(SecretName { name }): Path<SecretName>,
    ApiJson(body): ApiJson<SecretSourceSpec>,
) -> Result<Json<SecretInfo>, ApiError> {
    check_secret_name(&name)?;
    let source = body.into_source()?;
    let kind = source.kind().to_owned();
    store(&state)?.set(&name, source).map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::info!(secret = %name, source = %kind, "secret set");
    Ok(Json(SecretInfo { name, source: kind }))
}

/// Deletes a secret; requests that need it are refused from then on.
#[utoipa::path(
    delete,
    path = "/api/secrets/{name}",
    operation_id = "deleteSecret",
    tag = "secrets",
    params(SecretName),
    responses((status = 204, description = "Deleted"), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    Path(SecretName { name }): Path<SecretName>,
) -> Result<Response, ApiError> {
    check_secret_name(&name)?;
    if !store(&state)?.remove(&name) {
        return Err(ApiError::not_found(format!("no secret {name}")));
    }
    tracing::info!(secret = %name, "secret deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Which records of the egress log to return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EgressParams {
    /// Only records after this `seq` (the `next` of the previous page).
    #[param(nullable = false, minimum = 0, maximum = 9223372036854775807_i64)]
    pub after: Option<u64>,
    /// At most this many records (default 100).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only this destination host.
    #[param(nullable = false, max_length = 255)]
    pub host: Option<String>,
    /// Only this decision.
    #[param(value_type = Option<EgressDecision>, nullable = false)]
    pub decision: Option<EgressDecision>,
}

/// The run's egress audit log: one record per connection, and per request on inspected
/// connections (hosts with secrets, `inspect_domains`, or method and path rules), oldest first.
#[utoipa::path(
    get,
    path = "/api/sandboxes/{run_id}/egress",
    operation_id = "getSandboxEgress",
    tag = "sandboxes",
    params(RunIdParam, EgressParams),
    responses((status = 200, description = "A page of the log", body = EgressPage), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn get_egress(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiQuery(q): ApiQuery<EgressParams>,
) -> Result<Json<EgressPage>, ApiError> {
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit: must be 1 to 1000"));
    }
    if q.after.is_some_and(|a| a > i64::MAX as u64) {
        return Err(ApiError::bad_request("after: must be at most 9223372036854775807"));
    }
    if q.host.as_ref().is_some_and(|h| h.len() > 255) {
        return Err(ApiError::bad_request("host: at most 255 characters"));
    }
    let query = EgressQuery { after: q.after, limit: q.limit.map(|l| l as usize), host: q.host, decision: q.decision };
    let page = state.manager.egress_log(&run, query).await.map_err(ApiError::from_operation)?;
    Ok(Json(page))
}
