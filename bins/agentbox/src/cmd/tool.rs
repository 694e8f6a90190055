//! `agentbox tool`: list the agent tools with their schemas, or call one on a local sandbox.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use agentbox_core::config::SandboxConfig;
use agentbox_core::{CreateOptions, ManagerConfig, RunId, SandboxBackend, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::search::{SearchConfig, WebSearch};
use agentbox_tools::{ToolContext, ToolRegistry};

use super::CliError;

/// Arguments of `agentbox tool`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ToolCommand,
}

/// What `agentbox tool` does.
#[derive(Debug, clap::Subcommand)]
pub enum ToolCommand {
    /// List the tools: names and descriptions, or with --json their full specs and input schemas.
    List {
        /// Print the specs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call a tool and print its JSON result (a failure prints {"error": {...}} and exits 1).
    #[command(
        after_help = "Examples:\n  agentbox tool call shell --input '{\"command\": \"uname -a\"}'\n  agentbox tool call run_code --run-id demo --input '{\"code\": \"x = 41\"}'\n  agentbox tool call run_code --run-id demo --input '{\"code\": \"x + 1\"}'\n  agentbox tool call web_search --input '{\"query\": \"rust sandboxing\"}'"
    )]
    Call {
        /// The tool's name (see `agentbox tool list`).
        name: String,
        /// The input as JSON; `-` reads it from stdin.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Run id whose sandbox to use, if the backend has a live one with that id; otherwise a sandbox
        /// labelled with it is created for this call. A sandbox created by the call is destroyed after it
        /// (local sandboxes live only as long as the process that made them: keep state across calls
        /// through the server, agentboxd).
        #[arg(long)]
        run_id: Option<String>,
    },
}

fn registry() -> Result<ToolRegistry, CliError> {
    Ok(ToolRegistry::standard(WebSearch::new(SearchConfig::from_env())?))
}

/// Runs `agentbox tool`.
///
/// # Errors
/// Bad arguments, an unknown tool, or a sandbox that could not be created.
pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    match &args.command {
        ToolCommand::List { json } => list(*json).map(|()| ExitCode::SUCCESS),
        ToolCommand::Call { name, input, run_id } => call(name, input, run_id.as_deref()),
    }
}

fn list(json: bool) -> Result<(), CliError> {
    let specs = registry()?.specs();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&specs)?)?;
        return Ok(());
    }
    let width = specs.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for spec in &specs {
        let fields: Vec<String> = spec.input_schema["properties"]
            .as_object()
            .map(|p| {
                let required: Vec<&str> = spec.input_schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(serde_json::Value::as_str).collect())
                    .unwrap_or_default();
                p.keys().map(|k| if required.contains(&k.as_str()) { k.clone() } else { format!("{k}?") }).collect()
            })
            .unwrap_or_default();
        writeln!(out, "{:width$}  {}", spec.name, spec.description)?;
        writeln!(out, "{:width$}  input: {{{}}}", "", fields.join(", "))?;
    }
    Ok(())
}

fn read_input(input: &str) -> Result<serde_json::Value, CliError> {
    let text = if input == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        input.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("--input is not valid JSON: {e}")))
}

fn call(name: &str, input: &str, run_id: Option<&str>) -> Result<ExitCode, CliError> {
    let tools = registry()?;
    let Some(tool) = tools.get(name) else {
        return Err(CliError::Usage(format!("no tool named {name:?}; available: {}", tools.names().join(", "))));
    };
    let needs_sandbox = tool.needs_sandbox();
    let input = read_input(input)?;
    let run_id = run_id.map(RunId::parse).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        if !needs_sandbox {
            return print_result(tools.call(name, &ToolContext::without_sandbox(), input).await);
        }
        let backend: Arc<dyn SandboxBackend> = Arc::new(LocalBackend::new(LocalConfig::default())?);
        let manager = SandboxManager::new(backend.clone(), ManagerConfig::default());
        let (run, keep) = match run_id {
            Some(run) => {
                let existing =
                    backend.list().await?.into_iter().find(|s| s.metadata.get("run_id") == Some(&run.to_string()));
                let adopted = match existing {
                    Some(info) => {
                        manager.adopt(&run, info, SandboxConfig::default(), None)?;
                        true
                    }
                    None => {
                        manager.get_or_create(&run, CreateOptions::default()).await?;
                        false
                    }
                };
                (run, adopted)
            }
            None => {
                let run = RunId::parse(&format!("cli-{}", std::process::id()))?;
                manager.get_or_create(&run, CreateOptions::default()).await?;
                (run, false)
            }
        };
        let ctx = ToolContext::new(manager.clone(), run);
        let result = tokio::select! {
            r = tools.call(name, &ctx, input) => r,
            _ = tokio::signal::ctrl_c() => Err(agentbox_tools::ToolError::failed("interrupted")),
        };
        if !keep {
            manager.shutdown().await;
        }
        print_result(result)
    })
}

fn print_result(result: agentbox_tools::ToolResult<serde_json::Value>) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    let (value, code) = match result {
        Ok(v) => (v, ExitCode::SUCCESS),
        Err(e) => (serde_json::json!({ "error": e.to_json() }), ExitCode::FAILURE),
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    Ok(code)
}
