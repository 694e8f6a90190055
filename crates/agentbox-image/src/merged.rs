//! An image's merged root as overlayfs shows it, looked up on the host in the store's unpacked layers: what is at
//! a path, and the contents of small regular files.
//!
//! The layers came from untrusted input. A lookup follows no symbolic link (one on the way makes the entry
//! [`MergedEntry::Other`]); an entry comes from the top-most layer that has it, unless a whiteout or an opaque
//! directory in a layer above hides it; a file is read only when it is a regular file, and only up to a cap.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::store::{ImageRecord, Store, StoreError};
use crate::unpack::{LayerManifest, rootfs_of};

/// One image's layers, their manifests read once, for lookups.
pub struct MergedRoot {
    /// Top first: each layer's unpacked root and its manifest.
    layers: Vec<(PathBuf, LayerManifest)>,
}

/// The owner and permission bits of an entry, as its layer holds them (the ids the image gave it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// The permission bits, with set-id and sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The owner's uid inside the image.
    pub uid: u32,
    /// The owner's gid inside the image.
    pub gid: u32,
}

/// What an image's merged root has at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergedEntry {
    /// Nothing: absent from every layer, or hidden by a whiteout or an opaque directory above.
    Absent,
    /// A directory (its attributes are the top-most layer's, as overlayfs shows a merged directory's).
    Dir(EntryMeta),
    /// A regular file.
    File(EntryMeta),
    /// Anything else (a symbolic link, a whiteout device, a FIFO), or a path that passes through something other
    /// than a directory on the way.
    Other,
}

impl Store {
    /// `image`'s layers, ready for lookups in its merged root.
    ///
    /// # Errors
    /// When a layer's manifest can't be read.
    pub fn merged_root(&self, image: &ImageRecord) -> Result<MergedRoot, StoreError> {
        let mut layers = Vec::with_capacity(image.layers.len());
        for layer in image.layers.iter().rev() {
            layers.push((rootfs_of(&self.layer_dir(&layer.diff_id)), self.layer_manifest(&layer.diff_id)?));
        }
        Ok(MergedRoot { layers })
    }
}

impl MergedRoot {
    /// Lookups in `layers`, top first: each one's unpacked root and manifest (what [`Store::merged_root`] reads).
    #[must_use]
    pub fn from_layers(layers: Vec<(PathBuf, LayerManifest)>) -> Self {
        Self { layers }
    }

    /// What is at `path` (components below the root, none empty, `.` or `..`).
    #[must_use]
    pub fn entry(&self, path: &[&str]) -> MergedEntry {
        self.find(path).map_or(MergedEntry::Absent, |(_, entry)| entry)
    }

    /// The regular file at `path`, at most `max` bytes of it (invalid UTF-8 replaced); `None` when there is no
    /// regular file there or it can't be read.
    #[must_use]
    pub fn file(&self, path: &[&str], max: u64) -> Option<String> {
        match self.find(path)? {
            (at, MergedEntry::File(_)) => read_capped(&at, max),
            _ => None,
        }
    }

    /// The entry at `path` and where it is on the host; `None` when absent or hidden.
    fn find(&self, path: &[&str]) -> Option<(PathBuf, MergedEntry)> {
        if path.is_empty() || path.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('/')) {
            return Some((PathBuf::new(), MergedEntry::Other));
        }
        for (root, manifest) in &self.layers {
            let mut at = root.clone();
            // An opaque directory on the way, in this layer, hides the layers below.
            let mut opaque = false;
            for (i, part) in path.iter().enumerate() {
                let shown = path[..=i].join("/");
                if manifest.whiteouts.contains(&shown) {
                    return None;
                }
                at.push(part);
                let Ok(meta) = std::fs::symlink_metadata(&at) else { break };
                let kind = meta.file_type();
                if kind.is_char_device() && meta.rdev() == 0 {
                    return None; // a whiteout
                }
                let attrs = EntryMeta { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() };
                if i + 1 == path.len() {
                    let entry = if kind.is_dir() {
                        MergedEntry::Dir(attrs)
                    } else if kind.is_file() {
                        MergedEntry::File(attrs)
                    } else {
                        MergedEntry::Other
                    };
                    return Some((at, entry));
                }
                if !kind.is_dir() {
                    return Some((at, MergedEntry::Other));
                }
                opaque |= manifest.opaque_dirs.contains(&shown);
            }
            if opaque {
                return None;
            }
        }
        None
    }
}

