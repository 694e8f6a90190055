//! `agentbox serve`: the REST API server, the same as `agentboxd` with the same flags.

use agentbox_server::cli::{ServeArgs, open_backend};
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
    let runtime = match agentbox_server::runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentbox: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    agentbox_server::runtime::prefer_short_slices();
    match runtime.block_on(agentbox_server::cli::run(args.serve, open_backend)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentbox: error: {}", e.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Installs the log subscriber: human-readable lines on stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
