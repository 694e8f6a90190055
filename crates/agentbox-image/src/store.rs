//! The content-addressed store: verified blobs, layers unpacked once each, and image records.
//!
//! ```text
//! <dir>/                        0700, the store's owner's
//! ├── .lock                     flock: shared while pulling, exclusive while collecting garbage
//! ├── blobs/sha256/<hex>        manifests, indexes, configs and compressed layers, by digest; a blob is
//! │                             written to tmp/ and renamed here only after its digest was checked
//! ├── layers/sha256/<hex>/      one unpacked layer, named by its diff_id (uncompressed digest)
//! │   ├── rootfs/               its files: an overlayfs lower directory, never written after the rename
//! │   └── layer.json            what unpacking made (LayerManifest: whiteouts, stripped setid bits, ...)
//! ├── images/<hex>.json         one record per reference (named by the sha256 of the reference)
//! └── tmp/                      downloads and unpacks in progress; emptied by garbage collection
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::digest::{Digest, digest_file};
use crate::reference::ImageRef;
use crate::unpack::{Budget, LayerManifest, UnpackError, unpack_layer_from};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("image store: can't {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A blob doesn't hash to its name.
    #[error(
        "image store: blob {expected} hashes to {actual}; it was corrupt and has been removed, pull the image again"
    )]
    CorruptBlob {
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// A record or layer manifest can't be parsed.
    #[error("image store: {path} is not valid ({source}); remove the image and pull it again")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An image's layer is missing from the store.
    #[error("image store: layer {diff_id} of {reference} is missing; pull the image again")]
    MissingLayer {
        /// The image.
        reference: String,
        /// The layer.
        diff_id: Digest,
    },
    /// A blob is larger than allowed.
    #[error("image store: blob {digest} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The limit.
        limit: u64,
    },
    /// Unpacking a layer failed.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// One layer of an image: its compressed blob and its uncompressed digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// The compressed blob's digest (the manifest's).
    pub blob: Digest,
    /// The uncompressed digest (the config's diff_id), which names the unpacked layer.
    pub diff_id: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// The parts of an image's config a sandbox uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// `Env`: `NAME=value` lines.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`: `name`, `uid`, `uid:gid` or `name:group`, to be mapped inside the sandbox's user namespace.
    pub user: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `ExposedPorts`: `8080/tcp`, ...
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// What the store knows of one pulled image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalized reference it was pulled as (`docker.io/library/python:3.12`).
    pub reference: String,
    /// The platform manifest's digest.
    pub manifest_digest: Digest,
    /// The index's digest, when the reference named a multi-platform index.
    pub index_digest: Option<Digest>,
    /// The config blob's digest (the image id).
    pub config_digest: Digest,
    /// The platform (`linux/amd64`).
    pub platform: String,
    /// Layers, bottom to top.
    pub layers: Vec<LayerRef>,
    /// The config's runtime settings.
    pub config: RuntimeConfig,
    /// When it was pulled (seconds since the epoch).
    pub pulled_at: u64,
    /// When it was last pulled or used ([`Store::touch`]); garbage collection evicts the oldest first.
    pub last_used: u64,
}

impl ImageRecord {
    /// Every blob the record needs kept.
    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(self.index_digest.iter())
            .chain(self.layers.iter().map(|l| &l.blob))
    }
}

/// What a garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Unpacked layers removed.
    pub layers_removed: usize,
    /// Images evicted to get under the budget (least recently used first).
    pub images_evicted: Vec<String>,
    /// Bytes freed (blob sizes plus the layers' recorded sizes).
    pub bytes_freed: u64,
    /// The store's size afterwards, counted the same way.
    pub bytes_after: u64,
}

struct Inner {
    config: ImageConfig,
    seq: AtomicU64,
}

