//! Real processes for the fake: each runs in its own user and mount namespace where the sandbox's directories are
//! bound over `/home` and `/tmp`, so commands see `/home/user` and `/tmp` as in an E2B sandbox while the files live
//! in a temporary directory of the host.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Where a sandbox's `/home` and `/tmp` live on the host.
#[derive(Debug, Clone)]
pub struct SandboxFs {
    pub root: PathBuf,
}

impl SandboxFs {
    pub fn create(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("home/user"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self { root })
    }

    /// The host path of a sandbox path; `None` for paths outside `/home` and `/tmp`, which the fake serves read-only
    /// from the host.
    pub fn host_path(&self, sandbox_path: &str) -> PathBuf {
        for prefix in ["/home", "/tmp"] {
            if sandbox_path == prefix || sandbox_path.starts_with(&format!("{prefix}/")) {
                return self.root.join(sandbox_path.trim_start_matches('/'));
            }
        }
        PathBuf::from(sandbox_path)
    }

    /// The sandbox path of a host path under the root.
    pub fn sandbox_path(&self, host: &Path) -> String {
        match host.strip_prefix(&self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => host.display().to_string(),
        }
    }
}

/// The environment every sandbox process starts with.
pub fn base_env(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    env.insert("HOME".to_owned(), "/home/user".to_owned());
    env.insert("USER".to_owned(), "user".to_owned());
    env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
    env.extend(extra.clone());
    env
}

/// Spawns `cmd args` in a fresh user+mount namespace with the sandbox's directories bound, in `cwd`.
pub fn spawn(
    fs: &SandboxFs,
    cmd: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    stdin: bool,
) -> std::io::Result<Child> {
    let script = r#"R=$1; C=$2; shift 2
mount --bind "$R/home" /home && mount --bind "$R/tmp" /tmp || exit 125
cd "$C" || exit 126
exec "$@""#;
    let mut command = Command::new("unshare");
    command
        .args(["--user", "--map-root-user", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"])
        .arg(&fs.root)
        .arg(cwd)
        .arg(cmd)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn()
}

/// Every descendant of `pid`, read from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
                kids.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in kids.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

pub fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Kills a process and everything below it.
pub fn kill_tree(pid: u32) {
    let all = descendants(pid);
    kill(pid, libc::SIGKILL);
    for p in all {
        kill(p, libc::SIGKILL);
    }
}

/// Go's `ProcessState.String()` for a wait status.
pub fn go_status(status: std::process::ExitStatus) -> (i32, bool, String) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return (code, true, format!("exit status {code}"));
    }
    let sig = status.signal().unwrap_or(0);
    let name = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        6 => "aborted",
        9 => "killed",
        11 => "segmentation fault",
        13 => "broken pipe",
        15 => "terminated",
        n => return (-1, false, format!("signal: signal {n}")),
    };
    (-1, false, format!("signal: {name}"))
}

/// Host memory in use and in total (bytes), from `/proc/meminfo`.
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal:");
    (total.saturating_sub(field("MemAvailable:")), total)
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
pub fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let nums: Vec<u64> =
        text.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = nums.iter().sum();
    let idle = nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Bytes used under a directory.
pub fn disk_used(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}
