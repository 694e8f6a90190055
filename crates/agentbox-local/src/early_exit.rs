//! The early answer of a one-shot command (`agentbox run`): its caller gets the command's exit status as soon as
//! the command has ended and its output is written, while the sandbox is destroyed after, by a process the caller
//! does not wait for.
//!
//! [`split`] forks the process at the top of `main`, while it has one thread. The original process, the one its
//! caller waits for, becomes the *front*: it waits on a pipe and forwards the termination signals it is sent
//! (SIGINT, SIGTERM, SIGHUP, SIGQUIT) to the child. The child, the *worker*, runs the program. When the command
//! is over the worker calls [`Caller::answer`]: its standard input and outputs become `/dev/null` (so a caller
//! reading them to their end sees the end), it writes the exit code on the pipe, and the front exits with it.
//! The worker then destroys the sandbox and exits; the caller has its answer about a millisecond (the destroy:
//! the init's exit, the cgroups, the storage layer, the id range) earlier. That remainder runs under `SCHED_IDLE`,
//! so that it takes no CPU from the caller's next command, which may start at once.
//!
//! Nothing is left behind that would not be without it: the worker owns its sandboxes as the whole process did,
//! so if it dies before its destroy has finished, the next process's orphan reaping removes what is left, as
//! after any crash. Until it answers, the worker dies with the front (`PR_SET_PDEATHSIG`): a front killed with
//! SIGKILL takes its command with it, as the single process did. A worker that ends without answering (an error,
//! `--help`, a signal) is waited for, and the front exits as it did: with its code, or by its signal.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The signals the front forwards to the worker.
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The worker's end of the way to the waiting front.
#[derive(Debug)]
pub struct Caller {
    pipe: OwnedFd,
}

/// Splits this process into the front and the worker (see the module's docs) and returns in the worker; the front
/// never returns. `None` (nothing split) when the process has more than one thread or the fork fails: the process
/// then runs the program alone, as before.
#[must_use]
pub fn split() -> Option<Caller> {
    let one_thread = std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1);
    if !one_thread {
        return None;
    }
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
    let front_pid = rustix::process::getpid();
    // SAFETY: the process has one thread (checked above, and nothing here starts one), so the child is a
    // consistent copy of it. The parent is the original process and carries on as usual.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {
            drop(read);
            // Until it answers, the worker dies with the front. The front may have died before this was set.
            // SAFETY: prctl with integer arguments only.
            let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if set != 0 || rustix::process::getppid() != Some(front_pid) {
                // SAFETY: leaving the fork without running the program's destructors or atexit handlers.
                unsafe { libc::_exit(1) }
            }
            Some(Caller { pipe: write })
        }
        pid if pid > 0 => {
            drop(write);
            let code = front(&read, pid);
            // Nothing of the program ran here, so there is nothing to flush or tear down: the caller is waiting.
            // SAFETY: ends this process at once, as it is.
            unsafe { libc::_exit(code) }
        }
        _ => None,
    }
}

impl Caller {
    /// Gives the caller `code` now: this process's standard input and outputs become `/dev/null`, it no longer
    /// dies with the front, and the front exits with `code`. Call it once the command's output is all written;
    /// whatever this process prints afterwards is not seen.
    pub fn answer(self, code: u8) {
        if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
            for fd in 0..=2 {
                // SAFETY: dup2 takes integer arguments only; it replaces a standard descriptor in one step, and
                // every handle std keeps on 0 to 2 stays valid (it refers to /dev/null from now on).
                let _ = unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        // SAFETY: prctl with integer arguments only.
        let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        let _ = rustix::io::write(&self.pipe, &[code]);
        in_the_background();
    }
}

/// Puts every thread of this process under `SCHED_IDLE`: what is left after the answer (the destroy, the
/// housekeeping, the exit) yields the CPUs to any other work, such as the caller's next command, and still
/// finishes on a busy host (an idle thread gets a small share, not none).
fn in_the_background() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    let param = libc::sched_param { sched_priority: 0 };
    for tid in tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok()) {
        // SAFETY: sched_setscheduler reads one sched_param, a local that outlives the call; a thread that
        // has exited since the listing fails with ESRCH, which is ignored.
        let _ = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &raw const param) };
    }
}

