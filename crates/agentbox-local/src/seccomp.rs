//! The seccomp policy, kept as data in `policy/seccomp.json` and compiled to a classic BPF program on
//! the host. The sandbox's init installs it once on itself, after it has built the sandbox and before
//! it reports ready (see `agent::exec::confine`); every execution inherits it over fork.
//!
//! Every name in the policy is checked: a syscall unknown on an architecture, or a constant (ioctl
//! request, flag, address family) this module does not define, fails the compilation instead of
//! silently dropping a rule. The syscall tables of both supported architectures live here, so the
//! policy is checked for aarch64 on an x86_64 host too, and each table is compared with libc on its
//! own architecture.

use agentbox_config::SeccompProfile;
use serde::Deserialize;

const POLICY: &str = include_str!("../policy/seccomp.json");

/// Why the policy can't be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file does not parse.
    #[error("the seccomp policy does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    /// A syscall name has no number on the architecture.
    #[error("the seccomp policy names {name:?}, which is not a syscall on {arch:?}")]
    UnknownSyscall {
        /// The name.
        name: String,
        /// The architecture.
        arch: Arch,
    },
    /// A constant (flag, address family, ioctl request, personality) is not one this module defines.
    #[error("the seccomp policy names {0:?}, which is not a known constant (see seccomp.rs CONSTANTS)")]
    UnknownConstant(String),
}

/// The policy as written in `policy/seccomp.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What the policy is and why, for its readers.
    #[serde(rename = "_comment")]
    #[allow(dead_code, reason = "read by people; parsed so that deny_unknown_fields accepts it")]
    pub comment: Vec<String>,
    /// Syscalls refused with EPERM, on every architecture.
    pub deny_eperm: Vec<String>,
    /// Syscalls refused with EPERM that exist on x86_64 only.
    pub deny_eperm_x86_64: Vec<String>,
    /// Syscalls refused with EPERM that exist on aarch64 only.
    pub deny_eperm_aarch64: Vec<String>,
    /// Syscalls refused with ENOSYS (so libc falls back, e.g. clone3 -> clone).
    pub deny_enosys: Vec<String>,
    /// clone() flags that create namespaces; clone with any of them is refused.
    pub clone_namespace_flags: Vec<String>,
    /// socket() address families refused.
    pub socket_families_denied: Vec<String>,
    /// ioctl() requests refused: TIOCSTI and TIOCLINUX (typing into a terminal), and the btrfs subvolume and
    /// snapshot creations, which would make a subvolume outside the quota group of the sandbox's storage layer.
    pub ioctl_requests_denied: Vec<String>,
    /// personality() values allowed (all others refused); `A|B` is both bits.
    pub personality_allowed: Vec<String>,
    /// Extra syscalls refused by the strict profile.
    pub strict_deny_eperm: Vec<String>,
}

/// The built-in policy.
///
/// # Errors
/// When the embedded file does not parse (a unit test makes sure it does).
pub fn policy() -> Result<Policy, PolicyError> {
    Ok(serde_json::from_str(POLICY)?)
}

/// The constants the policy may name, with the header each comes from. Checked against libc where libc
/// has them, and the ioctl requests against the kernel's `_IOW` encoding, in the tests below.
const CONSTANTS: &[(&str, u32)] = &[
    // clone(2) flags that create a namespace (linux/sched.h).
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
    // socket(2) address families (linux/socket.h): raw link-layer packets, the kernel crypto API, VM sockets.
    ("AF_PACKET", 17),
    ("AF_ALG", 38),
    ("AF_VSOCK", 40),
    // ioctl(2) requests. asm-generic/ioctls.h: push a byte into a terminal's input; the console's subcodes.
    ("TIOCSTI", 0x5412),
    ("TIOCLINUX", 0x541C),
    // linux/btrfs.h, _IOW(0x94, nr, struct): struct btrfs_ioctl_vol_args and _v2 are both 4096 bytes.
    ("BTRFS_IOC_SNAP_CREATE", 0x5000_9401),      // nr 1
    ("BTRFS_IOC_SUBVOL_CREATE", 0x5000_940E),    // nr 14
    ("BTRFS_IOC_SNAP_CREATE_V2", 0x5000_9417),   // nr 23
    ("BTRFS_IOC_SUBVOL_CREATE_V2", 0x5000_9418), // nr 24
    // personality(2) (linux/personality.h); 0xffffffff only reads the current persona.
    ("PER_LINUX", 0),
    ("PER_LINUX32", 0x0008),
    ("UNAME26", 0x0002_0000),
    ("PERSONALITY_QUERY", 0xffff_ffff),
];

