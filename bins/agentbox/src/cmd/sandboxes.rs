//! `agentbox create`, `ls`, `inspect`, `stats`, `rm`, `pause`, `resume` and `snapshot`: sandboxes on
//! agentboxd.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::CliError;
use super::remote::{Server, block_on, env_object};

/// Arguments of `agentbox create`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox create task-1\n  agentbox create task-2 --preset lightweight --memory-mb 256 --network-allow pypi.org --network-allow '*.pythonhosted.org'\n  agentbox create fork-1 --from-snapshot before-refactor"
)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: Server,
    /// The run id (1-128 letters, digits, `-`, `_`, `.`); a fresh one when absent.
    pub run_id: Option<String>,
    /// Preset to start from: default, lightweight, heavy_compute or browser.
    #[arg(long)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub resources: super::Resources,
    /// Allow outbound connections to this domain (repeatable; `*.example.com` for subdomains). Turns networking on.
    #[arg(long = "network-allow", value_name = "DOMAIN")]
    pub network_allow: Vec<String>,
    /// An environment variable of every execution (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Start from this snapshot's files.
    #[arg(long, value_name = "NAME")]
    pub from_snapshot: Option<String>,
    /// Mount a volume (repeatable): `NAME:/path`, or `NAME:/path:ro` read-only (see `agentbox volume`).
    #[arg(long = "volume", value_name = "NAME:/PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Let commands run as root inside (`exec -u root`): root of the sandbox's own user namespace, for
    /// `apt-get install` in an image's root.
    #[arg(long)]
    pub allow_root: bool,
    /// What runs when the sandbox starts (and starts again), as a background process (`agentbox logs`):
    /// `image` for the image's Entrypoint and Cmd, or a command line run by `/bin/sh -c`.
    #[arg(long, value_name = "image|COMMAND")]
    pub start: Option<String>,
    /// Print the sandbox as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Creates a sandbox on agentboxd and prints its run id.
///
/// # Errors
/// The server's refusal, or a server that can't be reached.
pub fn create(args: &CreateArgs) -> Result<(), CliError> {
    let run_id = args.run_id.clone().unwrap_or_else(fresh_run_id);
    let mut body = json!({ "run_id": run_id });
    let set = |body: &mut Value, k: &str, v: Value| {
        if let Value::Object(m) = body {
            m.insert(k.to_owned(), v);
        }
    };
    if let Some(p) = &args.preset {
        set(&mut body, "preset", json!(p));
    }
    for (key, value) in args.resources.overrides() {
        set(&mut body, key, json!(value));
    }
    if let Some(image) = args.resources.image_reference() {
        set(&mut body, "image", json!(image));
    }
    if !args.network_allow.is_empty() {
        set(&mut body, "network", json!({ "enabled": true, "allowed_domains": args.network_allow }));
    }
    if !args.env.is_empty() {
        set(&mut body, "environment_vars", Value::Object(env_object(&args.env, "--env")?));
    }
    if let Some(s) = &args.from_snapshot {
        set(&mut body, "from_snapshot", json!(s));
    }
    if args.allow_root {
        set(&mut body, "allow_root_inside", json!(true));
    }
    match args.start.as_deref() {
        None => {}
        Some("image") => set(&mut body, "start", json!("image")),
        Some(line) => set(&mut body, "start", json!({ "command": ["/bin/sh", "-c", line] })),
    }
    if !args.volumes.is_empty() {
        let mounts = args.volumes.iter().map(|v| super::volumes::parse_mount(v)).collect::<Result<Vec<_>, _>>()?;
        set(&mut body, "volumes", Value::Array(mounts));
    }
    let client = args.server.client()?;
    let sandbox = block_on(async { Ok(client.create(&body).await?) })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &sandbox)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", str_of(&sandbox, "run_id"))?;
    }
    Ok(())
}

