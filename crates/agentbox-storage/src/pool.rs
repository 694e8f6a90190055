//! The pool: one btrfs filesystem with quota groups that every layer lives on.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::StorageError;
use crate::btrfs;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// Smallest image the pool makes.
const MIN_IMAGE_BYTES: u64 = 2 << 30;
/// Size of the image made by default (at most a quarter of the free space).
const DEFAULT_IMAGE_BYTES: u64 = 16 << 30;

/// Where and how big the pool is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The storage directory: on disk, never on a tmpfs (`/var/lib/agentbox/storage` for root).
    pub dir: PathBuf,
    /// Size of the image made when `dir` is not on btrfs, reserved on the host's disk when it is made
    /// (`fallocate`), so that a host disk filling up later can never fail the pool's writes (btrfs would turn
    /// read-only). `None`: 16 GiB, or a quarter of the free space when that is less, and at least 2 GiB.
    pub image_bytes: Option<u64>,
}

/// What the pool is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolKind {
    /// The storage directory's own btrfs filesystem.
    Native,
    /// A sparse btrfs image in the storage directory, loop-mounted by the pool.
    Image {
        /// The image file.
        image: PathBuf,
    },
}

/// A btrfs filesystem with quota groups enabled, holding the layers.
#[derive(Debug)]
pub struct Pool {
    pub(crate) layers: PathBuf,
    /// The layers directory, held: subvolumes are made and deleted relative to it.
    pub(crate) layers_fd: std::os::fd::OwnedFd,
    /// Where read-only snapshots live, and the directory held.
    pub(crate) snapshots: PathBuf,
    pub(crate) snapshots_fd: std::os::fd::OwnedFd,
    /// Where the files of stopped sandboxes are kept, and the directory held.
    pub(crate) stopped: PathBuf,
    pub(crate) stopped_fd: std::os::fd::OwnedFd,
    pub(crate) volumes: PathBuf,
    pub(crate) volumes_fd: std::os::fd::OwnedFd,
    /// `/sys/fs/btrfs/<fsid>/qgroups`, where usage is read.
    pub(crate) qgroups: PathBuf,
    kind: PoolKind,
}

/// Makes (if missing) and opens a 0700 directory of the pool.
fn private_dir(path: &Path) -> Result<std::os::fd::OwnedFd, StorageError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
        .map_err(StorageError::io("creating a directory of the pool", path))?;
    let dir = fs::File::open(path).map_err(StorageError::io("opening a directory of the pool", path))?;
    Ok(std::os::fd::OwnedFd::from(dir))
}

