//! The E2B backend for agentbox: the whole [`SandboxBackend`](agentbox_core::SandboxBackend) trait over E2B's
//! control-plane REST API, the envd daemon inside each sandbox (Connect RPCs with JSON, and `/files`), and the code
//! interpreter of code-interpreter templates.
//!
//! It works with E2B's cloud and with a self-hosted E2B: the domain, the control-plane URL and the sandbox URL
//! template are all configurable ([`E2bConfig`], or `E2B_*` environment variables through
//! [`E2bBackend::from_env`]).
//!
//! | trait method | E2B call |
//! |---|---|
//! | `create` | `POST /sandboxes` (template per preset, timeout from idle_timeout, metadata, envVars, network) |
//! | `list` | `GET /v2/sandboxes?metadata=agentbox.managed=true`, following `X-Next-Token` |
//! | `destroy` | `DELETE /sandboxes/{id}` (404 counts as done) |
//! | `keep_alive` | `POST /sandboxes/{id}/timeout` (also done on use, so a sandbox outlives its last use by idle_timeout) |
//! | `metrics` | `GET /sandboxes/{id}/metrics` (envd's `GET /metrics` before the first sample) |
//! | `health` | envd `GET /health` |
//! | `exec` | envd `process.Process/Start` (server stream), `SendInput` + `CloseStdin`, `SendSignal` at the time limit |
//! | `spawn_background`, `list_processes`, `kill_process` | `Start` with a tag, `List`, `SendSignal` (and the process tree) |
//! | `read_file`, `write_file` | envd `GET` / `POST /files` |
//! | `list_dir`, `stat`, `mkdir`, `remove`, `rename` | `filesystem.Filesystem/ListDir`, `Stat`, `MakeDir`, `Remove`, `Move` |
//! | `run_code` | code interpreter `POST /contexts` and `POST /execute` (NDJSON), or the process API |
//!
//! What E2B cannot express is refused with [`Error::Unsupported`](agentbox_core::Error::Unsupported) naming the
//! setting: denying domain names while allowing all others, custom DNS resolvers, bandwidth limits, and changing a
//! running sandbox's network policy. See `docs/E2B.md`.

mod backend;
mod code;
pub mod config;
pub use agentbox_e2b_wire::connect;
mod envd;
pub mod error;
mod files;
pub mod mapping;
mod process;
pub mod transport;
pub use agentbox_e2b_wire::wire;

pub use backend::{BACKEND_NAME, E2bBackend, MANAGED_KEY};
pub use config::{ApiKey, ConfigError, E2bConfig, RetryPolicy, TemplateMap, Timeouts};
pub use error::E2bError;
