//! `agentbox doctor`: what this host gives the local backend, read without changing anything.

use std::io::{self, Write};

use agentbox_local::CgroupReport;

use super::CliError;

/// Arguments of `agentbox doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the host's cgroup set-up (version, controllers available and delegated) and what it means for the
/// sandboxes' limits.
///
/// # Errors
/// Output errors.
pub fn run(_args: &Args) -> Result<(), CliError> {
    let report = CgroupReport::inspect();
    let mut out = io::stdout().lock();
    writeln!(out, "cgroups")?;
    for line in report.to_string().lines() {
        writeln!(out, "  {line}")?;
    }
    out.flush()?;
    Ok(())
}
