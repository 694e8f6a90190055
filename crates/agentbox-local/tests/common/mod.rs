//! One helper for every local-backend test: a real sandbox that is destroyed when dropped.
#![allow(dead_code)]

pub mod dns;

use std::sync::Arc;
use std::time::Duration;

use agentbox_config::SandboxConfig;
use agentbox_core::{CreateRequest, ExecOutput, ExecRequest, SandboxBackend, SandboxId};
use agentbox_local::{LocalBackend, LocalConfig};

pub struct Sandbox {
    pub backend: Arc<LocalBackend>,
    pub id: SandboxId,
}

pub fn backend() -> Arc<LocalBackend> {
    Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root; tests run as root"))
}

impl Sandbox {
    pub async fn new() -> Self {
        Self::with(SandboxConfig::default()).await
    }

    pub async fn with(config: SandboxConfig) -> Self {
        let backend = backend();
        let info = backend.create(CreateRequest::new(config)).await.expect("create sandbox");
        Self { backend, id: info.id }
    }

    /// Runs a bash command line with a 60 s cap.
    pub async fn sh(&self, line: &str) -> ExecOutput {
        self.run(ExecRequest { timeout: Some(Duration::from_secs(60)), ..ExecRequest::shell(line) }).await
    }

    pub async fn run(&self, req: ExecRequest) -> ExecOutput {
        self.backend.exec(&self.id, req).await.expect("exec").collect(1 << 20).await
    }

    /// Runs Python code, returning stdout trimmed; panics with stderr when it fails.
    pub async fn py(&self, code: &str) -> String {
        let out = self
            .run(ExecRequest { timeout: Some(Duration::from_secs(60)), ..ExecRequest::argv(["python3", "-c", code]) })
            .await;
        assert_eq!(out.exit_code, 0, "python failed: {}\n{}", out.stdout, out.stderr);
        out.stdout.trim().to_owned()
    }

    pub async fn destroy(self) {
        self.backend.destroy(&self.id).await.expect("destroy");
    }
}

pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("agentbox-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("creating a temporary directory");
    d
}

pub use agentbox_conformance::not_root;

/// Lines of this process's mount table that mention `id`.
pub fn mounts_mentioning(id: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().filter(|l| l.contains(id)).count()
}

/// This process's open descriptors, by number.
pub fn open_fds() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
