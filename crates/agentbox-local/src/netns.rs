//! Sockets inside a sandbox's network namespace, made from the host.
//!
//! The namespace is opened once, when the sandbox is created, and held as a descriptor for the
//! sandbox's life: nothing later goes through the init's pid, which could name another process by
//! then. A short-lived thread joins the namespace with `setns`, creates the socket and exits; the
//! socket stays in the sandbox's namespace and is used from the host like any other. Nothing else on
//! the host changes namespace.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::sys;

/// A sandbox's network namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct NetNs(Arc<OwnedFd>);

impl NetNs {
    /// Opens the network namespace of the process `pid`, whose pidfd is `pidfd`.
    ///
    /// # Errors
    /// When the namespace can't be opened, or the process exited meanwhile (its pid may then have
    /// named another process when the namespace was opened).
    pub(crate) fn of(pid: i32, pidfd: BorrowedFd<'_>) -> io::Result<Self> {
        let ns = File::open(format!("/proc/{pid}/ns/net"))?;
        // A pid is reused only after its process is reaped: alive now means it was ours at the open.
        if sys::pidfd_wait(pidfd, 0) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("process {pid} exited")));
        }
        Ok(Self(Arc::new(ns.into())))
    }

    /// Runs `f` on a fresh thread inside the namespace.
    ///
    /// # Errors
    /// When the namespace can't be entered, or `f` fails.
    pub(crate) fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let ns = self.0.clone();
        std::thread::Builder::new()
            .name("agentbox-netns".into())
            .spawn(move || {
                // SAFETY: setns on this short-lived thread only; the fd is a network namespace.
                sys::check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    /// Connects to `addr` from inside the namespace.
    ///
    /// # Errors
    /// When nothing listens there.
    pub(crate) fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.run_in(move || TcpStream::connect(addr))
    }

    /// Listens on `addr` inside the namespace.
    ///
    /// # Errors
    /// When the address is taken.
    pub(crate) fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.run_in(move || TcpListener::bind(addr))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsFd;

    use super::*;

    /// A process in a network namespace of its own, and its pidfd.
    fn isolated() -> (std::process::Child, OwnedFd) {
        let child = std::process::Command::new("unshare").args(["--net", "sleep", "60"]).spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let pidfd = sys::pidfd_open(pid).unwrap();
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        // Until unshare has run, the child is in this namespace.
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap() == mine {
            std::thread::yield_now();
        }
        (child, pidfd)
    }

    #[test]
    fn the_namespace_outlives_the_process_it_was_opened_from() {
        let (mut child, pidfd) = isolated();
        let pid = i32::try_from(child.id()).unwrap();
        let ns = NetNs::of(pid, pidfd.as_fd()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // The pid is free for reuse now; the namespace is still the one opened, never looked up again.
        let listener = ns.listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the listener is not in the host's namespace");
    }

    #[test]
    fn a_process_that_exited_before_the_open_is_refused() {
        let (mut child, pidfd) = isolated();
        let pid = i32::try_from(child.id()).unwrap();
        child.kill().unwrap();
        // Exited but not reaped: its /proc entry still exists, and is refused anyway.
        while !sys::pidfd_wait(pidfd.as_fd(), 0) {
            std::thread::yield_now();
        }
        assert_eq!(NetNs::of(pid, pidfd.as_fd()).unwrap_err().kind(), io::ErrorKind::NotFound);
        child.wait().unwrap();
    }
}
