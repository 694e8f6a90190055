//! The sandboxes' `/etc`: built once on the host and bound read-only into each
//! sandbox as a single mount, instead of a bind (two mount calls) per host entry
//! and a copy per generated file in every sandbox.
//!
//! A template is a directory `etc-<key>` in the state directory holding copies of the chosen host
//! `/etc` entries and the generated files (passwd, group, hosts...). The key hashes the generated
//! files, the entry names and a fingerprint of the host entries (inode, size, mode and times of every
//! file and directory under them), so a template is reused by every process sharing the state
//! directory (a one-shot `agentbox run` finds the one the previous run built) until the host's files
//! change. The processes sharing a state directory re-check the fingerprint at most every [`RECHECK`]
//! between them: each records which template matched and when, and a one-shot `agentbox run` started
//! within that time uses the recorded template without walking the host's entries.
//!
//! Templates are built in a private directory and renamed into place, so concurrent builders never
//! see a half-built one: the first rename wins and the loser uses the winner's. Every user holds a
//! shared `flock` on the template for as long as a sandbox may bind it; unused ones beyond the newest
//! [`KEEP`] are removed only under an exclusive lock, so nobody deletes files a sandbox sees.

use agentbox_core::LockExt;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::sys;

/// How long a process reuses a template before checking the host's `/etc` entries again.
pub const RECHECK: Duration = Duration::from_secs(10);
/// Name prefix of templates in the state directory: `etc-<key>`.
pub const TEMPLATE_PREFIX: &str = "etc-";
/// Name prefix of the records of which template matched the host's entries, and when:
/// `checked-etc-<key of the generated files>`.
pub const CHECKED_PREFIX: &str = "checked-etc-";
/// Name prefix of directories being built or removed: `.etc-<owner pid>-<n>` (reaped once the owner is gone).
pub const PREFIX: &str = ".etc-";
/// How many unused templates stay on disk for later processes.
pub const KEEP: usize = 4;
/// How deep a copied directory tree may go.
const MAX_DEPTH: usize = 8;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One template in use: its directory, and a shared lock on it that keeps other processes from
/// removing it. Sandboxes that bind it hold it.
#[derive(Debug)]
pub struct Template {
    path: PathBuf,
    _lock: fs::File,
}

impl Template {
    /// The template directory, to bind as the sandbox's `/etc`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The templates of one backend.
#[derive(Debug)]
pub struct Templates {
    /// The host directory the entries are copied from: `/etc`.
    host_etc: PathBuf,
    state_dir: PathBuf,
    entries: Vec<String>,
    /// How long a check of the host's entries holds ([`RECHECK`]).
    recheck: Duration,
    /// By the generated files' key: the template in use and when the host's entries were last checked.
    current: Mutex<HashMap<u64, (Instant, Arc<Template>)>>,
}

/// FNV-1a, enough to tell contents apart (not a defence: the inputs are the host's own files).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for x in b.iter().chain([&0]) {
            self.0 = (self.0 ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn num(&mut self, n: i64) {
        self.bytes(&n.to_le_bytes());
    }
    fn meta(&mut self, m: &fs::Metadata) {
        for n in [m.ino(), m.size(), u64::from(m.mode())] {
            self.bytes(&n.to_le_bytes());
        }
        for n in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
            self.num(n);
        }
    }
}

fn files_key(files: &[(String, String)]) -> u64 {
    let mut h = Fnv::new();
    for (p, c) in files {
        h.bytes(p.as_bytes());
        h.bytes(c.as_bytes());
    }
    h.0
}

