//! Starting one execution: the child side, from fork to execve.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::cpu::{Contention, Pinned};
use crate::proto::{Exec, Setup};
use crate::sys;

/// Everything prepared before fork, so the child only makes syscalls (and landlock setup).
pub struct Prepared {
    pub path: CString,
    /// Owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    /// Owns the strings `env_ptrs` points into.
    _env: Vec<CString>,
    pub cwd: CString,
    /// Where to start when `cwd` can't be entered.
    pub cwd_fallback: Option<CString>,
    pub output_path: Option<CString>,
    /// `argv` and `env` as the null-terminated pointer arrays `execve` takes, made before the
    /// child starts (it allocates nothing).
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
}

fn lookup(cmd: &str, path_var: &str) -> Option<String> {
    if cmd.contains('/') {
        return Some(cmd.to_owned());
    }
    use std::os::unix::fs::PermissionsExt;
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Why an execution could not be prepared; the message is what the user sees on stderr, as a shell says it.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No program was given.
    #[error("empty command")]
    EmptyCommand,
    /// The program is neither a path nor found on `PATH`.
    #[error("{0}: command not found")]
    NotFound(String),
    /// An argument, a variable, the program or a path holds a NUL byte.
    #[error("arguments must not contain NUL bytes")]
    Nul(#[from] std::ffi::NulError),
}

/// Resolves the program and builds the C strings.
///
/// # Errors
/// A [`PrepareError`] for the user when the command can't be found or has NUL bytes.
pub fn prepare(setup: &Setup, exec: &Exec) -> Result<Prepared, PrepareError> {
    let mut env = setup.env.clone();
    env.extend(exec.env.clone());
    let path_var = env.get("PATH").cloned().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let cmd = exec.argv.first().ok_or(PrepareError::EmptyCommand)?;
    let path = lookup(cmd, &path_var).ok_or_else(|| PrepareError::NotFound(cmd.clone()))?;
    let c = |s: &str| CString::new(s).map_err(PrepareError::from);
    let argv: Vec<CString> = exec.argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let env: Vec<CString> = env.iter().map(|(k, v)| c(&format!("{k}={v}"))).collect::<Result<_, _>>()?;
    // The pointers stay valid when `Prepared` moves: they point into each CString's own buffer.
    let ptrs = |v: &[CString]| v.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    Ok(Prepared {
        path: c(&path)?,
        argv_ptrs: ptrs(&argv),
        env_ptrs: ptrs(&env),
        _argv: argv,
        _env: env,
        cwd: c(&exec.cwd)?,
        cwd_fallback: exec.cwd_fallback.as_deref().map(c).transpose()?,
        output_path: exec.output_path.as_deref().map(c).transpose()?,
    })
}

/// The descriptors the child wires to 0, 1 and 2 (`None`: /dev/null for stdin, the output file for the others).
pub struct Stdio<'a> {
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
    /// The join file (`tasks` or `cgroup.procs`) of the execution's own cgroup, if it has one.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// stdin is a terminal's slave side, to become the child's controlling terminal.
    pub tty: bool,
}

/// What the errors a start can fail with say (as strerror says it); others are reported by number.
/// A table, because the child may call nothing that is not async-signal-safe, and strerror is not.
const ERRNO_MESSAGES: &[(i32, &[u8])] = &[
    (libc::EPERM, b"Operation not permitted"),
    (libc::ENOENT, b"No such file or directory"),
    (libc::ENXIO, b"No such device or address"),
    (libc::E2BIG, b"Argument list too long"),
    (libc::ENOEXEC, b"Exec format error"),
    (libc::EAGAIN, b"Resource temporarily unavailable"),
    (libc::ENOMEM, b"Cannot allocate memory"),
    (libc::EACCES, b"Permission denied"),
    (libc::EFAULT, b"Bad address"),
    (libc::ENOTDIR, b"Not a directory"),
    (libc::EISDIR, b"Is a directory"),
    (libc::EINVAL, b"Invalid argument"),
    (libc::ENFILE, b"Too many open files in system"),
    (libc::EMFILE, b"Too many open files"),
    (libc::ETXTBSY, b"Text file busy"),
    (libc::EFBIG, b"File too large"),
    (libc::ENOSPC, b"No space left on device"),
    (libc::EROFS, b"Read-only file system"),
    (libc::ENAMETOOLONG, b"File name too long"),
    (libc::ELOOP, b"Too many levels of symbolic links"),
    (libc::EDQUOT, b"Disk quota exceeded"),
];

