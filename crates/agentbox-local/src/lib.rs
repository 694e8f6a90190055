//! The local Linux backend for agentbox.
//!
//! Each sandbox is a tree of processes in its own PID, mount, network, UTS,
//! IPC and cgroup namespaces, under a cgroup with memory, CPU and pids limits.
//! PID 1 inside is an agent (cloned from a zygote that is a sealed re-execution
//! of the host binary, see `agent/mod.rs`) that builds the filesystem (read-only system directories, its
//! own /etc, capped writable home and /tmp, a minimal /dev, a masked /proc)
//! and runs each execution as an unprivileged user with no capabilities,
//! no_new_privs, landlock and a seccomp filter.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> agentbox_core::Result<()> {
//! use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
//! use agentbox_local::{LocalBackend, LocalConfig};
//!
//! let backend = LocalBackend::new(LocalConfig::default())?;
//! let sandbox = backend.create(CreateRequest::default()).await?;
//! let out = backend.exec(&sandbox.id, ExecRequest::shell("echo hello from $(hostname)")).await?.collect(1 << 20).await;
//! assert_eq!(out.stdout, "hello from sandbox\n");
//! backend.destroy(&sandbox.id).await?;
//! # Ok(()) }
//! ```

// Each unsafe operation has its own block and its own SAFETY comment.
#![deny(clippy::multiple_unsafe_ops_per_block)]

pub(crate) mod agent;
mod backend;
mod cgroup;
pub mod early_exit;
mod error;
mod etc;
mod net;
mod netns;
// The agent's wire protocol is public with `test-util` only, for the protocol's own tests (tests/proto_*.rs).
#[cfg(feature = "test-util")]
pub mod proto;
#[cfg(not(feature = "test-util"))]
pub(crate) mod proto;
mod sealed;
pub(crate) mod seccomp;
mod sys;
mod transfer;
pub mod typescript;
mod zygote;

pub use backend::{HostProcess, LocalBackend, LocalConfig};
pub use cgroup::Layout as CgroupLayout;
pub use cgroup::{CgroupReport, CgroupVersion};
pub use net::{HTTP_PROXY_PORT, NetworkStats, SOCKS_PROXY_PORT};
pub use zygote::fork_now as fork_zygote_now;