/// When `path` was made (or last changed, where the filesystem has no birth time), in milliseconds since the
/// Unix epoch; 0 when unknown.
pub(crate) fn created_ms(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

impl Pool {
    /// What the subvolume `id` references, as its quota group counts it (`what` names it in errors).
    pub(crate) fn referenced(&self, id: u64, what: &'static str) -> Result<crate::Usage, StorageError> {
        let path = self.qgroups.join(format!("0_{id}")).join("referenced");
        let text = fs::read_to_string(&path).map_err(StorageError::io(what, &path))?;
        Ok(crate::Usage { bytes: text.trim().parse().unwrap_or(0) })
    }

    /// Finds or makes the pool of `config.dir`: the directory's own btrfs, else a loop-mounted image (made with
    /// `mkfs.btrfs` the first time, mounted once per boot), with quota groups enabled. Serialized between
    /// processes by a lock file.
    ///
    /// # Errors
    /// `mkfs.btrfs` or `btrfs` missing, mounting refused (not root), or quotas that can't be enabled.
    pub fn open(config: &PoolConfig) -> Result<Self, StorageError> {
        // 0711: sandbox inits, root of their own user namespaces and so not the host's root, must reach their
        // layers by path to mount them; nobody can list the directory, and the image in it is 0600.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&config.dir)
            .map_err(StorageError::io("creating the storage directory", &config.dir))?;
        fs::set_permissions(&config.dir, fs::Permissions::from_mode(0o711))
            .map_err(StorageError::io("setting the storage directory's mode", &config.dir))?;
        let lock = fs::File::create(config.dir.join(".lock"))
            .map_err(StorageError::io("creating the storage lock", config.dir.join(".lock")))?;
        // SAFETY: flock on a descriptor we own; released when it closes at the end of this function.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == -1 {
            return Err(StorageError::io("locking the storage directory", &config.dir)(io::Error::last_os_error()));
        }
        let (root, kind) = if fs_magic(&config.dir)? == BTRFS_SUPER_MAGIC {
            (config.dir.clone(), PoolKind::Native)
        } else {
            let mount = config.dir.join("pool");
            let image = config.dir.join("pool.img");
            let mount_table = || {
                fs::read_to_string("/proc/self/mountinfo")
                    .map_err(StorageError::io("reading the mount table", "/proc/self/mountinfo"))
            };
            let mut mounts = mount_table()?;
            if mounted_read_only(&mounts, &mount) {
                // btrfs turns read-only after an I/O error (the host's disk was full when the image was still
                // sparse, say): unmount it (sandboxes using it keep their view) and mount it again, which
                // replays the last committed state.
                tracing::warn!(mount = %mount.display(), "the storage pool is read-only after an error; mounting it again");
                let c = std::ffi::CString::new(mount.as_os_str().as_bytes())
                    .map_err(|_| StorageError::InvalidName(mount.display().to_string()))?;
                // SAFETY: umount2 of a path we built, detaching lazily.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == -1 {
                    return Err(StorageError::io("unmounting a read-only pool", &mount)(io::Error::last_os_error()));
                }
                mounts = mount_table()?;
            }
            if !mounted_at(&mounts, &mount, "btrfs") {
                if !image.exists() {
                    make_image(&image, config)?;
                }
                fs::DirBuilder::new()
                    .mode(0o711)
                    .create(&mount)
                    .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                    .map_err(StorageError::io("creating the pool mount point", &mount))?;
                run(
                    Command::new("mount")
                        .args(["-t", "btrfs", "-o", "loop,nosuid,nodev,noatime,commit=5"])
                        .arg(&image)
                        .arg(&mount),
                    "mount",
                    &image,
                    "util-linux",
                )?;
            }
            // Images made before it was created 0600 are tightened too: the directory is traversable.
            fs::set_permissions(&image, fs::Permissions::from_mode(0o600))
                .map_err(StorageError::io("setting the pool image's mode", &image))?;
            (mount, PoolKind::Image { image })
        };
        let layers = root.join("layers");
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&layers)
            .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(StorageError::io("creating the layers directory", &layers))?;
        fs::set_permissions(&layers, fs::Permissions::from_mode(0o711))
            .map_err(StorageError::io("setting the layers directory's mode", &layers))?;
        let snapshots = root.join("snapshots");
        let snapshots_fd = private_dir(&snapshots)?;
        let stopped = root.join("stopped");
        let stopped_fd = private_dir(&stopped)?;
        let volumes = root.join("volumes");
        let volumes_fd = private_dir(&volumes)?;
        let layers_fd = fs::File::open(&layers).map_err(StorageError::io("opening the layers directory", &layers))?;
        let layers_fd = std::os::fd::OwnedFd::from(layers_fd);
        let fsid = btrfs::fsid(std::os::fd::AsFd::as_fd(&layers_fd))
            .map_err(StorageError::io("reading the pool's filesystem id", &layers))?;
        let qgroups = PathBuf::from(format!("/sys/fs/btrfs/{fsid}/qgroups"));
        if !qgroups.exists() {
            // Quota groups then account every subvolume made from here on.
            run(Command::new("btrfs").args(["quota", "enable"]).arg(&root), "btrfs", &root, "btrfs-progs")?;
        }
        drop(lock);
        Ok(Self { layers, layers_fd, snapshots, snapshots_fd, stopped, stopped_fd, volumes, volumes_fd, qgroups, kind })
    }

    /// What the pool is made of.
    #[must_use]
    pub fn kind(&self) -> &PoolKind {
        &self.kind
    }

    /// The directory holding the layers.
    #[must_use]
    pub fn layers_dir(&self) -> &Path {
        &self.layers
    }
}

