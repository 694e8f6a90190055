//! Snapshots and volumes, journaled: a row is written before the backend acts and settled against the
//! backend's listing after it, and recovery finishes whatever a crash interrupted.

use agentbox_core::{RunId, SnapshotInfo, VolumeInfo};

use super::{Lifecycle, RecoveryReport, registry_failure};
use crate::registry::{KeptKind, KeptRecord, KeptStatus, RegistryError};

impl Lifecycle {
    /// Takes a snapshot of the run's files, journaled.
    ///
    /// # Errors
    /// As [`agentbox_core::SandboxManager::snapshot`], or a registry failure (before anything was taken).
    pub async fn snapshot(&self, run: &RunId, name: &str) -> agentbox_core::Result<SnapshotInfo> {
        let record = self.kept_record(KeptKind::Snapshot, name, Some(run.to_string()), None);
        let _j = self.journal.lock().await;
        let before = self.begin(&record, KeptStatus::Creating).await?;
        let result = self.manager.snapshot(run, name).await;
        self.settle(before.unwrap_or(record), result.is_ok()).await;
        result
    }

    /// Deletes a snapshot, journaled.
    ///
    /// # Errors
    /// As [`agentbox_core::SandboxManager::delete_snapshot`], or a registry failure (before anything was deleted).
    pub async fn delete_snapshot(&self, name: &str) -> agentbox_core::Result<()> {
        let record = self.kept_record(KeptKind::Snapshot, name, None, None);
        let _j = self.journal.lock().await;
        let before = self.begin(&record, KeptStatus::Deleting).await?;
        let result = self.manager.delete_snapshot(name).await;
        self.settle(before.unwrap_or(record), false).await;
        result
    }

    /// Makes a volume, journaled.
    ///
    /// # Errors
    /// As [`agentbox_core::SandboxManager::create_volume`], or a registry failure (before anything was made).
    pub async fn create_volume(&self, name: &str, limit_bytes: u64) -> agentbox_core::Result<VolumeInfo> {
        let record = self.kept_record(KeptKind::Volume, name, None, Some(limit_bytes));
        let _j = self.journal.lock().await;
        let before = self.begin(&record, KeptStatus::Creating).await?;
        let result = self.manager.create_volume(name, limit_bytes).await;
        self.settle(before.unwrap_or(record), result.is_ok()).await;
        result
    }

    /// Deletes a volume and its files, journaled.
    ///
    /// # Errors
    /// As [`agentbox_core::SandboxManager::delete_volume`], or a registry failure (before anything was deleted).
    pub async fn delete_volume(&self, name: &str) -> agentbox_core::Result<()> {
        let record = self.kept_record(KeptKind::Volume, name, None, None);
        let _j = self.journal.lock().await;
        let before = self.begin(&record, KeptStatus::Deleting).await?;
        let result = self.manager.delete_volume(name).await;
        self.settle(before.unwrap_or(record), false).await;
        result
    }

    fn kept_record(&self, kind: KeptKind, name: &str, run_id: Option<String>, limit_bytes: Option<u64>) -> KeptRecord {
        KeptRecord {
            kind,
            name: name.to_owned(),
            backend: self.manager.backend().name().to_owned(),
            status: KeptStatus::Ready,
            run_id,
            limit_bytes,
        }
    }

    /// Records that `record`'s operation is under way; returns the row it replaces, if any.
    async fn begin(&self, record: &KeptRecord, status: KeptStatus) -> agentbox_core::Result<Option<KeptRecord>> {
        let before = self
            .registry
            .load_kept()
            .await
            .map_err(|e| registry_failure(&e))?
            .into_iter()
            .find(|r| r.kind == record.kind && r.backend == record.backend && r.name == record.name);
        self.registry.upsert_kept(KeptRecord { status, ..record.clone() }).await.map_err(|e| registry_failure(&e))?;
        Ok(before)
    }

    /// Makes `record`'s row say what the backend holds: ready if it exists (`known` when the operation's success
    /// says so), gone if not. Failures are logged: recovery settles the row again.
    async fn settle(&self, record: KeptRecord, known: bool) {
        let exists = if known { Some(true) } else { self.exists(record.kind, &record.name).await };
        let Some(exists) = exists else { return };
        let written = if exists {
            self.registry.upsert_kept(KeptRecord { status: KeptStatus::Ready, ..record.clone() }).await
        } else {
            self.registry.remove_kept(record.kind, &record.backend, &record.name).await
        };
        if let Err(e) = written {
            tracing::error!(kind = %record.kind, name = %record.name, error = %e, "settling a registry row failed");
        }
    }

    /// Whether the backend holds it; `None` when the backend can't say.
    async fn exists(&self, kind: KeptKind, name: &str) -> Option<bool> {
        let listed = match kind {
            KeptKind::Snapshot => self.manager.list_snapshots().await.map(|l| l.iter().any(|s| s.name == name)),
            KeptKind::Volume => self.manager.list_volumes().await.map(|l| l.iter().any(|v| v.name == name)),
        };
        listed.map_err(|e| tracing::warn!(%kind, name, error = %e, "cannot list the backend's {kind}s")).ok()
    }

    /// After a restart: finishes what a crash interrupted. A snapshot or volume being made that exists is kept and
    /// recorded; one being deleted is deleted; a row whose snapshot or volume is gone is dropped. Snapshots and
    /// volumes this server never recorded are left alone (another program on the host may use the same store).
    pub(super) async fn recover_kept(&self, report: &mut RecoveryReport) -> Result<(), RegistryError> {
        let backend = self.manager.backend().name();
        for row in self.registry.load_kept().await?.into_iter().filter(|r| r.backend == backend) {
            let Some(exists) = self.exists(row.kind, &row.name).await else { continue };
            let label = format!("{} {}", row.kind, row.name);
            match (row.status, exists) {
                (KeptStatus::Ready, true) => {}
                (KeptStatus::Creating, true) => {
                    self.registry.upsert_kept(KeptRecord { status: KeptStatus::Ready, ..row }).await?;
                    report.kept_finished.push(label);
                }
                (KeptStatus::Deleting, true) => {
                    let deleted = match row.kind {
                        KeptKind::Snapshot => self.manager.delete_snapshot(&row.name).await,
                        KeptKind::Volume => self.manager.delete_volume(&row.name).await,
                    };
                    match deleted {
                        Ok(()) => {
                            self.registry.remove_kept(row.kind, &row.backend, &row.name).await?;
                            report.kept_finished.push(label);
                        }
                        Err(e) => {
                            tracing::warn!(what = %label, error = %e, "cannot finish an interrupted deletion; keeping it");
                            self.registry.upsert_kept(KeptRecord { status: KeptStatus::Ready, ..row }).await?;
                        }
                    }
                }
                (status, false) => {
                    self.registry.remove_kept(row.kind, &row.backend, &row.name).await?;
                    match status {
                        KeptStatus::Deleting => report.kept_finished.push(label),
                        KeptStatus::Creating => report.kept_forgotten.push(label),
                        KeptStatus::Ready => {
                            tracing::warn!(what = %label, "a recorded snapshot or volume is gone; forgetting it");
                            report.kept_forgotten.push(label);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