/// Hashes what a template would copy of the host: every file's and directory's metadata. A symlink
/// inside a directory is covered by the directory's times (creating, removing or retargeting one
/// changes them); a top-level entry is followed, as the copy follows it.
fn fingerprint(host_etc: &Path, entries: &[String]) -> u64 {
    fn walk(dir: &Path, h: &mut Fnv, depth: usize) {
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut list: Vec<_> = rd.flatten().collect();
        list.sort_by_key(fs::DirEntry::file_name);
        for e in list {
            h.bytes(e.file_name().as_encoded_bytes());
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() || kind.is_file() {
                if let Ok(m) = e.metadata() {
                    h.meta(&m);
                }
                if kind.is_dir() {
                    walk(&e.path(), h, depth + 1);
                }
            }
        }
    }
    let mut h = Fnv::new();
    for e in entries {
        h.bytes(e.as_bytes());
        let src = host_etc.join(e);
        if let Ok(m) = fs::metadata(&src) {
            h.meta(&m);
            if m.is_dir() {
                walk(&src, &mut h, 0);
            }
        }
    }
    h.0
}

impl Templates {
    /// Templates of the host `/etc` entries `entries`, kept under `state_dir`.
    #[must_use]
    pub fn new(state_dir: &Path, entries: &[String]) -> Self {
        Self::from(Path::new("/etc"), state_dir, entries, RECHECK)
    }

    fn from(host_etc: &Path, state_dir: &Path, entries: &[String], recheck: Duration) -> Self {
        Self {
            host_etc: host_etc.to_owned(),
            state_dir: state_dir.to_owned(),
            entries: entries.to_vec(),
            recheck,
            current: Mutex::new(HashMap::new()),
        }
    }

    /// The template in use for these generated files, when it was checked within [`RECHECK`] (no I/O).
    pub fn cached(&self, files: &[(String, String)]) -> Option<Arc<Template>> {
        let current = self.current.lock_unpoisoned();
        current.get(&files_key(files)).filter(|(at, _)| at.elapsed() < self.recheck).map(|(_, t)| t.clone())
    }

    /// The template for these generated files and the host's entries as they are now: the one in
    /// use, one another process built, or a new one. Blocking.
    ///
    /// # Errors
    /// When the template directory can't be written or locked.
    pub fn get(&self, files: &[(String, String)]) -> io::Result<Arc<Template>> {
        let fkey = files_key(files);
        if let Some(template) = self.checked_by_another(fkey)? {
            let template = Arc::new(template);
            self.current.lock_unpoisoned().insert(fkey, (Instant::now(), template.clone()));
            return Ok(template);
        }
        let mut h = Fnv(fkey);
        h.bytes(&fingerprint(&self.host_etc, &self.entries).to_le_bytes());
        let name = format!("{TEMPLATE_PREFIX}{:016x}", h.0);
        let path = self.state_dir.join(&name);
        let mut current = self.current.lock_unpoisoned();
        if let Some((at, t)) = current.get_mut(&fkey) {
            if t.path == path {
                *at = Instant::now();
                return Ok(t.clone());
            }
        }
        let template = match open_locked(&path)? {
            Some(t) => t,
            None => {
                let built = self.build_in_place(&path, files)?;
                // Dropped now, or later by its last sandbox, so it can be collected.
                current.remove(&fkey);
                collect_unused(&self.state_dir, KEEP, &name);
                built
            }
        };
        self.record_check(fkey, &name);
        let template = Arc::new(template);
        current.insert(fkey, (Instant::now(), template.clone()));
        Ok(template)
    }

    /// Where processes sharing the state directory record which template matched the host for these
    /// generated files, and when (the file's modification time).
    fn record_path(&self, fkey: u64) -> PathBuf {
        self.state_dir.join(format!("{CHECKED_PREFIX}{fkey:016x}"))
    }

