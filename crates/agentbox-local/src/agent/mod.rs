//! The in-sandbox agent: PID 1 of the sandbox's pid namespace.
//!
//! The host re-executes a sealed copy of its own binary with
//! [`AGENT_ENV`] set; a constructor that runs before `main` diverts that
//! process here, so any program linking this crate can host sandboxes with no
//! extra binary to install (the `runc init` pattern).
//!
//! That process is the zygote (`agent/zygote.rs`): it clones each sandbox's init (PID 1
//! of fresh namespaces) on request. The init builds the filesystem, then serves
//! execution requests over the control socket until the host closes it, at
//! which point the init exits and the kernel kills everything left in the
//! namespace.
//!
//! Helpers inside the sandbox: an execution whose program is `/proc/self/exe` runs this same
//! program. The execution's child is a clone of the init (itself a clone of the zygote, which is
//! the sealed copy), and `execve` resolves the link before the new image replaces the old one. The
//! result is an ordinary execution (the sandbox user, no capabilities, no_new_privs, the seccomp
//! filter, landlock, its own execution cgroup), so a program linking this crate can run a helper of
//! its own inside the sandbox by entering it from a constructor, as the zygote is entered here.
//! `agentbox-tools` runs its browser driver this way, so that DevTools is parsed inside the sandbox.
//! What a helper sends back is execution output, which the host reads as size-checked frames
//! (`tests/self_exe.rs` checks the confinement).

mod cpu;
mod exec;
pub mod fs;
mod winsize;
pub(crate) mod zygote;

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proto::{self, Exec, Exited, Failure, Kill, Kind, Proc, ProcList, Ready, Setup, Started};
use crate::sys;

/// Environment variable that turns a process into a sandbox agent.
pub const AGENT_ENV: &str = "AGENTBOX_LOCAL_AGENT";
/// The control socket's fd in the agent.
pub const CONTROL_FD: libc::c_int = 3;

#[ctor::ctor]
fn agent_entry() {
    if std::env::var_os(AGENT_ENV).is_some_and(|v| v == ZYGOTE) {
        let code = zygote::main();
        // SAFETY: leaving without running the host program's main or destructors is the point.
        unsafe { libc::_exit(code) }
    }
}

/// Referenced by the backend so the constructor above is always linked in.
pub fn entry_point() -> extern "C" fn() {
    agent_entry
}

/// The value of [`AGENT_ENV`] that makes a process the zygote.
pub const ZYGOTE: &str = "zygote";

fn send_failure(control: BorrowedFd<'_>, message: String) {
    let f = proto::encode_json(Kind::Failure, 0, &Failure { message, errno: None });
    let _ = sys::write_all(control, &f);
}

/// Reads the setup message, with the descriptors that ride along with its first bytes.
fn read_setup(control: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut h = [0u8; proto::HEADER];
    let (n, fds) = sys::recv_with_fds(control, &mut h)?;
    if n == 0 {
        return Ok(None);
    }
    if n < h.len() && !sys::read_exact(control, &mut h[n..])? {
        return Ok(None);
    }
    let (kind, _, len) = proto::parse_header(&h);
    if kind != Kind::Setup as u8 || len > proto::MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected a setup frame, got kind {kind}")));
    }
    let mut payload = vec![0u8; len];
    if !sys::read_exact(control, &mut payload)? {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the setup frame ended early"));
    }
    Ok(Some((payload, fds)))
}

fn bring_loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) takes integer arguments only.
    let fd = sys::check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded: the descriptor is new, and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data (a name and a union of integers), for which all zero bits are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = libc::c_char::try_from(*b).unwrap_or(0);
    }
    // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq, which outlives the call.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) })?;
    let up = libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING).unwrap_or(0);
    // SAFETY: SIOCGIFFLAGS filled in the union's flags member, which is read and written here.
    unsafe { req.ifr_ifru.ifru_flags |= up };
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which outlives the call.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) }).map(drop)
}

