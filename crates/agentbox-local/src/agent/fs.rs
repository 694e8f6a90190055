//! Builds the sandbox's filesystem inside its fresh mount namespace.
//!
//! All syscalls go through [`Mounter`], so the sequence is unit-tested with a
//! recording implementation and run for real with [`LinuxMounter`].
//!
//! The init does this before it pivots into the new root, so its own root is still the host's, while the
//! new root's entries are the sandbox's to choose: an image's layers, what root inside changed in its writable
//! layer, what the user left in the persistent home. So every place the init makes, mounts on or writes in
//! the new root is resolved with [`Mounter::dir_in`], which keeps the walk inside that root (a symlink to
//! `/tmp` there means the root's `/tmp`, never the host's), and the generated files are written with
//! [`Mounter::replace_file`], which replaces whatever is in their place (a link, a FIFO) without following or
//! opening it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::proto::{PassedDir, Setup};
use crate::sys;

/// The filesystem syscalls setup needs: the seam between the mount logic and the kernel.
pub trait Mounter {
    /// mount(2).
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2) with MNT_DETACH.
    fn detach(&mut self, target: &Path) -> io::Result<()>;
    /// mkdir -p with a final mode and owner.
    fn mkdir(&mut self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()>;
    /// Creates an empty file (a bind-mount target).
    fn touch(&mut self, path: &Path) -> io::Result<()>;
    /// Makes a character device node with mode 0666.
    fn mknod(&mut self, path: &Path, major: u32, minor: u32) -> io::Result<()>;
    /// symlink(2).
    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()>;
    /// The directory `inside` (an absolute path) of the tree at `root`, as a path that names exactly it,
    /// made (0755) where missing. The walk stays in `root`: with [`Links::InRoot`] a symlink on the way
    /// resolves as if `root` were `/`; with [`Links::Refused`] a symlink fails it. Mounts on the way are
    /// crossed, so ask again after mounting on the directory to reach what was mounted.
    fn dir_in(&mut self, root: &Path, inside: &str, links: Links) -> io::Result<PathBuf>;
    /// At most `max` bytes of `name` in the directory `dir` (from [`dir_in`](Self::dir_in)) when it is a
    /// regular file; `None` when it is absent or anything else (a symlink is not followed, a FIFO or a device
    /// not opened).
    fn read_file_in(&mut self, dir: &Path, name: &str, max: u64) -> io::Result<Option<Vec<u8>>>;
    /// Makes `name` in the directory `dir` (from [`dir_in`](Self::dir_in)) a new regular file (0644) holding
    /// `content`, removing what was there first (a symlink is removed, not followed; a directory is an error).
    fn replace_file(&mut self, dir: &Path, name: &str, content: &str) -> io::Result<()>;
    /// Copies a host file's content (following symlinks) to a new file.
    fn copy(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// rmdir(2).
    fn rmdir(&mut self, path: &Path) -> io::Result<()>;
    /// Makes `new_root` the root and detaches the old one.
    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()>;
    /// Moves the detached mount at `mount` (a `/proc/self/fd/N` path) onto `target`.
    fn attach(&mut self, mount: &str, target: &Path) -> io::Result<()>;
}

/// How [`Mounter::dir_in`] treats a symlink on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Followed, inside the root (an image's own links, as a container runtime resolves them).
    InRoot,
    /// Refused: for paths the configuration names under directories the sandbox's user writes.
    Refused,
}

/// Real syscalls.
#[derive(Debug, Default)]
pub struct LinuxMounter {
    /// The directories [`Mounter::dir_in`] resolved, held so that their `/proc/self/fd` paths stay valid.
    held: Vec<OwnedFd>,
    /// The root [`Mounter::dir_in`] last resolved in, opened once (each open of a `/proc/self/fd` path looks
    /// the process up again); forgotten when something is mounted on it.
    root: Option<(PathBuf, OwnedFd)>,
}

