//! The agentbox MCP server: sandboxes and every agent tool over the Model Context Protocol.
//!
//! [`McpServer`] serves, on [rmcp](https://docs.rs/rmcp):
//!
//! | tool | what it does |
//! |---|---|
//! | `sandbox_create` | a sandbox named by `run_id`, from a preset with overrides |
//! | `sandbox_list`, `sandbox_destroy`, `sandbox_metrics` | the sandboxes, their end, their resource use |
//! | every tool of the [`ToolRegistry`](agentbox_tools::ToolRegistry) | shell, `run_code` with contexts, the file tools, `web_search`, ... |
//!
//! Every tool that works in a sandbox takes an optional `run_id`. Without one, the call works in
//! the session's default sandbox, created on first use and destroyed when the session ends: at EOF
//! or shutdown on a byte stream (stdio), when an HTTP session is deleted or idles out. A failed
//! call is an MCP tool error (`isError: true`) whose text says what went wrong and what to do.
//!
//! Transports: [`McpServer::serve`] on any byte stream (`agentbox mcp` serves stdio with it) and
//! [`http_service`] for streamable HTTP (`agentboxd` mounts it at `/mcp` behind its bearer token).
//!
//! ```no_run
//! # async fn demo(manager: agentbox_core::SandboxManager) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use agentbox_mcp::{McpConfig, McpServer};
//! use agentbox_tools::ToolRegistry;
//! use agentbox_tools::search::{SearchConfig, WebSearch};
//!
//! let tools = ToolRegistry::standard(WebSearch::new(SearchConfig::from_env())?);
//! let server = McpServer::new(Arc::new(manager.clone()), tools, McpConfig::default());
//! let (stdin, stdout) = rmcp::transport::io::stdio_pipes();
//! server.serve(stdin, stdout, std::future::pending()).await?;
//! server.shutdown().await;
//! manager.shutdown().await;
//! # Ok(()) }
//! ```

mod catalog;
mod config;
mod host;
pub mod sandboxes;
mod server;
mod transport;

pub use agentbox_tools as tools;
pub use config::{InvalidSettings, McpConfig};
pub use host::SandboxHost;
pub use server::{McpServer, McpSession, SESSION_RUN_PREFIX};
pub use transport::{HttpService, TransportError, http_service};
