//! `agentboxd`: the agentbox REST API server.
//!
//! `agentboxd [--listen ADDR:PORT] [--data-dir DIR] [--config FILE] [--backend local|e2b]`; the API token
//! comes from `AGENTBOX_API_TOKEN`, the configuration file, or is generated at first start.

use std::process::ExitCode;

use agentbox_server::cli::{ServeArgs, open_backend, run};
use clap::Parser;

/// The agentbox REST API server: isolated sandboxes for AI agents over HTTP.
#[derive(Debug, Parser)]
#[command(name = "agentboxd", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let runtime = match agentbox_server::runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentboxd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    agentbox_server::runtime::prefer_short_slices();
    match runtime.block_on(run(args.serve, open_backend)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentboxd: {e}");
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