/// The image store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// A held store lock, released when dropped.
pub(crate) struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens the store in `config.dir`, creating its directories (0700) when missing.
    pub fn open(config: ImageConfig) -> Result<Self, StoreError> {
        let root = config.dir.clone();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in ["", "blobs/sha256", "layers/sha256", "images", "tmp"] {
            let p = root.join(sub);
            builder.create(&p).map_err(io_err("create", &p))?;
        }
        // Only the store's owner may enter it, whatever made the directory before.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", &root))?;
        Ok(Self { inner: Arc::new(Inner { config, seq: AtomicU64::new(0) }) })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &ImageConfig {
        &self.inner.config
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Where a blob is (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir().join("blobs/sha256").join(digest.hex())
    }

    /// Whether a blob is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A layer's directory (holding `rootfs/` and `layer.json`).
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.dir().join("layers/sha256").join(diff_id.hex())
    }

    /// Whether a layer has been unpacked.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).join("layer.json").is_file()
    }

    /// What unpacking a layer made.
    pub fn layer_manifest(&self, diff_id: &Digest) -> Result<LayerManifest, StoreError> {
        read_json(&self.layer_dir(diff_id).join("layer.json"))
    }

    /// A fresh path in `tmp/`.
    pub(crate) fn temp_path(&self, tag: &str) -> PathBuf {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        self.dir().join("tmp").join(format!("{tag}.{}.{n}", std::process::id()))
    }

    /// Reads a whole blob, checking its digest; a corrupt blob is removed.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).map_err(io_err("read", &path))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge { digest: digest.clone(), limit });
        }
        let actual = Digest::of(&bytes);
        if &actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::CorruptBlob { expected: digest.clone(), actual });
        }
        Ok(bytes)
    }

    /// Checks a stored blob against its digest; a corrupt one is removed.
    pub fn verify_blob(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(digest);
        let (actual, size) = digest_file(&path).map_err(io_err("read", &path))?;
        if &actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::CorruptBlob { expected: digest.clone(), actual });
        }
        Ok(size)
    }

    /// Stores bytes as a blob, after checking that they hash to `digest`.
    pub fn write_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(StoreError::CorruptBlob { expected: digest.clone(), actual });
        }
        let tmp = self.temp_path("blob");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        drop(f);
        self.commit_blob(&tmp, digest)
    }

    /// Moves a verified temporary file into place as a blob.
    pub(crate) fn commit_blob(&self, tmp: &Path, digest: &Digest) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        std::fs::rename(tmp, &dest).map_err(io_err("rename into place", &dest))
    }

    /// Unpacks a stored layer blob, checking both digests, and makes it the layer `diff_id`. Blocking.
    pub fn unpack(&self, layer: &LayerRef, budget: &Budget) -> Result<LayerManifest, StoreError> {
        if self.has_layer(&layer.diff_id) {
            return self.layer_manifest(&layer.diff_id);
        }
        let blob = self.blob_path(&layer.blob);
        let file = File::open(&blob).map_err(io_err("open", &blob))?;
        let result = self.unpack_from(layer, file, budget);
        if let Err(StoreError::Unpack(UnpackError::DigestMismatch { what: "compressed", .. })) = &result {
            // The stored blob is not what its name says: drop it, so the next pull fetches it again.
            let _ = std::fs::remove_file(&blob);
        }
        result
    }

    /// Unpacks a layer from a reader of its compressed blob (a download in progress), checking both digests
    /// over everything the reader yields, and makes it the layer `diff_id`. Blocking.
    pub fn unpack_from<R: Read>(
        &self,
        layer: &LayerRef,
        reader: R,
        budget: &Budget,
    ) -> Result<LayerManifest, StoreError> {
        let staging = self.temp_path(&format!("layer-{}", layer.diff_id.short()));
        std::fs::DirBuilder::new().mode(0o700).create(&staging).map_err(io_err("create", &staging))?;
        let result = (|| {
            let manifest = unpack_layer_from(reader, &layer.blob, &layer.diff_id, &staging.join("rootfs"), budget)?;
            write_json(&staging.join("layer.json"), &manifest)?;
            Ok::<_, StoreError>(manifest)
        })();
        let manifest = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let dest = self.layer_dir(&layer.diff_id);
        if let Err(e) = std::fs::rename(&staging, &dest) {
            // Another pull unpacked the same layer first: keep theirs.
            let _ = std::fs::remove_dir_all(&staging);
            if !self.has_layer(&layer.diff_id) {
                return Err(io_err("rename into place", &dest)(e));
            }
        }
        Ok(manifest)
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.dir().join("images").join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// Saves an image record (replacing the one of the same reference).
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let tmp = self.temp_path("record");
        write_json(&tmp, record)?;
        let dest = self.record_path(&record.reference);
        std::fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))
    }

    /// The record of a reference, if pulled.
    pub fn image(&self, reference: &ImageRef) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(&reference.to_string());
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Every image record, by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.dir().join("images");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(read_json::<ImageRecord>(&path)?);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Forgets an image; its blobs and layers go at the next garbage collection unless another image uses
    /// them. Returns whether it was there.
    pub fn remove(&self, reference: &ImageRef) -> Result<bool, StoreError> {
        let path = self.record_path(&reference.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Marks an image used now, so garbage collection evicts it last.
    pub fn touch(&self, reference: &ImageRef) -> Result<(), StoreError> {
        if let Some(mut r) = self.image(reference)? {
            r.last_used = now();
            self.put_image(&r)?;
        }
        Ok(())
    }

    /// Marks the image of `record` (as just read) used now, when its mark is at least [`USE_GRANULARITY`] old:
    /// sandboxes created from it back to back rewrite its record once a minute, not once each. Garbage
    /// collection orders images by this mark, so a minute is fine grain enough.
    pub fn mark_used(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let now = now();
        if now.saturating_sub(record.last_used) < USE_GRANULARITY.as_secs() {
            return Ok(());
        }
        self.put_image(&ImageRecord { last_used: now, ..record.clone() })
    }

    /// The unpacked layers of an image, bottom to top: the lower directories of an overlay mount (which
    /// lists them top first: reverse this for `lowerdir=`).
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, StoreError> {
        image
            .layers
            .iter()
            .map(|l| {
                if self.has_layer(&l.diff_id) {
                    Ok(crate::unpack::rootfs_of(&self.layer_dir(&l.diff_id)))
                } else {
                    Err(StoreError::MissingLayer { reference: image.reference.clone(), diff_id: l.diff_id.clone() })
                }
            })
            .collect()
    }

    /// The `lowerdir=` list of an overlay mount of the image: the layers' directories top first, each once. An
    /// image may list a layer twice (empty layers are common); only its topmost place counts, since it hides
    /// everything its lower place could, so the lower repeats are dropped (overlayfs refuses a directory given
    /// twice).
    pub fn lower_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, StoreError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for dir in self.layer_dirs(image)?.into_iter().rev() {
            if seen.insert(dir.clone()) {
                out.push(dir);
            }
        }
        Ok(out)
    }

    /// Takes the store's lock: shared (pulls) or exclusive (garbage collection). Blocking.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let path = self.dir().join(".lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let op =
            if exclusive { rustix::fs::FlockOperation::LockExclusive } else { rustix::fs::FlockOperation::LockShared };
        rustix::fs::flock(&file, op).map_err(|e| io_err("lock", &path)(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    /// The store's size: blobs plus unpacked layers (their recorded file bytes plus 512 bytes per entry).
    pub fn usage(&self) -> Result<u64, StoreError> {
        Ok(self.blob_sizes()?.values().sum::<u64>() + self.layer_sizes()?.values().sum::<u64>())
    }

    fn blob_sizes(&self) -> Result<BTreeMap<Digest, u64>, StoreError> {
        let dir = self.dir().join("blobs/sha256");
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else { continue };
            let len = entry.metadata().map_err(io_err("inspect", &entry.path()))?.len();
            out.insert(d, len);
        }
        Ok(out)
    }

    fn layer_sizes(&self) -> Result<BTreeMap<Digest, u64>, StoreError> {
        let dir = self.dir().join("layers/sha256");
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else { continue };
            let size = self.layer_manifest(&d).map(|m| m.file_bytes + 512 * m.entries).unwrap_or(0);
            out.insert(d, size);
        }
        Ok(out)
    }

    /// Collects garbage: removes what no image record references (blobs, unpacked layers, leftovers in
    /// `tmp/`), then, while the store is over `config.budget_bytes`, evicts the least recently used images not
    /// in `keep` and removes what they alone referenced. Takes the store's exclusive lock (waits for pulls in
    /// progress). Blocking.
    pub fn gc(&self, keep: &[ImageRef]) -> Result<GcReport, StoreError> {
        let _lock = self.lock(true)?;
        let mut report = GcReport::default();
        let tmp = self.dir().join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let path = entry.map_err(io_err("list", &tmp))?.path();
            let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            r.map_err(io_err("remove", &path))?;
        }
        let keep: BTreeSet<String> = keep.iter().map(ToString::to_string).collect();
        let mut images = self.list()?;
        images.sort_by_key(|r| r.last_used);
        loop {
            self.sweep(&images, &mut report)?;
            let used = self.usage()?;
            report.bytes_after = used;
            let Some(budget) = self.config().budget_bytes else { break };
            if used <= budget {
                break;
            }
            let Some(pos) = images.iter().position(|r| !keep.contains(&r.reference)) else {
                tracing::warn!(used, budget, "the image store is over its budget, and every image left is in use");
                break;
            };
            let victim = images.remove(pos);
            let path = self.record_path(&victim.reference);
            std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            report.images_evicted.push(victim.reference);
        }
        Ok(report)
    }

    fn sweep(&self, images: &[ImageRecord], report: &mut GcReport) -> Result<(), StoreError> {
        let blobs: BTreeSet<&Digest> = images.iter().flat_map(ImageRecord::blobs).collect();
        let layers: BTreeSet<&Digest> = images.iter().flat_map(|r| r.layers.iter().map(|l| &l.diff_id)).collect();
        for (d, size) in self.blob_sizes()? {
            if !blobs.contains(&d) {
                let path = self.blob_path(&d);
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        for (d, size) in self.layer_sizes()? {
            if !layers.contains(&d) {
                let path = self.layer_dir(&d);
                std::fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                report.layers_removed += 1;
                report.bytes_freed += size;
            }
        }
        Ok(())
    }
}

/// How old an image's last-used mark may get before a use rewrites it ([`Store::mark_used`]).
pub const USE_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::BadRecord { path: path.to_owned(), source })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|source| StoreError::BadRecord { path: path.to_owned(), source })?;
    std::fs::write(path, bytes).map_err(io_err("write", path))
}
