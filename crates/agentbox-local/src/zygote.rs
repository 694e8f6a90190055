//! The host's side of the zygote (see `agent::zygote`): one per process,
//! started on first use from the sealed executable and restarted if it dies.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crate::proto::{InitSpawned, SpawnInit};
use crate::{agent, sealed, sys};
use agentbox_core::LockExt;
use agentbox_storage::IdRange;

struct Zygote {
    socket: OwnedFd,
    process: Process,
}

/// How the zygote was started.
enum Process {
    /// By executing the binary (or its sealed copy).
    Executed(std::process::Child),
    /// Forked from this process while it had one thread (its pid: our child, reaped only here).
    Forked(i32),
}

impl Process {
    /// Kills and reaps it.
    fn end(self) {
        match self {
            Self::Executed(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Self::Forked(pid) => {
                let _ = sys::kill(pid, libc::SIGKILL);
                let mut status = 0;
                // SAFETY: waits for our own child, whose pid nothing else reaps (so it can't have been reused).
                unsafe { libc::waitpid(pid, &raw mut status, 0) };
            }
        }
    }
}

static ZYGOTE: Mutex<Option<Zygote>> = Mutex::new(None);

/// A started sandbox init.
#[derive(Debug)]
pub struct Init {
    /// Its host pid.
    pub pid: i32,
    /// A pidfd for it: signals reach exactly this process, and it polls readable once
    /// the init (and with it every process of its pid namespace) has exited.
    pub pidfd: OwnedFd,
}

/// Why an init could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A step on this side failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The binary the zygote runs could not be opened or sealed.
    #[error(transparent)]
    Exe(#[from] crate::sealed::AgentExeError),
    /// The zygote broke the protocol or could not be restarted; it was replaced.
    #[error("{0}")]
    Zygote(String),
    /// The zygote could not clone the init, and said why.
    #[error("{message}")]
    Refused {
        /// Its message.
        message: String,
        /// The errno behind it, when there is one.
        errno: Option<i32>,
    },
}

impl SpawnError {
    fn io(what: &'static str, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }

    /// The errno behind the failure, when there is one.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            Self::Exe(e) => e.raw_os_error(),
            Self::Zygote(_) => None,
            Self::Refused { errno, .. } => *errno,
        }
    }
}

fn start() -> Result<Zygote, SpawnError> {
    let exe = sealed::agent_path()?;
    let (ours, theirs) =
        sys::socketpair(libc::SOCK_SEQPACKET).map_err(|e| SpawnError::io("creating the zygote socket", e))?;
    // No code runs between fork and exec: the zygote gets its socket as stdin, so std can
    // use posix_spawn (vfork) from this threaded process.
    let process = std::process::Command::new(&exe)
        .env_clear()
        .env(agent::AGENT_ENV, agent::ZYGOTE)
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| SpawnError::io("starting the sandbox zygote", e))?;
    Ok(Zygote { socket: ours, process: Process::Executed(process) })
}

/// Why a request failed: before the zygote took it (safe to retry on a new zygote), or after.
#[derive(Debug)]
enum AskError {
    NotDelivered(std::io::Error),
    NoAnswer(std::io::Error),
    /// The zygote answered with something that is not a reply it may send (it is replaced).
    BadAnswer(String),
    /// The zygote could not start the init, and said why.
    Refused(SpawnError),
}

/// Sends one request on the zygote's `socket` and reads its answer.
fn ask(socket: BorrowedFd<'_>, request: &[u8], control: &OwnedFd) -> Result<Init, AskError> {
    sys::send_with_fd(socket, request, Some(control.as_fd())).map_err(AskError::NotDelivered)?;
    let mut buf = vec![0u8; 4096];
    let (n, pidfd) = sys::recv_with_fd(socket, &mut buf).map_err(AskError::NoAnswer)?;
    if n == 0 {
        return Err(AskError::NoAnswer(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the zygote exited")));
    }
    let reply: InitSpawned =
        serde_json::from_slice(&buf[..n]).map_err(|e| AskError::BadAnswer(format!("its answer did not parse: {e}")))?;
    match (reply, pidfd) {
        (InitSpawned { error: Some(message), errno, .. }, _) => {
            Err(AskError::Refused(SpawnError::Refused { message, errno }))
        }
        (InitSpawned { pid, .. }, Some(pidfd)) if pid > 0 => Ok(Init { pid, pidfd }),
        (InitSpawned { pid, .. }, Some(_)) => Err(AskError::BadAnswer(format!("it answered pid {pid}"))),
        (InitSpawned { .. }, None) => Err(AskError::BadAnswer("its answer carried no pidfd".into())),
    }
}

/// Forks the zygote from this process now, instead of executing the binary again for it when the first
/// sandbox is created (a load and relocation of the whole binary, a few milliseconds of CPU). For a short-lived
/// program that creates a local sandbox and exits (`agentbox run`): call it first thing in `main`, before
/// anything reads secrets into memory, while the process has one thread. The fork's copy of the arguments and
/// environment is wiped (see `agent::zygote::forked`).
///
/// Returns whether it forked. It does nothing when the process has more than one thread, when a zygote runs
/// already, when a sandbox could write this binary (a forked zygote and its inits have it as their
/// `/proc/self/exe`, so only a binary executed as is may be forked; see `sealed`), or when the fork fails; the
/// zygote is then executed on first use as usual.
#[must_use]
pub fn fork_now() -> bool {
    let one_thread = std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1);
    if !one_thread || ZYGOTE.lock_unpoisoned().is_some() || !sealed::runs_uncopied() {
        return false;
    }
    let Ok((ours, theirs)) = sys::socketpair(libc::SOCK_SEQPACKET) else {
        return false;
    };
    // SAFETY: the process has one thread (checked above, and nothing here starts one), so the child is a
    // consistent copy: no lock is held by a thread that doesn't exist in it. It runs only the zygote and leaves
    // through `_exit`.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {
            drop(ours);
            let code = agent::zygote::forked(theirs);
            // SAFETY: leaving the fork without running the host program's destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid if pid > 0 => {
            drop(theirs);
            *ZYGOTE.lock_unpoisoned() = Some(Zygote { socket: ours, process: Process::Forked(pid) });
            true
        }
        _ => false,
    }
}

