//! Unpacking one layer, an untrusted tar stream (plain, gzip or zstd), into a directory of its own.
//!
//! The safety rules (docs/IMAGES.md says more):
//! - every name is taken component by component: `..` refuses the layer, a leading `/` is dropped (names are
//!   relative to the layer's root, as in Docker), and each parent directory is opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from the layer's root, so a
//!   symlink in a parent component (`link -> /etc`, then `link/passwd`) refuses the layer instead of being
//!   followed; the entry itself is made with an `*at` call on that directory, never through a path string;
//! - a hard link's target is resolved the same way inside the layer being unpacked, and must already exist in
//!   it; `linkat` without `AT_SYMLINK_FOLLOW` never follows a symlink target;
//! - character and block devices are dropped (and listed in the layer's manifest); FIFOs are kept;
//! - setuid and setgid bits are stripped from the host's copy of every non-directory and recorded in the
//!   manifest (`setid`), as are the `security.capability` attributes of the tar, which are not applied: no file
//!   of the store grants privileges on the host; no tar extended attribute is applied at all, so a layer can't
//!   plant overlayfs attributes (`trusted.overlay.*`) of its own;
//! - OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0/0 character device `NAME` (major 0 is no device:
//!   opening it fails with ENXIO), `.wh..wh..opq` the `trusted.overlay.opaque` and `user.overlay.opaque`
//!   attributes (`y`) on its directory, for overlay mounts made by root and by a user namespace
//!   (`userxattr`); both are also listed in the manifest for consumers that are not overlayfs;
//! - the decompressed stream, sparse files as written, and the number of entries are bounded
//!   ([`Budget`]); past a bound the layer is refused with [`UnpackError::TooLarge`];
//! - the compressed bytes must hash to the layer's digest and the decompressed stream to its `diff_id`,
//!   both checked over the whole stream; the layer is unpacked into a staging directory that only becomes
//!   the layer (by rename) once both match.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher, HashingReader, is_limit_exceeded};

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry's name climbs out of the layer with `..`.
    #[error(
        "layer {layer}: entry {path:?} escapes the layer's root with `..`; the image is malformed or hostile, refuse it"
    )]
    PathEscape {
        /// The layer's digest.
        layer: Digest,
        /// The entry's name.
        path: String,
    },
    /// An entry's name or link target is longer than Linux's PATH_MAX.
    #[error(
        "layer {layer}: entry {path:?}... has a name or link target longer than {MAX_NAME} bytes; the image is malformed or hostile, refuse it"
    )]
    NameTooLong {
        /// The layer's digest.
        layer: Digest,
        /// The start of the entry's name.
        path: String,
    },
    /// A GNU long name or PAX extension header is larger than the tar reader may hold in memory.
    #[error(
        "layer {layer}: a tar header or extension (GNU long name, PAX) is larger than {limit} bytes; the image is malformed or hostile, refuse it"
    )]
    MetadataTooLarge {
        /// The layer's digest.
        layer: Digest,
        /// The bound.
        limit: u64,
    },
    /// A parent component of an entry is a symlink (or not a directory).
    #[error(
        "layer {layer}: entry {path:?} has a symlink or a non-directory among its parent components; the image is hostile, refuse it"
    )]
    SymlinkInPath {
        /// The layer's digest.
        layer: Digest,
        /// The entry's name.
        path: String,
    },
    /// A hard link's target is not a file of this layer.
    #[error(
        "layer {layer}: hard link {path:?} points to {target:?}, which is not an entry of this layer; the image is hostile, refuse it"
    )]
    HardLinkOutside {
        /// The layer's digest.
        layer: Digest,
        /// The link's name.
        path: String,
        /// Its target.
        target: String,
    },
    /// A bound of [`Budget`] was crossed: a decompression bomb, or an image larger than allowed.
    #[error(
        "layer {layer}: unpacking stopped at the limit of {limit} {what} for one image (a decompression bomb, or an image larger than allowed); raise `limits.{setting}` in the image configuration only if the image is trusted"
    )]
    TooLarge {
        /// The layer's digest.
        layer: Digest,
        /// `bytes` or `entries`.
        what: &'static str,
        /// The bound.
        limit: u64,
        /// The setting that raises it.
        setting: &'static str,
    },
    /// The content doesn't hash to what the manifest or the config says.
    #[error(
        "layer {layer}: the {what} digest is {actual}, not {expected} as the image says; the blob is corrupt or was tampered with, and was discarded"
    )]
    DigestMismatch {
        /// The layer's (compressed) digest.
        layer: Digest,
        /// `compressed` or `uncompressed (diff_id)`.
        what: &'static str,
        /// The expected digest.
        expected: Digest,
        /// The digest computed.
        actual: Digest,
    },
    /// The tar stream or its compression is malformed.
    #[error("layer {layer}: the layer is not a valid tar stream ({detail}): {source}")]
    Format {
        /// The layer's digest.
        layer: Digest,
        /// Where it failed.
        detail: String,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// A file system operation failed.
    #[error("layer {layer}: can't {op} {path:?} while unpacking: {source}")]
    Io {
        /// The layer's digest.
        layer: Digest,
        /// What was being done.
        op: &'static str,
        /// The entry or file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The longest entry name or link target accepted (Linux's PATH_MAX).
pub const MAX_NAME: usize = 4096;

/// What the tar reader may read between two entries beyond the skipped data of the last one: headers, GNU long
/// names and PAX extensions (which it holds in memory whole), and its read-ahead buffer.
pub const METADATA_GAP: u64 = (1 << 20) + TAR_BUFFER as u64;

const TAR_BUFFER: usize = 256 * 1024;

/// The marker error a [`GapReader`] returns past its allowance.
#[derive(Debug, thiserror::Error)]
#[error("tar metadata larger than allowed")]
struct MetadataTooLarge;

/// Counts down what the tar reader reads between entries (when an allowance is set).
struct GapReader<R> {
    inner: R,
    gap: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for GapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(left) = self.gap.get() {
            let Some(left) = left.checked_sub(n as u64) else {
                return Err(io::Error::other(MetadataTooLarge));
            };
            self.gap.set(Some(left));
        }
        Ok(n)
    }
}

/// The bounds shared by every layer of one image being unpacked (layers unpack concurrently).
#[derive(Debug)]
pub struct Budget {
    bytes_left: AtomicU64,
    entries_left: AtomicU64,
    max_bytes: u64,
    max_entries: u64,
}

impl Budget {
    /// A budget of `max_bytes` uncompressed bytes and `max_entries` tar entries.
    pub fn new(max_bytes: u64, max_entries: u64) -> Self {
        Self {
            bytes_left: AtomicU64::new(max_bytes),
            entries_left: AtomicU64::new(max_entries),
            max_bytes,
            max_entries,
        }
    }

    fn take(counter: &AtomicU64, n: u64) -> bool {
        counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok()
    }
}

/// One setuid/setgid file: its mode in the layer (the host copy has the bits cleared).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialMode {
    /// The path, relative to the layer's root.
    pub path: String,
    /// The full mode the tar gave (with `0o4000`/`0o2000`).
    pub mode: u32,
}

