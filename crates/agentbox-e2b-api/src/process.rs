//! envd's `process.Process` service over the manager's executions.
//!
//! A command runs under a tiny `sh` wrapper that writes its own pid (the pid inside the sandbox, which `exec` then
//! hands to the command) as the first line of its output and `exec`s the command. The host reads that line, at
//! most [`PID_LINE_BYTES`] bytes of decimal digits, and nothing else the sandbox writes; the rest of the output
//! is passed on as it came. The process's output is fanned out to every stream attached to it (`Start`, then
//! any `Connect`) through a bounded broadcast channel, and it keeps running when those streams go away, as under
//! envd. Signals are sent from inside the sandbox to the process's group (`kill -- -PID`).
//!
//! A process started with `stdin: true` reads a FIFO in `/tmp` whose write end a sleeping holder keeps open:
//! `SendInput` appends to the FIFO from a short process in the sandbox, `CloseStdin` ends the holder, so the
//! command reads end-of-file.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbox_core::{
    Command, ExecEvent, ExecRequest, ExitStatus, LockExt as _, RunId, SandboxManager, SandboxState, TerminalInput,
    TerminalRequest, TerminalSize,
};
use agentbox_e2b_wire::wire::{DataEvent, EndEvent, ListedProcess, ProcessConfig, ProcessEvent, StartEvent};
use tokio::sync::broadcast;

use crate::E2bApiError;

/// The FIFO of a process's stdin, inside the sandbox (`{STDIN_FIFO}{pid}`; the holder's pid in `.h` beside it).
const STDIN_FIFO: &str = "/tmp/.agentbox-e2b-stdin-";
/// Most bytes of the wrapper's pid line (digits and the newline).
pub const PID_LINE_BYTES: usize = 12;
/// How long a SIGKILL waits for the process's exit to come through.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long a start may take to report its pid.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pids given to processes whose wrapper reported none (it failed before the command started), counted down from
/// here so they can't be a sandbox's own.
const SYNTHETIC_PID: u32 = u32::MAX - 1;
/// Output events buffered for slow streams before they miss some.
const EVENT_BUFFER: usize = 1024;
/// Most processes started through envd alive at once in one sandbox.
pub const MAX_PROCESSES: usize = 256;

/// One process started through envd.
#[derive(Debug)]
pub struct Proc {
    /// Its pid (this API's).
    pub pid: u32,
    /// How it was started.
    pub config: ProcessConfig,
    /// Its tag.
    pub tag: Option<String>,
    /// Whether its stdin is a FIFO taking `SendInput`.
    pub stdin: bool,
    /// Its terminal's input, when it runs on one.
    terminal: Option<tokio::sync::mpsc::Sender<TerminalInput>>,
    events: broadcast::Sender<ProcessEvent>,
}

impl Proc {
    /// A receiver of its events from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        self.events.subscribe()
    }
}

/// What `Start` asks for.
#[derive(Debug, Clone, Default)]
pub struct StartSpec {
    /// The program, arguments, environment and working directory.
    pub config: ProcessConfig,
    /// A tag to find it by.
    pub tag: Option<String>,
    /// Keep stdin open for `SendInput`.
    pub stdin: bool,
    /// Run it on a terminal of this size.
    pub pty: Option<TerminalSize>,
    /// The user the call named (`root`, or the sandbox's `user`); the sandbox's user when absent.
    pub user: Option<String>,
}

/// A sandbox's processes.
#[derive(Debug)]
pub struct Table {
    next: AtomicU32,
    procs: Arc<Mutex<HashMap<u32, Arc<Proc>>>>,
    /// Set when the sandbox is being killed: its processes' streams then end with that, not an exit status.
    gone: Arc<AtomicBool>,
}

impl Default for Table {
    fn default() -> Self {
        Self { next: AtomicU32::new(SYNTHETIC_PID), procs: Arc::default(), gone: Arc::default() }
    }
}

/// What the head of a process's output says about its pid.
#[derive(Debug, PartialEq, Eq)]
enum PidLine {
    /// No whole line yet.
    Pending,
    /// The pid, and the output after its line.
    Pid(u32, Vec<u8>),
    /// Not a pid line: all of it is output.
    NotAPid(Vec<u8>),
}

