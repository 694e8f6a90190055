//! The E2B backend (`agentbox-e2b`, a client of E2B's API) runs the shared backend conformance suite against this
//! crate's E2B-compatible API, served on loopback over real local sandboxes: E2B backend -> agentboxd's E2B API ->
//! local backend. Needs root, as every local-backend test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentbox_conformance::Target;
use agentbox_core::{ManagerConfig, SandboxManager};
use agentbox_e2b_api::{E2bApi, E2bApiConfig};

const KEY: &str = "e2b_00112233445566778899aabbccddeeff00112233";

/// The API's server task, stopped with the check.
struct Served(tokio::task::JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn target() -> Target {
    let local = agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default())
        .expect("local backend (tests run as root)");
    let manager = SandboxManager::new(Arc::new(local), ManagerConfig::default());
    let config = E2bApiConfig { enabled: true, ..E2bApiConfig::default() };
    let api = E2bApi::new(manager, Arc::new(|key: &[u8]| key == KEY.as_bytes()), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router();
    let served = Served(tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    }));
    let mut e2b = agentbox_e2b::E2bConfig::new(KEY);
    e2b.domain = "agentbox.test".into();
    e2b.api_url = Some(base.clone());
    e2b.sandbox_url = Some(base);
    let backend = agentbox_e2b::E2bBackend::new(e2b).unwrap();
    Target::new(Arc::new(backend)).keeping((served, api))
}

mod conformance {
    agentbox_conformance::conformance_tests!(super::target, skip_when = agentbox_conformance::not_root);
}
