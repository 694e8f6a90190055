//! The REST API: routes, middleware and the OpenAPI document.

#[cfg(feature = "browser")]
pub mod browser;
pub mod egress;
pub mod exec;
pub mod extract;
pub mod files;
pub mod images;
pub mod network;
pub mod sandboxes;
pub mod snapshots;
pub mod system;
pub mod templates;
pub mod terminal;
pub mod tools;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoResponses, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::auth::bearer;
use crate::error::{ApiError, ErrorBody, ErrorDetail, FieldProblem};

/// Paths answered without a token.
pub const OPEN_PATHS: &[&str] = &["/health", "/openapi.json", "/docs"];

/// The error responses every authenticated operation may give.
pub struct ErrorResponses;

impl IntoResponses for ErrorResponses {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        let cases: [(u16, &str); 13] = [
            (400, "The request is malformed or the configuration invalid (`details` lists every problem)"),
            (401, "Missing or wrong bearer token"),
            (403, "The sandbox refused the operation"),
            (404, "Unknown run id, file or route"),
            (408, "The request body arrived too slowly"),
            (409, "Conflicts with the run's existing sandbox or its state"),
            (413, "The body is larger than the server accepts"),
            (414, "The request target (path and query) is longer than the server accepts"),
            (415, "The body is not in a supported content type"),
            (
                422,
                "Well-formed, but not possible in this sandbox's state or on this backend (a path that is a directory, a package that can't be installed, an unsupported feature)",
            ),
            (429, "Rate limited, or too many live sandboxes; see Retry-After"),
            (500, "The backend failed; the server log has details"),
            (504, "The operation did not finish in time"),
        ];
        cases
            .into_iter()
            .map(|(status, description)| {
                let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                let mut response = ResponseBuilder::new().description(description).content("application/json", content);
                if status == 429 {
                    response = response.header(
                        "Retry-After",
                        HeaderBuilder::new()
                            .schema(Some(
                                utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::Integer),
                            ))
                            .description(Some("Seconds to wait before retrying"))
                            .build(),
                    );
                }
                (status.to_string(), RefOr::T(response.build()))
            })
            .collect()
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agentbox",
        description = "Isolated sandboxes for AI agents: create one per run, execute commands and code, move files, \
                       watch resources. Every route but /health and the docs needs `Authorization: Bearer TOKEN`. \
                       Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail, FieldProblem)),
    modifiers(&Security),
    tags(
        (name = "sandboxes", description = "Sandbox lifecycle"),
        (name = "execution", description = "Commands and code"),
        (name = "files", description = "Files inside a sandbox"),
        (name = "secrets", description = "Credentials the egress proxy adds to requests; set, never read back"),
        (name = "snapshots", description = "Point-in-time copies of a sandbox's files, and forks from them"),
        (name = "volumes", description = "Named, persistent volumes that sandboxes mount"),
        (name = "images", description = "The image store sandbox roots come from"),
        (name = "templates", description = "Images built from a Dockerfile on this host"),
        (name = "tools", description = "Agent tools: shell, code, files, web search, browser"),
        (name = "server", description = "Liveness and metrics"),
    )
)]
struct ApiDoc;

const NO_NUL: &str = r"^[^\x00]*$";
const IPV4: &str = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";
const PKG_VERSION: &str = r"[A-Za-z0-9.\-+~*^:]+";

fn package_pattern() -> String {
    let pip_name = r"[A-Za-z0-9_.\[\],][A-Za-z0-9_.\-\[\],]{0,213}";
    let npm_plain = r"[A-Za-z0-9_.@/][A-Za-z0-9_.\-/]{0,213}";
    let npm_versioned = r"[A-Za-z0-9_.@/][A-Za-z0-9_.\-@/]{0,213}";
    // Without a manager prefix, a ':' anywhere would be read as one, so a bare version has none.
    let bare_version = r"[A-Za-z0-9.\-+~*^]+";
    format!(
        r"^(pip:{pip_name}(=={PKG_VERSION})?|{pip_name}(=={bare_version})?|npm:{npm_plain}|npm:{npm_versioned}@{PKG_VERSION})$"
    )
}

fn domain_pattern() -> &'static str {
    r"^(\*\.)?(?=[^*]{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)*$"
}

fn string_map(key_pattern: &str) -> Value {
    json!({
        "type": "object",
        "propertyNames": {"pattern": key_pattern},
        "additionalProperties": {"type": "string", "pattern": NO_NUL},
    })
}