/// The value of a constant expression: a name from [`CONSTANTS`], or names joined by `|`.
fn constant(expr: &str) -> Result<u32, PolicyError> {
    expr.split('|').try_fold(0, |acc, name| {
        let name = name.trim();
        CONSTANTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| acc | v)
            .ok_or_else(|| PolicyError::UnknownConstant(name.to_owned()))
    })
}

fn constants(exprs: &[String]) -> Result<Vec<u32>, PolicyError> {
    exprs.iter().map(|e| constant(e)).collect()
}

/// An architecture the filter can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "the other architecture is compiled for by the tests only")]
pub enum Arch {
    /// x86_64 (its x32 numbers are refused).
    X86_64,
    /// aarch64.
    Aarch64,
}

impl Arch {
    /// The architecture this crate was built for.
    #[cfg(target_arch = "x86_64")]
    pub const NATIVE: Self = Self::X86_64;
    /// The architecture this crate was built for.
    #[cfg(target_arch = "aarch64")]
    pub const NATIVE: Self = Self::Aarch64;

    /// `AUDIT_ARCH_*` of linux/audit.h, which the filter checks first.
    const fn audit(self) -> u32 {
        match self {
            Self::X86_64 => 0xC000_003E,
            Self::Aarch64 => 0xC000_00B7,
        }
    }

    fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Self::X86_64 => X86_64,
            Self::Aarch64 => AARCH64,
        }
    }
}

/// Syscall numbers on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl) of every name the policy uses.
const X86_64: &[(&str, u32)] = &[
    ("unshare", 272),
    ("setns", 308),
    ("mount", 165),
    ("umount2", 166),
    ("pivot_root", 155),
    ("chroot", 161),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("move_mount", 429),
    ("open_tree", 428),
    ("mount_setattr", 442),
    ("kexec_load", 246),
    ("kexec_file_load", 320),
    ("init_module", 175),
    ("finit_module", 313),
    ("delete_module", 176),
    ("reboot", 169),
    ("swapon", 167),
    ("swapoff", 168),
    ("bpf", 321),
    ("perf_event_open", 298),
    ("lookup_dcookie", 212),
    ("syslog", 103),
    ("kcmp", 312),
    ("pidfd_getfd", 438),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("keyctl", 250),
    ("add_key", 248),
    ("request_key", 249),
    ("settimeofday", 164),
    ("clock_settime", 227),
    ("clock_adjtime", 305),
    ("adjtimex", 159),
    ("open_by_handle_at", 304),
    ("name_to_handle_at", 303),
    ("userfaultfd", 323),
    ("quotactl", 179),
    ("quotactl_fd", 443),
    ("acct", 163),
    ("iopl", 172),
    ("ioperm", 173),
    ("uselib", 134),
    ("_sysctl", 156),
    ("nfsservctl", 180),
    ("ustat", 136),
    ("sysfs", 139),
    ("vhangup", 153),
    ("fanotify_init", 300),
    ("sethostname", 170),
    ("setdomainname", 171),
    ("mbind", 237),
    ("move_pages", 279),
    ("set_mempolicy", 238),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("clone3", 435),
    ("ptrace", 101),
    ("personality", 135),
    ("clone", 56),
    ("socket", 41),
    ("ioctl", 16),
];

