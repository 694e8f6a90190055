//! Where sandboxes come from: the [`SandboxHost`] seam between the MCP server and whoever owns the manager.

use agentbox_core::{CreateOptions, ManagedSandbox, RunId, SandboxManager};
use async_trait::async_trait;

/// Creates and destroys run sandboxes for the MCP server.
///
/// A [`SandboxManager`] is a host by itself. A server that journals its sandboxes (such as
/// `agentboxd`, which records them for restart recovery) implements it over its own
/// bookkeeping so sandboxes made over MCP are journaled like any other.
#[async_trait]
pub trait SandboxHost: Send + Sync + 'static {
    /// The manager holding the sandboxes; tools run through it.
    fn manager(&self) -> &SandboxManager;

    /// Returns the run's sandbox, creating it if needed; `true` when created now.
    ///
    /// # Errors
    /// As [`SandboxManager::get_or_create`].
    async fn create(&self, run_id: &RunId, options: CreateOptions) -> agentbox_core::Result<(ManagedSandbox, bool)> {
        self.manager().get_or_create(run_id, options).await
    }

    /// Creates the run's sandbox from a snapshot's files (a fork); the run must not exist.
    ///
    /// # Errors
    /// As [`SandboxManager::create_from_snapshot`].
    async fn create_from_snapshot(
        &self,
        run_id: &RunId,
        snapshot: &str,
        options: CreateOptions,
    ) -> agentbox_core::Result<ManagedSandbox> {
        self.manager().create_from_snapshot(run_id, snapshot, options).await
    }

    /// Puts the run's files back to a snapshot (a new sandbox from it takes the run's place).
    ///
    /// # Errors
    /// As [`SandboxManager::restore`].
    async fn restore(&self, run_id: &RunId, snapshot: &str) -> agentbox_core::Result<ManagedSandbox> {
        self.manager().restore(run_id, snapshot).await
    }

    /// Takes a snapshot of the run's files named `name`.
    ///
    /// # Errors
    /// As [`SandboxManager::snapshot`].
    async fn snapshot(&self, run_id: &RunId, name: &str) -> agentbox_core::Result<agentbox_core::SnapshotInfo> {
        self.manager().snapshot(run_id, name).await
    }

    /// Deletes a snapshot.
    ///
    /// # Errors
    /// As [`SandboxManager::delete_snapshot`].
    async fn delete_snapshot(&self, name: &str) -> agentbox_core::Result<()> {
        self.manager().delete_snapshot(name).await
    }

    /// Stops the run's sandbox, keeping its files.
    ///
    /// # Errors
    /// As [`SandboxManager::stop_run`].
    async fn stop(&self, run_id: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        self.manager().stop_run(run_id).await
    }

    /// Starts the run's stopped sandbox on its files.
    ///
    /// # Errors
    /// As [`SandboxManager::start_run`].
    async fn start(&self, run_id: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        self.manager().start_run(run_id).await
    }

    /// Destroys the run's sandbox.
    ///
    /// # Errors
    /// As [`SandboxManager::destroy`].
    async fn destroy(&self, run_id: &RunId) -> agentbox_core::Result<()> {
        self.manager().destroy(run_id).await
    }
}

impl SandboxHost for SandboxManager {
    fn manager(&self) -> &SandboxManager {
        self
    }
}
