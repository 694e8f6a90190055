//! OCI images for agentbox: references, a registry puller, a content-addressed store and a layer unpacker
//! made for hostile input. See docs/IMAGES.md.
//!
//! ```no_run
//! # async fn example() -> Result<(), agentbox_image::ImageError> {
//! use agentbox_image::{ImageConfig, ImageRef, Store};
//!
//! let store = Store::open(ImageConfig::in_dir("/var/lib/agentbox/images"))?;
//! let (image, _report) = store.pull(&ImageRef::parse("localhost:5000/team/agent:1")?).await?;
//! // The overlay lower directories of a sandbox root, top first, and what to run in it.
//! let lower = store.lower_dirs(&image)?;
//! let (env, cmd) = (&image.config.env, &image.config.cmd);
//! # let _ = (lower, env, cmd);
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod config;
pub mod digest;
pub mod local;
pub mod merged;
pub mod pull;
pub mod push;
pub mod reference;
pub mod store;
pub mod unpack;
pub mod user;

pub use config::{Credential, ImageConfig, Platform, RetryConfig, UnpackLimits};
pub use digest::Digest;
pub use local::{IdShift, LOCAL_REGISTRY, UpperSummary, is_local, template_reference, write_upper_as_layer};
pub use merged::{EntryMeta, MergedEntry, MergedRoot};
pub use pull::{PullError, PullEvent, PullReport};
pub use push::{PushError, PushReport};
pub use reference::{ImageRef, ReferenceError};
pub use store::{GcReport, ImageRecord, LayerRef, RuntimeConfig, Store, StoreError, USE_GRANULARITY};
pub use unpack::{LayerManifest, UnpackError};
pub use user::{ImageUser, UserError};

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference can't be parsed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A pull failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// A push failed.
    #[error(transparent)]
    Push(#[from] PushError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Credentials can't be read.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A digest can't be parsed.
    #[error(transparent)]
    Digest(#[from] digest::DigestError),
}
