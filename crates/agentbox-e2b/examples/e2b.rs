//! Runs a command, some Python and a file round trip in an E2B sandbox.
//!
//! `E2B_API_KEY=e2b_... cargo run -p agentbox-e2b --example e2b`; without the key it says what to set and exits 2.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

use agentbox_core::{CodeRequest, CreateRequest, ExecRequest, Language, SandboxBackend};
use agentbox_e2b::{ConfigError, E2bBackend, E2bConfig};

#[tokio::main]
async fn main() {
    let config = match E2bConfig::from_env() {
        Ok(c) => c,
        Err(e @ ConfigError::MissingApiKey) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("the E2B configuration is unusable: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(config).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(config: E2bConfig) -> agentbox_core::Result<()> {
    let backend = E2bBackend::new(config)?;
    let started = std::time::Instant::now();
    let sandbox = backend.create(CreateRequest::default()).await?;
    println!("created {} in {:?}", sandbox.id, started.elapsed());
    let result = async {
        let t = std::time::Instant::now();
        let out = backend.exec(&sandbox.id, ExecRequest::shell("uname -a; echo $HOME")).await?.collect(1 << 20).await;
        println!("exec (exit {}, {:?}):\n{}", out.exit_code, t.elapsed(), out.stdout);
        let t = std::time::Instant::now();
        let code = CodeRequest::new(Language::Python, "import sys\nprint(sys.version)");
        let out = backend.run_code(&sandbox.id, code).await?.collect(1 << 20).await;
        println!("python (exit {}, {:?}): {}", out.exit_code, t.elapsed(), out.stdout.trim());
        backend.write_file(&sandbox.id, "hello.txt", b"hello from agentbox\n".to_vec()).await?;
        let back = backend.read_file(&sandbox.id, "/home/user/hello.txt").await?;
        println!("file round trip: {:?}", String::from_utf8_lossy(&back));
        let m = backend.metrics(&sandbox.id).await?;
        println!(
            "metrics: cpu {:.1}% memory {:.0} MiB disk {:.2} GiB",
            m.cpu_usage_percent, m.memory_used_mb, m.disk_used_gb
        );
        Ok::<(), agentbox_core::Error>(())
    }
    .await;
    backend.destroy(&sandbox.id).await?;
    println!("destroyed {}", sandbox.id);
    result
}
