//! Commands through envd's process service: streamed executions with stdin and time limits, interactive
//! terminals, background processes, and signals to process trees.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentbox_core::{
    Command, Error, ExecEvent, ExecRequest, ExecStream, ProcessInfo, Result, SandboxId, Terminal, TerminalInput,
    TerminalRequest, TerminalSize,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Handle, Inner, Tracked};
use crate::envd::ProcessStream;
use crate::error::{Call, Plane};
use crate::mapping::{self, sandbox_path};
use crate::transport::{ONCE, SANDBOX_IDEMPOTENT};
use crate::wire::{
    ListResponse, PidSelector, ProcessConfig, ProcessInput, ProcessRequest, Pty, PtySize, StartRequest, UpdateRequest,
    encode_base64,
};

/// Tag prefix of background processes, so `List` finds them again.
pub const BACKGROUND_TAG: &str = "agentbox-bg-";
/// Directory of background processes' output files.
pub const BACKGROUND_DIR: &str = "/tmp/agentbox-bg";
/// Largest stdin or terminal input chunk per `SendInput`.
const STDIN_CHUNK: usize = 64 * 1024;
/// Longest wait between renewals of the lease of a sandbox with an open terminal.
const TERMINAL_LEASE_TICK: Duration = Duration::from_secs(60);
/// Input and resizes queued for a terminal before its sender waits.
const TERMINAL_QUEUE: usize = 64;