/// Reads the wrapper's pid line from the head of the output.
fn pid_line(head: &[u8]) -> PidLine {
    match head.iter().position(|b| *b == b'\n') {
        Some(i) if i < PID_LINE_BYTES => {
            // A terminal writes the newline as `\r\n`.
            let digits = head[..i].strip_suffix(b"\r").unwrap_or(&head[..i]);
            match std::str::from_utf8(digits).ok().and_then(|t| t.parse::<u32>().ok()).filter(|p| *p > 0) {
                Some(pid) => PidLine::Pid(pid, head[i + 1..].to_vec()),
                None => PidLine::NotAPid(head.to_vec()),
            }
        }
        Some(_) => PidLine::NotAPid(head.to_vec()),
        None if head.len() >= PID_LINE_BYTES => PidLine::NotAPid(head.to_vec()),
        None => PidLine::Pending,
    }
}

fn data(stdout: Option<Vec<u8>>, stderr: Option<Vec<u8>>) -> ProcessEvent {
    ProcessEvent { data: Some(DataEvent { stdout, stderr, pty: None }), ..ProcessEvent::default() }
}

/// Runs a short shell script in the sandbox, with `input` on its stdin.
async fn sandbox_sh(
    manager: &SandboxManager,
    run: &RunId,
    script: &str,
    input: Option<Vec<u8>>,
    what: &'static str,
) -> Result<agentbox_core::ExecOutput, E2bApiError> {
    let request = ExecRequest {
        timeout: Some(Duration::from_secs(10)),
        stdin: input,
        ..ExecRequest::argv(["/bin/sh", "-c", script])
    };
    manager.exec_collect(run, request).await.map_err(E2bApiError::sandbox(what))
}

/// A process's signal, by envd's enum name.
fn signal_name(signal: &str) -> Result<&'static str, E2bApiError> {
    Ok(match signal {
        "SIGNAL_SIGKILL" | "9" => "KILL",
        "SIGNAL_SIGTERM" | "15" => "TERM",
        "SIGNAL_SIGINT" | "2" => "INT",
        "SIGNAL_SIGHUP" | "1" => "HUP",
        "SIGNAL_SIGQUIT" | "3" => "QUIT",
        other => {
            return Err(E2bApiError::BadRequest(format!(
                "signal {other:?} is not supported: use SIGNAL_SIGKILL, SIGNAL_SIGTERM, SIGNAL_SIGINT, SIGNAL_SIGHUP or SIGNAL_SIGQUIT"
            )));
        }
    })
}

/// envd's end event for an exit status (`exitCode` -1 and `signal: killed` for a signal).
#[must_use]
pub fn end_event(status: &ExitStatus) -> EndEvent {
    if let Some(sig) = status.signal {
        let name = match sig {
            9 => "killed".to_owned(),
            15 => "terminated".to_owned(),
            2 => "interrupt".to_owned(),
            1 => "hangup".to_owned(),
            n => format!("signal {n}"),
        };
        return EndEvent { exit_code: -1, exited: false, status: format!("signal: {name}"), error: None };
    }
    let error = if status.timed_out {
        Some("the process was killed at its time limit".to_owned())
    } else if status.oom_killed {
        Some("the process was killed for running out of memory".to_owned())
    } else {
        None
    };
    EndEvent { exit_code: status.exit_code, exited: true, status: format!("exit status {}", status.exit_code), error }
}

