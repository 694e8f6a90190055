//! The tools an LLM agent calls on a sandbox.
//!
//! Every tool implements [`Tool`]: a name, a description, a JSON Schema of its input
//! and an async call from JSON to JSON. A [`ToolRegistry`] lists and dispatches them.
//! Tools work over any backend through the [`SandboxManager`](agentbox_core::SandboxManager)
//! and a run id, carried by a [`ToolContext`].
//!
//! | tool | what it does |
//! |---|---|
//! | `shell` | a bash command line with cwd, env, timeout, background |
//! | `run_code` | python and javascript in stateful contexts; typescript and bash statelessly |
//! | `code_context` | create, list, restart, delete code contexts |
//! | `read_file`, `write_file`, `list_files`, `edit_file`, `delete_file` | text files |
//! | `upload_file`, `download_file` | bytes as base64 |
//! | `web_search` | Tavily, Serper, SearXNG with fallback, cache and rate limits |
//! | `browser` | a headless Chromium inside the sandbox: navigate, snapshot with refs, click, type, screenshot, ... (feature `browser`) |
//!
//! Output is sized for a model's context: long streams keep their head and tail with a
//! mark saying how many bytes were cut, and the full text is saved to a file inside the
//! sandbox whose path is returned. Failures are [`ToolError`]s the model can read
//! (`file not found: /home/user/x.py`), never panics.
//!
//! ```no_run
//! # async fn demo(manager: agentbox_core::SandboxManager) -> Result<(), Box<dyn std::error::Error>> {
//! use agentbox_tools::{ToolContext, ToolRegistry};
//! use agentbox_tools::search::{SearchConfig, WebSearch};
//! let tools = ToolRegistry::standard(WebSearch::new(SearchConfig::from_env())?);
//! let run = agentbox_core::RunId::parse("task-1")?;
//! manager.get_or_create(&run, Default::default()).await?;
//! let ctx = ToolContext::new(manager, run);
//! let out = tools.call("run_code", &ctx, serde_json::json!({"code": "x = 21\nx * 2"})).await?;
//! assert_eq!(out["results"][0]["text"], "42");
//! # Ok(()) }
//! ```

#[cfg(feature = "browser")]
pub mod browser;
pub mod code;
mod error;
pub mod files;
pub mod output;
pub mod search;
pub mod shell;
mod tool;
mod untrusted;

pub use error::{ToolError, ToolErrorKind, ToolResult};
pub use tool::{Tool, ToolContext, ToolRegistry, ToolSandbox, ToolSpec, ToolsConfig, TypedTool, schema_of};