/// Syscall numbers on aarch64 (include/uapi/asm-generic/unistd.h) of every name the policy uses.
const AARCH64: &[(&str, u32)] = &[
    ("unshare", 97),
    ("setns", 268),
    ("mount", 40),
    ("umount2", 39),
    ("pivot_root", 41),
    ("chroot", 51),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("move_mount", 429),
    ("open_tree", 428),
    ("mount_setattr", 442),
    ("kexec_load", 104),
    ("kexec_file_load", 294),
    ("init_module", 105),
    ("finit_module", 273),
    ("delete_module", 106),
    ("reboot", 142),
    ("swapon", 224),
    ("swapoff", 225),
    ("bpf", 280),
    ("perf_event_open", 241),
    ("lookup_dcookie", 18),
    ("syslog", 116),
    ("kcmp", 272),
    ("pidfd_getfd", 438),
    ("process_vm_readv", 270),
    ("process_vm_writev", 271),
    ("keyctl", 219),
    ("add_key", 217),
    ("request_key", 218),
    ("settimeofday", 170),
    ("clock_settime", 112),
    ("clock_adjtime", 266),
    ("adjtimex", 171),
    ("open_by_handle_at", 265),
    ("name_to_handle_at", 264),
    ("userfaultfd", 282),
    ("quotactl", 60),
    ("quotactl_fd", 443),
    ("acct", 89),
    ("nfsservctl", 42),
    ("vhangup", 58),
    ("fanotify_init", 262),
    ("sethostname", 161),
    ("setdomainname", 162),
    ("mbind", 235),
    ("move_pages", 239),
    ("set_mempolicy", 237),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("clone3", 435),
    ("ptrace", 117),
    ("personality", 92),
    ("clone", 220),
    ("socket", 198),
    ("ioctl", 29),
];
/// The number of syscall `name` on `arch`.
///
/// # Errors
/// [`PolicyError::UnknownSyscall`] when `arch` has no such syscall (or the tables here lack it).
pub fn syscall_nr(arch: Arch, name: &str) -> Result<u32, PolicyError> {
    arch.table()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
        .ok_or_else(|| PolicyError::UnknownSyscall { name: name.to_owned(), arch })
}

/// One BPF instruction as (code, jt, jf, k).
pub type Insn = (u16, u8, u8, u32);

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
const RET_KILL_PROCESS: u32 = 0x8000_0000; // SECCOMP_RET_KILL_PROCESS
const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO

// Offsets into struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// The first x32 syscall number (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn ret(v: u32) -> Insn {
    (BPF_RET_K, 0, 0, v)
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (u32::try_from(e).unwrap_or(1) & 0xffff)
}

/// Compiles the policy for a profile into one BPF program for this architecture.
///
/// # Errors
/// When the policy names a syscall or constant that is unknown (see [`PolicyError`]).
pub fn compile(policy: &Policy, profile: SeccompProfile) -> Result<Vec<Insn>, PolicyError> {
    compile_for(policy, profile, Arch::NATIVE)
}