fn fresh_run_id() -> String {
    let mut b = [0u8; 4];
    if getrandom_fill(&mut b).is_err() {
        b = std::process::id().to_le_bytes();
    }
    format!("run-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

fn getrandom_fill(b: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

pub(super) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// Arguments of `agentbox ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub server: Server,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Lists agentboxd's sandboxes.
///
/// # Errors
/// A server that can't be reached.
pub fn ls(args: &LsArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    let list = block_on(async { Ok(client.list().await?) })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
        return Ok(());
    }
    if list.is_empty() {
        writeln!(out, "no sandboxes; create one with `agentbox create`")?;
        return Ok(());
    }
    writeln!(out, "{:<32} {:<11} {:<14} {:<8} {:>6}  CREATED", "RUN ID", "STATE", "PRESET", "BACKEND", "EXECS")?;
    for s in &list {
        writeln!(
            out,
            "{:<32} {:<11} {:<14} {:<8} {:>6}  {}",
            str_of(s, "run_id"),
            str_of(s, "state"),
            str_of(s, "preset"),
            str_of(s, "backend"),
            s.get("execution_count").and_then(Value::as_u64).unwrap_or(0),
            str_of(s, "created_at"),
        )?;
    }
    Ok(())
}

/// Arguments of the verbs that take run ids.
#[derive(Debug, clap::Args)]
pub struct RunIds {
    #[command(flatten)]
    pub server: Server,
    /// Run ids.
    #[arg(required = true)]
    pub run_ids: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which per-sandbox verb to apply.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    /// Print the whole sandbox.
    Inspect,
    /// Destroy it.
    Rm,
    /// Freeze it.
    Pause,
    /// Thaw it.
    Resume,
    /// End its processes, keeping its files.
    Stop,
    /// Boot a fresh sandbox on a stopped one's files.
    Start,
}

/// Applies `verb` to each run id in turn; a failure is reported and the others still go ahead.
///
/// # Errors
/// [`CliError::Partial`] when any run id failed, after every one was tried.
pub fn each(verb: Verb, args: &RunIds) -> Result<(), CliError> {
    let client = args.server.client()?;
    block_on(async {
        let mut results = Vec::new();
        let mut failed = 0usize;
        for id in &args.run_ids {
            let r = match verb {
                Verb::Inspect => client.get(id).await,
                Verb::Rm => client.delete(id).await.map(|()| json!({ "run_id": id, "deleted": true })),
                Verb::Pause => client.pause(id).await,
                Verb::Resume => client.resume(id).await,
                Verb::Stop => client.stop(id).await,
                Verb::Start => client.start(id).await,
            };
            match r {
                Ok(v) => results.push(v),
                Err(e) => {
                    let _ = writeln!(io::stderr(), "agentbox: {id}: {e}");
                    failed += 1;
                }
            }
        }
        let mut out = io::stdout().lock();
        if args.json || matches!(verb, Verb::Inspect) {
            let v =
                if results.len() == 1 && args.run_ids.len() == 1 { results.remove(0) } else { Value::Array(results) };
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
        } else {
            for v in &results {
                match verb {
                    Verb::Rm => writeln!(out, "{}", str_of(v, "run_id"))?,
                    _ => writeln!(out, "{} {}", str_of(v, "run_id"), str_of(v, "state"))?,
                }
            }
        }
        match failed {
            0 => Ok(()),
            n => Err(CliError::Partial(format!("{n} of {} run ids failed (see above)", args.run_ids.len()))),
        }
    })
}

/// Arguments of `agentbox stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub server: Server,
    /// Only these runs (every sandbox when none).
    pub run_ids: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints live metrics of sandboxes.
///
/// # Errors
/// A server that can't be reached, or an unknown run.
pub fn stats(args: &StatsArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    let rows = block_on(async {
        let ids = if args.run_ids.is_empty() {
            client.list().await?.iter().map(|s| str_of(s, "run_id").to_owned()).collect()
        } else {
            args.run_ids.clone()
        };
        let mut rows = Vec::new();
        for id in ids {
            let m = client.metrics(&id).await?;
            rows.push((id, m));
        }
        Ok(rows)
    })?;
    let mut out = io::stdout().lock();
    if args.json {
        let v: serde_json::Map<String, Value> = rows.into_iter().collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    let num = |m: &Value, k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    writeln!(
        out,
        "{:<32} {:>7} {:>10} {:>10} {:>10} {:>12} {:>12} {:>6}",
        "RUN ID", "CPU %", "MEM MiB", "PEAK MiB", "DISK GiB", "NET IN", "NET OUT", "EXECS"
    )?;
    for (id, m) in rows {
        writeln!(
            out,
            "{:<32} {:>7.1} {:>10.1} {:>10.1} {:>10.3} {:>12} {:>12} {:>6}",
            id,
            num(&m, "cpu_usage_percent"),
            num(&m, "memory_used_mb"),
            num(&m, "memory_peak_mb"),
            num(&m, "disk_used_gb"),
            m.get("network_in_bytes").and_then(Value::as_u64).unwrap_or(0),
            m.get("network_out_bytes").and_then(Value::as_u64).unwrap_or(0),
            m.get("execution_count").and_then(Value::as_u64).unwrap_or(0),
        )?;
    }
    Ok(())
}

/// Arguments of `agentbox snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// The snapshot's name (1-200 letters, digits, `.`, `_`, `-`); start a fork with `create --from-snapshot NAME`.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Snapshots a sandbox's files on agentboxd.
///
/// # Errors
/// The server's refusal (a taken name, a backend without snapshots).
pub fn snapshot(args: &SnapshotArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    let s = block_on(async { Ok(client.snapshot(&args.run_id, &args.name).await?) })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} ({} bytes)", str_of(&s, "name"), s.get("size_bytes").and_then(Value::as_u64).unwrap_or(0))?;
    }
    Ok(())
}

/// Puts a sandbox's files on agentboxd back to one of the snapshots.
///
/// # Errors
/// The server's refusal (an unknown run or snapshot, a backend without snapshots).
pub fn restore(args: &SnapshotArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    let s = block_on(async { Ok(client.restore(&args.run_id, &args.name).await?) })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} restored from {} (sandbox {})", args.run_id, args.name, str_of(&s, "sandbox_id"))?;
    }
    Ok(())
}

