//! Image roots: a sandbox whose config names an OCI image gets that image as its root, pulled from a real
//! registry on loopback on first use, as an overlay of the image's layers (idmapped into the sandbox's user
//! namespace, so the image's root files are its root's) over the sandbox's own disk layer.
#![allow(clippy::unwrap_used)]

#[path = "../../agentbox-image/tests/common/mod.rs"]
mod image_common;

mod common;

use std::sync::Arc;

use agentbox_config::SandboxConfig;
use agentbox_core::{CreateRequest, Error, ExecRequest, SandboxBackend};
use agentbox_image::ImageConfig;
use agentbox_local::{LocalBackend, LocalConfig};
use image_common::debian_in_registry;

async fn sh(b: &LocalBackend, id: &agentbox_core::SandboxId, line: &str) -> String {
    let out = b.exec(id, ExecRequest::shell(line)).await.unwrap().collect(1 << 20).await;
    assert_eq!(out.exit_code, 0, "{line}: {out:?}");
    out.stdout
}

/// A backend with an image store of its own (removed with the directory returned).
fn backend_with_own_store() -> (tempfile::TempDir, Arc<LocalBackend>) {
    let store = tempfile::tempdir().unwrap();
    let config =
        LocalConfig { images: Some(ImageConfig::in_dir(store.path().join("images"))), ..LocalConfig::default() };
    (store, Arc::new(LocalBackend::new(config).unwrap()))
}

