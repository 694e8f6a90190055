//! Directory watching (`filesystem.Filesystem/WatchDir`, `CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`).
//!
//! A watcher is a small Python program inside the sandbox, under its limits, holding the inotify watches (one per
//! directory when recursive, added as directories appear). It writes one line per event: a digit for the event
//! type and the hex of the path relative to the watched directory. The host reads those lines and nothing else,
//! each at most [`MAX_LINE_BYTES`]; a longer line is dropped whole. Events wait in a queue of at most
//! [`MAX_QUEUED_EVENTS`] (the oldest are dropped past it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbox_core::{ExecEvent, ExecRequest, LockExt as _, RunId, SandboxManager};
use serde::Serialize;
use tokio::sync::Notify;

use crate::E2bApiError;

/// Longest event line read from a watcher (a type digit, a space, a hex path of up to 4 KiB, a newline).
pub const MAX_LINE_BYTES: usize = 2 * 4096 + 3;
/// Events kept for a watcher until they are fetched.
pub const MAX_QUEUED_EVENTS: usize = 10_000;
/// Watchers alive at once in one sandbox.
pub const MAX_WATCHERS: usize = 64;
/// How long event fetches wait for the events in flight to stop coming.
pub const QUIET: Duration = Duration::from_millis(40);
/// The longest an event fetch waits.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How long a watcher may take to set its watches.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The watcher program (Python 3, in the sandbox): `python3 -c WATCHER DIR RECURSIVE(0|1)`.
const WATCHER: &str = r#"
import binascii, ctypes, os, struct, sys
root, rec = sys.argv[1], sys.argv[2] == "1"
if not os.path.isdir(root):
    sys.stderr.write("directory %s not found\n" % root)
    sys.exit(2)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
MASK = 0x100 | 0x2 | 0x200 | 0x40 | 0x80 | 0x4 | 0x400 | 0x800
wds = {}
def add(d):
    wd = libc.inotify_add_watch(fd, os.fsencode(d), MASK | 0x1000000)
    if wd >= 0:
        wds[wd] = os.fsencode(d)
    return wd
if fd < 0 or add(root) < 0:
    sys.stderr.write("cannot watch %s: errno %d\n" % (root, ctypes.get_errno()))
    sys.exit(1)
if rec:
    for dp, dns, _ in os.walk(root):
        for n in dns:
            add(os.path.join(dp, n))
out = sys.stdout.buffer
out.write(b"0 %d\n" % os.getpid())
out.flush()
base = os.fsencode(root)
TMP = b".agentbox-upload-"
moved = {}
def emit(t, full):
    out.write(b"%d %s\n" % (t, binascii.hexlify(os.path.relpath(full, base))))
while True:
    buf = os.read(fd, 65536)
    i = 0
    while i + 16 <= len(buf):
        wd, mask, cookie, ln = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + ln].rstrip(b"\0")
        i += 16 + ln
        d = wds.get(wd)
        if d is None:
            continue
        full = os.path.join(d, name) if name else d
        # A file written through the files API arrives as a temporary file renamed into place: it is reported
        # as envd reports a write (create, write, chmod), and the temporary file not at all.
        if name.startswith(TMP):
            if mask & 0x40:
                if len(moved) > 1000:
                    moved.clear()
                moved[cookie] = True
            continue
        if mask & 0x80 and moved.pop(cookie, False):
            emit(1, full)
            emit(2, full)
            emit(5, full)
            continue
        if mask & (0x100 | 0x80):
            t = 1
            if rec and mask & 0x40000000:
                emit(1, full)
                add(os.fsdecode(full))
                # What was made in the new directory before its watch was set is reported as created, and a file
                # that already holds data as written too (its writes happened before there was a watch to see them).
                for dp, dns, fns in os.walk(full):
                    for n in dns:
                        emit(1, os.path.join(dp, n))
                        add(os.fsdecode(os.path.join(dp, n)))
                    for n in fns:
                        p = os.path.join(dp, n)
                        emit(1, p)
                        try:
                            st = os.lstat(p)
                        except OSError:
                            continue
                        if st.st_size > 0 and (st.st_mode & 0o170000) == 0o100000:
                            emit(2, p)
                continue
        elif mask & 0x2:
            t = 2
        elif mask & (0x200 | 0x400):
            t = 3
        elif mask & (0x40 | 0x800):
            t = 4
        elif mask & 0x4:
            t = 5
        else:
            continue
        emit(t, full)
    out.flush()
"#;

