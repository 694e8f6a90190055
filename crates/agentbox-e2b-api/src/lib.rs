//! An E2B-compatible API over a [`SandboxManager`], so the official E2B SDKs (Python `e2b` and
//! `e2b-code-interpreter`, JS `e2b`) run unmodified against agentboxd:
//!
//! ```text
//! E2B_API_URL=http://127.0.0.1:8080  E2B_SANDBOX_URL=http://127.0.0.1:8080  E2B_API_KEY=<agentboxd token>
//! ```
//!
//! Three surfaces share one router ([`E2bApi::router`]), told apart the way the SDKs address them:
//!
//! - the control plane (`/sandboxes`, `/v2/sandboxes`, authenticated by `X-API-KEY`): create, list, get, kill,
//!   timeout, pause, connect and metrics ([`control`]);
//! - envd, for requests carrying `E2b-Sandbox-Id` and `E2b-Sandbox-Port: 49983`: Connect RPCs with JSON for
//!   `process.Process` and `filesystem.Filesystem`, `GET`/`POST /files` and `/health` ([`envd`], [`process`],
//!   [`fs`]);
//! - the code interpreter, for `E2b-Sandbox-Port: 49999`: `/execute` (NDJSON) and `/contexts` ([`interp`]), on
//!   agentbox-tools' stateful code contexts.
//!
//! An E2B sandbox is a run of the manager whose run id is the sandbox id. The E2B-only state (template, metadata,
//! deadline, access token, processes) lives in [`state::Inner`]; a reaper kills (or pauses) each sandbox when
//! its timeout expires. Every file access goes through the backend trait; the host parses nothing a sandbox
//! controls but the bounded answers of the code tools.

pub mod config;
pub mod control;
pub mod envd;
pub mod error;
pub mod fs;
pub mod interp;
pub mod process;
pub mod state;
pub mod watch;

use std::sync::Arc;

use agentbox_core::SandboxManager;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;

pub use config::{E2bApiConfig, TemplateTable};
pub use error::E2bApiError;

/// The header naming the sandbox of an envd or interpreter request.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// The header naming the port inside the sandbox.
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
/// envd's port.
pub const ENVD_PORT: u16 = 49983;
/// The code interpreter's port.
pub const INTERPRETER_PORT: u16 = 49999;

/// Checks an API key (the `X-API-KEY` header's bytes) in constant time.
pub type KeyCheck = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Whether a request is for the E2B API: a control-plane path, or any request carrying `E2b-Sandbox-Id`.
#[must_use]
pub fn is_e2b_request(path: &str, headers: &HeaderMap) -> bool {
    headers.contains_key(SANDBOX_ID_HEADER)
        || path == "/sandboxes"
        || path.starts_with("/sandboxes/")
        || path == "/v2/sandboxes"
        || path.starts_with("/v2/sandboxes/")
}

/// The E2B-compatible API: its state and the router serving it.
#[derive(Clone)]
pub struct E2bApi {
    state: state::Shared,
    router: Router,
}

impl std::fmt::Debug for E2bApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bApi").finish_non_exhaustive()
    }
}

impl E2bApi {
    /// Builds the API over `manager` and starts the task that enforces sandbox timeouts (it ends when the API is
    /// dropped). Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`E2bApiError::Config`] when the template table names an unknown preset.
    pub fn new(manager: SandboxManager, check_key: KeyCheck, config: E2bApiConfig) -> Result<Self, E2bApiError> {
        config.check()?;
        let state = state::new_shared(manager, check_key, config);
        state::spawn_reaper(&state);
        let control = control::router(state.clone());
        let envd = envd::router(state.clone());
        let interp = interp::router(state.clone());
        let router = Router::new().fallback(move |request: Request| {
            let (control, envd, interp) = (control.clone(), envd.clone(), interp.clone());
            async move { dispatch(request, control, envd, interp).await }
        });
        Ok(Self { state, router })
    }

    /// The router: mount it in front of another application with [`is_e2b_request`] deciding which requests it
    /// gets, or serve it alone.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Destroys every E2B sandbox this API created.
    pub async fn shutdown(&self) {
        self.state.destroy_all().await;
    }
}

async fn dispatch(request: Request, control: Router, envd: Router, interp: Router) -> Response {
    use tower::ServiceExt as _;
    let router = if request.headers().contains_key(SANDBOX_ID_HEADER) {
        let port = request
            .headers()
            .get(SANDBOX_PORT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u16>().ok())
            .unwrap_or(ENVD_PORT);
        match port {
            ENVD_PORT => envd,
            INTERPRETER_PORT => interp,
            other => {
                return error::plain(
                    axum::http::StatusCode::BAD_GATEWAY,
                    &format!(
                        "port {other} of the sandbox is not served by agentboxd's E2B API: only envd ({ENVD_PORT}) \
                         and the code interpreter ({INTERPRETER_PORT}) are"
                    ),
                );
            }
        }
    } else {
        control
    };
    match router.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// An empty 204 response.
pub(crate) fn no_content() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = axum::http::StatusCode::NO_CONTENT;
    r
}