/// Signals every descendant of `$1` with signal number `$2`, and `$1` itself when `$3` is 1. The tree is read from
/// `/proc/*/stat` (field 4 is the parent pid; the command name may hold spaces and parentheses).
const KILL_TREE: &str = r#"root=$1 sig=$2 self=$3
declare -A kids
for s in /proc/[0-9]*/stat; do
  read -r line < "$s" 2>/dev/null || continue
  p=${s#/proc/}; p=${p%/stat}
  rest=${line##*) }
  set -- $rest
  kids[$2]="${kids[$2]} $p"
done
todo=("$root"); all=()
while [ ${#todo[@]} -gt 0 ]; do
  p=${todo[0]}; todo=("${todo[@]:1}")
  for c in ${kids[$p]}; do all+=("$c"); todo+=("$c"); done
done
[ "$self" = 1 ] && all=("$root" "${all[@]}")
[ ${#all[@]} -gt 0 ] && kill -n "$sig" "${all[@]}" 2>/dev/null
exit 0"#;

/// How a feeder of a process's input ended.
enum Fed {
    /// Everything was written, or the process stopped taking input: its output goes on until it ends.
    Done,
    /// The terminal's input sender was dropped: the terminal hangs up.
    HangUp,
}

type Feeder = Pin<Box<dyn Future<Output = Result<Fed>> + Send>>;

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A terminal's size as envd takes it, each side at least 1.
fn pty(size: TerminalSize) -> Pty {
    Pty { size: PtySize { cols: u32::from(size.cols.max(1)), rows: u32::from(size.rows.max(1)) } }
}

/// How an output pump ended.
enum Ending {
    Exited(agentbox_core::ExitStatus),
    TimedOut,
    Broken(String),
    Abandoned,
}

impl Inner {
    fn process_config(&self, request: &ExecRequest, argv: Vec<String>) -> Result<ProcessConfig> {
        let home = self.home();
        let cwd = match &request.cwd {
            Some(c) => sandbox_path(&home, c)?,
            None => home,
        };
        let (cmd, args) = match &request.command {
            // E2B's SDKs run command lines in a login shell, so the template's profile (PATH) applies.
            Command::Shell(line) => ("/bin/bash".to_owned(), vec!["-l".to_owned(), "-c".to_owned(), line.clone()]),
            Command::Argv(_) => {
                let mut it = argv.into_iter();
                (it.next().unwrap_or_default(), it.collect())
            }
        };
        Ok(ProcessConfig { cmd, args, envs: request.env.clone(), cwd: Some(cwd) })
    }

    pub(crate) async fn exec(self: &Arc<Self>, id: &SandboxId, request: ExecRequest) -> Result<ExecStream> {
        self.exec_with_cleanup(id, request, None).await
    }

    /// Runs a command; `cleanup` is a file removed once it ended.
    pub(crate) async fn exec_with_cleanup(
        self: &Arc<Self>,
        id: &SandboxId,
        request: ExecRequest,
        cleanup: Option<String>,
    ) -> Result<ExecStream> {
        let argv = request.to_argv()?;
        let h = self.handle(id).await?;
        let limit = request.timeout.unwrap_or(h.execution_timeout);
        self.touch(&h, limit).await?;
        let process = self.process_config(&request, argv.clone())?;
        let start = StartRequest { process, tag: None, stdin: Some(request.stdin.is_some()), pty: None };
        let action = format!("start {}", argv.join(" "));
        let subject = format!("the program or working directory of `{}`", argv.join(" "));
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &subject, sandbox: Some(id.as_str()) };
        let started = Instant::now();
        let (pid, stream) = match self.start_process(&h, &start, Some(limit), call).await {
            Ok(started) => started,
            Err(e) => {
                if let Some(path) = &cleanup {
                    self.remove_quietly(&h, path).await;
                }
                return Err(e);
            }
        };
        let feeder: Option<Feeder> = request.stdin.map(|data| {
            let inner = self.clone();
            let h = h.clone();
            Box::pin(async move { inner.feed_stdin(&h, pid, &data).await.map(|()| Fed::Done) }) as Feeder
        });
        let (tx, rx) = mpsc::channel(64);
        let inner = self.clone();
        tokio::spawn(async move {
            inner.pump(h, pid, stream, tx, started, Some(started + limit), feeder, cleanup).await;
        });
        Ok(ExecStream::new(rx))
    }

    /// Starts a process on a new pseudo-terminal, as E2B's SDKs do (`process.Process/Start` with `pty`): an
    /// interactive login shell unless the request names a program. Its output streams as stdout until it exits;
    /// one task sends the caller's input (`SendInput` with `pty` bytes) and resizes (`Update`) in the order given,
    /// and when the caller drops its sender the process tree is killed. The terminal has no time limit, so the
    /// sandbox's lease is renewed while it is open.
    pub(crate) async fn open_terminal(self: &Arc<Self>, id: &SandboxId, request: TerminalRequest) -> Result<Terminal> {
        let h = self.handle(id).await?;
        let tick = (h.lease / 2).clamp(Duration::from_secs(1), TERMINAL_LEASE_TICK);
        self.touch(&h, tick).await?;
        let mut env = request.env;
        for (name, value) in [("TERM", "xterm-256color"), ("LANG", "C.UTF-8"), ("LC_ALL", "C.UTF-8")] {
            env.entry(name.to_owned()).or_insert_with(|| value.to_owned());
        }
        let command =
            request.command.unwrap_or_else(|| Command::Argv(vec!["/bin/bash".into(), "-i".into(), "-l".into()]));
        let exec = ExecRequest { command, cwd: request.cwd, env, ..ExecRequest::default() };
        let argv = exec.to_argv()?;
        let process = self.process_config(&exec, argv.clone())?;
        let start = StartRequest { process, tag: None, stdin: None, pty: Some(pty(request.size)) };
        let action = format!("start {} on a terminal", argv.join(" "));
        let subject = format!("the program or working directory of `{}`", argv.join(" "));
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &subject, sandbox: Some(id.as_str()) };
        let started = Instant::now();
        let (pid, stream) = self.start_process(&h, &start, None, call).await?;
        let (input, inputs) = mpsc::channel(TERMINAL_QUEUE);
        let feeder: Feeder = {
            let inner = self.clone();
            let h = h.clone();
            Box::pin(async move { inner.feed_terminal(&h, pid, inputs).await })
        };
        let (tx, rx) = mpsc::channel(64);
        let inner = self.clone();
        tokio::spawn(async move {
            let keeper = tokio::spawn({
                let inner = inner.clone();
                let h = h.clone();
                async move { inner.keep_leased(&h, tick).await }
            });
            inner.pump(h, pid, stream, tx, started, None, Some(feeder), None).await;
            keeper.abort();
        });
        Ok(Terminal { output: ExecStream::new(rx), input })
    }

    /// Sends a terminal's input and resizes, one at a time in order, until the caller drops its sender (a hang-up)
    /// or the process is gone. A resize envd refuses leaves the terminal as it was.
    async fn feed_terminal(&self, h: &Handle, pid: u32, mut inputs: mpsc::Receiver<TerminalInput>) -> Result<Fed> {
        let subject = format!("process {pid}");
        let call = |action| Call { plane: Plane::Sandbox, action, subject: &subject, sandbox: Some(h.id.as_str()) };
        while let Some(item) = inputs.recv().await {
            let sent = match item {
                TerminalInput::Data(bytes) => {
                    let mut sent = Ok(());
                    for chunk in bytes.chunks(STDIN_CHUNK) {
                        let body = ProcessRequest {
                            process: PidSelector { pid },
                            input: Some(ProcessInput::Pty(encode_base64(chunk))),
                            signal: None,
                        };
                        let call = call("write to the process's terminal");
                        sent = self
                            .envd_unary::<_, serde_json::Value>(h, "process.Process/SendInput", &body, ONCE, call)
                            .await
                            .map(drop);
                        if sent.is_err() {
                            break;
                        }
                    }
                    sent
                }
                TerminalInput::Resize(size) => {
                    let body = UpdateRequest { process: PidSelector { pid }, pty: Some(pty(size)) };
                    let call = call("resize the process's terminal");
                    let resized = self
                        .envd_unary::<_, serde_json::Value>(
                            h,
                            "process.Process/Update",
                            &body,
                            SANDBOX_IDEMPOTENT,
                            call,
                        )
                        .await
                        .map(drop);
                    match resized {
                        Err(Error::InvalidRequest(why)) => {
                            tracing::warn!(sandbox_id = %h.id, pid, rows = size.rows, cols = size.cols, %why,
                                "envd refused to resize a terminal; it keeps its size");
                            Ok(())
                        }
                        other => other,
                    }
                }
            };
            match sent {
                Ok(()) => {}
                // The process ended: its end event is on its way down the output stream.
                Err(Error::NotFound(_)) => return Ok(Fed::Done),
                Err(e) => return Err(e),
            }
        }
        Ok(Fed::HangUp)
    }

    /// Renews the sandbox's lease every `tick` for as long as it runs (a terminal, which reserves no time up front);
    /// it stops when the sandbox is gone.
    async fn keep_leased(&self, h: &Handle, tick: Duration) {
        loop {
            tokio::time::sleep(tick).await;
            if let Err(e) = self.touch(h, tick).await {
                tracing::debug!(sandbox_id = %h.id, error = %e, "stopped renewing the lease of a sandbox with an open terminal");
                return;
            }
        }
    }

    /// Writes `data` to a process's stdin in chunks, then closes it.
    async fn feed_stdin(&self, h: &Handle, pid: u32, data: &[u8]) -> Result<()> {
        let subject = format!("process {pid}");
        for chunk in data.chunks(STDIN_CHUNK) {
            let body = ProcessRequest {
                process: PidSelector { pid },
                input: Some(ProcessInput::Stdin(encode_base64(chunk))),
                signal: None,
            };
            let call = Call {
                plane: Plane::Sandbox,
                action: "write the process's stdin",
                subject: &subject,
                sandbox: Some(h.id.as_str()),
            };
            let _: serde_json::Value = self.envd_unary(h, "process.Process/SendInput", &body, ONCE, call).await?;
        }
        let body = ProcessRequest { process: PidSelector { pid }, input: None, signal: None };
        let call = Call {
            plane: Plane::Sandbox,
            action: "close the process's stdin",
            subject: &subject,
            sandbox: Some(h.id.as_str()),
        };
        let _: serde_json::Value = self.envd_unary(h, "process.Process/CloseStdin", &body, ONCE, call).await?;
        Ok(())
    }

    /// Moves a process's output into the channel until it ends, its time runs out (when it has a `deadline`), the
    /// stream breaks or the reader goes away, while `feeder` writes its input; a feeder's hang-up kills the process
    /// tree, whose end then comes down the stream. Whatever happens, the reader gets a final exit event and nothing
    /// is left running.
    #[allow(clippy::too_many_arguments)]
    async fn pump(
        self: Arc<Self>,
        h: Arc<Handle>,
        pid: u32,
        mut stream: ProcessStream,
        tx: mpsc::Sender<ExecEvent>,
        started: Instant,
        deadline: Option<Instant>,
        mut feeder: Option<Feeder>,
        cleanup: Option<String>,
    ) {
        let mut hung_up = false;
        let ending = loop {
            tokio::select! {
                event = stream.next() => match event {
                    Ok(Some(event)) => {
                        if let Some(data) = event.data {
                            for chunk in [data.stdout.map(ExecEvent::Stdout), data.stderr.map(ExecEvent::Stderr), data.pty.map(ExecEvent::Stdout)].into_iter().flatten() {
                                let sent = match deadline {
                                    Some(d) => tokio::time::timeout_at(d, tx.send(chunk)).await.ok(),
                                    None => Some(tx.send(chunk).await),
                                };
                                if !matches!(sent, Some(Ok(()))) {
                                    break;
                                }
                            }
                            if tx.is_closed() {
                                break Ending::Abandoned;
                            }
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                break Ending::TimedOut;
                            }
                        }
                        if let Some(end) = event.end {
                            break Ending::Exited(mapping::exit_status(&end, started.elapsed()));
                        }
                    }
                    Ok(None) => break Ending::Broken("the stream ended without the process's end event".into()),
                    Err(e) => break Ending::Broken(e.to_string()),
                },
                () = until(deadline) => break Ending::TimedOut,
                () = tx.closed() => break Ending::Abandoned,
                result = async { feeder.as_mut().expect("polled only when set").await }, if feeder.is_some() => {
                    feeder = None;
                    match result {
                        Ok(Fed::Done) => {}
                        Ok(Fed::HangUp) => {
                            if let Err(e) = self.kill_tree(&h, pid, 9).await {
                                break Ending::Broken(format!("hanging the terminal up (killing its processes) failed: {e}"));
                            }
                            hung_up = true;
                        }
                        Err(e) => {
                            let note = format!("\n[agentbox: writing the process's input failed: {e}]\n");
                            let _ = tx.send(ExecEvent::Stderr(note.into_bytes())).await;
                            break Ending::Broken(format!("writing the process's input failed: {e}"));
                        }
                    }
                }
            }
        };
        let exit = match ending {
            Ending::Exited(status) => Some(status),
            Ending::TimedOut => {
                self.kill_quietly(&h, pid).await;
                Some(mapping::timed_out(started.elapsed()))
            }
            Ending::Broken(why) => {
                self.kill_quietly(&h, pid).await;
                let note = format!("\n[agentbox: the E2B output stream broke before the process ended: {why}]\n");
                let _ = tx.send(ExecEvent::Stderr(note.into_bytes())).await;
                Some(agentbox_core::ExitStatus {
                    exit_code: 255,
                    signal: None,
                    timed_out: false,
                    oom_killed: false,
                    duration: started.elapsed(),
                })
            }
            Ending::Abandoned => {
                if !hung_up {
                    self.kill_quietly(&h, pid).await;
                }
                None
            }
        };
        if let Some(status) = exit {
            h.record_exit(status.exit_code);
            let _ = tx.send(ExecEvent::Exit(status)).await;
        }
        if let Some(path) = cleanup {
            self.remove_quietly(&h, &path).await;
        }
    }

    async fn kill_quietly(&self, h: &Handle, pid: u32) {
        if let Err(e) = self.kill_tree(h, pid, 9).await {
            tracing::debug!(sandbox_id = %h.id, pid, error = %e, "killing a process tree failed (it may have ended)");
        }
    }

    /// Sends `signal` to the descendants of `pid` and to `pid` (through `SendSignal` for SIGTERM and SIGKILL, which
    /// envd's API names).
    pub(crate) async fn kill_tree(&self, h: &Handle, pid: u32, signal: i32) -> Result<()> {
        let via_envd = matches!(signal, 9 | 15);
        let start = StartRequest {
            process: ProcessConfig {
                cmd: "/bin/bash".into(),
                args: vec![
                    "-c".into(),
                    KILL_TREE.into(),
                    "agentbox-kill-tree".into(),
                    pid.to_string(),
                    signal.to_string(),
                    if via_envd { "0".into() } else { "1".into() },
                ],
                envs: BTreeMap::new(),
                cwd: None,
            },
            tag: None,
            stdin: Some(false),
            pty: None,
        };
        let subject = format!("process {pid}");
        let call = Call {
            plane: Plane::Sandbox,
            action: "signal a process tree",
            subject: &subject,
            sandbox: Some(h.id.as_str()),
        };
        let timeout = self.config.timeouts.request;
        let (_, mut stream) = self.start_process(h, &start, Some(timeout), call).await?;
        tokio::time::timeout(timeout, async {
            while let Some(event) = stream.next().await? {
                if event.end.is_some() {
                    break;
                }
            }
            Ok::<(), Error>(())
        })
        .await
        .map_err(|_| {
            Error::Timeout(format!("signalling the descendants of process {pid} took longer than {timeout:?}"))
        })??;
        if via_envd {
            let body = ProcessRequest {
                process: PidSelector { pid },
                input: None,
                signal: Some(if signal == 9 { "SIGNAL_SIGKILL" } else { "SIGNAL_SIGTERM" }.into()),
            };
            let call = Call {
                plane: Plane::Sandbox,
                action: "signal the process",
                subject: &subject,
                sandbox: Some(h.id.as_str()),
            };
            let sent: Result<serde_json::Value> =
                self.envd_unary(h, "process.Process/SendSignal", &body, ONCE, call).await;
            match sent {
                // It ended between the tree walk and the signal (often because its children were just killed).
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) async fn spawn_background(
        self: &Arc<Self>,
        id: &SandboxId,
        request: ExecRequest,
    ) -> Result<ProcessInfo> {
        let argv = request.to_argv()?;
        let h = self.ready(id, self.config.timeouts.request).await?;
        let tag = format!("{BACKGROUND_TAG}{}-{}", mapping::now_ms(), self.next_seq());
        let output_path = format!("{BACKGROUND_DIR}/{tag}.log");
        let redirect = if let Some(data) = &request.stdin {
            self.write_file_on(&h, &format!("{output_path}.stdin"), data.clone()).await?;
            "<\"$0.stdin\""
        } else {
            "</dev/null"
        };
        let mut config = self
            .process_config(&ExecRequest { command: Command::Argv(argv.clone()), ..request.clone() }, argv.clone())?;
        let mut args = vec![
            "-c".to_owned(),
            format!("mkdir -p -- \"${{0%/*}}\" && exec \"$@\" >\"$0\" 2>&1 {redirect}"),
            output_path.clone(),
        ];
        args.push(std::mem::take(&mut config.cmd));
        args.append(&mut config.args);
        config.cmd = "/bin/bash".into();
        config.args = args;
        let start = StartRequest { process: config, tag: Some(tag), stdin: Some(false), pty: None };
        let action = format!("start {} in the background", argv.join(" "));
        let subject = format!("the program or working directory of `{}`", argv.join(" "));
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &subject, sandbox: Some(id.as_str()) };
        let (pid, stream) = self.start_process(&h, &start, request.timeout, call).await?;
        h.lock()
            .processes
            .insert(pid, Tracked { argv: argv.clone(), output_path: output_path.clone(), exit: None, watching: true });
        let inner = self.clone();
        let deadline = request.timeout.map(|t| Instant::now() + t);
        tokio::spawn(async move { inner.watch(h, pid, stream, deadline).await });
        Ok(ProcessInfo { pid, argv, running: true, exit_code: None, output_path: Some(output_path) })
    }

    /// Records a background process's exit code when its stream reports it.
    async fn watch(self: Arc<Self>, h: Arc<Handle>, pid: u32, mut stream: ProcessStream, deadline: Option<Instant>) {
        let started = Instant::now();
        let exit = loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, stream.next()).await.ok(),
                    None => Some(stream.next().await),
                }
            };
            match next.await {
                Some(Ok(Some(event))) => {
                    if let Some(end) = event.end {
                        break Some(mapping::exit_status(&end, started.elapsed()).exit_code);
                    }
                }
                Some(Ok(None)) => break None,
                Some(Err(e)) => {
                    tracing::debug!(sandbox_id = %h.id, pid, error = %e, "lost the stream of a background process");
                    break None;
                }
                None => {
                    self.kill_quietly(&h, pid).await;
                    break Some(124);
                }
            }
        };
        if let Some(t) = h.lock().processes.get_mut(&pid) {
            t.exit = exit;
            t.watching = false;
        }
    }

    async fn listed(&self, h: &Handle) -> Result<ListResponse> {
        let subject = format!("sandbox {}", h.id);
        let call =
            Call { plane: Plane::Sandbox, action: "list processes", subject: &subject, sandbox: Some(h.id.as_str()) };
        self.envd_unary(h, "process.Process/List", &serde_json::json!({}), SANDBOX_IDEMPOTENT, call).await
    }

    pub(crate) async fn list_processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>> {
        let h = self.ready(id, self.config.timeouts.request).await?;
        let listed = self.listed(&h).await?;
        let alive: HashMap<u32, _> = listed.processes.iter().map(|p| (p.pid, p)).collect();
        let st = h.lock();
        let mut out: Vec<ProcessInfo> = st
            .processes
            .iter()
            .map(|(&pid, t)| ProcessInfo {
                pid,
                argv: t.argv.clone(),
                // Gone from envd's list but still watched: its end event is on its way, so it still counts as running.
                running: t.exit.is_none() && (alive.contains_key(&pid) || t.watching),
                exit_code: t.exit,
                output_path: Some(t.output_path.clone()),
            })
            .collect();
        for p in &listed.processes {
            let ours = p.tag.as_deref().is_some_and(|t| t.starts_with(BACKGROUND_TAG));
            if ours && !st.processes.contains_key(&p.pid) {
                // Started by an earlier process of this backend: bash -c SCRIPT OUTPUT ARGV...
                out.push(ProcessInfo {
                    pid: p.pid,
                    argv: p.config.args.iter().skip(3).cloned().collect(),
                    running: true,
                    exit_code: None,
                    output_path: p.config.args.get(2).cloned(),
                });
            }
        }
        out.sort_by_key(|p| p.pid);
        Ok(out)
    }

    pub(crate) async fn kill_process(&self, id: &SandboxId, pid: u32, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(Error::InvalidRequest(format!("signal {signal} is not a signal number (1 to 64)")));
        }
        let h = self.ready(id, self.config.timeouts.request).await?;
        let tracked_ended = h.lock().processes.get(&pid).map(|t| t.exit.is_some());
        let listed = self.listed(&h).await?;
        let running = listed.processes.iter().any(|p| p.pid == pid);
        match (running, tracked_ended) {
            (true, _) => self.kill_tree(&h, pid, signal).await,
            (false, Some(_)) => Ok(()),
            (false, None) => Err(Error::NotFound(format!("process {pid} in sandbox {id}"))),
        }
    }

    /// Removes a temporary file after a run, logging instead of failing.
    async fn remove_quietly(&self, h: &Handle, path: &str) {
        let body = crate::wire::PathRequest { path: path.to_owned() };
        let call = Call {
            plane: Plane::Sandbox,
            action: "remove a temporary file",
            subject: path,
            sandbox: Some(h.id.as_str()),
        };
        let result: Result<serde_json::Value> =
            self.envd_unary(h, "filesystem.Filesystem/Remove", &body, ONCE, call).await;
        if let Err(e) = result {
            tracing::debug!(sandbox_id = %h.id, path, error = %e, "removing a temporary file failed");
        }
    }
}