/// Writes what `errno` means into `buf` without allocating; returns the bytes written.
fn describe_errno(errno: i32, buf: &mut [u8; 32]) -> &[u8] {
    if let Some((_, msg)) = ERRNO_MESSAGES.iter().find(|(e, _)| *e == errno) {
        return msg;
    }
    let prefix = b"errno ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let (mut v, mut n) = (errno.unsigned_abs(), 0);
    loop {
        digits[n] = b'0' + u8::try_from(v % 10).unwrap_or(0);
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        buf[prefix.len() + i] = *d;
    }
    &buf[..prefix.len() + n]
}

/// Reports why the command could not start on its stderr and exits 127, allocating nothing: the
/// child shares the init's memory (see [`Spawner`]).
fn fail(parts: &[&[u8]], errno: Option<i32>) -> ! {
    let mut buf = [0u8; 1024];
    let mut n = 0;
    let mut push = |b: &[u8]| {
        let take = b.len().min(buf.len() - n);
        buf[n..n + take].copy_from_slice(&b[..take]);
        n += take;
    };
    push(b"agentbox: cannot start the command: ");
    for p in parts {
        push(p);
    }
    if let Some(errno) = errno {
        let mut num = [0u8; 32];
        push(b": ");
        push(describe_errno(errno, &mut num));
    }
    push(b"\n");
    // SAFETY: descriptor 2 is open in this child until it execs or exits: nothing here closes it (dup2 onto it
    // replaces it in one step), and the borrow ends with this call.
    let stderr = unsafe { BorrowedFd::borrow_raw(2) };
    // Allocates nothing: write(2) calls on a slice of the local buffer.
    let _ = sys::write_all(stderr, &buf[..n]);
    // SAFETY: _exit is always safe; 127 is the conventional "could not execute" code.
    unsafe { libc::_exit(127) }
}

fn ok(step: &str, rc: libc::c_int) {
    if rc == -1 {
        fail(&[step.as_bytes()], io::Error::last_os_error().raw_os_error());
    }
}

/// The landlock ruleset of root executions (where the sandbox allows root inside): read and execute
/// everywhere, write everywhere but `/proc` and `/sys` (root installs into an image's writable root). `/proc`
/// stays read-only for the reason given in [`landlock_ruleset`].
///
/// # Errors
/// When the ruleset can't be built.
pub fn landlock_root_ruleset() -> io::Result<Option<OwnedFd>> {
    use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, path_beneath_rules};
    let abi = ABI::V3;
    let err = |e: landlock::RulesetError| io::Error::other(e.to_string());
    let writable: Vec<std::path::PathBuf> = std::fs::read_dir("/")?
        .flatten()
        .filter(|e| e.file_name() != "proc" && e.file_name() != "sys")
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/", "/proc/self/exe"], AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))
        .map_err(err)
        .map(Option::from)
}

/// The landlock ruleset every execution runs under: read and execute everywhere (and the agent's executable),
/// write only in home, /tmp, /dev and /proc. Built once by the init, applied in each child with raw
/// system calls (the child may not run the landlock crate's code); `None` when the kernel has no landlock.
///
/// # Errors
/// When the ruleset can't be built.
pub fn landlock_ruleset(home: &str, volumes: &[&str]) -> io::Result<Option<OwnedFd>> {
    use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, path_beneath_rules};
    let abi = ABI::V3;
    let err = |e: landlock::RulesetError| io::Error::other(e.to_string());
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        // The agent's own executable too (the host binary, outside the sandbox's tree, when it runs
        // uncopied: see `sealed`), so tools can run helpers through /proc/self/exe.
        .add_rules(path_beneath_rules(["/", "/proc/self/exe"], AccessFs::from_read(abi)))
        .map_err(err)?
        // /proc stays read-only (under the rule of `/`): in a user namespace an execution can't pin its raised
        // OOM score (that takes CAP_SYS_RESOURCE of the host), so it must not be able to write it back down
        // to the init's. Its descriptors' targets (`/proc/self/fd/N`) are checked as what they are.
        .add_rules(path_beneath_rules([home, "/tmp", "/dev"], AccessFs::from_all(abi)))
        .map_err(err)?
        // Writable volumes (read-only ones are read-only mounts, under the read rule of `/`).
        .add_rules(path_beneath_rules(volumes, AccessFs::from_all(abi)))
        .map_err(err)
        .map(Option::from)
}

