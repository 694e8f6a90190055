//! The agentbox REST API: an embeddable [axum] router over a [`SandboxManager`], for any
//! [`SandboxBackend`].
//!
//! [`Server::start`] raises the file descriptor limit and splits it into budgets ([`budget`]), recovers the sandboxes a previous process left (from the SQLite [`Registry`]),
//! starts the manager's cleanup, idle-timeout and health tasks, and builds the router with bearer
//! authentication, limits, Prometheus metrics and the OpenAPI document. Embed [`Server::router`] in
//! your own axum application, or let [`Server::serve`] run it.
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn agentbox_core::SandboxBackend>) -> Result<(), agentbox_server::ServerError> {
//! use agentbox_server::{ApiToken, Registry, Server, ServerConfig};
//!
//! let server = Server::start(backend, ServerConfig::default(), ApiToken::new("a-long-secret-token")?, Registry::in_memory()?).await?;
//! let listener = agentbox_server::bind("127.0.0.1:8080".parse().unwrap()).await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod budget;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod error;
pub mod lifecycle;
pub mod limits;
mod mcp;
pub mod registry;
pub mod runtime;
mod serve;
pub mod signals;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{SandboxBackend, SandboxManager};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use auth::{ApiToken, TokenOrigin, resolve_token};
pub use config::{
    BackendKind, ConfigError, EgressSettings, Limits, SecretSourceConfig, ServerConfig, ShutdownPolicy, UnknownBackend,
};
pub use error::{ApiError, OpenBackendError, SecretConfigError, ServerError};
pub use lifecycle::RecoveryReport;
pub use registry::Registry;
pub use serve::{bind, serve};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub(crate) manager: SandboxManager,
    pub(crate) lifecycle: lifecycle::Lifecycle,
    pub(crate) token: Arc<ApiToken>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) limiter: Arc<limits::RateLimits>,
    pub(crate) metrics: Arc<telemetry::ServerMetrics>,
    /// File transfers in progress (`limits.max_concurrent_transfers` permits).
    pub(crate) transfers: Arc<tokio::sync::Semaphore>,
    /// The browsers of the sandboxes, started on their first browser call.
    #[cfg(feature = "browser")]
    pub(crate) browser: agentbox_tools::browser::BrowserTool,
    /// The MCP endpoint, when enabled.
    pub(crate) mcp: Option<agentbox_mcp::HttpService>,
    /// The agent tools of `/api/tools` and `/api/sandboxes/{run_id}/tools/{name}`.
    pub(crate) tools: agentbox_tools::ToolRegistry,
    /// The local backend's image store (`/api/images`); `None` on other backends.
    pub(crate) images: Option<agentbox_image::Store>,
    /// The template builder over that store and the backend (`/api/templates`).
    pub(crate) templates: Option<Arc<agentbox_template::Builder>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The local backend's image store and a template builder over it; none on other backends, or where the
/// store can't be opened (without root, say: the reason is logged, and the routes say the backend has none).
fn open_images(
    backend: &Arc<dyn SandboxBackend>,
    config: &ServerConfig,
) -> (Option<agentbox_image::Store>, Option<Arc<agentbox_template::Builder>>) {
    // SAFETY: geteuid has no preconditions.
    if backend.name() != "local" || unsafe { libc::geteuid() } != 0 {
        return (None, None);
    }
    match agentbox_image::Store::open(config.images.config()) {
        Ok(store) => {
            let builder = agentbox_template::Builder::new(backend.clone(), store.clone());
            (Some(store), Some(Arc::new(builder)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "the image store can't be opened; /api/images and /api/templates are off");
            (None, None)
        }
    }
}

/// How often the registry is reconciled with the manager (idle expiry and health recreation happen inside it).
const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// A running API: manager, registry, router.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    router: Router,
    openapi: serde_json::Value,
    config: ServerConfig,
    recovery: RecoveryReport,
    maintenance: JoinHandle<()>,
    mcp: mcp::Mcp,
    connections: Arc<budget::Connections>,
    /// The E2B-compatible API, when `[e2b_api] enabled`.
    e2b: Option<agentbox_e2b_api::E2bApi>,
}

