//! The layer unpacker against crafted, hostile tar layers. Runs as root (the test suite does): owners,
//! whiteout devices and trusted.* attributes need it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use agentbox_image::Digest;
use agentbox_image::unpack::{Budget, LayerManifest, LayerSource, UnpackError, unpack_layer};
use common::{Comp, E, Layer, tar};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// A directory beside the layer, which nothing in the layer may reach.
    fn outside(&self) -> PathBuf {
        let p = self.dir.path().join("outside");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn unpack_with(&self, layer: &Layer, diff_id: &Digest, budget: &Budget) -> Result<LayerManifest, UnpackError> {
        let blob = layer.write_to(self.dir.path());
        let digest = layer.digest();
        unpack_layer(&LayerSource { blob: &blob, digest: &digest, diff_id }, &self.rootfs(), budget)
    }

    fn unpack(&self, entries: &[E<'_>]) -> Result<LayerManifest, UnpackError> {
        let layer = Layer::new(&tar(entries), Comp::Gzip);
        self.unpack_with(&layer, &layer.diff_id.clone(), &Budget::new(1 << 30, 10_000))
    }

    fn assert_nothing_outside(&self) {
        let outside = self.outside();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the layer");
        assert!(!self.rootfs().exists(), "a refused layer left its directory behind");
    }
}

#[test]
fn plain_layer_keeps_files_modes_links_and_times() {
    let c = Case::new();
    let m = c
        .unpack(&[
            E::Dir("./", 0o755),
            E::Dir("usr/", 0o755),
            E::Dir("usr/bin/", 0o555),
            E::File("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
            E::Symlink("usr/bin/alias", "tool"),
            E::Hard("usr/bin/tool2", "usr/bin/tool"),
            E::File("/etc/absolute", b"inside", 0o644),
            E::Fifo("run.fifo"),
        ])
        .unwrap();
    let root = c.rootfs();
    assert_eq!(std::fs::read(root.join("usr/bin/tool")).unwrap(), b"#!/bin/sh\necho hi\n");
    assert_eq!(std::fs::metadata(root.join("usr/bin/tool")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(root.join("usr/bin")).unwrap().permissions().mode() & 0o7777, 0o555);
    assert_eq!(std::fs::read_link(root.join("usr/bin/alias")).unwrap(), Path::new("tool"));
    assert_eq!(
        std::fs::metadata(root.join("usr/bin/tool2")).unwrap().ino(),
        std::fs::metadata(root.join("usr/bin/tool")).unwrap().ino()
    );
    assert_eq!(std::fs::metadata(root.join("usr/bin/tool")).unwrap().mtime(), 1_700_000_000);
    // An absolute name is taken relative to the layer's root.
    assert_eq!(std::fs::read(root.join("etc/absolute")).unwrap(), b"inside");
    assert!(std::fs::symlink_metadata(root.join("run.fifo")).unwrap().file_type().is_fifo());
    assert_eq!(m.entries, 8);
}

#[test]
fn dotdot_is_refused() {
    let c = Case::new();
    let _ = c.outside();
    let err = c.unpack(&[E::File("../outside/escaped", b"x", 0o644)]).unwrap_err();
    assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
    let err = c.unpack(&[E::Dir("a/", 0o755), E::File("a/../../outside/escaped", b"x", 0o644)]).unwrap_err();
    assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
    // Whiteouts naming the directory itself or its parent.
    for name in ["a/.wh..", "a/.wh..."] {
        let err =
            c.unpack(&[E::Dir("a/", 0o755), E::File("a/keep", b"k", 0o644), E::File(name, b"", 0o644)]).unwrap_err();
        assert!(matches!(err, UnpackError::PathEscape { .. }), "{name}: {err}");
    }
    c.assert_nothing_outside();
}

#[test]
fn symlink_in_a_parent_component_is_refused() {
    let c = Case::new();
    let outside = c.outside();
    // An absolute symlink to a directory outside, then a file "under" it.
    let target = outside.to_str().unwrap().to_owned();
    let err = c.unpack(&[E::Symlink("link", &target), E::File("link/pwned", b"x", 0o644)]).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err}");
    // A relative one climbing out, and one to `/`.
    let err = c.unpack(&[E::Symlink("up", "../outside"), E::File("up/pwned", b"x", 0o644)]).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err}");
    let err = c.unpack(&[E::Symlink("root", "/"), E::Dir("root/tmp/", 0o755)]).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err}");
    // A whiteout through a symlink can't delete anything outside either.
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    let err = c.unpack(&[E::Symlink("w", &target), E::File("w/.wh.victim", b"", 0o644)]).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err}");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    std::fs::remove_file(outside.join("victim")).unwrap();
    c.assert_nothing_outside();
}

