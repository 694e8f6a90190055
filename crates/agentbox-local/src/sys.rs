//! Thin, checked wrappers over the raw syscalls the backend needs.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path to a C string.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Converts a string to a C string.
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// Maps a `-1` return to the current errno.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// mount(2).
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let target = cpath(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are valid NUL-terminated strings or null, as mount(2) accepts.
    let rc = unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) };
    check(rc).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mount {} on {}: {e}",
                source.as_deref().map_or("none".into(), CStr::to_string_lossy),
                target.to_string_lossy()
            ),
        )
    })
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cpath(target)?;
    // SAFETY: t is a valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// kill(2), ignoring ESRCH.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    match check(unsafe { libc::kill(pid, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map(drop),
    }
}

/// One `read(2)` from `fd` into `buf`, retried on EINTR; `Ok(0)` at end of file. On a non-blocking
/// descriptor with nothing to read, an error of kind `WouldBlock`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the destination is `buf`, valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n.unsigned_abs());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `write(2)` of `data` to `fd`, retried on EINTR; returns how much was written. On a non-blocking
/// descriptor that is full, an error of kind `WouldBlock`.
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the source is `data`, valid for reads of its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            return Ok(n.unsigned_abs());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `data` to `fd` (blocking). Allocates nothing and makes only `write(2)` calls, so the
/// `CLONE_VM` child of `agent::exec` may use it.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match write(fd, data)? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => data = &data[n..],
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from `fd` (blocking); `Ok(false)` on EOF before the first byte.
pub fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match read(fd, &mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
            n => got += n,
        }
    }
    Ok(true)
}

/// Sets O_NONBLOCK on `fd` (and on every descriptor sharing its open file description).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded: both descriptors are new, and nothing else owns them.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// A connected pair of close-on-exec Unix sockets of `kind` (`SOCK_STREAM`, `SOCK_SEQPACKET`).
pub fn socketpair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    check(unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair succeeded: both descriptors are new, and nothing else owns them.
    let first = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let second = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((first, second))
}

/// A signal set of `signals`.
fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, for which all zero bits are a valid value; emptied next.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a set this function owns, to write.
    unsafe { libc::sigemptyset(&raw mut set) };
    for &signal in signals {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&raw mut set, signal) };
    }
    set
}

/// Blocks `blocked` for the calling thread, and returns a non-blocking, close-on-exec signalfd that reads
/// `readable` (which `blocked` should include). Meant for a single-threaded process: other threads keep
/// their masks.
pub fn block_into_signalfd(blocked: &[libc::c_int], readable: &[libc::c_int]) -> io::Result<OwnedFd> {
    let blocked = sigset(blocked);
    // SAFETY: a valid set to read; the old mask is not asked for.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &raw const blocked, std::ptr::null_mut()) })?;
    let readable = sigset(readable);
    // SAFETY: -1 asks for a new signalfd; a valid set to read.
    let fd = check(unsafe { libc::signalfd(-1, &raw const readable, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd succeeded: the descriptor is new, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unblocks every signal of the calling thread.
pub fn unblock_all_signals() -> io::Result<()> {
    let none = sigset(&[]);
    // SAFETY: a valid set to read; the old mask is not asked for.
    check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut()) }).map(drop)
}

/// Drains a non-blocking signalfd (the signals' details are not needed, only that they came).
pub fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    while read(fd, &mut info).is_ok_and(|n| n > 0) {}
}

/// Sends `data` on `sock` with `fd` attached (`SCM_RIGHTS`), if any.
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    send_with_fds(sock, data, fd.as_slice())
}