/// `FilesystemEvent` (without `entry`, which envd 0.6.3 added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsEvent {
    /// The path, relative to the watched directory.
    pub name: String,
    /// `EVENT_TYPE_CREATE`, `_WRITE`, `_REMOVE`, `_RENAME` or `_CHMOD`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// One line of a watcher's output.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The watches are set; the watcher's pid (inside the sandbox).
    Ready(u32),
    /// An event.
    Event(FsEvent),
    /// Not a line a watcher writes.
    Invalid,
}

fn parse_line(line: &[u8]) -> Line {
    let Some((kind, rest)) = line.split_first() else { return Line::Invalid };
    let Some(rest) = rest.strip_prefix(b" ") else { return Line::Invalid };
    let kind = match kind {
        b'0' => {
            return std::str::from_utf8(rest).ok().and_then(|p| p.parse().ok()).map_or(Line::Invalid, Line::Ready);
        }
        b'1' => "EVENT_TYPE_CREATE",
        b'2' => "EVENT_TYPE_WRITE",
        b'3' => "EVENT_TYPE_REMOVE",
        b'4' => "EVENT_TYPE_RENAME",
        b'5' => "EVENT_TYPE_CHMOD",
        _ => return Line::Invalid,
    };
    if rest.len() % 2 != 0 {
        return Line::Invalid;
    }
    let mut name = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let hex = |b: u8| (b as char).to_digit(16);
        match (hex(pair[0]), hex(pair[1])) {
            (Some(h), Some(l)) => name.push(u8::try_from(h * 16 + l).unwrap_or(0)),
            _ => return Line::Invalid,
        }
    }
    Line::Event(FsEvent { name: String::from_utf8_lossy(&name).into_owned(), kind })
}