/// What unpacking a layer made, kept as `layer.json` beside the layer's root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerManifest {
    /// The uncompressed digest (the config's diff_id), which names the layer in the store.
    pub diff_id: Option<Digest>,
    /// The compressed blob's digest it was unpacked from.
    pub blob: Option<Digest>,
    /// Uncompressed bytes of the tar stream.
    pub tar_bytes: u64,
    /// Bytes of file data written.
    pub file_bytes: u64,
    /// Tar entries read.
    pub entries: u64,
    /// Whiteouts (`.wh.NAME`), as the paths they delete; each is a 0/0 character device in the layer.
    pub whiteouts: Vec<String>,
    /// Opaque directories (`.wh..wh..opq`); each carries `trusted.overlay.opaque=y` and
    /// `user.overlay.opaque=y` where the file system allowed setting them.
    pub opaque_dirs: Vec<String>,
    /// Files whose setuid/setgid bits were stripped on the host.
    pub setid: Vec<SpecialMode>,
    /// Files whose `security.capability` attribute (file capabilities) was not applied.
    pub capabilities: Vec<String>,
    /// Device nodes dropped.
    pub dropped_devices: Vec<String>,
    /// Whether file ownership from the tar was applied (only when unpacking as root).
    pub owners_applied: bool,
}