/// Sends `data` on `sock` with `fds` attached (`SCM_RIGHTS`, at most [`MAX_PASSED_FDS`]). On a stream socket
/// they arrive with the first bytes of `data`.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let bytes = u32::try_from(std::mem::size_of_val(fds)).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    // SAFETY: msghdr is plain data, for which all zero bits are a valid value; the fields set below point
    // into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes, room for one header: the first one is not null.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        // SAFETY: cmsghdr is plain data, for which all zero bits are a valid value (padding, on some libcs).
        let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
        // SAFETY: CMSG_LEN is a pure computation.
        header.cmsg_len = unsafe { libc::CMSG_LEN(bytes) } as usize;
        header.cmsg_level = libc::SOL_SOCKET;
        header.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: `cmsg` points at room for a header inside `control`; unaligned, as `control` is a byte buffer.
        unsafe { cmsg.write_unaligned(header) };
        // SAFETY: the data of the header just written, inside `control` (CMSG_SPACE made room for it).
        let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: slot `i` of the `fds.len()` the header's data has room for, inside `control`.
            let slot = unsafe { data.add(i) };
            // SAFETY: `slot` is valid for writes; unaligned, as cmsg data may be.
            unsafe { slot.write_unaligned(fd.as_raw_fd()) };
        }
    }
    let mut sent = 0;
    while sent < data.len() || (sent == 0 && data.is_empty()) {
        if sent > 0 {
            // The descriptors went with the first part; the rest is plain data.
            msg.msg_control = std::ptr::null_mut();
            msg.msg_controllen = 0;
            iov = libc::iovec { iov_base: data[sent..].as_ptr().cast_mut().cast(), iov_len: data.len() - sent };
            msg.msg_iov = &raw mut iov;
        }
        // SAFETY: msg points at valid buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n.unsigned_abs();
        if data.is_empty() {
            break;
        }
    }
    Ok(())
}

/// The most descriptors one message carries.
pub const MAX_PASSED_FDS: usize = 128;

/// Receives one datagram from a `SOCK_SEQPACKET` socket into `buf`, with the fd attached to it, if any
/// (received close-on-exec). `Ok((0, None))` means the peer closed the socket.
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf)?;
    Ok((n, fds.into_iter().next()))
}

/// Receives into `buf` from `sock` with the descriptors attached (received close-on-exec; at most
/// [`MAX_PASSED_FDS`], more are closed). On a `SOCK_SEQPACKET` socket a message larger than `buf` is an error;
/// on a stream socket this reads what is there, up to `buf.len()`. `Ok((0, _))` means the peer closed it.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let most = u32::try_from(MAX_PASSED_FDS * std::mem::size_of::<libc::c_int>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(most) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data, for which all zero bits are a valid value; the fields set below point
    // into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: msg points at valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n.unsigned_abs();
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel filled in, inside `control` (msg_controllen says how far).
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR or CMSG_NXTHDR lies whole inside `control`; read
        // unaligned, as `control` is a byte buffer.
        let header = unsafe { cmsg.read_unaligned() };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is a pure computation.
            let empty = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (header.cmsg_len as usize).saturating_sub(empty) / std::mem::size_of::<libc::c_int>();
            // SAFETY: the data of a header inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: one of the `count` descriptors the header's length covers, inside `control`.
                let slot = unsafe { data.add(i) };
                // SAFETY: `slot` is valid for reads; unaligned, as cmsg data may be.
                let raw = unsafe { slot.read_unaligned() };
                // SAFETY: SCM_RIGHTS installed this descriptor in this process for this message: it is new,
                // and nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `cmsg` is a header of `msg`'s control buffer; the next one, or null past the last.
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "more descriptors than one message may carry"));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message larger than the receive buffer"));
    }
    Ok((n, fds))
}

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: pidfd_open succeeded: the descriptor is new, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind a pidfd, ignoring ESRCH (it already exited).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on a descriptor we borrow, with no siginfo.
    let rc =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Blocks until the process behind a pidfd has exited, or `timeout_ms` passed (`-1`: no limit).