fn init_main(bounding: Option<u64>) -> i32 {
    // SAFETY: the zygote's clone put the control socket at CONTROL_FD (see `zygote::child`) and closed every
    // other descriptor above it; nothing else in this process owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes, a static here.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"agentbox-init".as_ptr()) };
    let failed = |message: String| {
        send_failure(control.as_fd(), message);
        1
    };
    let early = Early::make(bounding);
    let (mut setup, passed): (Setup, _) = match read_setup(control.as_fd()) {
        Ok(Some((payload, fds))) => match serde_json::from_slice(&payload) {
            Ok(s) => (s, fds),
            Err(e) => return failed(format!("invalid setup message: {e}")),
        },
        Ok(None) => return 1,
        Err(e) => return failed(format!("reading the setup message failed: {e}")),
    };
    // The host's directories arrive as descriptors: reached through them, not by their paths.
    let via = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut image = fs::ImageSources::default();
    for (role, fd) in setup.passed.clone().into_iter().zip(&passed) {
        match role {
            proto::PassedDir::Home => setup.home_source = Some(via(fd)),
            proto::PassedDir::Etc => setup.etc = Some(via(fd)),
            proto::PassedDir::Lower => image.lowers.push(via(fd)),
            proto::PassedDir::Layer => image.layer = Some(via(fd)),
            proto::PassedDir::Volume => image.volumes.push(via(fd)),
        }
    }
    let started = Instant::now();
    // Into the sandbox's cgroups first (unless the host moved this process already), then a cgroup namespace
    // rooted there.
    for procs in &setup.cgroups {
        if let Err(e) = std::fs::write(procs, "0") {
            return failed(format!("joining the sandbox cgroup {procs} failed: {e}"));
        }
    }
    // SAFETY: unshare takes integer arguments only.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } == -1 {
        return failed(format!("creating the sandbox's cgroup namespace failed: {}", io::Error::last_os_error()));
    }
    let built = early
        .root
        .and_then(|new| fs::build(&mut fs::LinuxMounter::default(), Path::new(&via(&new)), &setup, Some(&image)));
    if let Err(e) = built {
        return failed(format!("building the sandbox filesystem failed: {e}"));
    }
    drop(passed);
    if let Ok(h) = CString::new(setup.hostname.clone()) {
        // SAFETY: valid buffer and length.
        unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) };
    }
    if let Err(e) = early.loopback {
        return failed(format!("bringing up loopback failed: {e}"));
    }
    let landlock = early.landlock;
    // The init relays every execution's start, output and exit: short slices keep those wake-ups quick beside
    // busy neighbours. Its children (the sandbox's programs) start with the kernel's defaults.
    let _ = agentbox_core::sched::request_short_slices(agentbox_core::sched::INIT_SLICE);
    let exec_cgroups = setup.exec_cgroups != "none" && Path::new("/.agentbox/cg/cgroup.procs").exists();
    if let Err(e) = exec::confine(&setup) {
        return failed(format!("confining the sandbox init failed: {e}"));
    }
    let setup_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let ready = Ready { landlock, exec_cgroups, setup_micros };
    if sys::write_all(control.as_fd(), &proto::encode_json(Kind::Ready, 0, &ready)).is_err() {
        return 1;
    }
    match Agent::new(control, setup, exec_cgroups).and_then(|mut a| a.run()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// What the init makes before its setup message comes, whatever the message says: the part of the sandbox's
/// setup that can overlap the host's making of its cgroups and storage (the zygote released this process once
/// its id maps were written). A step that failed is reported when the setup message has come, as its own failure.
/// The capability bounding set goes too when the clone's request said what it keeps (one `prctl` per capability;
/// the init's own capabilities stay until it confines itself, see `exec::confine`).
struct Early {
    /// The staging tmpfs on the root mount point (see [`fs::new_root`]), with `/dev` and `/proc` made in it
    /// (see [`fs::prepare`]).
    root: io::Result<OwnedFd>,
    /// Whether loopback came up.
    loopback: io::Result<()>,
    /// Landlock's status, as the ready message reports it.
    landlock: String,
}

impl Early {
    fn make(bounding: Option<u64>) -> Self {
        // A failure is confine's to report, when it tries again.
        if let Some(kept) = bounding {
            let _ = exec::drop_bounding_set(kept);
        }
        // The zygote cloned this process from the root mount point: the working directory is it.
        let root = fs::new_root().and_then(|root| {
            let staging = format!("/proc/self/fd/{}", root.as_raw_fd());
            fs::prepare(&mut fs::LinuxMounter::default(), Path::new(&staging)).map(|()| root)
        });
        Self { root, loopback: bring_loopback_up(), landlock: landlock_status() }
    }
}

fn landlock_status() -> String {
    use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr};
    match Ruleset::default().handle_access(AccessFs::from_all(ABI::V3)).and_then(Ruleset::create) {
        Ok(_) => "enforced".into(),
        Err(e) => format!("unavailable: {e}"),
    }
}

