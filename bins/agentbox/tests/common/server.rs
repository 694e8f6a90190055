//! A real server on loopback for the binary's tests: `agentbox serve` (which is agentboxd) with the local backend.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

pub struct Server {
    child: Child,
    pub url: String,
    pub token: String,
    pub data: PathBuf,
}

impl Server {
    pub fn start(name: &str) -> Self {
        let data = std::env::temp_dir().join(format!("agentbox-client-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentbox"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env_remove("AGENTBOX_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // As a server started in the background by a non-interactive shell: SIGINT ignored, a
        // disposition sandboxes must not inherit (Ctrl-C on their terminals must still work).
        // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut url, mut token) = (None, None);
        while url.is_none() || token.is_none() {
            let line = lines.next().expect("the server printed its address and token").unwrap();
            if let Some(rest) = line.strip_prefix("agentboxd listening on ") {
                url = rest.split_whitespace().next().map(str::to_owned);
            } else if line.starts_with("generated an API token") {
                token = Some(lines.next().unwrap().unwrap().trim().to_owned());
            }
        }
        // Keep draining the server's log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url: url.unwrap(), token: token.unwrap(), data }
    }

    #[allow(dead_code)] // not every test binary runs the client
    pub fn agentbox(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentbox"))
            .args(args)
            .env("AGENTBOX_URL", &self.url)
            .env("AGENTBOX_API_TOKEN", &self.token)
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, by its pid.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
