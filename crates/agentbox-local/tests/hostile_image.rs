//! Hostile images: an image controls every entry of its root, and the init builds the sandbox's filesystem in
//! it (the generated `/etc` files, the home, `/tmp`, `/dev`, `/proc`) before it pivots into it, while its own
//! root is still the host's. A symlink in the image that points at a host path, a FIFO where a file is
//! written, or `/dev/zero` where one is read must reach nothing outside the sandbox and block nothing.
#![allow(clippy::unwrap_used)]

#[path = "../../agentbox-image/tests/common/mod.rs"]
mod image_common;

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentbox_config::SandboxConfig;
use agentbox_core::{CreateRequest, SandboxBackend};
use agentbox_image::ImageConfig;
use agentbox_local::{LocalBackend, LocalConfig};
use image_common::{Comp, E, Layer, Registry, config_json, debian_in_registry, host_arch, push_image, tar};

/// A directory on the host anyone may write in, as `/tmp` is: where a hostile image's links point.
fn bait_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentbox-bait-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A file anyone may write, that the host owns.
    std::fs::write(dir.join("victim"), b"host's\n").unwrap();
    std::fs::set_permissions(dir.join("victim"), std::fs::Permissions::from_mode(0o666)).unwrap();
    dir
}

fn entries_of(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

async fn push(registry: &Registry, name: &str, entries: &[E<'_>]) -> String {
    let layer = Layer::new(&tar(entries), Comp::Gzip);
    let config = config_json(&host_arch(), std::slice::from_ref(&layer), serde_json::json!({}));
    push_image(registry, &format!("{name}:1"), &[layer], &config).await;
    registry.reference(&format!("{name}:1"))
}

fn backend(store: &Path) -> Arc<LocalBackend> {
    let config = LocalConfig { images: Some(ImageConfig::in_dir(store.join("images"))), ..LocalConfig::default() };
    Arc::new(LocalBackend::new(config).unwrap())
}

fn config(image: &str) -> SandboxConfig {
    SandboxConfig {
        image: Some(image.to_owned()),
        startup_timeout: Duration::from_secs(20),
        ..SandboxConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_links_to_host_paths_are_not_followed_while_its_root_is_built() {
    if common::not_root() {
        return;
    }
    let registry = Registry::start();
    let store = tempfile::tempdir().unwrap();
    let b = backend(store.path());
    // Each image has one place the init writes or makes a directory in link to the host's /tmp: a file it
    // would create, a file anyone may write, or a directory it would make its home in.
    let bait = bait_dir("links");
    let at = |name: &str| bait.join(name).to_string_lossy().into_owned();
    let (hostname, victim, passwd, group, resolv) =
        (at("hostname"), at("victim"), at("passwd"), at("group"), at("resolv"));
    let bait_path = bait.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<E<'_>>)> = vec![
        ("hostname", vec![E::Dir("etc/", 0o755), E::Symlink("etc/hostname", &hostname)]),
        ("hosts", vec![E::Dir("etc/", 0o755), E::Symlink("etc/hosts", &victim)]),
        ("passwd", vec![E::Dir("etc/", 0o755), E::Symlink("etc/passwd", &passwd)]),
        ("group", vec![E::Dir("etc/", 0o755), E::Symlink("etc/group", &group)]),
        ("resolv", vec![E::Dir("etc/", 0o755), E::Symlink("etc/resolv.conf", &resolv)]),
        ("home", vec![E::Symlink("home", &bait_path)]),
    ];
    for (name, entries) in cases {
        let image = push(&registry, name, &entries).await;
        let created = b.create(CreateRequest::new(config(&image))).await;
        // Whatever became of the sandbox, nothing was made or changed on the host.
        assert_eq!(entries_of(&bait), ["victim"], "{name}: the init wrote through the image's link: {created:?}");
        assert_eq!(std::fs::read(bait.join("victim")).unwrap(), b"host's\n", "{name}");
        if name == "home" {
            // The home's link leads nowhere inside the root: the sandbox can't be made.
            if let Ok(info) = created {
                b.destroy(&info.id).await.unwrap();
            }
            continue;
        }
        // The link was replaced by the sandbox's own file, inside it.
        let info = created.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let hostname = b.read_file(&info.id, "/etc/hostname").await.unwrap();
        assert!(!hostname.is_empty(), "{name}");
        b.destroy(&info.id).await.unwrap();
    }
    std::fs::remove_dir_all(&bait).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_etc_links_out_of_its_root_writes_nothing_on_the_host() {
    if common::not_root() {
        return;
    }
    let bait = bait_dir("etc");
    let target = bait.join("etc").to_string_lossy().into_owned();
    let registry = Registry::start();
    let image = push(&registry, "etc-link", &[E::Symlink("etc", &target)]).await;
    let store = tempfile::tempdir().unwrap();
    let b = backend(store.path());
    let created = b.create(CreateRequest::new(config(&image))).await;
    assert_eq!(entries_of(&bait), ["victim"], "the init wrote through the image's /etc link: {created:?}");
    if let Ok(info) = created {
        b.destroy(&info.id).await.unwrap();
    }
    std::fs::remove_dir_all(&bait).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_and_endless_files_in_an_images_etc_block_nothing() {
    if common::not_root() {
        return;
    }
    let registry = Registry::start();
    // A FIFO with no writer where passwd is read and hosts is written; /dev/zero where group is read.
    let image = push(
        &registry,
        "fifos",
        &[
            E::Dir("etc/", 0o755),
            E::Fifo("etc/passwd"),
            E::Fifo("etc/hosts"),
            E::Symlink("etc/group", "/dev/zero"),
            E::Dir("etc/hostname/", 0o755),
        ],
    )
    .await;
    let store = tempfile::tempdir().unwrap();
    let b = backend(store.path());
    let started = std::time::Instant::now();
    let created = b.create(CreateRequest::new(config(&image))).await;
    // Well within the startup timeout: nothing waited on the FIFOs.
    assert!(started.elapsed() < Duration::from_secs(15), "the create waited {:?}: {created:?}", started.elapsed());
    if let Ok(info) = created {
        let passwd = String::from_utf8(b.read_file(&info.id, "/etc/passwd").await.unwrap()).unwrap();
        assert!(passwd.contains("user:x:1000:1000"), "{passwd}");
        b.destroy(&info.id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_own_etc_files_are_rewritten_in_place_but_never_through_a_hard_link() {
    if common::not_root() {
        return;
    }
    let registry = Registry::start();
    // hostname shares its inode with another file of the image; resolv.conf is root's but executable.
    let image = push(
        &registry,
        "etc-files",
        &[
            E::Dir("etc/", 0o755),
            E::File("etc/keep", b"the image's own\n", 0o644),
            E::Hard("etc/hostname", "etc/keep"),
            E::File("etc/resolv.conf", b"nameserver 192.0.2.1\n", 0o755),
        ],
    )
    .await;
    let store = tempfile::tempdir().unwrap();
    let b = backend(store.path());
    let info = b.create(CreateRequest::new(config(&image))).await.unwrap();
    let keep = b.read_file(&info.id, "/etc/keep").await.unwrap();
    assert_eq!(keep, b"the image's own\n", "the hard link's other name is untouched");
    let hostname = b.read_file(&info.id, "/etc/hostname").await.unwrap();
    assert!(!hostname.is_empty() && hostname != keep, "{hostname:?}");
    for path in ["/etc/resolv.conf", "/etc/hostname"] {
        let mode = b.stat(&info.id, path).await.unwrap().mode & 0o7777;
        assert_eq!(mode, 0o644, "{path}: {mode:o}");
    }
    b.destroy(&info.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_root_inside_leaves_in_the_writable_layer_are_not_followed_when_it_starts_again() {
    if common::not_root() {
        return;
    }
    let (_registry, reference) = debian_in_registry();
    let store = tempfile::tempdir().unwrap();
    let b = backend(store.path());
    let config = SandboxConfig {
        security: agentbox_config::SecurityConfig { allow_root_inside: true, ..Default::default() },
        ..config(&reference)
    };
    let sb = b.create(CreateRequest::new(config.clone())).await.unwrap();
    // Root inside replaces the files the init writes with links to the host's /tmp; they are kept with the
    // sandbox's writable layer.
    let bait = bait_dir("root-inside");
    let line = format!(
        "ln -sf {0}/hostname /etc/hostname && ln -sf {0}/victim /etc/hosts && ln -sf {0}/passwd /etc/passwd",
        bait.display()
    );
    let root = agentbox_core::ExecRequest { user: Some("root".into()), ..agentbox_core::ExecRequest::shell(&line) };
    let out = b.exec(&sb.id, root).await.unwrap().collect(1 << 16).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let key = b.stop(&sb.id).await.unwrap().key;
    let again = b.start(&key, CreateRequest::new(config)).await.unwrap();
    assert_eq!(entries_of(&bait), ["victim"], "the init wrote through root inside's links");
    assert_eq!(std::fs::read(bait.join("victim")).unwrap(), b"host's\n");
    let out = b
        .exec(&again.id, agentbox_core::ExecRequest::shell("stat -c %F /etc/hostname /etc/hosts; id -un"))
        .await
        .unwrap()
        .collect(1 << 16)
        .await;
    assert_eq!(out.stdout, "regular file\nregular file\nuser\n", "{out:?}");
    b.destroy(&again.id).await.unwrap();
    std::fs::remove_dir_all(&bait).unwrap();
}
