//! Where an execution's first process starts: on the init's own CPU when the CPUs are contended.
//!
//! A new process goes, by default, to the least loaded CPU. When another tenant keeps every CPU busy, that is a
//! CPU where the sandbox has nothing queued, and the child waits there for the running task's slice to end,
//! which the kernel only checks at its next tick (up to 4 ms at 250 Hz). The init's own CPU is one where the
//! sandbox is running already, and the init sleeps while its child starts (`CLONE_VFORK`), so the child runs at
//! once. The init pins itself to that CPU for the clone and takes its CPUs back right after; the child takes
//! them back before it execs, so nothing the sandbox runs stays pinned.
//!
//! On an idle host the default placement is the better one (an idle CPU), and the pin costs the child a
//! migration at `execve`: so the init pins only when it has itself waited for a CPU since its previous start
//! ([`Contention`], from its scheduler statistics).
//!
//! Measured by P14 and P2 in agentbox-bench (debug build): beside a tenant running busy loops, the p99 of a REST
//! execution of `true` went from about 8 ms to about 5.5 ms; pinning every start also cost the quiet path 10%
//! (P2), which pinning only under contention avoids.

use std::fs::File;
use std::mem::size_of;
use std::os::unix::fs::FileExt;

/// The init's CPUs while it is pinned to one of them for a clone.
pub struct Pinned {
    cpus: libc::cpu_set_t,
}

impl Pinned {
    /// Pins the calling thread to the CPU it runs on; `None` (and no pin) when the host refuses.
    pub fn here() -> Option<Self> {
        // SAFETY: cpu_set_t is plain data; all zero bits is the empty set.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: sched_getaffinity writes one cpu_set_t into a local.
        if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut cpus) } != 0 {
            return None;
        }
        // SAFETY: no arguments.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
        if cpu >= 8 * size_of::<libc::cpu_set_t>() {
            return None;
        }
        // SAFETY: cpu_set_t is plain data; all zero bits is the empty set.
        let mut here: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is within the set, checked above.
        unsafe { libc::CPU_SET(cpu, &mut here) };
        // SAFETY: sched_setaffinity reads one cpu_set_t, a local.
        let pinned = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const here) } == 0;
        pinned.then_some(Self { cpus })
    }

    /// Gives the calling thread back the CPUs the init had. Should those be refused (the host changed the
    /// sandbox's CPU set meanwhile), every CPU the host allows. One raw system call when it works, so the
    /// cloned child may call it before `execve`.
    pub fn unpin(&self) {
        if set_affinity(&self.cpus) {
            return;
        }
        // SAFETY: cpu_set_t is plain data; all zero bits is the empty set.
        let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for cpu in 0..8 * size_of::<libc::cpu_set_t>() {
            // SAFETY: `cpu` is within the set.
            unsafe { libc::CPU_SET(cpu, &mut all) };
        }
        // The kernel narrows a set to the CPUs the thread's cpuset allows.
        set_affinity(&all);
    }
}

/// Whether the init's CPUs are contended: it waited on a run queue for more than [`Contention::WAITED`] since
/// the previous check, as `/proc/thread-self/schedstat` counts (its second field, in nanoseconds).
pub struct Contention {
    schedstat: Option<File>,
    waited: u64,
}

impl Contention {
    /// More waiting than this between two starts means another task held the CPU when the init woke.
    const WAITED: u64 = 200_000;

    /// Opens the calling thread's scheduler statistics (in the sandbox's `/proc`); without them, the CPUs
    /// never count as contended.
    pub fn new() -> Self {
        let schedstat = File::open("/proc/thread-self/schedstat").ok();
        let mut this = Self { schedstat, waited: 0 };
        this.waited = this.read().unwrap_or(0);
        this
    }

    fn read(&self) -> Option<u64> {
        let mut buf = [0u8; 96];
        let n = self.schedstat.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.split_ascii_whitespace().nth(1)?.parse().ok()
    }

    /// Whether the thread waited for a CPU for long since the last call.
    pub fn check(&mut self) -> bool {
        let Some(now) = self.read() else { return false };
        let waited = now.saturating_sub(self.waited);
        self.waited = now;
        waited > Self::WAITED
    }
}

/// `sched_setaffinity` on the calling thread, as a raw system call (no libc state).
fn set_affinity(cpus: &libc::cpu_set_t) -> bool {
    // SAFETY: sched_setaffinity reads one cpu_set_t, which outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_sched_setaffinity, 0, size_of::<libc::cpu_set_t>(), std::ptr::from_ref(cpus))
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> usize {
        // SAFETY: cpu_set_t is plain data; all zero bits is the empty set.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: sched_getaffinity writes one cpu_set_t into a local.
        assert_eq!(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut cpus) }, 0);
        // SAFETY: a set just filled in.
        usize::try_from(unsafe { libc::CPU_COUNT(&cpus) }).unwrap_or(0)
    }

    #[test]
    fn an_idle_thread_is_not_contended() {
        let mut contention = Contention::new();
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Sleeping is not waiting for a CPU; a host busy enough to delay this thread by 0.2 ms is possible, so
        // only the reading is checked strictly.
        assert!(contention.read().is_some(), "no /proc/thread-self/schedstat");
        let _ = contention.check();
    }

    #[test]
    fn a_pin_is_one_cpu_and_unpinning_gives_every_cpu_back() {
        std::thread::spawn(|| {
            let before = allowed();
            let pin = Pinned::here().expect("pinning to this CPU");
            assert_eq!(allowed(), 1);
            pin.unpin();
            assert_eq!(allowed(), before);
        })
        .join()
        .expect("thread");
    }
}
