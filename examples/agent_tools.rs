//! Lists the agent tools with their schemas, then calls shell, code and files on a local sandbox.
//!
//! ```text
//! sudo cargo run --example agent_tools     # the local backend needs root
//! ```
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use agentbox_core::{CreateOptions, ManagerConfig, RunId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::search::{SearchConfig, WebSearch};
use agentbox_tools::{ToolContext, ToolRegistry};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tools = ToolRegistry::standard(WebSearch::new(SearchConfig::from_env())?);
    for spec in tools.specs() {
        println!("## {}\n{}\n{}\n", spec.name, spec.description, serde_json::to_string(&spec.input_schema)?);
    }

    let manager = SandboxManager::new(Arc::new(LocalBackend::new(LocalConfig::default())?), ManagerConfig::default());
    let run = RunId::parse("agent-tools-example")?;
    manager.get_or_create(&run, CreateOptions::default()).await?;
    let ctx = ToolContext::new(manager.clone(), run);

    let calls = [
        ("shell", json!({"command": "uname -sr && python3 --version"})),
        ("write_file", json!({"path": "hello.py", "content": "def greet(name):\n    return f'hello {name}'\n"})),
        ("run_code", json!({"code": "exec(open('hello.py').read())\ncount = 41"})),
        ("run_code", json!({"code": "count += 1\ngreet('agent'), count"})),
        ("edit_file", json!({"path": "hello.py", "old_text": "hello", "new_text": "hi"})),
        ("read_file", json!({"path": "hello.py", "start_line": 2, "end_line": 2})),
        ("list_files", json!({})),
        ("read_file", json!({"path": "missing.py"})),
    ];
    for (name, input) in calls {
        println!(">>> {name} {input}");
        match tools.call(name, &ctx, input).await {
            Ok(out) => println!("{}\n", serde_json::to_string_pretty(&out)?),
            Err(e) => println!("error: {}\n", e.to_json()),
        }
    }
    manager.shutdown().await;
    Ok(())
}
