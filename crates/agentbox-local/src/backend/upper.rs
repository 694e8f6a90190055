//! An image root's first entries, written by the host into a new sandbox's empty upper layer.
//!
//! The init of an image sandbox generates `/etc/passwd`, `/etc/hosts` and the rest, and makes the directories
//! it mounts on (`/proc`, the home, `/.agentbox/cg`) with the modes it needs ([`agent::fs::build`]). Through the
//! overlay each of those is a copy-up (the file's directory, then the file, in the overlay's work directory):
//! half a millisecond of every create. For a layer made for this create, which no sandbox has seen yet, the
//! host writes the same entries straight into the upper directory, in the storage task that runs while the
//! zygote clones the init. The init then finds them in place: the generated files it was given are dropped
//! from its setup, and its directories already have their modes.
//!
//! What to write is planned once per image, generated files and home, from the image's merged root as the
//! store holds it ([`agentbox_image::MergedRoot`]), and mirrors what the init would make: the image's
//! `/etc/passwd` and `/etc/group` merged with the sandbox's accounts, each directory on the way with the
//! image's owner and mode. Anything unusual in the image on those paths (a symbolic link, a non-directory on
//! the way, an owner outside the sandbox's ids) is left out of the plan, and the init handles it as before. A
//! started or forked sandbox's layer holds its own files: the host never writes there.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use agentbox_image::{EntryMeta, MergedEntry, MergedRoot};
use agentbox_storage::{IdRange, RANGE_SIZE};
use rustix::fs::{Gid, Mode, OFlags, ResolveFlags, Uid};

use crate::agent::fs::{
    CGROUP_VIEW, DEV_MODE, ETC_MODE, GENERATED_FILE_MODE, HOME_MODE, MAX_ACCOUNT_FILE, PRIVATE_DIR, PRIVATE_MODE,
    PROC_MODE, TMP_MODE, merge_name_lines,
};

/// What the host writes into a new image root's upper layer, parents first.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct UpperPlan {
    steps: Vec<Step>,
    /// The generated files (paths as in `Setup::files`) the plan writes, which the init is then not given.
    pub seeded: HashSet<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A directory, its path below the root (`etc`, `home/user`), with inside ids.
    Dir { path: String, mode: u32, uid: u32, gid: u32 },
    /// A root-owned file with the generated contents.
    File { path: String, content: String },
}

/// Root's ids inside the sandbox.
const ROOT: EntryMeta = EntryMeta { mode: 0, uid: 0, gid: 0 };

impl UpperPlan {
    /// Plans the entries for an image whose merged root is `root`, given the generated `files` and the home.
    pub fn new(root: &MergedRoot, files: &[(String, String)], home: &str) -> Self {
        let mut plan = Self::default();
        let mut planned: HashSet<String> = HashSet::new();

        // The generated files in /etc; /etc itself gets the mode the init gives it, and keeps the image's owner.
        let etc = match root.entry(&["etc"]) {
            MergedEntry::Dir(meta) if mappable(meta) => Some(meta),
            MergedEntry::Absent => Some(ROOT),
            _ => None,
        };
        if let Some(etc) = etc {
            for (path, generated) in files {
                let Some(name) = path.strip_prefix("/etc/").filter(|n| !n.is_empty() && !n.contains('/')) else {
                    continue;
                };
                let content = match root.entry(&["etc", name]) {
                    MergedEntry::Absent => generated.clone(),
                    MergedEntry::File(_) if matches!(name, "passwd" | "group") => {
                        let existing = root.file(&["etc", name], MAX_ACCOUNT_FILE).unwrap_or_default();
                        merge_name_lines(&existing, generated)
                    }
                    MergedEntry::File(_) => generated.clone(),
                    MergedEntry::Dir(_) | MergedEntry::Other => continue,
                };
                plan.dir(&mut planned, "etc", ETC_MODE, etc);
                plan.steps.push(Step::File { path: format!("etc/{name}"), content });
                plan.seeded.insert(path.clone());
            }
        }

        // The directories the init mounts on, with their modes; the home's parents as the image has them.
        let home_parts: Vec<&str> = home.split('/').filter(|p| !p.is_empty()).collect();
        if let Some((_, parents)) = home_parts.split_last() {
            plan.mount_point(root, &mut planned, &home_parts, parents, HOME_MODE);
        }
        for (path, mode) in [("tmp", TMP_MODE), ("dev", DEV_MODE), ("proc", PROC_MODE)] {
            plan.mount_point(root, &mut planned, &[path], &[], mode);
        }
        // The init's private directory, when the image has nothing there.
        let private = PRIVATE_DIR.trim_start_matches('/');
        if root.entry(&[private]) == MergedEntry::Absent {
            plan.dir(&mut planned, private, PRIVATE_MODE, ROOT);
            plan.dir(&mut planned, CGROUP_VIEW.trim_start_matches('/'), PRIVATE_MODE, ROOT);
        }
        plan
    }