impl Table {
    /// Marks the sandbox as going away.
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
    }

    /// The process `pid`.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] when there is no such running process.
    pub fn get(&self, pid: u32) -> Result<Arc<Proc>, E2bApiError> {
        self.procs.lock_unpoisoned().get(&pid).cloned().ok_or_else(|| {
            E2bApiError::NotFound(format!("process with pid {pid} not found (it has exited, or never ran)"))
        })
    }

    /// The process with `tag`.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] when there is none.
    pub fn by_tag(&self, tag: &str) -> Result<Arc<Proc>, E2bApiError> {
        self.procs
            .lock_unpoisoned()
            .values()
            .find(|p| p.tag.as_deref() == Some(tag))
            .cloned()
            .ok_or_else(|| E2bApiError::NotFound(format!("process with tag {tag:?} not found")))
    }

    /// The running processes, by pid.
    #[must_use]
    pub fn list(&self) -> Vec<ListedProcess> {
        let mut all: Vec<ListedProcess> = self
            .procs
            .lock_unpoisoned()
            .values()
            .map(|p| ListedProcess { config: p.config.clone(), pid: p.pid, tag: p.tag.clone() })
            .collect();
        all.sort_by_key(|p| p.pid);
        all
    }

    /// Starts a process; returns it, once its pid is known, with a receiver subscribed before its first output.
    ///
    /// # Errors
    /// [`E2bApiError::LimitReached`] past [`MAX_PROCESSES`], or the manager's error starting it.
    pub async fn start(
        &self,
        manager: &SandboxManager,
        run: &RunId,
        spec: StartSpec,
        time_limit: Duration,
    ) -> Result<(Arc<Proc>, broadcast::Receiver<ProcessEvent>), E2bApiError> {
        let StartSpec { config, tag, stdin, pty, user } = spec;
        // E2B's default user is the sandbox's user; root runs as root inside.
        let user = user.filter(|u| u != "user");
        // A terminal is its process's stdin.
        let stdin = stdin && pty.is_none();
        if self.procs.lock_unpoisoned().len() >= MAX_PROCESSES {
            return Err(E2bApiError::LimitReached(format!(
                "{MAX_PROCESSES} processes are running in this sandbox, the limit; kill some first"
            )));
        }
        let script = if stdin {
            // The holder's open of the FIFO for writing completes when the command opens it for reading.
            format!(
                "f={STDIN_FIFO}$$; mkfifo -m 600 \"$f\" || exit 127; sleep 2147483647 > \"$f\" & echo $! > \"$f.h\"; \
                 echo $$; exec \"$@\" < \"$f\""
            )
        } else {
            "echo $$; exec \"$@\"".to_owned()
        };
        let mut argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script, "sh".to_owned(), config.cmd.clone()];
        argv.extend(config.args.iter().cloned());
        let cwd = config.cwd.clone().filter(|c| !c.is_empty());
        let env = config.envs.clone().into_iter().collect::<BTreeMap<_, _>>();
        let (mut stream, terminal) = match pty {
            Some(size) => {
                let request = TerminalRequest { command: Some(Command::Argv(argv)), cwd, env, size };
                let t = manager
                    .open_terminal(run, request)
                    .await
                    .map_err(E2bApiError::sandbox("starting the process on a terminal"))?;
                (t.output, Some(t.input))
            }
            None => {
                let request = ExecRequest { cwd, env, timeout: Some(time_limit), user, ..ExecRequest::argv(argv) };
                let stream = manager.exec(run, request).await.map_err(E2bApiError::sandbox("starting the process"))?;
                (stream, None)
            }
        };
        let on_pty = terminal.is_some();
        // Terminal output goes out as `pty` data, the rest as stdout and stderr.
        let out = move |b: Vec<u8>| {
            if on_pty {
                ProcessEvent {
                    data: Some(DataEvent { pty: Some(b), ..DataEvent::default() }),
                    ..ProcessEvent::default()
                }
            } else {
                data(Some(b), None)
            }
        };
        let (tx, rx) = broadcast::channel(EVENT_BUFFER);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Arc<Proc>>();
        let procs = self.procs.clone();
        let next = self.next.fetch_sub(1, Ordering::Relaxed);
        let cleanup = (manager.clone(), run.clone());
        let gone = self.gone.clone();
        tokio::spawn(async move {
            let mut started = Some(started_tx);
            let mut head = Vec::new();
            let mut pid = None;
            let register = |pid: u32, started: &mut Option<tokio::sync::oneshot::Sender<Arc<Proc>>>| {
                let proc = Arc::new(Proc {
                    pid,
                    config: config.clone(),
                    tag: tag.clone(),
                    stdin,
                    terminal: terminal.clone(),
                    events: tx.clone(),
                });
                procs.lock_unpoisoned().insert(pid, proc.clone());
                if let Some(s) = started.take() {
                    let _ = s.send(proc);
                }
            };
            while let Some(event) = stream.next().await {
                let event = match (event, pid) {
                    (ExecEvent::Stdout(b), None) => {
                        head.extend_from_slice(&b);
                        let (p, rest) = match pid_line(&head) {
                            PidLine::Pending => continue,
                            PidLine::Pid(p, rest) => (p, rest),
                            PidLine::NotAPid(all) => (next, all),
                        };
                        pid = Some(p);
                        register(p, &mut started);
                        if rest.is_empty() {
                            continue;
                        }
                        out(rest)
                    }
                    (ExecEvent::Stdout(b), Some(_)) => out(b),
                    (ExecEvent::Stderr(b), _) => data(None, Some(b)),
                    (ExecEvent::Exit(status), p) => {
                        let p = p.unwrap_or_else(|| {
                            register(next, &mut started);
                            next
                        });
                        pid = Some(p);
                        // Gone from the table before the end is seen, so a kill after the end finds nothing.
                        procs.lock_unpoisoned().remove(&p);
                        let destroyed = cleanup.0.get(&cleanup.1).map_or(true, |s| s.state == SandboxState::Destroying);
                        if gone.load(Ordering::Acquire) || destroyed {
                            // The sandbox itself is gone: the streams end with that error, not an exit status.
                            break;
                        }
                        if !head.is_empty() && pid_line(&head) == PidLine::Pending {
                            let _ = tx.send(out(std::mem::take(&mut head)));
                        }
                        ProcessEvent { end: Some(end_event(&status)), ..ProcessEvent::default() }
                    }
                };
                // No receiver at the moment is fine: the process runs on, as under envd.
                let _ = tx.send(event);
            }
            if let Some(p) = pid {
                procs.lock_unpoisoned().remove(&p);
                if stdin {
                    let (manager, run) = cleanup;
                    let script = format!("f={STDIN_FIFO}{p}; kill $(cat \"$f.h\") 2>/dev/null; rm -f \"$f\" \"$f.h\"");
                    let _ = sandbox_sh(&manager, &run, &script, None, "cleaning up stdin").await;
                }
            }
        });
        let proc = tokio::time::timeout(START_TIMEOUT, started_rx)
            .await
            .map_err(|_| E2bApiError::Internal(format!("the process did not start within {START_TIMEOUT:?}")))?
            .map_err(|_| E2bApiError::Internal("the process ended before it started".into()))?;
        Ok((proc, rx))
    }

    /// Sends `signal` (envd's enum name) to the process and its process group, from inside the sandbox.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for an unknown pid, [`E2bApiError::BadRequest`] for an unknown signal, or the
    /// manager's error.
    pub async fn signal(
        &self,
        manager: &SandboxManager,
        run: &RunId,
        pid: u32,
        signal: &str,
    ) -> Result<(), E2bApiError> {
        let name = signal_name(signal)?;
        self.get(pid)?;
        let script = format!("kill -s {name} -- -{pid} 2>/dev/null || kill -s {name} {pid}");
        let out = sandbox_sh(manager, run, &script, None, "signalling the process").await?;
        if out.exit_code != 0 && self.get(pid).is_ok() {
            return Err(E2bApiError::Internal(format!(
                "signalling process {pid} failed (exit {}): {}",
                out.exit_code,
                out.stderr.trim()
            )));
        }
        if name == "KILL" {
            // As under envd, a killed process is gone (reaped) when the call returns, so `kill -0 PID` right
            // after fails. It leaves the table when its exit comes through, at once for SIGKILL.
            let deadline = tokio::time::Instant::now() + KILL_WAIT;
            while self.get(pid).is_ok() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Writes `input` to the process's stdin.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for an unknown pid, [`E2bApiError::Conflict`] for a process without stdin, or
    /// the manager's error.
    pub async fn send_input(
        &self,
        manager: &SandboxManager,
        run: &RunId,
        pid: u32,
        input: Vec<u8>,
    ) -> Result<(), E2bApiError> {
        self.with_stdin(pid)?;
        let script = format!("cat >> {STDIN_FIFO}{pid}");
        let out = sandbox_sh(manager, run, &script, Some(input), "writing to the process's stdin").await?;
        if out.exit_code != 0 {
            return Err(E2bApiError::Internal(format!(
                "writing to the stdin of process {pid} failed (exit {}): {}",
                out.exit_code,
                out.stderr.trim()
            )));
        }
        Ok(())
    }

    /// Closes the process's stdin: it reads end-of-file.
    ///
    /// # Errors
    /// As [`send_input`](Self::send_input).
    pub async fn close_stdin(&self, manager: &SandboxManager, run: &RunId, pid: u32) -> Result<(), E2bApiError> {
        self.with_stdin(pid)?;
        let script = format!("f={STDIN_FIFO}{pid}; [ -s \"$f.h\" ] && kill $(cat \"$f.h\") 2>/dev/null; true");
        sandbox_sh(manager, run, &script, None, "closing the process's stdin").await?;
        Ok(())
    }

    /// Sends input or a resize to the process's terminal.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for an unknown pid, [`E2bApiError::Conflict`] for a process without a terminal.
    pub async fn to_terminal(&self, pid: u32, input: TerminalInput) -> Result<(), E2bApiError> {
        let proc = self.get(pid)?;
        let Some(terminal) = &proc.terminal else {
            return Err(E2bApiError::Conflict(format!(
                "process {pid} has no terminal; start it with a pty to send it terminal input or resize it"
            )));
        };
        terminal
            .send(input)
            .await
            .map_err(|_| E2bApiError::NotFound(format!("process with pid {pid} not found (its terminal has closed)")))
    }

    fn with_stdin(&self, pid: u32) -> Result<Arc<Proc>, E2bApiError> {
        let proc = self.get(pid)?;
        if proc.stdin {
            Ok(proc)
        } else {
            Err(E2bApiError::Conflict(format!(
                "process {pid} was started without stdin; start it with stdin=True to send it input"
            )))
        }
    }
}

/// A start event.
#[must_use]
pub fn start_event(pid: u32) -> ProcessEvent {
    ProcessEvent { start: Some(StartEvent { pid }), ..ProcessEvent::default() }
}

/// A keepalive event.
#[must_use]
pub fn keepalive_event() -> ProcessEvent {
    ProcessEvent { keepalive: Some(serde_json::json!({})), ..ProcessEvent::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_envd_writes_them() {
        let status = |exit_code, signal| ExitStatus {
            exit_code,
            signal,
            timed_out: false,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        let ok = serde_json::to_value(end_event(&status(0, None))).unwrap();
        assert_eq!(ok, serde_json::json!({"exited": true, "status": "exit status 0"}), "exitCode 0 is omitted");
        let failed = serde_json::to_value(end_event(&status(3, None))).unwrap();
        assert_eq!(failed["exitCode"], 3);
        let killed = serde_json::to_value(end_event(&status(137, Some(9)))).unwrap();
        assert_eq!(killed, serde_json::json!({"exitCode": -1, "status": "signal: killed"}));
        assert_eq!(signal_name("SIGNAL_SIGKILL").unwrap(), "KILL");
        assert!(signal_name("SIGNAL_SIGSEGV").is_err());
        assert_eq!(pid_line(b"123\nrest"), PidLine::Pid(123, b"rest".to_vec()));
        assert_eq!(pid_line(b"12"), PidLine::Pending, "a partial line waits for more");
        assert_eq!(pid_line(b"77\r\n$ "), PidLine::Pid(77, b"$ ".to_vec()), "a terminal's line end");
        assert_eq!(pid_line(b"x1\n"), PidLine::NotAPid(b"x1\n".to_vec()));
        assert_eq!(pid_line(b"0\n"), PidLine::NotAPid(b"0\n".to_vec()));
        assert!(matches!(pid_line(b"123456789012345"), PidLine::NotAPid(_)), "an overlong line is not a pid");
    }
}
