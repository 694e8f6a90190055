//! The command line shared by `agentboxd` and `agentbox serve`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use agentbox_core::SandboxBackend;

use crate::config::{BackendKind, ServerConfig, default_data_dir};
use crate::{OpenBackendError, Registry, Server, ServerError, TokenOrigin, resolve_token};

/// Flags of `agentboxd` and `agentbox serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory for the sandbox registry and the generated API token
    /// [default: /var/lib/agentbox for root, else ~/.local/share/agentbox].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Server configuration file (TOML): listen, data_dir, backend, api_token, `[limits]`, `[manager]`, on_shutdown.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where sandboxes run [default: local].
    #[arg(long, value_name = "local|e2b")]
    pub backend: Option<BackendKind>,
}

/// Environment variable holding the API token.
pub const TOKEN_ENV: &str = "AGENTBOX_API_TOKEN";

impl ServeArgs {
    /// The configuration file's settings with the flags applied over them.
    ///
    /// # Errors
    /// [`ServerError`] if the file can't be read or is invalid.
    pub fn resolve(&self) -> Result<(ServerConfig, PathBuf), ServerError> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(b) = self.backend {
            config.backend = b;
        }
        let data_dir = self.data_dir.clone().or_else(|| config.data_dir.clone()).unwrap_or_else(default_data_dir);
        Ok((config, data_dir))
    }
}

/// What a binary opens its backend with, besides the backend's defaults.
#[derive(Debug, Clone, Copy)]
pub struct BackendSettings<'a> {
    /// The egress proxy's settings.
    pub egress: &'a crate::EgressSettings,
    /// Who adopts the sandboxes' files after a crash: a server's registry ([`Registry::keeper`]); `None` for a
    /// process whose sandboxes end with it (`agentbox run`).
    pub crash_keeper: Option<&'a std::path::Path>,
    /// The local backend's image store (`None`: its default).
    pub images: Option<&'a crate::config::ImageSettings>,
    /// What kind of process opens the local backend: a server, or a one-shot command (`agentbox run`).
    pub host_process: agentbox_local::HostProcess,
}

/// The backend `kind` names, with its default configuration and the server's egress settings: the one way
/// every binary opens one.
///
/// # Errors
/// [`OpenBackendError`] with what the backend reports and what to do (run as root, set `E2B_API_KEY`).
pub fn open_backend(
    kind: BackendKind,
    settings: &BackendSettings<'_>,
) -> Result<Arc<dyn SandboxBackend>, OpenBackendError> {
    match kind {
        BackendKind::Local => agentbox_local::LocalBackend::new(agentbox_local::LocalConfig {
            upstream_extra_roots: settings.egress.upstream_extra_roots.clone(),
            crash_keeper: settings.crash_keeper.map(std::path::Path::to_path_buf),
            host_process: settings.host_process,
            images: match settings.images {
                Some(images) => Some(images.config()),
                None => agentbox_local::LocalConfig::default().images,
            },
            ..agentbox_local::LocalConfig::default()
        })
        .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
        .map_err(OpenBackendError::Local),
        BackendKind::E2b => agentbox_e2b::E2bBackend::from_env()
            .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
            .map_err(OpenBackendError::E2b),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop the server with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Runs the server until SIGTERM or SIGINT: resolves the configuration, data dir and token, builds the
/// backend with `make_backend`, recovers sandboxes, serves, and shuts down gracefully.
///
/// # Errors
/// [`ServerError`] saying what could not be set up.
pub async fn run<F>(args: ServeArgs, make_backend: F) -> Result<(), ServerError>
where
    F: FnOnce(BackendKind, &BackendSettings<'_>) -> Result<Arc<dyn SandboxBackend>, OpenBackendError>,
{
    let (config, data_dir) = args.resolve()?;
    if let Err(e) = crate::signals::watch_terminal_signals() {
        tracing::warn!(error = %e, "cannot install handlers for SIGHUP, SIGTSTP, SIGTTIN and SIGTTOU; they keep their defaults");
    }
    std::fs::create_dir_all(&data_dir)
        .and_then(|()| std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| ServerError::DataDir { path: data_dir.clone(), source })?;
    let env_token = std::env::var(TOKEN_ENV).ok();
    let (token, origin) = resolve_token(env_token.as_deref().or(config.api_token.as_deref()), &data_dir)?;
    let registry = Registry::open(&data_dir.join("registry.db"))?;
    let settings = BackendSettings {
        egress: &config.egress,
        crash_keeper: registry.keeper(),
        images: Some(&config.images),
        host_process: agentbox_local::HostProcess::LongRunning,
    };
    let backend = make_backend(config.backend, &settings)?;
    let listen = config.listen;
    let backend_name = backend.name();
    let server = Server::start(backend, config, token.clone(), registry).await?;
    let listener = crate::bind(listen).await?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: listen.to_string(), source })?;
    tracing::info!(%addr, backend = backend_name, data_dir = %data_dir.display(), "agentboxd listening");
    eprintln!("agentboxd listening on http://{addr} (backend {backend_name}, data in {})", data_dir.display());
    match &origin {
        TokenOrigin::Generated(path) => {
            eprintln!("generated an API token, stored in {} (shown only this once):", path.display());
            eprintln!("  {}", token.expose());
        }
        TokenOrigin::Stored(path) => eprintln!("API token: the one stored in {}", path.display()),
        TokenOrigin::Configured => eprintln!("API token: from {TOKEN_ENV} or the configuration file"),
    }
    eprintln!(
        "try: curl -H \"Authorization: Bearer $TOKEN\" -d '{{\"run_id\":\"demo\"}}' -H 'Content-Type: application/json' http://{addr}/api/sandboxes/create"
    );
    eprintln!("API reference: http://{addr}/docs (OpenAPI at http://{addr}/openapi.json)");
    server.serve(listener, shutdown_signal()).await;
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