/// Starts the zygote now, in the background, so the first sandbox doesn't wait for it (it is an
/// `execve` of the host binary). Errors are left for the first [`spawn_init`] to report. Nothing to do (and no
/// thread started) when one runs already, forked by [`fork_now`].
pub fn warm_up() {
    if ZYGOTE.lock_unpoisoned().is_some() {
        return;
    }
    let _ = std::thread::Builder::new().name("agentbox-zygote-start".into()).spawn(|| {
        let mut guard = ZYGOTE.lock_unpoisoned();
        if guard.is_none() {
            *guard = start().ok();
        }
    });
}

/// Starts a sandbox init whose root goes on `root`, serving `control`; with `ids`, in a user namespace of its
/// own mapped onto that range (see `agent::zygote`); with `bounding`, the capability bounding set its executions
/// keep (see [`crate::proto::SpawnInit::bounding`]). The init waits for its setup message, before which the
/// host moves it into its cgroups. Blocks briefly (one clone in the zygote); call it off the async runtime.
///
/// # Errors
/// When the zygote can't be started, or the clone failed (namespaces not permitted).
pub fn spawn_init(
    root: &str,
    control: &OwnedFd,
    ids: Option<IdRange>,
    bounding: Option<u64>,
) -> Result<Init, SpawnError> {
    let request = serde_json::to_vec(&SpawnInit { root: root.to_owned(), ids: ids.map(|r| r.first), bounding })
        .map_err(|e| SpawnError::io("encoding the request", e.into()))?;
    let mut guard = ZYGOTE.lock_unpoisoned();
    // A zygote that died before taking the request (killed from outside) is replaced once. One
    // that died after taking it may have cloned an init already, so the request is not repeated:
    // the caller's cleanup kills whatever joined the sandbox's cgroups.
    for attempt in 0..2 {
        if guard.is_none() {
            *guard = Some(start()?);
        }
        let Some(z) = guard.as_ref() else { continue };
        let failure = match ask(z.socket.as_fd(), &request, control) {
            Ok(init) => return Ok(init),
            Err(AskError::Refused(e)) => return Err(e),
            Err(e) => e,
        };
        if let Some(dead) = guard.take() {
            dead.process.end();
        }
        match failure {
            AskError::NotDelivered(e) if attempt == 0 => tracing::debug!(error = %e, "restarting the sandbox zygote"),
            AskError::NotDelivered(e) | AskError::NoAnswer(e) => {
                return Err(SpawnError::io("the sandbox zygote exited before answering; try again", e));
            }
            AskError::BadAnswer(why) => {
                let message = format!("the sandbox zygote broke the protocol ({why}); it was replaced, try again");
                return Err(SpawnError::Zygote(message));
            }
            AskError::Refused(e) => return Err(e),
        }
    }
    Err(SpawnError::Zygote("the sandbox zygote could not be restarted; try again".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Asks on one end of a socket pair, answered from the other with `answer` (and `pidfd`, if any).
    fn asked(answer: &'static [u8], pidfd: Option<OwnedFd>) -> Result<Init, AskError> {
        let (host, zygote) = sys::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let answering = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let (_, control) = sys::recv_with_fd(zygote.as_fd(), &mut buf).unwrap();
            assert!(control.is_some(), "the request carries the control socket");
            sys::send_with_fd(zygote.as_fd(), answer, pidfd.as_ref().map(AsFd::as_fd)).unwrap();
        });
        let (control, _agent_end) = sys::socketpair(libc::SOCK_STREAM).unwrap();
        let result = ask(host.as_fd(), b"{}", &control);
        answering.join().unwrap();
        result
    }

    #[test]
    fn an_answer_that_is_not_a_reply_is_a_protocol_error_not_a_missing_answer() {
        let bad = |r: Result<Init, AskError>| match r {
            Err(AskError::BadAnswer(why)) => why,
            other => panic!("expected a bad answer, got {other:?}"),
        };
        assert!(bad(asked(b"not json", None)).contains("did not parse"));
        assert!(bad(asked(br#"{"pid":7,"error":null,"errno":null}"#, None)).contains("no pidfd"));
        let pidfd = sys::pidfd_open(std::process::id().try_into().unwrap()).unwrap();
        assert!(bad(asked(br#"{"pid":0,"error":null,"errno":null}"#, Some(pidfd))).contains("pid 0"));
    }

    #[test]
    fn a_refusal_keeps_the_zygotes_reason_and_a_valid_answer_is_an_init() {
        match asked(br#"{"pid":0,"error":"clone: EPERM","errno":1}"#, None) {
            Err(AskError::Refused(e)) => assert_eq!((e.to_string().as_str(), e.errno()), ("clone: EPERM", Some(1))),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let me = i32::try_from(std::process::id()).unwrap();
        let pidfd = sys::pidfd_open(me).unwrap();
        let init = asked(br#"{"pid":42,"error":null,"errno":null}"#, Some(pidfd)).unwrap();
        assert_eq!(init.pid, 42);
    }
}