#[test]
fn hard_links_only_reach_entries_of_the_layer() {
    let c = Case::new();
    let outside = c.outside();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    let abs = outside.join("secret");
    for (name, target) in
        [("l1", abs.to_str().unwrap()), ("l2", "../outside/secret"), ("l3", "/etc/passwd"), ("l4", "missing")]
    {
        let err = c.unpack(&[E::Hard(name, target)]).unwrap_err();
        assert!(
            matches!(err, UnpackError::HardLinkOutside { .. } | UnpackError::SymlinkInPath { .. }),
            "{name}: {err}"
        );
    }
    // Through a symlinked parent.
    let err = c.unpack(&[E::Symlink("s", outside.to_str().unwrap()), E::Hard("stolen", "s/secret")]).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkInPath { .. } | UnpackError::HardLinkOutside { .. }), "{err}");
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
    std::fs::remove_file(outside.join("secret")).unwrap();
    c.assert_nothing_outside();
}

#[test]
fn devices_are_dropped_and_setid_bits_stripped() {
    let c = Case::new();
    let m = c
        .unpack(&[
            E::Char("dev/null", 1, 3),
            E::Block("dev/sda", 8, 0),
            E::File("usr/bin/su", b"elf", 0o4755),
            E::File("usr/bin/wall", b"elf", 0o2755),
            E::Dir("shared/", 0o2775),
        ])
        .unwrap();
    let root = c.rootfs();
    assert!(!root.join("dev/null").exists() && !root.join("dev/sda").exists());
    assert_eq!(m.dropped_devices, vec!["dev/null".to_owned(), "dev/sda".to_owned()]);
    assert_eq!(std::fs::metadata(root.join("usr/bin/su")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(root.join("usr/bin/wall")).unwrap().permissions().mode() & 0o7777, 0o755);
    let recorded: Vec<(String, u32)> = m.setid.iter().map(|s| (s.path.clone(), s.mode)).collect();
    assert_eq!(recorded, vec![("usr/bin/su".to_owned(), 0o4755), ("usr/bin/wall".to_owned(), 0o2755)]);
    // A directory's setgid bit grants nothing and stays.
    assert_eq!(std::fs::metadata(root.join("shared")).unwrap().permissions().mode() & 0o7777, 0o2775);
}

#[test]
fn decompression_bombs_stop_at_the_limits() {
    let c = Case::new();
    let zeros = vec![0u8; 8 << 20];
    let layer = Layer::new(&tar(&[E::File("bomb", &zeros, 0o644)]), Comp::Zstd);
    assert!(layer.blob.len() < 4096, "the bomb compresses well");
    let err = c.unpack_with(&layer, &layer.diff_id, &Budget::new(1 << 20, 100)).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { what: "bytes", .. }), "{err}");
    assert!(err.to_string().contains("max_bytes"), "{err}");
    assert!(!c.rootfs().exists());

    let names: Vec<String> = (0..500).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let layer = Layer::new(&tar(&entries), Comp::Gzip);
    let err = c.unpack_with(&layer, &layer.diff_id, &Budget::new(1 << 30, 100)).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { what: "entries", .. }), "{err}");
    assert!(!c.rootfs().exists());
}

#[test]
fn digest_mismatches_are_refused() {
    let c = Case::new();
    let layer = Layer::new(&tar(&[E::File("a", b"a", 0o644)]), Comp::Gzip);
    let wrong = Digest::of(b"something else");
    let err = c.unpack_with(&layer, &wrong, &Budget::new(1 << 30, 100)).unwrap_err();
    assert!(matches!(err, UnpackError::DigestMismatch { what: "uncompressed (diff_id)", .. }), "{err}");
    assert!(!c.rootfs().exists());
    // The blob's own digest: the file is named by a digest it doesn't have.
    let blob = layer.write_to(c.dir.path());
    let err = unpack_layer(
        &LayerSource { blob: &blob, digest: &wrong, diff_id: &layer.diff_id },
        &c.rootfs(),
        &Budget::new(1 << 30, 100),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::DigestMismatch { what: "compressed", .. }), "{err}");
    assert!(!c.rootfs().exists());
}