/// The most typed input held for a terminal whose program doesn't read it.
const MAX_TTY_TYPEAHEAD: usize = 1 << 20;

/// One of an execution's streams, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

struct Running {
    pid: i32,
    argv: Vec<String>,
    /// Where its output is read: a pipe's read end, or the terminal's master; `None` once closed.
    stdout: Option<OwnedFd>,
    /// Where its errors are read: a pipe's read end; `None` on a terminal, or once closed.
    stderr: Option<OwnedFd>,
    /// Where its input is written: a pipe's write end, or a duplicate of the terminal's master; `None` when it
    /// reads no input, or once closed.
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    deadline: Option<Instant>,
    started: Instant,
    timed_out: bool,
    status: Option<i32>,
    cgroup: Option<String>,
    background: Option<String>,
    /// Runs on a terminal whose master is `stdout` (input goes to a duplicate of it, `stdin`).
    tty: bool,
    /// The terminal's last size from the host, held for a while against a line editor's write-back.
    size_watch: Option<winsize::SizeWatch>,
}

impl Running {
    fn fd(&self, stream: Stream) -> Option<&OwnedFd> {
        match stream {
            Stream::Stdin => self.stdin.as_ref(),
            Stream::Stdout => self.stdout.as_ref(),
            Stream::Stderr => self.stderr.as_ref(),
        }
    }

    /// Sets the host's last size on its terminal again if a program wrote back the size from before it.
    fn hold_size(&mut self) {
        if let (Some(watch), Some(master)) = (&self.size_watch, &self.stdout) {
            if !winsize::hold(master.as_fd(), watch, Instant::now()) {
                self.size_watch = None;
            }
        }
    }

    /// Closes one of its streams.
    fn close(&mut self, stream: Stream) {
        match stream {
            Stream::Stdin => {
                self.stdin = None;
                self.stdin_buf.clear();
            }
            Stream::Stdout => self.stdout = None,
            Stream::Stderr => self.stderr = None,
        }
    }
}

/// How many finished background processes the agent keeps listing (the oldest go first).
const FINISHED_BACKGROUND_KEPT: usize = 256;

struct Agent {
    /// The control socket to the host (non-blocking).
    control: OwnedFd,
    setup: Setup,
    /// Starts executions (see `exec::Spawner`); made on first use.
    spawner: Option<exec::Spawner>,
    /// The landlock ruleset every execution applies (see `exec::landlock_ruleset`).
    landlock: Option<std::os::fd::OwnedFd>,
    /// Root executions' ruleset, where the sandbox allows root inside (see `exec::landlock_root_ruleset`).
    landlock_root: Option<std::os::fd::OwnedFd>,
    free_cgroups: Vec<String>,
    exec_cgroups: bool,
    /// Reads SIGCHLD (blocked, as SIGPIPE is).
    sigfd: OwnedFd,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    execs: HashMap<u32, Running>,
    finished_bg: Vec<Proc>,
}

const OUTBUF_HIGH: usize = 4 * 1024 * 1024;

impl Agent {
    fn new(control: OwnedFd, setup: Setup, exec_cgroups: bool) -> io::Result<Self> {
        // SIGPIPE blocked too: a write to a closed pipe or socket is an EPIPE error here, not death.
        let sigfd = sys::block_into_signalfd(&[libc::SIGCHLD, libc::SIGPIPE], &[libc::SIGCHLD])?;
        sys::set_nonblocking(control.as_fd())?;
        let writable: Vec<&str> = setup.volumes.iter().filter(|v| !v.read_only).map(|v| v.path.as_str()).collect();
        let landlock =
            if setup.landlock { exec::landlock_ruleset(&setup.home, &writable).ok().flatten() } else { None };
        let landlock_root =
            if setup.landlock && setup.allow_root { exec::landlock_root_ruleset().ok().flatten() } else { None };
        Ok(Self {
            control,
            setup,
            spawner: None,
            landlock,
            landlock_root,
            free_cgroups: Vec::new(),
            exec_cgroups,
            sigfd,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            execs: HashMap::new(),
            finished_bg: Vec::new(),
        })
    }

