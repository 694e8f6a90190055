//! Image roots: the image a sandbox's config names, found in the store (or pulled into it on first use), whose
//! unpacked layers become the read-only lower side of the sandbox's overlay root.

use std::path::PathBuf;
use std::sync::Arc;

use agentbox_core::{Error, LockExt, Result};
use agentbox_image::{ImageRecord, ImageRef, ImageUser, RuntimeConfig, Store, UserError};

use super::upper::UpperPlan;
use super::{LocalBackend, blocking, proto};

/// How many planned upper layers a backend keeps (one per image, generated files and home in use).
const UPPER_PLANS_KEPT: usize = 64;

/// What a sandbox's root needs of its image.
pub(super) struct ImageRoot {
    /// The unpacked layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Its runtime settings (environment, working directory, ...).
    pub config: RuntimeConfig,
    /// The account its `User` names, when not root: executions run as it unless the sandbox's config names a
    /// user of its own.
    pub user: Option<ImageUser>,
    /// The store's record of it.
    pub record: ImageRecord,
}

impl LocalBackend {
    /// The image store, opened on first use.
    fn image_store(&self) -> Result<Store> {
        let Some(config) = &self.inner.config.images else {
            return Err(Error::Unsupported(
                "this backend has no image store (LocalConfig::images is None): leave `image` unset, or \"host\", \
                 to use the host's system"
                    .into(),
            ));
        };
        self.inner
            .images
            .get_or_init(|| Store::open(config.clone()).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| Error::backend(format!("the image store in {} can't be opened: {e}", config.dir.display())))
    }

    /// The layers and settings of the image `reference`, pulled first when the store lacks it (or any of its
    /// layers).
    pub(super) async fn resolve_image(&self, reference: &str) -> Result<ImageRoot> {
        let image = ImageRef::parse(reference).map_err(|e| Error::InvalidRequest(format!("image: {e}")))?;
        let store = self.image_store()?;
        let (s, r) = (store.clone(), image.clone());
        let found = blocking("looking an image up", move || {
            let record = s.image(&r).map_err(|e| Error::backend(format!("reading the image store: {e}")))?;
            if let Some(record) = &record {
                let _ = s.mark_used(record);
            }
            Ok(record.and_then(|record| s.lower_dirs(&record).ok().map(|lowers| (record, lowers))))
        })
        .await?;
        let (record, lowers) = match found {
            Some(found) => found,
            None if agentbox_image::is_local(&image) => {
                return Err(Error::InvalidRequest(format!(
                    "image {image} was built on a host, not pulled, and this store doesn't have it: build the template \
                     here (agentbox template build -t NAME)"
                )));
            }
            None => {
                // A reference the registry can't serve (unknown, unauthorized, unreachable) is the request's
                // problem, not the backend's.
                let (record, report) = store.pull(&image).await.map_err(|e| {
                    Error::InvalidRequest(format!(
                        "image {image} can't be used: pulling it failed: {e}; try `agentbox image pull {image}`"
                    ))
                })?;
                tracing::info!(image = %image, downloaded = report.bytes_downloaded, "pulled an image for a sandbox");
                let lowers =
                    store.lower_dirs(&record).map_err(|e| Error::backend(format!("the pulled image {image}: {e}")))?;
                (record, lowers)
            }
        };
        if lowers.is_empty() {
            return Err(Error::InvalidRequest(format!("image {image} has no layers")));
        }
        let cached = self.inner.image_users.lock_unpoisoned().get(&record.config_digest).cloned();
        let user = match cached {
            Some(user) => user,
            None => {
                let (s, r) = (store.clone(), record.clone());
                let user = blocking("reading the image's users", move || {
                    s.image_user(&r).map_err(|e| match e {
                        UserError::Unknown { .. } => Error::InvalidRequest(format!(
                            "image {}: {e}; set security.run_as to a user the image has",
                            r.reference
                        )),
                        UserError::Store(e) => Error::backend_with(format!("reading the image {}", r.reference), e),
                    })
                })
                .await?;
                self.inner.image_users.lock_unpoisoned().insert(record.config_digest.clone(), user.clone());
                user
            }
        };
        Ok(ImageRoot { lowers, config: record.config.clone(), user, record })
    }

    /// What the host writes into a new upper layer of `image` for a sandbox with `setup` ([`UpperPlan`]): planned
    /// on first use, from the image's merged root, then kept. Blocking; `None` when the store can't be read (the
    /// init then makes it all itself).
    pub(super) fn upper_planner(
        &self,
        image: &ImageRoot,
        setup: &proto::Setup,
    ) -> impl FnOnce() -> Option<Arc<UpperPlan>> + Send + 'static {
        let key = (image.record.config_digest.clone(), setup.files.clone(), setup.home.clone());
        let inner = self.inner.clone();
        let store = self.image_store().ok();
        let record = image.record.clone();
        move || {
            if let Some(plan) = inner.upper_plans.lock_unpoisoned().get(&key) {
                return Some(plan.clone());
            }
            let root = store?
                .merged_root(&record)
                .map_err(|e| tracing::warn!(image = %record.reference, error = %e, "reading an image's layers"))
                .ok()?;
            let plan = Arc::new(UpperPlan::new(&root, &key.1, &key.2));
            let mut plans = inner.upper_plans.lock_unpoisoned();
            if plans.len() >= UPPER_PLANS_KEPT {
                plans.clear();
            }
            plans.insert(key, plan.clone());
            Some(plan)
        }
    }
}
