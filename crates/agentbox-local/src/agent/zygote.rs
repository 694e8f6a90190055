//! The zygote: a single-threaded process, started once per host process from the
//! sealed executable (or forked from a short-lived host program at the top of its
//! `main`, see `crate::zygote::fork_now`), that clones each sandbox's init on request.
//!
//! Starting a sandbox this way costs one `clone` of a small process instead of
//! an `execve` of the host binary (loader, relocations, runtime start) and a
//! second fork: the clone creates the namespaces and its child is PID 1 of the
//! new pid namespace. The zygote reaps the inits; the host watches each through
//! a pidfd the zygote sends back. When the host goes away its end of the request
//! socket closes and the zygote exits; each init exits on its own when its
//! control socket closes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{CONTROL_FD, init_main};
use crate::proto::{InitSpawned, SpawnInit};
use crate::sys;

/// Where the zygote keeps its request socket (a `SOCK_SEQPACKET` it got as stdin).
const REQUEST_FD: libc::c_int = 4;

/// The namespaces the clone creates. The cgroup namespace comes later, from the
/// child itself, once it sits in the sandbox's cgroups (that cgroup is its root).
const CLONE_NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;

/// The largest request (a root path and a few cgroup paths, as JSON).
const MAX_REQUEST: usize = 64 * 1024;

/// Runs the zygote started by executing the binary (see `crate::zygote::start`) until the host closes the
/// request socket, which came as stdin. Returns the exit code.
pub fn main() -> i32 {
    // The request socket moves to REQUEST_FD; stdin becomes /dev/null in `serve`.
    // SAFETY: dup3 takes integer arguments only. Whatever REQUEST_FD was is replaced: the host passes only 0, 1
    // and 2 (every descriptor of its own is close-on-exec).
    if unsafe { libc::dup3(0, REQUEST_FD, libc::O_CLOEXEC) } == -1 {
        return 110;
    }
    // SAFETY: dup3 succeeded: REQUEST_FD is the new descriptor, and nothing else in this process owns it.
    let request = unsafe { OwnedFd::from_raw_fd(REQUEST_FD) };
    serve(&request)
}

/// Runs the zygote forked from a host process that had one thread (see `crate::zygote::fork_now`), serving
/// `request`, until the host closes it. Returns the exit code; the caller leaves through `_exit`.
///
/// The fork is a copy of the host program taken before it did anything (the top of its `main`): its
/// arguments and environment are wiped from this copy first, since every init is cloned from it and a
/// sandbox's root could read its init's memory. Every descriptor but the request socket is closed, and
/// stdout and stderr go to /dev/null, as for an executed zygote.
pub fn forked(request: OwnedFd) -> i32 {
    wipe_arguments_and_environment();
    let request = if request.as_raw_fd() == REQUEST_FD {
        request
    } else {
        // SAFETY: dup3 takes integer arguments only; whatever REQUEST_FD was is closed below anyway.
        if unsafe { libc::dup3(request.as_raw_fd(), REQUEST_FD, libc::O_CLOEXEC) } == -1 {
            return 110;
        }
        drop(request);
        // SAFETY: dup3 succeeded: REQUEST_FD is the new descriptor, and nothing else in this process uses it.
        unsafe { OwnedFd::from_raw_fd(REQUEST_FD) }
    };
    // Descriptors the host program had open (inherited ones, or its own) are closed under their owners, which
    // is sound because this copy never returns to the host program's frames: it leaves through `_exit`.
    // SAFETY: close_range takes integer arguments only.
    unsafe { libc::syscall(libc::SYS_close_range, 3, REQUEST_FD - 1, 0) };
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, REQUEST_FD + 1, libc::c_uint::MAX, 0) };
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return 111;
    };
    for fd in [1, 2] {
        // SAFETY: dup2 takes integer arguments only; it replaces stdout or stderr in one step.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return 111;
        }
    }
    drop(null);
    serve(&request)
}

