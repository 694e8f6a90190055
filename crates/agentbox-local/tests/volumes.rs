//! Volumes: named, persistent, with a quota of their own; mounted into sandboxes at create, read-only when
//! asked; they outlive the sandboxes that use them, and every sandbox sees their files as its own whatever its
//! host id range.
#![allow(clippy::unwrap_used)]

mod common;

use agentbox_config::{SandboxConfig, VolumeMount};
use agentbox_core::{CreateRequest, Error, ExecRequest, SandboxBackend, SandboxId};
use agentbox_local::LocalBackend;

async fn sh(b: &LocalBackend, id: &SandboxId, line: &str) -> agentbox_core::ExecOutput {
    b.exec(id, ExecRequest::shell(line)).await.unwrap().collect(1 << 20).await
}

fn with_volume(name: &str, mount_path: &str, read_only: bool) -> SandboxConfig {
    let mut c = SandboxConfig::default();
    c.storage.volumes = vec![VolumeMount { name: name.into(), mount_path: mount_path.into(), read_only }];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_outlives_its_sandboxes_and_keeps_its_quota() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    let name = format!("vol-{}", std::process::id());
    let v = b.create_volume(&name, 32 << 20).await.unwrap();
    assert_eq!((v.limit_bytes, v.mounted_by), (32 << 20, 0));
    assert!(matches!(b.create_volume(&name, 1 << 20).await, Err(Error::Conflict(_))), "a taken name");

    // The first sandbox writes into it, under the home and at a path of its own.
    let first = b.create(CreateRequest::new(with_volume(&name, "/data", false))).await.unwrap();
    let out = sh(&b, &first.id, "echo kept > /data/note && id -u && stat -c %u:%g /data/note").await;
    assert_eq!(out.stdout, "1000\n1000:1000\n", "{out:?}");
    // The file API reaches it too.
    b.write_file(&first.id, "/data/api.txt", b"from the host".to_vec()).await.unwrap();
    // Past the volume's quota: refused, and the sandbox lives on.
    let out = sh(&b, &first.id, "dd if=/dev/zero of=/data/big bs=1M count=64 2>&1; echo rc=$?").await;
    assert!(out.stdout.contains("quota exceeded") || out.stdout.contains("No space left"), "{out:?}");
    sh(&b, &first.id, "rm -f /data/big").await;
    // In use: it can't be deleted.
    let listed = b.list_volumes().await.unwrap();
    assert_eq!(listed.iter().find(|v| v.name == name).unwrap().mounted_by, 1, "{listed:?}");
    assert!(matches!(b.delete_volume(&name).await, Err(Error::Conflict(_))));
    b.destroy(&first.id).await.unwrap();

    // A second sandbox (another host id range) finds the files as its own; read-only, it can't change them.
    let second = b.create(CreateRequest::new(with_volume(&name, "/home/user/work", true))).await.unwrap();
    let out =
        sh(&b, &second.id, "cat ~/work/note ~/work/api.txt; stat -c %U ~/work/note; touch ~/work/x; echo rc=$?").await;
    assert_eq!(out.stdout, "kept\nfrom the hostuser\nrc=1\n", "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    let e = b.write_file(&second.id, "/home/user/work/y", b"y".to_vec()).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    b.destroy(&second.id).await.unwrap();

    // A third, writable again, changes it: the change is there for the next one.
    let third = b.create(CreateRequest::new(with_volume(&name, "/data", false))).await.unwrap();
    assert_eq!(sh(&b, &third.id, "echo more >> /data/note && cat /data/note").await.stdout, "kept\nmore\n");
    b.destroy(&third.id).await.unwrap();

    b.delete_volume(&name).await.unwrap();
    assert!(b.list_volumes().await.unwrap().iter().all(|v| v.name != name));
    assert!(matches!(b.delete_volume(&name).await, Err(Error::NotFound(_))));
    // A sandbox can't mount a volume that doesn't exist.
    let err = b.create(CreateRequest::new(with_volume(&name, "/data", false))).await.unwrap_err();
    assert!(matches!(&err, Error::NotFound(m) if m.contains("create it first")), "{err:?}");
    assert!(b.list().await.unwrap().iter().all(|s| s.id != first.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_paths_that_would_reach_the_system_are_refused() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    for path in ["/", "/proc/x", "/dev", "/etc/cron.d", "/tmp/v", "relative", "/a/../etc", "/a//b", "/home/user"] {
        let err = b.create(CreateRequest::new(with_volume("any", path, false))).await.unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig(_)), "{path:?}: {err:?}");
    }
    let err = b.create(CreateRequest::new(with_volume("../x", "/data", false))).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig(_)), "{err:?}");
}