    /// Plans the directory `parts` that something is mounted on, with `mode`, after its `parents` as the image
    /// has them (made root's, mode 0755, where it has none). Nothing when the image already has it with that
    /// mode (the init changes nothing then), or when anything on the way is not a plain directory.
    fn mount_point(
        &mut self,
        root: &MergedRoot,
        planned: &mut HashSet<String>,
        parts: &[&str],
        parents: &[&str],
        mode: u32,
    ) {
        let mut steps = Vec::new();
        for n in 1..=parents.len() {
            match root.entry(&parents[..n]) {
                MergedEntry::Dir(meta) if mappable(meta) => steps.push((parents[..n].join("/"), meta.mode, meta)),
                MergedEntry::Absent => steps.push((parents[..n].join("/"), 0o755, ROOT)),
                _ => return,
            }
        }
        let owner = match root.entry(parts) {
            MergedEntry::Dir(meta) if meta.mode == mode => return,
            MergedEntry::Dir(meta) if mappable(meta) => meta,
            MergedEntry::Absent => ROOT,
            _ => return,
        };
        steps.push((parts.join("/"), mode, owner));
        for (path, mode, owner) in steps {
            self.dir(planned, &path, mode, owner);
        }
    }

    fn dir(&mut self, planned: &mut HashSet<String>, path: &str, mode: u32, owner: EntryMeta) {
        if planned.insert(path.to_owned()) {
            self.steps.push(Step::Dir { path: path.to_owned(), mode, uid: owner.uid, gid: owner.gid });
        }
    }

    /// Writes the plan into `upper`, the empty upper directory of a layer made for this create, owned as the
    /// sandbox's range `ids` maps the inside ids. Blocking.
    ///
    /// # Errors
    /// The first entry that can't be written.
    pub fn write(&self, upper: &Path, ids: IdRange) -> io::Result<()> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rustix::fs::open(upper, flags, Mode::empty())?;
        let host = |uid: u32, gid: u32| match (ids.host(uid), ids.host(gid)) {
            (Some(u), Some(g)) => Ok((Uid::from_raw(u), Gid::from_raw(g))),
            _ => Err(io::Error::other(format!("ids {uid}:{gid} are outside the sandbox's range"))),
        };
        for step in &self.steps {
            let path = match step {
                Step::Dir { path, .. } | Step::File { path, .. } => path,
            };
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let in_dir = beneath(&root, parent)?;
            let context = |e: rustix::io::Errno| {
                let e = io::Error::from(e);
                io::Error::new(e.kind(), format!("writing {path} into the upper layer {}: {e}", upper.display()))
            };
            match step {
                Step::Dir { mode, uid, gid, .. } => {
                    rustix::fs::mkdirat(&in_dir, name, Mode::from_raw_mode(0o700)).map_err(context)?;
                    let dir = rustix::fs::openat(
                        &in_dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(context)?;
                    let (u, g) = host(*uid, *gid)?;
                    rustix::fs::fchown(&dir, Some(u), Some(g)).map_err(context)?;
                    rustix::fs::fchmod(&dir, Mode::from_raw_mode(*mode)).map_err(context)?;
                }
                Step::File { content, .. } => {
                    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let file = rustix::fs::openat(&in_dir, name, flags, Mode::from_raw_mode(0o600)).map_err(context)?;
                    let filled = host(0, 0).and_then(|(u, g)| {
                        rustix::fs::fchown(&file, Some(u), Some(g)).map_err(context)?;
                        rustix::fs::fchmod(&file, Mode::from_raw_mode(GENERATED_FILE_MODE)).map_err(context)?;
                        std::fs::File::from(file).write_all(content.as_bytes()).map_err(|e| {
                            io::Error::new(
                                e.kind(),
                                format!("writing {path} into the upper layer {}: {e}", upper.display()),
                            )
                        })
                    });
                    if filled.is_err() {
                        // Not left half-written: the init then merges the image's own file, not a part of ours.
                        let _ = rustix::fs::unlinkat(&in_dir, name, rustix::fs::AtFlags::empty());
                    }
                    filled?;
                }
            }
        }
        Ok(())
    }
}

/// An owner the sandbox's user namespace maps (an id range holds [`RANGE_SIZE`] ids).
fn mappable(meta: EntryMeta) -> bool {
    meta.uid < RANGE_SIZE && meta.gid < RANGE_SIZE
}