/// Compiles the policy for a profile into one BPF program for `arch`.
///
/// # Errors
/// When the policy names a syscall or constant that is unknown on `arch` (see [`PolicyError`]).
pub fn compile_for(policy: &Policy, profile: SeccompProfile, arch: Arch) -> Result<Vec<Insn>, PolicyError> {
    let nr = |name: &str| syscall_nr(arch, name);
    let mut p: Vec<Insn> = vec![(BPF_LD_W_ABS, 0, 0, OFF_ARCH), (BPF_JEQ_K, 1, 0, arch.audit()), ret(RET_KILL_PROCESS)];
    p.push((BPF_LD_W_ABS, 0, 0, OFF_NR));
    if arch == Arch::X86_64 {
        // x32 ABI syscalls (nr | X32_SYSCALL_BIT) would bypass a per-number list.
        p.push((BPF_JGE_K, 0, 1, X32_SYSCALL_BIT));
        p.push(ret(errno(libc::ENOSYS)));
    }
    let strict = profile == SeccompProfile::Strict;
    let arch_only = match arch {
        Arch::X86_64 => &policy.deny_eperm_x86_64,
        Arch::Aarch64 => &policy.deny_eperm_aarch64,
    };
    let mut eperm: Vec<&String> = policy.deny_eperm.iter().chain(arch_only).collect();
    if strict {
        eperm.extend(&policy.strict_deny_eperm);
    }
    for name in eperm {
        p.push((BPF_JEQ_K, 0, 1, nr(name)?));
        p.push(ret(errno(libc::EPERM)));
    }
    for name in &policy.deny_enosys {
        p.push((BPF_JEQ_K, 0, 1, nr(name)?));
        p.push(ret(errno(libc::ENOSYS)));
    }
    // Argument checks: each block loads an argument and always returns.
    let mut arg_block = |nr: u32, arg: u32, values: &[u32], hit: u32, miss: u32| {
        let skip = u8::try_from(2 * values.len() + 2).unwrap_or(u8::MAX);
        p.push((BPF_JEQ_K, 0, skip, nr));
        p.push((BPF_LD_W_ABS, 0, 0, off_arg_lo(arg)));
        for v in values {
            p.push((BPF_JEQ_K, 0, 1, *v));
            p.push(ret(hit));
        }
        p.push(ret(miss));
    };
    arg_block(nr("socket")?, 0, &constants(&policy.socket_families_denied)?, errno(libc::EPERM), RET_ALLOW);
    arg_block(nr("ioctl")?, 1, &constants(&policy.ioctl_requests_denied)?, errno(libc::EPERM), RET_ALLOW);
    if !strict {
        arg_block(nr("personality")?, 0, &constants(&policy.personality_allowed)?, RET_ALLOW, errno(libc::EPERM));
    }
    let namespace_flags = constants(&policy.clone_namespace_flags)?.iter().fold(0, |acc, f| acc | f);
    p.push((BPF_JEQ_K, 0, 4, nr("clone")?));
    p.push((BPF_LD_W_ABS, 0, 0, off_arg_lo(0)));
    p.push((BPF_JSET_K, 0, 1, namespace_flags));
    p.push(ret(errno(libc::EPERM)));
    p.push(ret(RET_ALLOW));
    p.push(ret(RET_ALLOW));
    Ok(p)
}

