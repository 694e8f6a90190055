//! Owners and orphans. A sandbox's cgroup and storage layer carry the process that made it
//! (`o<pid>-<start time>`), so a later process reaps what a crashed one left and never what a live one
//! still uses.

use agentbox_storage::Shelf;

use super::{LocalBackend, LocalConfig};

pub(super) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner `o<pid>-<start time>` of a cgroup is still running.
pub(super) fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.strip_prefix('o').and_then(|o| o.split_once('-')) else { return false };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => process_start(pid) == Some(start),
        _ => false,
    }
}

/// The cgroup under which a backend with this config makes its sandboxes' cgroups.
pub(super) fn cgroup_parent(config: &LocalConfig) -> String {
    let state_key = std::fs::canonicalize(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
    format!("{}-{:08x}", config.cgroup_parent, fnv1a(state_key.as_os_str().as_encoded_bytes()))
}

/// Removes an orphaned layer and records its sandbox id as reaped.
fn remove_orphan_layer(pool: &agentbox_storage::Pool, name: &str, reaped: &mut Vec<String>) {
    let id = name.split_once('.').map_or(name, |(id, _)| id);
    match pool.remove_layer(name) {
        Ok(()) => {
            if !reaped.iter().any(|r| r == id) {
                reaped.push(id.to_owned());
            }
        }
        Err(e) => tracing::warn!(error = %e, layer = %name, "cannot remove an orphaned storage layer"),
    }
}

/// The owner tag of the files of a crashed process's sandbox, kept on the stopped shelf for their keeper (see
/// [`LocalConfig::crash_keeper`]). A start tags them with its own owner again.
pub(super) const CRASHED_TAG: &str = "crashed";

/// Moves an orphaned layer onto the stopped shelf under its sandbox's id, marked as kept after a crash; removes
/// it if it can't be kept (it would otherwise be found again by every later reaper).
fn keep_orphan_layer(pool: &agentbox_storage::Pool, name: &str, reaped: &mut Vec<String>) {
    let kept = pool
        .layer(name)
        .ok_or(agentbox_storage::StorageError::NotFound { what: "layer", name: name.to_owned() })
        .and_then(|layer| pool.set_owner_tag(&layer, CRASHED_TAG))
        .and_then(|()| pool.shelve_layer(name, name));
    match kept {
        Ok(_) => {
            tracing::info!(layer = %name, "kept the files of a crashed process's sandbox as stopped");
            reaped.push(name.to_owned());
        }
        Err(e) => {
            tracing::warn!(error = %e, layer = %name, "cannot keep the files of a crashed process's sandbox; removing them");
            remove_orphan_layer(pool, name, reaped);
        }
    }
}

/// Whether the files labelled `labels` name a keeper that still exists (see [`LocalConfig::crash_keeper`]).
fn keeper_exists(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels
        .get(agentbox_core::KEEPER_LABEL)
        .is_some_and(|k| std::path::Path::new(k).is_absolute() && std::path::Path::new(k).exists())
}

/// Deletes the files a crash kept whose keeper has gone since (its data directory was deleted): nothing would
/// adopt them.
fn remove_unkept(pool: &agentbox_storage::Pool) {
    for r in pool.snapshots(Shelf::Stopped) {
        let crashed = pool.shelved_owner_tag(Shelf::Stopped, &r.name).as_deref() == Some(CRASHED_TAG);
        if crashed && !keeper_exists(&pool.shelved_labels(Shelf::Stopped, &r.name)) {
            match pool.remove_snapshot(Shelf::Stopped, &r.name) {
                Ok(()) => tracing::info!(key = %r.name, "deleted files a crash kept for a keeper that is gone"),
                Err(e) => tracing::warn!(key = %r.name, error = %e, "cannot delete files a crash kept"),
            }
        }
    }
}

/// How long a layer without an owner tag is left alone: another process may be creating it (a layer
/// exists a moment before its owner tag is written).
const CREATION_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `dir` changed (was made or tagged) within [`CREATION_GRACE`].
fn just_made(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return false };
    let changed = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(meta.ctime()).unwrap_or(0));
    std::time::SystemTime::now().duration_since(changed).map_or(true, |age| age < CREATION_GRACE)
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

impl LocalBackend {
    /// Removes what processes that died without destroying their sandboxes left: their sandboxes'
    /// cgroups (killing anything still in them), storage layers (or, for those that name a keeper (see
    /// [`LocalConfig::crash_keeper`]), moves them onto the stopped shelf), id ranges and `/etc` templates. Only entries whose owner
    /// process is gone are touched: the owner is part of each cgroup's name. Returns the ids reaped.
    pub fn reap_orphans(&self) -> Vec<String> {
        self.inner.reap_orphans()
    }

    /// The name of a sandbox's cgroup: its id and its owner, so a later process can tell orphans
    /// (owner gone) from sandboxes of another live process sharing the state directory.
    pub(super) fn cgroup_name(&self, id: &str) -> String {
        format!("{id}.{}", self.inner.owner)
    }
}

impl super::Inner {
    /// What [`LocalBackend::reap_orphans`] does, here so that a backend can also do it when it is dropped
    /// ([`HostProcess::OneShot`](super::HostProcess::OneShot)).
    pub(super) fn reap_orphans(&self) -> Vec<String> {
        let mut reaped = Vec::new();
        for name in self.cgroups.leftovers() {
            let (id, owner) = name.split_once('.').unwrap_or((name.as_str(), ""));
            if owner == self.owner || owner_alive(owner) {
                continue;
            }
            let cg = self.cgroups.open(&name);
            cg.kill_all();
            cg.remove();
            reaped.push(id.to_owned());
        }
        if let Some(pool) = &self.pool {
            for name in pool.layer_names() {
                let Some(owner) = pool.owner_tag(&name) else {
                    // Untagged: being created by another process, unless it has been so for a while.
                    if !just_made(&pool.layers_dir().join(&name)) {
                        remove_orphan_layer(pool, &name, &mut reaped);
                    }
                    continue;
                };
                if owner == self.owner || owner_alive(&owner) {
                    continue;
                }
                if keeper_exists(&pool.layer_labels(&name)) {
                    keep_orphan_layer(pool, &name, &mut reaped);
                } else {
                    remove_orphan_layer(pool, &name, &mut reaped);
                }
            }
        }
        if let Some(pool) = &self.pool {
            remove_unkept(pool);
        }
        // Id ranges last: the layers owned by a dead process are gone, so no file holds its ids.
        if let Some(ranges) = &self.ids {
            for (range, tag) in ranges.claims() {
                if tag != self.owner && !owner_alive(&tag) {
                    if let Err(e) = ranges.release(range) {
                        tracing::warn!(error = %e, "cannot release an orphaned id range");
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.config.state_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(crate::etc::PREFIX) {
                    let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
                    if owner.is_some_and(|p| p != std::process::id() && process_start(p).is_none()) {
                        // A directory being built or removed, or a record being written.
                        let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                    }
                }
            }
        }
        if !reaped.is_empty() {
            tracing::info!(count = reaped.len(), "reaped sandboxes left by an earlier crash");
        }
        reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_owner_is_alive_only_while_that_exact_process_runs() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(owner_alive(&format!("o{me}-{start}")));
        assert!(!owner_alive(&format!("o{me}-{}", start + 1)), "a reused pid is not the owner");
        assert!(!owner_alive("o4194304-1"), "no such pid");
        for garbage in ["", "o", "o12", "x1-2", "o1-x", "oabc-1"] {
            assert!(!owner_alive(garbage), "{garbage:?}");
        }
    }
}