/// A running watcher.
#[derive(Debug)]
pub struct Watcher {
    pid: u32,
    events: Mutex<VecDeque<FsEvent>>,
    /// Signalled when events arrive or the watcher ends.
    pub changed: Notify,
    ended: std::sync::atomic::AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Watcher {
    /// The events queued since the last call.
    pub fn take(&self) -> Vec<FsEvent> {
        self.events.lock_unpoisoned().drain(..).collect()
    }

    /// The events queued since the last call, once the events of what just happened have come through: the
    /// watcher's events travel through a process inside the sandbox, so this waits until none has come for
    /// [`QUIET`] (at most [`SETTLE`]).
    pub async fn take_settled(&self) -> Vec<FsEvent> {
        let start = tokio::time::Instant::now();
        let mut seen = self.events.lock_unpoisoned().len();
        let mut quiet_since = start;
        while start.elapsed() < SETTLE && !self.ended() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.events.lock_unpoisoned().len();
            if now != seen {
                seen = now;
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() >= QUIET {
                break;
            }
        }
        self.take()
    }

    /// Whether the watcher program has ended.
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A sandbox's watchers.
#[derive(Debug, Default)]
pub struct Watchers {
    all: Mutex<HashMap<String, Arc<Watcher>>>,
}

impl Watchers {
    /// Starts watching `dir`; returns once the watches are set.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for a missing directory, [`E2bApiError::LimitReached`] past [`MAX_WATCHERS`],
    /// or the manager's error.
    pub async fn start(
        &self,
        manager: &SandboxManager,
        run: &RunId,
        dir: &str,
        recursive: bool,
        time_limit: Duration,
    ) -> Result<(String, Arc<Watcher>), E2bApiError> {
        if self.all.lock_unpoisoned().len() >= MAX_WATCHERS {
            return Err(E2bApiError::LimitReached(format!(
                "{MAX_WATCHERS} watchers are running in this sandbox, the limit; remove some first"
            )));
        }
        let request = ExecRequest {
            timeout: Some(time_limit),
            ..ExecRequest::argv(["python3", "-c", WATCHER, dir, if recursive { "1" } else { "0" }])
        };
        let mut stream = manager.exec(run, request).await.map_err(E2bApiError::sandbox("starting the watcher"))?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<Arc<Watcher>, E2bApiError>>();
        let dir_owned = dir.to_owned();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut watcher: Option<Arc<Watcher>> = None;
            let mut line = Vec::new();
            let mut overlong = false;
            let mut stderr = Vec::new();
            while let Some(event) = stream.next().await {
                match event {
                    ExecEvent::Stdout(bytes) => {
                        for b in bytes {
                            if b != b'\n' {
                                if line.len() < MAX_LINE_BYTES {
                                    line.push(b);
                                } else {
                                    overlong = true;
                                }
                                continue;
                            }
                            let parsed = if overlong { Line::Invalid } else { parse_line(&line) };
                            line.clear();
                            overlong = false;
                            match (parsed, &watcher) {
                                (Line::Ready(pid), None) => {
                                    let w = Arc::new(Watcher {
                                        pid,
                                        events: Mutex::new(VecDeque::new()),
                                        changed: Notify::new(),
                                        ended: std::sync::atomic::AtomicBool::new(false),
                                        task: Mutex::new(None),
                                    });
                                    watcher = Some(w.clone());
                                    if let Some(r) = ready.take() {
                                        let _ = r.send(Ok(w));
                                    }
                                }
                                (Line::Event(e), Some(w)) => {
                                    let mut q = w.events.lock_unpoisoned();
                                    if q.len() >= MAX_QUEUED_EVENTS {
                                        q.pop_front();
                                    }
                                    q.push_back(e);
                                    drop(q);
                                    w.changed.notify_waiters();
                                }
                                _ => {}
                            }
                        }
                    }
                    ExecEvent::Stderr(bytes) => {
                        let room = 2048usize.saturating_sub(stderr.len());
                        stderr.extend(bytes.into_iter().take(room));
                    }
                    ExecEvent::Exit(status) => {
                        if let Some(r) = ready.take() {
                            let why = String::from_utf8_lossy(&stderr).trim().to_owned();
                            let e = if status.exit_code == 2 {
                                E2bApiError::NotFound(format!("directory {dir_owned} not found"))
                            } else {
                                E2bApiError::Internal(format!(
                                    "the watcher of {dir_owned} exited with {}: {why}",
                                    status.exit_code
                                ))
                            };
                            let _ = r.send(Err(e));
                        }
                    }
                }
            }
            if let Some(w) = watcher {
                w.ended.store(true, std::sync::atomic::Ordering::Release);
                w.changed.notify_waiters();
            }
        });
        let watcher = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(w))) => w,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) | Err(_) => {
                task.abort();
                return Err(E2bApiError::Internal(format!(
                    "the watcher of {dir} did not start within {READY_TIMEOUT:?}"
                )));
            }
        };
        *watcher.task.lock_unpoisoned() = Some(task);
        let id = crate::state::random_hex(8)?;
        self.all.lock_unpoisoned().insert(id.clone(), watcher.clone());
        Ok((id, watcher))
    }

    /// The watcher `id`.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for an unknown id.
    pub fn get(&self, id: &str) -> Result<Arc<Watcher>, E2bApiError> {
        self.all
            .lock_unpoisoned()
            .get(id)
            .cloned()
            .ok_or_else(|| E2bApiError::NotFound(format!("watcher {id:?} not found (removed, or never created)")))
    }

    /// Stops and forgets the watcher `id`.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for an unknown id.
    pub async fn remove(&self, manager: &SandboxManager, run: &RunId, id: &str) -> Result<(), E2bApiError> {
        let watcher =
            self.all.lock_unpoisoned().remove(id).ok_or_else(|| {
                E2bApiError::NotFound(format!("watcher {id:?} not found (removed, or never created)"))
            })?;
        stop(manager, run, &watcher).await;
        Ok(())
    }
}

/// Ends a watcher's program and its reader.
pub async fn stop(manager: &SandboxManager, run: &RunId, watcher: &Watcher) {
    if !watcher.ended() {
        let request = ExecRequest {
            timeout: Some(Duration::from_secs(10)),
            ..ExecRequest::argv(["kill", "-KILL", &watcher.pid.to_string()])
        };
        if let Err(e) = manager.exec_collect(run, request).await {
            tracing::debug!(error = %e, "stopping a watcher failed");
        }
    }
    if let Some(task) = watcher.task.lock_unpoisoned().take() {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_lines_are_checked() {
        assert_eq!(parse_line(b"0 42"), Line::Ready(42));
        assert_eq!(parse_line(b"1 612f62"), Line::Event(FsEvent { name: "a/b".into(), kind: "EVENT_TYPE_CREATE" }));
        assert_eq!(parse_line(b"4 "), Line::Event(FsEvent { name: String::new(), kind: "EVENT_TYPE_RENAME" }));
        for bad in [&b""[..], b"1", b"16162", b"9 61", b"1 6", b"1 zz", b"0 x"] {
            assert_eq!(parse_line(bad), Line::Invalid, "{bad:?}");
        }
    }
}
