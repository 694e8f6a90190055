//! Host id ranges: each sandbox's user namespace maps its ids `0..65536` onto a host range of its own, so
//! that no two sandboxes share a host uid.
//!
//! The kernel counts per-user limits (inotify instances and watches, processes, message queue bytes) per host
//! uid, and charges them again to the uid that owns each user namespace. A sandbox whose namespace is owned by
//! the first id of its own range, and whose user is an id inside that range, has limits of its own: one
//! sandbox that opens every inotify instance it may leaves its neighbours theirs.
//!
//! A claim is a file named by the range's first id in the claims directory, made atomically (written aside,
//! then hard-linked into place, which fails if the name exists), and holding its owner's tag
//! (`o<pid>-<start time>`), so that claims are unique across every process sharing the directory and a later
//! process can release those of a process that died. Nothing here needs root except what the ids are later
//! used for: writing a namespace's id map (a rootless mode would write it with `newuidmap` from the user's
//! `/etc/subuid` ranges instead, and allocate from those).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// Ids in each range: a user namespace maps ids `0..RANGE_SIZE`.
pub const RANGE_SIZE: u32 = 65536;

/// Where ranges come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRangesConfig {
    /// The first host id of the first range. The default, `0x6000_0000`, sits above the ids that
    /// `/etc/subuid` hands out (from 100000 up) and below 2^31 (ids that tools would read as negative).
    pub first: u32,
    /// How many ranges there are (the most sandboxes with ranges at once, across every process).
    pub ranges: u32,
    /// The claims directory (made 0700 if missing).
    pub dir: PathBuf,
}

impl IdRangesConfig {
    /// The default ranges, claimed in `dir`: 4096 ranges from `0x6000_0000` (up to `0x7000_0000`).
    #[must_use]
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { first: 0x6000_0000, ranges: 4096, dir }
    }
}

/// A range of host ids: inside id `i` is host id `first + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdRange {
    /// The host id of inside id 0.
    pub first: u32,
}

impl IdRange {
    /// The identity: inside ids are host ids (a sandbox without a user namespace of its own).
    pub const IDENTITY: Self = Self { first: 0 };

    /// The host id of inside id `inside` (ids past the range map to nothing: `None`).
    #[must_use]
    pub fn host(self, inside: u32) -> Option<u32> {
        (inside < RANGE_SIZE).then(|| self.first.checked_add(inside)).flatten()
    }

    /// The inside id of host id `host`, when the range holds it.
    #[must_use]
    pub fn inside(self, host: u32) -> Option<u32> {
        host.checked_sub(self.first).filter(|i| *i < RANGE_SIZE)
    }

    /// The line a user namespace's `uid_map` and `gid_map` take for this range.
    #[must_use]
    pub fn map_line(self) -> String {
        format!("0 {} {RANGE_SIZE}\n", self.first)
    }
}

/// The ranges of one claims directory.
#[derive(Debug)]
pub struct IdRanges {
    config: IdRangesConfig,
}