/// Zeroes this process's argument and environment strings (where /proc/PID/cmdline and /proc/PID/environ
/// read them) after emptying `environ`, so that nothing the host program was started with is left in the
/// memory every init is cloned from.
fn wipe_arguments_and_environment() {
    // SAFETY: the process has one thread (a fork's child), so nothing reads the environment concurrently.
    unsafe { libc::clearenv() };
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name's closing parenthesis, from field 3 (state) on; the argument and
    // environment strings span fields 48 to 51 (arg_start, arg_end, env_start, env_end).
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let fields: Vec<usize> = rest.split_whitespace().skip(45).take(4).filter_map(|f| f.parse().ok()).collect();
    let [arg_start, arg_end, env_start, env_end] = fields[..] else { return };
    if !(arg_start <= arg_end && arg_end <= env_start && env_start <= env_end && env_end - arg_start < 64 << 20) {
        return;
    }
    // SAFETY: [arg_start, env_end) holds the argument and environment strings that the kernel placed on the
    // main thread's stack at execve, mapped writable for the process's life. No Rust value refers to them:
    // `environ` was emptied above, and std keeps only raw pointers to the arguments, which this copy of the
    // program never reads again (it serves the zygote and leaves through `_exit`).
    unsafe { std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(arg_start), 0, env_end - arg_start) };
}

/// Serves requests on `request` until the host closes it. Returns the exit code.
fn serve(request: &OwnedFd) -> i32 {
    // Every signal back to its default action: an ignored one (a server started in the background by a
    // non-interactive shell ignores SIGINT and SIGQUIT) would otherwise be inherited by every init and
    // every process in every sandbox, and Ctrl-C on a sandbox's terminal would do nothing.
    for signal in 1..libc::SIGRTMIN() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: sets a standard disposition; no handler runs.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes, a static here.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"agentbox-zygote".as_ptr()) };
    let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") else {
        return 111;
    };
    // SAFETY: dup2 takes integer arguments only; it replaces descriptor 0 (stdin, std's) in one step.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } == -1 {
        return 111;
    }
    drop(null);
    // The zygote is single-threaded (it runs before main, or is a fork of a process with one thread).
    let Ok(sigfd) = sys::block_into_signalfd(&[libc::SIGCHLD], &[libc::SIGCHLD]) else {
        return 112;
    };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut fds = [
            libc::pollfd { fd: request.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: sigfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: an array of two pollfds, whose descriptors this function holds until after the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            reap(sigfd.as_fd());
        }
        if fds[0].revents == 0 {
            continue;
        }
        let (n, control) = match sys::recv_with_fd(request.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return 0,
            Ok(r) => r,
        };
        let reply = match (serde_json::from_slice::<SpawnInit>(&buf[..n]), control) {
            (Ok(req), Some(control)) => spawn(&req, &control, sigfd.as_fd()),
            (Err(e), _) => Err((format!("invalid request to the zygote: {e}"), None)),
            (Ok(_), None) => Err(("the request carried no control socket".to_owned(), None)),
        };
        let sent = match reply {
            Ok((pid, pidfd)) => {
                // Our copy of the pidfd closes when `pidfd` drops; the host keeps its own.
                let msg = InitSpawned { pid, error: None, errno: None };
                sys::send_with_fd(request.as_fd(), &encode_reply(&msg), Some(pidfd.as_fd()))
            }
            Err((error, errno)) => {
                let msg = InitSpawned { pid: 0, error: Some(error), errno };
                sys::send_with_fd(request.as_fd(), &encode_reply(&msg), None)
            }
        };
        if sent.is_err() {
            return 0;
        }
    }
}

/// Encodes a reply; one that can't be encoded becomes a failure that says so (never an empty reply).
fn encode_reply(msg: &InitSpawned) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_else(|e| {
        let error = format!("encoding the zygote's reply failed: {e}");
        serde_json::json!({ "pid": 0, "error": error, "errno": null }).to_string().into_bytes()
    })
}