/// Confinement every execution shares, applied once to the init after it has built the
/// sandbox and inherited by every child it forks: an empty capability bounding set (the init
/// keeps its own effective capabilities; it never executes anything itself), no ambient
/// capabilities, no_new_privs and the seccomp filter (the init needs none of what it denies,
/// and compiling the filter once saves the kernel's conversion and JIT per execution).
///
/// # Errors
/// The step that failed.
pub fn confine(setup: &Setup) -> io::Result<()> {
    let step = |what: &str, rc: libc::c_int| {
        if rc == -1 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    };
    // Root inside keeps a container's default set (ROOT_CAPS), acting on the sandbox's own namespace only.
    if let Some(kept) = crate::proto::kept_capabilities(setup.drop_caps, setup.allow_root) {
        drop_bounding_set(kept)?;
        // SAFETY: integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
        step("clearing ambient capabilities", rc)?;
    }
    if setup.no_new_privs {
        // SAFETY: integer arguments.
        step("setting no_new_privs", unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    }
    for filter in &setup.seccomp {
        // SAFETY: the init is single-threaded (see `seccomp::install`).
        unsafe { crate::seccomp::install(filter) }
            .map_err(|e| io::Error::new(e.kind(), format!("installing the seccomp filter: {e}")))?;
    }
    Ok(())
}

/// Drops from the calling thread's capability bounding set every capability not in `kept` (bit `n`: capability
/// `n`). What is gone already is skipped (a drop would still allocate new credentials), so the init calls it before
/// its setup message comes, when it knows `kept` then, and again in [`confine`].
///
/// # Errors
/// The capability that could not be dropped.
pub fn drop_bounding_set(kept: u64) -> io::Result<()> {
    for cap in 0..=63u32 {
        // A capability beyond the kernel's last one reads EINVAL, as its drop does: the end of the list.
        // SAFETY: integer arguments.
        if kept & (1 << cap) != 0 || unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } == 0 {
            continue;
        }
        // SAFETY: integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(io::Error::new(e.kind(), format!("dropping capability {cap}: {e}")));
        }
    }
    Ok(())
}

/// A stack for the children the [`Spawner`] starts, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<Self> {
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: a fresh private anonymous mapping; only its pages are touched below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of our own mapping becomes the guard.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } == -1 {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what we just mapped.
            unsafe { libc::munmap(base, len) };
            return Err(e);
        }
        Ok(Self { base, len })
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, 16-byte aligned (mmap returns page-aligned memory).
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// What a child reads until it execs; all of it lives until the start is over.
struct Job<'a> {
    setup: &'a Setup,
    identity: Identity,
    landlock: Option<&'a OwnedFd>,
    prepared: &'a Prepared,
    stdio: &'a Stdio<'a>,
    /// The init's CPUs, which the child takes back before it execs.
    pinned: Option<&'a Pinned>,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Job` `Spawner::spawn` passed to clone, alive until clone returns there,
    // which is after this child exec'd or died.
    let job = unsafe { &*arg.cast::<Job<'_>>() };
    if let Some(pinned) = job.pinned {
        pinned.unpin();
    }
    child(job.setup, job.identity, job.landlock, job.prepared, job.stdio)
}

/// Who an execution runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The sandbox's user (the setup's uid and gid), with no capabilities.
    User,
    /// Root inside (uid and gid 0 of the sandbox's user namespace), with [`crate::proto::ROOT_CAPS`].
    Root,
}

/// How long a child may take from clone to `execve` before it kills itself. Starting takes well under
/// a millisecond; only a child stopped on purpose (sandboxed code can send SIGSTOP to every process
/// of its user, and the child has that user's uid just before it execs) takes this long.
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts executions the way `posix_spawn` does: a child that shares the init's memory
/// (`CLONE_VM`) on a stack of its own, while the init waits (`CLONE_VFORK`) until it has called
/// `execve` or exited. Nothing is copied (no page tables, no copy-on-write faults after), which a
/// fork of the init would cost on every execution.
///
/// The child first arms a timer that sends it SIGKILL after [`START_LIMIT`]; `execve` deletes the
/// timer. So a child that sandboxed code stops before it execs can't hang the init in that wait.
/// The child allocates nothing (so killing it can't leave a lock held) and makes raw system calls
/// where glibc would consult process-wide state.
pub struct Spawner {
    stack: Stack,
    contention: Contention,
}

