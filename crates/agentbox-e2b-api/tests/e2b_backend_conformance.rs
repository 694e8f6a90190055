//! The E2B backend (`agentbox-e2b`, a client of E2B's API) runs the shared backend conformance suite against this
//! crate's E2B-compatible API, served on loopback over real local sandboxes: E2B backend -> agentboxd's E2B API ->
//! local backend. Needs root, as every local-backend test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agentbox_conformance::Target;

async fn target() -> Target {
    let (backend, served) = common::e2b_backend_over_local().await;
    Target::new(Arc::new(backend)).keeping(served)
}

mod conformance {
    agentbox_conformance::conformance_tests!(super::target, skip_when = agentbox_conformance::not_root);
}
