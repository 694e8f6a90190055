//! Pulling an image from a registry into the store: mirrors first, the host platform from an index, every
//! blob verified, layers downloaded and unpacked concurrently, retries with backoff, and a pull that was
//! interrupted resumes by skipping what is already in the store.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::auth::{self, AuthError};
use crate::config::{ImageConfig, Platform, RetryConfig};
use crate::digest::{Digest, Hasher};
use crate::reference::{ImageRef, is_loopback_registry};
use crate::store::{ImageRecord, LayerRef, RuntimeConfig, Store, StoreError, now};
use crate::unpack::Budget;

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry refused or failed a request (after the retries, for failures that may pass).
    #[error(
        "pulling {reference} from {registry}: {op} failed: {source}; check the reference, that the registry is reachable, and its credentials"
    )]
    Registry {
        /// The image.
        reference: String,
        /// The registry or mirror asked.
        registry: String,
        /// What was asked.
        op: &'static str,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// The index has no manifest for the platform wanted.
    #[error(
        "pulling {reference}: no platform {platform} in its index (it has: {available}); pull one of those with `platform` set, or use an image built for this host"
    )]
    NoPlatform {
        /// The image.
        reference: String,
        /// The platform wanted.
        platform: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A manifest or config is malformed or inconsistent.
    #[error("pulling {reference}: {reason}")]
    BadImage {
        /// The image.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// Content doesn't hash to the digest that names it.
    #[error(
        "pulling {reference}: {what} {expected} arrived with digest {actual}; the registry served corrupt or tampered content, which was discarded"
    )]
    DigestMismatch {
        /// The image.
        reference: String,
        /// What it was (`manifest`, `blob`).
        what: &'static str,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what came.
        actual: Digest,
    },
    /// A blob is larger than its manifest says, or than the limits allow.
    #[error(
        "pulling {reference}: blob {digest} is larger than {limit} bytes (its declared size, or `limits` in the image configuration)"
    )]
    TooLarge {
        /// The image.
        reference: String,
        /// The blob.
        digest: Digest,
        /// The limit.
        limit: u64,
    },
    /// Writing a download failed.
    #[error("pulling {reference}: can't write {path}: {source}")]
    Io {
        /// The image.
        reference: String,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A store operation failed (unpacking included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Credentials can't be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl PullError {
    fn transient(&self) -> bool {
        match self {
            Self::Registry { source, .. } => transient(source),
            Self::Io { source, .. } => source.kind() != std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect()
                || r.is_timeout()
                || r.is_body()
                || r.is_request()
                || r.status().is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// Progress of a pull, for progress bars and event streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: these layers (blob digest, size) make the image.
    Resolved {
        /// The platform manifest's digest.
        manifest: Digest,
        /// Layers, bottom to top.
        layers: Vec<(Digest, u64)>,
    },
    /// Bytes of a layer arrived.
    Progress {
        /// The layer's blob.
        layer: Digest,
        /// Bytes so far.
        bytes: u64,
        /// The layer's size.
        total: u64,
    },
    /// A layer was already unpacked, or its blob already stored: nothing to download.
    Reused {
        /// The layer's blob.
        layer: Digest,
    },
    /// A layer is unpacked and verified.
    Unpacked {
        /// The layer's blob.
        layer: Digest,
    },
}

/// What a pull did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// The registry or mirror the image came from.
    pub source: String,
    /// Blobs downloaded (manifests, config and layers).
    pub blobs_downloaded: usize,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Layers whose blob was already in the store (a resumed pull).
    pub blobs_reused: usize,
    /// Layers unpacked by this pull.
    pub layers_unpacked: usize,
    /// Layers already unpacked (shared with another image, or an earlier pull).
    pub layers_reused: usize,
}

type Progress<'a> = Option<&'a (dyn Fn(PullEvent) + Send + Sync)>;

impl Store {
    /// Pulls an image (or makes sure it is complete in the store) and records it under its reference.
    pub async fn pull(&self, reference: &ImageRef) -> Result<(ImageRecord, PullReport), PullError> {
        self.pull_with_progress(reference, None).await
    }

    /// [`Store::pull`], reporting progress.
    pub async fn pull_with_progress(
        &self,
        reference: &ImageRef,
        progress: Progress<'_>,
    ) -> Result<(ImageRecord, PullReport), PullError> {
        // A reference pinned by digest names content that can't change: when the store has it whole, no
        // registry is asked (offline, and no round trip). A tag is always resolved again, since tags move.
        if let Some(pinned) = reference.digest() {
            if let Some(record) = self.image(reference)? {
                let same = record.manifest_digest == pinned || record.index_digest.as_ref() == Some(&pinned);
                if same && self.layer_dirs(&record).is_ok() {
                    let report = PullReport {
                        source: "store".into(),
                        layers_reused: record.layers.len(),
                        ..PullReport::default()
                    };
                    return Ok((record, report));
                }
            }
        }
        let store = self.clone();
        let lock = tokio::task::spawn_blocking(move || store.lock(false))
            .await
            .map_err(|e| self.join_error(reference, &e))??;
        let mirrors = self.config().mirrors.get(reference.registry()).cloned().unwrap_or_default();
        let mut last = None;
        for mirror in mirrors.iter().map(Some).chain([None]) {
            match self.pull_from(reference, mirror.map(String::as_str), progress).await {
                Ok(r) => {
                    drop(lock);
                    return Ok(r);
                }
                Err(e) => {
                    if let Some(m) = mirror {
                        tracing::warn!(%reference, mirror = %m, error = %e, "pull from a mirror failed; trying the next source");
                    }
                    last = Some(e);
                }
            }
        }
        drop(lock);
        Err(last.unwrap_or_else(|| PullError::BadImage {
            reference: reference.to_string(),
            reason: "no source to pull from".into(),
        }))
    }

    fn join_error(&self, reference: &ImageRef, e: &tokio::task::JoinError) -> PullError {
        PullError::Io {
            reference: reference.to_string(),
            path: self.dir().display().to_string(),
            source: std::io::Error::other(e.to_string()),
        }
    }

    async fn pull_from(
        &self,
        image: &ImageRef,
        mirror: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<(ImageRecord, PullReport), PullError> {
        let cfg = self.config();
        let mut oci = image.oci().clone();
        if let Some(m) = mirror {
            oci.set_mirror_registry(m.to_owned());
        }
        let endpoint = oci.resolve_registry().to_owned();
        let named = mirror.unwrap_or(image.registry());
        let plain_http = allows_plain_http(cfg, &endpoint, named);
        let client = Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![endpoint.clone()])
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("agentbox/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        });
        let env = |k: &str| std::env::var(k).ok();
        let auth = auth::resolve(cfg, named, &env)?;
        let p = Puller { store: self, client, auth, oci, image, endpoint, retry: cfg.retry.clone(), progress };
        p.run(&cfg.platform).await
    }
}

struct Puller<'a> {
    store: &'a Store,
    client: Client,
    auth: RegistryAuth,
    oci: Reference,
    image: &'a ImageRef,
    endpoint: String,
    retry: RetryConfig,
    progress: Progress<'a>,
}

/// Runs `f` until it succeeds, fails for good, or the attempts run out; waits between attempts with
/// exponential backoff.
async fn with_retry<T, F, Fut>(retry: &RetryConfig, what: &str, mut f: F) -> Result<T, PullError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PullError>>,
{
    let mut delay = retry.initial_backoff;
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < retry.attempts.max(1) && e.transient() => {
                tracing::warn!(what, attempt, error = %e, "registry request failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(retry.max_backoff);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Puller<'_> {
    fn registry_err(&self, op: &'static str) -> impl FnOnce(OciDistributionError) -> PullError + use<> {
        let reference = self.image.to_string();
        let registry = self.endpoint.clone();
        move |source| PullError::Registry { reference, registry, op, source }
    }

    fn bad(&self, reason: impl Into<String>) -> PullError {
        PullError::BadImage { reference: self.image.to_string(), reason: reason.into() }
    }

    fn emit(&self, e: PullEvent) {
        if let Some(p) = self.progress {
            p(e);
        }
    }

    /// Fetches a manifest or index; with `expected`, checks its digest.
    async fn manifest(
        &self,
        r: &Reference,
        expected: Option<&Digest>,
        report: &mut PullReport,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let limit = self.store.config().limits.max_metadata_bytes;
        let (bytes, _) = with_retry(&self.retry, "manifest", || async {
            self.client
                .pull_manifest_raw(r, &self.auth, ACCEPT)
                .await
                .map_err(self.registry_err("fetching the manifest"))
        })
        .await?;
        if bytes.len() as u64 > limit {
            return Err(self.bad(format!("its manifest is {} bytes, over the limit of {limit}", bytes.len())));
        }
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected {
            if &actual != expected {
                return Err(PullError::DigestMismatch {
                    reference: self.image.to_string(),
                    what: "manifest",
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        report.blobs_downloaded += 1;
        report.bytes_downloaded += bytes.len() as u64;
        self.store.write_blob(&actual, &bytes)?;
        Ok((bytes.to_vec(), actual))
    }

    async fn run(&self, platform: &Platform) -> Result<(ImageRecord, PullReport), PullError> {
        let mut report = PullReport { source: self.endpoint.clone(), ..PullReport::default() };
        let pinned = self.image.digest();
        let (bytes, digest) = self.manifest(&self.oci, pinned.as_ref(), &mut report).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("its manifest is not JSON: {e}")))?;
        let (manifest_bytes, manifest_digest, index_digest) = if value.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("its index is malformed: {e}")))?;
            let chosen = pick_platform(&index, platform).ok_or_else(|| PullError::NoPlatform {
                reference: self.image.to_string(),
                platform: platform.to_string(),
                available: index
                    .manifests()
                    .iter()
                    .filter_map(|m| m.platform().as_ref().map(|p| format!("{}/{}", p.os(), p.architecture())))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            let chosen = Digest::parse(&chosen).map_err(|e| self.bad(e.to_string()))?;
            let r = self.oci.clone_with_digest(chosen.to_string());
            let (b, d) = self.manifest(&r, Some(&chosen), &mut report).await?;
            (b, d, Some(digest))
        } else {
            (bytes, digest, None)
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| self.bad(format!("its manifest is malformed: {e}")))?;

        // The config: small, kept in memory.
        let config_digest = Digest::parse(manifest.config().digest().as_ref()).map_err(|e| self.bad(e.to_string()))?;
        let limit = self.store.config().limits.max_metadata_bytes;
        if !self.store.has_blob(&config_digest) {
            let size = manifest.config().size().min(limit);
            self.blob(&config_digest, manifest.config().media_type().to_string(), size, false, &mut report).await?;
        }
        let config_bytes = self.store.read_blob(&config_digest, limit)?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| self.bad(format!("its config is malformed: {e}")))?;

        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(self.bad(format!(
                "its manifest has {} layers but its config lists {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut total = 0u64;
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let media_type = desc.media_type().to_string();
            if !media_type.contains("tar") {
                return Err(self.bad(format!(
                    "layer {} has media type {media_type}, which is not a file system layer",
                    desc.digest()
                )));
            }
            let size = desc.size();
            total = total.saturating_add(size);
            layers.push(LayerRef {
                blob: Digest::parse(desc.digest().as_ref()).map_err(|e| self.bad(e.to_string()))?,
                diff_id: Digest::parse(diff_id).map_err(|e| self.bad(e.to_string()))?,
                media_type,
                size,
            });
        }
        let limits = &self.store.config().limits;
        if total > limits.max_bytes {
            return Err(
                self.bad(format!("its layers add up to {total} bytes, over `limits.max_bytes` ({})", limits.max_bytes))
            );
        }
        self.emit(PullEvent::Resolved {
            manifest: manifest_digest.clone(),
            layers: layers.iter().map(|l| (l.blob.clone(), l.size)).collect(),
        });

        let budget = Arc::new(Budget::new(limits.max_bytes, limits.max_entries));
        let concurrency = self.store.config().concurrency.max(1);
        // Every layer runs to its end even when another failed: what was verified stays for a resumed pull,
        // and nothing is left half-written in tmp/.
        // The futures are made first: a stream over a mapping closure would make the pull's future impossible to
        // prove `Send` for callers that need it (a server's task, a backend's create).
        let pending: Vec<_> = layers.iter().map(|l| self.layer(l, budget.clone())).collect();
        let outcomes: Vec<Result<(bool, bool, u64), PullError>> =
            futures_util::stream::iter(pending).buffer_unordered(concurrency).collect().await;
        let results = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
        for (unpacked, downloaded, bytes) in results {
            if unpacked {
                report.layers_unpacked += 1;
            } else {
                report.layers_reused += 1;
            }
            if downloaded {
                report.blobs_downloaded += 1;
                report.bytes_downloaded += bytes;
            } else if unpacked {
                report.blobs_reused += 1;
            }
        }

        let c = config.config().clone().unwrap_or_default();
        let runtime = RuntimeConfig {
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            entrypoint: c.entrypoint().clone(),
            cmd: c.cmd().clone(),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            stop_signal: c.stop_signal().clone(),
        };
        let t = now();
        let record = ImageRecord {
            reference: self.image.to_string(),
            manifest_digest,
            index_digest,
            config_digest,
            platform: format!("{}/{}", config.os(), config.architecture()),
            layers,
            config: runtime,
            pulled_at: t,
            last_used: t,
        };
        self.store.put_image(&record)?;
        Ok((record, report))
    }

    /// Makes sure a layer is unpacked. Returns (unpacked now, downloaded now, bytes downloaded).
    ///
    /// A layer to download is unpacked while it downloads: the bytes go both to the blob's file and, through
    /// a bounded channel, to the unpacker, which checks both digests itself over the whole stream. If that
    /// first download fails, the blob is fetched again with retries and unpacked from the file.
    async fn layer(&self, layer: &LayerRef, budget: Arc<Budget>) -> Result<(bool, bool, u64), PullError> {
        if self.store.has_layer(&layer.diff_id) {
            self.emit(PullEvent::Reused { layer: layer.blob.clone() });
            return Ok((false, false, 0));
        }
        if self.store.has_blob(&layer.blob) {
            self.emit(PullEvent::Reused { layer: layer.blob.clone() });
            self.unpack_stored(layer, budget).await?;
            return Ok((true, false, 0));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.store.clone();
        let (l, b) = (layer.clone(), budget.clone());
        let unpacker = tokio::task::spawn_blocking(move || store.unpack_from(&l, ChannelReader::new(rx), &b));
        let desc = self.descriptor(&layer.blob, layer.media_type.clone(), layer.size);
        let downloaded = self.download(&layer.blob, &desc, layer.size, true, Some(tx)).await;
        let unpacked = unpacker.await.map_err(|e| self.store.join_error(self.image, &e))?;
        let bytes = match (downloaded, unpacked) {
            (Ok(n), Ok(_)) => n,
            (Ok(_), Err(e)) => return Err(e.into()),
            (Err(e), _) if !e.transient() => return Err(e),
            (Err(e), _) => {
                tracing::warn!(layer = %layer.blob, error = %e, "layer download failed; fetching it again");
                let mut r = PullReport::default();
                self.blob(&layer.blob, layer.media_type.clone(), layer.size, true, &mut r).await?;
                self.unpack_stored(layer, budget).await?;
                r.bytes_downloaded
            }
        };
        self.emit(PullEvent::Unpacked { layer: layer.blob.clone() });
        Ok((true, true, bytes))
    }

    async fn unpack_stored(&self, layer: &LayerRef, budget: Arc<Budget>) -> Result<(), PullError> {
        let store = self.store.clone();
        let l = layer.clone();
        tokio::task::spawn_blocking(move || store.unpack(&l, &budget))
            .await
            .map_err(|e| self.store.join_error(self.image, &e))??;
        Ok(())
    }

    /// A descriptor with only the digest, size and type: a manifest's `urls` (foreign layers) would make the
    /// client fetch from any address the image names.
    fn descriptor(&self, digest: &Digest, media_type: String, size: u64) -> OciDescriptor {
        OciDescriptor {
            media_type,
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        }
    }

    /// Downloads a blob into the store, checking its size and digest on the way.
    async fn blob(
        &self,
        digest: &Digest,
        media_type: String,
        size: u64,
        progress: bool,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        let desc = self.descriptor(digest, media_type, size);
        let n = with_retry(&self.retry, "blob", || self.download(digest, &desc, size, progress, None)).await?;
        report.blobs_downloaded += 1;
        report.bytes_downloaded += n;
        Ok(())
    }

    async fn download(
        &self,
        digest: &Digest,
        desc: &OciDescriptor,
        size: u64,
        progress: bool,
        tee: Option<Tee>,
    ) -> Result<u64, PullError> {
        // Removed on every way out (an error, or the pull dropped mid-download) unless renamed into place.
        let tmp = TempFile(self.store.temp_path(&format!("blob-{}", digest.short())));
        let result = self.download_to(&tmp.0, digest, desc, size, progress, tee.as_ref()).await;
        if let (Err(e), Some(tee)) = (&result, &tee) {
            // The unpacker reading along stops with this, not with a truncated stream.
            let _ = tee.send(Err(e.to_string())).await;
        }
        result
    }

    async fn download_to(
        &self,
        tmp: &Path,
        digest: &Digest,
        desc: &OciDescriptor,
        size: u64,
        progress: bool,
        tee: Option<&Tee>,
    ) -> Result<u64, PullError> {
        let io = |source: std::io::Error| PullError::Io {
            reference: self.image.to_string(),
            path: tmp.display().to_string(),
            source,
        };
        let mut stream =
            self.client.pull_blob_stream(&self.oci, desc).await.map_err(self.registry_err("fetching a blob"))?;
        let file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Hasher::default();
        let mut last_report = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The client checks the digest too, and reports a mismatch at the end of the stream: the
                // bytes are all here, so report it as ours (not a transient error to retry).
                Err(e) if e.get_ref().is_some_and(|i| i.is::<oci_client::errors::DigestError>()) => {
                    let actual = std::mem::take(&mut hasher).finish();
                    return Err(PullError::DigestMismatch {
                        reference: self.image.to_string(),
                        what: "blob",
                        expected: digest.clone(),
                        actual,
                    });
                }
                Err(e) => return Err(self.registry_err("fetching a blob")(OciDistributionError::IoError(e))),
            };
            hasher.update(&chunk);
            if hasher.bytes() > size {
                return Err(PullError::TooLarge {
                    reference: self.image.to_string(),
                    digest: digest.clone(),
                    limit: size,
                });
            }
            out.write_all(&chunk).await.map_err(io)?;
            if let Some(tee) = tee {
                // An unpacker that stopped (a refused layer) has dropped its end: the download goes on, and its
                // error is the one reported.
                let _ = tee.send(Ok(chunk)).await;
            }
            if progress && hasher.bytes() - last_report >= 1 << 20 {
                last_report = hasher.bytes();
                self.emit(PullEvent::Progress { layer: digest.clone(), bytes: last_report, total: size });
            }
        }
        out.flush().await.map_err(io)?;
        drop(out);
        let n = hasher.bytes();
        let actual = hasher.finish();
        if &actual != digest {
            return Err(PullError::DigestMismatch {
                reference: self.image.to_string(),
                what: "blob",
                expected: digest.clone(),
                actual,
            });
        }
        self.store.commit_blob(tmp, digest)?;
        Ok(n)
    }
}

/// The sending end of a download's copy for the unpacker.
type Tee = tokio::sync::mpsc::Sender<Result<bytes::Bytes, String>>;

/// The receiving end, read by the unpacker on a blocking thread: the chunks in order, then end of file when the
/// download is complete (its sender dropped), or the download's error.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>) -> Self {
        Self { rx, current: bytes::Bytes::new() }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(format!("the download failed: {e}"))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// A temporary file removed when dropped, if it still exists (a committed blob has been renamed away).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.0.display(), error = %e, "can't remove a partial download"),
        }
    }
}

/// Whether a registry may be reached over plain http: on loopback, or listed in `insecure_registries` (by the
/// name the reference or mirror gives, or the host the client resolves it to).
pub(crate) fn allows_plain_http(cfg: &ImageConfig, endpoint: &str, named: &str) -> bool {
    is_loopback_registry(endpoint) || cfg.insecure_registries.iter().any(|r| r == endpoint || r == named)
}

/// Picks the manifest for `platform` from an index: same OS and architecture, the variant when one is asked
/// for (and `v8`/none for arm64 otherwise).
fn pick_platform(index: &ImageIndex, platform: &Platform) -> Option<String> {
    let candidates = index.manifests().iter().filter(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == platform.os && p.architecture().to_string() == platform.architecture)
    });
    let mut best = None;
    for m in candidates {
        let variant = m.platform().as_ref().and_then(|p| p.variant().clone());
        match (&platform.variant, variant) {
            (Some(want), Some(v)) if *want == v => return Some(m.digest().to_string()),
            (Some(_), _) => {}
            (None, _) if best.is_none() => best = Some(m.digest().to_string()),
            (None, _) => {}
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let mut cfg = ImageConfig::default();
        assert!(allows_plain_http(&cfg, "localhost:5000", "localhost:5000"));
        assert!(allows_plain_http(&cfg, "127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(!allows_plain_http(&cfg, "registry.internal:5000", "registry.internal:5000"));
        assert!(!allows_plain_http(&cfg, "index.docker.io", "docker.io"));
        cfg.insecure_registries.push("registry.internal:5000".into());
        assert!(allows_plain_http(&cfg, "registry.internal:5000", "registry.internal:5000"));
        assert!(!allows_plain_http(&cfg, "registry.internal:5001", "registry.internal:5001"));
    }
}