/// Marks every property of an object schema required, but those that may be `null` and `only_when_set`.
fn require_written_fields(schema: &mut Value, only_when_set: &[&str]) {
    let Some(properties) = schema["properties"].as_object() else { return };
    let required: Vec<Value> = properties
        .iter()
        .filter(|(name, p)| {
            let nullable = p["type"].as_array().is_some_and(|t| t.iter().any(|t| t == "null"));
            !nullable && !only_when_set.contains(&name.as_str())
        })
        .map(|(name, _)| Value::String(name.clone()))
        .collect();
    schema["required"] = Value::Array(required);
}

/// Tightens the generated document where derive attributes can't express the rules the server enforces.
fn finish_openapi(openapi: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(openapi).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];

    let cmd = &mut schemas["ExecuteCommandRequest"];
    cmd["anyOf"] = json!([{"required": ["command"]}, {"required": ["argv"]}]);
    cmd["not"] = json!({"required": ["command", "argv"]});
    cmd["properties"]["argv"] = json!({
        "type": "array",
        "description": "A program and its arguments, run directly.",
        "minItems": 1,
        "prefixItems": [{"type": "string", "minLength": 1, "pattern": NO_NUL}],
        "items": {"type": "string", "pattern": NO_NUL},
    });
    cmd["properties"]["env"] = string_map(r"^[^=\x00]+$");
    schemas["ExecuteCodeRequest"]["properties"]["env"] = string_map(r"^[^=\x00]+$");

    // An upload's body is optional: none, or an empty one, writes an empty file. A zero-length upload is how an
    // empty file is sent, and HTTP/1.1 can't tell it from a request with no body (clients send `Content-Length:
    // 0`, or no length at all, for both), so requiring a body, or a Content-Length, would refuse empty files or
    // chunked uploads without making any request clearer. The document says so rather than the server refusing.
    doc["paths"]["/api/sandboxes/{run_id}/files"]["put"]["requestBody"]["required"] = json!(false);
    let schemas = &mut doc["components"]["schemas"];
    let create = &mut schemas["CreateSandboxRequest"]["properties"];
    create["environment_vars"] = string_map(r"^[A-Za-z_][A-Za-z0-9_]*$");
    create["pre_install_packages"]["items"] = json!({"type": "string", "pattern": package_pattern()});
    create["run_id"]["pattern"] = json!(extract::RUN_ID_PATTERN);

    let net = &mut schemas["NetworkSpec"];
    let domains = json!({"type": "array", "items": {"type": "string", "pattern": domain_pattern()}});
    net["properties"]["allowed_domains"] = domains.clone();
    net["properties"]["denied_domains"] = domains;
    net["properties"]["dns_servers"] = json!({"type": "array", "items": {"type": "string", "anyOf": [
        {"format": "ipv4", "pattern": format!("^{IPV4}$")}, {"format": "ipv6", "pattern": ":"},
    ]}});
    for field in ["bandwidth_in_bytes_per_sec", "bandwidth_out_bytes_per_sec"] {
        net["properties"][field]["maximum"] = json!(u64::MAX);
        // `int64` would bound it at 2^63 - 1, which the server (a u64) doesn't.
        if let Some(p) = net["properties"][field].as_object_mut() {
            p.remove("format");
        }
    }
    net["properties"]["allowed_cidrs"] = json!({"type": "array", "items": {"type": "string", "anyOf": [
        {"pattern": format!(r"^{IPV4}(/(3[0-2]|[12]?[0-9]))?$")}, {"format": "ipv6", "pattern": ":"},
    ]}});
    schemas["MultipartUpload"]["required"] = json!(["file"]);
    // These types read configuration files and samples with `serde(default)`, so their derived schemas require
    // nothing; a response carries every field, but the nullable ones and those written only when set.
    for (name, only_when_set) in [
        ("SandboxConfig", &["image"][..]),
        ("NetworkConfig", &[]),
        ("StorageConfig", &["volumes"]),
        ("SecurityConfig", &[]),
        ("RunAs", &[]),
        ("SecretRule", &[]),
        ("SandboxMetrics", &[]),
    ] {
        require_written_fields(&mut schemas[name], only_when_set);
    }
    for key in [
        "ExecuteCommandRequest",
        "ExecuteCodeRequest",
        "CreateSandboxRequest",
        "TimeoutsSpec",
        "MultipartUpload",
        "NetworkSpec",
    ] {
        schemas[key]["additionalProperties"] = json!(false);
    }

    // Stateful testing and clients: a created sandbox's run id feeds every per-run operation.
    let mut links = serde_json::Map::new();
    for op in [
        "getSandbox",
        "deleteSandbox",
        "executeCommand",
        "executeCode",
        "getSandboxMetrics",
        "getSandboxHealth",
        "readFile",
        "writeFile",
        "listFiles",
        "setSandboxNetwork",
    ] {
        links.insert(op.to_owned(), json!({"operationId": op, "parameters": {"run_id": "$response.body#/run_id"}}));
    }
    if let Some(responses) = doc["paths"]["/api/sandboxes/create"]["post"]["responses"].as_object_mut() {
        for status in ["200", "201"] {
            if let Some(r) = responses.get_mut(status) {
                r["links"] = Value::Object(links.clone());
            }
        }
    }
    doc
}

