//! `agentbox`: the command line.
//!
//! This file only parses the command line and dispatches; each subcommand
//! lives in its own module under `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Isolated Linux sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "agentbox", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the sandbox presets and their full configuration.
    Presets(cmd::presets::Args),
    Run(cmd::run::Args),
    /// List the agent tools, or call one on a sandbox.
    Tool(cmd::tool::Args),
    /// Search the web with the configured providers.
    Search(cmd::search::Args),
    /// List or delete the local snapshots (take one with `run --save-snapshot`, start from one with `run --from-snapshot`).
    Snapshots(cmd::snapshots::Args),
    /// Create a sandbox on agentboxd and print its run id.
    Create(cmd::sandboxes::CreateArgs),
    /// Run a command in a sandbox on agentboxd, streaming its output; exits with its exit code.
    Exec(cmd::exec::Args),
    /// Open an interactive shell (or run a program on a terminal) in a sandbox on agentboxd.
    Shell(cmd::shell::Args),
    /// Reattach to a kept terminal (`shell --keep`) in a sandbox on agentboxd, replaying what it printed meanwhile.
    Attach(cmd::shell::AttachArgs),
    /// List the kept terminals of a sandbox on agentboxd (`--close ID` hangs one up).
    Terminals(cmd::shell::TerminalsArgs),
    /// Copy files or directories between this machine and a sandbox on agentboxd (RUN_ID:PATH).
    Cp(cmd::cp::Args),
    /// List the sandboxes on agentboxd.
    Ls(cmd::sandboxes::LsArgs),
    /// Print sandboxes on agentboxd as JSON (configuration, state, counters).
    Inspect(cmd::sandboxes::RunIds),
    /// Show live metrics of sandboxes on agentboxd (all of them when no run id is given).
    Stats(cmd::sandboxes::StatsArgs),
    /// Destroy sandboxes on agentboxd.
    Rm(cmd::sandboxes::RunIds),
    /// Freeze every process of sandboxes on agentboxd (memory and files stay).
    Pause(cmd::sandboxes::RunIds),
    /// Let paused sandboxes on agentboxd continue.
    Resume(cmd::sandboxes::RunIds),
    /// Print the output of a sandbox's background processes on agentboxd (`--json` lists them).
    Logs(cmd::sandboxes::LogsArgs),
    /// Stop sandboxes on agentboxd: their processes end, their files stay on disk (across restarts of agentboxd
    /// and of the host) until `start` or `rm`.
    Stop(cmd::sandboxes::RunIds),
    /// Start stopped sandboxes on agentboxd: a fresh sandbox boots on each one's files.
    Start(cmd::sandboxes::RunIds),
    /// Snapshot a sandbox's files on agentboxd (fork it with `create --from-snapshot NAME`).
    Snapshot(cmd::sandboxes::SnapshotArgs),
    /// Show a sandbox's egress log on agentboxd: its connections, and the requests to inspected hosts.
    Egress(cmd::egress::EgressArgs),
    /// List, set or delete the secrets agentboxd's egress proxy adds to requests (values are never shown).
    Secret(cmd::egress::SecretArgs),
    /// Put a sandbox's files on agentboxd back to a snapshot (a new sandbox from it takes the run's place;
    /// processes don't survive).
    Restore(cmd::sandboxes::SnapshotArgs),
    /// Named, persistent volumes on agentboxd: create, ls, rm (mount one with `create --volume NAME:/path`).
    Volume(cmd::volumes::Args),
    /// Pull, list, remove and prune images in the local image store.
    Image(cmd::image::Args),
    /// Build templates from a Dockerfile into the local image store, list and remove them.
    Template(cmd::template::Args),
    /// Serve the REST API, as agentboxd: [--listen ADDR:PORT] [--data-dir DIR] [--config FILE] [--backend local|e2b].
    Serve(cmd::serve::Args),
    /// Serve the sandboxes and agent tools to an MCP client over stdio.
    Mcp(cmd::mcp::Args),
    /// Report what this host gives the local backend: cgroup version, controllers available and delegated, and
    /// what that means for sandbox limits.
    Doctor(cmd::doctor::Args),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(cmd::docs::CompletionsArgs),
    /// Write man pages (agentbox.1 and one per command) to a directory.
    Man(cmd::docs::ManArgs),
}

/// [`Cli`] with `run` alone, for a command line whose first argument is `run`: building the arguments of every
/// subcommand, as [`Cli`] does, took 0.5 to 0.9 ms of each `agentbox run` (about a twentieth of a whole
/// `agentbox run -- true`). `run`'s help, version and errors read the same either way.
#[derive(Debug, Parser)]
#[command(name = "agentbox", version, propagate_version = true)]
struct RunCli {
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    Run(cmd::run::Args),
}

fn main() -> ExitCode {
    if let Some(prepared) = cmd::run::prepare() {
        let RunCli { command: RunCommand::Run(args) } = RunCli::parse();
        return run(&args, prepared);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Presets(args) => cmd::presets::run(&args),
        Command::Run(args) => return run(&args, cmd::run::Prepared::default()),
        Command::Tool(args) => match cmd::tool::run(&args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Exec(args) => match cmd::exec::run(&args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Shell(args) => match cmd::shell::run(&args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Attach(args) => match cmd::shell::attach(&args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Terminals(args) => cmd::shell::terminals(&args),
        Command::Create(args) => cmd::sandboxes::create(&args),
        Command::Cp(args) => cmd::cp::run(&args),
        Command::Ls(args) => cmd::sandboxes::ls(&args),
        Command::Inspect(args) => cmd::sandboxes::each(cmd::sandboxes::Verb::Inspect, &args),
        Command::Stats(args) => cmd::sandboxes::stats(&args),
        Command::Rm(args) => cmd::sandboxes::each(cmd::sandboxes::Verb::Rm, &args),
        Command::Pause(args) => cmd::sandboxes::each(cmd::sandboxes::Verb::Pause, &args),
        Command::Resume(args) => cmd::sandboxes::each(cmd::sandboxes::Verb::Resume, &args),
        Command::Logs(args) => cmd::sandboxes::logs(&args),
        Command::Stop(args) => cmd::sandboxes::each(cmd::sandboxes::Verb::Stop, &args),
        Command::Start(args) => cmd::sandboxes::each(cmd::sandboxes::Verb::Start, &args),
        Command::Snapshot(args) => cmd::sandboxes::snapshot(&args),
        Command::Egress(args) => cmd::egress::egress(&args),
        Command::Secret(args) => cmd::egress::secret(&args),
        Command::Restore(args) => cmd::sandboxes::restore(&args),
        Command::Volume(args) => cmd::volumes::run(&args),
        Command::Search(args) => cmd::search::run(&args),
        Command::Image(args) => cmd::image::run(&args),
        Command::Template(args) => cmd::template::run(&args),
        Command::Completions(args) => cmd::docs::completions::<Cli>(&args),
        Command::Man(args) => cmd::docs::man::<Cli>(&args),
        Command::Snapshots(args) => cmd::snapshots::run(&args),
        Command::Serve(args) => return cmd::serve::run(args),
        Command::Mcp(args) => cmd::mcp::run(&args),
        Command::Doctor(args) => cmd::doctor::run(&args),
    };
    cmd::report(result)
}

/// `agentbox run`: the command's exit code, or its error reported.
fn run(args: &cmd::run::Args, prepared: cmd::run::Prepared) -> ExitCode {
    match cmd::run::run(args, prepared) {
        Ok(code) => code,
        Err(e) => cmd::report(Err(e)),
    }
}