/// Puts the E2B-compatible API in front of `router` when `[e2b_api] enabled`: requests for `/sandboxes`,
/// `/v2/sandboxes` and any carrying `E2b-Sandbox-Id` go to it, the rest to the agentbox API. It authenticates
/// `X-API-KEY` against the same token as the bearer token.
fn mount_e2b_api(
    router: Router,
    state: &AppState,
    config: &ServerConfig,
) -> Result<(Router, Option<agentbox_e2b_api::E2bApi>), ServerError> {
    if !config.e2b_api.enabled {
        return Ok((router, None));
    }
    let token = state.token.clone();
    let api = agentbox_e2b_api::E2bApi::new(
        state.manager.clone(),
        Arc::new(move |key: &[u8]| token.matches(key)),
        config.e2b_api.clone(),
    )
    .map_err(|e| ServerError::Config(e.to_string()))?;
    // Wrong API keys and access tokens count against the client's address like wrong bearer tokens: past the
    // limit the answer is 429 instead of 401.
    let limiter = state.limiter.clone();
    let e2b = api.router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let limiter = limiter.clone();
            async move {
                let peer = request
                    .extensions()
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
                let response = next.run(request).await;
                if response.status() == axum::http::StatusCode::UNAUTHORIZED {
                    if let Err(wait) = limiter.check_auth_failure(peer) {
                        return axum::response::IntoResponse::into_response(ApiError::rate_limited(wait));
                    }
                }
                response
            }
        },
    ));
    let both = Router::new().fallback_service(tower::service_fn(move |request: axum::extract::Request| {
        use tower::ServiceExt as _;
        let target = if agentbox_e2b_api::is_e2b_request(request.uri().path(), request.headers()) {
            e2b.clone()
        } else {
            router.clone()
        };
        target.oneshot(request)
    }));
    Ok((both, Some(api)))
}

