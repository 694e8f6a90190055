//! `agentbox shell RUN_ID` and `agentbox exec -it RUN_ID -- CMD`: an interactive terminal in a sandbox
//! on agentboxd, connected to this one (raw mode, window size followed, Ctrl-C sent to the remote
//! process, this terminal restored at the end).

use std::process::ExitCode;

use agentbox_client::TerminalOptions;

use super::CliError;
use super::remote::{Server, block_on};

/// Arguments of `agentbox shell`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox shell task-1\n  agentbox shell task-1 -- python3\n  agentbox exec -it task-1 -- htop"
)]
pub struct Args {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// Working directory inside the sandbox (default: the user's home).
    #[arg(long)]
    pub workdir: Option<String>,
    /// What to run instead of a login shell.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the terminal session; returns the remote process's exit code.
///
/// # Errors
/// The server's refusal, or stdin that is not a terminal.
pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    session(&args.server, &args.run_id, args.workdir.clone(), &args.command)
}

/// A terminal session running `command` (a login shell when empty).
///
/// # Errors
/// As [`run`].
pub fn session(server: &Server, run_id: &str, cwd: Option<String>, command: &[String]) -> Result<ExitCode, CliError> {
    let stdin = rustix::stdio::stdin();
    if !rustix::termios::isatty(stdin) {
        return Err(CliError::Usage(
            "an interactive terminal needs stdin to be a terminal; run `agentbox exec RUN_ID -- CMD` without -it instead"
                .into(),
        ));
    }
    let size = rustix::termios::tcgetwinsize(stdin).ok().map(|s| (s.ws_row.max(1), s.ws_col.max(1)));
    let options = TerminalOptions {
        size,
        command: (!command.is_empty()).then(|| command.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")),
        cwd,
    };
    let client = server.client()?;
    let exit = block_on(async { Ok(client.terminal(run_id, &options).await?.attach().await?) })?;
    match exit {
        Some(e) => Ok(ExitCode::from(u8::try_from(e.exit_code.clamp(0, 255)).unwrap_or(1))),
        None => Err(CliError::Usage("the terminal's connection closed before its process exited".into())),
    }
}

/// `arg` as one bash word.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b)) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn words_survive_bash() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME;rm"), "'$HOME;rm'");
    }
}
