//! Kept terminals: terminals that outlive their client, so a client whose connection drops (or who
//! detaches on purpose) can come back to the running process and see what it printed meanwhile.
//!
//! The [`SandboxManager`](crate::SandboxManager) keeps them per run
//! ([`open_kept_terminal`](crate::SandboxManager::open_kept_terminal),
//! [`attach_terminal`](crate::SandboxManager::attach_terminal),
//! [`terminals`](crate::SandboxManager::terminals),
//! [`close_terminal`](crate::SandboxManager::close_terminal)), whatever the backend. The rules:
//!
//! - Each kept terminal has an id, unique in the manager, and keeps the last
//!   [`TERMINAL_BUFFER_BYTES`] of its output (the oldest bytes go first; how many went is counted).
//!   It runs on with no client attached: its output goes to the buffer only.
//! - One client is attached at a time. Attaching replays the buffer, then continues live, with nothing
//!   missed or repeated between the two. A second attach takes over: the first client's output ends
//!   (without an exit) and its input is refused. A client that reads nothing of its queued output for
//!   [`SLOW_CLIENT_WAIT`] is detached the same way, so the process's output is read on.
//! - Detaching (dropping the [`AttachedTerminal`]) leaves the process running. Closing hangs it up
//!   (`SIGHUP`, as when a terminal window closes) and forgets it; a process that outlives the hang-up by
//!   [`HANGUP_GRACE`] is no longer read.
//! - When the process exits, its exit goes to the attached client and the terminal is forgotten. With no
//!   client attached, the terminal stays listed as exited, with its buffer and exit status, for
//!   [`EXITED_TERMINAL_KEEP`], so a later attach still gets both (and that attach forgets it). A run
//!   keeps at most [`MAX_TERMINALS_PER_RUN`] exited terminals: a newer exit forgets the oldest. A
//!   forgotten terminal's buffer is freed at once.
//! - Destroying, stopping or recreating the run's sandbox, or shutting the manager down, closes the
//!   run's kept terminals.
//! - At most [`MAX_TERMINALS_PER_RUN`] of a run's kept terminals may be running at once.
//! - A running kept terminal counts as an execution in flight, as an attached terminal does: its
//!   sandbox does not idle out under it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::{Terminal, TerminalInput, TerminalSize};
use crate::types::{Command, ExecEvent, ExecStream, ExitStatus, RunId};
use crate::{Error, LockExt, Result};

/// How much of a kept terminal's recent output is kept for the next attach (256 KiB).
pub const TERMINAL_BUFFER_BYTES: usize = 256 * 1024;

/// How many kept terminals a run may have running at once.
pub const MAX_TERMINALS_PER_RUN: usize = 8;

/// How long an exited kept terminal that no client saw exit stays listed and attachable.
pub const EXITED_TERMINAL_KEEP: Duration = Duration::from_secs(300);

/// How long a closed kept terminal's process is still read after its hang-up, for its exit.
pub const HANGUP_GRACE: Duration = Duration::from_secs(10);

/// Output events queued for an attached client before the terminal waits for it (as a slow
/// connection slows a remote shell).
const ATTACH_QUEUE: usize = 64;

/// How long a kept terminal waits for an attached client that reads none of its queued output before
/// it detaches that client (whose reattach replays the buffer). The terminal's output is its sandbox's
/// to read on, so a client that stopped reading must not hold it up for longer.
pub const SLOW_CLIENT_WAIT: Duration = Duration::from_secs(5);

/// The last `cap` bytes of a stream, and how many bytes before them were dropped.
#[derive(Debug, Clone)]
pub(crate) struct RingBuffer {
    cap: usize,
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl RingBuffer {
    /// An empty buffer keeping at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self { cap, bytes: VecDeque::new(), dropped: 0 }
    }