/// Returns whether it exited.
pub fn pidfd_wait(pidfd: BorrowedFd<'_>, timeout_ms: libc::c_int) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&raw mut p, 1, timeout_ms) };
        if n >= 0 {
            return n > 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// flock(2) on a descriptor we borrow, retried on EINTR. `operation` is `LOCK_SH`, `LOCK_EX` or
/// `LOCK_UN`, optionally with `LOCK_NB` (then a held lock is `ErrorKind::WouldBlock`).
pub fn flock(fd: BorrowedFd<'_>, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid descriptor has no memory-safety preconditions.
        match check(unsafe { libc::flock(fd.as_raw_fd(), operation) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other.map(drop),
        }
    }
}

/// A new pseudo-terminal of `rows` x `cols` from the current mount namespace's `/dev/ptmx`: its master
/// and slave, both close-on-exec, neither becoming the caller's controlling terminal.
pub fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: a static NUL-terminated path.
    let master = check(unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: a fresh descriptor owned from here on.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which outlives the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &raw const unlock) })?;
    set_window_size(master.as_fd(), rows, cols)?;
    // SAFETY: TIOCGPTPEER opens the slave of this master with the given flags and returns its descriptor.
    let slave = check(unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
    })?;
    // SAFETY: a fresh descriptor owned from here on.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// A terminal's window size, as (rows, columns).
pub fn window_size(tty: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which outlives the call.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &raw mut size) })?;
    Ok((size.ws_row, size.ws_col))
}

/// Sets a terminal's window size (the foreground process group gets SIGWINCH).
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) }).map(drop)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_IDMAP`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Sets attributes of the detached mount `mount`: idmapped through the user namespace `userns`, when given (a
/// file owned by host id `k` shows as owned by the id that namespace maps from `k`: an image's root files are
/// root's inside a sandbox whose root is an unprivileged host id), and read-only when asked. Idmapping needs the
/// host's `CAP_SYS_ADMIN` and a filesystem that supports it.
pub fn set_mount_attrs(mount: BorrowedFd<'_>, userns: Option<BorrowedFd<'_>>, read_only: bool) -> io::Result<()> {
    let mut attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    if let Some(userns) = userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = u64::try_from(userns.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    }
    if read_only {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    if attr.attr_set == 0 {
        return Ok(());
    }
    // SAFETY: mount_setattr on a descriptor we borrow, with an empty path, AT_EMPTY_PATH, and a mount_attr of
    // the size given that lives for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn passed_descriptors_arrive_owned_and_work() {
        let (a, b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        let (read_end, write_end) = pipe().unwrap();
        send_with_fd(a.as_fd(), b"take this", Some(write_end.as_fd())).unwrap();
        drop(write_end);
        let mut buf = [0u8; 64];
        let (n, passed) = recv_with_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"take this");
        let passed = passed.expect("the descriptor came with the message");
        write_all(passed.as_fd(), b"through it").unwrap();
        // The last write end closes with the received owner: the reader sees the bytes, then end-of-file.
        drop(passed);
        let mut got = [0u8; 10];
        assert!(read_exact(read_end.as_fd(), &mut got).unwrap());
        assert_eq!(&got, b"through it");
        assert!(!read_exact(read_end.as_fd(), &mut got).unwrap(), "end-of-file before the first byte");
        // A message without descriptors, and the peer's close.
        send_with_fd(a.as_fd(), b"plain", None).unwrap();
        let (n, none) = recv_with_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], none.is_none()), (&b"plain"[..], true));
        drop(a);
        assert_eq!(recv_with_fd(b.as_fd(), &mut buf).unwrap().0, 0);
    }

    #[test]
    fn a_short_read_is_an_error_and_a_full_pipe_would_block() {
        let (read_end, write_end) = pipe().unwrap();
        write_all(write_end.as_fd(), b"ab").unwrap();
        drop(write_end);
        let mut buf = [0u8; 4];
        assert_eq!(read_exact(read_end.as_fd(), &mut buf).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (_read_end, write_end) = pipe().unwrap();
        set_nonblocking(write_end.as_fd()).unwrap();
        let chunk = [0u8; 4096];
        let full = loop {
            match write(write_end.as_fd(), &chunk) {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn descriptors_beyond_the_limit_are_refused_before_sending() {
        let (a, _b) = socketpair(libc::SOCK_SEQPACKET).unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..=MAX_PASSED_FDS).map(|_| a.as_fd()).collect();
        assert_eq!(send_with_fds(a.as_fd(), b"x", &many).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
