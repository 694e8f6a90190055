//! The seccomp policy, kept as data in `policy/seccomp.json`, compiled to a
//! classic BPF program on the host and installed by the agent in each
//! execution right before `execve`.

use agentbox_config::SeccompProfile;
use serde::Deserialize;

const POLICY: &str = include_str!("../policy/seccomp.json");

/// The policy as written in `policy/seccomp.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Policy {
    /// Syscalls refused with EPERM.
    pub deny_eperm: Vec<String>,
    /// Syscalls refused with ENOSYS (so libc falls back, e.g. clone3 -> clone).
    pub deny_enosys: Vec<String>,
    /// clone() flags that create namespaces; clone with any of them is refused.
    pub clone_namespace_flags: u32,
    /// socket() address families refused.
    pub socket_families_denied: Vec<u32>,
    /// ioctl() requests refused: TIOCSTI and TIOCLINUX (typing into a terminal), and the btrfs subvolume and
    /// snapshot creations (`BTRFS_IOC_SNAP_CREATE`, `SUBVOL_CREATE` and their `_V2`), which would make a
    /// subvolume outside the quota group of the sandbox's storage layer.
    pub ioctl_requests_denied: Vec<u32>,
    /// personality() values allowed (all others refused).
    pub personality_allowed: Vec<u32>,
    /// Extra syscalls refused by the strict profile.
    pub strict_deny_eperm: Vec<String>,
}

/// Loads the built-in policy.
///
/// # Panics
/// Never in practice: the policy is embedded and checked by a unit test.
#[must_use]
pub fn policy() -> Policy {
    #[allow(clippy::expect_used)]
    serde_json::from_str(POLICY).expect("embedded seccomp policy is valid JSON")
}

/// One BPF instruction as (code, jt, jf, k).
pub type Insn = (u16, u8, u8, u32);

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Syscall number by name on this architecture; `None` for syscalls it lacks.
#[must_use]
pub fn syscall_nr(name: &str) -> Option<i64> {
    let key = format!("SYS_{name}");
    macro_rules! table {
        ($($n:ident),* $(,)?) => {
            match key.as_str() {
                $(stringify!($n) => return Some(libc::$n as i64),)*
                _ => {}
            }
        };
    }
    table!(
        SYS_unshare,
        SYS_setns,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_move_mount,
        SYS_open_tree,
        SYS_mount_setattr,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_lookup_dcookie,
        SYS_syslog,
        SYS_kcmp,
        SYS_pidfd_getfd,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_userfaultfd,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_acct,
        SYS_vhangup,
        SYS_fanotify_init,
        SYS_sethostname,
        SYS_setdomainname,
        SYS_mbind,
        SYS_move_pages,
        SYS_set_mempolicy,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_clone3,
        SYS_clone,
        SYS_socket,
        SYS_ioctl,
        SYS_personality,
        SYS_ptrace,
    );
    #[cfg(target_arch = "x86_64")]
    table!(SYS__sysctl, SYS_iopl, SYS_ioperm, SYS_uselib, SYS_nfsservctl, SYS_ustat, SYS_sysfs,);
    None
}

fn ret(v: u32) -> Insn {
    (BPF_RET_K, 0, 0, v)
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (u32::try_from(e).unwrap_or(1) & 0xffff)
}

fn nr_u32(name: &str) -> Option<u32> {
    syscall_nr(name).and_then(|n| u32::try_from(n).ok())
}