/// A sandbox of `image` whose executions may run as root inside.
fn root_inside(image: String) -> SandboxConfig {
    SandboxConfig {
        image: Some(image),
        security: agentbox_config::SecurityConfig { allow_root_inside: true, ..Default::default() },
        ..SandboxConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_runs_in_a_pulled_image() {
    if common::not_root() {
        return;
    }
    let (registry, reference) = debian_in_registry();
    let (store, b) = backend_with_own_store();
    let with_image = SandboxConfig { image: Some(reference.clone()), ..SandboxConfig::default() };

    // Pulled on first use; the image's system, its interpreter, and the sandbox's own user.
    let first = b.create(CreateRequest::new(with_image.clone())).await.unwrap();
    let out = sh(&b, &first.id, "cat /etc/debian_version; python3 -c 'print(6 * 7)'; id -un; echo $PATH").await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("12."), "not the image's Debian: {out}");
    assert_eq!(&lines[1..3], ["42", "user"], "{out}");
    assert!(lines[3].contains("/usr/local/bin"), "the image's PATH: {out}");
    // The image's files are root's inside (idmapped), not nobody's, and the user can't change them.
    assert_eq!(sh(&b, &first.id, "stat -c %U:%G /usr/bin/python3 /etc").await, "root:root\nroot:root\n");
    let out = b.exec(&first.id, ExecRequest::shell("touch /usr/bin/x")).await.unwrap().collect(1 << 20).await;
    assert_ne!(out.exit_code, 0, "{out:?}");
    // The image's working directory is /root, which the sandbox's user can't enter: executions start in the home.
    assert_eq!(sh(&b, &first.id, "pwd").await, "/home/user\n");
    // passwd keeps the image's users and gains the sandbox's.
    assert_eq!(sh(&b, &first.id, "getent passwd root user | cut -d: -f1,3").await, "root:0\nuser:1000\n");
    // The home is on disk, and the file API reaches it.
    b.write_file(&first.id, "/home/user/note.txt", b"kept".to_vec()).await.unwrap();
    assert_eq!(sh(&b, &first.id, "cat ~/note.txt; stat -c %U ~/note.txt").await, "keptuser\n");

    // A second sandbox from the same image shares its unpacked layer and sees none of the first's files.
    let second = b.create(CreateRequest::new(with_image)).await.unwrap();
    let layers = std::fs::read_dir(store.path().join("images/layers/sha256")).unwrap().count();
    assert_eq!(layers, 1, "the image was unpacked again");
    assert_eq!(sh(&b, &second.id, "ls ~; cat /etc/debian_version | cut -c1-3").await, "12.\n");
    b.destroy(&first.id).await.unwrap();
    b.destroy(&second.id).await.unwrap();

    // An image the registry doesn't have: a clear error, and nothing left behind.
    let missing =
        SandboxConfig { image: Some(format!("{}/no-such-image:1", registry.addr)), ..SandboxConfig::default() };
    let err = b.create(CreateRequest::new(missing)).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("pulling it failed")), "{err:?}");
    assert!(b.list().await.unwrap().is_empty());
    // `host` is the host's system, as when no image is named.
    let host = SandboxConfig { image: Some("host".into()), ..SandboxConfig::default() };
    let sb = b.create(CreateRequest::new(host)).await.unwrap();
    let os = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
    assert_eq!(sh(&b, &sb.id, "cat /etc/debian_version 2>/dev/null || true").await, os);
    b.destroy(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reference_is_refused_before_anything_is_made() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    for bad in ["", " python", "-rm", "a b"] {
        let config = SandboxConfig { image: Some(bad.into()), ..SandboxConfig::default() };
        let err = b.create(CreateRequest::new(config)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_) | Error::InvalidRequest(_)), "{bad:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_installs_packages_into_the_image_root_and_they_survive_stop_and_start() {
    if common::not_root() {
        return;
    }
    let (_registry, reference) = debian_in_registry();
    let (_store, b) = backend_with_own_store();
    let config = root_inside(reference);
    let sb = b.create(CreateRequest::new(config.clone())).await.unwrap();
    // A package built in the sandbox, installed by dpkg and removed by apt, as root inside.
    let build = "mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/local/bin && \
        printf 'Package: hello-agentbox\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.com>\\nDescription: t\\n' > /tmp/pkg/DEBIAN/control && \
        printf '#!/bin/sh\\necho hello from a package\\n' > /tmp/pkg/usr/local/bin/hello-agentbox && \
        chmod 755 /tmp/pkg/usr/local/bin/hello-agentbox && dpkg-deb --build --root-owner-group /tmp/pkg /tmp/hello.deb >/dev/null";
    assert_eq!(sh(&b, &sb.id, build).await, "");
    let root = |line: &str| ExecRequest { user: Some("root".into()), ..ExecRequest::shell(line) };
    // Root inside can enter the image's working directory (/root), so its executions start there.
    let out = b.exec(&sb.id, root("pwd")).await.unwrap().collect(1 << 10).await;
    assert_eq!(out.stdout, "/root\n", "{out:?}");
    let out = b.exec(&sb.id, root("dpkg -i /tmp/hello.deb >/dev/null && stat -c %U /usr/local/bin/hello-agentbox && echo owned > /etc/agentbox-test")).await.unwrap().collect(1 << 20).await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "root\n"), "{out:?}");
    // The user runs it but can't change it.
    assert_eq!(
        sh(&b, &sb.id, "hello-agentbox; touch /usr/local/bin/x 2>/dev/null || echo refused").await,
        "hello from a package\nrefused\n"
    );

    // Stopped and started: the image root's writable layer is kept with the home.
    let key = b.stop(&sb.id).await.unwrap().key;
    let again = b.start(&key, CreateRequest::new(config)).await.unwrap();
    assert_eq!(sh(&b, &again.id, "hello-agentbox; cat /etc/agentbox-test").await, "hello from a package\nowned\n");
    let out = b
        .exec(
            &again.id,
            root("apt-get remove -y hello-agentbox >/dev/null 2>&1; command -v hello-agentbox || echo removed"),
        )
        .await
        .unwrap()
        .collect(1 << 20)
        .await;
    assert_eq!(out.stdout, "removed\n", "{out:?}");
    b.destroy(&again.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entries_the_host_writes_into_a_new_image_root_are_those_the_init_would_make() {
    if common::not_root() {
        return;
    }
    let (_registry, reference) = debian_in_registry();
    let (_store, b) = backend_with_own_store();
    let config = root_inside(reference);
    // What a sandbox's root shows of the generated files and the directories the init makes or changes.
    let look = "stat -c '%n %F %a %U:%G %s' /etc /etc/passwd /etc/group /etc/hostname /etc/hosts /etc/resolv.conf \
        /etc/nsswitch.conf /home /.agentbox; cat /etc/passwd /etc/group /etc/hostname /etc/hosts /etc/resolv.conf \
        /etc/nsswitch.conf; ls -a /etc /home /.agentbox";
    let root = |line: &str| ExecRequest { user: Some("root".into()), ..ExecRequest::shell(line) };
    let mut seen = Vec::new();
    for init_fills in [false, true] {
        if init_fills {
            b.leave_new_upper_layers_to_the_init();
        }
        let sb = b.create(CreateRequest::new(config.clone())).await.unwrap();
        let out = b.exec(&sb.id, root(look)).await.unwrap().collect(1 << 20).await;
        assert_eq!(out.exit_code, 0, "{out:?}");
        // A user's file in /etc, and a change to a generated one, as usual.
        let out2 = b.exec(&sb.id, root("echo x >> /etc/hosts && touch /etc/mine && tail -1 /etc/hosts")).await.unwrap();
        assert_eq!(out2.collect(1 << 10).await.stdout, "x\n");
        b.destroy(&sb.id).await.unwrap();
        seen.push(out.stdout);
    }
    assert!(seen[0].contains("/etc directory 755 root:root"), "{}", seen[0]);
    assert!(seen[0].contains("/.agentbox directory 700 root:root"), "{}", seen[0]);
    assert_eq!(seen[0], seen[1], "written by the host (left) and by the init (right)");
}
