//! envd's `filesystem.Filesystem` service over the backend's file operations.

use std::time::{Duration, SystemTime};

use agentbox_core::{FileEntry, FileKind, RunId, SandboxManager};
use agentbox_e2b_wire::wire::{EntryInfo, EntryResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest};

use crate::E2bApiError;
use crate::state::rfc3339;

/// The sandbox user's home, where relative paths start (as under envd).
pub const HOME: &str = "/home/user";
/// Most entries one `ListDir` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// An absolute path: relative ones are taken from the home directory.
#[must_use]
pub fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else if path.is_empty() || path == "~" {
        HOME.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{HOME}/{rest}")
    } else {
        format!("{HOME}/{path}")
    }
}

/// `ls -l`-style permissions: the type letter and `rwx` triples.
#[must_use]
pub fn permissions(kind: FileKind, mode: u32) -> String {
    let mut out = String::with_capacity(10);
    out.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// envd's `EntryInfo` for a backend entry.
#[must_use]
pub fn entry_info(e: &FileEntry) -> EntryInfo {
    let kind = match e.kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    EntryInfo {
        name: e.name.clone(),
        kind: kind.to_owned(),
        path: e.path.clone(),
        size: i64::try_from(e.size).unwrap_or(i64::MAX),
        mode: e.mode,
        permissions: permissions(e.kind, e.mode),
        modified_time: Some(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(e.modified_ms))),
        symlink_target: e.symlink_target.clone(),
        // Not in E2B's filesystem.proto: a link is known by its type and target, and a strict reader would refuse it.
        is_symlink: false,
    }
}

/// A message as JSON (one that cannot be serialized, which these can't fail to be, is an empty object).
fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_else(|_| serde_json::json!({}))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, E2bApiError> {
    serde_json::from_slice(body).map_err(|e| E2bApiError::BadRequest(format!("invalid {what}: {e}")))
}

fn not_found_is(e: agentbox_core::Error, what: &'static str, path: &str) -> E2bApiError {
    match e {
        agentbox_core::Error::NotFound(_) => E2bApiError::NotFound(format!("path {path} not found")),
        other => E2bApiError::Sandbox { what, source: other },
    }
}

async fn stat(manager: &SandboxManager, run: &RunId, path: &str) -> Result<FileEntry, E2bApiError> {
    let p = path.to_owned();
    manager
        .with_sandbox(run, |b, id| async move { b.stat(&id, &p).await })
        .await
        .map_err(|e| not_found_is(e, "reading the path's metadata", path))
}

/// A directory's entries, by name.
async fn sorted_list(manager: &SandboxManager, run: &RunId, dir: &str) -> Result<Vec<FileEntry>, E2bApiError> {
    let d = dir.to_owned();
    let mut listed = manager
        .with_sandbox(run, |b, id| async move { b.list_dir(&id, &d).await })
        .await
        .map_err(|e| not_found_is(e, "listing the directory", dir))?;
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listed)
}

/// envd's entry for `e`: a symlink is described by its target's type (and keeps its own path and target), as
/// envd's `os.Stat` does; a dangling link stays a symlink.
async fn described(manager: &SandboxManager, run: &RunId, e: &FileEntry) -> EntryInfo {
    let mut info = entry_info(e);
    if let (FileKind::Symlink, Some(target)) = (e.kind, &e.symlink_target) {
        let dir = e.path.rsplit_once('/').map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
        let resolved = if target.starts_with('/') { target.clone() } else { format!("{dir}/{target}") };
        // One level: a link to a link is described by the second link's own type.
        if let Ok(t) = stat(manager, run, &resolved).await {
            let kind = entry_info(&t).kind;
            info.kind = kind;
            info.permissions = permissions(t.kind, t.mode);
        }
        info.symlink_target = Some(resolved);
    }
    info
}

