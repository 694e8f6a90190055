//! `agentbox run`: a command or code in a throwaway sandbox, streamed, with the command's exit code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentbox_config::{ConfigLoader, Preset};
use agentbox_core::{CodeRequest, CreateRequest, ExecEvent, ExecRequest, ExecStream, Language};
use agentbox_server::BackendKind;

use super::CliError;

/// Run a command or code in a throwaway sandbox and exit with its exit code.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox run -- python3 -c 'print(6 * 7)'\n  agentbox run --memory-mb 256 --timeout 10s -- bash -c 'ulimit -a'\n  agentbox run --lang python -c 'import sys; print(sys.version)'\n  agentbox run --lang javascript script.js\n  E2B_API_KEY=... agentbox run --backend e2b -- uname -a"
)]
pub struct Args {
    /// Where the sandbox runs: local (this Linux host, as root) or e2b (E2B's cloud; needs E2B_API_KEY).
    #[arg(long, default_value = "local", value_name = "local|e2b")]
    pub backend: BackendKind,
    /// Preset to start from: default, lightweight, heavy_compute or browser.
    #[arg(long, default_value = "default")]
    pub preset: String,
    #[command(flatten)]
    pub resources: super::Resources,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids: Option<u32>,
    /// Time limit, in seconds or with a unit ("90s", "5m"); exits 124 when hit.
    #[arg(long, value_parser = agentbox_config::parse_duration)]
    pub timeout: Option<Duration>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default: /home/user).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Run code in this language instead of a command: python, javascript, typescript or bash.
    #[arg(long)]
    pub lang: Option<String>,
    /// The code to run (with --lang).
    #[arg(short = 'c', requires = "lang")]
    pub code: Option<String>,
    /// Start from this snapshot's files instead of an empty home (see `agentbox snapshots`).
    #[arg(long, value_name = "NAME")]
    pub from_snapshot: Option<String>,
    /// Keep the sandbox's files as a snapshot of this name when the command ends (whatever its exit code).
    #[arg(long, value_name = "NAME")]
    pub save_snapshot: Option<String>,
    /// The command and its arguments, or with --lang a source file on the host.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--env {p:?} must look like NAME=VALUE")))
        })
        .collect()
}

/// What [`prepare`] made ready for [`run`].
#[derive(Debug, Default)]
pub struct Prepared {
    /// The way to the process the caller waits for, which exits with the command's code as soon as it is known
    /// (see `agentbox_local::early_exit`).
    caller: Option<agentbox_local::early_exit::Caller>,
}

/// At the top of `main`: when the command is `run` and the process is root (the local backend's condition),
/// splits the process so that the caller gets the command's exit code before the sandbox's destroy
/// (`agentbox_local::early_exit`), then forks the local backend's zygote, while the process has one thread and
/// has read nothing, instead of executing the binary again for it at the create. Only the first two arguments
/// are looked at, so no copy of the rest lands in memory the zygote is forked with; with `--backend e2b` the
/// fork idles until the exit.
///
/// Returns `None` when the first argument is not `run`.
pub fn prepare() -> Option<Prepared> {
    if std::env::args_os().nth(1).is_none_or(|a| a != "run") {
        return None;
    }
    let mut prepared = Prepared::default();
    if rustix::process::geteuid().is_root() {
        prepared.caller = agentbox_local::early_exit::split();
        let _ = agentbox_local::fork_zygote_now();
    }
    Some(prepared)
}

