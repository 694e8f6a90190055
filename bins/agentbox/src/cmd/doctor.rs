//! `agentbox doctor`: what this host gives the local backend, read without changing anything.

use std::io::{self, Write};

use agentbox_local::CgroupReport;

use super::CliError;

/// Arguments of `agentbox doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report as this process sees the host, e.g. a running agentboxd (`--pid $(pidof agentboxd)`): a service's
    /// cgroup, delegated or not, is not the shell's.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Prints the host's cgroup set-up (version, controllers available and delegated) and what it means for the
/// sandboxes' limits.
///
/// # Errors
/// Output errors.
pub fn run(args: &Args) -> Result<(), CliError> {
    let report = CgroupReport::inspect_process(args.pid);
    let mut out = io::stdout().lock();
    writeln!(out, "cgroups")?;
    for line in report.to_string().lines() {
        writeln!(out, "  {line}")?;
    }
    out.flush()?;
    Ok(())
}
