//! Owners and orphans. A sandbox's cgroup and storage layer carry the process that made it
//! (`o<pid>-<start time>`), so a later process reaps what a crashed one left and never what a live one
//! still uses.

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
    /// cgroups (killing anything still in them), storage layers, id ranges and `/etc` templates. Only entries whose owner
    /// process is gone are touched: the owner is part of each cgroup's name. Returns the ids reaped.
    pub fn reap_orphans(&self) -> Vec<String> {
        let mut reaped = Vec::new();
        for name in self.inner.cgroups.leftovers() {
            let (id, owner) = name.split_once('.').unwrap_or((name.as_str(), ""));
            if owner == self.inner.owner || owner_alive(owner) {
                continue;
            }
            let cg = self.inner.cgroups.open(&name);
            cg.kill_all();
            cg.remove();
            reaped.push(id.to_owned());
        }
        if let Some(pool) = &self.inner.pool {
            for name in pool.layer_names() {
                let Some(owner) = pool.owner_tag(&name) else {
                    // Untagged: being created by another process, unless it has been so for a while.
                    if !just_made(&pool.layers_dir().join(&name)) {
                        remove_orphan_layer(pool, &name, &mut reaped);
                    }
                    continue;
                };
                if owner == self.inner.owner || owner_alive(&owner) {
                    continue;
                }
                remove_orphan_layer(pool, &name, &mut reaped);
            }
        }
        // Id ranges last: the layers owned by a dead process are gone, so no file holds its ids.
        if let Some(ranges) = &self.inner.ids {
            for (range, tag) in ranges.claims() {
                if tag != self.inner.owner && !owner_alive(&tag) {
                    if let Err(e) = ranges.release(range) {
                        tracing::warn!(error = %e, "cannot release an orphaned id range");
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.inner.config.state_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(crate::etc::PREFIX) {
                    let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
                    if owner.is_some_and(|p| p != std::process::id() && process_start(p).is_none()) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        if !reaped.is_empty() {
            tracing::info!(count = reaped.len(), "reaped sandboxes left by an earlier crash");
        }
        reaped
    }

    /// The name of a sandbox's cgroup: its id and its owner, so a later process can tell orphans
    /// (owner gone) from sandboxes of another live process sharing the state directory.
    pub(super) fn cgroup_name(&self, id: &str) -> String {
        format!("{id}.{}", self.inner.owner)
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