/// At most `max` bytes of a regular file, not following a symbolic link in its last component.
fn read_capped(path: &Path, max: u64) -> Option<String> {
    let file = File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(path: &Path, mode: u32) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn meta(path: &Path) -> EntryMeta {
        let m = std::fs::symlink_metadata(path).unwrap();
        EntryMeta { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() }
    }

    #[test]
    fn entries_come_from_the_top_most_layer_that_has_them_and_no_link_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
        dir(&top.join("etc"), 0o750);
        std::fs::write(top.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        dir(&bottom.join("etc"), 0o755);
        std::fs::write(bottom.join("etc/passwd"), "old\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").unwrap();
        dir(&bottom.join("home/user"), 0o700);
        dir(&bottom.join("opt"), 0o755);
        dir(&bottom.join("var/lib"), 0o755);
        std::os::unix::fs::symlink("/etc", top.join("srv")).unwrap();
        std::os::unix::fs::symlink(t.path(), bottom.join("link")).unwrap();
        std::fs::write(bottom.join("file"), "x").unwrap();
        // The top layer deletes /home and makes /var opaque.
        dir(&top.join("var"), 0o755);
        let manifest = |whiteouts: &[&str], opaque: &[&str]| LayerManifest {
            whiteouts: whiteouts.iter().map(|s| (*s).to_owned()).collect(),
            opaque_dirs: opaque.iter().map(|s| (*s).to_owned()).collect(),
            ..LayerManifest::default()
        };
        let root = MergedRoot::from_layers(vec![
            (top.clone(), manifest(&["home"], &["var"])),
            (bottom.clone(), manifest(&[], &[])),
        ]);

        assert_eq!(root.entry(&["etc"]), MergedEntry::Dir(meta(&top.join("etc"))));
        assert_eq!(root.entry(&["etc"]), MergedEntry::Dir(EntryMeta { mode: 0o750, ..meta(&top.join("etc")) }));
        assert_eq!(root.file(&["etc", "passwd"], 1 << 20).unwrap(), "root:x:0:0::/root:/bin/sh\n");
        assert_eq!(root.file(&["etc", "passwd"], 4).unwrap(), "root");
        // Merged: a file only the lower layer has shows through the upper's directory.
        assert_eq!(root.file(&["etc", "group"], 1 << 20).unwrap(), "root:x:0:\n");
        assert!(matches!(root.entry(&["opt"]), MergedEntry::Dir(_)));
        // Hidden by a whiteout, or below an opaque directory.
        assert_eq!(root.entry(&["home"]), MergedEntry::Absent);
        assert_eq!(root.entry(&["home", "user"]), MergedEntry::Absent);
        assert_eq!(root.entry(&["var", "lib"]), MergedEntry::Absent);
        assert_eq!(root.entry(&["nothing"]), MergedEntry::Absent);
        // Links are not followed, at the end or on the way; a file on the way is not a directory.
        assert_eq!(root.entry(&["srv"]), MergedEntry::Other);
        assert_eq!(root.entry(&["srv", "passwd"]), MergedEntry::Other);
        assert_eq!(root.file(&["srv", "passwd"], 1 << 20), None);
        assert_eq!(root.entry(&["link", "top"]), MergedEntry::Other);
        assert_eq!(root.entry(&["file", "x"]), MergedEntry::Other);
        assert_eq!(root.file(&["etc"], 1 << 20), None);
        // Paths that are not plain components are refused.
        for bad in [&["..", "etc"][..], &["etc/passwd"], &[""], &[]] {
            assert_eq!(root.entry(bad), MergedEntry::Other, "{bad:?}");
        }
    }
}
