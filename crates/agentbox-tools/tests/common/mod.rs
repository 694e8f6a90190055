//! One helper for tool tests: a real sandbox from the local backend, with a tool context on it.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::config::SandboxConfig;
use agentbox_core::{CreateOptions, ManagerConfig, RunId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::{ToolContext, ToolsConfig};

/// A sandbox with tools pointed at it.
pub struct TestSandbox {
    pub manager: SandboxManager,
    pub ctx: ToolContext,
    pub home: String,
}

impl TestSandbox {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut ToolsConfig)) -> Self {
        Self::with_configs(|_| {}, tweak).await
    }

    /// A sandbox of a tweaked config, with tweaked tools on it.
    pub async fn with_configs(sandbox: impl FnOnce(&mut SandboxConfig), tweak: impl FnOnce(&mut ToolsConfig)) -> Self {
        let backend = Arc::new(
            LocalBackend::new(LocalConfig::default()).expect("the local backend needs root; tests run as root"),
        );
        let manager = SandboxManager::new(backend, ManagerConfig::default());
        let run = RunId::parse("tools-test").unwrap();
        let mut config = SandboxConfig { execution_timeout: Duration::from_secs(60), ..SandboxConfig::default() };
        sandbox(&mut config);
        manager.get_or_create(&run, CreateOptions { preset: None, config: Some(config) }).await.unwrap();
        let mut tools = ToolsConfig::default();
        tweak(&mut tools);
        let ctx = ToolContext::new(manager.clone(), run).with_config(tools);
        let home = ctx.config().home_dir.clone();
        Self { manager, ctx, home }
    }

    /// Destroys the sandbox.
    pub async fn close(self) {
        self.manager.shutdown().await;
    }
}

pub use agentbox_conformance::not_root;