    /// Appends `chunk`, dropping the oldest bytes past the cap.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let keep = &chunk[chunk.len().saturating_sub(self.cap)..];
        let skipped = chunk.len() - keep.len();
        self.bytes.extend(keep);
        let excess = self.bytes.len().saturating_sub(self.cap);
        self.bytes.drain(..excess);
        self.dropped += (skipped + excess) as u64;
    }

    /// The kept bytes, oldest first.
    pub(crate) fn contents(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// How many bytes are kept.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// How many bytes were dropped to stay within the cap.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A kept terminal as listed.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TerminalSessionInfo {
    /// Its id, for attaching and closing.
    pub id: String,
    /// What runs on it (`bash -l` for a login shell).
    pub command: String,
    /// Its size, as last set.
    pub size: TerminalSize,
    /// When it was opened, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Whether a client is attached.
    pub attached: bool,
    /// Whether its process has exited.
    pub exited: bool,
    /// The exit code, once exited.
    pub exit_code: Option<i32>,
    /// Bytes of output kept for the next attach.
    pub buffered_bytes: u64,
    /// Bytes of output dropped from the start of the buffer to keep it within its cap.
    pub dropped_bytes: u64,
}

/// A client's attachment to a kept terminal: the buffered output, then the live output, and the input.
/// Dropping it detaches; the process runs on.
#[derive(Debug)]
pub struct AttachedTerminal {
    /// The kept terminal's id.
    pub id: String,
    /// Bytes of output dropped before the replayed ones (the buffer keeps the last
    /// [`TERMINAL_BUFFER_BYTES`]).
    pub dropped_bytes: u64,
    /// The output: the buffer's contents first, then live output, then the exit.
    pub output: AttachedOutput,
    /// Where input and resizes go.
    pub input: AttachedInput,
}

/// An attached client's output.
#[derive(Debug)]
pub struct AttachedOutput {
    rx: mpsc::Receiver<ExecEvent>,
}

impl AttachedOutput {
    /// The next event: output as [`ExecEvent::Stdout`], then [`ExecEvent::Exit`] when the process
    /// exits. `None` after the exit, or without one when another client took over or the terminal
    /// was closed.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.rx.recv().await
    }
}

/// An attached client's input.
#[derive(Debug, Clone)]
pub struct AttachedInput {
    session: Weak<Session>,
    /// Closed when this attachment ends (another client took over, or the terminal ended).
    attached: watch::Receiver<()>,
}

impl AttachedInput {
    /// Sends typed bytes or a resize to the terminal.
    ///
    /// # Errors
    /// [`Error::Conflict`] when this client is no longer attached: its output was dropped, another
    /// client took over, or the terminal was closed or exited.
    pub async fn send(&self, input: TerminalInput) -> Result<()> {
        let detached = || Error::Conflict("this client is no longer attached to the terminal".into());
        let session = self.session.upgrade().ok_or_else(detached)?;
        {
            // Still the attached client, with its output still read.
            let mut sh = session.shared.lock_unpoisoned();
            if !sh.attached.as_ref().is_some_and(|a| a.connected() && a.alive.same_channel(&self.attached)) {
                return Err(detached());
            }
            if let TerminalInput::Resize(size) = &input {
                sh.size = *size;
            }
        }
        let tx = session.input.lock_unpoisoned().clone().ok_or_else(detached)?;
        let mut attached = self.attached.clone();
        tokio::select! {
            sent = tx.send(input) => sent.map_err(|_| detached()),
            _ = attached.changed() => Err(detached()),
        }
    }
}

/// The attached client's end.
#[derive(Debug)]
struct Attachment {
    tx: mpsc::Sender<ExecEvent>,
    /// Dropped to tell the attachment's input and the output pump that it ended.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

impl Attachment {
    fn connected(&self) -> bool {
        !self.tx.is_closed()
    }
}

#[derive(Debug)]
struct Shared {
    buffer: RingBuffer,
    size: TerminalSize,
    attached: Option<Attachment>,
    exit: Option<ExitStatus>,
}

/// One kept terminal.
#[derive(Debug)]
struct Session {
    id: String,
    run_id: RunId,
    command: String,
    created_ms: u64,
    /// The process's input; taken (dropped) to hang it up.
    input: Mutex<Option<mpsc::Sender<TerminalInput>>>,
    shared: Mutex<Shared>,
    /// Set once the terminal is closed.
    closed: watch::Sender<bool>,
}

impl Session {
    fn info(&self) -> TerminalSessionInfo {
        let sh = self.shared.lock_unpoisoned();
        TerminalSessionInfo {
            id: self.id.clone(),
            command: self.command.clone(),
            size: sh.size,
            created_ms: self.created_ms,
            attached: sh.attached.as_ref().is_some_and(Attachment::connected),
            exited: sh.exit.is_some(),
            exit_code: sh.exit.map(|e| e.exit_code),
            buffered_bytes: sh.buffer.len() as u64,
            dropped_bytes: sh.buffer.dropped(),
        }
    }

