//! Pushing an image of the store to a registry: its layers and config as blobs (those the registry already has
//! are skipped), then its manifest, byte for byte as stored, so the pushed image has the digest the store knows.
//! Blobs stream from their files; nothing the size of a layer is held in memory.

use std::time::Duration;

use futures_util::stream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::{Client, RegistryOperation};

use crate::auth::{self, AuthError};
use crate::digest::Digest;
use crate::pull::allows_plain_http;
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};

/// The largest manifest pushed (as the puller accepts).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Bytes read from a blob's file per request body chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The store has no image by that reference.
    #[error(
        "pushing {reference}: the store has no such image; pull it or build the template first (agentbox image ls)"
    )]
    NotInStore {
        /// The reference asked for.
        reference: String,
    },
    /// The store failed, or a blob in it is corrupt.
    #[error("pushing {reference}: {source}")]
    Store {
        /// The image.
        reference: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The stored manifest names a media type that can't be sent as a header.
    #[error(
        "pushing {reference}: its stored manifest has the media type {media_type:?}, which can't be pushed; pull it again"
    )]
    BadManifest {
        /// The image.
        reference: String,
        /// The manifest's media type.
        media_type: String,
    },
    /// The credentials for the registry can't be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The registry refused or failed a request.
    #[error(
        "pushing to {destination}: {op} failed: {source}; check that the registry is reachable and that its credentials allow pushing to this repository"
    )]
    Registry {
        /// Where it was pushed.
        destination: String,
        /// What was asked.
        op: &'static str,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The pushed manifest's digest (the same as the store's).
    pub manifest_digest: String,
    /// Blobs uploaded.
    pub blobs_pushed: usize,
    /// Blobs the registry had already.
    pub blobs_skipped: usize,
    /// Bytes uploaded.
    pub bytes_pushed: u64,
}

impl Store {
    /// Pushes the image `source` of the store to `destination` (another name, on any registry the store's
    /// configuration allows: plain http only on loopback or for `insecure_registries`, credentials as for pulls).
    /// An image pulled from a multi-platform index is pushed as its one platform's manifest.
    ///
    /// # Errors
    /// [`PushError`] saying which step failed.
    pub async fn push(&self, source: &ImageRef, destination: &ImageRef) -> Result<PushReport, PushError> {
        let store_err = |source: StoreError| PushError::Store { reference: destination.to_string(), source };
        let record = self
            .image(source)
            .map_err(store_err)?
            .ok_or_else(|| PushError::NotInStore { reference: source.to_string() })?;
        let manifest = self.read_blob(&record.manifest_digest, MAX_MANIFEST_BYTES).map_err(store_err)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|m| m.get("mediaType").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
        let oci = destination.oci();
        let endpoint = oci.resolve_registry().to_owned();
        let client = Client::new(ClientConfig {
            protocol: if allows_plain_http(self.config(), &endpoint, destination.registry()) {
                ClientProtocol::HttpsExcept(vec![endpoint.clone()])
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(300)),
            user_agent: concat!("agentbox/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        });
        let env = |k: &str| std::env::var(k).ok();
        let credentials = auth::resolve(self.config(), destination.registry(), &env)?;
        let failed = |op: &'static str| {
            let destination = destination.to_string();
            move |source| PushError::Registry { destination, op, source }
        };
        client.auth(oci, &credentials, RegistryOperation::Push).await.map_err(failed("authenticating"))?;
        let mut report = PushReport { manifest_digest: record.manifest_digest.to_string(), ..PushReport::default() };
        let blobs = record.layers.iter().map(|l| &l.blob).chain(std::iter::once(&record.config_digest));
        for digest in blobs {
            if client.blob_exists(oci, &digest.to_string()).await.map_err(failed("checking a blob"))? {
                report.blobs_skipped += 1;
                continue;
            }
            let (body, size) = self.blob_stream(digest).await.map_err(store_err)?;
            client
                .push_blob_stream(oci, body, &digest.to_string(), Some(size))
                .await
                .map_err(failed("uploading a blob"))?;
            report.blobs_pushed += 1;
            report.bytes_pushed += size;
        }
        let content_type = media_type
            .parse()
            .map_err(|_| PushError::BadManifest { reference: source.to_string(), media_type: media_type.clone() })?;
        client.push_manifest_raw(oci, manifest, content_type).await.map_err(failed("uploading the manifest"))?;
        Ok(report)
    }

    /// A stored blob as a stream of chunks, and its size.
    async fn blob_stream(
        &self,
        digest: &Digest,
    ) -> Result<
        (impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static, u64),
        StoreError,
    > {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|source| StoreError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        let size = file.metadata().await.map_err(|source| StoreError::Io { op: "stat", path, source })?.len();
        let chunks = stream::unfold(Some(file), |file| async move {
            use tokio::io::AsyncReadExt as _;
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
            }
        });
        Ok((chunks, size))
    }
}
