use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let b = LocalBackend::new(LocalConfig::default()).unwrap();
    eprintln!("limitations: {:?}", b.limitations());
    let t = std::time::Instant::now();
    let sb = b.create(CreateRequest::default()).await.unwrap();
    eprintln!("create: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let out = b.exec(&sb.id, ExecRequest::shell("echo hi; id; hostname; pwd; ls /; cat /proc/self/status | grep -E 'Cap|NoNew|Seccomp'; echo err >&2; exit 3")).await.unwrap().collect(1 << 20).await;
    eprintln!("exec: {:?} {out:#?}", t.elapsed());
    let t = std::time::Instant::now();
    b.destroy(&sb.id).await.unwrap();
    eprintln!("destroy: {:?}", t.elapsed());
}
