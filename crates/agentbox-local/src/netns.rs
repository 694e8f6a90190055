//! Sockets inside a sandbox's network namespace, made from the host.
//!
//! A short-lived thread joins the namespace with `setns`, creates the socket
//! and exits; the socket stays in the sandbox's namespace and is used from the
//! host like any other. Nothing else on the host changes namespace.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use crate::sys;

/// Runs `f` on a fresh thread inside the network namespace of the process `pid`.
///
/// # Errors
/// When the namespace can't be entered, or `f` fails.
pub fn run_in<T: Send + 'static>(pid: i32, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
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

/// Connects to `addr` from inside the sandbox's network namespace.
///
/// # Errors
/// When nothing listens there.
pub fn connect(pid: i32, addr: SocketAddr) -> io::Result<TcpStream> {
    run_in(pid, move || TcpStream::connect(addr))
}

/// Listens on `addr` inside the sandbox's network namespace.
///
/// # Errors
/// When the address is taken.
pub fn listen(pid: i32, addr: SocketAddr) -> io::Result<TcpListener> {
    run_in(pid, move || TcpListener::bind(addr))
}