    fn send(&mut self, frame: &[u8]) {
        self.outbuf.extend_from_slice(frame);
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            let mut fds = vec![
                libc::pollfd {
                    fd: self.control.as_raw_fd(),
                    events: libc::POLLIN | if self.outbuf.is_empty() { 0 } else { libc::POLLOUT },
                    revents: 0,
                },
                libc::pollfd { fd: self.sigfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let throttled = self.outbuf.len() > OUTBUF_HIGH;
            // Which execution's stream each pollfd after the first two is.
            let mut owners = Vec::new();
            for (id, r) in &self.execs {
                let mut watch = |stream: Stream, events: libc::c_short| {
                    if let Some(fd) = r.fd(stream) {
                        fds.push(libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 });
                        owners.push((*id, stream));
                    }
                };
                if !throttled {
                    watch(Stream::Stdout, libc::POLLIN);
                    watch(Stream::Stderr, libc::POLLIN);
                }
                if !r.stdin_buf.is_empty() {
                    watch(Stream::Stdin, libc::POLLOUT);
                }
            }
            let now = Instant::now();
            let timeout = self
                .execs
                .values()
                .filter(|r| r.status.is_none() && !r.timed_out)
                .filter_map(|r| r.deadline)
                .map(|d| d.saturating_duration_since(now))
                .min()
                .map_or(-1, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).saturating_add(1));
            // SAFETY: fds is an array of fds.len() pollfds, whose descriptors the agent holds until after the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents & libc::POLLOUT != 0 {
                self.flush()?;
            }
            if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !self.read_control() {
                return Ok(()); // host went away: exiting kills the whole namespace
            }
            if fds[1].revents & libc::POLLIN != 0 {
                sys::drain_signalfd(self.sigfd.as_fd());
                self.reap();
            }
            for (pfd, (id, stream)) in fds[2..].iter().zip(owners) {
                if pfd.revents == 0 {
                    continue;
                }
                self.service(id, stream, pfd.revents);
            }
            self.check_deadlines();
            self.finish_exited();
            if !self.outbuf.is_empty() {
                self.flush()?;
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.outbuf.is_empty() {
            match sys::write(self.control.as_fd(), &self.outbuf) {
                Ok(n) => drop(self.outbuf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the host sent; `false` when the host closed the socket.
    fn read_control(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        loop {
            match sys::read(self.control.as_fd(), &mut buf) {
                Ok(0) => return false,
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        while self.inbuf.len() >= proto::HEADER {
            let mut h = [0u8; proto::HEADER];
            h.copy_from_slice(&self.inbuf[..proto::HEADER]);
            let (kind, id, len) = proto::parse_header(&h);
            if len > proto::MAX_FRAME {
                return false;
            }
            if self.inbuf.len() < proto::HEADER + len {
                break;
            }
            let payload: Vec<u8> = self.inbuf[proto::HEADER..proto::HEADER + len].to_vec();
            self.inbuf.drain(..proto::HEADER + len);
            self.handle(kind, id, &payload);
        }
        true
    }

    fn fail(&mut self, id: u32, message: String, errno: Option<i32>) {
        // The host refuses control frames over proto::MAX_CONTROL; a message may quote a request.
        let message = proto::clip_message(message);
        self.send(&proto::encode_json(Kind::Failure, id, &Failure { message, errno }));
    }

    fn handle(&mut self, kind: u8, id: u32, payload: &[u8]) {
        match Kind::from_u8(kind) {
            Some(Kind::Ping) => self.send(&proto::encode(Kind::Ping, id, payload)),
            Some(Kind::Exec) => match serde_json::from_slice::<Exec>(payload) {
                Ok(e) => self.start(id, &e),
                Err(e) => self.fail(id, format!("invalid exec request: {e}"), None),
            },
            Some(Kind::Stdin) => {
                if let Some(r) = self.execs.get_mut(&id) {
                    if payload.is_empty() {
                        r.stdin_eof = true;
                        if r.stdin_buf.is_empty() {
                            r.close(Stream::Stdin);
                        }
                    } else if r.stdin.is_some() {
                        // A terminal's input is typed and unbounded: like a terminal's own line discipline,
                        // typeahead past what its program reads is dropped rather than held without limit.
                        let room = if r.tty { MAX_TTY_TYPEAHEAD.saturating_sub(r.stdin_buf.len()) } else { usize::MAX };
                        r.stdin_buf.extend_from_slice(&payload[..payload.len().min(room)]);
                    }
                }
            }
            Some(Kind::Kill) => match serde_json::from_slice::<Kill>(payload) {
                Ok(k) => {
                    if self.execs.contains_key(&id) {
                        self.kill_tree(id, k.signal);
                    } else {
                        self.fail(id, format!("process {id} is not running"), Some(libc::ESRCH));
                    }
                }
                Err(e) => self.fail(id, format!("invalid kill request: {e}"), None),
            },
            Some(Kind::Resize) => match serde_json::from_slice::<proto::TermSize>(payload) {
                Ok(size) => {
                    if let Some(r) = self.execs.get_mut(&id).filter(|r| r.tty) {
                        r.size_watch = r.stdout.as_ref().and_then(|master| winsize::resize(master.as_fd(), size));
                    }
                }
                Err(e) => self.fail(id, format!("invalid resize request: {e}"), None),
            },
            Some(Kind::ListProcs) => {
                let mut procs: Vec<Proc> = self
                    .execs
                    .iter()
                    .filter(|(_, r)| r.background.is_some())
                    .map(|(i, r)| Proc {
                        id: *i,
                        pid: r.pid,
                        argv: r.argv.clone(),
                        exit_code: None,
                        output_path: r.background.clone(),
                    })
                    .collect();
                procs.extend(self.finished_bg.iter().cloned());
                procs.sort_by_key(|p| p.id);
                self.send(&proto::encode_json(Kind::ListProcs, id, &ProcList { procs }));
            }
            _ => self.fail(id, format!("unexpected frame kind {kind}"), None),
        }
    }

    /// Keeps a finished background process for the process list, the most recent [`FINISHED_BACKGROUND_KEPT`].
    fn remember_finished(&mut self, process: Proc) {
        self.finished_bg.push(process);
        if self.finished_bg.len() > FINISHED_BACKGROUND_KEPT {
            self.finished_bg.remove(0);
        }
    }

    fn start(&mut self, id: u32, e: &Exec) {
        if e.root && !self.setup.allow_root {
            return self.fail(id, "this sandbox does not allow root inside".into(), Some(libc::EPERM));
        }
        let prepared = match exec::prepare(&self.setup, e) {
            Ok(p) => p,
            Err(why) => {
                // Report like a shell would: message on stderr, exit 127. The start report is a valid one (no
                // process, pid 0): the host decodes it for a background start. A background process that could
                // not start is listed as exited 127.
                self.send(&proto::encode_json(Kind::Started, id, &Started { pid: 0 }));
                if let Some(path) = &e.output_path {
                    self.remember_finished(Proc {
                        id,
                        pid: 0,
                        argv: e.argv.clone(),
                        exit_code: Some(127),
                        output_path: Some(path.clone()),
                    });
                }
                let msg = proto::clip_message(why.to_string());
                self.send(&proto::encode(Kind::Stderr, id, format!("{msg}\n").as_bytes()));
                self.send(&proto::encode_json(
                    Kind::Exited,
                    id,
                    &Exited { code: 127, signal: None, timed_out: false, micros: 0 },
                ));
                return;
            }
        };
        let cgroup = if self.exec_cgroups {
            self.free_cgroups.pop().or_else(|| {
                let dir = format!("/.agentbox/cg/e{id}");
                std::fs::create_dir(&dir).ok().map(|()| dir)
            })
        } else {
            None
        };
        // The join file of the execution's cgroup, which the child writes itself into.
        let cgroup_procs = cgroup.as_ref().and_then(|d| {
            // The child is single-threaded: joining through `tasks` (v1) skips the global threadgroup lock.
            let file = if self.setup.exec_cgroups == "v1:pids" { "tasks" } else { "cgroup.procs" };
            std::fs::OpenOptions::new().write(true).open(format!("{d}/{file}")).ok().map(OwnedFd::from)
        });
        // On a terminal, its slave side is the child's stdin, stdout and stderr, and its master is read and
        // written here (input through a second descriptor); otherwise pipes.
        let tty = match e.tty.map(|t| sys::open_pty(t.rows, t.cols)).transpose() {
            Ok(t) => t,
            Err(err) => return self.fail(id, format!("opening a terminal failed: {err}"), err.raw_os_error()),
        };
        let (master, slave) = tty.unzip();
        let master_in = match master.as_ref().map(OwnedFd::try_clone).transpose() {
            Ok(m) => m,
            Err(err) => return self.fail(id, format!("opening a terminal failed: {err}"), err.raw_os_error()),
        };
        let piped = e.output_path.is_none() && slave.is_none();
        let pipes = (|| -> io::Result<_> {
            let out = if piped { Some(sys::pipe()?) } else { None };
            let err = if piped { Some(sys::pipe()?) } else { None };
            let inp = if e.stdin && slave.is_none() { Some(sys::pipe()?) } else { None };
            Ok((out, err, inp))
        })();
        let (out, errp, inp) = match pipes {
            Ok(p) => p,
            Err(err) => return self.fail(id, format!("creating pipes failed: {err}"), err.raw_os_error()),
        };
        // Each pipe's read end and write end: one is the child's, the other the agent's.
        let ((out_read, out_write), (err_read, err_write), (in_read, in_write)) =
            (out.unzip(), errp.unzip(), inp.unzip());
        if self.spawner.is_none() {
            match exec::Spawner::new() {
                Ok(sp) => self.spawner = Some(sp),
                Err(err) => {
                    return self.fail(id, format!("starting the spawner failed: {err}"), err.raw_os_error());
                }
            }
        }
        let slave_fd = slave.as_ref().map(AsFd::as_fd);
        let stdio = exec::Stdio {
            stdin: in_read.as_ref().map(AsFd::as_fd).or(slave_fd),
            stdout: out_write.as_ref().map(AsFd::as_fd).or(slave_fd),
            stderr: err_write.as_ref().map(AsFd::as_fd).or(slave_fd),
            cgroup_procs: cgroup_procs.as_ref().map(AsFd::as_fd),
            tty: slave.is_some(),
        };
        let spawned = match &mut self.spawner {
            // Without its own ruleset, root gets the user's (never none where landlock confines the user).
            Some(sp) if e.root => {
                let landlock = self.landlock_root.as_ref().or(self.landlock.as_ref());
                sp.spawn(&self.setup, exec::Identity::Root, landlock, &prepared, &stdio)
            }
            Some(sp) => sp.spawn(&self.setup, exec::Identity::User, self.landlock.as_ref(), &prepared, &stdio),
            None => exec::Spawned::Failed(io::Error::other("no spawner")),
        };
        // The child has its copies of its ends by now (or is gone): the agent's close, so that the agent's ends
        // see end-of-file once the child's side is done with them.
        drop((cgroup_procs, slave, in_read, out_write, err_write));
        let pid = match spawned {
            exec::Spawned::Started(pid) => pid,
            exec::Spawned::Killed(pid) => {
                self.send(&proto::encode(
                    Kind::Stderr,
                    id,
                    b"agentbox: the command was stopped before it could start, and was killed\n",
                ));
                pid
            }
            exec::Spawned::Failed(err) => {
                return self.fail(id, format!("starting the command failed: {err}"), err.raw_os_error());
            }
        };
        let (stdout, stderr, stdin) = (out_read.or(master), err_read, in_write.or(master_in));
        for fd in [&stdout, &stderr, &stdin].into_iter().flatten() {
            let _ = sys::set_nonblocking(fd.as_fd());
        }
        let now = Instant::now();
        self.execs.insert(
            id,
            Running {
                pid,
                argv: e.argv.clone(),
                stdout,
                stderr,
                stdin,
                stdin_buf: Vec::new(),
                stdin_eof: false,
                deadline: (e.timeout_ms > 0).then(|| now + Duration::from_millis(e.timeout_ms)),
                started: now,
                timed_out: false,
                status: None,
                cgroup,
                background: e.output_path.clone(),
                tty: e.tty.is_some(),
                size_watch: None,
            },
        );
        self.send(&proto::encode_json(Kind::Started, id, &Started { pid }));
    }

    fn service(&mut self, id: u32, stream: Stream, revents: libc::c_short) {
        let Some(r) = self.execs.get_mut(&id) else { return };
        // Input about to be typed, or output written (a line editor writes back its size before its prompt).
        if stream != Stream::Stderr {
            r.hold_size();
        }
        let Some(fd) = r.fd(stream) else { return };
        if stream == Stream::Stdin {
            if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                r.close(Stream::Stdin);
                return;
            }
            // A full pipe (WouldBlock) is tried again when it polls writable; a broken one polls POLLERR.
            if let Ok(n) = sys::write(fd.as_fd(), &r.stdin_buf) {
                r.stdin_buf.drain(..n);
            }
            if r.stdin_buf.is_empty() && r.stdin_eof {
                r.close(Stream::Stdin);
            }
            return;
        }
        let mut buf = [0u8; 65536];
        match sys::read(fd.as_fd(), &mut buf) {
            Ok(0) => r.close(stream),
            Ok(n) => {
                let kind = if stream == Stream::Stdout { Kind::Stdout } else { Kind::Stderr };
                let frame = proto::encode(kind, id, &buf[..n]);
                self.send(&frame);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // EIO from a terminal's master once its slave side has closed.
            Err(_) => r.close(stream),
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: reaping any child; as PID 1 we also adopt orphans.
            let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(r) = self.execs.values_mut().find(|r| r.pid == pid && r.status.is_none()) {
                r.status = Some(status);
            }
        }
    }

    fn kill_tree(&mut self, id: u32, signal: i32) {
        let Some(r) = self.execs.get(&id) else { return };
        if let Some(cg) = &r.cgroup {
            if signal == libc::SIGKILL && std::fs::write(format!("{cg}/cgroup.kill"), "1").is_ok() {
                return;
            }
            for _ in 0..64 {
                let procs = std::fs::read_to_string(format!("{cg}/cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for p in &pids {
                    let _ = sys::kill(*p, signal);
                }
                if signal != libc::SIGKILL {
                    break;
                }
            }
        } else {
            let _ = sys::kill(-r.pid, signal);
            let _ = sys::kill(r.pid, signal);
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .execs
            .iter()
            .filter(|(_, r)| r.status.is_none() && !r.timed_out && r.deadline.is_some_and(|d| d <= now))
            .map(|(i, _)| *i)
            .collect();
        for id in due {
            if let Some(r) = self.execs.get_mut(&id) {
                r.timed_out = true;
            }
            self.kill_tree(id, libc::SIGKILL);
        }
    }

    fn finish_exited(&mut self) {
        let done: Vec<u32> = self.execs.iter().filter(|(_, r)| r.status.is_some()).map(|(i, _)| *i).collect();
        for id in done {
            // Drain what the process wrote before it exited.
            for _ in 0..64 {
                let before = self.outbuf.len();
                for stream in [Stream::Stdout, Stream::Stderr] {
                    self.service(id, stream, libc::POLLIN);
                }
                if self.outbuf.len() == before {
                    break;
                }
            }
            let Some(r) = self.execs.remove(&id) else { continue };
            let timed_out = r.timed_out;
            if timed_out {
                // Also take down whatever the timed-out command left behind.
                self.execs.insert(id, r);
                self.kill_tree(id, libc::SIGKILL);
                let Some(r) = self.execs.remove(&id) else { continue };
                self.finish(id, r);
            } else {
                self.finish(id, r);
            }
        }
    }

    /// Reports an execution's end; its descriptors close with `r`.
    fn finish(&mut self, id: u32, r: Running) {
        if let Some(cg) = r.cgroup.clone() {
            // An empty execution cgroup is kept for the next execution; one with processes
            // left running in the background stays theirs.
            let empty = std::fs::read_to_string(format!("{cg}/cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
            if empty && self.free_cgroups.len() < 16 {
                self.free_cgroups.push(cg);
            } else if empty {
                let _ = std::fs::remove_dir(cg);
            }
        }
        let status = r.status.unwrap_or(0);
        let (mut code, signal) = if libc::WIFSIGNALED(status) {
            (128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status)))
        } else {
            (libc::WEXITSTATUS(status), None)
        };
        if r.timed_out {
            code = 124;
        }
        let micros = u64::try_from(r.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(path) = r.background {
            self.remember_finished(Proc {
                id,
                pid: r.pid,
                argv: r.argv,
                exit_code: Some(code),
                output_path: Some(path),
            });
        }
        self.send(&proto::encode_json(Kind::Exited, id, &Exited { code, signal, timed_out: r.timed_out, micros }));
    }
}
