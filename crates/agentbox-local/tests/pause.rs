//! Pause and resume: a paused sandbox's processes stop where they are (no CPU), executions are refused with the
//! reason while its files stay readable, resume continues them, and a paused sandbox can be destroyed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use agentbox_core::{Error, ExecRequest, SandboxBackend};
use common::Sandbox;

async fn counter(sb: &Sandbox) -> u64 {
    let bytes = sb.backend.read_file(&sb.id, "/home/user/counter").await.unwrap();
    String::from_utf8(bytes).unwrap().trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sandbox_stops_and_resumes_where_it_was() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let script = "i=0; while true; do i=$((i+1)); echo $i > /home/user/counter.tmp; mv /home/user/counter.tmp /home/user/counter; sleep 0.01; done";
    sb.backend.spawn_background(&sb.id, ExecRequest::shell(script)).await.unwrap();
    // Running: the counter moves.
    let mut before = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        before = sb
            .backend
            .read_file(&sb.id, "/home/user/counter")
            .await
            .map_or(0, |b| String::from_utf8_lossy(&b).trim().parse().unwrap_or(0));
        if before > 3 {
            break;
        }
    }
    assert!(before > 3, "the background counter did not start");

    sb.backend.pause(&sb.id).await.unwrap();
    assert!(
        sb.backend
            .list()
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == sb.id && s.state == agentbox_core::SandboxState::Paused)
    );
    let frozen_at = counter(&sb).await;
    let cpu_at = sb.backend.metrics(&sb.id).await.unwrap().cpu_time_seconds;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter(&sb).await, frozen_at, "a paused process kept running");
    let cpu_now = sb.backend.metrics(&sb.id).await.unwrap().cpu_time_seconds;
    assert!(cpu_now - cpu_at < 0.01, "a paused sandbox used {} s of CPU", cpu_now - cpu_at);
    // Executions are refused with the reason; files are still there to read and write.
    match sb.backend.exec(&sb.id, ExecRequest::shell("true")).await {
        Err(Error::Conflict(m)) => assert!(m.contains("paused") && m.contains("resume"), "{m}"),
        other => panic!("exec on a paused sandbox: {other:?}"),
    }
    sb.backend.write_file(&sb.id, "/home/user/while-paused", b"ok".to_vec()).await.unwrap();
    // Pausing twice is harmless.
    sb.backend.pause(&sb.id).await.unwrap();

    sb.backend.resume(&sb.id).await.unwrap();
    let mut after = frozen_at;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = counter(&sb).await;
        if after > frozen_at {
            break;
        }
    }
    assert!(after > frozen_at, "the counter did not continue after resume");
    assert_eq!(sb.sh("cat /home/user/while-paused").await.stdout, "ok");

    // A paused sandbox is destroyed whole.
    sb.backend.pause(&sb.id).await.unwrap();
    let id = sb.id.clone();
    let backend = sb.backend.clone();
    sb.destroy().await;
    assert!(
        agentbox_local::LocalBackend::host_cgroups(&agentbox_local::LocalConfig::default(), id.as_str()).is_empty()
    );
    drop(backend);
}
