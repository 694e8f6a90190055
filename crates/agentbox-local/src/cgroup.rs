//! Host-side cgroups: detection of v1/v2, per-sandbox groups with limits,
//! accounting, kill-all and removal.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy at this mount point.
    V2(PathBuf),
    /// Legacy hierarchies: controller name -> mount point.
    V1(BTreeMap<String, PathBuf>),
    /// No usable cgroup filesystem.
    None,
}

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPUs.
    pub cpus: u32,
    /// Max processes/threads.
    pub pids: u64,
}

/// Host cgroup support, detected once.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: String,
    /// On v2, the directory the sandboxes' cgroups are made in (`<base>/<parent>`).
    v2_parent: PathBuf,
    /// Controllers we can use for limits (memory, cpu, pids).
    pub controllers: Vec<&'static str>,
    /// Why some controllers are unavailable.
    pub problems: Vec<String>,
}

fn parse_mountinfo(text: &str) -> (Option<PathBuf>, BTreeMap<String, PathBuf>) {
    let mut v2 = None;
    let mut v1 = BTreeMap::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split(' ').collect();
        let rfields: Vec<&str> = right.split(' ').collect();
        let (Some(mnt), Some(fstype)) = (fields.get(4), rfields.first()) else { continue };
        match *fstype {
            "cgroup2" => {
                v2.get_or_insert_with(|| PathBuf::from(mnt));
            }
            "cgroup" => {
                let opts = rfields.get(2).copied().unwrap_or_default();
                for c in opts.split(',') {
                    if matches!(c, "memory" | "cpu" | "cpuacct" | "pids" | "freezer") {
                        v1.entry(c.to_owned()).or_insert_with(|| PathBuf::from(mnt));
                    }
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// The controllers the limits use.
const WANTED: [&str; 3] = ["memory", "cpu", "pids"];

/// The leaf cgroup this process moves into when it sits in the cgroup it must make children in (cgroup v2's
/// no-internal-processes rule: a cgroup with processes can't enable controllers for its children).
const SUPERVISOR_LEAF: &str = "supervisor";

/// This process's cgroup on the v2 hierarchy mounted at `v2root` (the `0::` line of `/proc/self/cgroup`).
fn own_cgroup(v2root: &Path) -> Option<PathBuf> {
    cgroup_of(v2root, "self")
}

/// The v2 cgroup of the process `/proc/<pid>` names (`self` for this one), under `v2root`.
fn cgroup_of(v2root: &Path, pid: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel.trim().trim_start_matches('/');
    // A path outside this cgroup namespace's view shows as `/..`: it can't be used.
    (!rel.starts_with("..")).then(|| v2root.join(rel))
}

/// Whether systemd delegated `dir` (`Delegate=yes` marks it with the `trusted.delegate` or `user.delegate`
/// extended attribute).
fn is_delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: both strings are NUL-terminated and the buffer's length is passed with it.
        let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        n > 0 && value.first() == Some(&b'1')
    })
}

/// The nearest cgroup at or above `own` (below `v2root`) that systemd delegated.
fn delegated_ancestor(v2root: &Path, own: &Path) -> Option<PathBuf> {
    own.ancestors()
        .take_while(|d| d.starts_with(v2root) && *d != v2root)
        .find(|d| is_delegated(d))
        .map(Path::to_path_buf)
}

/// Moves this whole process (every thread) into `leaf`, made if needed.
fn move_self_into(leaf: &Path) -> io::Result<()> {
    fs::create_dir_all(leaf)?;
    let procs = leaf.join("cgroup.procs");
    // Our own children go along (a sandbox zygote forked before the backend was made, `fork_zygote_now`):
    // one left behind would keep the cgroup from enabling controllers for its children.
    let old = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    fs::write(&procs, "0")?;
    for child in own_children() {
        if fs::read_to_string(format!("/proc/{child}/cgroup")).is_ok_and(|c| c == old) {
            let _ = fs::write(&procs, child.to_string());
        }
    }
    Ok(())
}

/// The pids of this process's children (of every thread).
fn own_children() -> Vec<u32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// Enables in `dir`'s `cgroup.subtree_control` the wanted controllers `dir` has; returns the write's outcome.
fn write_subtree_control(dir: &Path) -> io::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let enable: Vec<String> = WANTED
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if enable.is_empty() {
        return Ok(());
    }
    fs::write(dir.join("cgroup.subtree_control"), enable.join(" "))
}

