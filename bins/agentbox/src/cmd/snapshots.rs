//! `agentbox snapshots`: the snapshots in the local backend's storage pool.

use std::io::{self, Write};

use agentbox_core::SandboxBackend;
use agentbox_local::{LocalBackend, LocalConfig};

use super::CliError;

/// Arguments of `agentbox snapshots`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What to do with the snapshots (list them when absent).
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List every snapshot.
    List,
    /// Delete a snapshot; sandboxes forked from it keep their files.
    Delete {
        /// The snapshot's name.
        name: String,
    },
}

/// Lists or deletes snapshots.
///
/// # Errors
/// The backend's errors (an unknown snapshot is not found); output errors.
pub fn run(args: &Args) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let backend = LocalBackend::new(LocalConfig::default())?;
        let mut out = io::stdout().lock();
        match &args.action {
            Some(Action::Delete { name }) => {
                backend.delete_snapshot(name).await?;
                if !args.json {
                    writeln!(out, "deleted {name}")?;
                }
            }
            None | Some(Action::List) => {
                let snapshots = backend.list_snapshots().await?;
                if args.json {
                    serde_json::to_writer_pretty(&mut out, &snapshots)?;
                    writeln!(out)?;
                } else if snapshots.is_empty() {
                    writeln!(out, "no snapshots; take one with `agentbox run --save-snapshot NAME ...`")?;
                } else {
                    writeln!(out, "{:<40} {:>12}  {:>14}", "NAME", "SIZE", "TAKEN (ms)")?;
                    for s in snapshots {
                        writeln!(out, "{:<40} {:>12}  {:>14}", s.name, s.size_bytes, s.created_at_ms)?;
                    }
                }
            }
        }
        out.flush()?;
        Ok(())
    })
}
