//! The host's side of the zygote (see `agent::zygote`): one per process,
//! started on first use from the sealed executable and restarted if it dies.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use crate::proto::{InitSpawned, SpawnInit};
use crate::{agent, sealed, sys};
use agentbox_core::LockExt;
use agentbox_storage::IdRange;

struct Zygote {
    socket: OwnedFd,
    process: std::process::Child,
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
#[derive(Debug)]
pub struct SpawnError {
    /// What went wrong.
    pub message: String,
    /// The errno behind it, when there is one.
    pub errno: Option<i32>,
}

impl SpawnError {
    fn io(what: &str, e: &std::io::Error) -> Self {
        Self { message: format!("{what}: {e}"), errno: e.raw_os_error() }
    }
}

fn start() -> Result<Zygote, SpawnError> {
    let exe = sealed::agent_path().map_err(|message| SpawnError { message, errno: None })?;
    let (ours, theirs) =
        sys::socketpair(libc::SOCK_SEQPACKET).map_err(|e| SpawnError::io("creating the zygote socket", &e))?;
    // No code runs between fork and exec: the zygote gets its socket as stdin, so std can
    // use posix_spawn (vfork) from this threaded process.
    let process = std::process::Command::new(&exe)
        .env_clear()
        .env(agent::AGENT_ENV, agent::ZYGOTE)
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| SpawnError::io("starting the sandbox zygote", &e))?;
    Ok(Zygote { socket: ours, process })
}

/// Why a request failed: before the zygote took it (safe to retry on a new zygote), or after.
enum AskError {
    NotDelivered(std::io::Error),
    NoAnswer(std::io::Error),
}

fn ask(z: &Zygote, request: &[u8], control: &OwnedFd) -> Result<(InitSpawned, Option<OwnedFd>), AskError> {
    sys::send_with_fd(z.socket.as_fd(), request, Some(control.as_fd())).map_err(AskError::NotDelivered)?;
    let mut buf = vec![0u8; 4096];
    let (n, pidfd) = sys::recv_with_fd(z.socket.as_fd(), &mut buf).map_err(AskError::NoAnswer)?;
    if n == 0 {
        return Err(AskError::NoAnswer(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the zygote exited")));
    }
    let reply = serde_json::from_slice(&buf[..n]).map_err(|e| AskError::NoAnswer(std::io::Error::other(e)))?;
    Ok((reply, pidfd))
}

/// Starts the zygote now, in the background, so the first sandbox doesn't wait for it (it is an
/// `execve` of the host binary). Errors are left for the first [`spawn_init`] to report.
pub fn warm_up() {
    let _ = std::thread::Builder::new().name("agentbox-zygote-start".into()).spawn(|| {
        let mut guard = ZYGOTE.lock_unpoisoned();
        if guard.is_none() {
            *guard = start().ok();
        }
    });
}

/// Starts a sandbox init whose root goes on `root`, serving `control`; with `ids`, in a user namespace of its
/// own mapped onto that range (see `agent::zygote`). The init waits for its setup message, before which the
/// host moves it into its cgroups. Blocks briefly (one clone in the zygote); call it off the async runtime.
///
/// # Errors
/// When the zygote can't be started, or the clone failed (namespaces not permitted).
pub fn spawn_init(root: &str, control: &OwnedFd, ids: Option<IdRange>) -> Result<Init, SpawnError> {
    let request = serde_json::to_vec(&SpawnInit { root: root.to_owned(), ids: ids.map(|r| r.first) })
        .map_err(|e| SpawnError { message: format!("encoding the request: {e}"), errno: None })?;
    let mut guard = ZYGOTE.lock_unpoisoned();
    // A zygote that died before taking the request (killed from outside) is replaced once. One
    // that died after taking it may have cloned an init already, so the request is not repeated:
    // the caller's cleanup kills whatever joined the sandbox's cgroups.
    for attempt in 0..2 {
        if guard.is_none() {
            *guard = Some(start()?);
        }
        let Some(z) = guard.as_ref() else { continue };
        let failure = match ask(z, &request, control) {
            Ok((InitSpawned { pid, error: None, .. }, Some(pidfd))) if pid > 0 => return Ok(Init { pid, pidfd }),
            Ok((InitSpawned { error, errno, .. }, _)) => {
                return Err(SpawnError { message: error.unwrap_or_else(|| "the zygote sent no pidfd".into()), errno });
            }
            Err(e) => e,
        };
        if let Some(mut dead) = guard.take() {
            let _ = dead.process.kill();
            let _ = dead.process.wait();
        }
        match failure {
            AskError::NotDelivered(e) if attempt == 0 => tracing::debug!(error = %e, "restarting the sandbox zygote"),
            AskError::NotDelivered(e) | AskError::NoAnswer(e) => {
                return Err(SpawnError::io("the sandbox zygote exited before answering; try again", &e));
            }
        }
    }
    Err(SpawnError { message: "the sandbox zygote could not be restarted".into(), errno: None })
}
