//! Quickstart: create a sandbox on the local backend, run Python and a shell
//! command in it, print their output and the sandbox's metrics, destroy it.
//!
//! Run it with `cargo run --example quickstart` (as root: sandboxes use namespaces and cgroups).
#![allow(clippy::print_stdout)] // an example prints its results

use std::time::Instant;

use agentbox_core::{CodeRequest, CreateRequest, ExecRequest, Language, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = LocalBackend::new(LocalConfig::default())?;
    for limitation in backend.limitations() {
        eprintln!("note: {limitation}");
    }

    let started = Instant::now();
    let sandbox = backend.create(CreateRequest::default()).await?;
    println!("created sandbox {} in {:.1} ms", sandbox.id, started.elapsed().as_secs_f64() * 1000.0);

    let code =
        "import platform, statistics\nprint('python', platform.python_version(), 'mean =', statistics.mean([3, 5, 8]))";
    let py = backend.run_code(&sandbox.id, CodeRequest::new(Language::Python, code)).await?.collect(1 << 20).await;
    print!("$ python\n{}", py.stdout);

    let sh = backend
        .exec(&sandbox.id, ExecRequest::shell("echo \"$(id -un)@$(hostname) in $PWD\"; ls -A /; df -h /tmp | tail -1"))
        .await?
        .collect(1 << 20)
        .await;
    print!("$ shell (exit {})\n{}", sh.exit_code, sh.stdout);

    let m = backend.metrics(&sandbox.id).await?;
    println!(
        "metrics: cpu {:.3} s, memory {:.1} MiB (peak {:.1} MiB), disk {:.4} GiB",
        m.cpu_time_seconds, m.memory_used_mb, m.memory_peak_mb, m.disk_used_gb
    );

    backend.destroy(&sandbox.id).await?;
    println!("destroyed {}", sandbox.id);
    Ok(())
}