impl IdRanges {
    /// Opens (making if needed) the claims directory.
    ///
    /// # Errors
    /// Ranges that overflow the id space, or the directory can't be made.
    pub fn open(config: IdRangesConfig) -> Result<Self, StorageError> {
        let end = u64::from(config.first) + u64::from(config.ranges) * u64::from(RANGE_SIZE);
        if config.ranges == 0 || config.first == 0 || end > u64::from(u32::MAX) {
            return Err(StorageError::IdRanges(format!(
                "{} ranges of {RANGE_SIZE} ids from {} don't fit between 1 and {}; lower `first` or `ranges`",
                config.ranges,
                config.first,
                u32::MAX - 1
            )));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(StorageError::io("making the id range claims directory", &config.dir))?;
        Ok(Self { config })
    }

    /// Claims a free range for the owner `tag`, starting the search at a random range (so that concurrent
    /// claimers rarely collide).
    ///
    /// # Errors
    /// Every range is taken, or the claims directory can't be written.
    pub fn claim(&self, tag: &str) -> Result<IdRange, StorageError> {
        self.claim_preferring(None, tag)
    }

    /// Claims `preferred` for the owner `tag` when it is one of this allocator's ranges and free, or else any
    /// free range as [`claim`](Self::claim) does. A sandbox started on files its earlier sandbox owned gets
    /// that range back when it can, so its files need no change of owner.
    ///
    /// # Errors
    /// As [`claim`](Self::claim).
    pub fn claim_preferring(&self, preferred: Option<IdRange>, tag: &str) -> Result<IdRange, StorageError> {
        let slot_of = |r: IdRange| {
            let offset = r.first.checked_sub(self.config.first)?;
            (offset % RANGE_SIZE == 0 && offset / RANGE_SIZE < self.config.ranges).then_some(offset / RANGE_SIZE)
        };
        // The search starts at the preferred range, so it is the one tried first.
        let start = preferred.and_then(slot_of).unwrap_or_else(|| random_u32() % self.config.ranges);
        let aside = self.config.dir.join(format!(".claim-{}-{}", std::process::id(), random_u32()));
        write_new(&aside, tag).map_err(StorageError::io("writing an id range claim", &aside))?;
        let result = (|| {
            for i in 0..self.config.ranges {
                let slot = (start + i) % self.config.ranges;
                let range = IdRange { first: self.config.first + slot * RANGE_SIZE };
                let path = self.path(range);
                match fs::hard_link(&aside, &path) {
                    Ok(()) => return Ok(range),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(StorageError::io("claiming an id range", &path)(e)),
                }
            }
            Err(StorageError::IdRanges(format!(
                "all {} id ranges in {} are in use; destroy sandboxes or raise `ranges`",
                self.config.ranges,
                self.config.dir.display()
            )))
        })();
        let _ = fs::remove_file(&aside);
        result
    }

    /// Gives a range back.
    ///
    /// # Errors
    /// The claim can't be removed (a missing claim is not an error).
    pub fn release(&self, range: IdRange) -> Result<(), StorageError> {
        let path = self.path(range);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("releasing an id range", &path)(e)),
        }
    }

    /// Every claimed range with its owner's tag (for reaping the claims of processes that died).
    #[must_use]
    pub fn claims(&self) -> Vec<(IdRange, String)> {
        let Ok(rd) = fs::read_dir(&self.config.dir) else { return Vec::new() };
        let mut claims: Vec<(IdRange, String)> = rd
            .flatten()
            .filter_map(|e| {
                let first: u32 = e.file_name().to_str()?.parse().ok()?;
                let tag = fs::read_to_string(e.path()).ok()?;
                Some((IdRange { first }, tag))
            })
            .collect();
        claims.sort_by_key(|(r, _)| r.first);
        claims
    }

    fn path(&self, range: IdRange) -> PathBuf {
        self.config.dir.join(range.first.to_string())
    }
}

fn write_new(path: &Path, content: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(content.as_bytes())
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom into a local buffer of the length given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 4 { u32::from_ne_bytes(b) } else { std::process::id().wrapping_mul(2_654_435_761) }
}

