//! Code contexts against hostile code: rich results far larger than any model should see. The
//! driver caps them inside the sandbox; the host (this test process) reads a bounded answer and its
//! memory stays within a fixed budget.
//!
//! Needs root for the local backend.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::config::SandboxConfig;
use agentbox_core::{CreateOptions, ManagerConfig, RunId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::code::{CodeLimits, RunCodeTool};
use agentbox_tools::{Tool, ToolContext, ToolsConfig};
use serde_json::{Value, json};

/// The most this test process may ever have held in memory, in KiB. Before the caps, one call below
/// took the host to 1.3 GB.
const PEAK_BUDGET_KIB: u64 = 256 * 1024;

/// Peak resident memory of this process, in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn sandbox(name: &str, memory_mb: u64) -> (SandboxManager, ToolContext) {
    let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
    let manager = SandboxManager::new(backend, ManagerConfig::default());
    let run = RunId::parse(name).unwrap();
    let config = SandboxConfig { execution_timeout: Duration::from_secs(120), memory_mb, ..SandboxConfig::default() };
    manager.get_or_create(&run, CreateOptions { preset: None, config: Some(config) }).await.unwrap();
    let ctx = ToolContext::new(manager.clone(), run);
    (manager, ctx)
}

async fn run(ctx: &ToolContext, input: Value) -> Value {
    match tokio::time::timeout(Duration::from_secs(180), RunCodeTool.call(ctx, input.clone())).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("run_code {input} failed: {e:?}"),
        Err(_) => panic!("run_code {input} did not return in time"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_repr_json_is_left_out_of_the_answer_and_saved_to_a_file() {
    if common::not_root() {
        return;
    }
    let (manager, ctx) = sandbox("code-hostile-json", 2048).await;
    let limits = CodeLimits::for_config(&ToolsConfig::default());
    let code = "class Big:\n    def _repr_json_(self):\n        return [0] * 20_000_000\n    def __repr__(self):\n        \
                return 'Big()'\nBig()";
    let out = run(&ctx, json!({"code": code})).await;
    let peak = peak_kib();
    assert!(peak < PEAK_BUDGET_KIB, "the host's peak memory is {peak} KiB, over {PEAK_BUDGET_KIB} KiB");
    let result = &out["results"][0];
    assert_eq!(result["truncated"], true, "{result}");
    assert!(result.get("json").is_none(), "the JSON over the limit is left out: {}", result.to_string().len());
    assert_eq!(result["text"], "Big()");
    let file = result["files"]["json"].as_str().unwrap().to_owned();
    let size = run(&ctx, json!({"code": format!("import os; os.path.getsize({file:?})")})).await;
    assert_eq!(size["results"][0]["text"], "60000000", "the whole value is saved: {size}");
    assert!(out.to_string().len() < limits.response_bytes);

    // JSON under the byte limit but with more elements than the answer may carry is left out too.
    let code = "class Many:\n    def _repr_json_(self):\n        return [0] * 300_000\nMany()";
    let out = run(&ctx, json!({"code": code})).await;
    assert!(out["results"][0].get("json").is_none(), "{}", out.to_string().len());
    assert!(out["results"][0]["files"]["json"].is_string());
    let out =
        run(&ctx, json!({"code": "class Few:\n    def _repr_json_(self):\n        return [0] * 1000\nFew()"})).await;
    assert_eq!(out["results"][0]["json"].as_array().map(Vec::len), Some(1000));

    // A long repr is cut with a mark naming the file holding all of it.
    let out = run(&ctx, json!({"code": "'x' * 5_000_000"})).await;
    let text = out["results"][0]["text"].as_str().unwrap();
    assert!(text.len() <= limits.result_bytes, "{}", text.len());
    assert!(text.contains("bytes truncated; full result saved to "), "{}", &text[text.len() - 200..]);
    // Many large results: the answer stays within its limit, and what does not fit is left out with a mark.
    let out = run(&ctx, json!({"code": "for i in range(8):\n    display('y' * 900_000)"})).await;
    assert!(out.to_string().len() <= limits.response_bytes, "{}", out.to_string().len());
    let left_out = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["text"].as_str().unwrap_or("").contains("left out"))
        .count();
    assert!(left_out > 0, "some results are left out");
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_results_are_capped_in_the_sandbox_too() {
    if common::not_root() {
        return;
    }
    let (manager, ctx) = sandbox("code-hostile-js", 1024).await;
    let limits = CodeLimits::for_config(&ToolsConfig::default());
    let out = run(
        &ctx,
        json!({"language": "javascript", "code": "for (let i = 0; i < 150; i++) display('z'.repeat(100000)); 1"}),
    )
    .await;
    let results = out["results"].as_array().unwrap();
    assert!(results.len() <= limits.max_results, "{}", results.len());
    assert!(out.to_string().len() <= limits.response_bytes, "{}", out.to_string().len());
    assert!(results.iter().any(|r| r["truncated"] == true));
    manager.shutdown().await;
}
