//! The backend conformance suite against the E2B backend talking to a local fake of E2B's published API.
#![allow(clippy::unwrap_used)]

mod fake;

use std::sync::Arc;

use agentbox_conformance::{Outcome, Target};
use fake::{FakeE2b, FakeOptions};

async fn target_with(options: FakeOptions) -> Target {
    let fake = FakeE2b::start(options).await;
    let mut config = fake.config();
    if fake.state.interpreter_templates.is_empty() {
        config.templates.default = "base".into();
    }
    let backend = agentbox_e2b::E2bBackend::new(config).unwrap();
    Target::new(Arc::new(backend)).keeping(fake)
}

/// Sandboxes from the code-interpreter template: code goes to the code interpreter.
async fn target() -> Target {
    target_with(FakeOptions::default()).await
}

mod with_code_interpreter {
    agentbox_conformance::conformance_tests!(super::target);
}

/// A template without the code interpreter: code runs through the process API.
async fn check_without_interpreter(check: agentbox_conformance::CheckFn) {
    let target = target_with(FakeOptions { interpreter_templates: Vec::new() }).await;
    match check(target.backend.clone(), target.options.clone()).await {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => eprintln!("skipped: {why}"),
        Err(f) => panic!("{f}"),
    }
}

fn named(name: &str) -> agentbox_conformance::CheckFn {
    agentbox_conformance::checks().into_iter().find(|c| c.name == name).unwrap().run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_api_python() {
    check_without_interpreter(named("run_code_python")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_api_javascript() {
    check_without_interpreter(named("run_code_javascript")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_api_bash() {
    check_without_interpreter(named("run_code_bash")).await;
}
