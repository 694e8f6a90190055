//! The persistent registry of sandboxes, snapshots and volumes, in SQLite, so a restarted server finds its
//! sandboxes again and finishes what a crash interrupted.
//!
//! A row is written as `creating` before the backend is asked for a sandbox and turned `ready` with the
//! sandbox id once it exists, so a crash at any point leaves enough to re-adopt or clean up.

use std::path::Path;
use std::sync::{Arc, Mutex};

use agentbox_config::SandboxConfig;
use agentbox_core::LockExt;
use rusqlite::{Connection, OptionalExtension, params};

mod kept;

pub use kept::{KeptKind, KeptRecord, KeptStatus};

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("stored sandbox {run_id} is unreadable: {message}")]
    Corrupt {
        /// The row's run id.
        run_id: String,
        /// What is wrong.
        message: String,
    },
    /// The blocking task running the query failed.
    #[error("registry task failed: {0}")]
    Task(String),
}

/// How far creation had got when a row was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    /// The backend was asked for a sandbox; it may or may not exist.
    Creating,
    /// The sandbox exists with the recorded id.
    Ready,
    /// The run's sandbox is stopped: the recorded id is the backend's key for its kept files.
    Stopped,
}

impl RecordStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "stopped" => Self::Stopped,
            _ => Self::Ready,
        }
    }
}

/// One run's sandbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The run.
    pub run_id: String,
    /// Creation progress.
    pub status: RecordStatus,
    /// The backend's name.
    pub backend: String,
    /// The backend's sandbox id, once known.
    pub sandbox_id: Option<String>,
    /// The preset it started from.
    pub preset: Option<String>,
    /// The effective configuration.
    pub config: SandboxConfig,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// The registry: one SQLite database, used from blocking tasks.