impl LinuxMounter {
    fn open_dir(path: &Path) -> io::Result<OwnedFd> {
        rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| with_path(e, path))
    }

    /// Forgets the opened root when `target`, about to be mounted on or detached, is it.
    fn forget_root_under(&mut self, target: &Path) {
        if self.root.as_ref().is_some_and(|(path, _)| path == target) {
            self.root = None;
        }
    }

    /// The file `name` in `dir`, emptied and made mode 0644, when it is what [`Mounter::replace_file`] would make
    /// anyway: a regular file of root's with one link. Rewriting it in place spares an image's overlay root a
    /// whiteout and a create over it (an image's `/etc/hostname`, say). Anything else (a symbolic link, a FIFO,
    /// another owner, a hard link) is left for a new file to replace.
    fn open_to_rewrite(dir: &OwnedFd, name: &str) -> io::Result<Option<std::fs::File>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Looked at without being opened: a FIFO would block the open, a device reach its driver.
        let node = match rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("replacing {name}: {e}"))),
        };
        let st = rustix::fs::fstat(&node)?;
        let same = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && (st.st_uid, st.st_gid) == (0, 0)
            && st.st_nlink == 1;
        if !same {
            return Ok(None);
        }
        // Reopened through the node looked at; O_TRUNC copies an overlay's file up without its data.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", node.as_raw_fd()))
            .map_err(|e| io::Error::new(e.kind(), format!("rewriting {name}: {e}")))?;
        if st.st_mode & 0o7777 != GENERATED_FILE_MODE {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(GENERATED_FILE_MODE))?;
        }
        Ok(Some(file))
    }
}

fn with_path(e: rustix::io::Errno, path: &Path) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", path.display()))
}

impl Mounter for LinuxMounter {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.forget_root_under(target);
        sys::mount(source, target, fstype, flags, data)
    }
    fn detach(&mut self, target: &Path) -> io::Result<()> {
        self.forget_root_under(target);
        sys::umount(target, libc::MNT_DETACH)
    }
    fn mkdir(&mut self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(path)?;
        // Changed only when they differ: on an image's overlay root a change copies the directory up (the
        // image's own /tmp, /dev and /proc usually have the right mode already).
        let now = std::fs::metadata(path)?;
        if now.mode() & 0o7777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        if let Some((u, g)) = owner.filter(|&(u, g)| (now.uid(), now.gid()) != (u, g)) {
            std::os::unix::fs::chown(path, Some(u), Some(g))?;
        }
        Ok(())
    }
    fn touch(&mut self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map(drop)
    }
    fn mknod(&mut self, path: &Path, major: u32, minor: u32) -> io::Result<()> {
        let p = sys::cpath(path)?;
        // SAFETY: a NUL-terminated path that outlives the call.
        sys::check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) })?;
        // The mode without the umask.
        // SAFETY: as above.
        sys::check(unsafe { libc::chmod(p.as_ptr(), 0o666) }).map(drop)
    }
    fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
    fn dir_in(&mut self, root: &Path, inside: &str, links: Links) -> io::Result<PathBuf> {
        let root_fd = match &self.root {
            Some((path, fd)) if path == root => rustix::io::dup(fd)?,
            _ => {
                let fd = Self::open_dir(root)?;
                let copy = rustix::io::dup(&fd)?;
                self.root = Some((root.to_owned(), fd));
                copy
            }
        };
        let mut resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        if links == Links::Refused {
            resolve |= ResolveFlags::NO_SYMLINKS;
        }
        let parts: Vec<&str> = inside.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        let shown = |n: usize| format!("/{}", parts[..n].join("/"));
        let open = |n: usize| {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            rustix::fs::openat2(&root_fd, parts[..n].join("/").as_str(), flags, Mode::empty(), resolve)
        };
        let mut dir = rustix::io::dup(&root_fd)?;
        for n in 1..=parts.len() {
            dir = match open(n) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, parts[n - 1], Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(io::Error::new(io::Error::from(e).kind(), format!("making {}: {e}", shown(n))));
                        }
                    }
                    open(n).map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", shown(n))))?
                }
                Err(rustix::io::Errno::LOOP) if links == Links::Refused => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} has a symbolic link on the way to it, which is not followed", shown(n)),
                    ));
                }
                Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", shown(n)))),
            };
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        self.held.push(dir);
        Ok(path)
    }
    fn read_file_in(&mut self, dir: &Path, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let dir_fd = Self::open_dir(dir)?;
        // Looked at without being opened: a FIFO would block the open, a device reach its driver.
        let node =
            match rustix::fs::openat(&dir_fd, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(io::Error::from(e)),
            };
        if FileType::from_raw_mode(rustix::fs::fstat(&node)?.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", node.as_raw_fd()))?;
        let mut bytes = Vec::new();
        file.take(max).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }
    fn replace_file(&mut self, dir: &Path, name: &str, content: &str) -> io::Result<()> {
        use std::io::Write;
        let dir_fd = Self::open_dir(dir)?;
        if let Some(mut file) = Self::open_to_rewrite(&dir_fd, name)? {
            return file
                .write_all(content.as_bytes())
                .map_err(|e| io::Error::new(e.kind(), format!("writing {name}: {e}")));
        }
        match rustix::fs::unlinkat(&dir_fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("replacing {name}: {e}"))),
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir_fd, name, flags, Mode::from_raw_mode(GENERATED_FILE_MODE))
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("writing {name}: {e}")))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(GENERATED_FILE_MODE))?;
        std::fs::File::from(fd).write_all(content.as_bytes())
    }
    fn rmdir(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn copy(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::copy(from, to).map(drop)
    }
    fn attach(&mut self, mount: &str, target: &Path) -> io::Result<()> {
        self.forget_root_under(target);
        rustix::mount::move_mount(
            rustix::fs::CWD,
            mount,
            rustix::fs::CWD,
            target,
            // The target may be a `/proc/self/fd` path from `dir_in`.
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_SYMLINKS | rustix::mount::MoveMountFlags::MOVE_MOUNT_T_SYMLINKS,
        )
        .map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("moving {mount} onto {}: {e}", target.display()))
        })
    }
    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()> {
        std::env::set_current_dir(new_root)?;
        let dot = sys::cstr(".")?;
        // SAFETY: pivot_root(".", ".") stacks the old root on top of the new one; both args are valid C strings.
        sys::check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int)?;
        sys::umount(Path::new("."), libc::MNT_DETACH)?;
        std::env::set_current_dir("/")
    }
}

