//! An execution of `/proc/self/exe` runs the sandbox's agent program (this test binary) as an
//! ordinary execution: the sandbox user, no capabilities, no_new_privs and the seccomp filter. Tools
//! use this to run helpers inside the sandbox (the browser driver of `agentbox-tools`).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use agentbox_core::ExecRequest;
use common::Sandbox;

/// Run inside the sandbox by the test below: prints who it is.
#[allow(clippy::print_stdout, reason = "the test below reads what it prints")]
#[test]
fn identity_helper() {
    // Runs inside the sandbox as its user, so no root check: only the variable says it is the helper's turn.
    if std::env::var_os("AGENTBOX_TEST_SELF_EXE").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    for key in ["Uid:", "CapEff:", "NoNewPrivs:", "Seccomp:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        println!("HELPER {}", line.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_program_runs_inside_as_an_ordinary_execution() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let user = sb.sh("id -u").await.stdout.trim().to_owned();
    let mut req =
        ExecRequest::argv(["/proc/self/exe", "--exact", "identity_helper", "--nocapture", "--test-threads", "1"]);
    req.env.insert("AGENTBOX_TEST_SELF_EXE".into(), "1".into());
    let out = sb.run(req).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().filter_map(|l| l.split("HELPER ").nth(1)).collect();
    assert_eq!(lines, [format!("Uid: {user}").as_str(), "CapEff: 0000000000000000", "NoNewPrivs: 1", "Seccomp: 2"]);
    sb.destroy().await;
}
