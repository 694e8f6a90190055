//! `LocalConfig`: the host-level settings of the local backend.

use std::path::PathBuf;

/// Host-level settings of the local backend (per-sandbox settings live in `SandboxConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Where the backend keeps what its sandboxes share: the empty directory each init mounts its
    /// root on, and the `/etc` templates. Sandboxes themselves leave nothing here.
    pub state_dir: PathBuf,
    /// Prefix of the cgroup under which sandbox cgroups are made (a hash of the state directory is appended).
    pub cgroup_parent: String,
    /// Host system directories bound read-only into every sandbox.
    pub system_dirs: Vec<String>,
    /// Host /etc entries bound read-only (the sandbox writes its own passwd, group, hosts, resolv.conf).
    pub etc_entries: Vec<String>,
    /// Host name inside sandboxes.
    pub hostname: String,
    /// Disk-backed storage: each sandbox's home is a subvolume of this pool, under a quota of `disk_gb`
    /// (see `agentbox-storage`). `None`, or a pool that can't be opened (reported in
    /// [`LocalBackend::limitations`](crate::LocalBackend::limitations)), keeps homes on the memory-backed tmpfs.
    pub storage: Option<agentbox_storage::PoolConfig>,
    /// PEM files of certificate authorities the egress proxy trusts, besides the host's system roots,
    /// when it connects to hosts whose TLS it terminates (hosts with secrets or inspected hosts): a
    /// company CA, or a test CA.
    pub upstream_extra_roots: Vec<PathBuf>,
    /// Host id ranges for sandboxes' user namespaces: each sandbox's ids `0..65536` map onto a host range
    /// of its own, so no two sandboxes share a host uid (or the per-user kernel limits counted by it). The claims
    /// directory must be the same for every backend on the host (ranges are unique per directory); the default,
    /// `/run/agentbox/ids`, does not follow `state_dir`. `None`: no user namespaces, and every sandbox's user
    /// is the same host uid (reported in [`LocalBackend::limitations`](crate::LocalBackend::limitations)).
    pub id_ranges: Option<agentbox_storage::IdRangesConfig>,
    /// The image store sandboxes' roots come from when their config names an image (see `agentbox-image`).
    /// `None`: only the host's system (`image` unset or `"host"`); a sandbox asking for an image is refused.
    pub images: Option<agentbox_image::ImageConfig>,
    /// Who adopts the files of this backend's sandboxes after a crash: a file that exists for as long as the
    /// keeper does (a server's registry database), recorded with each sandbox's files as the label
    /// [`KEEPER_LABEL`](agentbox_core::KEEPER_LABEL). When a backend finds the files of a sandbox whose process
    /// died without destroying it (a crash, `kill -9`), it keeps those whose keeper still exists on the stopped
    /// shelf, marked [`after_crash`](agentbox_core::StoppedSandbox::after_crash), for the keeper to adopt as
    /// stopped or discard; it deletes the others, which nothing would adopt (and kept files whose keeper has
    /// gone since). Their processes are ended either way.
    pub crash_keeper: Option<PathBuf>,
    /// What kind of process hosts the backend (see [`HostProcess`]).
    pub host_process: HostProcess,
}

/// What kind of process hosts a backend, which decides when it does the housekeeping of its state directory: the
/// removal of what processes that died without destroying their sandboxes left (their processes, cgroups,
/// storage layers and id ranges; the sandboxes of live processes are never touched), and of the cgroup parent of
/// the state directory's sandboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostProcess {
    /// A server, or any program that creates sandboxes for a while: orphans are removed in
    /// [`LocalBackend::new`](crate::LocalBackend::new), before it returns, and the cgroup parent when the backend
    /// is dropped, if no sandbox is left in it.
    #[default]
    LongRunning,
    /// A process that creates a sandbox or two and exits (`agentbox run`): orphans are removed when the backend is
    /// dropped, after the process's caller has had its answer, and the empty cgroup parent is left for the next
    /// process of the state directory, which would otherwise make it again first thing. What one process leaves,
    /// the next one removes.
    OneShot,
}

impl Default for LocalConfig {
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let state_dir = if uid == 0 {
            PathBuf::from("/run/agentbox")
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map_or_else(|| PathBuf::from(format!("/tmp/agentbox-{uid}")), |d| PathBuf::from(d).join("agentbox"))
        };
        Self {
            state_dir,
            cgroup_parent: "agentbox".into(),
            system_dirs: ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt"]
                .map(str::to_owned)
                .into(),
            etc_entries: [
                "alternatives",
                "ld.so.cache",
                "ld.so.conf",
                "ld.so.conf.d",
                "ssl",
                "ca-certificates",
                "ca-certificates.conf",
                "localtime",
                "timezone",
                "mime.types",
                "fonts",
                "python3",
                "python3.11",
                "chromium",
                "chromium.d",
                "bash.bashrc",
                "profile",
                "inputrc",
                "terminfo",
                "magic",
                "protocols",
                "services",
                "debian_version",
                "os-release",
                "nanorc",
                "vim",
                "gitconfig",
                "npmrc",
                "pip.conf",
                "xdg",
                "matplotlibrc",
            ]
            .map(str::to_owned)
            .into(),
            hostname: "sandbox".into(),
            images: (uid == 0).then(agentbox_image::ImageConfig::default),
            id_ranges: (uid == 0).then(|| agentbox_storage::IdRangesConfig::in_dir(PathBuf::from("/run/agentbox/ids"))),
            storage: (uid == 0).then(|| agentbox_storage::PoolConfig {
                dir: PathBuf::from("/var/lib/agentbox/storage"),
                image_bytes: None,
            }),
            upstream_extra_roots: Vec::new(),
            crash_keeper: None,
            host_process: HostProcess::LongRunning,
        }
    }
}
