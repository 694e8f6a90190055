//! `agentbox completions SHELL` and `agentbox man DIR`: shell completions and man pages, generated
//! from the same command definitions the parser uses, so they never drift.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::CommandFactory;

use super::CliError;

/// Arguments of `agentbox completions`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox completions bash > /etc/bash_completion.d/agentbox\n  agentbox completions zsh > \"${fpath[1]}/_agentbox\"\n  agentbox completions fish > ~/.config/fish/completions/agentbox.fish"
)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for a shell on stdout.
///
/// # Errors
/// Output errors.
pub fn completions<C: CommandFactory>(args: &CompletionsArgs) -> Result<(), CliError> {
    let mut cmd = C::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "agentbox", &mut out);
    io::stdout().lock().write_all(&out)?;
    Ok(())
}

/// Arguments of `agentbox man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  agentbox man /usr/local/share/man/man1 && man agentbox-run")]
pub struct ManArgs {
    /// The directory to write the pages to (agentbox.1 and one agentbox-VERB.1 per command).
    pub dir: PathBuf,
}

/// Writes the man pages.
///
/// # Errors
/// When the directory can't be written.
pub fn man<C: CommandFactory>(args: &ManArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", args.dir.display())))?;
    clap_mangen::generate_to(C::command(), &args.dir)
        .map_err(|e| CliError::Usage(format!("cannot write the man pages to {}: {e}", args.dir.display())))?;
    let mut out = io::stdout().lock();
    for entry in std::fs::read_dir(&args.dir)?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".1") {
            writeln!(out, "{}", entry.path().display())?;
        }
    }
    Ok(())
}
