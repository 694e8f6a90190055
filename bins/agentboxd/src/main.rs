//! `agentboxd`: the agentbox REST API server.
//!
//! `agentboxd [--listen ADDR:PORT] [--data-dir DIR] [--config FILE] [--backend local|e2b]`; the API token
//! comes from `AGENTBOX_API_TOKEN`, the configuration file, or is generated at first start.

use std::process::ExitCode;
use std::sync::Arc;

use agentbox_core::SandboxBackend;
use agentbox_server::BackendKind;
use agentbox_server::cli::{ServeArgs, init_tracing, run};
use clap::Parser;

/// The agentbox REST API server: isolated sandboxes for AI agents over HTTP.
#[derive(Debug, Parser)]
#[command(name = "agentboxd", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn backend(kind: BackendKind) -> Result<Arc<dyn SandboxBackend>, String> {
    match kind {
        BackendKind::Local => agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default())
            .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
            .map_err(|e| format!("cannot start the local backend: {e}")),
        BackendKind::E2b => agentbox_e2b::E2bBackend::from_env()
            .map(|b| Arc::new(b) as Arc<dyn SandboxBackend>)
            .map_err(|e| format!("cannot start the e2b backend: {e} (set E2B_API_KEY, or use --backend local)")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match run(args.serve, backend).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentboxd: {e}");
            ExitCode::FAILURE
        }
    }
}
