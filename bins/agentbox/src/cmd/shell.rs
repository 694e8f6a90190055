//! `agentbox shell RUN_ID` and `agentbox exec -it RUN_ID -- CMD`: an interactive terminal in a sandbox
//! on agentboxd, connected to this one (raw mode, window size followed, Ctrl-C sent to the remote
//! process, this terminal restored at the end). With `shell --keep`, the terminal is kept: Ctrl-P
//! Ctrl-Q (or a dropped connection) detaches and leaves it running, `agentbox attach RUN_ID
//! TERMINAL_ID` reattaches (replaying what it printed meanwhile), `agentbox terminals RUN_ID` lists.

use std::io::Write;
use std::process::ExitCode;

use agentbox_client::{AttachEnd, AttachOptions, DETACH_KEYS, TerminalOptions, TerminalOutput, TerminalSession};

use super::CliError;
use super::remote::{Server, block_on};

/// Arguments of `agentbox shell`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox shell task-1\n  agentbox shell task-1 -- python3\n  agentbox exec -it task-1 -- htop\n  agentbox shell task-1 --keep    # Ctrl-P Ctrl-Q detaches; `agentbox attach task-1 ID` comes back"
)]
pub struct Args {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// Working directory inside the sandbox (default: the user's home).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Keep the terminal running when this client leaves: Ctrl-P Ctrl-Q detaches (as does a dropped
    /// connection), and `agentbox attach RUN_ID TERMINAL_ID` reattaches, replaying what it printed
    /// meanwhile. Its id is printed first.
    #[arg(long)]
    pub keep: bool,
    /// What to run instead of a login shell.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the terminal session; returns the remote process's exit code.
///
/// # Errors
/// The server's refusal, or stdin that is not a terminal.
pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let request = Request { cwd: args.workdir.as_deref(), command: &args.command, keep: args.keep };
    session(&args.server, &args.run_id, &request)
}

/// What a terminal session runs, and how.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Working directory (the user's home when absent).
    pub cwd: Option<&'a str>,
    /// The program and its arguments (a login shell when empty).
    pub command: &'a [String],
    /// A kept terminal, which detaching leaves running.
    pub keep: bool,
}

/// Arguments of `agentbox attach`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Ctrl-P Ctrl-Q detaches again, leaving the terminal running.\n\nExamples:\n  agentbox terminals task-1\n  agentbox attach task-1 term-1"
)]
pub struct AttachArgs {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// The kept terminal's id (`agentbox terminals RUN_ID` lists them).
    pub terminal_id: String,
}

