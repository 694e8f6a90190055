//! Isolation and the hostile battery: every check runs real code in a real sandbox.

mod common;

use std::collections::BTreeMap;

use agentbox_config::SandboxConfig;
use agentbox_core::ExecRequest;
use common::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_unprivileged_with_seccomp_and_no_new_privs() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let out =
        sb.sh("id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status").await;
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[..2], ["1000", "1000"]);
    for want in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in {lines:?}");
    }
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_processes_are_invisible_and_cannot_be_signalled() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let host_pid = std::process::id();
    let pids = sb.py("import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))").await;
    assert!(pids.starts_with("[1,"), "init is pid 1 inside: {pids}");
    assert!(!pids.contains(&format!(" {host_pid},")) || host_pid < 10, "{pids}");
    let out = sb.sh(&format!("kill -0 {host_pid} 2>&1; echo rc=$?")).await;
    assert!(out.stdout.contains("rc=1"), "signalling a host pid must fail: {}", out.stdout);
    let out = sb.sh("kill -9 1; echo rc=$?").await;
    assert!(out.stdout.contains("rc=1"), "the init can't be killed by the user: {}", out.stdout);
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_files_are_invisible_or_read_only() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let out = sb.sh("ls /root /work /etc/shadow /sys 2>&1; touch /usr/agentbox-probe 2>&1; touch /etc/passwd 2>&1; touch / 2>&1; echo done").await;
    for want in ["/root': No such file", "/work': No such file", "/etc/shadow': No such file", "/sys': No such file"] {
        assert!(out.stdout.contains(want), "missing {want:?} in {}", out.stdout);
    }
    assert!(out.stdout.matches("Read-only file system").count() >= 2, "{}", out.stdout);
    assert!(!std::path::Path::new("/usr/agentbox-probe").exists());
    let out =
        sb.sh("cat /etc/passwd; cat /etc/hostname; echo ok > ~/x && cat ~/x && echo ok > /tmp/y && cat /tmp/y").await;
    assert!(out.stdout.contains("user:x:1000:1000::/home/user:/bin/bash"), "{}", out.stdout);
    assert!(out.stdout.contains("sandbox\nok\nok\n"), "{}", out.stdout);
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn there_is_no_network_but_loopback_works() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let code = r#"
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); print("connected")
except OSError as e:
    print("blocked", e.errno)
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
c = socket.create_connection(s.getsockname(), timeout=2); a, _ = s.accept(); c.sendall(b"hi"); print(a.recv(2).decode())
print(sorted(open("/proc/net/dev").read().split()[i].rstrip(":") for i in range(0)))
import os; print(os.listdir("/sys/class/net") if os.path.exists("/sys/class/net") else "no-sys")
"#;
    let out = sb.py(code).await;
    assert!(out.starts_with("blocked 101"), "ENETUNREACH expected: {out}");
    assert!(out.contains("\nhi\n"), "loopback works: {out}");
    let out = sb.sh("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(out.stdout.trim(), "lo", "only loopback exists");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_environment_leaks_in() {
    if common::not_root() {
        return;
    }
    let mut config = SandboxConfig::default();
    config.environment_variables.insert("MY_SETTING".into(), "42".into());
    let sb = Sandbox::with(config).await;
    let mut env = BTreeMap::new();
    env.insert("PER_EXEC".into(), "yes".into());
    let out = sb.run(ExecRequest { env, ..ExecRequest::argv(["env"]) }).await;
    let vars: BTreeMap<&str, &str> = out.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("HOME"), Some(&"/home/user"));
    assert_eq!(vars.get("MY_SETTING"), Some(&"42"));
    assert_eq!(vars.get("PER_EXEC"), Some(&"yes"));
    for (k, _) in std::env::vars() {
        if ![
            "HOME",
            "PATH",
            "LANG",
            "USER",
            "LOGNAME",
            "SHELL",
            "TERM",
            "TMPDIR",
            "PWD",
            "SHLVL",
            "_",
            "OLDPWD",
            "PYTHONUNBUFFERED",
            "MPLBACKEND",
            "NODE_PATH",
        ]
        .contains(&k.as_str())
        {
            assert!(!vars.contains_key(k.as_str()), "host variable {k} leaked into the sandbox");
        }
    }
    assert!(!out.stdout.contains("AGENTBOX_LOCAL"), "agent variables must not leak: {}", out.stdout);
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sandboxes_cannot_see_each_other() {
    if common::not_root() {
        return;
    }
    let (a, b) = tokio::join!(Sandbox::new(), Sandbox::new());
    let out = a.sh("echo secret > /tmp/a-only && echo secret > ~/a-home && (sleep 300 & echo $!)").await;
    assert_eq!(out.exit_code, 0);
    let out = b.sh("ls /tmp/a-only ~/a-home 2>&1; ps -eo comm 2>/dev/null || ls /proc").await;
    assert!(out.stdout.contains("/tmp/a-only': No such file"), "{}", out.stdout);
    assert!(!out.stdout.contains("sleep"), "b sees a's processes: {}", out.stdout);
    a.destroy().await;
    b.destroy().await;
}

