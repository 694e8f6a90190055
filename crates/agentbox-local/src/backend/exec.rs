//! Executions: the request the agent gets for one, checked against what `execve` can take.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use agentbox_core::{
    Command, Error, ExecEvent, ExecRequest, ExecStream, LockExt, Result, Terminal, TerminalInput, TerminalRequest,
};
use tokio::sync::mpsc;

use super::{LiveSandbox, LocalBackend, Route, backend_err};
use crate::proto::{self, Exec, Kind, TermSize};

/// The most argument and environment bytes an execution may have: `execve`'s limit with the
/// default 8 MiB stack (a quarter of it).
const MAX_ARGS_BYTES: usize = 2 * 1024 * 1024;

impl LocalBackend {
    pub(super) fn exec_message(sb: &LiveSandbox, request: &ExecRequest, output_path: Option<String>) -> Result<Exec> {
        let env = sb.net.exec_env(&sb.config.environment_variables, &request.env);
        Self::exec_message_for(&sb.config, sb.working_dir.as_deref(), env, request, output_path)
    }

    /// The message for `request` in a sandbox of `config` whose executions start in `working_dir` unless they say
    /// otherwise, with `env` (the request's, and what the sandbox's networking adds) over the sandbox's own.
    pub(super) fn exec_message_for(
        config: &agentbox_config::SandboxConfig,
        working_dir: Option<&str>,
        mut env: std::collections::BTreeMap<String, String>,
        request: &ExecRequest,
        output_path: Option<String>,
    ) -> Result<Exec> {
        let argv = request.to_argv()?;
        let home = config.security.run_as.home();
        let (cwd, cwd_fallback) = match (&request.cwd, working_dir) {
            // The image's working directory, or the home where the user can't enter it (`/root`, say).
            (None, Some(dir)) => (dir.to_owned(), Some(home)),
            (None, None) => (home, None),
            (Some(c), _) if c.starts_with('/') => (c.clone(), None),
            (Some(c), _) => (format!("{home}/{c}"), None),
        };
        if cwd.contains('\0') {
            return Err(Error::InvalidRequest("cwd contains a NUL byte".into()));
        }
        let timeout = request.timeout.unwrap_or(config.execution_timeout);
        let root = Self::runs_as_root(&config.security, request.user.as_deref())?;
        if root {
            for (k, v) in [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")] {
                if !request.env.contains_key(k) {
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        // What execve(2) can take at most; larger requests could never start (and must not reach the agent).
        let size: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
            + env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
        if size > MAX_ARGS_BYTES {
            return Err(Error::InvalidRequest(format!(
                "the command's arguments and environment take {size} bytes; a command can take at most {MAX_ARGS_BYTES} \
                 (the kernel's limit): pass large data through stdin or a file"
            )));
        }
        Ok(Exec {
            argv,
            cwd,
            cwd_fallback,
            env,
            timeout_ms: if output_path.is_some() && request.timeout.is_none() {
                0
            } else {
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1)
            },
            stdin: request.stdin.is_some(),
            output_path,
            root,
            tty: None,
        })
    }

    /// Whether an execution for `user` runs as root inside: the sandbox's user (by default, or named) does
    /// not, `root` does where the sandbox allows it, and anyone else is refused.
    fn runs_as_root(security: &agentbox_config::SecurityConfig, user: Option<&str>) -> Result<bool> {
        match user {
            None => Ok(false),
            Some(u) if u == security.run_as.name => Ok(false),
            Some("root") if security.allow_root_inside => Ok(true),
            Some("root") => Err(Error::InvalidRequest(format!(
                "this sandbox runs commands as {} only: create it with security.allow_root_inside = true to run \
                 them as root inside",
                security.run_as.name
            ))),
            Some(other) => Err(Error::InvalidRequest(format!(
                "user {other:?}: commands run as {} (the sandbox's user) or, where allowed, root",
                security.run_as.name
            ))),
        }
    }

    /// Sends an execution to the agent (with all of its stdin, then end of input, when `stdin` is given)
    /// and routes its events to the receiver returned with its request id.
    pub(super) async fn start_execution(
        &self,
        sb: &LiveSandbox,
        msg: &Exec,
        stdin: Option<&[u8]>,
    ) -> Result<(u32, mpsc::Receiver<ExecEvent>)> {
        let rid = sb.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frames =
            proto::try_encode_json(Kind::Exec, rid, msg).map_err(|e| backend_err("encoding the execution", e))?;
        let (tx, rx) = mpsc::channel(64);
        sb.routes.lock_unpoisoned().insert(rid, Route::Exec { tx, oom_before: sb.cgroup.oom_kills() });
        if let Some(stdin) = stdin {
            for chunk in stdin.chunks(64 * 1024) {
                frames.extend(proto::encode(Kind::Stdin, rid, chunk));
            }
            frames.extend(proto::encode(Kind::Stdin, rid, &[]));
        }
        if let Err(e) = sb.send(&frames).await {
            sb.routes.lock_unpoisoned().remove(&rid);
            return Err(e);
        }
        Ok((rid, rx))
    }

    /// Starts an execution whose stream ends it when dropped before the exit event.
    pub(super) async fn start_owned_execution(
        &self,
        sb: &Arc<LiveSandbox>,
        msg: &Exec,
        stdin: Option<&[u8]>,
    ) -> Result<ExecStream> {
        let (rid, rx) = self.start_execution(sb, msg, stdin).await?;
        Ok(owned_stream(sb, rid, rx))
    }
}

/// The stream of the execution `rid`, which ends it when dropped before the exit event.
pub(super) fn owned_stream(sb: &Arc<LiveSandbox>, rid: u32, rx: mpsc::Receiver<ExecEvent>) -> ExecStream {
    ExecStream::new(rx).with_guard(EndIfAbandoned { sb: Arc::downgrade(sb), rid })
}

/// Ends an execution whose caller dropped its stream before the exit event, as the E2B backend does: nobody
/// reads its output any more, and it would otherwise hold the sandbox until its time limit (a REST client that
/// hung up, a tool call given up on).
struct EndIfAbandoned {
    sb: Weak<LiveSandbox>,
    rid: u32,
}

impl Drop for EndIfAbandoned {
    fn drop(&mut self) {
        let Some(sb) = self.sb.upgrade() else { return };
        // The route goes when the exit event arrives: one still there is an execution still running.
        if !sb.routes.lock_unpoisoned().contains_key(&self.rid) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(frame) = proto::try_encode_json(Kind::Kill, self.rid, &proto::Kill { signal: libc::SIGKILL }) else {
            return;
        };
        let rid = self.rid;
        runtime.spawn(async move {
            if let Err(e) = sb.send(&frame).await {
                tracing::debug!(sandbox = %sb.info.id, rid, error = %e, "ending an abandoned execution failed");
            }
        });
    }
}

impl LocalBackend {
    /// Starts a process on a new terminal: an execution whose stdio is the terminal (no time limit), and
    /// a task that turns input into frames until the caller drops its sender, then hangs up.
    pub(super) async fn terminal(&self, sb: Arc<LiveSandbox>, request: TerminalRequest) -> Result<Terminal> {
        let mut env = request.env;
        env.entry("TERM".into()).or_insert_with(|| "xterm-256color".into());
        let exec = ExecRequest {
            command: request.command.unwrap_or_else(|| Command::Argv(vec!["bash".into(), "-l".into()])),
            cwd: request.cwd,
            env,
            stdin: None,
            timeout: None,
            user: None,
        };
        let mut msg = Self::exec_message(&sb, &exec, None)?;
        msg.tty = Some(TermSize { rows: request.size.rows.max(1), cols: request.size.cols.max(1) });
        msg.timeout_ms = 0;
        let (rid, rx) = self.start_execution(&sb, &msg, None).await?;
        let (input, mut inputs) = mpsc::channel::<TerminalInput>(64);
        tokio::spawn(async move {
            while let Some(item) = inputs.recv().await {
                let frames = match item {
                    TerminalInput::Data(bytes) => {
                        // An empty Stdin frame would close the terminal's input: empty data is nothing to send.
                        bytes.chunks(64 * 1024).flat_map(|c| proto::encode(Kind::Stdin, rid, c)).collect()
                    }
                    TerminalInput::Resize(size) => {
                        let size = TermSize { rows: size.rows.max(1), cols: size.cols.max(1) };
                        match proto::try_encode_json(Kind::Resize, rid, &size) {
                            Ok(f) => f,
                            Err(_) => continue,
                        }
                    }
                };
                if sb.send(&frames).await.is_err() {
                    return;
                }
            }
            // The caller is gone: hang up, as a closed terminal window does.
            if let Ok(f) = proto::try_encode_json(Kind::Kill, rid, &proto::Kill { signal: libc::SIGHUP }) {
                let _ = sb.send(&f).await;
            }
        });
        Ok(Terminal { output: ExecStream::new(rx), input })
    }
}