/// The directory `path` below `root` (`""` is the root), following no symbolic link.
fn beneath(root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { "." } else { path };
    rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{path} in a new upper layer: {e}"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agentbox_image::LayerManifest;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn files() -> Vec<(String, String)> {
        [
            ("/etc/passwd", "root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:1000:1000::/home/user:/bin/bash\n"),
            ("/etc/group", "root:x:0:\nuser:x:1000:\n"),
            ("/etc/hostname", "sandbox\n"),
            ("/etc/hosts", "127.0.0.1 localhost\n"),
        ]
        .map(|(p, c)| (p.to_owned(), c.to_owned()))
        .to_vec()
    }

    /// Makes the directory `path` with exactly `mode`.
    fn dir(path: &Path, mode: u32) {
        std::fs::DirBuilder::new().recursive(true).create(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// An image root as Debian's: /etc with accounts, /home, /tmp 1777, /dev, and /proc 0755.
    fn debian_like(at: &Path) -> MergedRoot {
        dir(&at.join("etc"), 0o755);
        std::fs::write(at.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/false\n").unwrap();
        std::fs::write(at.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(at.join("etc/hostname"), "buildkitsandbox\n").unwrap();
        dir(&at.join("home"), 0o755);
        dir(&at.join("tmp"), 0o1777);
        dir(&at.join("dev"), 0o755);
        dir(&at.join("proc"), 0o755);
        MergedRoot::from_layers(vec![(at.to_owned(), LayerManifest::default())])
    }

    #[test]
    fn a_plan_mirrors_what_the_init_would_make() {
        let t = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(t.path()).unwrap();
        let plan = UpperPlan::new(&debian_like(t.path()), &files(), "/home/user");
        let image_dir = |path: &str, mode| Step::Dir { path: path.into(), mode, uid: me.uid(), gid: me.gid() };
        let root_dir = |path: &str, mode| Step::Dir { path: path.into(), mode, uid: 0, gid: 0 };
        let file = |path: &str, content: &str| Step::File { path: path.into(), content: content.into() };
        assert_eq!(
            plan.steps,
            [
                image_dir("etc", 0o755),
                // The image's accounts stay, the sandbox's are added.
                file(
                    "etc/passwd",
                    "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/false\nuser:x:1000:1000::/home/user:/bin/bash\n"
                ),
                file("etc/group", "root:x:0:\nuser:x:1000:\n"),
                file("etc/hostname", "sandbox\n"),
                file("etc/hosts", "127.0.0.1 localhost\n"),
                image_dir("home", 0o755),
                root_dir("home/user", 0o755),
                // /tmp and /dev already have their modes; /proc does not.
                image_dir("proc", 0o555),
                root_dir(".agentbox", 0o700),
                root_dir(".agentbox/cg", 0o700),
            ]
        );
        assert_eq!(plan.seeded.len(), 4);
    }

    #[test]
    fn anything_unusual_in_the_image_is_left_to_the_init() {
        let t = tempfile::tempdir().unwrap();
        let root = debian_like(t.path());
        // /etc/hosts a link, /home a link, /proc a file, and a /.agentbox of the image's.
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("etc/hosts")).unwrap();
        std::fs::remove_dir(t.path().join("home")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("home")).unwrap();
        std::fs::remove_dir(t.path().join("proc")).unwrap();
        std::fs::write(t.path().join("proc"), "").unwrap();
        dir(&t.path().join(".agentbox"), 0o755);
        let plan = UpperPlan::new(&root, &files(), "/home/user");
        let paths: Vec<&str> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Dir { path, .. } | Step::File { path, .. } => path.as_str(),
            })
            .collect();
        assert_eq!(paths, ["etc", "etc/passwd", "etc/group", "etc/hostname"]);
        assert!(!plan.seeded.contains("/etc/hosts"));

        // An /etc that is a link: no generated file is written by the host.
        std::fs::remove_dir_all(t.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("etc")).unwrap();
        assert!(UpperPlan::new(&root, &files(), "/home/user").seeded.is_empty());
    }

    #[test]
    fn a_plan_is_written_with_its_modes_and_the_sandboxs_ids() {
        // Files given to another range's ids: root's privilege.
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let image = t.path().join("image");
        let plan = UpperPlan::new(&debian_like(&image), &files(), "/home/user");
        let upper = t.path().join("upper");
        dir(&upper, 0o755);
        let ids = IdRange { first: 200_000 };
        plan.write(&upper, ids).unwrap();
        let stat = |p: &str| {
            let m = std::fs::symlink_metadata(upper.join(p)).unwrap();
            (m.mode() & 0o7777, m.uid(), m.gid())
        };
        for (path, mode) in [("etc", 0o755), ("etc/passwd", 0o644), ("proc", 0o555), (".agentbox/cg", 0o700)] {
            assert_eq!(stat(path), (mode, 200_000, 200_000), "{path}");
        }
        assert_eq!(std::fs::read_to_string(upper.join("etc/hostname")).unwrap(), "sandbox\n");
        // A second write finds the entries there: it fails rather than write through anything.
        assert!(plan.write(&upper, ids).is_err());
        // An id the range can't map is refused.
        let far = UpperPlan {
            steps: vec![Step::Dir { path: "x".into(), mode: 0o755, uid: RANGE_SIZE, gid: 0 }],
            ..UpperPlan::default()
        };
        assert!(far.write(&upper, ids).is_err());
    }
}