    fn running(&self) -> bool {
        self.shared.lock_unpoisoned().exit.is_none()
    }

    /// Hangs the process up; an attached client still gets its exit.
    fn hang_up(&self) {
        self.input.lock_unpoisoned().take();
        self.closed.send_replace(true);
    }

    /// Buffers a chunk and passes it to the attached client.
    async fn deliver(&self, chunk: Vec<u8>) {
        let target = {
            let mut sh = self.shared.lock_unpoisoned();
            sh.buffer.push(&chunk);
            sh.attached.as_ref().filter(|a| a.connected()).map(|a| (a.tx.clone(), a.alive.clone()))
        };
        if let Some((tx, mut alive)) = target {
            // A client taken over meanwhile is not waited for, nor one that stopped reading.
            tokio::select! {
                sent = tokio::time::timeout(SLOW_CLIENT_WAIT, tx.send(ExecEvent::Stdout(chunk))) => {
                    if sent.is_err() {
                        self.detach_slow(&alive);
                    }
                }
                _ = alive.changed() => {}
            }
        }
    }

    /// Detaches the client whose attachment `alive` watches, if it is still the attached one.
    fn detach_slow(&self, alive: &watch::Receiver<()>) {
        let mut sh = self.shared.lock_unpoisoned();
        if sh.attached.as_ref().is_some_and(|a| a.alive.same_channel(alive)) {
            sh.attached = None;
            tracing::debug!(terminal = %self.id, "a client that read none of its output was detached");
        }
    }

