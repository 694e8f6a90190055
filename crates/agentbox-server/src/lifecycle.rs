//! Keeps the persistent registry in step with the manager: journaling creations and destructions,
//! recovering after a restart, and periodic reconciliation.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use agentbox_config::{NetworkConfig, Preset};
use agentbox_core::{CreateOptions, ManagedSandbox, RunId, SandboxBackend, SandboxInfo, SandboxManager, SandboxState};
use tokio::sync::Mutex;

use crate::registry::{Record, RecordStatus, Registry, RegistryError};

mod kept;

/// What a start-up recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Runs whose sandbox was alive and is managed again.
    pub adopted: Vec<String>,
    /// Runs whose sandbox was gone; their rows were dropped and leftovers destroyed.
    pub forgotten: Vec<String>,
    /// Live sandboxes of runs this server recorded that were duplicates, destroyed.
    pub destroyed_duplicates: Vec<String>,
    /// Rows of another backend, left untouched.
    pub other_backend: Vec<String>,
    /// Keys of files a crash kept for this registry (see [`Registry::keeper`]) that no recorded run claimed,
    /// discarded.
    pub discarded_after_crash: Vec<String>,
    /// Snapshots and volumes (`"snapshot NAME"`, `"volume NAME"`) whose making or deletion a crash had
    /// interrupted, finished now.
    pub kept_finished: Vec<String>,
    /// Snapshots and volumes whose records were dropped: gone from the backend, or never made.
    pub kept_forgotten: Vec<String>,
}

/// The manager plus its journal.
#[derive(Clone)]
pub struct Lifecycle {
    manager: SandboxManager,
    registry: Registry,
    journal: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

fn ready_record(s: &ManagedSandbox) -> Record {
    Record {
        run_id: s.run_id.to_string(),
        status: if s.state == SandboxState::Stopped { RecordStatus::Stopped } else { RecordStatus::Ready },
        backend: s.sandbox.backend.clone(),
        sandbox_id: Some(s.sandbox.id.to_string()),
        preset: s.preset.map(|p| p.name().to_owned()),
        config: s.config.clone(),
        created_at_ms: s.sandbox.created_at_ms,
    }
}

fn registry_failure(e: &RegistryError) -> agentbox_core::Error {
    tracing::error!(error = %e, "sandbox registry write failed");
    agentbox_core::Error::backend("the sandbox registry could not be written")
}

impl Lifecycle {
    /// Journals `manager`'s sandboxes in `registry`.
    #[must_use]
    pub fn new(manager: SandboxManager, registry: Registry) -> Self {
        Self { manager, registry, journal: Arc::new(Mutex::new(())) }
    }

    /// The manager.
    #[must_use]
    pub fn manager(&self) -> &SandboxManager {
        &self.manager
    }

    /// Returns the run's sandbox, creating it (journaled) if needed; `true` when created now.
    ///
    /// # Errors
    /// As [`SandboxManager::get_or_create`], or a registry failure.
    pub async fn create(&self, run: &RunId, options: CreateOptions) -> agentbox_core::Result<(ManagedSandbox, bool)> {
        self.create_from(run, options, None).await
    }