/// Arguments of `agentbox terminals`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  agentbox terminals task-1\n  agentbox terminals task-1 --close term-1")]
pub struct TerminalsArgs {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// Hang this kept terminal up (its processes get SIGHUP) instead of listing.
    #[arg(long, value_name = "TERMINAL_ID")]
    pub close: Option<String>,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A terminal session running the request's command (a login shell when empty).
///
/// # Errors
/// As [`run`].
pub fn session(server: &Server, run_id: &str, request: &Request<'_>) -> Result<ExitCode, CliError> {
    let size = tty_size()?;
    let command = request.command;
    let options = TerminalOptions {
        size,
        command: (!command.is_empty()).then(|| command.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")),
        cwd: request.cwd.map(str::to_owned),
        keep: request.keep,
    };
    let client = server.client()?;
    block_on(async {
        let session = client.terminal(run_id, &options).await?;
        if request.keep { drive_kept(session, run_id).await } else { drive(session, &AttachOptions::default()).await }
    })
}

/// Reattaches to a kept terminal (`agentbox attach`).
///
/// # Errors
/// An unknown run or terminal, or stdin that is not a terminal.
pub fn attach(args: &AttachArgs) -> Result<ExitCode, CliError> {
    tty_size()?;
    let client = args.server.client()?;
    block_on(async { drive_kept(client.attach_terminal(&args.run_id, &args.terminal_id).await?, &args.run_id).await })
}

/// Lists a run's kept terminals, or closes one (`agentbox terminals`).
///
/// # Errors
/// An unknown run or terminal, or a server that can't be reached.
pub fn terminals(args: &TerminalsArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    if let Some(id) = &args.close {
        return block_on(async { Ok(client.close_terminal(&args.run_id, id).await?) });
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let list = block_on(async { Ok(client.terminals_json(&args.run_id).await?) })?;
        serde_json::to_writer_pretty(&mut out, &list["terminals"])?;
        writeln!(out)?;
        return Ok(());
    }
    let list = block_on(async { Ok(client.terminals(&args.run_id).await?) })?;
    if list.is_empty() {
        writeln!(out, "no kept terminals; open one with `agentbox shell {} --keep`", args.run_id)?;
        return Ok(());
    }
    writeln!(out, "{:<12} {:<10} {:<9} {:>9}  COMMAND", "ID", "STATE", "SIZE", "BUFFERED")?;
    for t in &list {
        let state = match (t.exited, t.exit_code, t.attached) {
            (true, Some(code), _) => format!("exited {code}"),
            (true, None, _) => "exited".to_owned(),
            (false, _, true) => "attached".to_owned(),
            (false, _, false) => "detached".to_owned(),
        };
        let size = format!("{}x{}", t.size.cols, t.size.rows);
        writeln!(out, "{:<12} {:<10} {:<9} {:>9}  {}", t.id, state, size, t.buffered_bytes, t.command)?;
    }
    Ok(())
}

/// This terminal's size; an error when stdin is not a terminal.
fn tty_size() -> Result<Option<(u16, u16)>, CliError> {
    let stdin = rustix::stdio::stdin();
    if !rustix::termios::isatty(stdin) {
        return Err(CliError::Usage(
            "an interactive terminal needs stdin to be a terminal; run `agentbox exec RUN_ID -- CMD` without -it instead"
                .into(),
        ));
    }
    Ok(rustix::termios::tcgetwinsize(stdin).ok().map(|s| (s.ws_row.max(1), s.ws_col.max(1))))
}

/// Connects a session to this terminal until its process exits; answers its exit code.
async fn drive(session: TerminalSession, options: &AttachOptions) -> Result<ExitCode, CliError> {
    match session.attach(options).await? {
        AttachEnd::Exited(e) => Ok(ExitCode::from(u8::try_from(e.exit_code.clamp(0, 255)).unwrap_or(1))),
        AttachEnd::Detached | AttachEnd::Closed => {
            Err(CliError::Usage("the terminal's connection closed before its process exited".into()))
        }
    }
}

/// Connects a kept terminal's session to this terminal until its process exits or the detach keys are
/// typed; says how to come back.
async fn drive_kept(mut session: TerminalSession, run_id: &str) -> Result<ExitCode, CliError> {
    let id = match session.next().await? {
        Some(TerminalOutput::Kept { id, .. }) => id,
        other => {
            return Err(CliError::Usage(format!(
                "agentboxd did not name the kept terminal (got {other:?}); is it older than this client?"
            )));
        }
    };
    let again = format!("`agentbox attach {run_id} {id}`");
    eprintln!("terminal {id}: Ctrl-P Ctrl-Q detaches, leaving it running; {again} reattaches\r");
    match session.attach(&AttachOptions { detach_keys: DETACH_KEYS.to_vec() }).await? {
        AttachEnd::Exited(e) => Ok(ExitCode::from(u8::try_from(e.exit_code.clamp(0, 255)).unwrap_or(1))),
        AttachEnd::Detached => {
            eprintln!("\r\ndetached from terminal {id}, which runs on; {again} reattaches");
            Ok(ExitCode::SUCCESS)
        }
        AttachEnd::Closed => Err(CliError::Usage(format!(
            "the connection to terminal {id} closed (another client attached, it was closed, or agentboxd went \
             away); if it still runs, {again} reattaches"
        ))),
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