/// Runs the command; returns its exit code (128+signal when killed, 124 on timeout).
///
/// # Errors
/// Bad arguments, or a sandbox that could not be created.
pub fn run(args: &Args, prepared: Prepared) -> Result<ExitCode, CliError> {
    let egress = agentbox_server::EgressSettings::default();
    let settings = agentbox_server::cli::BackendSettings {
        egress: &egress,
        crash_keeper: None,
        images: None,
        // Its housekeeping (what crashed runs left) is done at the end, after the caller has its answer.
        host_process: agentbox_local::HostProcess::OneShot,
    };
    std::thread::scope(|scope| {
        // The backend opens on a thread of its own (cgroup detection, the storage pool, reaping: most of a
        // millisecond) while the configuration is read and the runtime starts.
        // Its result comes back over a channel, not by joining: the thread's own exit (its stack given back, its
        // descriptors) is no longer waited for.
        let (opened, result) = std::sync::mpsc::sync_channel(1);
        let opening = std::thread::Builder::new().name("agentbox-open".into()).spawn_scoped(scope, move || {
            let _ = opened.send(agentbox_server::cli::open_backend(args.backend, &settings));
        })?;
        let (config, job) = config_and_job(args)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let backend = match result.recv() {
            Ok(opened) => opened?,
            // It panicked before sending: its join has the panic.
            Err(_) => std::panic::resume_unwind(
                opening.join().err().unwrap_or_else(|| Box::new("the backend's opening thread ended without a result")),
            ),
        };
        let code = runtime.block_on(async move {
            let request = CreateRequest { from_snapshot: args.from_snapshot.clone(), ..CreateRequest::new(config) };
            // A command starts with the create (the local backend sends it with the sandbox's setup); code is
            // written into the sandbox first.
            let (sandbox, started) = match job {
                Job::Exec(r) => {
                    let (sandbox, stream) = backend.create_and_exec(request, r).await?;
                    (sandbox, Ok(stream))
                }
                Job::Code(r) => {
                    let sandbox = backend.create(request).await?;
                    let started = backend.run_code(&sandbox.id, r).await;
                    (sandbox, started)
                }
            };
            let result = tokio::select! {
                r = async { drive(started?).await } => r,
                _ = tokio::signal::ctrl_c() => Ok(130),
            };
            let saved = match &args.save_snapshot {
                Some(name) => backend.snapshot(&sandbox.id, name).await.map(drop),
                None => Ok(()),
            };
            let code = result.map(|code| u8::try_from(code.clamp(0, 255)).unwrap_or(1));
            // The command is over and its output written: with the local backend, the caller gets its code now
            // and the sandbox is destroyed after (a failed destroy is then left to the next process's orphan
            // reaping, as after a crash). An error is still reported by this process, after the destroy.
            if let (Ok(code), Ok(()), Some(caller), BackendKind::Local) = (&code, &saved, prepared.caller, args.backend)
            {
                caller.answer(*code);
            }
            let destroyed = backend.destroy(&sandbox.id).await;
            let code = code?;
            saved?;
            destroyed?;
            Ok(ExitCode::from(code))
        });
        // The sandbox is destroyed by now: the process is about to exit, so don't wait for the runtime's idle
        // threads to wind down one by one (0.3 ms of every run).
        runtime.shutdown_background();
        code
    })
}

/// The sandbox's configuration and what to run in it, from the arguments.
fn config_and_job(args: &Args) -> Result<(agentbox_config::SandboxConfig, Job), CliError> {
    let preset: Preset = args.preset.parse()?;
    let mut loader = ConfigLoader::new(preset).env_vars(std::env::vars());
    for (key, value) in args.resources.overrides() {
        loader = loader.set(key, value);
    }
    if let Some(image) = args.resources.image_reference() {
        loader = loader.set("image", image.as_str());
    }
    if let Some(v) = args.pids {
        loader = loader.set("security.max_processes", u64::from(v));
    }
    let config = loader.load().map_err(|e| CliError::Usage(e.to_string()))?;
    let env = parse_env(&args.env)?;
    let job = match &args.lang {
        Some(lang) => {
            let language: Language = lang.parse()?;
            let code = match (&args.code, args.command.as_slice()) {
                (Some(code), []) => code.clone(),
                (None, [file]) => std::fs::read_to_string(PathBuf::from(file))
                    .map_err(|e| CliError::Usage(format!("cannot read {file}: {e}")))?,
                _ => return Err(CliError::Usage("with --lang, give either -c CODE or one source FILE".into())),
            };
            Job::Code(CodeRequest { language, code, cwd: args.workdir.clone(), env, timeout: args.timeout })
        }
        None => {
            if args.command.is_empty() {
                return Err(CliError::Usage("nothing to run: give a command after --, or --lang with -c CODE".into()));
            }
            Job::Exec(ExecRequest {
                cwd: args.workdir.clone(),
                env,
                timeout: args.timeout,
                ..ExecRequest::argv(args.command.clone())
            })
        }
    };
    Ok((config, job))
}

enum Job {
    Exec(ExecRequest),
    Code(CodeRequest),
}

async fn drive(mut stream: ExecStream) -> Result<i32, CliError> {
    let mut code = 1;
    while let Some(event) = stream.next().await {
        match event {
            ExecEvent::Stdout(b) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&b)?;
                out.flush()?;
            }
            ExecEvent::Stderr(b) => {
                let mut err = std::io::stderr().lock();
                err.write_all(&b)?;
                err.flush()?;
            }
            ExecEvent::Exit(status) => {
                if status.oom_killed {
                    let _ = writeln!(
                        std::io::stderr(),
                        "agentbox: the command was killed: out of memory (raise --memory-mb)"
                    );
                } else if status.timed_out {
                    let _ = writeln!(
                        std::io::stderr(),
                        "agentbox: the command timed out and was killed with its whole process tree"
                    );
                }
                code = status.exit_code;
            }
        }
    }
    Ok(code)
}