/// The hostile battery: each probe prints NAME=RESULT; every result must be a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_battery_is_contained() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let code = r#"
import ctypes, ctypes.util, os, socket, errno, fcntl, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(name, nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    e = ctypes.get_errno()
    print(f"{name}={'OK' if r >= 0 else errno.errorcode.get(e, e)}")
sc("unshare_user", 272, 0x10000000)
sc("unshare_ns", 272, 0x20000)
sc("setns", 308, 0, 0)
sc("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
sc("clone3", 435, 0, 0)
sc("mount", 165, 0, 0, 0, 0, 0)
sc("fsopen", 430, 0, 0)
sc("pivot_root", 155, 0, 0)
sc("chroot", 161, 0)
sc("bpf", 321, 0, 0, 0)
sc("perf_event_open", 298, 0, 0, -1, -1, 0)
sc("keyctl", 250, 0, 0)
sc("add_key", 248, 0, 0, 0, 0, 0)
sc("userfaultfd", 323, 0)
sc("open_by_handle_at", 304, 0, 0, 0)
sc("io_uring_setup", 425, 1, 0)
sc("kexec_load", 246, 0, 0, 0, 0)
sc("finit_module", 313, -1, 0, 0)
sc("init_module", 175, 0, 0, 0)
sc("reboot", 169, 0, 0, 0, 0)
sc("swapon", 167, 0, 0)
sc("settimeofday", 164, 0, 0)
sc("process_vm_readv", 310, 1, 0, 0, 0, 0, 0)
sc("x32_getpid", 0x40000000 | 39)
sc("personality", 135, 0x0040000)
sc("ptrace_attach_init", 101, 16, 1, 0, 0)
try:
    os.mknod("/tmp/mem", 0o20600, os.makedev(1, 1)); print("mknod_dev_mem=OK")
except OSError as e:
    print(f"mknod_dev_mem={errno.errorcode.get(e.errno, e.errno)}")
for fam, name in ((38, "af_alg"), (40, "af_vsock"), (17, "af_packet")):
    try:
        socket.socket(fam, socket.SOCK_RAW if fam == 17 else socket.SOCK_SEQPACKET, 0); print(f"{name}=OK")
    except OSError as e:
        print(f"{name}={errno.errorcode.get(e.errno, e.errno)}")
for path in ("/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger", "/proc/sys/kernel/modprobe"):
    try:
        cur = open(path).read() if path != "/proc/sysrq-trigger" else ""
        with open(path, "w") as f: f.write(cur)
        print(f"write_{path}=OK")
    except OSError as e:
        print(f"write_{path}={errno.errorcode.get(e.errno, e.errno)}")
for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
    print(f"read_{path}=" + (str(len(open(path, "rb").read(16))) if os.path.exists(path) else "absent"))
for dev in ("/dev/mem", "/dev/kmsg", "/dev/sda", "/dev/vda"):
    print(f"exists_{dev}={os.path.exists(dev)}")
try:
    fcntl.ioctl(0, 0x5412, b"x"); print("tiocsti=OK")
except OSError as e:
    print(f"tiocsti={errno.errorcode.get(e.errno, e.errno)}")
try:
    open("/proc/1/exe", "wb"); print("write_init_exe=OK")
except OSError as e:
    print(f"write_init_exe={errno.errorcode.get(e.errno, e.errno)}")
print("fds=" + ",".join(sorted(os.listdir("/proc/self/fd"))))
print("cgroup_view=" + str(os.path.exists("/sys/fs/cgroup")))
try:
    os.listdir("/.agentbox/cg"); print("agent_cgroups=OK")
except OSError as e:
    print(f"agent_cgroups={errno.errorcode.get(e.errno, e.errno)}")
"#;
    let out = sb.run(ExecRequest::argv(["python3", "-c", code])).await;
    assert_eq!(out.exit_code, 0, "{}\n{}", out.stdout, out.stderr);
    let results: BTreeMap<&str, &str> = out.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let expect = |name: &str, allowed: &[&str]| {
        let got = results.get(name).copied().unwrap_or("missing");
        assert!(allowed.contains(&got), "{name}: got {got}, want one of {allowed:?}\n{}", out.stdout);
    };
    for name in [
        "unshare_user",
        "unshare_ns",
        "setns",
        "clone_newuser",
        "mount",
        "fsopen",
        "pivot_root",
        "chroot",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "userfaultfd",
        "open_by_handle_at",
        "io_uring_setup",
        "kexec_load",
        "finit_module",
        "init_module",
        "reboot",
        "swapon",
        "settimeofday",
        "process_vm_readv",
        "personality",
        "ptrace_attach_init",
        "tiocsti",
        "af_alg",
        "af_vsock",
        "af_packet",
    ] {
        expect(name, &["EPERM", "EACCES", "EAFNOSUPPORT"]);
    }
    expect("clone3", &["ENOSYS"]);
    expect("x32_getpid", &["ENOSYS"]);
    expect("mknod_dev_mem", &["EPERM", "EROFS", "EACCES"]);
    // Knobs this kernel lacks are absent (ENOENT), which contains them just as well.
    expect("write_/proc/sys/kernel/core_pattern", &["EROFS", "EACCES", "EPERM", "ENOENT"]);
    expect("write_/proc/sysrq-trigger", &["EROFS", "EACCES", "EPERM", "ENOENT"]);
    expect("write_/proc/sys/kernel/modprobe", &["EROFS", "EACCES", "EPERM", "ENOENT"]);
    expect("write_init_exe", &["EACCES", "EPERM", "ETXTBSY"]);
    for path in ["/proc/kcore", "/proc/keys", "/proc/timer_list"] {
        expect(&format!("read_{path}"), &["0", "absent"]);
    }
    for dev in ["/dev/mem", "/dev/kmsg", "/dev/sda", "/dev/vda"] {
        expect(&format!("exists_{dev}"), &["False"]);
    }
    expect("fds", &["0,1,2,3"]);
    expect("cgroup_view", &["False"]);
    expect("agent_cgroups", &["EACCES", "EPERM"]);
    sb.destroy().await;
}

/// A writable root has no shared `/etc` template: the host's `/etc` entries are bound one by one beside the
/// generated files; a read-only root gets the same entries from its template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_root_binds_the_hosts_etc_entries_one_by_one() {
    if common::not_root() {
        return;
    }
    // Entries of the default list that this host has (a minimal host may lack /etc/ssl).
    let entries: Vec<String> = ["alternatives", "ld.so.cache", "ssl", "localtime", "ca-certificates"]
        .iter()
        .map(|e| format!("/etc/{e}"))
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    assert!(!entries.is_empty(), "this host has none of the entries the test looks for");
    let listing = format!("ls -d {}; grep -c '^user:' /etc/passwd", entries.join(" "));
    let mut want: Vec<&str> = entries.iter().map(String::as_str).collect();
    want.sort_unstable();
    let want = format!("{}\n1\n", want.join("\n"));
    let mut writable = SandboxConfig::default();
    writable.security.read_only_root = false;
    for config in [writable, SandboxConfig::default()] {
        let read_only = config.security.read_only_root;
        let sb = Sandbox::with(config).await;
        let out = sb.sh(&listing).await;
        assert_eq!(out.stdout, want, "read-only root {read_only}: {out:?}");
        sb.destroy().await;
    }
}