    /// The template another process (or this one) found matching the host within [`RECHECK`], locked; `None`
    /// when there is no such record or its template is gone. A one-shot process (`agentbox run`) then skips
    /// the walk of the host's entries, as a long-running one does between its own checks.
    fn checked_by_another(&self, fkey: u64) -> io::Result<Option<Template>> {
        let path = self.record_path(fkey);
        let Ok(meta) = fs::symlink_metadata(&path) else { return Ok(None) };
        let fresh =
            meta.is_symlink() && meta.modified().is_ok_and(|at| at.elapsed().is_ok_and(|age| age < self.recheck));
        if !fresh {
            return Ok(None);
        }
        let Some(name) = fs::read_link(&path).ok().and_then(|n| n.to_str().map(str::to_owned)) else {
            return Ok(None);
        };
        let valid = name
            .strip_prefix(TEMPLATE_PREFIX)
            .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return Ok(None);
        }
        open_locked(&self.state_dir.join(name))
    }

    /// Records that the template `name` matched the host for these generated files just now: a symlink to it,
    /// made aside and renamed into place, so a reader sees a whole record or the previous one. (A symlink has
    /// no data to write: a regular file renamed over another made ext4 flush it first, 4 ms.) Best effort:
    /// without a record, the next process walks the host's entries itself.
    fn record_check(&self, fkey: u64, name: &str) {
        let tmp = private_dir(&self.state_dir);
        if std::os::unix::fs::symlink(name, &tmp).and_then(|()| fs::rename(&tmp, self.record_path(fkey))).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Builds a template privately and renames it to `path`; when another process got there first,
    /// uses theirs.
    fn build_in_place(&self, path: &Path, files: &[(String, String)]) -> io::Result<Template> {
        let tmp = private_dir(&self.state_dir);
        if let Err(e) = self.build(&tmp, files) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io::Error::new(e.kind(), format!("building the sandbox /etc in {}: {e}", tmp.display())));
        }
        // The build time orders templates for collection; set from the fine-grained clock, since
        // file times come from a coarse one and builds in the same tick would tie.
        fs::File::open(&tmp).and_then(|d| d.set_modified(SystemTime::now()))?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_dir_all(&tmp);
            if !matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) {
                return Err(io::Error::new(e.kind(), format!("moving the sandbox /etc to {}: {e}", path.display())));
            }
        }
        // Ours, or a concurrent builder's (the same content): either way, locked before use.
        open_locked(path)?.ok_or_else(|| {
            io::Error::other(format!("the sandbox /etc {} was removed as it was built; try again", path.display()))
        })
    }

    fn build(&self, dir: &Path, files: &[(String, String)]) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o755).create(dir)?;
        for e in &self.entries {
            let src = self.host_etc.join(e);
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

/// A fresh private directory name in the state directory, reaped with its owner process.
fn private_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Opens and share-locks the template at `path`; `None` when there is none (or it was being removed).
fn open_locked(path: &Path) -> io::Result<Option<Template>> {
    let dir = match fs::File::open(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("opening the sandbox /etc {}: {e}", path.display()))),
    };
    // Blocks only while a collector holds it, and that one renames it away before letting go.
    sys::flock(dir.as_fd(), libc::LOCK_SH)?;
    let (held, now) = (dir.metadata()?, fs::symlink_metadata(path));
    match now {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
            Ok(Some(Template { path: path.to_owned(), _lock: dir }))
        }
        _ => Ok(None),
    }
}