/// The front: waits for the worker `worker`'s answer on `pipe`, forwarding the termination signals it gets, and
/// returns the code to exit with. When the worker ends without answering, exits as it did (by its signal too).
fn front(pipe: &OwnedFd, worker: libc::pid_t) -> i32 {
    let signals = blocked_signals();
    loop {
        let mut fds = vec![rustix::event::PollFd::new(pipe, rustix::event::PollFlags::IN)];
        if let Some(sfd) = &signals {
            fds.push(rustix::event::PollFd::new(sfd, rustix::event::PollFlags::IN));
        }
        if rustix::event::poll(&mut fds, None).is_err() {
            continue; // EINTR
        }
        let (from_worker, signalled) =
            (!fds[0].revents().is_empty(), fds.get(1).is_some_and(|f| !f.revents().is_empty()));
        if signalled && let Some(sfd) = &signals {
            forward(sfd, worker);
        }
        if from_worker {
            let mut code = [0u8; 1];
            return match rustix::io::read(pipe, &mut code) {
                Ok(1) => i32::from(code[0]),
                _ => exit_as(worker),
            };
        }
    }
}

/// A signalfd of [`FORWARDED`], blocked for this thread; `None` if it can't be made (signals then act on the
/// front as on any process).
fn blocked_signals() -> Option<OwnedFd> {
    // SAFETY: an all-zero sigset_t is a valid (empty) set, then filled by sigemptyset/sigaddset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&raw mut set) };
    for s in FORWARDED {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&raw mut set, s) };
    }
    // SAFETY: `set` is initialized; the old mask is not asked for.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) } != 0 {
        return None;
    }
    // SAFETY: -1 asks for a new signalfd of the initialized `set`.
    let fd = unsafe { libc::signalfd(-1, &raw const set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    // SAFETY: a new descriptor that nothing else owns, when the call succeeded.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the pending signals from `sfd` (non-blocking) and sends each to `worker`.
fn forward(sfd: &OwnedFd, worker: libc::pid_t) {
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    let mut buf = vec![0u8; size];
    while rustix::io::read(sfd.as_fd(), &mut buf).is_ok_and(|n| n == size) {
        // `ssi_signo`, the structure's first field.
        let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if let Ok(signo) = libc::c_int::try_from(signo) {
            // SAFETY: kill with integer arguments only; `worker` is this process's child, not yet waited for.
            let _ = unsafe { libc::kill(worker, signo) };
        }
    }
}

/// Waits for the worker and returns its exit code; when a signal ended it, ends this process by the same signal.
fn exit_as(worker: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on this process's own child, with a valid pointer to `status`.
        let r = unsafe { libc::waitpid(worker, &raw mut status, 0) };
        if r == worker {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    if libc::WIFSIGNALED(status) {
        let signo = libc::WTERMSIG(status);
        // SAFETY: restoring the default action of a valid signal number.
        unsafe { libc::signal(signo, libc::SIG_DFL) };
        // SAFETY: an all-zero sigset_t is a valid (empty) set, then filled by sigemptyset/sigaddset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&raw mut set) };
        // SAFETY: as above; `signo` is a valid signal number.
        unsafe { libc::sigaddset(&raw mut set, signo) };
        // SAFETY: `set` is initialized; the old mask is not asked for.
        unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut()) };
        // SAFETY: raise with a valid signal number: its default action ends this process as the worker ended.
        unsafe { libc::raise(signo) };
        return 128 + signo;
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the copy of this test binary that [`after_the_answer_every_thread_runs_at_idle_priority`] starts.
    const IN_CHILD: &str = "AGENTBOX_TEST_BACKGROUND_CHILD";

    fn policies() -> Vec<libc::c_int> {
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok())
            // SAFETY: integer argument; a thread gone since the listing reads -1.
            .map(|tid| unsafe { libc::sched_getscheduler(tid) })
            .collect()
    }

    #[test]
    fn after_the_answer_every_thread_runs_at_idle_priority() {
        if std::env::var_os(IN_CHILD).is_some() {
            // In its own process (the policy would otherwise slow every other test of this binary).
            let other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
            in_the_background();
            let after = policies();
            assert!(after.len() >= 2 && after.iter().all(|&p| p == libc::SCHED_IDLE), "{after:?}");
            other.join().expect("thread");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", "early_exit::tests::after_the_answer_every_thread_runs_at_idle_priority", "--nocapture"])
            .env(IN_CHILD, "1")
            .output()
            .expect("running the test in a process of its own");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(policies().iter().all(|&p| p != libc::SCHED_IDLE), "this process was left at idle priority");
    }
}