/// The mode [`build`] gives `/etc` (on an image root, the parent of the generated files).
pub(crate) const ETC_MODE: u32 = 0o755;
/// The mode of the generated files.
pub(crate) const GENERATED_FILE_MODE: u32 = 0o644;
/// The mode of the directory the home is mounted on.
pub(crate) const HOME_MODE: u32 = 0o755;
/// The mode of the directory `/tmp` is mounted on.
pub(crate) const TMP_MODE: u32 = 0o1777;
/// The mode of the directory `/dev` is mounted on.
pub(crate) const DEV_MODE: u32 = 0o755;
/// The mode of the directory `/proc` is mounted on.
pub(crate) const PROC_MODE: u32 = 0o555;
/// The init's private directory (root only), and the cgroup view mounted in it.
pub(crate) const PRIVATE_DIR: &str = "/.agentbox";
/// See [`PRIVATE_DIR`].
pub(crate) const CGROUP_VIEW: &str = "/.agentbox/cg";
/// The mode of [`PRIVATE_DIR`] and [`CGROUP_VIEW`].
pub(crate) const PRIVATE_MODE: u32 = 0o700;

const RO_BIND: libc::c_ulong = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

/// Files in /proc hidden behind /dev/null, as runc does.
const PROC_MASKED_FILES: &[&str] = &["kcore", "keys", "timer_list", "sched_debug", "latency_stats", "kallsyms", "kmsg"];
/// Directories in /proc hidden behind an empty read-only tmpfs.
const PROC_MASKED_DIRS: &[&str] = &["acpi", "scsi", "firmware", "driver"];
/// Paths in /proc made read-only.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// The device nodes of /dev: name, major, minor. Made with mknod (bound from the host's /dev where
/// that is refused).
const DEVICES: &[(&str, u32, u32)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

fn under(root: &Path, inside: &str) -> PathBuf {
    root.join(inside.trim_start_matches('/'))
}

/// Makes every mount of this (new) mount namespace private, then mounts a small tmpfs, the sandbox's root, on
/// the working directory (its path may not be reachable from a user namespace). Returns the new mount;
/// `/proc/self/fd/<it>` is the path [`build`] then fills.
///
/// The new mount API does it: a mount made on the working directory would be covered, not entered, by later
/// lookups from it.
///
/// # Errors
/// The step that failed.
pub fn new_root() -> io::Result<std::os::fd::OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
    let ctx = |what: &'static str| {
        move |e: rustix::io::Errno| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("{what}: {e}"))
        }
    };
    sys::mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| io::Error::new(e.kind(), format!("making mounts private: {e}")))?;
    let fs =
        rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(ctx("opening a tmpfs for the root"))?;
    for (key, value) in [("source", "agentbox-root"), ("size", "4m"), ("nr_inodes", "4096"), ("mode", "0755")] {
        rustix::mount::fsconfig_set_string(&fs, key, value).map_err(ctx("configuring the root tmpfs"))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(ctx("creating the root tmpfs"))?;
    let mount = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(ctx("mounting the root tmpfs"))?;
    rustix::mount::move_mount(
        &mount,
        "",
        rustix::fs::CWD,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(ctx("attaching the root tmpfs"))?;
    Ok(mount)
}

/// The detached mounts the init received (`/proc/self/fd/N` paths): an image root's, and the volumes.
#[derive(Debug, Clone, Default)]
pub struct ImageSources {
    /// The image's layers, top first.
    pub lowers: Vec<String>,
    /// The sandbox's storage layer (its `root` is the overlay's upper, `work` its work directory).
    pub layer: Option<String>,
    /// The volumes' detached mounts, in the order of `Setup::volumes`.
    pub volumes: Vec<String>,
}

/// Mounts the overlay root of an image inside the staging tmpfs `staging` and returns where it is.
fn mount_image_root(m: &mut dyn Mounter, staging: &Path, s: &Setup, image: &ImageSources) -> io::Result<PathBuf> {
    let ctx = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let Some(layer_source) = &image.layer else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an image root needs the sandbox's storage layer"));
    };
    if image.lowers.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an image root needs at least one layer"));
    }
    let mut lowerdirs = Vec::new();
    for (i, lower) in image.lowers.iter().enumerate() {
        let at = staging.join(".lower").join(i.to_string());
        m.mkdir(&at, 0o700, None)?;
        m.attach(lower, &at).map_err(ctx("attaching an image layer"))?;
        lowerdirs.push(at.to_string_lossy().into_owned());
    }
    let layer = staging.join(".layer");
    m.mkdir(&layer, 0o700, None)?;
    m.attach(layer_source, &layer).map_err(ctx("attaching the storage layer"))?;
    let root = staging.join(".root");
    m.mkdir(&root, 0o755, None)?;
    // Inside a user namespace overlayfs keeps its attributes as user.overlay.* (the image store writes
    // whiteouts as 0/0 character devices and opaque directories with both attribute forms).
    // `volatile`: no sync of the upper filesystem at unmount (a btrfs transaction commit, 3 to 8 ms of every
    // destroy); a stop syncs the pool itself, and the host clears the mark this leaves before the next mount.
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        lowerdirs.join(":"),
        layer.join("root").display(),
        layer.join("work").display()
    );
    if s.user_namespace {
        opts.push_str(",userxattr");
    }
    m.mount(Some("agentbox-image"), &root, Some("overlay"), libc::MS_NOSUID | libc::MS_NODEV, Some(&opts))
        .map_err(ctx("mounting the image root"))?;
    Ok(root)
}