fn make_image(image: &Path, config: &PoolConfig) -> Result<(), StorageError> {
    if !Path::new("/usr/sbin/mkfs.btrfs").exists()
        && !Path::new("/sbin/mkfs.btrfs").exists()
        && !Path::new("/usr/bin/mkfs.btrfs").exists()
    {
        return Err(StorageError::MissingProgram { program: "mkfs.btrfs", install: "apt-get install btrfs-progs" });
    }
    let size = match config.image_bytes {
        Some(n) => n.max(MIN_IMAGE_BYTES),
        None => (free_bytes(&config.dir)? / 4).clamp(MIN_IMAGE_BYTES, DEFAULT_IMAGE_BYTES.max(MIN_IMAGE_BYTES)),
    };
    let partial = image.with_extension("img.partial");
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(StorageError::io("creating the pool image", &partial))?;
    let len = libc::off_t::try_from(size).unwrap_or(libc::off_t::MAX);
    // SAFETY: fallocate on a file we own, from 0 to its size.
    if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, len) } == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            let _ = fs::remove_file(&partial);
            return Err(StorageError::io("reserving the pool image's space", &partial)(e));
        }
        // A filesystem without fallocate: a sparse image, which a full host disk can turn read-only.
        tracing::warn!(image = %partial.display(), "cannot reserve the pool image's space; it is sparse");
        f.set_len(size).map_err(StorageError::io("sizing the pool image", &partial))?;
    }
    drop(f);
    if let Err(e) =
        run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&partial), "mkfs.btrfs", &partial, "btrfs-progs")
    {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    fs::rename(&partial, image).map_err(StorageError::io("placing the pool image", image))?;
    tracing::info!(image = %image.display(), size, "made the sandbox storage pool (a sparse btrfs image)");
    Ok(())
}

fn run(cmd: &mut Command, program: &'static str, path: &Path, package: &'static str) -> Result<(), StorageError> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            StorageError::MissingProgram { program, install: package }
        } else {
            StorageError::io("running a storage program", path)(e)
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StorageError::Program {
            program,
            path: path.to_owned(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[allow(clippy::unnecessary_cast, clippy::cast_lossless)]
fn fs_magic(path: &Path) -> Result<i64, StorageError> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| StorageError::InvalidName(path.display().to_string()))?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs of a C string path into a struct we own.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == -1 {
        return Err(StorageError::io("reading the storage filesystem", path)(io::Error::last_os_error()));
    }
    Ok(st.f_type as i64)
}

fn free_bytes(path: &Path) -> Result<u64, StorageError> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| StorageError::InvalidName(path.display().to_string()))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs of a C string path into a struct we own.
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut st) } == -1 {
        return Err(StorageError::io("reading free space", path)(io::Error::last_os_error()));
    }
    Ok(st.f_bavail * st.f_frsize)
}

/// Decodes the octal escapes of a mountinfo field.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, fstype, source) of each line.
fn entries(mounts: &str) -> impl Iterator<Item = (String, &str, &str)> {
    mounts.lines().filter_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = unescape(left.split(' ').nth(4)?);
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let source = r.next()?;
        Some((mount_point, fstype, source))
    })
}

/// Whether the btrfs mounted at `mount` is read-only (its mount options, field 6, start with `ro`).
fn mounted_read_only(mounts: &str, mount: &Path) -> bool {
    let want = mount.to_string_lossy();
    mounts.lines().any(|l| {
        let Some((left, right)) = l.split_once(" - ") else { return false };
        let fields: Vec<&str> = left.split(' ').collect();
        right.starts_with("btrfs ")
            && fields.get(4).is_some_and(|mp| unescape(mp) == want)
            && fields.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    })
}

/// Whether a filesystem of type `fstype` is mounted exactly at `mount`.
fn mounted_at(mounts: &str, mount: &Path, fstype: &str) -> bool {
    let want = mount.to_string_lossy();
    entries(mounts).any(|(mp, t, _)| t == fstype && mp == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
90 22 7:0 / /var/lib/agentbox/storage/pool rw,nosuid,nodev,noatime shared:50 - btrfs /dev/loop0 rw
91 22 7:1 / /srv/with\\040space rw - btrfs /dev/loop1 rw
";

    #[test]
    fn finds_the_pool_mount() {
        assert!(mounted_at(MOUNTINFO, Path::new("/var/lib/agentbox/storage/pool"), "btrfs"));
        assert!(!mounted_at(MOUNTINFO, Path::new("/var/lib/agentbox/storage"), "btrfs"));
        assert!(mounted_at(MOUNTINFO, Path::new("/srv/with space"), "btrfs"));
        assert!(!mounted_at(MOUNTINFO, Path::new("/srv/with space"), "xfs"));
        assert!(!mounted_read_only(MOUNTINFO, Path::new("/var/lib/agentbox/storage/pool")));
        let ro = MOUNTINFO.replace("/storage/pool rw,nosuid", "/storage/pool ro,nosuid");
        assert!(mounted_read_only(&ro, Path::new("/var/lib/agentbox/storage/pool")));
    }
}