    /// Records the exit and passes it to the attached client; answers whether a client got it.
    async fn exited(&self, status: ExitStatus) -> bool {
        let target = {
            let mut sh = self.shared.lock_unpoisoned();
            sh.exit = Some(status);
            sh.attached.take().filter(Attachment::connected)
        };
        match target {
            Some(a) => {
                matches!(tokio::time::timeout(HANGUP_GRACE, a.tx.send(ExecEvent::Exit(status))).await, Ok(Ok(())))
            }
            None => false,
        }
    }
}

/// The kept terminals of every run.
#[derive(Debug, Default)]
pub(crate) struct TerminalSessions {
    runs: Mutex<HashMap<RunId, BTreeMap<String, Arc<Session>>>>,
    next_id: AtomicU64,
}

fn describe(command: Option<&Command>) -> String {
    match command {
        None => "bash -l".to_owned(),
        Some(Command::Shell(line)) => line.clone(),
        Some(Command::Argv(argv)) => argv.join(" "),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TerminalSessions {
    fn limit_error(run: &RunId) -> Error {
        Error::LimitExceeded(format!(
            "run {run} has {MAX_TERMINALS_PER_RUN} kept terminals running, the most it may; close one \
             (DELETE /api/sandboxes/{run}/terminals/ID, listed by GET /api/sandboxes/{run}/terminals) first"
        ))
    }

    fn running_count(runs: &HashMap<RunId, BTreeMap<String, Arc<Session>>>, run: &RunId) -> usize {
        runs.get(run).map_or(0, |m| m.values().filter(|s| s.running()).count())
    }

    /// Refuses a new kept terminal for `run` when it has as many running as it may.
    pub(crate) fn check_room(&self, run: &RunId) -> Result<()> {
        if Self::running_count(&self.runs.lock_unpoisoned(), run) >= MAX_TERMINALS_PER_RUN {
            return Err(Self::limit_error(run));
        }
        Ok(())
    }

    /// Keeps `terminal` as one of `run`'s, and attaches to it.
    pub(crate) fn register(
        self: &Arc<Self>,
        run: &RunId,
        command: Option<&Command>,
        size: TerminalSize,
        terminal: Terminal,
    ) -> Result<AttachedTerminal> {
        let Terminal { output, input } = terminal;
        let id = format!("term-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let session = Arc::new(Session {
            id: id.clone(),
            run_id: run.clone(),
            command: describe(command),
            created_ms: now_ms(),
            input: Mutex::new(Some(input)),
            shared: Mutex::new(Shared {
                buffer: RingBuffer::new(TERMINAL_BUFFER_BYTES),
                size,
                attached: None,
                exit: None,
            }),
            closed: watch::channel(false).0,
        });
        {
            let mut runs = self.runs.lock_unpoisoned();
            if Self::running_count(&runs, run) >= MAX_TERMINALS_PER_RUN {
                // Dropping the terminal here hangs it up.
                return Err(Self::limit_error(run));
            }
            runs.entry(run.clone()).or_default().insert(id.clone(), session.clone());
        }
        let attached = Self::attach_to(&session);
        tokio::spawn(pump(Arc::downgrade(self), session, output));
        Ok(attached)
    }

    fn find(&self, run: &RunId, id: &str) -> Result<Arc<Session>> {
        self.runs.lock_unpoisoned().get(run).and_then(|m| m.get(id)).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "no kept terminal {id:?} in run {run} (it was closed, or exited and was seen or expired); \
                 GET /api/sandboxes/{run}/terminals lists them"
            ))
        })
    }

    /// Keeps at most [`MAX_TERMINALS_PER_RUN`] of `run`'s exited terminals (each holds up to
    /// [`TERMINAL_BUFFER_BYTES`]), forgetting the oldest beyond that.
    fn trim_exited(&self, run: &RunId) {
        let evicted: Vec<Arc<Session>> = {
            let mut runs = self.runs.lock_unpoisoned();
            let Some(m) = runs.get_mut(run) else { return };
            let mut exited: Vec<Arc<Session>> = m.values().filter(|s| !s.running()).cloned().collect();
            exited.sort_by_key(|s| (s.created_ms, s.id.len(), s.id.clone()));
            let excess = exited.len().saturating_sub(MAX_TERMINALS_PER_RUN);
            let evicted: Vec<Arc<Session>> = exited.into_iter().take(excess).collect();
            for s in &evicted {
                m.remove(&s.id);
            }
            evicted
        };
        for s in evicted {
            // Ends its keeping: the buffer goes with it.
            s.hang_up();
        }
    }

    /// Forgets `session` if it is still kept.
    fn forget(&self, session: &Arc<Session>) {
        let mut runs = self.runs.lock_unpoisoned();
        if let Some(m) = runs.get_mut(&session.run_id) {
            if m.get(&session.id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                m.remove(&session.id);
            }
            if m.is_empty() {
                runs.remove(&session.run_id);
            }
        }
    }

    /// Attaches a client to `session`: its buffer, then live output (or its exit, if it exited).
    fn attach_to(session: &Arc<Session>) -> AttachedTerminal {
        let (tx, rx) = mpsc::channel(ATTACH_QUEUE);
        let (alive_tx, alive) = watch::channel(());
        let mut sh = session.shared.lock_unpoisoned();
        let replay = sh.buffer.contents();
        let dropped_bytes = sh.buffer.dropped();
        if !replay.is_empty() {
            let _ = tx.try_send(ExecEvent::Stdout(replay));
        }
        if let Some(status) = sh.exit {
            let _ = tx.try_send(ExecEvent::Exit(status));
            drop(alive_tx);
        } else {
            // Replacing the attachment ends the previous client's.
            sh.attached = Some(Attachment { tx, _alive: alive_tx, alive: alive.clone() });
        }
        drop(sh);
        AttachedTerminal {
            id: session.id.clone(),
            dropped_bytes,
            output: AttachedOutput { rx },
            input: AttachedInput { session: Arc::downgrade(session), attached: alive },
        }
    }

    /// Attaches to one of `run`'s kept terminals; an exited one is forgotten once attached.
    pub(crate) fn attach(&self, run: &RunId, id: &str) -> Result<AttachedTerminal> {
        let session = self.find(run, id)?;
        let attached = Self::attach_to(&session);
        if !session.running() {
            self.forget(&session);
            // Seen: no longer kept (its buffer goes once this client has read it).
            session.hang_up();
        }
        Ok(attached)
    }

    /// `run`'s kept terminals, oldest first.
    pub(crate) fn list(&self, run: &RunId) -> Vec<TerminalSessionInfo> {
        let sessions: Vec<Arc<Session>> =
            self.runs.lock_unpoisoned().get(run).map(|m| m.values().cloned().collect()).unwrap_or_default();
        let mut infos: Vec<TerminalSessionInfo> = sessions.iter().map(|s| s.info()).collect();
        infos.sort_by_key(|i| (i.created_ms, i.id.len(), i.id.clone()));
        infos
    }

    /// Hangs up one of `run`'s kept terminals and forgets it.
    pub(crate) fn close(&self, run: &RunId, id: &str) -> Result<()> {
        let session = self.find(run, id)?;
        self.forget(&session);
        session.hang_up();
        Ok(())
    }

    /// Hangs up every kept terminal of `run` and forgets them.
    pub(crate) fn end_run(&self, run: &RunId) {
        let sessions = self.runs.lock_unpoisoned().remove(run);
        for session in sessions.into_iter().flat_map(BTreeMap::into_values) {
            session.hang_up();
        }
    }

    /// Hangs up every kept terminal.
    pub(crate) fn end_all(&self) {
        let runs = std::mem::take(&mut *self.runs.lock_unpoisoned());
        for session in runs.into_values().flat_map(BTreeMap::into_values) {
            session.hang_up();
        }
    }
}