/// Compiles the policy for a profile into one BPF program.
#[must_use]
pub fn compile(policy: &Policy, profile: SeccompProfile) -> Vec<Insn> {
    let mut p: Vec<Insn> = vec![(BPF_LD_W_ABS, 0, 0, OFF_ARCH), (BPF_JEQ_K, 1, 0, AUDIT_ARCH), ret(RET_KILL_PROCESS)];
    p.push((BPF_LD_W_ABS, 0, 0, OFF_NR));
    #[cfg(target_arch = "x86_64")]
    {
        // x32 ABI syscalls (nr | 0x40000000) would bypass a per-number list.
        p.push((BPF_JGE_K, 0, 1, 0x4000_0000));
        p.push(ret(errno(libc::ENOSYS)));
    }
    let strict = profile == SeccompProfile::Strict;
    let mut eperm: Vec<&str> = policy.deny_eperm.iter().map(String::as_str).collect();
    if strict {
        eperm.extend(policy.strict_deny_eperm.iter().map(String::as_str));
    }
    for n in eperm.iter().filter_map(|n| nr_u32(n)) {
        p.push((BPF_JEQ_K, 0, 1, n));
        p.push(ret(errno(libc::EPERM)));
    }
    for n in policy.deny_enosys.iter().filter_map(|n| nr_u32(n)) {
        p.push((BPF_JEQ_K, 0, 1, n));
        p.push(ret(errno(libc::ENOSYS)));
    }
    // Argument checks: each block loads an argument and always returns.
    let mut arg_block = |nr: Option<u32>, arg: u32, values: &[u32], hit: u32, miss: u32| {
        let Some(nr) = nr else { return };
        let skip = u8::try_from(2 * values.len() + 2).unwrap_or(u8::MAX);
        p.push((BPF_JEQ_K, 0, skip, nr));
        p.push((BPF_LD_W_ABS, 0, 0, off_arg_lo(arg)));
        for v in values {
            p.push((BPF_JEQ_K, 0, 1, *v));
            p.push(ret(hit));
        }
        p.push(ret(miss));
    };
    arg_block(nr_u32("socket"), 0, &policy.socket_families_denied, errno(libc::EPERM), RET_ALLOW);
    arg_block(nr_u32("ioctl"), 1, &policy.ioctl_requests_denied, errno(libc::EPERM), RET_ALLOW);
    if !strict {
        arg_block(nr_u32("personality"), 0, &policy.personality_allowed, RET_ALLOW, errno(libc::EPERM));
    }
    if let Some(clone) = nr_u32("clone") {
        p.push((BPF_JEQ_K, 0, 4, clone));
        p.push((BPF_LD_W_ABS, 0, 0, off_arg_lo(0)));
        p.push((BPF_JSET_K, 0, 1, policy.clone_namespace_flags));
        p.push(ret(errno(libc::EPERM)));
        p.push(ret(RET_ALLOW));
    }
    p.push(ret(RET_ALLOW));
    p
}

/// Installs a compiled filter on the calling thread (used in the exec child).
///
/// # Safety
/// Must run in a single-threaded child right before `execve`; it only makes syscalls.
pub unsafe fn install(program: &[Insn]) -> std::io::Result<()> {
    let filters: Vec<libc::sock_filter> =
        program.iter().map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k }).collect();
    let prog =
        libc::sock_fprog { len: u16::try_from(filters.len()).unwrap_or(u16::MAX), filter: filters.as_ptr().cast_mut() };
    // SAFETY: prog points to a valid filter array that outlives the call.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const prog) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_name_is_known_on_x86_64() {
        let p = policy();
        for n in p.deny_eperm.iter().chain(&p.deny_enosys).chain(&p.strict_deny_eperm) {
            #[cfg(target_arch = "x86_64")]
            assert!(syscall_nr(n).is_some(), "unknown syscall {n}");
            let _ = n;
        }
    }

    #[test]
    fn program_fits_and_checks_arch_first() {
        let prog = compile(&policy(), SeccompProfile::Default);
        assert!(prog.len() < 4096);
        assert_eq!(prog[0], (BPF_LD_W_ABS, 0, 0, OFF_ARCH));
        assert_eq!(prog.last(), Some(&ret(RET_ALLOW)));
        let strict = compile(&policy(), SeccompProfile::Strict);
        assert!(strict.len() > prog.len() - 12);
    }
}
