//! Where an execution's first process starts: on the init's own CPU.
//!
//! A new process goes, by default, to the least loaded CPU. When another tenant keeps every CPU busy, that is a
//! CPU where the sandbox has nothing queued, and the child waits there for the running task's slice to end,
//! which the kernel only checks at its next tick (up to 4 ms at 250 Hz). The init's own CPU is one where the
//! sandbox is running already, and the init sleeps while its child starts (`CLONE_VFORK`), so the child runs at
//! once. The init pins itself to that CPU for the clone and takes its CPUs back right after; the child takes
//! them back before it execs, so nothing the sandbox runs stays pinned.
//!
//! Measured by P14 in agentbox-bench (debug build): beside a tenant running busy loops, starting here took the
//! p99 of a REST execution of `true` from about 9 ms to about 6.5 ms, and did not change the quiet path (P2).

use std::mem::size_of;

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