/// Reads a kept terminal's process until it exits (or, once closed, for [`HANGUP_GRACE`] at most),
/// then keeps or forgets the terminal as the module's rules say.
async fn pump(sessions: Weak<TerminalSessions>, session: Arc<Session>, mut output: ExecStream) {
    let mut closed = session.closed.subscribe();
    let give_up = async move {
        let _ = closed.wait_for(|c| *c).await;
        tokio::time::sleep(HANGUP_GRACE).await;
    };
    tokio::pin!(give_up);
    let mut seen = false;
    loop {
        let event = tokio::select! {
            event = output.next() => event,
            () = &mut give_up => None,
        };
        match event {
            Some(ExecEvent::Stdout(chunk) | ExecEvent::Stderr(chunk)) => session.deliver(chunk).await,
            Some(ExecEvent::Exit(status)) => {
                seen = session.exited(status).await;
                break;
            }
            None => {
                tracing::debug!(terminal = %session.id, "a closed terminal's process outlived its hang-up; no longer read");
                break;
            }
        }
    }
    // The process is gone (or given up on): its busy mark goes with the stream.
    drop(output);
    session.input.lock_unpoisoned().take();
    session.shared.lock_unpoisoned().attached = None;
    if !seen {
        if let Some(sessions) = sessions.upgrade() {
            sessions.trim_exited(&session.run_id);
        }
        // Kept for a later attach, until it expires or is forgotten sooner (attached, closed, trimmed, its
        // run ended).
        let mut closed = session.closed.subscribe();
        tokio::select! {
            () = tokio::time::sleep(EXITED_TERMINAL_KEEP) => {}
            _ = closed.wait_for(|c| *c) => {}
        }
    }
    if let Some(sessions) = sessions.upgrade() {
        sessions.forget(&session);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{RingBuffer, Session, TerminalSessions};
    use crate::terminal::{Terminal, TerminalSize};
    use crate::types::{ExecEvent, ExecStream, ExitStatus, RunId};

    /// A kept terminal whose process prints `bytes` and exits once its client has detached; answers its
    /// session, weakly.
    async fn print_and_exit_detached(
        sessions: &Arc<TerminalSessions>,
        run: &RunId,
        bytes: usize,
    ) -> std::sync::Weak<Session> {
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(4);
        let (in_tx, _in_rx) = tokio::sync::mpsc::channel(4);
        let terminal = Terminal { output: ExecStream::new(out_rx), input: in_tx };
        let attached = sessions.register(run, None, TerminalSize { rows: 24, cols: 80 }, terminal).unwrap();
        let session = attached.input.session.clone();
        drop(attached);
        out_tx.send(ExecEvent::Stdout(vec![b'x'; bytes])).await.unwrap();
        let exit =
            ExitStatus { exit_code: 0, signal: None, timed_out: false, oom_killed: false, duration: Duration::ZERO };
        out_tx.send(ExecEvent::Exit(exit)).await.unwrap();
        settle().await;
        session
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_detached_and_the_output_is_read_on() {
        let sessions = Arc::new(TerminalSessions::default());
        let run = RunId::parse("r").unwrap();
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(4);
        let (in_tx, _in_rx) = tokio::sync::mpsc::channel(4);
        let terminal = Terminal { output: ExecStream::new(out_rx), input: in_tx };
        let mut stuck = sessions.register(&run, None, TerminalSize { rows: 24, cols: 80 }, terminal).unwrap();
        // Far more output than the client's queue holds, and the client reads none of it: the process is
        // read on all the same (its sandbox's other work waits on that).
        let printed = async {
            for i in 0..(super::ATTACH_QUEUE * 4) {
                out_tx.send(ExecEvent::Stdout(format!("{i:04}").into_bytes())).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), printed).await.expect("the output stalled behind a client");
        settle().await;
        let listed = sessions.list(&run);
        assert!(!listed[0].attached, "the client that read nothing is still attached");
        // The detached client gets what was queued for it, then its output ends (without an exit).
        let mut queued = 0;
        while let Some(event) = stuck.output.next().await {
            assert!(matches!(event, ExecEvent::Stdout(_)), "{event:?}");
            queued += 1;
        }
        assert!(queued <= super::ATTACH_QUEUE + 1, "{queued}");
        assert!(stuck.input.send(crate::terminal::TerminalInput::Data(b"x".to_vec())).await.is_err());
        // A reattach replays the buffer up to the newest output.
        let mut again = sessions.attach(&run, &listed[0].id).unwrap();
        match again.output.next().await {
            Some(ExecEvent::Stdout(b)) => {
                assert!(b.ends_with(format!("{:04}", super::ATTACH_QUEUE * 4 - 1).as_bytes()));
            }
            other => panic!("expected the replay, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn exited_terminals_nobody_saw_are_kept_within_a_bound_and_freed_when_forgotten() {
        let sessions = Arc::new(TerminalSessions::default());
        let run = RunId::parse("r").unwrap();
        // Far more terminals than a run may keep, each exiting unseen with a full buffer.
        let mut kept = Vec::new();
        for _ in 0..(super::MAX_TERMINALS_PER_RUN * 4) {
            kept.push(print_and_exit_detached(&sessions, &run, super::TERMINAL_BUFFER_BYTES).await);
        }
        let listed = sessions.list(&run);
        assert_eq!(listed.len(), super::MAX_TERMINALS_PER_RUN, "only the newest exits stay listed");
        assert!(listed.iter().all(|t| t.exited));
        // The ones no longer listed hold no memory while their expiry is still far off.
        let alive = kept.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(alive, super::MAX_TERMINALS_PER_RUN, "forgotten exits are still held");

        // Attaching to an exited one forgets it, and its buffer goes with the client's copy.
        let id = listed[0].id.clone();
        let seen = sessions.attach(&run, &id).unwrap();
        drop(seen);
        settle().await;
        let alive = kept.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(alive, super::MAX_TERMINALS_PER_RUN - 1, "a seen exit is still held");

        // Ending the run frees the rest at once.
        sessions.end_run(&run);
        settle().await;
        assert!(kept.iter().all(|w| w.upgrade().is_none()), "an ended run's exits are still held");
        assert!(sessions.list(&run).is_empty());
    }

    #[test]
    fn the_ring_buffer_keeps_the_newest_bytes_and_counts_the_dropped_ones() {
        let mut b = RingBuffer::new(8);
        b.push(b"abc");
        b.push(b"def");
        assert_eq!(b.contents(), b"abcdef");
        assert_eq!((b.len(), b.dropped()), (6, 0));
        b.push(b"ghij");
        assert_eq!(b.contents(), b"cdefghij", "the oldest bytes go first");
        assert_eq!((b.len(), b.dropped()), (8, 2));
        b.push(b"");
        assert_eq!(b.dropped(), 2);
    }

    #[test]
    fn a_chunk_larger_than_the_ring_buffer_keeps_its_tail() {
        let mut b = RingBuffer::new(4);
        b.push(b"xy");
        b.push(b"0123456789");
        assert_eq!(b.contents(), b"6789");
        assert_eq!(b.dropped(), 8, "the 2 old bytes and the chunk's first 6");
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn the_ring_buffer_stays_bounded_under_many_small_writes() {
        let mut b = RingBuffer::new(super::TERMINAL_BUFFER_BYTES);
        let line = [b'x'; 100];
        for _ in 0..10_000 {
            b.push(&line);
        }
        assert_eq!(b.len(), super::TERMINAL_BUFFER_BYTES);
        assert_eq!(b.dropped(), 1_000_000 - super::TERMINAL_BUFFER_BYTES as u64);
    }
}