/// Picks the cgroup the sandboxes' parent goes in, on v2, and makes it able to hand controllers down:
/// - under systemd with `Delegate=yes`, the delegated cgroup (the unit's), this process moving into its
///   `supervisor` leaf;
/// - otherwise the hierarchy's root (the host's, or a container's cgroup namespace root, which this process
///   leaves for a leaf when it is the only one there).
fn prepare_v2_base(v2root: &Path, problems: &mut Vec<String>) -> PathBuf {
    let own = own_cgroup(v2root);
    let delegated = own.as_deref().and_then(|o| delegated_ancestor(v2root, o));
    let base = delegated.clone().unwrap_or_else(|| v2root.to_path_buf());
    let inside = own.as_deref() == Some(base.as_path());
    if delegated.is_some() && inside {
        if let Err(e) = move_self_into(&base.join(SUPERVISOR_LEAF)) {
            problems.push(format!(
                "cannot move agentboxd into {}/{SUPERVISOR_LEAF} of its delegated cgroup: {e}; \
                 sandbox limits may not be enforced",
                base.display()
            ));
        }
    }
    match write_subtree_control(&base) {
        // A namespace's root cgroup holding this process: leave it for a leaf and try again.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && inside && delegated.is_none() => {
            if let Err(e) = move_self_into(&base.join(SUPERVISOR_LEAF)).and_then(|()| write_subtree_control(&base)) {
                problems.push(format!(
                    "cannot enable the memory, cpu and pids controllers in {}: {e}; other processes share this \
                     cgroup (cgroup v2 allows controllers only for the children of a cgroup without processes): \
                     run agentboxd in a cgroup of its own (systemd: Delegate=yes)",
                    base.display()
                ));
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => problems.push(format!(
            "cannot enable the memory, cpu and pids controllers in {}: {e}; other processes sit in this cgroup \
             (cgroup v2 allows controllers only for the children of a cgroup without processes): run agentboxd \
             alone in its unit",
            base.display()
        )),
        // Missing controllers are reported per controller by the caller.
        _ => {}
    }
    base
}

/// Enables the wanted controllers for `dir`'s children and returns those that are on, reporting the others.
fn enable_controllers(dir: &Path, problems: &mut Vec<String>) -> Vec<&'static str> {
    let _ = write_subtree_control(dir);
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let mut controllers = Vec::new();
    for c in WANTED {
        if enabled.split_whitespace().any(|a| a == c) {
            controllers.push(c);
        } else {
            problems.push(format!(
                "cgroup v2 controller {c} is not available under {}: its limit is not enforced",
                dir.display()
            ));
        }
    }
    controllers
}

impl Cgroups {
    /// No usable cgroups: every limit is reported in `problems` as not enforced.
    fn unusable(parent: &str, problems: Vec<String>) -> Self {
        Self {
            layout: Layout::None,
            parent: parent.to_owned(),
            v2_parent: PathBuf::new(),
            controllers: Vec::new(),
            problems,
        }
    }