/// The most of an image's `/etc/passwd` or `/etc/group` kept (as much as the host reads to resolve its `User`).
pub(crate) const MAX_ACCOUNT_FILE: u64 = agentbox_image::user::MAX_ACCOUNT_FILE;

/// Adds to `existing` (a passwd or group file) the lines of `generated` whose first `:`-separated field (a user
/// or group name) it lacks, so an image's own users stay and the sandbox's are there.
pub(crate) fn merge_name_lines(existing: &str, generated: &str) -> String {
    let names: std::collections::HashSet<&str> = existing.lines().filter_map(|l| l.split(':').next()).collect();
    let mut out = existing.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in generated.lines() {
        if line.split(':').next().is_some_and(|n| !names.contains(n)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Where [`prepare`] makes the sandbox's `/dev` in the staging tmpfs, for [`build`] to move into the root.
const PREPARED_DEV: &str = ".dev";
/// Where [`prepare`] makes the sandbox's `/proc` in the staging tmpfs.
const PREPARED_PROC: &str = ".proc";

/// Makes, in `staging` (the empty tmpfs [`new_root`] attached), what every sandbox's root gets whatever its setup
/// says: `/dev` (a small tmpfs with the safe device nodes and a private devpts; `/dev/shm`, sized by the setup,
/// comes in [`build`]) and `/proc` of the sandbox's own pid namespace, with the sensitive paths masked. The init
/// does this as soon as its id maps are written, while the host is still making the sandbox's cgroups and
/// storage; [`build`] then moves both trees into the root. Nothing here is the sandbox's: `staging` is a fresh
/// tmpfs of the init's own.
///
/// # Errors
/// The first failing step, with the path involved.
pub fn prepare(m: &mut dyn Mounter, staging: &Path) -> io::Result<()> {
    let ctx = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let dev = staging.join(PREPARED_DEV);
    m.mkdir(&dev, DEV_MODE, None)?;
    m.mount(
        Some("agentbox-dev"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,nr_inodes=64,mode=0755"),
    )?;
    for (d, major, minor) in DEVICES {
        let target = dev.join(d);
        if m.mknod(&target, *major, *minor).is_err() {
            m.touch(&target)?;
            m.mount(Some(&format!("/dev/{d}")), &target, None, libc::MS_BIND, None)
                .map_err(ctx("binding a device node"))?;
        }
    }
    m.mkdir(&dev.join("pts"), 0o755, None)?;
    m.mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(ctx("mounting devpts"))?;
    m.symlink("pts/ptmx", &dev.join("ptmx"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        m.symlink(target, &dev.join(name))?;
    }

    let proc_dir = staging.join(PREPARED_PROC);
    m.mkdir(&proc_dir, PROC_MODE, None)?;
    m.mount(Some("proc"), &proc_dir, Some("proc"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)
        .map_err(ctx("mounting /proc"))?;
    for f in PROC_MASKED_FILES {
        let p = proc_dir.join(f);
        if p.exists() {
            m.mount(Some(&dev.join("null").to_string_lossy()), &p, None, libc::MS_BIND, None)?;
        }
    }
    for d in PROC_MASKED_DIRS {
        let p = proc_dir.join(d);
        if p.is_dir() {
            m.mount(Some("agentbox-mask"), &p, Some("tmpfs"), libc::MS_RDONLY, Some("size=4k"))?;
        }
    }
    for p in PROC_READ_ONLY {
        let p = proc_dir.join(p);
        if p.exists() {
            m.mount(Some(&p.to_string_lossy()), &p, None, libc::MS_BIND | libc::MS_REC, None)?;
            m.mount(None, &p, None, RO_BIND | libc::MS_NOEXEC, None)?;
        }
    }
    Ok(())
}

/// Builds the sandbox filesystem at `staging`, an empty tmpfs that [`new_root`] attached, and pivots into it;
/// with `image`, the root is an overlay of the image mounted inside it. Must run as root (of its user
/// namespace) in a new mount namespace.
///
/// # Errors
/// The first failing step, with the path involved.
pub fn build(m: &mut dyn Mounter, staging: &Path, s: &Setup, image: Option<&ImageSources>) -> io::Result<()> {
    let ctx = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let image_root = match (s.image_root, image) {
        (true, Some(image)) => Some(mount_image_root(m, staging, s, image)?),
        (true, None) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "an image root without its layers")),
        (false, _) => None,
    };
    let root: &Path = image_root.as_deref().unwrap_or(staging);

    // A directory of the new root, resolved inside it (see the module's docs).
    let dir = |m: &mut dyn Mounter, inside: &str, links: Links| {
        m.dir_in(root, inside, links)
            .map_err(|e| io::Error::new(e.kind(), format!("resolving {inside} in the new root: {e}")))
    };

    if let Some(etc) = &s.etc {
        let target = dir(m, "/etc", Links::InRoot)?;
        m.mkdir(&target, 0o755, None)?;
        if s.passed.contains(&PassedDir::Etc) {
            m.attach(etc, &target).map_err(ctx("attaching /etc"))?;
        } else {
            m.mount(Some(etc), &target, None, libc::MS_BIND, None).map_err(ctx("binding /etc"))?;
        }
        let target = dir(m, "/etc", Links::InRoot)?;
        m.mount(None, &target, None, RO_BIND, None).map_err(ctx("making /etc read-only"))?;
    }
    for b in &s.binds {
        let target = under(root, &b.target);
        if !b.dir {
            // Single files are copied into the root (made read-only below): two mounts saved per file.
            if let Some(parent) = target.parent() {
                m.mkdir(parent, 0o755, None)?;
            }
            m.copy(Path::new(&b.source), &target).map_err(ctx("copying a system file"))?;
            continue;
        }
        m.mkdir(&target, 0o755, None)?;
        m.mount(Some(&b.source), &target, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(ctx("binding a system path"))?;
        m.mount(None, &target, None, RO_BIND, None).map_err(ctx("making a system path read-only"))?;
    }
    for (link, target) in &s.symlinks {
        m.symlink(target, &under(root, link))?;
    }

    // Writable storage: one capped tmpfs holding home and /tmp, then the per-directory quotas.
    let owner = Some((s.uid, s.gid));
    let storage = staging.join(".storage");
    m.mkdir(&storage, 0o700, None)?;
    let opts = format!("size={},nr_inodes={},mode=0755", s.storage_bytes, s.storage_inodes);
    m.mount(Some("agentbox-storage"), &storage, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(&opts))
        .map_err(ctx("mounting the sandbox storage"))?;
    m.mkdir(&storage.join("home"), 0o750, owner)?;
    m.mkdir(&storage.join("tmp"), 0o1777, None)?;
    let home = dir(m, &s.home, Links::InRoot)?;
    m.mkdir(&home, HOME_MODE, None)?;
    let tmp = dir(m, "/tmp", Links::InRoot)?;
    m.mkdir(&tmp, TMP_MODE, None)?;
    let home_source = s.home_source.clone().unwrap_or_else(|| storage.join("home").to_string_lossy().into_owned());
    if s.passed.contains(&PassedDir::Home) {
        m.attach(&home_source, &home).map_err(ctx("attaching the home"))?;
    } else {
        m.mount(Some(&home_source), &home, None, libc::MS_BIND, None)?;
    }
    m.mount(Some(&storage.join("tmp").to_string_lossy()), &tmp, None, libc::MS_BIND, None)?;
    m.detach(&storage)?;
    m.rmdir(&storage)?;
    for q in &s.quotas {
        // Under the home or /tmp, which the sandbox's user fills: no link on the way is followed.
        let target = dir(m, &q.path, Links::Refused)?;
        m.mkdir(&target, 0o755, owner)?;
        let opts = format!("size={},nr_inodes={},mode=0755,uid={},gid={}", q.bytes, s.storage_inodes, s.uid, s.gid);
        m.mount(Some("agentbox-quota"), &target, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(&opts))
            .map_err(ctx("mounting a directory quota"))?;
    }

    // Volumes, after the home (a volume may go under it).
    for (target, mount) in s.volumes.iter().zip(image.map_or(&[][..], |i| i.volumes.as_slice())) {
        let at = dir(m, &target.path, Links::Refused)?;
        m.mkdir(&at, 0o755, None)?;
        m.attach(mount, &at).map_err(ctx("attaching a volume"))?;
    }

    // /dev and /proc, made by [`prepare`] before the setup message came, moved into place with their submounts;
    // /dev/shm is sized by the setup.
    let dev = dir(m, "/dev", Links::InRoot)?;
    m.mkdir(&dev, DEV_MODE, None)?;
    m.mount(Some(&staging.join(PREPARED_DEV).to_string_lossy()), &dev, None, libc::MS_MOVE, None)
        .map_err(ctx("moving /dev into the root"))?;
    // The tmpfs just moved there, not the directory under it.
    let dev = dir(m, "/dev", Links::InRoot)?;
    m.mkdir(&dev.join("shm"), 0o1777, None)?;
    let shm = format!("size={},mode=1777", s.shm_bytes);
    m.mount(Some("shm"), &dev.join("shm"), Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(&shm))?;
    let proc_dir = dir(m, "/proc", Links::InRoot)?;
    m.mkdir(&proc_dir, PROC_MODE, None)?;
    m.mount(Some(&staging.join(PREPARED_PROC).to_string_lossy()), &proc_dir, None, libc::MS_MOVE, None)
        .map_err(ctx("moving /proc into the root"))?;
    for prepared in [PREPARED_DEV, PREPARED_PROC] {
        m.rmdir(&staging.join(prepared))?;
    }

    for (path, content) in &s.files {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let in_dir = dir(m, parent, Links::InRoot)?;
        m.mkdir(&in_dir, ETC_MODE, None)?;
        let write_err = |e: io::Error| io::Error::new(e.kind(), format!("writing {path}: {e}"));
        if image_root.is_some() && matches!(path.as_str(), "/etc/passwd" | "/etc/group") {
            let existing = m.read_file_in(&in_dir, name, MAX_ACCOUNT_FILE).map_err(ctx("reading the image's users"))?;
            let existing = String::from_utf8_lossy(existing.as_deref().unwrap_or_default());
            m.replace_file(&in_dir, name, &merge_name_lines(&existing, content)).map_err(write_err)?;
        } else {
            m.replace_file(&in_dir, name, content).map_err(write_err)?;
        }
    }

    // A private cgroup view for per-execution process tracking, readable by root only.
    let private = dir(m, PRIVATE_DIR, Links::InRoot)?;
    m.mkdir(&private, PRIVATE_MODE, None)?;
    let cg = dir(m, CGROUP_VIEW, Links::InRoot)?;
    m.mkdir(&cg, PRIVATE_MODE, None)?;
    match s.exec_cgroups.as_str() {
        "v2" => {
            m.mount(Some("cgroup2"), &cg, Some("cgroup2"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)?;
        }
        "v1:pids" => {
            m.mount(
                Some("cgroup"),
                &cg,
                Some("cgroup"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some("pids"),
            )?;
        }
        _ => {}
    }

    m.pivot_root(root).map_err(ctx("pivoting into the sandbox root"))?;
    if s.read_only_root && image_root.is_none() {
        m.mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .map_err(ctx("making the root read-only"))?;
        m.mount(
            None,
            Path::new("/dev"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            None,
        )
        .map_err(ctx("making /dev read-only"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BindMount, Quota};

    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl Mounter for Recorder {
        fn mount(
            &mut self,
            source: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: libc::c_ulong,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.0.push(format!(
                "mount {} {} {} {flags:#x} {}",
                source.unwrap_or("-"),
                target.display(),
                fstype.unwrap_or("-"),
                data.unwrap_or("-")
            ));
            Ok(())
        }
        fn detach(&mut self, target: &Path) -> io::Result<()> {
            self.0.push(format!("detach {}", target.display()));
            Ok(())
        }
        fn mkdir(&mut self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
            self.0.push(format!("mkdir {} {mode:o} {owner:?}", path.display()));
            Ok(())
        }
        fn mknod(&mut self, path: &Path, major: u32, minor: u32) -> io::Result<()> {
            self.0.push(format!("mknod {} {major}:{minor}", path.display()));
            Ok(())
        }
        fn touch(&mut self, path: &Path) -> io::Result<()> {
            self.0.push(format!("touch {}", path.display()));
            Ok(())
        }
        fn symlink(&mut self, target: &str, link: &Path) -> io::Result<()> {
            self.0.push(format!("symlink {} -> {target}", link.display()));
            Ok(())
        }
        fn dir_in(&mut self, root: &Path, inside: &str, _links: Links) -> io::Result<PathBuf> {
            Ok(under(root, inside))
        }
        fn read_file_in(&mut self, _dir: &Path, _name: &str, _max: u64) -> io::Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn replace_file(&mut self, dir: &Path, name: &str, _content: &str) -> io::Result<()> {
            self.0.push(format!("write {}", dir.join(name).display()));
            Ok(())
        }
        fn rmdir(&mut self, path: &Path) -> io::Result<()> {
            self.0.push(format!("rmdir {}", path.display()));
            Ok(())
        }
        fn copy(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            self.0.push(format!("copy {} {}", from.display(), to.display()));
            Ok(())
        }
        fn attach(&mut self, mount: &str, target: &Path) -> io::Result<()> {
            self.0.push(format!("attach {mount} on {}", target.display()));
            Ok(())
        }
        fn pivot_root(&mut self, new_root: &Path) -> io::Result<()> {
            self.0.push(format!("pivot {}", new_root.display()));
            Ok(())
        }
    }

    fn setup() -> Setup {
        Setup {
            hostname: "sandbox".into(),
            binds: vec![
                BindMount { source: "/usr".into(), target: "/usr".into(), dir: true },
                BindMount { source: "/etc/ld.so.cache".into(), target: "/etc/ld.so.cache".into(), dir: false },
            ],
            symlinks: vec![("/bin".into(), "usr/bin".into())],
            files: vec![("/etc/passwd".into(), "user:x:1000:1000::/home/user:/bin/bash\n".into())],
            etc: None,
            storage_bytes: 1 << 30,
            storage_inodes: 1000,
            home_source: None,
            quotas: vec![Quota { path: "/tmp/small".into(), bytes: 1 << 20 }],
            shm_bytes: 1 << 26,
            read_only_root: true,
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            env: Default::default(),
            nofile: 1024,
            fsize: 1 << 30,
            drop_caps: true,
            allow_root: false,
            no_new_privs: true,
            seccomp: vec![],
            landlock: true,
            exec_cgroups: "v2".into(),
            passed: vec![],
            cgroups: vec![],
            image_root: false,
            volumes: vec![],
            user_namespace: false,
        }
    }

    fn check(s: &Setup) -> Vec<String> {
        let mut r = Recorder::default();
        prepare(&mut r, Path::new("/r")).unwrap();
        build(&mut r, Path::new("/r"), s, None).unwrap();
        r.0
    }

    fn index(log: &[String], prefix: &str) -> usize {
        log.iter().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no step {prefix:?} in {log:#?}"))
    }

    #[test]
    fn system_paths_are_bound_read_only_and_storage_is_capped() {
        let log = check(&setup());
        assert!(
            log.contains(&"copy /etc/ld.so.cache /r/etc/ld.so.cache".to_owned()),
            "single files are copied, not bound"
        );
        let bind = index(&log, "mount /usr /r/usr");
        assert!(
            log[bind + 1].starts_with("mount - /r/usr - 0x") && log[bind + 1].contains(&format!("{:#x}", RO_BIND)),
            "{log:#?}"
        );
        assert!(
            log.iter()
                .any(|l| l.contains("agentbox-storage /r/.storage tmpfs")
                    && l.contains("size=1073741824,nr_inodes=1000"))
        );
        assert!(index(&log, "detach /r/.storage") > index(&log, "mount /r/.storage/tmp /r/tmp"));
        assert!(log.contains(&"mknod /r/.dev/null 1:3".to_owned()), "device nodes are made, not bound: {log:#?}");
        assert!(!log.iter().any(|l| l.starts_with("mount /dev/")), "{log:#?}");
        assert!(
            log.iter().any(|l| l.starts_with("mount agentbox-quota /r/tmp/small tmpfs") && l.contains("size=1048576"))
        );
    }

    #[test]
    fn an_etc_template_is_one_read_only_bind() {
        let mut s = setup();
        s.binds.retain(|b| b.dir);
        s.files.clear();
        s.etc = Some("/state/etc-0123456789abcdef".into());
        let log = check(&s);
        let bind = index(&log, "mount /state/etc-0123456789abcdef /r/etc");
        assert!(log[bind + 1].starts_with("mount - /r/etc - ") && log[bind + 1].contains(&format!("{RO_BIND:#x}")));
        assert!(!log.iter().any(|l| l.contains("/r/etc/")), "nothing else touches /etc: {log:#?}");
    }

    #[test]
    fn dev_and_proc_are_prepared_before_the_setup_and_moved_into_the_root() {
        let mut r = Recorder::default();
        prepare(&mut r, Path::new("/r")).unwrap();
        let prepared = r.0.len();
        assert!(r.0.iter().all(|l| l.contains("/r/.dev") || l.contains("/r/.proc")), "{:#?}", r.0);
        build(&mut r, Path::new("/r"), &setup(), None).unwrap();
        let log = r.0;
        let dev = index(&log, &format!("mount /r/.dev /r/dev - {:#x}", libc::MS_MOVE));
        assert!(dev >= prepared);
        let shm = index(&log, "mount shm /r/dev/shm tmpfs");
        assert!(shm > dev && log[shm].contains("size=67108864"), "/dev/shm is sized by the setup: {log:#?}");
        let pivot = index(&log, "pivot /r");
        for gone in ["rmdir /r/.dev", "rmdir /r/.proc"] {
            assert!(index(&log, gone) < pivot, "{gone} before the pivot: {log:#?}");
        }
    }

    #[test]
    fn proc_is_masked_and_root_is_read_only_after_pivot() {
        let log = check(&setup());
        let pivot = index(&log, "pivot /r");
        let moved = index(&log, &format!("mount /r/.proc /r/proc - {:#x}", libc::MS_MOVE));
        assert!(index(&log, "mount proc /r/.proc proc") < moved && moved < pivot, "{log:#?}");
        let ro = format!(
            "mount - / - {:#x} -",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV
        );
        let ro_root = index(&log, &ro);
        assert!(ro_root > pivot, "{log:#?}");
        assert!(log.iter().any(|l| l.starts_with("mount cgroup2 /r/.agentbox/cg cgroup2")));
        let mut s = setup();
        s.read_only_root = false;
        assert!(!check(&s).contains(&ro));
    }
}