/// Arguments of `agentbox logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// Only this background process's output (default: every one's, each under a header line).
    pub pid: Option<u32>,
    /// List the background processes as JSON instead of printing their output.
    #[arg(long)]
    pub json: bool,
}

/// Prints the output of a sandbox's background processes (their output files, read through the file API).
///
/// # Errors
/// An unknown run or pid, or a server that can't be reached.
pub fn logs(args: &LogsArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    block_on(async {
        let list = client.processes(&args.run_id).await?;
        let procs: Vec<Value> = list["processes"].as_array().cloned().unwrap_or_default();
        if args.json {
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &list)?;
            writeln!(out)?;
            return Ok(());
        }
        let chosen: Vec<&Value> = match args.pid {
            Some(pid) => {
                let found: Vec<&Value> = procs.iter().filter(|p| p["pid"].as_u64() == Some(u64::from(pid))).collect();
                if found.is_empty() {
                    return Err(CliError::Usage(format!(
                        "run {} has no background process {pid}: `agentbox logs {} --json` lists them",
                        args.run_id, args.run_id
                    )));
                }
                found
            }
            None => procs.iter().collect(),
        };
        let mut stdout = tokio::io::stdout();
        for p in chosen {
            let Some(path) = p["output_path"].as_str() else { continue };
            if args.pid.is_none() {
                let argv: Vec<&str> =
                    p["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                let state = match (p["running"].as_bool(), p["exit_code"].as_i64()) {
                    (Some(true), _) => "running".to_owned(),
                    (_, Some(code)) => format!("exited {code}"),
                    _ => "ended".to_owned(),
                };
                let header = format!("==> pid {} ({state}): {} <==\n", p["pid"], argv.join(" "));
                tokio::io::AsyncWriteExt::write_all(&mut stdout, header.as_bytes()).await?;
            }
            client.download(&args.run_id, path, &mut stdout).await?;
        }
        Ok(())
    })
}