/// Checks the bearer token, then the token's rate limit.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
    if !presented.is_some_and(|t| state.token.matches(t)) {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if let Err(wait) = state.limiter.check_auth_failure(peer.unwrap_or(IpAddr::from([0, 0, 0, 0]))) {
            return ApiError::rate_limited(wait).into_response();
        }
        return ApiError::unauthorized(
            "missing or wrong bearer token: send `Authorization: Bearer <token>` with the server's API token",
        )
        .into_response();
    }
    if let Err(wait) = state.limiter.check_token() {
        return ApiError::rate_limited(wait).into_response();
    }
    next.run(request).await
}

/// Bounds ordinary requests in time.
async fn request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(r) => r,
        Err(_) => ApiError::timeout("the request", limit).into_response(),
    }
}

/// Refuses overlong request targets.
async fn limit_uri(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > state.limits.max_uri_bytes {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {len} bytes, more than the limit of {}", state.limits.max_uri_bytes),
        )
        .into_response();
    }
    next.run(request).await
}

/// Gives the router's bodiless 405 answers the API's JSON error body, keeping `Allow`.
/// The methods each path answers (the OpenAPI document's paths, and the WebSocket routes it doesn't list), for
/// the `Allow` header and message of a 405.
#[derive(Clone, Debug, Default)]
struct PathMethods(std::sync::Arc<Vec<(Vec<String>, String)>>);

impl PathMethods {
    fn new(doc: &Value, undocumented: &[(&str, &str)]) -> Self {
        let mut table = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let mut methods: Vec<String> = ["get", "head", "post", "put", "patch", "delete", "options"]
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_ascii_uppercase())
                .collect();
            if item.get("get").is_some() && item.get("head").is_none() {
                methods.insert(1, "HEAD".into());
            }
            table.push((segments(path), methods.join(",")));
        }
        for (path, methods) in undocumented {
            table.push((segments(path), (*methods).to_owned()));
        }
        Self(std::sync::Arc::new(table))
    }

    /// The methods of the route `path` matches (a `{parameter}` segment matches any one segment; as in the
    /// router, the route with the most literal segments wins: `/api/sandboxes/create` over `{run_id}`).
    fn allowed(&self, path: &str) -> Option<&str> {
        let wanted = segments(path);
        let is_parameter = |t: &String| t.starts_with('{') && t.ends_with('}');
        self.0
            .iter()
            .filter(|(template, _)| {
                template.len() == wanted.len() && template.iter().zip(&wanted).all(|(t, w)| is_parameter(t) || t == w)
            })
            .max_by_key(|(template, _)| template.iter().filter(|t| !is_parameter(t)).count())
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_end_matches('/').split('/').map(str::to_owned).collect()
}

async fn json_method_errors(State(methods): State<PathMethods>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || response.headers().contains_key(header::CONTENT_TYPE) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let allow = match methods.allowed(&path) {
        Some(allow) => allow.to_owned(),
        None => parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned(),
    };
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        parts.headers.insert(header::ALLOW, value);
    }
    let body = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}; use {}", allow.replace(',', ", ")),
    )
    .into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}

async fn no_route(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {}; the API is described at /openapi.json",
        request.method(),
        request.uri().path()
    ))
}

/// The WebSocket routes of terminals (a new one; a kept one's reattach), which the OpenAPI document can't list.
const TERMINAL: &str = "/api/sandboxes/{run_id}/terminal";
const TERMINAL_ATTACH: &str = "/api/sandboxes/{run_id}/terminals/{terminal_id}/attach";