/// How a start ended.
pub enum Spawned {
    /// The child exec'd (or failed and exited 127 with the reason on its stderr).
    Started(libc::pid_t),
    /// The child did not reach `execve` in time and was killed; it will be reaped as killed.
    Killed(libc::pid_t),
    /// The clone itself failed.
    Failed(io::Error),
}

impl Spawner {
    /// Makes the children's stack.
    ///
    /// # Errors
    /// When it can't be mapped.
    pub fn new() -> io::Result<Self> {
        Ok(Self { stack: Stack::new()?, contention: Contention::new() })
    }

    /// Starts one execution; returns once it has exec'd, died, or been killed for not getting there.
    pub fn spawn(
        &mut self,
        setup: &Setup,
        identity: Identity,
        landlock: Option<&OwnedFd>,
        prepared: &Prepared,
        stdio: &Stdio<'_>,
    ) -> Spawned {
        // Under contention the child starts on this CPU, where the sandbox is running (see `agent/cpu.rs`).
        let pinned = if self.contention.check() { Pinned::here() } else { None };
        let job = Job { setup, identity, landlock, prepared, stdio, pinned: pinned.as_ref() };
        let began = std::time::Instant::now();
        // SAFETY: the child runs `child_entry` on its own stack; `job` and what it points at live on
        // until clone returns, which with CLONE_VFORK is after the child exec'd or died.
        let pid = unsafe {
            libc::clone(
                child_entry,
                self.stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&job).cast_mut().cast(),
            )
        };
        let failed = (pid < 0).then(io::Error::last_os_error);
        if let Some(pinned) = &pinned {
            pinned.unpin();
        }
        if let Some(e) = failed {
            Spawned::Failed(e)
        } else if began.elapsed() >= START_LIMIT {
            Spawned::Killed(pid)
        } else {
            Spawned::Started(pid)
        }
    }
}

/// Arms a timer that sends this process SIGKILL after [`START_LIMIT`]. `execve` deletes it.
fn arm_start_limit() {
    // SAFETY: sigevent is plain data; all zero bits is a valid value, filled in next.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_SIGNAL;
    sev.sigev_signo = libc::SIGKILL;
    let mut timer: libc::c_int = 0;
    // SAFETY: a valid sigevent to read and a timer id to write, both locals.
    if unsafe { libc::syscall(libc::SYS_timer_create, libc::CLOCK_MONOTONIC, &raw mut sev, &raw mut timer) } != 0 {
        fail(&[b"arming the start limit"], io::Error::last_os_error().raw_os_error());
    }
    // SAFETY: itimerspec is plain data; all zero bits is a valid value, filled in next.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    spec.it_value.tv_sec = libc::time_t::try_from(START_LIMIT.as_secs()).unwrap_or(2);
    let no_old = std::ptr::null_mut::<libc::itimerspec>();
    // SAFETY: the timer just created and a valid itimerspec, read only.
    if unsafe { libc::syscall(libc::SYS_timer_settime, timer, 0, &raw const spec, no_old) } != 0 {
        fail(&[b"arming the start limit"], io::Error::last_os_error().raw_os_error());
    }
}

/// What every execution writes to its `oom_score_adj` before it drops its privileges: the OOM
/// killer then takes an execution before the init (at -1000 when the host may grant that, else at the
/// default 0). Written with the init's capabilities, it is also the floor sandboxed code can't lower
/// its processes below.
pub const OOM_SCORE_ADJ: &[u8] = b"500";