/// Installs a compiled filter on the calling thread (the init, see `agent::exec::confine`).
///
/// # Safety
/// The caller must be single-threaded, so that every later thread and child inherits the filter.
pub unsafe fn install(program: &[Insn]) -> std::io::Result<()> {
    let filters: Vec<libc::sock_filter> =
        program.iter().map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k }).collect();
    let len = u16::try_from(filters.len()).map_err(|_| {
        let message = format!("the seccomp filter has {} instructions, more than the kernel takes", filters.len());
        std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
    })?;
    let prog = libc::sock_fprog { len, filter: filters.as_ptr().cast_mut() };
    // SAFETY: prog points to a valid filter array that outlives the call.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const prog) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all_names(p: &Policy) -> impl Iterator<Item = &String> {
        p.deny_eperm.iter().chain(&p.deny_enosys).chain(&p.strict_deny_eperm)
    }

    #[test]
    fn every_name_is_known_on_every_architecture() {
        let p = policy().unwrap();
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for n in all_names(&p).map(String::as_str).chain(["clone", "socket", "ioctl", "personality"]) {
                syscall_nr(arch, n).unwrap();
            }
            for profile in [SeccompProfile::Default, SeccompProfile::Strict] {
                let prog = compile_for(&p, profile, arch).unwrap();
                assert!(prog.len() < 4096);
                assert_eq!(prog[1], (BPF_JEQ_K, 1, 0, arch.audit()), "the architecture is checked first");
            }
        }
        for n in &p.deny_eperm_x86_64 {
            syscall_nr(Arch::X86_64, n).unwrap();
        }
        for n in &p.deny_eperm_aarch64 {
            syscall_nr(Arch::Aarch64, n).unwrap();
        }
    }

    #[test]
    fn an_unknown_name_fails_the_compilation_instead_of_dropping_the_rule() {
        let mut p = policy().unwrap();
        p.deny_eperm.push("mount_typo".into());
        assert!(
            matches!(compile(&p, SeccompProfile::Default), Err(PolicyError::UnknownSyscall { name, .. }) if name == "mount_typo")
        );
        let mut p = policy().unwrap();
        p.deny_eperm.push("iopl".into()); // x86_64 only: not in the list for every architecture
        assert!(compile_for(&p, SeccompProfile::Default, Arch::Aarch64).is_err());
        let mut p = policy().unwrap();
        p.ioctl_requests_denied.push("TIOCSTO".into());
        assert!(matches!(compile(&p, SeccompProfile::Default), Err(PolicyError::UnknownConstant(c)) if c == "TIOCSTO"));
    }

    #[test]
    fn the_native_table_matches_libc() {
        macro_rules! check {
            ($($n:ident),* $(,)?) => {$(
                let name = stringify!($n).trim_start_matches("SYS_");
                assert_eq!(i64::from(syscall_nr(Arch::NATIVE, name).unwrap()), libc::$n as i64, "{name}");
            )*};
        }
        check!(
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
            SYS_nfsservctl,
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
            SYS_ptrace,
            SYS_personality,
            SYS_clone,
            SYS_socket,
            SYS_ioctl,
        );
        #[cfg(target_arch = "x86_64")]
        check!(SYS_iopl, SYS_ioperm, SYS_uselib, SYS__sysctl, SYS_ustat, SYS_sysfs);
    }

    /// The numbers `header` defines as `#define __NR_<name> <number>`.
    fn header_numbers(header: &str) -> Option<std::collections::HashMap<String, u32>> {
        let text = std::fs::read_to_string(header).ok()?;
        let numbers = text
            .lines()
            .filter_map(|l| l.strip_prefix("#define __NR_"))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
            })
            .collect();
        Some(numbers)
    }

    /// Both tables against the kernel's own (its uapi headers, where the host has them installed), so the
    /// aarch64 numbers are checked on an x86_64 host too. aarch64 uses the generic table.
    #[test]
    fn both_tables_match_the_kernels_headers() {
        let headers = [
            (Arch::X86_64, &["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"][..]),
            (Arch::Aarch64, &["/usr/include/asm-generic/unistd.h"][..]),
        ];
        for (arch, paths) in headers {
            let Some(kernel) = paths.iter().find_map(|p| header_numbers(p)) else {
                eprintln!("no kernel headers for {arch:?} here ({paths:?}): its table is not cross-checked");
                continue;
            };
            for (name, nr) in arch.table() {
                assert_eq!(kernel.get(*name), Some(nr), "{name} on {arch:?}");
            }
        }
    }

    #[test]
    fn the_constants_match_libc_and_the_kernels_encoding() {
        let c = |n: &str| constant(n).unwrap();
        for (name, v) in [
            ("CLONE_NEWNS", libc::CLONE_NEWNS),
            ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
            ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
            ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
            ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
            ("CLONE_NEWPID", libc::CLONE_NEWPID),
            ("CLONE_NEWNET", libc::CLONE_NEWNET),
            ("AF_PACKET", libc::AF_PACKET),
            ("AF_ALG", libc::AF_ALG),
            ("AF_VSOCK", libc::AF_VSOCK),
            ("UNAME26", libc::UNAME26),
        ] {
            assert_eq!(c(name), u32::try_from(v).unwrap(), "{name}");
        }
        #[allow(clippy::useless_conversion, reason = "libc's Ioctl type differs between targets")]
        let ioctl = |v: libc::Ioctl| u64::try_from(v).unwrap();
        assert_eq!(u64::from(c("TIOCSTI")), ioctl(libc::TIOCSTI));
        assert_eq!(u64::from(c("TIOCLINUX")), ioctl(libc::TIOCLINUX));
        // _IOW(type, nr, size) = write << 30 | size << 16 | type << 8 | nr (asm-generic/ioctl.h).
        let iow = |nr: u32| 1 << 30 | 4096 << 16 | 0x94 << 8 | nr;
        assert_eq!(c("BTRFS_IOC_SNAP_CREATE"), iow(1));
        assert_eq!(c("BTRFS_IOC_SUBVOL_CREATE"), iow(14));
        assert_eq!(c("BTRFS_IOC_SNAP_CREATE_V2"), iow(23));
        assert_eq!(c("BTRFS_IOC_SUBVOL_CREATE_V2"), iow(24));
        // The namespace flags the policy refuses in clone, as the numbers the filter used to carry.
        let p = policy().unwrap();
        assert_eq!(constants(&p.clone_namespace_flags).unwrap().iter().fold(0, |a, f| a | f), 0x7E02_0000);
        assert_eq!(c("PER_LINUX32|UNAME26"), 0x0002_0008);
    }
}
