//! Templates: named images built from a Dockerfile (docs/IMAGES.md).
//!
//! Each `RUN` step runs in a sandbox of the backend, started from the image built so far, as root inside its
//! user namespace and with network only to the package registries; what the step changed in the sandbox's root
//! is exported from the stopped sandbox and kept as a layer of the image store. `COPY` steps become layers made
//! on the host from the build context. Every layer is cached by a key of its parent chain, its instruction and
//! (for `COPY`) the files it copies, so a rebuild with nothing changed makes no sandbox at all. The result is an
//! image in the store, `agentbox.local/templates/NAME:latest`, that sandboxes start from (`image`, or
//! `template` in the APIs).
//!
//! ```no_run
//! # async fn example(backend: std::sync::Arc<dyn agentbox_core::SandboxBackend>) -> Result<(), agentbox_template::TemplateError> {
//! use agentbox_image::{ImageConfig, Store};
//! use agentbox_template::{BuildRequest, Builder};
//!
//! let store = Store::open(ImageConfig::in_dir("/var/lib/agentbox/images"))?;
//! let builder = Builder::new(backend, store);
//! let request = BuildRequest::new("agent", "FROM python:3.12-slim\nRUN pip install requests\n", "/src");
//! let built = builder.build(&request).await?;
//! println!("{} in {} steps ({} cached)", built.reference, built.steps.len(), built.cached_steps());
//! # Ok(())
//! # }
//! ```

mod build;
mod context;
pub mod recipe;

pub use build::{BUILD_REGISTRIES, BuildReport, BuildRequest, Builder, StepReport, TemplateInfo};
pub use recipe::{Recipe, RunCommand, Step};

/// Why a template build failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The Dockerfile can't be read, or uses what templates don't support.
    #[error("Dockerfile: {0}")]
    Dockerfile(String),
    /// A template name that can't be part of an image reference.
    #[error("template name {name:?}: use lowercase letters, digits, '.', '_' and '-' ({source})")]
    Name {
        /// The name.
        name: String,
        /// Why.
        source: agentbox_image::ReferenceError,
    },
    /// A `COPY` source that is not in the build context.
    #[error("COPY {path}: {reason}")]
    Context {
        /// The source as written.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A step's command failed.
    #[error("step {step} ({instruction}) exited with {exit_code}; its output ends with:\n{output}")]
    StepFailed {
        /// 1-based step number.
        step: usize,
        /// The instruction.
        instruction: String,
        /// Its exit code.
        exit_code: i32,
        /// The end of its stdout and stderr.
        output: String,
    },
    /// The sandbox backend failed.
    #[error("{what}: {source}")]
    Sandbox {
        /// What the build was doing.
        what: &'static str,
        /// The backend's error.
        source: agentbox_core::Error,
    },
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] agentbox_image::StoreError),
    /// A file of the build failed.
    #[error("{what}: {source}")]
    Io {
        /// What the build was doing.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl TemplateError {
    pub(crate) fn sandbox(what: &'static str) -> impl FnOnce(agentbox_core::Error) -> Self {
        move |source| Self::Sandbox { what, source }
    }

    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}
