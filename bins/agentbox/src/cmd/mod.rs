//! The subcommands, one module each, and the error they share.

pub mod cp;
pub mod docs;
pub mod doctor;
pub mod egress;
pub mod exec;
pub mod image;
pub mod mcp;
pub mod presets;
pub mod remote;
pub mod run;
pub mod sandboxes;
pub mod search;
pub mod serve;
pub mod shell;
pub mod snapshots;
pub mod template;
pub mod tool;
pub mod volumes;

use std::io::{self, Write};

/// The resource flags `run` and `create` share; each overrides the preset's value when given.
#[derive(Debug, Clone, clap::Args)]
pub struct Resources {
    /// Root filesystem from this OCI image (pulled on first use), or `host` for the host's own system.
    #[arg(long, value_name = "REFERENCE", conflicts_with = "template")]
    pub image: Option<String>,
    /// Root filesystem from a template built here (`agentbox template build -t NAME`).
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// CPUs (CPU quota).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory limit in MiB.
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Storage cap in GiB.
    #[arg(long)]
    pub disk_gb: Option<u64>,
}

impl Resources {
    /// The root's image reference: `--image`, or the reference of `--template`.
    #[must_use]
    pub fn image_reference(&self) -> Option<String> {
        self.image.clone().or_else(|| self.template.as_deref().map(agentbox_config::template_image))
    }

    /// The overrides given, as configuration keys and values (`cpu_count`, `memory_mb`, `disk_gb`).
    #[must_use]
    pub fn overrides(&self) -> Vec<(&'static str, u64)> {
        [("cpu_count", self.cpus.map(u64::from)), ("memory_mb", self.memory_mb), ("disk_gb", self.disk_gb)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}
use std::process::ExitCode;

/// What a subcommand can fail with. Each message is one line saying what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A sandbox operation failed.
    #[error(transparent)]
    Core(#[from] agentbox_core::Error),
    /// The command line asked for something that does not exist.
    #[error("{0}")]
    Usage(String),
    /// The command line named a preset that does not exist.
    #[error(transparent)]
    UnknownPreset(#[from] agentbox_config::UnknownPreset),
    /// Writing to stdout failed.
    #[error("writing output failed: {0}")]
    Output(#[from] io::Error),
    /// Encoding JSON output failed.
    #[error("encoding JSON output failed: {0}")]
    Json(#[from] serde_json::Error),
    /// Web search failed.
    #[error(transparent)]
    Search(#[from] agentbox_tools::search::SearchError),
    /// An image operation failed.
    #[error(transparent)]
    Image(#[from] agentbox_image::ImageError),
    /// A template operation failed.
    #[error(transparent)]
    Template(#[from] agentbox_template::TemplateError),
    /// The backend could not be opened.
    #[error(transparent)]
    OpenBackend(#[from] agentbox_server::OpenBackendError),
    /// A step of a template build failed.
    #[error("{0}")]
    TemplateStep(String),
    /// A call to agentboxd failed.
    #[error(transparent)]
    Client(#[from] agentbox_client::ClientError),
    /// Some of several operations failed (each was reported as it failed).
    #[error("{0}")]
    Partial(String),
    /// Serving MCP failed.
    #[error(transparent)]
    Mcp(#[from] agentbox_mcp::TransportError),
}

/// Turns a subcommand's result into the exit status, printing an error as one line on stderr.
///
/// A closed stdout (`agentbox presets | head -1`) is not an error.
pub fn report(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(CliError::Json(e)) if e.io_error_kind() == Some(io::ErrorKind::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            // Nothing more can be done if stderr is gone too.
            let _ = writeln!(io::stderr().lock(), "agentbox: error: {line}");
            ExitCode::FAILURE
        }
    }
}