/// What to unpack and what it must hash to.
pub struct LayerSource<'a> {
    /// The compressed blob (verified or not: it is hashed again here).
    pub blob: &'a Path,
    /// The blob's digest, from the manifest.
    pub digest: &'a Digest,
    /// The uncompressed digest, from the config's `rootfs.diff_ids`.
    pub diff_id: &'a Digest,
}

/// Unpacks a layer blob file into `dest` (which must not exist; its parent must). Either `dest` ends up
/// complete and verified, or it doesn't exist.
pub fn unpack_layer(src: &LayerSource<'_>, dest: &Path, budget: &Budget) -> Result<LayerManifest, UnpackError> {
    let file = File::open(src.blob).map_err(|source| UnpackError::Io {
        layer: src.digest.clone(),
        op: "open",
        path: src.blob.display().to_string(),
        source,
    })?;
    unpack_layer_from(file, src.digest, src.diff_id, dest, budget)
}

/// [`unpack_layer`] from any reader of the compressed blob (a download in progress, for one): `digest` and
/// `diff_id` are checked over everything it yields, to its end.
pub fn unpack_layer_from<R: Read>(
    reader: R,
    digest: &Digest,
    diff_id: &Digest,
    dest: &Path,
    budget: &Budget,
) -> Result<LayerManifest, UnpackError> {
    let io_err = |op: &'static str, path: &Path| {
        let path = path.display().to_string();
        let layer = digest.clone();
        move |source: io::Error| UnpackError::Io { layer, op, path, source }
    };
    let staging = dest.with_extension(format!("partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err("remove stale", &staging))?;
    }
    std::fs::create_dir(&staging).map_err(io_err("create", &staging))?;
    let result = unpack_into(reader, digest, diff_id, &staging, budget);
    match result {
        Ok(manifest) => {
            std::fs::rename(&staging, dest).map_err(io_err("rename into place", dest))?;
            Ok(manifest)
        }
        Err(e) => {
            if let Err(rm) = std::fs::remove_dir_all(&staging) {
                tracing::warn!(path = %staging.display(), error = %rm, "can't remove a failed layer's staging directory");
            }
            Err(e)
        }
    }
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

fn unpack_into<R: Read>(
    mut src: R,
    digest: &Digest,
    diff_id: &Digest,
    root_path: &Path,
    budget: &Budget,
) -> Result<LayerManifest, UnpackError> {
    let layer = digest.clone();
    let io_err = |op: &'static str, path: &Path| {
        let path = path.display().to_string();
        let layer = layer.clone();
        move |source: io::Error| UnpackError::Io { layer, op, path, source }
    };
    let compressed: Rc<RefCell<Hasher>> = Rc::default();
    let uncompressed: Rc<RefCell<Hasher>> = Rc::default();
    let mut raw = BufReader::with_capacity(256 * 1024, HashingReader::new(&mut src, compressed.clone(), u64::MAX));
    // The format by its magic bytes, not by the media type the manifest claims.
    let compression = {
        let head = raw.fill_buf().map_err(|source| UnpackError::Format {
            layer: layer.clone(),
            detail: "reading the blob".into(),
            source,
        })?;
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    };
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(|source| UnpackError::Format {
                layer: layer.clone(),
                detail: "zstd".into(),
                source,
            })?)
        }
    };
    let limit = budget.bytes_left.load(Ordering::Relaxed);
    // The tar reader reads a GNU long name or a PAX extension header whole into memory, whatever size its
    // header claims: between two entries it may only read this much (plus what it skips of the last entry).
    let gap: Rc<Cell<Option<u64>>> = Rc::new(Cell::new(Some(METADATA_GAP)));
    let tar_stream = BufReader::with_capacity(
        TAR_BUFFER,
        GapReader { inner: HashingReader::new(decoded, uncompressed.clone(), limit), gap: gap.clone() },
    );
    let root = rustix::fs::open(root_path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err("open", root_path)(e.into()))?;
    let mut u = Unpacker {
        layer: layer.clone(),
        root,
        budget,
        manifest: LayerManifest { owners_applied: rustix::process::geteuid().is_root(), ..LayerManifest::default() },
        dirs: Vec::new(),
        cache: None,
        buf: vec![0u8; 128 * 1024],
    };
    let mut archive = tar::Archive::new(tar_stream);
    let too_large = |what: &'static str| UnpackError::TooLarge {
        layer: layer.clone(),
        what,
        limit: if what == "bytes" { budget.max_bytes } else { budget.max_entries },
        setting: if what == "bytes" { "max_bytes" } else { "max_entries" },
    };
    let format = |detail: String, source: io::Error| {
        if is_limit_exceeded(&source) {
            too_large("bytes")
        } else {
            UnpackError::Format { layer: layer.clone(), detail, source }
        }
    };
    let entries = archive.entries().map_err(|e| format("reading the archive".into(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            if e.to_string().contains(&MetadataTooLarge.to_string()) {
                UnpackError::MetadataTooLarge { layer: layer.clone(), limit: METADATA_GAP }
            } else {
                format("reading an entry header".into(), e)
            }
        })?;
        gap.set(None);
        let skippable = entry.size().saturating_add(512);
        if !Budget::take(&budget.entries_left, 1) {
            return Err(too_large("entries"));
        }
        u.manifest.entries += 1;
        u.entry(entry).map_err(|e| match e {
            UnpackError::Io { source, .. } if is_limit_exceeded(&source) => too_large("bytes"),
            UnpackError::Format { source, .. } if is_limit_exceeded(&source) => too_large("bytes"),
            other => other,
        })?;
        gap.set(Some(skippable.saturating_add(METADATA_GAP)));
    }
    gap.set(None);
    u.finish_dirs()?;
    // The diff_id covers the whole decompressed stream (the tar's end-of-archive blocks and any padding too),
    // and the digest the whole blob: read both to their ends.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| format("reading past the end of the archive".into(), e))?;
    drop(rest);
    let mut tail = HashingReader::new(&mut src, compressed.clone(), u64::MAX);
    io::copy(&mut tail, &mut io::sink()).map_err(|source| UnpackError::Format {
        layer: layer.clone(),
        detail: "reading the blob".into(),
        source,
    })?;

    let tar_bytes = uncompressed.borrow().bytes();
    // Layers unpack concurrently: each reads up to what was left when it started, and takes its share here.
    if !Budget::take(&budget.bytes_left, tar_bytes) {
        return Err(too_large("bytes"));
    }
    let actual = std::mem::take(&mut *compressed.borrow_mut()).finish();
    if &actual != digest {
        return Err(UnpackError::DigestMismatch { layer, what: "compressed", expected: digest.clone(), actual });
    }
    let actual = std::mem::take(&mut *uncompressed.borrow_mut()).finish();
    if &actual != diff_id {
        return Err(UnpackError::DigestMismatch {
            layer,
            what: "uncompressed (diff_id)",
            expected: diff_id.clone(),
            actual,
        });
    }
    let mut manifest = u.manifest;
    manifest.tar_bytes = tar_bytes;
    manifest.diff_id = Some(diff_id.clone());
    manifest.blob = Some(digest.clone());
    Ok(manifest)
}

