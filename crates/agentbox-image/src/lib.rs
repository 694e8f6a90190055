//! OCI images for agentbox: references, a registry puller, a content-addressed store and a layer unpacker
//! made for hostile input. See docs/IMAGES.md.

pub mod auth;
pub mod config;
pub mod digest;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

pub use config::{Credential, ImageConfig, Platform, RetryConfig, UnpackLimits};
pub use digest::Digest;
pub use pull::{PullError, PullEvent, PullReport};
pub use reference::{ImageRef, ReferenceError};
pub use store::{GcReport, ImageRecord, LayerRef, RuntimeConfig, Store, StoreError};
pub use unpack::{LayerManifest, UnpackError};

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference can't be parsed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A pull failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Credentials can't be read.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
}
