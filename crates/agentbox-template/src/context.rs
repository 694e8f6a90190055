//! `COPY` from the build context: which files go where, their hash (for the cache key), and the layer tar.
//!
//! Sources are paths inside the context directory: no `..`, no wildcards, and no symlink on the way to them (a
//! source that is itself a symlink is copied as a link, never followed). A directory's contents are copied
//! recursively, links as links.

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::TemplateError;

/// One entry to copy.
#[derive(Debug)]
pub(crate) struct Item {
    /// Where it is on the host.
    host: PathBuf,
    /// Where it goes in the image, without the leading `/`.
    image: String,
}

/// The entries of a `COPY`, in order, parents first.
#[derive(Debug)]
pub(crate) struct Copy {
    items: Vec<Item>,
    /// The image's directories above the destination, made if missing.
    parents: Vec<String>,
    uid: u64,
    gid: u64,
}

fn bad(path: &str, reason: impl Into<String>) -> TemplateError {
    TemplateError::Context { path: path.to_owned(), reason: reason.into() }
}

/// Owner ids of `--chown=USER[:GROUP]`: `root` is 0, `user` (the sandbox's user) 1000, or numbers.
fn owner(chown: Option<&str>) -> Result<(u64, u64), TemplateError> {
    let Some(spec) = chown else { return Ok((0, 0)) };
    let id = |s: &str| match s {
        "root" => Ok(0),
        "user" => Ok(1000),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n < 65536)
            .ok_or_else(|| TemplateError::Dockerfile(format!("--chown={spec}: use root, user or ids below 65536"))),
    };
    match spec.split_once(':') {
        Some((u, g)) => Ok((id(u)?, id(g)?)),
        None => {
            let u = id(spec)?;
            Ok((u, u))
        }
    }
}

/// Joins an image path onto `base` (the working directory for a relative one) and normalizes it.
pub(crate) fn image_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_owned() } else { format!("{}/{path}", base.trim_end_matches('/')) };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl Copy {
    /// Resolves a `COPY` of `sources` (in `context`) to `dest` (relative to `workdir`).
    pub(crate) fn plan(
        context: &Path,
        sources: &[String],
        dest: &str,
        workdir: &str,
        chown: Option<&str>,
    ) -> Result<Self, TemplateError> {
        let (uid, gid) = owner(chown)?;
        let dest_is_dir = dest.ends_with('/') || sources.len() > 1;
        let dest = image_path(workdir, dest);
        let mut items = Vec::new();
        for src in sources {
            if src.contains(['*', '?', '[']) {
                return Err(bad(src, "wildcards are not supported; name the files or a directory"));
            }
            let rel = Path::new(src.trim_start_matches('/'));
            let mut host = context.to_path_buf();
            for c in rel.components() {
                match c {
                    Component::Normal(n) => {
                        // No symlink on the way: only the source itself may be one (copied as a link).
                        if std::fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
                            return Err(bad(src, "a symlink leads to it; copy the directory it points to instead"));
                        }
                        host.push(n);
                    }
                    Component::CurDir => {}
                    _ => return Err(bad(src, "it leaves the build context")),
                }
            }
            let meta = std::fs::symlink_metadata(&host)
                .map_err(|e| bad(src, format!("not found in the build context {}: {e}", context.display())))?;
            if meta.is_dir() {
                walk(&host, &dest, &mut items).map_err(|e| bad(src, e.to_string()))?;
            } else {
                let name = host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let image = if dest_is_dir { format!("{dest}/{name}") } else { dest.clone() };
                items.push(Item { host, image });
            }
        }
        let mut parents = Vec::new();
        let mut acc = String::new();
        for part in dest.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            parents.push(acc.clone());
        }
        // The destination itself is a parent only when files go into it.
        if !dest_is_dir && items.len() == 1 && items[0].image == dest {
            parents.pop();
        }
        Ok(Self { items, parents, uid, gid })
    }

    /// A hash of what the copy puts in the image (paths, kinds, modes, owners and contents; not times).
    pub(crate) fn hash(&self) -> Result<String, TemplateError> {
        let mut h = Sha256::new();
        h.update(format!("owner {} {}\n", self.uid, self.gid));
        for item in &self.items {
            let meta = std::fs::symlink_metadata(&item.host).map_err(TemplateError::io("reading the build context"))?;
            h.update(format!("{}\0{:o}\0", item.image, meta.mode()));
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&item.host).map_err(TemplateError::io("reading the build context"))?;
                h.update(target.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                let mut f = std::fs::File::open(&item.host).map_err(TemplateError::io("reading the build context"))?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f.read(&mut buf).map_err(TemplateError::io("reading the build context"))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
            h.update(b"\n");
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Writes the copy as an uncompressed layer tar.
    pub(crate) fn write_layer<W: Write>(&self, out: W) -> Result<(), TemplateError> {
        let io = TemplateError::io("writing a COPY layer");
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        let dir_header = |mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            h
        };
        for p in &self.parents {
            let mut h = dir_header(0o755);
            tar.append_data(&mut h, p, io::empty()).map_err(TemplateError::io("writing a COPY layer"))?;
        }
        for item in &self.items {
            let meta = std::fs::symlink_metadata(&item.host).map_err(TemplateError::io("reading the build context"))?;
            let mut h = tar::Header::new_ustar();
            h.set_mode(meta.mode() & 0o7777);
            h.set_uid(self.uid);
            h.set_gid(self.gid);
            h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&item.host).map_err(TemplateError::io("reading the build context"))?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &item.image, &target).map_err(TemplateError::io("writing a COPY layer"))?;
            } else if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &item.image, io::empty()).map_err(TemplateError::io("writing a COPY layer"))?;
            } else if ft.is_file() {
                let f = std::fs::File::open(&item.host).map_err(TemplateError::io("reading the build context"))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                tar.append_data(&mut h, &item.image, f.take(meta.len()))
                    .map_err(TemplateError::io("writing a COPY layer"))?;
            }
        }
        tar.into_inner().and_then(|mut w| w.flush()).map_err(io)
    }
}

