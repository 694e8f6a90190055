//! Images made on this host (templates): a layer written from an overlay's upper directory, imported into the
//! store, and the record of an image whose layers are all in the store.
//!
//! An upper directory is read only once nothing writes to it any more (its sandbox stopped): entries are
//! taken as they are, never followed (symlinks are written as links, every file opened with `O_NOFOLLOW`), and
//! overlayfs's own markers become OCI's: a whiteout (a `0:0` character device) a `.wh.` entry, an opaque
//! directory a `.wh..wh..opq` entry. The imported layer is then unpacked like any pulled one, with its checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::{Digest, Hasher, digest_file};
use crate::reference::{ImageRef, ReferenceError};
use crate::store::{ImageRecord, LayerRef, RuntimeConfig, Store, StoreError, now};
use crate::unpack::Budget;

/// The registry name of images built here: never pulled from anywhere.
pub const LOCAL_REGISTRY: &str = "agentbox.local";

/// The media type of the layers written here.
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The reference of the template `name` (`agentbox.local/templates/NAME:latest`).
///
/// # Errors
/// A name that can't be part of a reference (it takes lowercase letters, digits, `.`, `_` and `-`).
pub fn template_reference(name: &str) -> Result<ImageRef, ReferenceError> {
    // One path component: a name with `/`, `:` or `@` in it would name another repository, tag or digest.
    let name = if name.contains(['/', ':', '@']) { "/" } else { name };
    ImageRef::parse(&agentbox_config::template_image(name))
}

/// Whether `reference` names an image built here (which no registry serves).
#[must_use]
pub fn is_local(reference: &ImageRef) -> bool {
    reference.registry() == LOCAL_REGISTRY
}

/// How the upper directory's owners become the layer's: host ids of the range starting at `first` become ids
/// `0..size` inside; any other id becomes `nobody` (65534).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdShift {
    /// The first host id of the range.
    pub first: u32,
    /// How many ids it has.
    pub size: u32,
}

impl IdShift {
    fn inside(self, host: u32) -> u64 {
        host.checked_sub(self.first).filter(|i| *i < self.size).map_or(65534, u64::from)
    }
}

/// How much more than it holds on disk a file may claim (holes) and still be written out into a layer.
const SPARSE_SLACK: u64 = 64 << 20;

/// What [`write_upper_as_layer`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpperSummary {
    /// Entries written (whiteouts and opaque markers included).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Entries left out: sockets and device nodes other than whiteouts.
    pub skipped: u64,
}

/// Writes the changes an overlay upper directory holds as an uncompressed OCI layer tar to `out`, refusing to
/// write more than `max_bytes` of file content: the directory's files are a sandbox's, and a sparse file costs
/// its sandbox nothing on disk but counts here at its full size.
///
/// # Errors
/// Reading the directory, writing the tar, or more than `max_bytes` of files.
pub fn write_upper_as_layer<W: Write>(upper: &Path, ids: IdShift, max_bytes: u64, out: W) -> io::Result<UpperSummary> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    let mut summary = UpperSummary::default();
    walk(&mut tar, upper, Path::new(""), ids, max_bytes, &mut summary)?;
    tar.into_inner()?.flush()?;
    Ok(summary)
}

fn header(meta: &std::fs::Metadata, kind: tar::EntryType, ids: IdShift) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(ids.inside(meta.uid()));
    h.set_gid(ids.inside(meta.gid()));
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

fn empty_file(like: &std::fs::Metadata, ids: IdShift) -> tar::Header {
    let mut h = header(like, tar::EntryType::Regular, ids);
    h.set_mode(0o644);
    h
}

/// Whether overlayfs marked the directory opaque (its lower directories' entries hidden).
fn is_opaque(dir: &Path) -> bool {
    ["user.overlay.opaque", "trusted.overlay.opaque"].iter().any(|name| xattr_is_y(dir, name))
}

fn xattr_is_y(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (std::ffi::CString::new(path.as_os_str().as_bytes()), std::ffi::CString::new(name)) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: lgetxattr with valid C strings and a buffer of the length given; it follows no link.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

fn walk<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    ids: IdShift,
    max_bytes: u64,
    summary: &mut UpperSummary,
) -> io::Result<()> {
    let mut names: Vec<std::ffi::OsString> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let inner = rel.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            // A whiteout: the lower layers' entry of this name is gone.
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            let mut h = empty_file(&meta, ids);
            tar.append_data(&mut h, rel.join(wh), io::empty())?;
            summary.entries += 1;
        } else if ft.is_dir() {
            let mut h = header(&meta, tar::EntryType::Directory, ids);
            tar.append_data(&mut h, &inner, io::empty())?;
            summary.entries += 1;
            if is_opaque(&path) {
                let mut h = empty_file(&meta, ids);
                tar.append_data(&mut h, inner.join(".wh..wh..opq"), io::empty())?;
                summary.entries += 1;
            }
            walk(tar, &path, &inner, ids, max_bytes, summary)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            let mut h = header(&meta, tar::EntryType::Symlink, ids);
            tar.append_link(&mut h, &inner, &target)?;
            summary.entries += 1;
        } else if ft.is_file() {
            let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
            let size = file.metadata()?.len();
            // Holes would be written out as zeros: a sandbox could make the host write terabytes it never stored.
            let allocated = meta.blocks().saturating_mul(512);
            if size > allocated.saturating_add(SPARSE_SLACK) {
                return Err(io::Error::other(format!(
                    "{} is a sparse file of {size} bytes holding {allocated}: sparse files are not kept in layers",
                    inner.display()
                )));
            }
            if summary.bytes.saturating_add(size) > max_bytes {
                return Err(io::Error::other(format!(
                    "the changes hold more than {max_bytes} bytes of files ({} is past that); \
                     a layer can hold at most that",
                    inner.display()
                )));
            }
            let mut h = header(&meta, tar::EntryType::Regular, ids);
            h.set_size(size);
            // The size was fixed above: a file that changed since (nothing should write to it) is cut or padded.
            tar.append_data(&mut h, &inner, PadTo { inner: file.take(size), left: size })?;
            summary.entries += 1;
            summary.bytes += size;
        } else if ft.is_fifo() {
            let mut h = header(&meta, tar::EntryType::Fifo, ids);
            tar.append_data(&mut h, &inner, io::empty())?;
            summary.entries += 1;
        } else {
            summary.skipped += 1;
        }
    }
    Ok(())
}

