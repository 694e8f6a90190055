//! `agentbox mcp`: the MCP server on stdio, over local sandboxes.
//!
//! stdout carries the protocol and nothing else; logs go to stderr (`RUST_LOG` filters them).

use std::sync::Arc;
use std::time::Duration;

use agentbox_config::Preset;
use agentbox_core::{ManagerConfig, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_mcp::{McpConfig, McpServer};
use agentbox_tools::ToolRegistry;
use agentbox_tools::search::{SearchConfig, WebSearch};

use super::CliError;

/// Arguments of `agentbox mcp`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Add it to an MCP client as a stdio server, e.g. in its JSON configuration:\n  {\"mcpServers\": {\"agentbox\": {\"command\": \"agentbox\", \"args\": [\"mcp\"]}}}\n\nSandboxes live as long as this process: the session's default sandbox and any made with\nsandbox_create are destroyed when the client disconnects. See docs/MCP.md."
)]
pub struct Args {
    /// Preset of the session's default sandbox: default, lightweight, heavy_compute or browser.
    #[arg(long, default_value = "default")]
    pub preset: String,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,agentbox=info,agentbox_mcp=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, stopping"),
    }
}

/// Serves MCP on stdin/stdout until the client disconnects or a signal arrives, then destroys every sandbox.
///
/// # Errors
/// Bad arguments, a backend that can't start, or a session that failed.
pub fn run(args: &Args) -> Result<(), CliError> {
    let preset: Preset = args.preset.parse()?;
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let backend = LocalBackend::new(LocalConfig::default())?;
        let manager = SandboxManager::new(Arc::new(backend), ManagerConfig::default());
        manager.start();
        let tools = ToolRegistry::standard(WebSearch::new(SearchConfig::from_env())?);
        let config = McpConfig { default_preset: preset, ..McpConfig::default() };
        let server = McpServer::new(Arc::new(manager.clone()), tools, config);
        tracing::info!(tools = server.tools().len(), preset = %preset, "serving MCP on stdio");
        let served = server.serve_stdio(shutdown_signal()).await;
        server.shutdown().await;
        manager.shutdown().await;
        tracing::info!("stopped");
        served.map_err(CliError::from)
    });
    // A read of stdin that is still pending must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
