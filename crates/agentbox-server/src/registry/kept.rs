//! Records of what outlives sandboxes: snapshots and volumes. A row is written before the backend is asked to
//! make or delete one, and settled against the backend's listing afterwards, so a crash at any point leaves a
//! row that recovery can finish: a snapshot or volume is never left on disk by this server without a record.

use rusqlite::params;

use super::{Registry, RegistryError, now_ms};

/// What a kept record is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeptKind {
    /// A snapshot of a sandbox's files.
    Snapshot,
    /// A named volume.
    Volume,
}

impl KeptKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Volume => "volume",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "snapshot" => Some(Self::Snapshot),
            "volume" => Some(Self::Volume),
            _ => None,
        }
    }
}

impl std::fmt::Display for KeptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a kept record's operation had got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptStatus {
    /// The backend was asked to make it; it may or may not exist.
    Creating,
    /// It exists.
    Ready,
    /// The backend was asked to delete it; it may or may not still exist.
    Deleting,
}

impl KeptStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "deleting" => Self::Deleting,
            _ => Self::Ready,
        }
    }
}

/// One snapshot or volume as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRecord {
    /// Snapshot or volume.
    pub kind: KeptKind,
    /// Its name, unique per kind in the backend.
    pub name: String,
    /// The backend's name.
    pub backend: String,
    /// Progress of the last operation on it.
    pub status: KeptStatus,
    /// The run a snapshot was taken of.
    pub run_id: Option<String>,
    /// A volume's size limit, in bytes.
    pub limit_bytes: Option<u64>,
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kept (
    kind          TEXT NOT NULL CHECK (kind IN ('snapshot', 'volume')),
    name          TEXT NOT NULL,
    backend       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('creating', 'ready', 'deleting')),
    run_id        TEXT,
    limit_bytes   INTEGER,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, backend, name)
);
";

impl Registry {
    /// Every snapshot and volume record.
    ///
    /// # Errors
    /// [`RegistryError`] if the query fails.
    pub async fn load_kept(&self) -> Result<Vec<KeptRecord>, RegistryError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT kind, name, backend, status, run_id, limit_bytes FROM kept ORDER BY kind, backend, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, name, backend, status, run_id, limit) = row?;
                let Some(kind) = KeptKind::parse(&kind) else {
                    return Err(RegistryError::Corrupt { run_id: name, message: format!("unknown kind {kind:?}") });
                };
                out.push(KeptRecord {
                    kind,
                    name,
                    backend,
                    status: KeptStatus::parse(&status),
                    run_id,
                    limit_bytes: limit.and_then(|l| u64::try_from(l).ok()),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Inserts or replaces a snapshot's or volume's record.
    ///
    /// # Errors
    /// [`RegistryError`] if the write fails.
    pub async fn upsert_kept(&self, record: KeptRecord) -> Result<(), RegistryError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO kept (kind, name, backend, status, run_id, limit_bytes, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(kind, backend, name) DO UPDATE SET status = ?4, run_id = ?5, limit_bytes = ?6,
                     updated_at_ms = ?7",
                params![
                    record.kind.as_str(),
                    record.name,
                    record.backend,
                    record.status.as_str(),
                    record.run_id,
                    record.limit_bytes.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
                    now_ms()
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a snapshot's or volume's record; removing a missing one is not an error.
    ///
    /// # Errors
    /// [`RegistryError`] if the write fails.
    pub async fn remove_kept(&self, kind: KeptKind, backend: &str, name: &str) -> Result<(), RegistryError> {
        let (backend, name) = (backend.to_owned(), name.to_owned());
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM kept WHERE kind = ?1 AND backend = ?2 AND name = ?3",
                params![kind.as_str(), backend, name],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kept_records_round_trip_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        let reg = Registry::open(&path).unwrap();
        let snap = KeptRecord {
            kind: KeptKind::Snapshot,
            name: "before".into(),
            backend: "local".into(),
            status: KeptStatus::Creating,
            run_id: Some("r1".into()),
            limit_bytes: None,
        };
        let vol = KeptRecord {
            kind: KeptKind::Volume,
            name: "before".into(),
            status: KeptStatus::Ready,
            run_id: None,
            limit_bytes: Some(1 << 30),
            ..snap.clone()
        };
        reg.upsert_kept(snap.clone()).await.unwrap();
        reg.upsert_kept(vol.clone()).await.unwrap();
        let ready = KeptRecord { status: KeptStatus::Ready, ..snap.clone() };
        reg.upsert_kept(ready.clone()).await.unwrap();
        drop(reg);
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.load_kept().await.unwrap(), [ready, vol.clone()], "a snapshot and a volume may share a name");
        reg.remove_kept(KeptKind::Snapshot, "local", "before").await.unwrap();
        reg.remove_kept(KeptKind::Snapshot, "local", "before").await.unwrap();
        assert_eq!(reg.load_kept().await.unwrap(), [vol]);
    }
}
