//! An image's `User`, resolved on the host against the image's own `/etc/passwd` and `/etc/group`, with
//! images that lie in them: links out of the layer, FIFOs, files past the cap, whiteouts and opaque
//! directories, lines that don't parse, ids no sandbox may have.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use agentbox_image::{ImageConfig, ImageRef, ImageUser, Store, UserError};
use common::{Comp, E, Layer, Registry, config_json, host_arch, push_image, tar};

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n";

/// Pushes an image of `layers` (each a list of entries) whose `User` is `user`, pulls it into `store` and
/// resolves its user, within a bound in time (a FIFO must not block it).
async fn user_of(
    reg: &Registry,
    store: &Store,
    name: &str,
    layers: &[&[E<'_>]],
    user: &str,
) -> Result<Option<ImageUser>, UserError> {
    let layers: Vec<Layer> = layers.iter().map(|entries| Layer::new(&tar(entries), Comp::Gzip)).collect();
    let config = config_json(&host_arch(), &layers, serde_json::json!({ "User": user }));
    let tag = format!("{name}:1");
    push_image(reg, &tag, &layers, &config).await;
    let (record, _) = store.pull(&ImageRef::parse(&reg.reference(&tag)).unwrap()).await.unwrap();
    let s = store.clone();
    let resolving = tokio::task::spawn_blocking(move || s.image_user(&record));
    tokio::time::timeout(Duration::from_secs(20), resolving).await.expect("resolving the user blocked").unwrap()
}

fn account(name: &str, uid: u32, gid: u32) -> ImageUser {
    ImageUser { name: name.to_owned(), uid, gid }
}

fn unknown(r: &Result<Option<ImageUser>, UserError>) -> bool {
    matches!(r, Err(UserError::Unknown { .. }))
}

#[tokio::test]
async fn names_ids_and_groups_resolve_from_the_images_own_files() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(ImageConfig::in_dir(dir.path().join("store"))).unwrap();
    let files: &[E<'_>] =
        &[E::Dir("etc/", 0o755), E::File("etc/passwd", PASSWD, 0o644), E::File("etc/group", b"grp:x:3456:\n", 0o644)];
    let layers = [files];
    let of = |user: &'static str| user_of(&reg, &store, "plain", &layers, user);
    assert_eq!(of("app").await.unwrap(), Some(account("app", 1234, 2345)));
    assert_eq!(of("app:grp").await.unwrap(), Some(account("app", 1234, 3456)));
    assert_eq!(of("1234").await.unwrap(), Some(account("app", 1234, 2345)));
    assert_eq!(of("777:778").await.unwrap(), Some(account("u777", 777, 778)));
    for root in ["root", "0", "0:0", ""] {
        assert_eq!(of(root).await.unwrap(), None, "{root:?}");
    }
    assert!(unknown(&of("nobody-here").await));
    assert!(unknown(&of("app:no-group").await));
    // Ids no sandbox may have resolve as they are; the backend refuses them as it refuses such a run_as.
    assert!(unknown(&of("-1").await));
    assert_eq!(of("4294967295").await.unwrap(), Some(account("u4294967295", u32::MAX, u32::MAX)));
}

#[tokio::test]
async fn links_fifos_and_oversized_files_are_not_read() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(ImageConfig::in_dir(dir.path().join("store"))).unwrap();
    // `daemon` is in the host's /etc/passwd, never in these images.
    let cases: Vec<(&str, Vec<E<'_>>)> = vec![
        ("passwd-link", vec![E::Dir("etc/", 0o755), E::Symlink("etc/passwd", "/etc/passwd")]),
        ("passwd-relative-link", vec![E::Dir("etc/", 0o755), E::Symlink("etc/passwd", "../../../../../../etc/passwd")]),
        ("etc-link", vec![E::Symlink("etc", "/etc")]),
        ("passwd-fifo", vec![E::Dir("etc/", 0o755), E::Fifo("etc/passwd")]),
        ("passwd-dir", vec![E::Dir("etc/", 0o755), E::Dir("etc/passwd/", 0o755)]),
        ("passwd-device", vec![E::Dir("etc/", 0o755), E::Char("etc/passwd", 1, 5)]),
    ];
    for (name, entries) in &cases {
        let r = user_of(&reg, &store, name, &[entries], "daemon").await;
        assert!(unknown(&r), "{name}: {r:?}");
    }
    // A group file that is a link is not read either.
    let entries = [E::Dir("etc/", 0o755), E::File("etc/passwd", PASSWD, 0o644), E::Symlink("etc/group", "/etc/group")];
    assert!(unknown(&user_of(&reg, &store, "group-link", &[&entries], "app:root").await));
    // Only the first MiB is read: a line past it is not found.
    let mut big = vec![b'#'; 2 << 20];
    big.extend_from_slice(b"\nlate:x:1500:1500::/home/late:/bin/sh\n");
    let entries = [E::Dir("etc/", 0o755), E::File("etc/passwd", &big, 0o644)];
    assert!(unknown(&user_of(&reg, &store, "big", &[&entries], "late").await));
}

#[tokio::test]
async fn whiteouts_opaque_directories_and_odd_lines() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(ImageConfig::in_dir(dir.path().join("store"))).unwrap();
    let base: &[E<'_>] = &[E::Dir("etc/", 0o755), E::File("etc/passwd", PASSWD, 0o644)];
    // A whiteout above hides the file, an opaque /etc above hides the directory's lower contents.
    let whiteout: &[E<'_>] = &[E::Dir("etc/", 0o755), E::File("etc/.wh.passwd", b"", 0o644)];
    assert!(unknown(&user_of(&reg, &store, "whiteout", &[base, whiteout], "app").await));
    let opaque: &[E<'_>] = &[E::Dir("etc/", 0o755), E::File("etc/.wh..wh..opq", b"", 0o644)];
    assert!(unknown(&user_of(&reg, &store, "opaque", &[base, opaque], "app").await));
    let etc_gone: &[E<'_>] = &[E::File(".wh.etc", b"", 0o644)];
    assert!(unknown(&user_of(&reg, &store, "etc-gone", &[base, etc_gone], "app").await));
    // A file in a layer above wins; one that isn't a directory above hides the lower /etc.
    let newer: &[E<'_>] = &[E::Dir("etc/", 0o755), E::File("etc/passwd", b"app:x:1300:1301::/:/bin/sh\n", 0o644)];
    assert_eq!(user_of(&reg, &store, "newer", &[base, newer], "app").await.unwrap(), Some(account("app", 1300, 1301)));
    let etc_file: &[E<'_>] = &[E::File("etc", b"not a directory", 0o644)];
    assert!(unknown(&user_of(&reg, &store, "etc-file", &[base, etc_file], "app").await));

    // Lines that don't parse are passed over; bytes that aren't UTF-8 don't stop the rest.
    let odd: &[u8] = b"\xff\xfe:x:1:1\nshort:x\nodd:x:12:notanumber\n#app:x:5:5\n\n  \nok:x:1400:1401:::\n";
    let entries: &[E<'_>] = &[E::Dir("etc/", 0o755), E::File("etc/passwd", odd, 0o644)];
    assert_eq!(user_of(&reg, &store, "odd", &[entries], "ok").await.unwrap(), Some(account("ok", 1400, 1401)));
    assert!(unknown(&user_of(&reg, &store, "odd", &[entries], "short").await));
    assert!(unknown(&user_of(&reg, &store, "odd", &[entries], "odd").await));
    // A name the sandbox can't have comes back as it is; the backend refuses it (as a run_as).
    let named: &[E<'_>] = &[E::Dir("etc/", 0o755), E::File("etc/passwd", b"../../x:x:1600:1600::/:/bin/sh\n", 0o644)];
    assert_eq!(user_of(&reg, &store, "named", &[named], "1600").await.unwrap(), Some(account("../../x", 1600, 1600)));
}
