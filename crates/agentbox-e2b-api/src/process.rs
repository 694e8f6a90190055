//! envd's `process.Process` service over the manager's executions.
//!
//! A process gets a pid of this API's own (unique in its sandbox); its output is fanned out to every stream
//! attached to it (`Start`, then any `Connect`) through a bounded broadcast channel, and it keeps running when
//! those streams go away, as under envd. Signals are delivered from inside the sandbox: the process is started
//! through a tiny `sh` wrapper that records its real pid in `/tmp` and `exec`s the command, so a later `kill` run
//! in the sandbox reads that file there. The host never reads it: nothing the sandbox writes is parsed here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbox_core::{ExecEvent, ExecRequest, ExitStatus, LockExt as _, RunId, SandboxManager};
use agentbox_e2b_wire::wire::{DataEvent, EndEvent, ListedProcess, ProcessConfig, ProcessEvent, StartEvent};
use tokio::sync::broadcast;

use crate::E2bApiError;

/// Where the wrapper records a process's real pid, inside the sandbox.
const PID_DIR: &str = "/tmp/.agentbox-e2b-pid-";
/// Output events buffered for slow streams before they miss some.
const EVENT_BUFFER: usize = 1024;
/// Most processes started through envd alive at once in one sandbox.
pub const MAX_PROCESSES: usize = 256;
/// The first pid handed out.
const FIRST_PID: u32 = 1000;

/// One process started through envd.
#[derive(Debug)]
pub struct Proc {
    /// Its pid (this API's).
    pub pid: u32,
    /// How it was started.
    pub config: ProcessConfig,
    /// Its tag.
    pub tag: Option<String>,
    events: broadcast::Sender<ProcessEvent>,
}

impl Proc {
    /// A receiver of its events from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        self.events.subscribe()
    }
}

/// A sandbox's processes.
#[derive(Debug)]
pub struct Table {
    next: AtomicU32,
    procs: Arc<Mutex<HashMap<u32, Arc<Proc>>>>,
}

impl Default for Table {
    fn default() -> Self {
        Self { next: AtomicU32::new(FIRST_PID), procs: Arc::default() }
    }
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

    /// Starts a process; returns it with a receiver subscribed before its first output.
    ///
    /// # Errors
    /// [`E2bApiError::LimitReached`] past [`MAX_PROCESSES`], or the manager's error starting it.
    pub async fn start(
        &self,
        manager: &SandboxManager,
        run: &RunId,
        config: ProcessConfig,
        tag: Option<String>,
        time_limit: Duration,
    ) -> Result<(Arc<Proc>, broadcast::Receiver<ProcessEvent>), E2bApiError> {
        if self.procs.lock_unpoisoned().len() >= MAX_PROCESSES {
            return Err(E2bApiError::LimitReached(format!(
                "{MAX_PROCESSES} processes are running in this sandbox, the limit; kill some first"
            )));
        }
        let pid = self.next.fetch_add(1, Ordering::Relaxed);
        let script = format!("echo $$ > {PID_DIR}{pid} && exec \"$@\"");
        let mut argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script, "sh".to_owned(), config.cmd.clone()];
        argv.extend(config.args.iter().cloned());
        let request = ExecRequest {
            cwd: config.cwd.clone().filter(|c| !c.is_empty()),
            env: config.envs.clone().into_iter().collect::<BTreeMap<_, _>>(),
            timeout: Some(time_limit),
            ..ExecRequest::argv(argv)
        };
        let mut stream = manager.exec(run, request).await.map_err(E2bApiError::sandbox("starting the process"))?;
        let (tx, rx) = broadcast::channel(EVENT_BUFFER);
        let proc = Arc::new(Proc { pid, config, tag, events: tx.clone() });
        self.procs.lock_unpoisoned().insert(pid, proc.clone());
        let procs = self.procs.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let event = match event {
                    ExecEvent::Stdout(b) => ProcessEvent {
                        data: Some(DataEvent { stdout: Some(b), ..DataEvent::default() }),
                        ..ProcessEvent::default()
                    },
                    ExecEvent::Stderr(b) => ProcessEvent {
                        data: Some(DataEvent { stderr: Some(b), ..DataEvent::default() }),
                        ..ProcessEvent::default()
                    },
                    ExecEvent::Exit(status) => {
                        // Gone from the table before the end is seen, so a kill after the end finds nothing.
                        procs.lock_unpoisoned().remove(&pid);
                        ProcessEvent { end: Some(end_event(&status)), ..ProcessEvent::default() }
                    }
                };
                // No receiver at the moment is fine: the process runs on, as under envd.
                let _ = tx.send(event);
            }
            procs.lock_unpoisoned().remove(&pid);
        });
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
        let proc = self.get(pid)?;
        // The wrapper writes the file before exec; a signal sent right after Start waits for it (up to 2 s).
        let script = format!(
            "f={PID_DIR}{pid}; i=0; while [ ! -s \"$f\" ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done; \
             p=$(cat \"$f\") || exit 3; kill -s {name} -- -\"$p\" 2>/dev/null || kill -s {name} \"$p\""
        );
        let request =
            ExecRequest { timeout: Some(Duration::from_secs(10)), ..ExecRequest::argv(["/bin/sh", "-c", &script]) };
        let out = manager.exec_collect(run, request).await.map_err(E2bApiError::sandbox("signalling the process"))?;
        if out.exit_code != 0 && self.get(proc.pid).is_ok() {
            return Err(E2bApiError::Internal(format!(
                "signalling process {pid} failed (exit {}): {}",
                out.exit_code,
                out.stderr.trim()
            )));
        }
        Ok(())
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
    }
}
