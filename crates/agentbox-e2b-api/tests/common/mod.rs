//! The E2B backend (`agentbox-e2b`, a client of E2B's API) pointed at this crate's E2B-compatible API, served on
//! loopback over real local sandboxes: E2B backend -> agentboxd's E2B API -> local backend. Needs root, as every
//! local-backend test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentbox_core::{ManagerConfig, SandboxManager};
use agentbox_e2b_api::{E2bApi, E2bApiConfig};

const KEY: &str = "e2b_00112233445566778899aabbccddeeff00112233";

/// The API's server task and the API, kept while the backend is in use; dropping it stops the server.
pub struct Served {
    task: tokio::task::JoinHandle<()>,
    _api: E2bApi,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An E2B backend whose E2B is agentboxd's E2B API over a local backend, and what keeps that API served.
pub async fn e2b_backend_over_local() -> (agentbox_e2b::E2bBackend, Served) {
    let local = agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default())
        .expect("local backend (tests run as root)");
    let manager = SandboxManager::new(Arc::new(local), ManagerConfig::default());
    let config = E2bApiConfig { enabled: true, ..E2bApiConfig::default() };
    let api = E2bApi::new(manager, Arc::new(|key: &[u8]| key == KEY.as_bytes()), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut e2b = agentbox_e2b::E2bConfig::new(KEY);
    e2b.domain = "agentbox.test".into();
    e2b.api_url = Some(base.clone());
    e2b.sandbox_url = Some(base);
    (agentbox_e2b::E2bBackend::new(e2b).unwrap(), Served { task, _api: api })
}
