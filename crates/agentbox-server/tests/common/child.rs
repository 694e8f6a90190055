//! A server in a process of its own, as agentboxd runs: this test binary run again as one of its own tests
//! (a "server process" test that does nothing unless its environment variable names a data directory), which
//! writes its address to `addr` in that directory and serves until SIGTERM.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentbox_server::Server;

/// The child server, seen from the test; SIGTERM and a wait when dropped.
pub struct ChildServer {
    child: std::process::Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ChildServer {
    /// Runs the test `server_test` of this binary with `env` set to `dir`, its stderr in `dir/server.log`, after
    /// `prepare` runs in the child between fork and exec (it must be async-signal-safe: setrlimit, setsid).
    pub fn start(
        server_test: &str,
        env: &str,
        dir: &Path,
        prepare: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        let log = dir.join("server.log");
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([server_test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(env, dir)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: the caller's `prepare` is async-signal-safe, as documented.
        unsafe { cmd.pre_exec(prepare) };
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(dir.join("addr")) {
                break a.parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the server exited with {status} before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "the server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill sends a signal to the process this test started, by its pid.
            unsafe { libc::kill(libc::pid_t::try_from(self.child.id()).unwrap(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The child's whole life, when `env` names its data directory (else nothing: the test harness runs this
/// "test" too): logs on stderr, a two-thread runtime, a server on the local backend with `config` and `token`
/// (after `before` runs inside the runtime), served by [`serve_until_term`].
pub fn run_server_process(env: &str, token: &str, config: agentbox_server::ServerConfig, before: impl FnOnce()) {
    let Some(dir) = std::env::var_os(env).map(PathBuf::from) else { return };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        before();
        let backend =
            std::sync::Arc::new(agentbox_local::LocalBackend::new(agentbox_local::LocalConfig::default()).unwrap());
        let registry = agentbox_server::Registry::open(&dir.join("registry.db")).unwrap();
        let token = agentbox_server::ApiToken::new(token).unwrap();
        let server = Server::start(backend, config, token, registry).await.unwrap();
        serve_until_term(server, &dir).await;
    });
}

/// In the child: listens on a loopback port, writes its address to `dir/addr`, serves until SIGTERM (a SIGINT
/// also stops it, saying so on stderr), then shuts down.
pub async fn serve_until_term(server: Server, dir: &Path) {
    let listener = agentbox_server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    std::fs::write(dir.join("addr.tmp"), addr.to_string()).unwrap();
    std::fs::rename(dir.join("addr.tmp"), dir.join("addr")).unwrap();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).unwrap();
    server
        .serve(listener, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => eprintln!("SIGINT received"),
            }
        })
        .await;
    server.shutdown().await;
}