/// Builds the router and the OpenAPI document.
pub(crate) fn build(state: AppState) -> (Router, Value) {
    let long = OpenApiRouter::new()
        .routes(routes!(sandboxes::create_sandbox))
        .routes(routes!(exec::execute_command))
        .routes(routes!(exec::execute_code))
        .routes(routes!(tools::call_tool))
        .routes(routes!(images::pull_image));
    // A build context is an uploaded tar, bounded by the handler.
    let long = long.merge(
        OpenApiRouter::new()
            .routes(routes!(templates::build_template))
            .layer(DefaultBodyLimit::max(templates::MAX_CONTEXT_BYTES)),
    );
    #[cfg(feature = "browser")]
    let long = long.routes(routes!(browser::browser_action));
    // File bodies are streamed under `limits.max_upload_bytes` by the handlers themselves (multipart included),
    // so axum's default 2 MB cap on extracted bodies is off here.
    let transfers =
        OpenApiRouter::new().routes(routes!(files::read_file, files::write_file)).layer(DefaultBodyLimit::disable());
    let short = OpenApiRouter::new()
        .merge(transfers)
        .routes(routes!(sandboxes::list_sandboxes))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::delete_sandbox))
        .routes(routes!(sandboxes::sandbox_metrics))
        .routes(routes!(sandboxes::sandbox_health))
        .routes(routes!(sandboxes::list_processes))
        .routes(routes!(terminal::list_terminals))
        .routes(routes!(terminal::close_terminal))
        .routes(routes!(files::list_files))
        .routes(routes!(network::set_network))
        .routes(routes!(egress::get_egress))
        .routes(routes!(egress::list_secrets))
        .routes(routes!(egress::set_secret, egress::delete_secret))
        .routes(routes!(sandboxes::pause_sandbox))
        .routes(routes!(sandboxes::resume_sandbox))
        .routes(routes!(sandboxes::stop_sandbox))
        .routes(routes!(sandboxes::start_sandbox))
        .routes(routes!(snapshots::create_snapshot))
        .routes(routes!(snapshots::restore_sandbox))
        .routes(routes!(snapshots::list_snapshots))
        .routes(routes!(snapshots::delete_snapshot))
        .routes(routes!(volumes::create_volume, volumes::list_volumes))
        .routes(routes!(volumes::delete_volume))
        .routes(routes!(images::list_images, images::remove_image))
        .routes(routes!(images::prune_images))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::remove_template))
        .routes(routes!(tools::list_tools))
        .routes(routes!(system::prometheus))
        .route_layer(from_fn_with_state(state.clone(), request_timeout));
    let protected = long.merge(short).route_layer(from_fn_with_state(state.clone(), require_token));
    let open = OpenApiRouter::new().routes(routes!(system::health));
    let (router, openapi) =
        OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(protected).merge(open).split_for_parts();
    #[cfg_attr(not(feature = "browser"), allow(unused_mut))]
    let mut doc = finish_openapi(&openapi);
    #[cfg(feature = "browser")]
    browser::publish_input_schema(&mut doc, &state.browser);
    let mut router = router;
    if let Some(mcp) = state.mcp.clone() {
        // MCP over streamable HTTP: long-lived streams, so no request timeout; the same bearer token.
        let mcp =
            Router::new().route_service("/mcp", mcp).route_layer(from_fn_with_state(state.clone(), require_token));
        router = router.merge(mcp);
    }
    // Interactive terminals over WebSocket: long-lived, so no request timeout; the same bearer token.
    let terminals = Router::new()
        .route(TERMINAL, axum::routing::get(terminal::open))
        .route(TERMINAL_ATTACH, axum::routing::get(terminal::attach))
        .route_layer(from_fn_with_state(state.clone(), require_token));
    router = router.merge(terminals);
    let router = router
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", doc.clone()))
        .fallback(no_route)
        .layer(from_fn_with_state(
            PathMethods::new(&doc, &[(TERMINAL, "GET,HEAD"), (TERMINAL_ATTACH, "GET,HEAD")]),
            json_method_errors,
        ))
        .layer(from_fn_with_state(state.clone(), limit_uri))
        .layer(from_fn_with_state(state.clone(), crate::telemetry::track))
        .with_state(state);
    (router, doc)
}