    /// Creates the run's sandbox, from a snapshot's files when `from_snapshot` names one (a fork, for a run
    /// that must not exist yet), journaling it as [`create`](Self::create) does.
    ///
    /// # Errors
    /// As the manager's `get_or_create` and `create_from_snapshot`, or a registry failure.
    pub async fn create_from(
        &self,
        run: &RunId,
        options: CreateOptions,
        from_snapshot: Option<&str>,
    ) -> agentbox_core::Result<(ManagedSandbox, bool)> {
        let journaled = {
            let _j = self.journal.lock().await;
            if self.manager.get(run).is_ok() {
                false
            } else {
                let config = options.effective_config();
                config.validate()?;
                let record = Record {
                    run_id: run.to_string(),
                    status: RecordStatus::Creating,
                    backend: self.manager.backend().name().to_owned(),
                    sandbox_id: None,
                    preset: options.preset.map(|p| p.name().to_owned()),
                    config,
                    created_at_ms: 0,
                };
                self.registry.upsert(record).await.map_err(|e| registry_failure(&e))?;
                true
            }
        };
        let result = match from_snapshot {
            Some(snapshot) => self.manager.create_from_snapshot(run, snapshot, options).await.map(|s| (s, true)),
            None => self.manager.get_or_create(run, options).await,
        };
        let _j = self.journal.lock().await;
        match &result {
            Ok((sandbox, _)) => {
                if let Err(e) = self.registry.upsert(ready_record(sandbox)).await {
                    return Err(registry_failure(&e));
                }
            }
            Err(_) if journaled && self.manager.get(run).is_err() => {
                if let Err(e) = self.registry.remove(run.as_str()).await {
                    tracing::error!(run_id = %run, error = %e, "dropping a failed creation from the registry failed");
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Destroys the run's sandbox and drops its row.
    ///
    /// # Errors
    /// As [`SandboxManager::destroy`].
    pub async fn destroy(&self, run: &RunId) -> agentbox_core::Result<()> {
        let result = self.manager.destroy(run).await;
        if !matches!(result, Err(agentbox_core::Error::NotFound(_))) {
            let _j = self.journal.lock().await;
            if self.manager.get(run).is_err() {
                if let Err(e) = self.registry.remove(run.as_str()).await {
                    tracing::error!(run_id = %run, error = %e, "dropping a destroyed sandbox from the registry failed");
                }
            }
        }
        result
    }

    /// Replaces the run's network policy live, and records the new configuration in the registry.
    ///
    /// A registry write that fails after the backend applied the policy is logged rather than returned
    /// (the policy is in effect); the periodic [`sync`](Self::sync) records it later.
    ///
    /// # Errors
    /// As [`SandboxManager::update_network`].
    pub async fn update_network(&self, run: &RunId, network: NetworkConfig) -> agentbox_core::Result<ManagedSandbox> {
        self.manager.update_network(run, network).await?;
        let _j = self.journal.lock().await;
        let sandbox = self.manager.get(run)?;
        if let Err(e) = self.registry.upsert(ready_record(&sandbox)).await {
            tracing::error!(run_id = %run, error = %e, "recording a network policy change in the registry failed");
        }
        Ok(sandbox)
    }

    /// Stops the run's sandbox (its files kept on disk), recording it as stopped so a restarted server still
    /// has it.
    ///
    /// # Errors
    /// As [`SandboxManager::stop_run`], or a registry failure (the run is stopped; a later sync records it).
    pub async fn stop(&self, run: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        let stopped = self.manager.stop_run(run).await?;
        let _j = self.journal.lock().await;
        self.registry.upsert(ready_record(&stopped)).await.map_err(|e| registry_failure(&e))?;
        Ok(stopped)
    }

    /// Starts the run's stopped sandbox on its files, journaling the new sandbox.
    ///
    /// # Errors
    /// As [`SandboxManager::start_run`], or a registry failure (the run is running; a later sync records it).
    pub async fn start(&self, run: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        let started = self.manager.start_run(run).await?;
        let _j = self.journal.lock().await;
        self.registry.upsert(ready_record(&started)).await.map_err(|e| registry_failure(&e))?;
        Ok(started)
    }

    /// Puts the run's files back to a snapshot (a new sandbox takes the run's place), journaling the replacement.
    ///
    /// # Errors
    /// As [`SandboxManager::restore`].
    pub async fn restore(&self, run: &RunId, snapshot: &str) -> agentbox_core::Result<ManagedSandbox> {
        let restored = self.manager.restore(run, snapshot).await?;
        let _j = self.journal.lock().await;
        if let Err(e) = self.registry.upsert(ready_record(&restored)).await {
            tracing::error!(run_id = %run, error = %e, "recording a restored sandbox in the registry failed");
        }
        Ok(restored)
    }

    /// Probes the run's sandbox, journaling a replacement if the probe recreated it.
    ///
    /// # Errors
    /// As [`SandboxManager::check_health`].
    pub async fn check_health(&self, run: &RunId) -> agentbox_core::Result<ManagedSandbox> {
        let before = self.manager.get(run)?.sandbox.id;
        let after = self.manager.check_health(run).await?;
        if after.sandbox.id != before {
            self.sync().await;
        }
        Ok(after)
    }

    /// Makes the registry match the manager: rows for new or replaced sandboxes, none for vanished ones.
    pub async fn sync(&self) {
        let _j = self.journal.lock().await;
        let rows = match self.registry.load().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "reading the sandbox registry failed");
                return;
            }
        };
        let live: BTreeMap<String, ManagedSandbox> =
            self.manager.list().into_iter().map(|s| (s.run_id.to_string(), s)).collect();
        let backend = self.manager.backend().name();
        for row in &rows {
            if row.status != RecordStatus::Creating && row.backend == backend && !live.contains_key(&row.run_id) {
                if let Err(e) = self.registry.remove(&row.run_id).await {
                    tracing::error!(run_id = %row.run_id, error = %e, "dropping a vanished sandbox from the registry failed");
                }
            }
        }
        let stored: BTreeMap<&str, &Record> = rows.iter().map(|r| (r.run_id.as_str(), r)).collect();
        for (run, s) in &live {
            let want = ready_record(s);
            if stored.get(run.as_str()).is_none_or(|r| **r != want) {
                if let Err(e) = self.registry.upsert(want).await {
                    tracing::error!(run_id = %run, error = %e, "recording a sandbox in the registry failed");
                }
            }
        }
    }

    /// After a restart: re-adopts recorded sandboxes that are still alive or stopped, forgets the dead ones, and
    /// finishes the snapshot and volume operations a crash interrupted.
    ///
    /// A run whose sandbox died with the previous server, and whose files the backend kept, is adopted as
    /// stopped (as is one whose stop had kept its files but was not recorded yet); one whose start had begun is
    /// adopted with the sandbox that carries its run id. Live sandboxes that carry the run id of a
    /// recorded run but are not the one adopted are destroyed; sandboxes of runs this registry never recorded,
    /// and stopped files, snapshots and volumes it never recorded, are left alone.
    ///
    /// # Errors
    /// The backend's error if it can't list its sandboxes, or a registry failure.
    pub async fn recover(&self) -> Result<RecoveryReport, crate::ServerError> {
        let backend: Arc<dyn SandboxBackend> = self.manager.backend().clone();
        let rows = self.registry.load().await?;
        let live = backend.list().await?;
        let stopped = backend.list_stopped().await?;
        let alive = |s: &SandboxInfo| !matches!(s.state, SandboxState::Destroyed | SandboxState::Destroying);
        let mut report = RecoveryReport::default();
        let mut claimed: HashSet<String> = HashSet::new();
        let _j = self.journal.lock().await;
        for row in &rows {
            if row.backend != backend.name() {
                report.other_backend.push(row.run_id.clone());
                continue;
            }
            let preset = row.preset.as_deref().and_then(|p| p.parse::<Preset>().ok());
            let run = RunId::new_unchecked(row.run_id.clone());
            let by_id = row.sandbox_id.as_deref().and_then(|id| live.iter().find(|s| s.id.as_str() == id && alive(s)));
            let by_run = || {
                live.iter()
                    .filter(|s| alive(s) && s.metadata.get("run_id") == Some(&row.run_id))
                    .max_by_key(|s| s.created_at_ms)
            };
            let found = by_id.or_else(by_run).cloned();
            // With no live sandbox: the run's kept files. Those of a stopped run, or of one whose stop had kept
            // them before it was recorded, carry the recorded id; those a crash kept carry the run's label (a
            // start under way, or a replacement not yet recorded, had a sandbox id the row doesn't know).
            // A session sandbox of MCP ends with its session, which the crash ended: its files are not kept.
            let session = row.run_id.starts_with(agentbox_mcp::SESSION_RUN_PREFIX);
            let kept = found.is_none().then(|| {
                row.sandbox_id
                    .as_deref()
                    .and_then(|key| stopped.iter().find(|s| s.key == key))
                    .or_else(|| {
                        stopped
                            .iter()
                            .filter(|s| s.after_crash && s.metadata.get("run_id") == Some(&row.run_id))
                            .filter(|s| !claimed.contains(&s.key))
                            .max_by_key(|s| s.stopped_at_ms)
                    })
                    .filter(|s| !(s.after_crash && session))
            });
            if let Some(kept) = kept.flatten() {
                claimed.insert(kept.key.clone());
                match self.manager.adopt_stopped(&run, kept.clone(), row.config.clone(), preset) {
                    Ok(adopted) => {
                        if row.status != RecordStatus::Stopped || row.sandbox_id.as_deref() != Some(&kept.key) {
                            self.registry.upsert(ready_record(&adopted)).await?;
                        }
                        report.adopted.push(row.run_id.clone());
                    }
                    Err(e) => tracing::warn!(run_id = %run, error = %e, "cannot re-adopt a stopped run"),
                }
                continue;
            }
            match found {
                Some(info) => {
                    claimed.insert(info.id.to_string());
                    match self.manager.adopt(&run, info, row.config.clone(), preset) {
                        Ok(adopted) => {
                            self.registry.upsert(ready_record(&adopted)).await?;
                            report.adopted.push(row.run_id.clone());
                        }
                        Err(e) => tracing::warn!(run_id = %run, error = %e, "cannot re-adopt sandbox"),
                    }
                }
                None => {
                    if row.status == RecordStatus::Stopped {
                        tracing::warn!(run_id = %run, "a stopped run's files are gone; forgetting it");
                    }
                    self.registry.remove(&row.run_id).await?;
                    if let Some(id) = row.sandbox_id.as_ref().filter(|_| row.status != RecordStatus::Stopped) {
                        // Whatever the dead sandbox left behind goes; destroying a gone sandbox is not an error.
                        if let Err(e) = backend.destroy(&agentbox_core::SandboxId::new_unchecked(id.clone())).await {
                            tracing::debug!(sandbox_id = %id, error = %e, "cleaning up a dead sandbox");
                        }
                    }
                    report.forgotten.push(row.run_id.clone());
                }
            }
        }
        let recorded: HashSet<&str> =
            rows.iter().filter(|r| r.backend == backend.name()).map(|r| r.run_id.as_str()).collect();
        for s in live.iter().filter(|s| alive(s) && !claimed.contains(s.id.as_str())) {
            match s.metadata.get("run_id") {
                Some(run) if recorded.contains(run.as_str()) => {
                    if let Err(e) = backend.destroy(&s.id).await {
                        tracing::warn!(sandbox_id = %s.id, error = %e, "destroying a duplicate sandbox failed");
                    }
                    report.destroyed_duplicates.push(s.id.to_string());
                }
                _ => tracing::info!(sandbox_id = %s.id, "leaving a sandbox this server did not record"),
            }
        }
        // Files a crash kept for this registry that no recorded run claims (a session sandbox, a sandbox it never
        // recorded) go, as the crashed process would have deleted them. Those kept for another keeper stay.
        let ours = |s: &&agentbox_core::StoppedSandbox| {
            let keeper = s.metadata.get(agentbox_core::KEEPER_LABEL).map(std::path::Path::new);
            s.after_crash && self.registry.keeper().is_some_and(|k| keeper == Some(k))
        };
        for s in stopped.iter().filter(ours).filter(|s| !claimed.contains(&s.key)) {
            match backend.discard_stopped(&s.key).await {
                Ok(()) => report.discarded_after_crash.push(s.key.clone()),
                Err(e) => tracing::warn!(key = %s.key, error = %e, "cannot discard a crashed sandbox's files"),
            }
        }
        self.recover_kept(&mut report).await?;
        Ok(report)
    }
}