#[derive(Clone)]
pub struct Registry {
    conn: Arc<Mutex<Connection>>,
    keeper: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Databases made before runs could be stopped refuse the `stopped` status (a CHECK constraint SQLite can't
/// alter): their table is rebuilt with [`SCHEMA`]'s.
const MIGRATE_STOPPED: &str = "
BEGIN;
ALTER TABLE sandboxes RENAME TO sandboxes_before_stopped;
CREATE TABLE sandboxes (
    run_id        TEXT PRIMARY KEY NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('creating', 'ready', 'stopped')),
    backend       TEXT NOT NULL,
    sandbox_id    TEXT,
    preset        TEXT,
    config        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
INSERT INTO sandboxes SELECT run_id, status, backend, sandbox_id, preset, config, created_at_ms, updated_at_ms
    FROM sandboxes_before_stopped;
DROP TABLE sandboxes_before_stopped;
COMMIT;
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    run_id        TEXT PRIMARY KEY NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('creating', 'ready', 'stopped')),
    backend       TEXT NOT NULL,
    sandbox_id    TEXT,
    preset        TEXT,
    config        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Registry {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`RegistryError::Sqlite`] if it can't be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let keeper = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        Ok(Self { keeper: Some(keeper), ..Self::init(conn)? })
    }

    /// What a backend's sandboxes' files are kept for after a crash (see [`agentbox_core::KEEPER_LABEL`]): the
    /// database's path, which exists for as long as the registry does. `None` for a registry in memory, which a
    /// crash loses.
    #[must_use]
    pub fn keeper(&self) -> Option<&Path> {
        self.keeper.as_deref()
    }

    /// A registry that lives in memory only (for embedding without persistence, and tests).
    ///
    /// # Errors
    /// [`RegistryError::Sqlite`] if SQLite can't start.
    pub fn in_memory() -> Result<Self, RegistryError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, RegistryError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(kept::SCHEMA)?;
        let table: String =
            conn.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sandboxes'", [], |r| {
                r.get(0)
            })?;
        if !table.contains("'stopped'") {
            conn.execute_batch(MIGRATE_STOPPED)?;
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)), keeper: None })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock_unpoisoned();
            f(&mut guard)
        })
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))?
    }

    /// Every stored row, by run id.
    ///
    /// # Errors
    /// [`RegistryError`] if the query fails or a row is unreadable.
    pub async fn load(&self) -> Result<Vec<Record>, RegistryError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT run_id, status, backend, sandbox_id, preset, config, created_at_ms FROM sandboxes ORDER BY run_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (run_id, status, backend, sandbox_id, preset, config, created) = row?;
                let config = serde_json::from_str(&config)
                    .map_err(|e| RegistryError::Corrupt { run_id: run_id.clone(), message: e.to_string() })?;
                let status = RecordStatus::parse(&status);
                out.push(Record {
                    run_id,
                    status,
                    backend,
                    sandbox_id,
                    preset,
                    config,
                    created_at_ms: u64::try_from(created).unwrap_or(0),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Inserts or replaces a row.
    ///
    /// # Errors
    /// [`RegistryError`] if the write fails.
    pub async fn upsert(&self, record: Record) -> Result<(), RegistryError> {
        let config = serde_json::to_string(&record.config)
            .map_err(|e| RegistryError::Corrupt { run_id: record.run_id.clone(), message: e.to_string() })?;
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO sandboxes (run_id, status, backend, sandbox_id, preset, config, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(run_id) DO UPDATE SET status = ?2, backend = ?3, sandbox_id = ?4, preset = ?5, config = ?6,
                     created_at_ms = ?7, updated_at_ms = ?8",
                params![
                    record.run_id,
                    record.status.as_str(),
                    record.backend,
                    record.sandbox_id,
                    record.preset,
                    config,
                    i64::try_from(record.created_at_ms).unwrap_or(i64::MAX),
                    now_ms()
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a run's row; removing a missing row is not an error.
    ///
    /// # Errors
    /// [`RegistryError`] if the write fails.
    pub async fn remove(&self, run_id: &str) -> Result<(), RegistryError> {
        let run_id = run_id.to_owned();
        self.with(move |conn| {
            conn.execute("DELETE FROM sandboxes WHERE run_id = ?1", params![run_id])?;
            Ok(())
        })
        .await
    }

    /// Removes a run's row only if it still names `sandbox_id` (so a newer sandbox of the run is kept).
    ///
    /// # Errors
    /// [`RegistryError`] if the write fails.
    pub async fn remove_if(&self, run_id: &str, sandbox_id: &str) -> Result<(), RegistryError> {
        let (run_id, sandbox_id) = (run_id.to_owned(), sandbox_id.to_owned());
        self.with(move |conn| {
            conn.execute("DELETE FROM sandboxes WHERE run_id = ?1 AND sandbox_id = ?2", params![run_id, sandbox_id])?;
            Ok(())
        })
        .await
    }

    /// One run's row.
    ///
    /// # Errors
    /// [`RegistryError`] if the query fails.
    pub async fn status_of(&self, run_id: &str) -> Result<Option<RecordStatus>, RegistryError> {
        let run_id = run_id.to_owned();
        self.with(move |conn| {
            let s: Option<String> = conn
                .query_row("SELECT status FROM sandboxes WHERE run_id = ?1", params![run_id], |r| r.get(0))
                .optional()?;
            Ok(s.as_deref().map(RecordStatus::parse))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run: &str, status: RecordStatus, sandbox: Option<&str>) -> Record {
        Record {
            run_id: run.into(),
            status,
            backend: "local".into(),
            sandbox_id: sandbox.map(Into::into),
            preset: Some("default".into()),
            config: SandboxConfig::default(),
            created_at_ms: 42,
        }
    }

    #[tokio::test]
    async fn rows_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let reg = Registry::open(&path).unwrap();
            reg.upsert(record("a", RecordStatus::Creating, None)).await.unwrap();
            reg.upsert(record("a", RecordStatus::Ready, Some("sb-1"))).await.unwrap();
            reg.upsert(record("b", RecordStatus::Ready, Some("sb-2"))).await.unwrap();
            reg.upsert(record("c", RecordStatus::Ready, Some("sb-3"))).await.unwrap();
            reg.remove("b").await.unwrap();
            reg.remove_if("c", "sb-other").await.unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let rows = reg.load().await.unwrap();
        assert_eq!(
            rows,
            vec![record("a", RecordStatus::Ready, Some("sb-1")), record("c", RecordStatus::Ready, Some("sb-3"))]
        );
        assert_eq!(reg.status_of("a").await.unwrap(), Some(RecordStatus::Ready));
        assert_eq!(reg.status_of("zz").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_database_from_before_stop_is_migrated_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&SCHEMA.replace(", 'stopped'", "")).unwrap();
            conn.execute(
                "INSERT INTO sandboxes VALUES ('old', 'ready', 'local', 'sb-1', NULL, ?1, 42, 42)",
                params![serde_json::to_string(&SandboxConfig::default()).unwrap()],
            )
            .unwrap();
            assert!(conn.execute("UPDATE sandboxes SET status = 'stopped'", []).is_err());
        }
        let reg = Registry::open(&path).unwrap();
        reg.upsert(record("new", RecordStatus::Stopped, Some("sb-2"))).await.unwrap();
        let rows = reg.load().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].run_id, "new");
        assert_eq!(rows[0].status, RecordStatus::Stopped);
        assert_eq!(rows[1].sandbox_id.as_deref(), Some("sb-1"));
        drop(reg);
        // Opening it again changes nothing.
        assert_eq!(Registry::open(&path).unwrap().load().await.unwrap(), rows);
    }
}