/// A reader that yields exactly `left` bytes: the inner reader's, then zeros.
struct PadTo<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for PadTo<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = match self.inner.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// Imports an uncompressed layer tar: compresses it into a blob and unpacks it into the store with the
    /// checks every pulled layer gets. Blocking.
    ///
    /// # Errors
    /// Reading the tar, writing the blob, or the layer failing the unpacker's checks.
    pub fn import_layer(&self, tar_path: &Path, budget: &Budget) -> Result<LayerRef, StoreError> {
        let io_err = |op: &'static str, path: &Path| {
            let path: PathBuf = path.to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        let (diff_id, _) = digest_file(tar_path).map_err(io_err("read", tar_path))?;
        let tmp = self.temp_path("import");
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let result = (|| {
            let mut gz = flate2::write::GzEncoder::new(
                HashingWriter { inner: io::BufWriter::new(out), hasher: Hasher::default() },
                flate2::Compression::fast(),
            );
            let mut tar = File::open(tar_path).map_err(io_err("open", tar_path))?;
            io::copy(&mut tar, &mut gz).map_err(io_err("compress", tar_path))?;
            let mut w = gz.finish().map_err(io_err("compress", tar_path))?;
            w.flush().map_err(io_err("write", &tmp))?;
            let size = w.hasher.bytes();
            Ok::<_, StoreError>((w.hasher.finish(), size))
        })();
        let (blob, size) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if self.has_blob(&blob) {
            let _ = std::fs::remove_file(&tmp);
        } else {
            self.commit_blob(&tmp, &blob)?;
        }
        let layer = LayerRef { blob, diff_id, media_type: LAYER_MEDIA_TYPE.to_owned(), size };
        self.unpack(&layer, budget)?;
        Ok(layer)
    }

    /// Records `reference` as the image of `layers` (all already in the store) with `config`: its OCI config
    /// and manifest are written as blobs, so the image is whole in the store as a pulled one is.
    ///
    /// # Errors
    /// A layer missing from the store, or writing the blobs or the record.
    pub fn put_local_image(
        &self,
        reference: &ImageRef,
        layers: Vec<LayerRef>,
        config: RuntimeConfig,
    ) -> Result<ImageRecord, StoreError> {
        for l in &layers {
            if !self.has_layer(&l.diff_id) || !self.has_blob(&l.blob) {
                return Err(StoreError::MissingLayer { reference: reference.to_string(), diff_id: l.diff_id.clone() });
            }
        }
        let platform = crate::config::Platform::host();
        let exposed: BTreeMap<&str, serde_json::Value> =
            config.exposed_ports.iter().map(|p| (p.as_str(), json!({}))).collect();
        let oci_config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {
                "Env": config.env,
                "WorkingDir": config.working_dir.clone().unwrap_or_default(),
                "User": config.user.clone().unwrap_or_default(),
                "Entrypoint": config.entrypoint,
                "Cmd": config.cmd,
                "Labels": config.labels,
                "ExposedPorts": exposed,
                "StopSignal": config.stop_signal,
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        });
        let config_bytes = serde_json::to_vec(&oci_config).unwrap_or_default();
        let config_digest = Digest::of(&config_bytes);
        self.write_blob(&config_digest, &config_bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.blob.to_string(), "size": l.size})).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let manifest_digest = Digest::of(&manifest_bytes);
        self.write_blob(&manifest_digest, &manifest_bytes)?;
        let now = now();
        let record = ImageRecord {
            reference: reference.to_string(),
            manifest_digest,
            index_digest: None,
            config_digest,
            platform: platform.to_string(),
            layers,
            config,
            pulled_at: now,
            last_used: now,
        };
        self.put_image(&record)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_and_too_much_content_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        let ids = IdShift { first: 0, size: 65536 };
        let err = write_upper_as_layer(dir.path(), ids, u64::MAX, io::sink()).unwrap_err();
        assert!(err.to_string().contains("sparse file"), "{err}");
        std::fs::write(dir.path().join("sparse"), vec![1u8; 2 << 20]).unwrap();
        let err = write_upper_as_layer(dir.path(), ids, 1 << 20, io::sink()).unwrap_err();
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        std::fs::write(dir.path().join("sparse"), b"small").unwrap();
        let summary = write_upper_as_layer(dir.path(), ids, 1 << 20, io::sink()).unwrap();
        assert_eq!((summary.entries, summary.bytes), (1, 5));
    }
}
