//! The MCP endpoint at `/mcp`: the agent tools over streamable HTTP, behind the API's bearer token.
//!
//! Sandboxes and snapshots made over MCP go through the [`Lifecycle`], so they are journaled in the registry
//! like the ones the REST API makes; each MCP session's default sandbox is destroyed when the session is
//! closed or idles out, and on shutdown.

use std::sync::Arc;

use agentbox_core::{CreateOptions, ManagedSandbox, RunId, SandboxManager};
use agentbox_mcp::tools::ToolRegistry;
use agentbox_mcp::tools::search::{SearchConfig, WebSearch};
use agentbox_mcp::{HttpService, McpConfig, McpServer, SandboxHost};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::ServerError;
use crate::lifecycle::Lifecycle;

#[async_trait]
impl SandboxHost for Lifecycle {
    fn manager(&self) -> &SandboxManager {
        Lifecycle::manager(self)
    }

    async fn create(&self, run_id: &RunId, options: CreateOptions) -> agentbox_core::Result<(ManagedSandbox, bool)> {
        Lifecycle::create(self, run_id, options).await
    }

    async fn create_from_snapshot(
        &self,
        run_id: &RunId,
        snapshot: &str,
        options: CreateOptions,
    ) -> agentbox_core::Result<ManagedSandbox> {
        Lifecycle::create_from(self, run_id, options, Some(snapshot)).await.map(|(s, _)| s)
    }

    async fn restore(&self, run_id: &RunId, snapshot: &str) -> agentbox_core::Result<ManagedSandbox> {
        Lifecycle::restore(self, run_id, snapshot).await
    }

    async fn snapshot(&self, run_id: &RunId, name: &str) -> agentbox_core::Result<agentbox_core::SnapshotInfo> {
        Lifecycle::snapshot(self, run_id, name).await
    }

    async fn delete_snapshot(&self, name: &str) -> agentbox_core::Result<()> {
        Lifecycle::delete_snapshot(self, name).await
    }

    async fn stop(&self, run_id: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        Lifecycle::stop(self, run_id).await
    }

    async fn start(&self, run_id: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        Lifecycle::start(self, run_id).await
    }

    async fn destroy(&self, run_id: &RunId) -> agentbox_core::Result<()> {
        Lifecycle::destroy(self, run_id).await
    }
}

/// The MCP server of a running API, if enabled.
pub(crate) struct Mcp {
    server: Option<McpServer>,
    /// The service mounted at `/mcp`.
    pub(crate) http: Option<HttpService>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Mcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mcp").field("server", &self.server).finish_non_exhaustive()
    }
}

impl Mcp {
    /// Builds the MCP server over `lifecycle` with the standard tools (web search from the environment).
    pub(crate) fn new(
        lifecycle: &Lifecycle,
        config: &McpConfig,
        #[cfg(feature = "browser")] browser: &agentbox_tools::browser::BrowserTool,
    ) -> Result<Self, ServerError> {
        let cancel = CancellationToken::new();
        if !config.enabled {
            return Ok(Self { server: None, http: None, cancel });
        }
        let search = WebSearch::new(SearchConfig::from_env())
            .map_err(|e| ServerError::Config(format!("web search for MCP: {e}")))?;
        #[cfg_attr(not(feature = "browser"), allow(unused_mut))]
        let mut tools = ToolRegistry::standard(search);
        // One browser per sandbox, whether driven over REST or MCP.
        #[cfg(feature = "browser")]
        tools.register(browser.clone());
        let server = McpServer::new(Arc::new(lifecycle.clone()), tools, config.clone());
        let http = agentbox_mcp::http_service(&server, cancel.child_token());
        Ok(Self { server: Some(server), http: Some(http), cancel })
    }

    /// Ends every MCP session and destroys their default sandboxes.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(server) = &self.server {
            server.shutdown().await;
        }
    }
}