/// Removes the templates in `state_dir` that no process uses, except the newest `keep` and `spare`.
/// A template is removed only under an exclusive lock, renamed away first, so a process that opens
/// it concurrently sees it gone rather than half-deleted.
pub fn collect_unused(state_dir: &Path, keep: usize, spare: &str) {
    let Ok(rd) = fs::read_dir(state_dir) else { return };
    let mut templates: Vec<(SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(TEMPLATE_PREFIX) && name != spare
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    templates.sort_by_key(|t| std::cmp::Reverse(t.0));
    let mut kept = 0;
    for (_, path) in templates {
        let Ok(dir) = fs::File::open(&path) else { continue };
        if sys::flock(dir.as_fd(), libc::LOCK_EX | libc::LOCK_NB).is_err() {
            continue; // in use
        }
        if kept < keep {
            kept += 1;
            continue;
        }
        let doomed = private_dir(state_dir);
        if fs::rename(&path, &doomed).is_ok() {
            let _ = fs::remove_dir_all(&doomed);
        }
    }
    // Records of templates that are gone go too (a reader of one finds no template and walks the host anyway).
    let Ok(rd) = fs::read_dir(state_dir) else { return };
    for e in rd.flatten() {
        let is_record = e.file_name().to_string_lossy().starts_with(CHECKED_PREFIX);
        if is_record && fs::read_link(e.path()).is_ok_and(|target| !state_dir.join(target).exists()) {
            let _ = fs::remove_file(e.path());
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

    struct Dirs(PathBuf);
    impl Dirs {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("agentbox-etc-test-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(d.join("host/ssl/private")).unwrap();
            fs::create_dir_all(d.join("state")).unwrap();
            fs::write(d.join("host/hostname"), "box\n").unwrap();
            fs::write(d.join("host/ssl/cert.pem"), "CERT\n").unwrap();
            fs::write(d.join("host/ssl/private/key.pem"), "KEY\n").unwrap();
            fs::set_permissions(d.join("host/ssl/private"), fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::symlink("cert.pem", d.join("host/ssl/link.pem")).unwrap();
            Self(d)
        }
        /// Templates as a new process sees them, checking the host's entries every time.
        fn templates(&self) -> Templates {
            self.templates_rechecked_every(Duration::ZERO)
        }
        fn templates_rechecked_every(&self, recheck: Duration) -> Templates {
            let entries = ["hostname", "no-such-entry", "ssl"].map(str::to_owned);
            Templates::from(&self.0.join("host"), &self.0.join("state"), &entries, recheck)
        }
        /// The templates and build directories in the state directory (not the check records).
        fn on_disk(&self) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(self.0.join("state"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with(CHECKED_PREFIX))
                .collect();
            v.sort();
            v
        }
    }
    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn passwd(who: &str) -> Vec<(String, String)> {
        vec![("/etc/passwd".to_owned(), format!("{who}:x:1000:1000::/home/user:/bin/bash\n"))]
    }

    #[test]
    fn a_template_copies_entries_and_generated_files_and_skips_private_ones() {
        let d = Dirs::new("copy");
        let t = d.templates_rechecked_every(RECHECK);
        let files = passwd("user");
        assert!(t.cached(&files).is_none());
        let dir = t.get(&files).unwrap();
        let p = dir.path();
        assert!(Arc::ptr_eq(&t.cached(&files).unwrap(), &dir));
        assert_eq!(fs::read_to_string(p.join("passwd")).unwrap(), files[0].1);
        assert_eq!(fs::read_to_string(p.join("hostname")).unwrap(), "box\n");
        assert_eq!(fs::read_link(p.join("ssl/link.pem")).unwrap(), Path::new("cert.pem"));
        assert!(!p.join("no-such-entry").exists());
        assert_eq!(fs::read_dir(p.join("ssl/private")).unwrap().count(), 0, "a private directory is copied empty");
        assert_eq!(d.on_disk(), [p.file_name().unwrap().to_string_lossy()], "no build directory left");
    }

    #[test]
    fn another_process_reuses_the_template_until_the_host_files_change() {
        let d = Dirs::new("reuse");
        let files = passwd("user");
        let first = d.templates().get(&files).unwrap();
        let ino = fs::metadata(first.path().join("passwd")).unwrap().ino();
        // A second backend sharing the state directory, as the next `agentbox run` process is.
        let again = d.templates().get(&files).unwrap();
        assert_eq!(again.path(), first.path());
        assert_eq!(fs::metadata(again.path().join("passwd")).unwrap().ino(), ino, "reused, not rebuilt");

        fs::write(d.0.join("host/ssl/cert.pem"), "NEW CERT, LONGER\n").unwrap();
        let changed = d.templates().get(&files).unwrap();
        assert_ne!(changed.path(), first.path(), "a changed host file makes a new template");
        assert_eq!(fs::read_to_string(changed.path().join("ssl/cert.pem")).unwrap(), "NEW CERT, LONGER\n");
        assert!(first.path().exists(), "a template in use is never removed");

        std::os::unix::fs::symlink("hostname", d.0.join("host/ssl/other.pem")).unwrap();
        let relinked = d.templates().get(&files).unwrap();
        assert_ne!(relinked.path(), changed.path(), "a new symlink makes a new template");
        assert_ne!(d.templates().get(&passwd("alice")).unwrap().path(), relinked.path());
    }

    #[test]
    fn within_the_recheck_time_another_process_takes_the_recorded_template_without_walking_the_host() {
        let d = Dirs::new("record");
        let files = passwd("user");
        let first = d.templates_rechecked_every(RECHECK).get(&files).unwrap();
        fs::write(d.0.join("host/ssl/cert.pem"), "NEW CERT, LONGER\n").unwrap();
        // The next process, within RECHECK of the first one's check: the recorded template, as the first
        // process itself would use it until its own next check.
        let next = d.templates_rechecked_every(RECHECK).get(&files).unwrap();
        assert_eq!(next.path(), first.path(), "the recorded check holds for RECHECK");
        // Once the record is older than that, the host is walked again and the change is seen.
        let later = d.templates_rechecked_every(Duration::ZERO).get(&files).unwrap();
        assert_ne!(later.path(), first.path());
        assert_eq!(fs::read_to_string(later.path().join("ssl/cert.pem")).unwrap(), "NEW CERT, LONGER\n");
        // A record naming something that is not a template is ignored.
        let record = d.0.join("state").join(format!("{CHECKED_PREFIX}{:016x}", files_key(&files)));
        fs::remove_file(&record).unwrap();
        std::os::unix::fs::symlink("../../elsewhere", &record).unwrap();
        let t = d.templates_rechecked_every(RECHECK).get(&files).unwrap();
        assert_eq!(t.path(), later.path(), "the host was walked again");
        let rewritten = fs::read_link(&record).unwrap();
        assert!(rewritten.to_str().unwrap().starts_with(TEMPLATE_PREFIX), "and the record rewritten");
        // Another process's other generated files have a record of their own.
        assert_ne!(d.templates_rechecked_every(RECHECK).get(&passwd("alice")).unwrap().path(), later.path());
    }

    #[test]
    fn unused_templates_beyond_the_newest_are_collected_and_used_ones_never() {
        let d = Dirs::new("collect");
        let held = d.templates().get(&passwd("held")).unwrap();
        let unused: Vec<PathBuf> =
            (0..KEEP + 2).map(|i| d.templates().get(&passwd(&format!("u{i}"))).unwrap().path().to_owned()).collect();
        // A template looks in use while any thread of the process is between fork and exec (the child holds
        // a copy of the lock's descriptor until exec closes it); other tests spawn processes concurrently, so a
        // collection is repeated until nothing more goes, as the next build's would.
        let collect = |keep: usize| {
            for _ in 0..50 {
                let before = d.on_disk().len();
                collect_unused(&d.0.join("state"), keep, "");
                if d.on_disk().len() == before {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    collect_unused(&d.0.join("state"), keep, "");
                    if d.on_disk().len() == before {
                        return;
                    }
                }
            }
        };
        // Each build collected: the newest KEEP unused ones stay, with the one still held.
        collect(KEEP);
        assert!(held.path().exists(), "held by a sandbox");
        let left = unused.iter().filter(|p| p.exists()).count();
        assert_eq!(left, KEEP, "{:?}", d.on_disk());
        assert!(unused.last().unwrap().exists(), "the newest stays");
        collect(0);
        assert_eq!(d.on_disk(), [held.path().file_name().unwrap().to_string_lossy()]);
        drop(held);
        collect(0);
        assert!(d.on_disk().is_empty());
        let records = fs::read_dir(d.0.join("state")).unwrap().count();
        assert_eq!(records, 0, "the records of removed templates go with them");
    }
}