impl Server {
    /// Recovers the registry's sandboxes, starts the manager's background tasks and builds the router.
    ///
    /// # Errors
    /// [`ServerError::Config`] for invalid limits or web search settings in the environment, or a
    /// file descriptor limit too low for `limits.fd_reserve`; [`ServerError::Recovery`] if the backend can't list its
    /// sandboxes, [`ServerError::Registry`] if the registry fails.
    pub async fn start(
        backend: Arc<dyn SandboxBackend>,
        config: ServerConfig,
        token: ApiToken,
        registry: Registry,
    ) -> Result<Self, ServerError> {
        config.check().map_err(|e| ServerError::Config(e.to_string()))?;
        // Before anything opens descriptors or starts a proxy: raise the limit and hand out the budgets.
        let fds = budget::FdBudget::establish(&config.limits).map_err(|e| ServerError::Config(e.to_string()))?;
        fds.apply(&config.limits);
        let connections = Arc::new(budget::Connections::new(fds.rest_connections, fds.rest_connections_per_client));
        if !config.egress.secrets.is_empty() {
            let store = backend.secrets().ok_or_else(|| {
                ServerError::Config(format!("egress.secrets: the {} backend can't inject secrets", backend.name()))
            })?;
            for (name, source) in &config.egress.secrets {
                let what = |source| ServerError::Secret { name: name.clone(), source };
                if !agentbox_config::egress::valid_secret_name(name) {
                    return Err(what(SecretConfigError::Name));
                }
                store.set(name, source.source().map_err(what)?).map_err(|e| what(SecretConfigError::Store(e)))?;
            }
        }
        let (images, templates) = open_images(&backend, &config);
        let manager = SandboxManager::new(backend, config.manager_config());
        let lifecycle = lifecycle::Lifecycle::new(manager.clone(), registry);
        let recovery = lifecycle.recover().await?;
        if !recovery.adopted.is_empty() || !recovery.forgotten.is_empty() {
            tracing::info!(adopted = ?recovery.adopted, forgotten = ?recovery.forgotten, "recovered sandboxes from the registry");
        }
        if !recovery.discarded_after_crash.is_empty() {
            tracing::info!(keys = ?recovery.discarded_after_crash, "discarded files a crash kept that no recorded run claims");
        }
        if !recovery.kept_finished.is_empty() || !recovery.kept_forgotten.is_empty() {
            tracing::info!(finished = ?recovery.kept_finished, forgotten = ?recovery.kept_forgotten, "recovered snapshots and volumes from the registry");
        }
        manager.start();
        #[cfg(feature = "browser")]
        let browser = agentbox_tools::browser::BrowserTool::new(agentbox_tools::browser::BrowserConfig {
            max_timeout: config.limits.browser_max_timeout,
            ..agentbox_tools::browser::BrowserConfig::default()
        });
        let tools = api::tools::registry(
            #[cfg(feature = "browser")]
            &browser,
        )?;
        let mcp = mcp::Mcp::new(
            &lifecycle,
            &config.mcp,
            #[cfg(feature = "browser")]
            &browser,
        )?;
        let state = AppState {
            manager,
            lifecycle: lifecycle.clone(),
            token: Arc::new(token),
            limits: Arc::new(config.limits.clone()),
            limiter: Arc::new(limits::RateLimits::new(&config.limits)),
            metrics: Arc::new(telemetry::ServerMetrics::new(
                config.limits.max_metric_series,
                Some(fds),
                Some(connections.clone()),
            )),
            transfers: Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent_transfers)),
            #[cfg(feature = "browser")]
            browser,
            mcp: mcp.http.clone(),
            tools,
            images,
            templates,
        };
        let (router, openapi) = api::build(state.clone());
        let (router, e2b) = mount_e2b_api(router, &state, &config)?;
        let limiter = state.limiter.clone();
        let maintenance = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            loop {
                tick.tick().await;
                lifecycle.sync().await;
                limiter.prune();
                agentbox_core::budget::log_limiter().flush();
            }
        });
        Ok(Self { state, router, openapi, config, recovery, maintenance, mcp, connections, e2b })
    }

    /// The router, ready to serve or to nest in another axum application.
    ///
    /// Handlers read the client address from [`axum::extract::ConnectInfo`] when present (for
    /// per-address limits on failed authentication); serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` or [`Server::serve`].
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The OpenAPI document served at `/openapi.json`.
    #[must_use]
    pub fn openapi(&self) -> &serde_json::Value {
        &self.openapi
    }

    /// The sandbox manager.
    #[must_use]
    pub fn manager(&self) -> &SandboxManager {
        &self.state.manager
    }

    /// What the start-up recovery did.
    #[must_use]
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Serves on `listener` until `shutdown` completes, then lets requests in flight finish (up to the
    /// configured grace period). Connections are capped by the descriptor budget and per client address.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        serve::serve_counted(
            listener,
            self.router(),
            &self.config.limits,
            self.connections.clone(),
            shutdown,
            self.config.shutdown_grace,
        )
        .await;
    }

    /// Stops every running sandbox whose backend can stop it (its files kept, journaled as stopped): a
    /// backend's sandboxes that live in this process would otherwise end with it. Others are left running
    /// for the next start to re-adopt.
    async fn stop_running(&self) {
        let running = self.state.manager.list().into_iter().filter(|s| s.state != agentbox_core::SandboxState::Stopped);
        let stops = running.map(|s| async move {
            match self.state.lifecycle.stop(&s.run_id).await {
                Ok(_) | Err(agentbox_core::Error::Unsupported(_) | agentbox_core::Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(run_id = %s.run_id, error = %e, "stopping a sandbox at shutdown failed"),
            }
        });
        futures_util::future::join_all(stops).await;
    }

    /// Stops the background work and records the final state; destroys every sandbox if the
    /// configuration says so, else keeps them for the next start (stopped where the backend can stop them).
    pub async fn shutdown(self) {
        self.maintenance.abort();
        self.mcp.shutdown().await;
        if self.config.on_shutdown == ShutdownPolicy::Destroy {
            self.state.manager.shutdown().await;
        } else {
            if let Some(e2b) = &self.e2b {
                // E2B sandboxes are not re-adopted by the next start (their E2B state lives in memory), so they go.
                e2b.shutdown().await;
            }
            self.stop_running().await;
        }
        self.state.lifecycle.sync().await;
    }
}
