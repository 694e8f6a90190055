//! `agentbox exec`: a command in a sandbox on agentboxd, its output streamed as it happens, exiting
//! with the command's exit code.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use agentbox_client::ExecEvent;
use serde_json::json;

use super::CliError;
use super::remote::{Server, block_on, env_object};

/// Arguments of `agentbox exec`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox exec task-1 -- python3 -c 'print(6 * 7)'\n  agentbox exec task-1 --workdir /tmp --env MODE=test -- bash -c 'echo $MODE; pwd'\n  agentbox exec -it task-1 -- bash"
)]
pub struct Args {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// An environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default: the user's home).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Time limit, in seconds or with a unit ("90s", "5m"); exits 124 when hit.
    #[arg(long, value_parser = agentbox_config::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON object at the end (exit code, stdout, stderr...) instead of streaming.
    #[arg(long, conflicts_with = "tty")]
    pub json: bool,
    /// Start the command in the background and print its pid and output file (read it with `agentbox logs`).
    #[arg(short = 'd', long, conflicts_with_all = ["tty", "interactive", "json", "timeout"])]
    pub detach: bool,
    /// Run as this user: `root` (root inside, in a sandbox created with --allow-root) or the sandbox's user.
    #[arg(short = 'u', long, value_name = "USER", conflicts_with = "tty")]
    pub user: Option<String>,
    /// Keep stdin open for the command (with -t: an interactive terminal session).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal connected to this one (use as -it, like docker exec -it).
    #[arg(short = 't', long, requires = "interactive")]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns its exit code (128+signal when killed, 124 on timeout).
///
/// # Errors
/// The server's refusal (unknown run, paused sandbox), or a server that can't be reached.
pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    if args.detach {
        return detach(args);
    }
    if args.tty {
        if !args.env.is_empty() || args.timeout.is_some() {
            return Err(CliError::Usage("--env and --timeout don't apply to -it sessions".into()));
        }
        let request = super::shell::Request { cwd: args.workdir.as_deref(), command: &args.command, keep: false };
        return super::shell::session(&args.server, &args.run_id, &request);
    }
    if args.interactive {
        return Err(CliError::Usage(
            "-i alone is not supported: use -it for an interactive terminal, or pipe input with `agentbox cp`".into(),
        ));
    }
    let mut body = json!({ "argv": args.command });
    if let serde_json::Value::Object(m) = &mut body {
        if !args.env.is_empty() {
            m.insert("env".into(), serde_json::Value::Object(env_object(&args.env, "--env")?));
        }
        if let Some(w) = &args.workdir {
            m.insert("cwd".into(), json!(w));
        }
        if let Some(t) = args.timeout {
            m.insert("timeout".into(), json!(t.as_secs_f64()));
        }
        if let Some(u) = &args.user {
            m.insert("user".into(), json!(u));
        }
    }
    let client = args.server.client()?;
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut failed_write = None;
    let exit = block_on(async {
        Ok(client
            .exec(&args.run_id, &body, |event| {
                let written = match (&event, args.json) {
                    (ExecEvent::Stdout(t), true) => {
                        stdout.push_str(t);
                        Ok(())
                    }
                    (ExecEvent::Stderr(t), true) => {
                        stderr.push_str(t);
                        Ok(())
                    }
                    (ExecEvent::Stdout(t), false) => {
                        io::stdout().write_all(t.as_bytes()).and_then(|()| io::stdout().flush())
                    }
                    (ExecEvent::Stderr(t), false) => io::stderr().write_all(t.as_bytes()),
                };
                if let Err(e) = written {
                    failed_write.get_or_insert(e);
                }
            })
            .await?)
    })?;
    if let Some(e) = failed_write {
        return Err(CliError::Output(e));
    }
    if args.json {
        let mut out = io::stdout().lock();
        let v = json!({
            "exit_code": exit.exit_code, "signal": exit.signal, "timed_out": exit.timed_out,
            "oom_killed": exit.oom_killed, "truncated": exit.truncated, "duration_ms": exit.duration_ms,
            "stdout": stdout, "stderr": stderr,
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    }
    Ok(ExitCode::from(u8::try_from(exit.exit_code.clamp(0, 255)).unwrap_or(1)))
}

/// Quotes `argv` for bash, each word in single quotes.
fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" ")
}

/// `exec -d`: starts the command in the background (the `shell` tool's background mode) and prints its pid and
/// output file.
fn detach(args: &Args) -> Result<ExitCode, CliError> {
    let mut input = json!({ "command": shell_line(&args.command), "background": true });
    if let serde_json::Value::Object(m) = &mut input {
        if !args.env.is_empty() {
            m.insert("env".into(), serde_json::Value::Object(env_object(&args.env, "--env")?));
        }
        if let Some(w) = &args.workdir {
            m.insert("cwd".into(), json!(w));
        }
        match args.user.as_deref() {
            Some("root") => {
                m.insert("as_root".into(), json!(true));
            }
            Some(other) if other != "user" => {
                return Err(CliError::Usage(format!(
                    "-u {other}: a detached command runs as the sandbox's user or root"
                )));
            }
            _ => {}
        }
    }
    let client = args.server.client()?;
    let started = block_on(async { Ok(client.call_tool(&args.run_id, "shell", &input).await?) })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} {}", started["pid"], started["output_file"].as_str().unwrap_or("-"))?;
    Ok(ExitCode::SUCCESS)
}
