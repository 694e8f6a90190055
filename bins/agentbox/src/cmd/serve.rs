//! `agentbox serve`: the REST API server, the same as `agentboxd` with the same flags.

use std::process::ExitCode;
use std::sync::Arc;

use agentbox_core::SandboxBackend;
use agentbox_server::BackendKind;
use agentbox_server::cli::{ServeArgs, init_tracing};

/// Arguments of `agentbox serve`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The API token comes from AGENTBOX_API_TOKEN or the configuration file; without one, a token is\n\
                  generated at first start, printed once and stored 0600 in the data directory.\n\
                  SIGTERM or SIGINT stops the server gracefully. See docs/API.md."
)]
pub struct Args {
    #[command(flatten)]
    pub serve: ServeArgs,
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

/// Serves until SIGTERM or SIGINT.
pub fn run(args: Args) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentbox: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agentbox_server::cli::run(args.serve, backend)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentbox: error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
