//! The backend contract shared with every other backend, run against real local sandboxes.

mod common;

use std::sync::Arc;

use agentbox_conformance::Target;

#[allow(clippy::unused_async)] // the conformance macro awaits its target
async fn target() -> Target {
    let backend = agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default())
        .expect("local backend (tests run as root)");
    Target::new(Arc::new(backend))
}

mod conformance {
    agentbox_conformance::conformance_tests!(super::target, skip_when = super::common::not_root);
}