/// Reaps every exited init.
fn reap(sigfd: BorrowedFd<'_>) {
    sys::drain_signalfd(sigfd);
    loop {
        let mut status = 0;
        // SAFETY: reaping our own children without blocking.
        if unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) } <= 0 {
            break;
        }
    }
}

/// Clones a sandbox init; returns its host pid and a pidfd for it.
///
/// With an id range, the clone also makes the init's user namespace. A namespace is owned by the effective uid
/// of the process that makes it, and the kernel charges per-user limits to each namespace's owner, so the
/// zygote takes the range's first id as its effective uid and gid for the clone (its real and saved ids stay
/// root, so it takes root back right after). It then writes the namespace's id maps, as root of the parent
/// namespace, and only then lets the child go on: the child becomes root of its namespace (the range's first
/// host id) with every capability there and none outside.
fn spawn(req: &SpawnInit, control: &OwnedFd, sigfd: BorrowedFd<'_>) -> Result<(i32, OwnedFd), (String, Option<i32>)> {
    let fail = |what: &str| {
        let e = io::Error::last_os_error();
        (format!("{what}: {e}"), e.raw_os_error())
    };
    // The child waits on this pipe until its id maps are written.
    let gate = match req.ids {
        Some(_) => Some(sys::pipe().map_err(|e| (format!("creating the id map gate: {e}"), e.raw_os_error()))?),
        None => None,
    };
    // The init finds its root mount point as its working directory: the clone's copy of the mount table
    // keeps it, in the new namespace, where a path lookup might be refused to root of a user namespace.
    if let Err(e) = std::env::set_current_dir(&req.root) {
        return Err((format!("entering the root mount point {}: {e}", req.root), e.raw_os_error()));
    }
    let mut flags = CLONE_NAMESPACES | libc::SIGCHLD;
    if let Some(first) = req.ids {
        flags |= libc::CLONE_NEWUSER;
        // SAFETY: integer arguments; only the effective ids change (real and saved stay root).
        if unsafe { libc::syscall(libc::SYS_setresgid, -1, first, -1) } == -1 {
            return Err(fail("taking the id range's group for its namespace"));
        }
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_setresuid, -1, first, -1) } == -1 {
            let err = fail("taking the id range's user for its namespace");
            restore_root();
            return Err(err);
        }
    }
    // SAFETY: a fork-like clone (no new stack, no shared memory) of this single-threaded
    // process; the child only continues into code that is safe after fork, and leaves through `_exit`.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::c_long::from(flags), 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        // The clone's copies of the gate: it waits on the read end, and closes its write end so that the gate
        // reads end-of-file if the zygote gives up.
        if let Some((read_end, write_end)) = gate {
            drop(write_end);
            if let Err(code) = enter_user_namespace(read_end) {
                // SAFETY: leaving the clone without running the zygote's destructors.
                unsafe { libc::_exit(code) }
            }
        }
        let code = child(control.as_fd(), sigfd, req.bounding);
        // SAFETY: leaving the clone without running the zygote's destructors.
        unsafe { libc::_exit(code) }
    }
    let cloned = if pid < 0 { Err(fail("creating the sandbox namespaces failed")) } else { Ok(pid) };
    let _ = std::env::set_current_dir("/");
    if req.ids.is_some() && !restore_root() {
        // A zygote that can't be root again can make no more sandboxes: the host starts a new one.
        // SAFETY: leaving the process; the host sees its socket close.
        unsafe { libc::_exit(113) }
    }
    // A failed clone closes the gate (both ends drop with it).
    let pid = i32::try_from(cloned?).map_err(|_| ("the clone returned an invalid pid".to_owned(), None))?;
    let kill = |err: (String, Option<i32>)| {
        let _ = sys::kill(pid, libc::SIGKILL);
        err
    };
    if let (Some(first), Some((read_end, write_end))) = (req.ids, gate) {
        drop(read_end);
        let map = format!("0 {first} {}\n", agentbox_storage::RANGE_SIZE);
        let written = std::fs::write(format!("/proc/{pid}/uid_map"), &map)
            .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), &map));
        let released = written.and_then(|()| sys::write_all(write_end.as_fd(), b"1"));
        drop(write_end);
        released.map_err(|e| kill((format!("writing the sandbox's id maps failed: {e}"), e.raw_os_error())))?;
    }
    match sys::pidfd_open(pid) {
        Ok(fd) => Ok((pid, fd)),
        Err(e) => Err(kill((format!("pidfd_open of the sandbox init failed: {e}"), e.raw_os_error()))),
    }
}