/// Runs one unary `filesystem.Filesystem` method; returns its JSON response.
///
/// # Errors
/// Per method: `not_found`, `already_exists`, `invalid_argument`, `unimplemented` (watchers), or the backend's.
pub async fn call(
    manager: &SandboxManager,
    run: &RunId,
    method: &str,
    body: &[u8],
) -> Result<serde_json::Value, E2bApiError> {
    match method {
        "Stat" => {
            let r: PathRequest = parse(body, "StatRequest")?;
            let path = absolute(&r.path);
            let e = stat(manager, run, &path).await?;
            Ok(json(&EntryResponse { entry: Some(described(manager, run, &e).await) }))
        }
        "ListDir" => {
            let raw: serde_json::Value = parse(body, "ListDirRequest")?;
            let depth = raw.get("depth").and_then(serde_json::Value::as_u64).unwrap_or(1).max(1);
            let r = ListDirRequest {
                path: raw.get("path").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned(),
                depth: u32::try_from(depth).unwrap_or(u32::MAX),
            };
            let root = absolute(&r.path);
            let top = stat(manager, run, &root).await?;
            if top.kind != FileKind::Dir {
                return Err(E2bApiError::BadRequest(format!("path {root} is not a directory")));
            }
            // Depth first, by name, as envd's directory walk returns them.
            let mut entries = Vec::new();
            let mut stack = vec![(sorted_list(manager, run, &root).await?.into_iter(), 1u32)];
            while let Some((iter, level)) = stack.last_mut() {
                let level = *level;
                let Some(e) = iter.next() else {
                    stack.pop();
                    continue;
                };
                if entries.len() >= MAX_LIST_ENTRIES {
                    return Err(E2bApiError::LimitReached(format!(
                        "{root} holds more than {MAX_LIST_ENTRIES} entries at depth {}; list with a smaller depth",
                        r.depth
                    )));
                }
                entries.push(described(manager, run, &e).await);
                if e.kind == FileKind::Dir && level < r.depth {
                    stack.push((sorted_list(manager, run, &e.path).await?.into_iter(), level + 1));
                }
            }
            Ok(json(&ListDirResponse { entries }))
        }
        "MakeDir" => {
            let r: PathRequest = parse(body, "MakeDirRequest")?;
            let path = absolute(&r.path);
            match stat(manager, run, &path).await {
                Ok(_) => return Err(E2bApiError::AlreadyExists(format!("path {path} already exists"))),
                Err(E2bApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let p = path.clone();
            manager
                .with_sandbox(run, |b, id| async move { b.mkdir(&id, &p).await })
                .await
                .map_err(E2bApiError::sandbox("making the directory"))?;
            let e = stat(manager, run, &path).await?;
            Ok(json(&EntryResponse { entry: Some(entry_info(&e)) }))
        }
        "Move" => {
            let r: MoveRequest = parse(body, "MoveRequest")?;
            let (from, to) = (absolute(&r.source), absolute(&r.destination));
            let (f, t) = (from.clone(), to.clone());
            manager
                .with_sandbox(run, |b, id| async move { b.rename(&id, &f, &t).await })
                .await
                .map_err(|e| not_found_is(e, "moving the path", &from))?;
            let e = stat(manager, run, &to).await?;
            Ok(json(&EntryResponse { entry: Some(entry_info(&e)) }))
        }
        "Remove" => {
            let r: PathRequest = parse(body, "RemoveRequest")?;
            let path = absolute(&r.path);
            let p = path.clone();
            match manager.with_sandbox(run, |b, id| async move { b.remove(&id, &p).await }).await {
                Ok(()) | Err(agentbox_core::Error::NotFound(_)) => Ok(serde_json::json!({})),
                Err(e) => Err(E2bApiError::Sandbox { what: "removing the path", source: e }),
            }
        }
        other => Err(E2bApiError::NotFound(format!("filesystem.Filesystem has no method {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_entries_follow_envd() {
        assert_eq!(absolute("a/b"), "/home/user/a/b");
        assert_eq!(absolute("/etc"), "/etc");
        assert_eq!(absolute("~/x"), "/home/user/x");
        let e = FileEntry {
            path: "/home/user/f".into(),
            name: "f".into(),
            kind: FileKind::File,
            size: 5,
            mode: 0o644,
            modified_ms: 1_700_000_000_000,
            symlink_target: None,
        };
        let v = serde_json::to_value(entry_info(&e)).unwrap();
        assert_eq!(v["size"], "5", "int64 is a string in proto3 JSON");
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert!(v.get("isSymlink").is_none(), "false is omitted");
        assert_eq!(v["permissions"], "-rw-r--r--");
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
    }
}
