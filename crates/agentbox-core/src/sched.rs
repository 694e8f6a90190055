//! A scheduler hint for the control path: the threads that carry a request from a client to a sandbox and back
//! ask for short time slices, so that fewer of their wake-ups wait behind a neighbour's busy loop until the
//! kernel's next tick.
//!
//! On Linux 6.12 and later (EEVDF), `sched_setattr` with a `sched_runtime` on a normal-policy thread sets its
//! slice: a shorter one gives it earlier deadlines (it preempts sooner when it wakes) without giving it a larger
//! share of the CPU, which stays set by weights and quotas. Older kernels ignore the runtime. The request is
//! made reset-on-fork, so processes started from these threads (sandboxed programs) get the kernel's default.

use std::io;
use std::time::Duration;

/// The slice the server's threads ask for: the kernel's floor, 0.1 ms.
pub const CONTROL_SLICE: Duration = Duration::from_micros(100);

/// The slice a sandbox's init asks for. Longer than [`CONTROL_SLICE`]: a sandbox's cgroup competes with the
/// server's threads with the shortest slice queued in it, and a server thread preempts it on waking only when
/// its own slice is shorter still.
pub const INIT_SLICE: Duration = Duration::from_micros(300);

/// What [`request_short_slices`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceRequest {
    /// The calling thread now runs with the slice asked for (on kernels that honour it).
    Set,
    /// The thread runs under a real-time or idle policy, which was left alone.
    NotNormalPolicy,
}

/// Asks the scheduler to give the calling thread time slices of `slice`, keeping its policy and nice value,
/// and marks it reset-on-fork so that its children start with the defaults.
///
/// # Errors
/// The `sched_getattr` or `sched_setattr` error (for example `ENOSYS` under a seccomp filter that refuses them);
/// the thread keeps its previous settings.
pub fn request_short_slices(slice: Duration) -> io::Result<SliceRequest> {
    let size = u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(u32::MAX);
    let mut attr = libc::sched_attr {
        size,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_getattr writes at most `size` bytes into `attr`, which is that large and outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, size, 0) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    let policy = i32::try_from(attr.sched_policy).unwrap_or(-1);
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        return Ok(SliceRequest::NotNormalPolicy);
    }
    attr.size = size;
    attr.sched_flags = libc::SCHED_FLAG_RESET_ON_FORK as u64;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: sched_setattr reads one `sched_attr` of `attr.size` bytes, which outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(SliceRequest::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_slice() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    #[test]
    fn a_thread_gets_its_short_slice_and_its_children_the_default() {
        std::thread::spawn(|| {
            let done = request_short_slices(CONTROL_SLICE).expect("sched_setattr");
            assert_eq!(done, SliceRequest::Set);
            // Kernels before EEVDF's custom slices accept the request and ignore it: nothing more to check.
            if own_slice() != Some(100_000) {
                return;
            }
            let child =
                std::process::Command::new("sh").args(["-c", "grep '^se.slice' /proc/$$/sched"]).output().expect("sh");
            let text = String::from_utf8_lossy(&child.stdout);
            assert!(!text.contains(" 100000"), "a child kept the short slice: {text}");
        })
        .join()
        .expect("thread");
    }
}