/// Takes root back as the effective user and group after a clone into an id range. `false` if it couldn't.
fn restore_root() -> bool {
    // SAFETY: integer arguments; the real and saved ids are root, so this is permitted.
    let uid = unsafe { libc::syscall(libc::SYS_setresuid, -1, 0, -1) };
    // SAFETY: as above, with root's effective uid back.
    let gid = unsafe { libc::syscall(libc::SYS_setresgid, -1, 0, -1) };
    uid == 0 && gid == 0
}

/// In the clone, once the zygote has written the id maps (it writes one byte to `gate`): become root of the
/// new user namespace, with no supplementary groups. Raw system calls only (the clone is a copy of a
/// single-threaded process). `Err` holds the exit code that says which step failed.
fn enter_user_namespace(gate: OwnedFd) -> Result<(), i32> {
    if !matches!(sys::read(gate.as_fd(), &mut [0u8]), Ok(1)) {
        return Err(120); // the zygote gave up on this clone
    }
    drop(gate);
    // SAFETY: integer arguments.
    if unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, 0) } == -1 {
        return Err(121);
    }
    // SAFETY: an empty list.
    if unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) } == -1 {
        return Err(122);
    }
    // SAFETY: integer arguments.
    if unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) } == -1 {
        return Err(123);
    }
    // Changing ids made the process undumpable, which gives its /proc files to the host's root, out of
    // reach of the namespace's root: executions (its clones) could not even raise their own OOM score.
    // Dumpable again, they are the namespace root's; no execution (another uid, no capabilities) can
    // ptrace the init either way.
    // SAFETY: integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } == -1 {
        return Err(124);
    }
    Ok(())
}

/// In the clone: take the control socket as fd 3, leave the zygote's descriptors and signal
/// mask, then become the init (`bounding`: see [`SpawnInit::bounding`]) (which the host moves into its cgroups before sending its setup message).
///
/// The zygote's descriptors in this copy (`sigfd`, the request socket, `control` itself) are closed here under
/// their owners in the zygote's frames. That is sound because this copy never returns to those frames: it
/// leaves through `_exit` (see `spawn`), so no owner uses or closes them again.
fn child(control: BorrowedFd<'_>, sigfd: BorrowedFd<'_>, bounding: Option<u64>) -> i32 {
    // Every descriptor but the control socket goes: dup2 onto CONTROL_FD replaces whatever was there, and
    // close_range closes all above it. The signalfd is one of those (0, 1 and 2 are open, so it is 3 or above),
    // as is the request socket.
    debug_assert!(sigfd.as_raw_fd() >= CONTROL_FD);
    // SAFETY: dup2 takes integer arguments only.
    if unsafe { libc::dup2(control.as_raw_fd(), CONTROL_FD) } == -1 {
        return 110;
    }
    // SAFETY: close_range takes integer arguments only; see above for the descriptors it closes.
    unsafe { libc::syscall(libc::SYS_close_range, CONTROL_FD + 1, libc::c_uint::MAX, 0) };
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
    if sys::unblock_all_signals().is_err() {
        return 111;
    }
    init_main(bounding)
}
