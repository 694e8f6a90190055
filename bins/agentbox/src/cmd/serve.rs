//! `agentbox serve`: the REST API server, the same as `agentboxd` with the same flags.

use agentbox_server::cli::{ServeArgs, init_tracing, open_backend};
use std::process::ExitCode;

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
    match runtime.block_on(agentbox_server::cli::run(args.serve, open_backend)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentbox: error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
