//! The sandboxes' `/etc`: built once on the host and bound read-only into each
//! sandbox as a single mount, instead of a bind (two mount calls) per host entry
//! and a copy per generated file in every sandbox.
//!
//! A template is a directory in the state directory holding copies of the chosen
//! host `/etc` entries and the generated files (passwd, group, hosts...). Templates
//! are keyed by the generated files' content and rebuilt after [`MAX_AGE`], so a
//! change to the host's `/etc` reaches new sandboxes within that time. A replaced
//! template is deleted at once: sandboxes that bound it keep their view of it.

use agentbox_core::LockExt;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a template is used before it is rebuilt from the host's `/etc`.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Name prefix of template directories in the state directory: `.etc-<owner pid>-<n>`.
pub const PREFIX: &str = ".etc-";
/// How deep a copied directory tree may go.
const MAX_DEPTH: usize = 8;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The templates of one backend.
#[derive(Debug)]
pub struct Templates {
    state_dir: PathBuf,
    entries: Vec<String>,
    built: Mutex<HashMap<u64, (Instant, PathBuf)>>,
}

fn key(files: &[(String, String)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (p, c) in files {
        for b in p.bytes().chain([0]).chain(c.bytes()).chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Templates {
    /// Templates of the host `/etc` entries `entries`, kept under `state_dir`.
    #[must_use]
    pub fn new(state_dir: &Path, entries: &[String]) -> Self {
        Self { state_dir: state_dir.to_owned(), entries: entries.to_vec(), built: Mutex::new(HashMap::new()) }
    }

    /// A fresh template for these generated files, when one exists (no I/O).
    pub fn cached(&self, files: &[(String, String)]) -> Option<PathBuf> {
        let built = self.built.lock_unpoisoned();
        built.get(&key(files)).filter(|(at, _)| at.elapsed() < MAX_AGE).map(|(_, p)| p.clone())
    }

    /// The template for these generated files, built now when missing or stale. Blocking.
    ///
    /// # Errors
    /// When the template directory can't be written.
    pub fn get(&self, files: &[(String, String)]) -> io::Result<PathBuf> {
        let k = key(files);
        let mut built = self.built.lock_unpoisoned();
        if let Some((at, p)) = built.get(&k) {
            if at.elapsed() < MAX_AGE {
                return Ok(p.clone());
            }
        }
        let dir =
            self.state_dir.join(format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        if let Err(e) = self.build(&dir, files) {
            let _ = fs::remove_dir_all(&dir);
            return Err(io::Error::new(e.kind(), format!("building the sandbox /etc in {}: {e}", dir.display())));
        }
        if let Some((_, old)) = built.insert(k, (Instant::now(), dir.clone())) {
            let _ = fs::remove_dir_all(old);
        }
        Ok(dir)
    }

    fn build(&self, dir: &Path, files: &[(String, String)]) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o755).create(dir)?;
        for e in &self.entries {
            let src = Path::new("/etc").join(e);
            // A top-level entry is copied as what it points at, as a bind mount of it would show.
            match fs::metadata(&src) {
                Ok(m) if m.is_dir() => copy_tree(&src, &dir.join(e), 0)?,
                Ok(m) if m.is_file() => copy_file(&src, &dir.join(e), m.permissions().mode())?,
                _ => {}
            }
        }
        for (path, content) in files {
            let Some(rel) = path.strip_prefix("/etc/") else { continue };
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                fs::DirBuilder::new().recursive(true).mode(0o755).create(parent)?;
            }
            fs::write(&target, content)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }
}

impl Drop for Templates {
    fn drop(&mut self) {
        let built = self.built.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, (_, dir)) in built.drain() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn copy_file(src: &Path, dst: &Path, mode: u32) -> io::Result<()> {
    // World-unreadable files (keys and the like) are not copied: the sandbox user could not read them anyway.
    if mode & 0o004 == 0 {
        return Ok(());
    }
    fs::copy(src, dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode & 0o1755))
}

/// Copies a directory tree: directories, regular files and symlinks (as links). A directory others
/// can't read is made empty, so nothing private of the host's is duplicated.
fn copy_tree(src: &Path, dst: &Path, depth: usize) -> io::Result<()> {
    let mode = fs::metadata(src)?.permissions().mode();
    fs::DirBuilder::new().mode(0o700).create(dst)?;
    if mode & 0o005 == 0o005 && depth < MAX_DEPTH {
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            let (from, to) = (entry.path(), dst.join(entry.file_name()));
            let meta = entry.metadata()?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            } else if kind.is_dir() {
                copy_tree(&from, &to, depth + 1)?;
            } else if kind.is_file() {
                copy_file(&from, &to, meta.permissions().mode())?;
            }
        }
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(mode & 0o1755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_copies_entries_and_generated_files_and_skips_private_ones() {
        let state = std::env::temp_dir().join(format!("agentbox-etc-test-{}", std::process::id()));
        fs::create_dir_all(&state).unwrap();
        let t = Templates::new(&state, &["hostname".into(), "no-such-entry".into(), "ssl".into()]);
        let files = vec![("/etc/passwd".to_owned(), "user:x:1000:1000::/home/user:/bin/bash\n".to_owned())];
        assert!(t.cached(&files).is_none());
        let dir = t.get(&files).unwrap();
        assert_eq!(t.cached(&files), Some(dir.clone()));
        assert_eq!(t.get(&files).unwrap(), dir, "reused while fresh");
        assert_eq!(fs::read_to_string(dir.join("passwd")).unwrap(), files[0].1);
        if Path::new("/etc/hostname").is_file() {
            assert_eq!(fs::read(dir.join("hostname")).unwrap(), fs::read("/etc/hostname").unwrap());
        }
        assert!(!dir.join("no-such-entry").exists());
        if let Ok(m) = fs::metadata("/etc/ssl/private") {
            if m.permissions().mode() & 0o005 != 0o005 {
                assert_eq!(fs::read_dir(dir.join("ssl/private")).unwrap().count(), 0, "private dir copied");
            }
        }
        let other = t.get(&[("/etc/passwd".to_owned(), "x\n".to_owned())]).unwrap();
        assert_ne!(other, dir);
        drop(t);
        assert!(!dir.exists() && !other.exists(), "templates removed with their owner");
        fs::remove_dir_all(&state).unwrap();
    }
}
