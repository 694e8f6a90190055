//! Thin, checked wrappers over the raw syscalls the backend needs.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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

/// Writes all of `data` to a raw fd (blocking).
pub fn write_all(fd: libc::c_int, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is a valid buffer of the given length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n.unsigned_abs()..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from a raw fd (blocking); `Ok(false)` on EOF before the first byte.
pub fn read_exact(fd: libc::c_int, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is inside buf.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        got += n.unsigned_abs();
    }
    Ok(true)
}

/// Sets O_NONBLOCK on an fd.
pub fn set_nonblocking(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// close(2), ignoring errors.
///
/// # Safety
/// The caller owns `fd` (or it is negative), and nothing uses it after this: closing a descriptor
/// another owner still uses would let a later open reuse its number under that owner.
pub unsafe fn close(fd: libc::c_int) {
    if fd >= 0 {
        // SAFETY: the caller owns fd.
        unsafe { libc::close(fd) };
    }
}

/// Sends `data` on `sock` with `fd` attached (`SCM_RIGHTS`), if any.
pub fn send_with_fd(sock: libc::c_int, data: &[u8], fd: Option<libc::c_int>) -> io::Result<()> {
    let fd = fd.map(|fd| {
        // SAFETY: the caller's descriptor, borrowed for this call only.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
    });
    send_with_fds(sock, data, fd.as_slice())
}

/// Sends `data` on `sock` with `fds` attached (`SCM_RIGHTS`, at most [`MAX_PASSED_FDS`]). On a stream socket
/// they arrive with the first bytes of `data`.
pub fn send_with_fds(sock: libc::c_int, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let bytes = u32::try_from(std::mem::size_of_val(fds)).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    // SAFETY: a zeroed msghdr is valid; the fields set below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer has room for one header carrying `fds.len()` descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
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
        let n = unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) };
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
pub fn recv_with_fd(sock: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf)?;
    Ok((n, fds.into_iter().next()))
}

/// Receives into `buf` from `sock` with the descriptors attached (received close-on-exec; at most
/// [`MAX_PASSED_FDS`], more are closed). On a `SOCK_SEQPACKET` socket a message larger than `buf` is an error;
/// on a stream socket this reads what is there, up to `buf.len()`. `Ok((0, _))` means the peer closed it.
pub fn recv_with_fds(sock: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let most = u32::try_from(MAX_PASSED_FDS * std::mem::size_of::<libc::c_int>()).unwrap_or(u32::MAX);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(most) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; the fields set below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: msg points at valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n.unsigned_abs();
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in; each descriptor in them is new and ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<libc::c_int>();
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..count {
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
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
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(libc::c_int::try_from(fd).unwrap_or(-1)) })
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
pub fn open_pty(rows: u16, cols: u16) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
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
pub fn set_mount_attrs(
    mount: std::os::fd::BorrowedFd<'_>,
    userns: Option<std::os::fd::BorrowedFd<'_>>,
    read_only: bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
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