/// Adds `dir`'s contents, recursively, under `base` in the image.
fn walk(dir: &Path, base: &str, items: &mut Vec<Item>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let image = if base.is_empty() { name } else { format!("{base}/{name}") };
        let ft = e.file_type()?;
        items.push(Item { host: e.path(), image: image.clone() });
        if ft.is_dir() {
            walk(&e.path(), &image, items)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_join_the_workdir_and_stay_inside_the_root() {
        assert_eq!(image_path("/opt/app", "x/y"), "opt/app/x/y");
        assert_eq!(image_path("/opt/app", "/etc/z"), "etc/z");
        assert_eq!(image_path("/", "../../etc/passwd"), "etc/passwd");
        assert_eq!(image_path("/a", "./"), "a");
    }

    #[test]
    fn sources_outside_the_context_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok"), "1").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc-link")).unwrap();
        for src in ["../x", "etc-link/passwd", "*.txt", "missing"] {
            let r = Copy::plan(dir.path(), &[src.to_owned()], "/d/", "/", None);
            assert!(matches!(r, Err(TemplateError::Context { .. })), "{src}: {r:?}");
        }
        let plan = Copy::plan(dir.path(), &["ok".into(), "etc-link".into()], "/d/", "/", Some("user")).unwrap();
        let images: Vec<&str> = plan.items.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(images, ["d/ok", "d/etc-link"]);
        assert_eq!((plan.uid, plan.gid), (1000, 1000));
        assert_eq!(plan.parents, ["d"]);
        let single = Copy::plan(dir.path(), &["ok".into()], "/usr/local/bin/tool", "/", None).unwrap();
        assert_eq!(single.parents, ["usr", "usr/local", "usr/local/bin"]);
        assert_eq!(single.items[0].image, "usr/local/bin/tool");
    }
}