#[test]
fn every_compression_unpacks() {
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let c = Case::new();
        let layer = Layer::new(&tar(&[E::File("hello", b"world", 0o644)]), comp);
        c.unpack_with(&layer, &layer.diff_id, &Budget::new(1 << 30, 100)).unwrap();
        assert_eq!(std::fs::read(c.rootfs().join("hello")).unwrap(), b"world", "{comp:?}");
    }
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    rustix::fs::lgetxattr(path, name, &mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    let lower = Case::new();
    lower
        .unpack(&[
            E::Dir("a/", 0o755),
            E::File("a/x", b"x", 0o644),
            E::File("a/y", b"y", 0o644),
            E::File("b", b"b", 0o644),
            E::File("c", b"c", 0o644),
        ])
        .unwrap();
    let upper = Case::new();
    let m = upper
        .unpack(&[E::File(".wh.b", b"", 0o644), E::File("a/.wh..wh..opq", b"", 0o644), E::File("a/z", b"z", 0o644)])
        .unwrap();
    assert_eq!(m.whiteouts, vec!["b".to_owned()]);
    assert_eq!(m.opaque_dirs, vec!["a".to_owned()]);
    let root = upper.rootfs();
    let b = std::fs::symlink_metadata(root.join("b")).unwrap();
    assert!(b.file_type().is_char_device() && b.rdev() == 0, "a whiteout is a 0/0 character device");
    assert_eq!(getxattr(&root.join("a"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(getxattr(&root.join("a"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(!root.join(".wh.b").exists() && !root.join("a/.wh..wh..opq").exists());

    // What overlayfs makes of the two layers: b deleted, a/ holding only z, c untouched.
    let mnt = tempfile::tempdir().unwrap();
    let opts = format!("lowerdir={}:{}", root.display(), lower.rootfs().display());
    let status =
        Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(mnt.path()).status().unwrap();
    assert!(status.success(), "mounting overlayfs (needs root)");
    let seen = |p: &str| mnt.path().join(p).exists();
    let result = (seen("b"), seen("c"), seen("a/x"), seen("a/y"), seen("a/z"));
    let _ = Command::new("umount").arg(mnt.path()).status();
    assert_eq!(result, (false, true, false, false, true));
}

#[test]
fn overlong_names_are_refused() {
    let c = Case::new();
    // A PAX header carries the long name (the tar crate writes one for names past 100 bytes).
    let long = "a/".repeat(3000) + "f";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &long, &b""[..]).unwrap();
    let layer = Layer::new(&b.into_inner().unwrap(), Comp::Gzip);
    let err = c.unpack_with(&layer, &layer.diff_id, &Budget::new(1 << 30, 100)).unwrap_err();
    assert!(matches!(err, UnpackError::NameTooLong { .. }), "{err}");
    assert!(!c.rootfs().exists());
}

#[test]
fn huge_tar_metadata_is_refused_before_it_is_read() {
    // A PAX extension header claiming 256 MiB (zeros compress to almost nothing): the tar reader would hold it
    // in memory whole.
    for kind in [tar::EntryType::XHeader, tar::EntryType::GNULongName] {
        let c = Case::new();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(256 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, std::io::repeat(b'a').take(256 << 20)).unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_entry_type(tar::EntryType::Regular);
        f.set_size(0);
        f.set_cksum();
        b.append_data(&mut f, "after", &b""[..]).unwrap();
        let layer = Layer::new(&b.into_inner().unwrap(), Comp::Zstd);
        let err = c.unpack_with(&layer, &layer.diff_id, &Budget::new(1 << 40, 100)).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{kind:?}: {err}");
        assert!(!c.rootfs().exists());
    }
    // Ordinary long names (PAX and GNU) still work.
    let c = Case::new();
    let long = format!("{}/{}/file", "d".repeat(200), "e".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
    let layer = Layer::new(&b.into_inner().unwrap(), Comp::Gzip);
    c.unpack_with(&layer, &layer.diff_id, &Budget::new(1 << 30, 100)).unwrap();
    assert_eq!(std::fs::read(c.rootfs().join(&long)).unwrap(), b"ok");
}