/// The child: isolates itself further and execs. Never returns.
///
/// It runs on the [`Spawner`]'s stack in the init's memory while the init is suspended, so it may only do
/// what is safe in a `vfork` child, which is what is async-signal-safe: it allocates nothing (the allocator's
/// lock may be held, and what it would allocate is the init's), takes no lock, and never unwinds (every failure
/// goes to [`fail`], which writes from a stack buffer and calls `_exit`). What it calls, and why each is safe:
/// - `open`, `write`, `close`, `dup2`, `fcntl`, `fchown`, `setsid`, `chdir`, `signal`, `sigprocmask`, `execve`
///   and `_exit`: on POSIX's list of async-signal-safe functions (signal-safety(7)); glibc's are thin wrappers
///   of one system call each (`sigprocmask` leaves glibc's internal signals alone, which is what it should).
/// - `prctl`, `ioctl` and `setrlimit`: not on that list, but glibc's are thin wrappers of one system call that
///   read no process-wide state.
/// - `setgroups`, `setresgid`, `setresuid`, `capset`, `landlock_restrict_self`, `close_range`, `timer_create`
///   and `timer_settime`: raw `syscall`s, because glibc's wrappers of the first three apply the change to every
///   thread of the process they believe they are in (whose memory this child shares), and its `timer_create`
///   may allocate (older versions) or start a helper thread. Landlock is applied to the ruleset the init built with the landlock crate,
///   never with that crate's code here.
/// - `sys::write_all` and `sys::write` (loops over `write`), `describe_errno` (a table lookup) and `errno`
///   reads (`io::Error::last_os_error`, whose OS errors hold a number, not an allocation).
///
/// Each call writes `errno`, which is the init's (the same thread-local storage); the init reads none of it
/// after the clone but the clone's own.
pub fn child(setup: &Setup, identity: Identity, landlock: Option<&OwnedFd>, p: &Prepared, io: &Stdio<'_>) -> ! {
    let (uid, gid) = match identity {
        Identity::User => (setup.uid, setup.gid),
        Identity::Root => (0, 0),
    };
    // First of all: whatever stops this child below, it dies within the start limit.
    arm_start_limit();
    // Everything read below stays alive and unchanged until this child execs or exits (see `Spawner`).
    // Nothing here allocates: each call is one system call, or an async-signal-safe libc wrapper of one (see
    // above for the list).
    // SAFETY: setsid has no preconditions.
    ok("setsid", unsafe { libc::setsid() });
    if let Some(procs) = io.cgroup_procs {
        if let Err(e) = sys::write(procs, b"0") {
            fail(&[b"joining the execution cgroup"], e.raw_os_error());
        }
    }
    // The previous execution's change of ids made the memory it shared with the init (this child's too)
    // undumpable, which gives this process's /proc files to the host's root, out of reach of the sandbox's
    // root in a user namespace: dumpable again, they are this process's own. (Its own change of ids below
    // makes it undumpable again until it execs.)
    // SAFETY: integer arguments.
    ok("making /proc/self ours", unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) });
    // SAFETY: a static NUL-terminated path.
    let adj = unsafe { libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    ok("opening oom_score_adj", adj);
    // SAFETY: a static buffer of the given length, to the descriptor just opened.
    let written = unsafe { libc::write(adj, OOM_SCORE_ADJ.as_ptr().cast(), OOM_SCORE_ADJ.len()) };
    ok("setting oom_score_adj", if written < 0 { -1 } else { 0 });
    // SAFETY: closes the descriptor just opened, which nothing else uses.
    unsafe { libc::close(adj) };
    // SAFETY: a static NUL-terminated path.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    let stdin = io.stdin.map_or(null, |fd| fd.as_raw_fd());
    let (stdout, stderr) = match &p.output_path {
        Some(path) => {
            // O_NONBLOCK: a FIFO planted at the path fails here instead of blocking (the
            // init waits for this child to exec).
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_NONBLOCK;
            // SAFETY: `path` is a NUL-terminated string that `p` owns.
            let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644) };
            ok("opening the output file", fd);
            // SAFETY: integer arguments, on the descriptor just opened.
            ok("opening the output file", unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_APPEND) });
            // SAFETY: integer arguments, on the descriptor just opened.
            ok("owning the output file", unsafe { libc::fchown(fd, uid, gid) });
            (fd, fd)
        }
        None => (io.stdout.map_or(-1, |fd| fd.as_raw_fd()), io.stderr.map_or(-1, |fd| fd.as_raw_fd())),
    };
    // SAFETY: dup2 of descriptors this child holds onto 0, 1 and 2.
    ok("stdin", unsafe { libc::dup2(stdin, 0) });
    // SAFETY: as above.
    ok("stdout", unsafe { libc::dup2(stdout, 1) });
    // SAFETY: as above.
    ok("stderr", unsafe { libc::dup2(stderr, 2) });
    if io.tty {
        // The child leads a new session (setsid above), so its terminal can become the controlling one.
        // SAFETY: an integer ioctl on descriptor 0, the terminal's slave side.
        ok("making the terminal the controlling one", unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) });
    }
    let raw = |rc: libc::c_long| libc::c_int::try_from(rc).unwrap_or(-1);
    // Landlock first: its ruleset is one of the descriptors closed next. Kernels without
    // landlock have no ruleset (reported at sandbox start). What the landlock crate's
    // restrict_self does, as raw calls: no_new_privs, then landlock_restrict_self.
    if let Some(ruleset) = landlock {
        // SAFETY: integer arguments.
        ok("setting no_new_privs", unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) });
        // SAFETY: the ruleset's descriptor, which the init keeps open while this child runs.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
        ok("applying landlock", raw(rc));
    }
    // No inherited descriptors: everything above 2 goes.
    // SAFETY: integer arguments; nothing below uses a descriptor above 2.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: the default action, set with the async-signal-safe signal().
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: sigset_t is plain data, and all zero bits are the empty set.
    let none: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid set, read only.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut()) };

    let lim = |res, v: u64| {
        let r = libc::rlimit { rlim_cur: v, rlim_max: v };
        // SAFETY: a valid rlimit, read only.
        unsafe { libc::setrlimit(res, &raw const r) }
    };
    ok("rlimit nofile", lim(libc::RLIMIT_NOFILE, setup.nofile));
    ok("rlimit core", lim(libc::RLIMIT_CORE, 0));
    ok("rlimit fsize", lim(libc::RLIMIT_FSIZE, setup.fsize));

    // The capability bounding set, no_new_privs and the seccomp filter are already the
    // init's (see `confine`), inherited over fork.
    // Raw system calls: glibc's wrappers would try to apply the change to every thread of
    // the process they believe they are in, whose memory this child shares.
    // SAFETY: one gid, read from a local.
    ok("setgroups", raw(unsafe { libc::syscall(libc::SYS_setgroups, 1, &raw const gid) }));
    // SAFETY: integer arguments.
    ok("setresgid", raw(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }));
    // SAFETY: integer arguments.
    ok("setresuid", raw(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }));
    if setup.drop_caps {
        // The user's change of uid cleared its capabilities already; root's are cut to ROOT_CAPS (execve
        // then keeps the bounding set's, which `confine` cut to the same).
        let header = libc_cap_header();
        let mut data = [CapData::default(); 2];
        if identity == Identity::Root {
            for &cap in crate::proto::ROOT_CAPS {
                let (word, bit) = (cap as usize / 32, cap % 32);
                data[word].effective |= 1 << bit;
                data[word].permitted |= 1 << bit;
            }
        }
        // SAFETY: a valid header and the two data structures capset reads for version 3.
        ok("capset", raw(unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) }));
    }
    // SAFETY: `p.cwd` is a NUL-terminated string that `p` owns.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } == -1 {
        let entered = p.cwd_fallback.as_ref().is_some_and(|fallback| {
            // SAFETY: a NUL-terminated string that `p` owns.
            unsafe { libc::chdir(fallback.as_ptr()) == 0 }
        });
        if !entered {
            fail(&[b"changing to ", p.cwd.as_bytes()], io::Error::last_os_error().raw_os_error());
        }
    }
    // SAFETY: the path and the NULL-terminated argv and envp arrays, which point into strings `p`
    // owns (see `Prepared`).
    unsafe { libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr()) };
    fail(&[b"executing ", p.path.as_bytes()], io::Error::last_os_error().raw_os_error())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn libc_cap_header() -> CapHeader {
    CapHeader { version: 0x2008_0522, pid: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_strerror_says_them_without_calling_it() {
        let mut buf = [0u8; 32];
        for (errno, msg) in ERRNO_MESSAGES {
            // SAFETY: strerror with a valid errno returns a NUL-terminated string (on this test's thread only).
            let text = unsafe { libc::strerror(*errno) };
            // SAFETY: as above; it stays valid until the next strerror on this thread.
            let expected = unsafe { std::ffi::CStr::from_ptr(text) };
            assert_eq!(*msg, expected.to_bytes(), "errno {errno}");
        }
        assert_eq!(describe_errno(libc::ENOENT, &mut buf), b"No such file or directory");
        assert_eq!(describe_errno(4095, &mut buf), b"errno 4095");
        assert_eq!(describe_errno(0, &mut buf), b"errno 0");
    }
}
