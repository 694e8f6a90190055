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
    // CVE-2019-5736: sandboxed code running the agent program can't write that program (the host
    // binary itself, or its sealed copy).
    let write = std::fs::OpenOptions::new().write(true).open("/proc/self/exe");
    println!("HELPER write_exe {}", write.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1)));
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
    assert_eq!(
        lines[..4],
        [format!("Uid: {user}").as_str(), "CapEff: 0000000000000000", "NoNewPrivs: 1", "Seccomp: 2"]
    );
    let errno: i32 = lines[4].strip_prefix("write_exe ").unwrap().parse().unwrap();
    assert!([libc::EACCES, libc::ETXTBSY, libc::EPERM].contains(&errno), "writing the agent program: errno {errno}");
    sb.destroy().await;
}