/// Moves the ownership of every file under `dir` (itself included) from range `from` to range `to`, without
/// following symbolic links: a file owned by inside id `i` of `from` becomes owned by inside id `i` of `to`;
/// ids outside `from` are left as they are. Returns how many entries changed. POSIX ACL entries naming ids are
/// not shifted.
///
/// Only for a tree no sandbox runs in (a fork's new layer before its sandbox starts): a path that changes under
/// the walk would be followed as the new path says.
///
/// # Errors
/// The first entry that can't be read or changed.
pub fn shift_owners(dir: &Path, from: IdRange, to: IdRange) -> Result<u64, StorageError> {
    if from == to {
        return Ok(0);
    }
    let mut changed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).map_err(StorageError::io("reading an owner to shift", &path))?;
        if shift_one(&path, &meta, from, to)? {
            changed += 1;
        }
        if meta.is_dir() {
            let rd = fs::read_dir(&path).map_err(StorageError::io("listing a directory to shift", &path))?;
            for entry in rd {
                let entry = entry.map_err(StorageError::io("listing a directory to shift", &path))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(changed)
}

fn shift_one(path: &Path, meta: &fs::Metadata, from: IdRange, to: IdRange) -> Result<bool, StorageError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = from.inside(meta.uid()).and_then(|i| to.host(i));
    let gid = from.inside(meta.gid()).and_then(|i| to.host(i));
    if uid.is_none() && gid.is_none() {
        return Ok(false);
    }
    std::os::unix::fs::lchown(path, uid, gid).map_err(StorageError::io("shifting a file's owner", path))?;
    // chown clears the set-user-id and set-group-id bits of a file: put them back (symlinks have none).
    let mode = meta.mode() & 0o7777;
    if !meta.file_type().is_symlink() && mode & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(StorageError::io("restoring a shifted file's mode", path))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_maps_inside_ids_and_back() {
        let r = IdRange { first: 0x6001_0000 };
        assert_eq!(r.host(0), Some(0x6001_0000));
        assert_eq!(r.host(1000), Some(0x6001_03e8));
        assert_eq!(r.host(RANGE_SIZE), None);
        assert_eq!(r.inside(0x6001_03e8), Some(1000));
        assert_eq!(r.inside(0x6000_ffff), None);
        assert_eq!(r.inside(0x6002_0000), None);
        assert_eq!(r.map_line(), "0 1610678272 65536\n");
        assert_eq!(IdRange::IDENTITY.host(1000), Some(1000));
    }

    #[test]
    fn claims_are_unique_released_and_tagged() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::open(IdRangesConfig { first: 1 << 20, ranges: 3, dir: dir.path().join("ids") }).unwrap();
        let a = ranges.claim("o1-1").unwrap();
        let b = ranges.claim("o2-2").unwrap();
        let c = ranges.claim("o3-3").unwrap();
        let mut firsts = vec![a.first, b.first, c.first];
        firsts.sort_unstable();
        assert_eq!(firsts, [1 << 20, (1 << 20) + RANGE_SIZE, (1 << 20) + 2 * RANGE_SIZE]);
        let err = ranges.claim("o4-4").unwrap_err().to_string();
        assert!(err.contains("all 3 id ranges"), "{err}");
        assert_eq!(ranges.claims().len(), 3);
        assert!(ranges.claims().contains(&(b, "o2-2".to_owned())));
        ranges.release(b).unwrap();
        ranges.release(b).unwrap();
        assert_eq!(ranges.claim("o5-5").unwrap(), b);
        // Nothing but the claims is left in the directory.
        assert_eq!(fs::read_dir(dir.path().join("ids")).unwrap().count(), 3);
    }

    #[test]
    fn a_preferred_range_is_claimed_when_free_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::open(IdRangesConfig { first: 1 << 20, ranges: 4, dir: dir.path().join("ids") }).unwrap();
        let wanted = IdRange { first: (1 << 20) + 2 * RANGE_SIZE };
        assert_eq!(ranges.claim_preferring(Some(wanted), "o1-1").unwrap(), wanted);
        let other = ranges.claim_preferring(Some(wanted), "o2-2").unwrap();
        assert_ne!(other, wanted);
        // Ranges that are not this allocator's (misaligned, outside it, the identity) are no preference.
        for foreign in [IdRange { first: (1 << 20) + 1 }, IdRange { first: 7 }, IdRange::IDENTITY] {
            let got = ranges.claim_preferring(Some(foreign), "o3-3").unwrap();
            assert!(got.first >= 1 << 20 && (got.first - (1 << 20)) % RANGE_SIZE == 0, "{got:?}");
            ranges.release(got).unwrap();
        }
    }

    #[test]
    fn ranges_past_the_id_space_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = IdRangesConfig { first: u32::MAX - RANGE_SIZE, ranges: 2, dir: dir.path().to_owned() };
        assert!(IdRanges::open(config).unwrap_err().to_string().contains("don't fit"));
    }

    #[test]
    fn owners_shift_between_ranges_and_links_are_not_followed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let root = dir.path().join("layer");
        fs::create_dir_all(root.join("home/sub")).unwrap();
        fs::write(root.join("home/sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("home/link")).unwrap();
        fs::write(root.join("home/suid"), "x").unwrap();
        let from = IdRange { first: 200_000 };
        let to = IdRange { first: 400_000 };
        for p in ["home", "home/sub", "home/sub/f", "home/suid"] {
            std::os::unix::fs::chown(root.join(p), Some(201_000), Some(201_000)).unwrap();
        }
        std::os::unix::fs::lchown(root.join("home/link"), Some(201_000), Some(201_000)).unwrap();
        fs::set_permissions(root.join("home/suid"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
        let changed = shift_owners(&root, from, to).unwrap();
        assert_eq!(changed, 5, "every entry owned by the old range, and not the root (owned by root)");
        use std::os::unix::fs::MetadataExt;
        for p in ["home", "home/sub", "home/sub/f", "home/link", "home/suid"] {
            let m = fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (401_000, 401_000), "{p}");
        }
        assert_eq!(fs::metadata(root.join("home/suid")).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(fs::metadata(outside.path()).unwrap().uid(), 0, "the link's target is untouched");
        assert_eq!(fs::symlink_metadata(&root).unwrap().uid(), 0);
    }
}