struct DeferredDir {
    path: Vec<Vec<u8>>,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: u64,
}

struct Unpacker<'b> {
    layer: Digest,
    root: OwnedFd,
    budget: &'b Budget,
    manifest: LayerManifest,
    dirs: Vec<DeferredDir>,
    /// The last parent directory opened, by its components.
    cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    buf: Vec<u8>,
}

/// Splits a tar name into components: `` and `.` are skipped (so a leading `/` is dropped), `..` is refused.
fn components(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

fn show(comps: &[Vec<u8>]) -> String {
    let joined: Vec<u8> = comps.join(&b'/');
    String::from_utf8_lossy(&joined).into_owned()
}

fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

impl Unpacker<'_> {
    fn io(&self, op: &'static str, path: &[Vec<u8>]) -> impl FnOnce(Errno) -> UnpackError + use<> {
        let layer = self.layer.clone();
        let path = show(path);
        move |e: Errno| UnpackError::Io { layer, op, path, source: e.into() }
    }

    /// Opens (creating when `create`) the directory `comps` under the root, refusing symlinks and
    /// non-directories in every component.
    fn open_dir(&mut self, comps: &[Vec<u8>], create: bool, full: &[Vec<u8>]) -> Result<OwnedFd, UnpackError> {
        if let Some((cached, fd)) = &self.cache {
            if cached.as_slice() == comps {
                return fd
                    .try_clone()
                    .map_err(|e| self.io("open", comps)(Errno::from_io_error(&e).unwrap_or(Errno::IO)));
            }
        }
        let mut cur =
            self.root.try_clone().map_err(|e| self.io("open", comps)(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        for (i, c) in comps.iter().enumerate() {
            if create {
                match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(Errno::NOTDIR | Errno::LOOP) => return Err(self.symlink_in_path(full)),
                    Err(e) => return Err(self.io("create directory", &comps[..=i])(e)),
                }
            }
            cur = match rustix::fs::openat2(
                &cur,
                os(c),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
                RESOLVE,
            ) {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => return Err(self.symlink_in_path(full)),
                Err(e) => return Err(self.io("open directory", &comps[..=i])(e)),
            };
        }
        let dup = cur.try_clone().map_err(|e| self.io("open", comps)(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        self.cache = Some((comps.to_vec(), dup));
        Ok(cur)
    }

    fn symlink_in_path(&self, full: &[Vec<u8>]) -> UnpackError {
        UnpackError::SymlinkInPath { layer: self.layer.clone(), path: show(full) }
    }

    /// Removes whatever is at `name` in `dir` (a directory with everything under it), so an entry can
    /// replace an earlier one of the same name.
    fn clear(&mut self, dir: &OwnedFd, name: &[u8], keep_dir: bool, full: &[Vec<u8>]) -> Result<bool, UnpackError> {
        let stat = match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io("inspect", full)(e)),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            remove_tree(dir, name).map_err(self.io("remove", full))?;
            self.cache = None;
        } else {
            rustix::fs::unlinkat(dir, os(name), AtFlags::empty()).map_err(self.io("remove", full))?;
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        // Longer names can't be used on Linux anyway, and each component costs a system call to resolve.
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len());
        if raw_path.len() > MAX_NAME || link_len > MAX_NAME {
            return Err(UnpackError::NameTooLong {
                layer: self.layer.clone(),
                path: String::from_utf8_lossy(&raw_path[..raw_path.len().min(200)]).into_owned(),
            });
        }
        let Some(comps) = components(&raw_path) else {
            return Err(UnpackError::PathEscape {
                layer: self.layer.clone(),
                path: String::from_utf8_lossy(&raw_path).into_owned(),
            });
        };
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let owner = match (header.uid(), header.gid()) {
            (Ok(u), Ok(g)) => Some((u32::try_from(u).unwrap_or(65534), u32::try_from(g).unwrap_or(65534))),
            _ => None,
        };
        let mtime = header.mtime().unwrap_or(0);
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let caps = entry.pax_extensions().ok().flatten().is_some_and(|mut exts| {
            exts.any(|e| e.is_ok_and(|e| e.key_bytes() == b"SCHILY.xattr.security.capability"))
        });
        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`): only a directory entry can name it.
            if kind == tar::EntryType::Directory {
                self.dirs.push(DeferredDir { path: Vec::new(), mode, owner, mtime });
            }
            return Ok(());
        };
        let name = name.clone();

        // Whiteouts.
        if let Some(target) = name.strip_prefix(b".wh.") {
            // `.wh..` and `.wh...` would name the directory itself or its parent.
            if target == b"." || target == b".." {
                return Err(UnpackError::PathEscape { layer: self.layer.clone(), path: show(&comps) });
            }
            let dir = self.open_dir(parents, true, &comps)?;
            if target == b".wh..opq" {
                let fd = rustix::fs::openat2(
                    &dir,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )
                .map_err(self.io("open", parents))?;
                for attr in ["trusted.overlay.opaque", "user.overlay.opaque"] {
                    if let Err(e) = rustix::fs::fsetxattr(&fd, attr, b"y", XattrFlags::empty()) {
                        tracing::debug!(attr, error = %e, "can't mark an opaque directory; it stays listed in layer.json");
                    }
                }
                self.manifest.opaque_dirs.push(show(parents));
            } else if target.starts_with(b".wh.") || target.is_empty() {
                // AUFS metadata (`.wh..wh.plnk`, ...): nothing to apply.
            } else {
                let mut path = parents.to_vec();
                path.push(target.to_vec());
                self.clear(&dir, target, false, &path)?;
                if let Err(e) = rustix::fs::mknodat(&dir, os(target), FileType::CharacterDevice, Mode::empty(), 0) {
                    tracing::debug!(error = %e, "can't make a whiteout device; it stays listed in layer.json");
                }
                self.manifest.whiteouts.push(show(&path));
            }
            return Ok(());
        }

        let dir = self.open_dir(parents, true, &comps)?;
        let path = &comps;
        let owners = self.manifest.owners_applied;
        let stripped = mode & !0o6000;
        match kind {
            tar::EntryType::Directory => {
                if !self.clear(&dir, &name, true, path)? {
                    rustix::fs::mkdirat(&dir, os(&name), Mode::from_raw_mode(0o700))
                        .map_err(self.io("create directory", path))?;
                }
                self.dirs.push(DeferredDir { path: comps.clone(), mode, owner, mtime });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&dir, &name, false, path)?;
                let fd = rustix::fs::openat2(
                    &dir,
                    os(&name),
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                    RESOLVE,
                )
                .map_err(self.io("create", path))?;
                let mut file = File::from(fd);
                let layer = self.layer.clone();
                let display_path = show(path);
                let copy_err =
                    move |source: io::Error| UnpackError::Io { layer, op: "write", path: display_path, source };
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(copy_err(e)),
                    };
                    self.manifest.file_bytes += n as u64;
                    file.write_all(&self.buf[..n]).map_err(copy_err.clone())?;
                }
                // Sparse files are counted as written; the stream's own bytes at the end.
                if self.manifest.file_bytes > self.budget.max_bytes {
                    return Err(UnpackError::TooLarge {
                        layer: self.layer.clone(),
                        what: "bytes",
                        limit: self.budget.max_bytes,
                        setting: "max_bytes",
                    });
                }
                if owners {
                    if let Some((u, g)) = owner {
                        rustix::fs::fchown(&file, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                            .map_err(self.io("chown", path))?;
                    }
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(stripped)).map_err(self.io("chmod", path))?;
                rustix::fs::futimens(&file, &times(mtime)).map_err(self.io("set times of", path))?;
                self.note_special(path, mode, caps);
            }
            tar::EntryType::Symlink => {
                self.clear(&dir, &name, false, path)?;
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                rustix::fs::symlinkat(os(&target), &dir, os(&name)).map_err(self.io("create symlink", path))?;
                if owners {
                    if let Some((u, g)) = owner {
                        rustix::fs::chownat(
                            &dir,
                            os(&name),
                            Some(Uid::from_raw(u)),
                            Some(Gid::from_raw(g)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(self.io("chown", path))?;
                    }
                }
                rustix::fs::utimensat(&dir, os(&name), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(self.io("set times of", path))?;
            }
            tar::EntryType::Link => {
                let target_raw = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let layer = self.layer.clone();
                let outside = || UnpackError::HardLinkOutside {
                    layer: layer.clone(),
                    path: show(path),
                    target: String::from_utf8_lossy(&target_raw).into_owned(),
                };
                let Some(target) = components(&target_raw) else { return Err(outside()) };
                let Some((tname, tparents)) = target.split_last() else { return Err(outside()) };
                if &target == path {
                    return Ok(());
                }
                let tdir = match self.open_dir(tparents, false, &target) {
                    Ok(d) => d,
                    Err(UnpackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                        return Err(outside());
                    }
                    Err(e) => return Err(e),
                };
                match rustix::fs::statat(&tdir, os(tname), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
                    _ => return Err(outside()),
                }
                let dir = self.open_dir(parents, true, &comps)?;
                self.clear(&dir, &name, false, path)?;
                rustix::fs::linkat(&tdir, os(tname), &dir, os(&name), AtFlags::empty())
                    .map_err(self.io("create hard link", path))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                self.manifest.dropped_devices.push(show(path));
            }
            tar::EntryType::Fifo => {
                self.clear(&dir, &name, false, path)?;
                rustix::fs::mknodat(&dir, os(&name), FileType::Fifo, Mode::from_raw_mode(stripped), 0)
                    .map_err(self.io("create fifo", path))?;
                if owners {
                    if let Some((u, g)) = owner {
                        rustix::fs::chownat(
                            &dir,
                            os(&name),
                            Some(Uid::from_raw(u)),
                            Some(Gid::from_raw(g)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(self.io("chown", path))?;
                    }
                }
            }
            other => {
                tracing::debug!(path = %show(path), kind = ?other, "skipping a tar entry of an unsupported type");
            }
        }
        Ok(())
    }

    fn note_special(&mut self, path: &[Vec<u8>], mode: u32, caps: bool) {
        if mode & 0o6000 != 0 {
            self.manifest.setid.push(SpecialMode { path: show(path), mode });
        }
        if caps {
            self.manifest.capabilities.push(show(path));
        }
    }

    /// Applies directories' modes, owners and times last (deepest first), so a read-only directory doesn't
    /// stop its own entries from being made and their times stay as the tar says.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
        self.cache = None;
        for d in dirs {
            let fd = if d.path.is_empty() {
                self.root
                    .try_clone()
                    .map_err(|e| self.io("open", &d.path)(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?
            } else {
                match self.open_dir(&d.path, false, &d.path) {
                    Ok(fd) => fd,
                    // Replaced by a later entry (a file or a symlink): nothing to apply.
                    Err(UnpackError::SymlinkInPath { .. }) => continue,
                    Err(UnpackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            };
            let fd = rustix::fs::openat2(
                &fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(self.io("open", &d.path))?;
            if self.manifest.owners_applied {
                if let Some((u, g)) = d.owner {
                    rustix::fs::fchown(&fd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                        .map_err(self.io("chown", &d.path))?;
                }
            }
            // A directory's setgid bit only makes new files inherit its group: it grants nothing, so it stays.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode & !0o4000)).map_err(self.io("chmod", &d.path))?;
            rustix::fs::futimens(&fd, &times(d.mtime)).map_err(self.io("set times of", &d.path))?;
        }
        self.cache = None;
        Ok(())
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: i64::try_from(mtime).unwrap_or(0), tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// Removes `name` in `dir` and everything under it, through descriptors only (no symlink is followed).
fn remove_tree(dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let sub = rustix::fs::openat2(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        RESOLVE,
    )?;
    let mut names = Vec::new();
    {
        let listing = rustix::fs::Dir::read_from(&sub)?;
        for entry in listing {
            let entry = entry?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push((n.to_vec(), entry.file_type() == FileType::Directory));
            }
        }
    }
    for (n, is_dir) in names {
        if is_dir {
            remove_tree(&sub, &n)?;
        } else {
            rustix::fs::unlinkat(&sub, os(&n), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)
}

/// Where a layer's files are, inside its directory in the store.
pub fn rootfs_of(layer_dir: &Path) -> PathBuf {
    layer_dir.join("rootfs")
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn names_are_split_and_dotdot_refused() {
        assert_eq!(components(b"/etc//passwd"), Some(vec![b"etc".to_vec(), b"passwd".to_vec()]));
        assert_eq!(components(b"./a/./b/"), Some(vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(components(b"a/../../b"), None);
        assert_eq!(components(b"./"), Some(vec![]));
    }
}