    /// Detects the host's cgroups and prepares `parent` (e.g. `agentbox`) under each root.
    #[must_use]
    pub fn detect(parent: &str) -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (v2, v1) = parse_mountinfo(&mountinfo);
        let mut problems = Vec::new();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            problems.push("not running as root: cgroup limits (memory, cpu, pids) are not enforced".to_owned());
            return Self::unusable(parent, problems);
        }
        // A v2 mount with controllers means a unified host; a v2 mount without them next to v1 is hybrid.
        if let Some(v2root) = v2 {
            let available = fs::read_to_string(v2root.join("cgroup.controllers")).unwrap_or_default();
            if WANTED.iter().any(|c| available.split_whitespace().any(|a| a == *c)) || v1.is_empty() {
                let base = prepare_v2_base(&v2root, &mut problems);
                let dir = base.join(parent);
                let _ = fs::create_dir_all(&dir);
                let controllers = enable_controllers(&dir, &mut problems);
                return Self {
                    layout: Layout::V2(v2root),
                    parent: parent.to_owned(),
                    v2_parent: dir,
                    controllers,
                    problems,
                };
            }
        }
        if v1.is_empty() {
            problems.push("no cgroup filesystem is mounted: memory, cpu and pids limits are not enforced".into());
            return Self::unusable(parent, problems);
        }
        let mut controllers = Vec::new();
        for c in ["memory", "cpu", "pids"] {
            match v1.get(c) {
                Some(m) if fs::create_dir_all(m.join(parent)).is_ok() => controllers.push(c),
                _ => problems.push(format!("cgroup v1 controller {c} is not mounted: its limit is not enforced")),
            }
        }
        let mut v1 = v1;
        for extra in ["cpuacct", "freezer"] {
            if v1.get(extra).is_some_and(|m| fs::create_dir_all(m.join(parent)).is_err()) {
                v1.remove(extra);
            }
        }
        Self { layout: Layout::V1(v1), parent: parent.to_owned(), v2_parent: PathBuf::new(), controllers, problems }
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// How the agent should mount a private cgroup view for per-exec tracking.
    #[must_use]
    pub fn exec_tracking(&self) -> &'static str {
        match &self.layout {
            Layout::V2(_) => "v2",
            Layout::V1(_) if self.controllers.contains(&"pids") => "v1:pids",
            _ => "none",
        }
    }

    fn dirs(&self, id: &str) -> Vec<(String, PathBuf)> {
        match &self.layout {
            Layout::V2(_) => vec![("unified".into(), self.v2_parent.join(id))],
            Layout::V1(m) => m
                .iter()
                .filter(|(c, _)| matches!(c.as_str(), "memory" | "cpu" | "cpuacct" | "pids" | "freezer"))
                .map(|(c, p)| (c.clone(), p.join(&self.parent).join(id)))
                .collect(),
            Layout::None => Vec::new(),
        }
    }

    /// Creates the sandbox's cgroup(s) and applies the limits.
    ///
    /// # Errors
    /// When a directory can't be created or a limit can't be written.
    pub fn create(&self, id: &str, limits: Limits) -> io::Result<SandboxCgroup> {
        let mut cg = SandboxCgroup { dirs: BTreeMap::new(), v2: matches!(self.layout, Layout::V2(_)) };
        for (c, dir) in self.dirs(id) {
            if cg.dirs.values().any(|d| d == &dir) {
                cg.dirs.insert(c, dir);
                continue;
            }
            let made = match fs::create_dir(&dir) {
                // The parent went with the last backend of this state directory that was dropped: make it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.ensure_parent();
                    fs::create_dir(&dir)
                }
                made => made,
            };
            made.map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", dir.display())))?;
            cg.dirs.insert(c, dir);
        }
        let w = |dir: &Path, file: &str, v: String| {
            fs::write(dir.join(file), &v)
                .map_err(|e| io::Error::new(e.kind(), format!("writing {v} to {}: {e}", dir.join(file).display())))
        };
        let quota = u64::from(limits.cpus) * 100_000;
        let result = (|| -> io::Result<()> {
            if cg.v2 {
                let d = cg.dirs.get("unified").cloned().unwrap_or_default();
                if self.controllers.contains(&"memory") {
                    w(&d, "memory.max", limits.memory_bytes.to_string())?;
                    let _ = fs::write(d.join("memory.swap.max"), "0");
                }
                if self.controllers.contains(&"cpu") {
                    w(&d, "cpu.max", format!("{quota} 100000"))?;
                }
                if self.controllers.contains(&"pids") {
                    w(&d, "pids.max", limits.pids.to_string())?;
                }
            } else {
                if let Some(d) = cg.dirs.get("memory") {
                    w(d, "memory.limit_in_bytes", limits.memory_bytes.to_string())?;
                    if d.join("memory.memsw.limit_in_bytes").exists() {
                        w(d, "memory.memsw.limit_in_bytes", limits.memory_bytes.to_string())?;
                    }
                    let _ = fs::write(d.join("memory.swappiness"), "0");
                }
                if let Some(d) = cg.dirs.get("cpu") {
                    // The period is the kernel's default, 100 ms, as the quota assumes.
                    w(d, "cpu.cfs_quota_us", quota.to_string())?;
                }
                if let Some(d) = cg.dirs.get("pids") {
                    w(d, "pids.max", limits.pids.to_string())?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The parent's directories, in every hierarchy.
    fn parent_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = match &self.layout {
            Layout::V2(_) => vec![self.v2_parent.clone()],
            Layout::V1(m) => m
                .iter()
                .filter(|(c, _)| matches!(c.as_str(), "memory" | "cpu" | "cpuacct" | "pids" | "freezer"))
                .map(|(_, p)| p.join(&self.parent))
                .collect(),
            Layout::None => Vec::new(),
        };
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Makes the parent again (and, on v2, hands its controllers down again).
    fn ensure_parent(&self) {
        for dir in self.parent_dirs() {
            let _ = fs::create_dir_all(&dir);
        }
        if matches!(self.layout, Layout::V2(_)) {
            let _ = write_subtree_control(&self.v2_parent);
        }
    }

    /// Removes the parent where it holds no sandbox's cgroup: a backend's state directory (and so its parent)
    /// may be a temporary one, whose parent nobody would reuse. Another backend of the same state directory makes
    /// it again when it needs it.
    pub fn remove_parent_if_empty(&self) {
        for dir in self.parent_dirs() {
            // rmdir refuses a cgroup with children or processes: only an empty parent goes.
            let _ = fs::remove_dir(dir);
        }
    }

    /// Names of the sandbox cgroups under our parent, in any hierarchy (for crash recovery).
    #[must_use]
    pub fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .find("sb-")
            .iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Directories of the sandbox cgroups whose names start with `prefix`, in every hierarchy.
    #[must_use]
    pub fn find(&self, prefix: &str) -> Vec<PathBuf> {
        let roots = self.parent_dirs();
        let mut found: Vec<PathBuf> = roots
            .iter()
            .filter_map(|r| fs::read_dir(r).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// A handle on an existing sandbox cgroup (for cleanup after a crash).
    #[must_use]
    pub fn open(&self, id: &str) -> SandboxCgroup {
        SandboxCgroup {
            dirs: self.dirs(id).into_iter().filter(|(_, d)| d.exists()).collect(),
            v2: matches!(self.layout, Layout::V2(_)),
        }
    }
}

/// Which cgroup hierarchy the host has, as [`CgroupReport`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy (cgroup v2) with the controllers.
    V2,
    /// Legacy hierarchies (cgroup v1), possibly next to an empty v2 mount (hybrid).
    V1,
    /// No cgroup file system.
    None,
}

/// The host's cgroups and what they mean for sandbox limits, read without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupReport {
    /// The process the report is about (`None`: this one).
    pub process: Option<u32>,
    /// The hierarchy in use.
    pub version: CgroupVersion,
    /// The v2 mount point (also on hybrid hosts, where it holds no controllers).
    pub v2_mount: Option<PathBuf>,
    /// The process's v2 cgroup.
    pub own_cgroup: Option<PathBuf>,
    /// The cgroup systemd delegated to the process (`Delegate=yes`), if any.
    pub delegated: Option<PathBuf>,
    /// Where the sandboxes' cgroups go (the delegated cgroup, or the hierarchy's root) on v2.
    pub base: Option<PathBuf>,
    /// Controllers the base cgroup has (v2), or the mounted v1 controllers.
    pub available: Vec<String>,
    /// Controllers the base cgroup already hands to its children (`cgroup.subtree_control`, v2).
    pub enabled: Vec<String>,
    /// One line per limit and feature: enforced or not, and why.
    pub notes: Vec<String>,
}

fn limit_of(controller: &str) -> &'static str {
    match controller {
        "memory" => "memory limit (and OOM kills counted)",
        "cpu" => "CPU limit",
        _ => "process limit",
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

impl CgroupReport {
    /// Reads the host's cgroups as this process sees them. Writes nothing.
    #[must_use]
    pub fn inspect() -> Self {
        Self::inspect_process(None)
    }

    /// Reads the host's cgroups as the process `pid` (this one for `None`) sees them, e.g. a running agentboxd,
    /// whose cgroup (a unit's, delegated or not) is not that of a shell. Writes nothing.
    #[must_use]
    pub fn inspect_process(pid: Option<u32>) -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (v2, v1) = parse_mountinfo(&mountinfo);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut report = Self {
            process: pid,
            version: CgroupVersion::None,
            v2_mount: v2.clone(),
            own_cgroup: None,
            delegated: None,
            base: None,
            available: Vec::new(),
            enabled: Vec::new(),
            notes: Vec::new(),
        };
        if !root {
            report
                .notes
                .push("not running as root: the local backend needs root, and enforces limits only then".into());
        }
        let unified = v2.as_ref().filter(|r| {
            let available = fs::read_to_string(r.join("cgroup.controllers")).unwrap_or_default();
            WANTED.iter().any(|c| available.split_whitespace().any(|a| a == *c)) || v1.is_empty()
        });
        if let Some(v2root) = unified {
            report.version = CgroupVersion::V2;
            report.own_cgroup = cgroup_of(v2root, &pid.map_or_else(|| "self".to_owned(), |p| p.to_string()));
            report.delegated = report.own_cgroup.as_deref().and_then(|o| delegated_ancestor(v2root, o));
            let base = report.delegated.clone().unwrap_or_else(|| v2root.clone());
            report.available = words(&fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default());
            report.enabled = words(&fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default());
            report.v2_notes(v2root, &base);
            report.base = Some(base);
        } else if !v1.is_empty() {
            report.version = CgroupVersion::V1;
            report.available = v1.keys().cloned().collect();
            for c in WANTED {
                report.notes.push(if v1.contains_key(c) {
                    format!("{c}: mounted (v1): sandboxes get a {}", limit_of(c))
                } else {
                    format!("{c}: not mounted (v1): the {} is not enforced", limit_of(c))
                });
            }
            report.notes.push(if v1.contains_key("freezer") {
                "pause: the v1 freezer (freezer.state)".into()
            } else {
                "pause: no freezer hierarchy is mounted: sandboxes can't be paused".into()
            });
            report.notes.push("teardown: every process is killed one by one (v1 has no cgroup.kill)".into());
        } else {
            report
                .notes
                .push("no cgroup file system is mounted: memory, CPU and process limits are not enforced".into());
        }
        report
    }

    fn v2_notes(&mut self, v2root: &Path, base: &Path) {
        let has = |list: &[String], c: &str| list.iter().any(|a| a == c);
        for c in WANTED {
            let line = if has(&self.enabled, c) {
                format!("{c}: delegated to the sandboxes' cgroups: sandboxes get a {}", limit_of(c))
            } else if has(&self.available, c) {
                format!(
                    "{c}: available; agentbox enables it for its sandboxes when it starts: sandboxes get a {}",
                    limit_of(c)
                )
            } else {
                format!(
                    "{c}: not available in {}: the {} is not enforced (enable it in the parent's \
                     cgroup.subtree_control, or run agentboxd under systemd with Delegate=yes)",
                    base.display(),
                    limit_of(c)
                )
            };
            self.notes.push(line);
        }
        match (&self.delegated, &self.own_cgroup) {
            (Some(d), _) => self.notes.push(format!(
                "delegation: systemd delegated {} (Delegate=yes): agentbox runs in a leaf of it (`{SUPERVISOR_LEAF}` \
                 when it starts in the delegated cgroup itself) and makes the sandboxes' cgroups next to that leaf",
                d.display()
            )),
            (None, Some(own)) if own.as_path() != v2root => self.notes.push(format!(
                "delegation: none; this process runs in {}, so agentbox makes the sandboxes' cgroups at the \
                 hierarchy's root, outside what manages that cgroup; under systemd use packaging/agentboxd.service \
                 (Delegate=yes)",
                own.display()
            )),
            _ => self.notes.push("delegation: not needed: this process runs in the hierarchy's root cgroup".into()),
        }
        self.notes.push(
            "pause: cgroup.freeze; teardown: cgroup.kill (Linux 5.14 and later, else processes are killed one by one)"
                .into(),
        );
    }
}

impl std::fmt::Display for CgroupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = match self.version {
            CgroupVersion::V2 => "v2 (unified)",
            CgroupVersion::V1 if self.v2_mount.is_some() => "v1 (hybrid: the v2 mount holds no controllers)",
            CgroupVersion::V1 => "v1",
            CgroupVersion::None => "none",
        };
        writeln!(f, "cgroup version: {version}")?;
        if let Some(own) = &self.own_cgroup {
            match self.process {
                Some(pid) => writeln!(f, "cgroup of process {pid}: {}", own.display())?,
                None => writeln!(f, "this process's cgroup: {}", own.display())?,
            }
        }
        if let Some(base) = &self.base {
            writeln!(f, "sandboxes' cgroups under: {}", base.display())?;
        }
        let label = if self.version == CgroupVersion::V1 { "controllers mounted" } else { "controllers available" };
        writeln!(f, "{label}: {}", if self.available.is_empty() { "none".into() } else { self.available.join(" ") })?;
        if self.version == CgroupVersion::V2 {
            let enabled = if self.enabled.is_empty() { "none".into() } else { self.enabled.join(" ") };
            writeln!(f, "controllers delegated to children: {enabled}")?;
        }
        for note in &self.notes {
            writeln!(f, "  {note}")?;
        }
        Ok(())
    }
}

/// One sandbox's cgroup directories.
#[derive(Debug, Clone, Default)]
pub struct SandboxCgroup {
    dirs: BTreeMap<String, PathBuf>,
    v2: bool,
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn keyed(p: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(p).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subtree(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

impl SandboxCgroup {
    /// The files a process id is written to, to move that process into the sandbox (one per hierarchy).
    ///
    /// On v1 that is `tasks`: moving only one thread (the init is single-threaded) skips the global
    /// threadgroup lock and the RCU grace period that `cgroup.procs` waits for (about 10 ms per sandbox).
    #[must_use]
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        let mut v: Vec<PathBuf> = self.dirs.values().map(|d| d.join(file)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether these are cgroup v2 directories.
    #[must_use]
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// Moves the single-threaded process `pid` (a sandbox init that waits for its setup) into the sandbox.
    /// Slower than the process joining itself (a write of `0`): moving another process takes the kernel's
    /// global threadgroup lock, an RCU grace period (about 10 ms).
    ///
    /// # Errors
    /// The first hierarchy that refuses it, named in the error.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for file in self.join_files() {
            fs::write(&file, pid.to_string())
                .map_err(|e| io::Error::new(e.kind(), format!("moving the init into {}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// Gives the sandbox's cgroup directories, and the files that move processes and enable controllers, to
    /// `uid`:`gid` (root of the sandbox's user namespace), as systemd's `Delegate=` does: the init can then make
    /// its executions' cgroups and move processes into them, while every limit file stays root's.
    ///
    /// # Errors
    /// The first directory that can't be given.
    pub fn delegate(&self, uid: u32, gid: u32) -> io::Result<()> {
        for dir in self.dirs.values() {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| io::Error::new(e.kind(), format!("delegating {}: {e}", dir.display())))?;
            let files: &[&str] = if self.v2 {
                &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"]
            } else {
                &["cgroup.procs", "tasks"]
            };
            for file in files {
                match std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io::Error::new(e.kind(), format!("delegating {}/{file}: {e}", dir.display())));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn dir(&self, v1: &str) -> Option<&PathBuf> {
        if self.v2 { self.dirs.get("unified") } else { self.dirs.get(v1) }
    }

    /// Memory in use, bytes.
    #[must_use]
    pub fn memory_current(&self) -> Option<u64> {
        let d = self.dir("memory")?;
        if self.v2 { read_u64(&d.join("memory.current")) } else { read_u64(&d.join("memory.usage_in_bytes")) }
    }

    /// Peak memory, bytes.
    #[must_use]
    pub fn memory_peak(&self) -> Option<u64> {
        let d = self.dir("memory")?;
        if self.v2 { read_u64(&d.join("memory.peak")) } else { read_u64(&d.join("memory.max_usage_in_bytes")) }
    }

    /// OOM kills so far.
    #[must_use]
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = self.dir("memory") else { return 0 };
        if self.v2 {
            keyed(&d.join("memory.events"), "oom_kill")
        } else {
            keyed(&d.join("memory.oom_control"), "oom_kill")
        }
        .unwrap_or(0)
    }

    /// CPU time consumed, nanoseconds.
    #[must_use]
    pub fn cpu_nanos(&self) -> Option<u64> {
        if self.v2 {
            keyed(&self.dirs.get("unified")?.join("cpu.stat"), "usage_usec").map(|u| u * 1000)
        } else {
            read_u64(&self.dirs.get("cpuacct")?.join("cpuacct.usage"))
        }
    }

    /// Whether the sandbox can be frozen: a v2 cgroup, or a v1 freezer hierarchy.
    #[must_use]
    pub fn can_freeze(&self) -> bool {
        if self.v2 { self.dirs.contains_key("unified") } else { self.dirs.contains_key("freezer") }
    }

    /// Freezes (`true`) or thaws every process of the sandbox, waiting until the kernel says it is done: v2's
    /// `cgroup.freeze` and `cgroup.events`, or v1's `freezer.state`.
    ///
    /// # Errors
    /// No freezer, a write refused, or the state not reached within two seconds.
    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let (file, value, status, want) = if self.v2 {
            let d = self.dirs.get("unified").ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
            (
                d.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                d.join("cgroup.events"),
                if frozen { "frozen 1" } else { "frozen 0" },
            )
        } else {
            let d = self.dirs.get("freezer").ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
            let state = d.join("freezer.state");
            (state.clone(), if frozen { "FROZEN" } else { "THAWED" }, state, if frozen { "FROZEN" } else { "THAWED" })
        };
        fs::write(&file, value)?;
        for i in 0..2000 {
            let now = fs::read_to_string(&status)?;
            if now.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            // v1 moves through FREEZING; writing again retries the tasks that were busy.
            if !self.v2 && i % 10 == 9 {
                let _ = fs::write(&file, value);
            }
            std::thread::sleep(std::time::Duration::from_micros(if i < 50 { 100 } else { 1000 }));
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("the cgroup did not reach {want:?} within 2 s")))
    }

    /// Every pid in the sandbox's cgroups.
    #[must_use]
    pub fn pids(&self) -> Vec<i32> {
        let mut dirs = Vec::new();
        for d in self.dirs.values() {
            subtree(d, &mut dirs);
        }
        let mut pids: Vec<i32> = dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the sandbox's cgroups until none is left.
    pub fn kill_all(&self) {
        if self.v2 {
            if let Some(d) = self.dirs.get("unified") {
                let _ = fs::write(d.join("cgroup.kill"), "1");
            }
        }
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = crate::sys::kill(p, libc::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Removes the cgroup directories of a sandbox whose processes should all be gone; when some
    /// directory is still in use, kills what is in it and removes it the slow way.
    pub fn remove_after_exit(&self) {
        let gone = |dir: &Path| match fs::remove_dir(dir) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        let mut busy = false;
        for d in self.dirs.values() {
            // Most hierarchies have no child cgroups: one rmdir. Execution cgroups go first.
            if gone(d) {
                continue;
            }
            let mut all = Vec::new();
            subtree(d, &mut all);
            busy |= !all.iter().all(|dir| gone(dir));
        }
        if busy {
            self.kill_all();
            self.remove();
        }
    }

    /// Removes the cgroup directories (children first), retrying while processes exit.
    pub fn remove(&self) {
        for d in self.dirs.values() {
            let mut all = Vec::new();
            subtree(d, &mut all);
            for dir in all {
                for _ in 0..100 {
                    match fs::remove_dir(&dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_parent_is_removed_and_made_again_when_needed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let cgroups = Cgroups::detect(&format!("agentbox-parent-test-{}", std::process::id()));
        if cgroups.controllers.is_empty() {
            return;
        }
        let limits = Limits { memory_bytes: 64 << 20, cpus: 1, pids: 64 };
        let first = cgroups.create("sb-parent-test", limits).unwrap();
        cgroups.remove_parent_if_empty();
        assert!(cgroups.parent_dirs().iter().all(|d| d.is_dir()), "a parent with a sandbox's cgroup stays");
        first.remove();
        cgroups.remove_parent_if_empty();
        assert!(cgroups.parent_dirs().iter().all(|d| !d.exists()), "an empty parent goes");
        // Another backend of the same state directory makes it again.
        let again = cgroups.create("sb-parent-test", limits).unwrap();
        assert!(cgroups.parent_dirs().iter().all(|d| d.is_dir()));
        again.remove();
        cgroups.remove_parent_if_empty();
        assert!(cgroups.parent_dirs().iter().all(|d| !d.exists()));
    }

    #[test]
    fn parses_hybrid_and_unified_mountinfo() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                      31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                      35 25 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let (v2, v1) = parse_mountinfo(hybrid);
        assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v1.get("memory"), Some(&PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v1.get("cpuacct"), Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let (v2, v1) = parse_mountinfo(unified);
        assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(v1.is_empty());
    }

    #[test]
    fn finds_the_nearest_cgroup_systemd_delegated() {
        use std::os::unix::ffi::OsStrExt;
        let root = std::env::temp_dir().join(format!("agentbox-cgroup-delegate-{}", std::process::id()));
        let own = root.join("system.slice/agentboxd.service/supervisor");
        fs::create_dir_all(&own).unwrap();
        let unit = root.join("system.slice/agentboxd.service");
        let path = std::ffi::CString::new(unit.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings and a one-byte value with its length.
        let set = unsafe { libc::setxattr(path.as_ptr(), c"trusted.delegate".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        if set == 0 {
            assert_eq!(delegated_ancestor(&root, &own), Some(unit.clone()));
            assert_eq!(delegated_ancestor(&root, &unit), Some(unit.clone()));
        }
        // Trusted attributes need CAP_SYS_ADMIN and a file system that keeps them; nothing is delegated without.
        assert_eq!(delegated_ancestor(&root, &root.join("system.slice")), None);
        assert_eq!(delegated_ancestor(&root, &root), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_report_says_what_each_controller_means() {
        let report = CgroupReport {
            process: None,
            version: CgroupVersion::V2,
            v2_mount: Some(PathBuf::from("/sys/fs/cgroup")),
            own_cgroup: Some(PathBuf::from("/sys/fs/cgroup/system.slice/agentboxd.service/supervisor")),
            delegated: Some(PathBuf::from("/sys/fs/cgroup/system.slice/agentboxd.service")),
            base: Some(PathBuf::from("/sys/fs/cgroup/system.slice/agentboxd.service")),
            available: vec!["cpu".into(), "memory".into(), "pids".into()],
            enabled: vec!["memory".into(), "pids".into()],
            notes: vec!["cpu: available".into()],
        };
        let text = report.to_string();
        assert!(text.starts_with("cgroup version: v2 (unified)\n"), "{text}");
        assert!(text.contains("controllers delegated to children: memory pids\n"), "{text}");
        assert!(text.contains("  cpu: available\n"), "{text}");
    }
}
