//! What a sandbox can try against its storage: fill its quota with many small files, hard-link across quota
//! boundaries, plant a symlink to the host in a volume for the next sandbox (and the host's file API) to follow,
//! and write while a snapshot is taken. Each stays inside the sandbox's own quota and files, and the sandbox and
//! its neighbour live on. Bounded: 1 GiB quotas, a few tens of thousands of files.
#![allow(clippy::unwrap_used)]

mod common;

use agentbox_config::{SandboxConfig, VolumeMount};
use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend, SandboxId};
use agentbox_local::LocalBackend;

async fn sh(b: &LocalBackend, id: &SandboxId, line: &str) -> agentbox_core::ExecOutput {
    let req = ExecRequest { timeout: Some(std::time::Duration::from_secs(120)), ..ExecRequest::shell(line) };
    b.exec(id, req).await.unwrap().collect(1 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_stop_at_the_quota_and_leave_the_neighbour_alone() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    let config = SandboxConfig { disk_gb: 1, ..SandboxConfig::default() };
    let noisy = b.create(CreateRequest::new(config.clone())).await.unwrap();
    let quiet = b.create(CreateRequest::new(config)).await.unwrap();
    // Most of the quota in one file, the rest in small files until the quota refuses one.
    let fill = "dd if=/dev/zero of=/home/user/big bs=1M count=960 status=none; sync; \
        python3 - <<'PY'\nimport os\nn = 0\ntry:\n    while n < 200000:\n        with open(f'/home/user/s{n}', 'wb') as f:\n            f.write(b'x' * 4096)\n        n += 1\n    print('no limit', n)\nexcept OSError as e:\n    print('stopped', e.errno, n > 100)\nPY";
    let out = sh(&b, &noisy.id, fill).await;
    assert!(out.stdout.starts_with("stopped 122 True") || out.stdout.starts_with("stopped 28 True"), "{out:?}");
    // The sandbox lives, its neighbour writes as usual, and deleting frees the quota again.
    assert_eq!(sh(&b, &noisy.id, "echo alive").await.stdout, "alive\n");
    let out = sh(&b, &quiet.id, "dd if=/dev/zero of=/home/user/f bs=1M count=100 status=none && echo ok").await;
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    let out =
        sh(&b, &noisy.id, "rm -f /home/user/s* /home/user/big && sync && echo x > /home/user/after && echo ok").await;
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    b.destroy(&noisy.id).await.unwrap();
    b.destroy(&quiet.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_stay_inside_one_quota() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    let name = format!("links-{}", std::process::id());
    b.create_volume(&name, 64 << 20).await.unwrap();
    let mut config = SandboxConfig { disk_gb: 1, ..SandboxConfig::default() };
    config.storage.volumes = vec![VolumeMount { name: name.clone(), mount_path: "/data".into(), read_only: false }];
    let sb = b.create(CreateRequest::new(config)).await.unwrap();
    // Links across the home, the volume and /tmp are refused (each is its own filesystem or subvolume) ...
    let out = sh(
        &b,
        &sb.id,
        "dd if=/dev/zero of=/home/user/f bs=1M count=600 status=none; \
         ln /home/user/f /data/f 2>/dev/null || echo volume-refused; ln /home/user/f /tmp/f 2>/dev/null || echo tmp-refused; \
         for i in 1 2 3 4 5 6 7 8; do ln /home/user/f /home/user/l$i; done; sync; \
         dd if=/dev/zero of=/home/user/g bs=1M count=600 status=none 2>/dev/null || echo quota-holds",
    )
    .await;
    // ... and links inside the home count once, so they neither bypass nor inflate the quota.
    assert_eq!(out.stdout, "volume-refused\ntmp-refused\nquota-holds\n", "{out:?}");
    let used = b.metrics(&sb.id).await.unwrap().disk_used_gb;
    assert!(used < 1.05, "{used} GiB used");
    b.destroy(&sb.id).await.unwrap();
    b.delete_volume(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_a_volume_is_followed_only_inside_the_reader() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    let name = format!("planted-{}", std::process::id());
    b.create_volume(&name, 16 << 20).await.unwrap();
    let mut config = SandboxConfig::default();
    config.storage.volumes = vec![VolumeMount { name: name.clone(), mount_path: "/data".into(), read_only: false }];
    let planter = b.create(CreateRequest::new(config.clone())).await.unwrap();
    let out = sh(
        &b,
        &planter.id,
        "ln -s /etc/shadow /data/shadow; ln -s ../../../../../etc/hostname /data/up; ln -s / /data/root; echo ok",
    )
    .await;
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    b.destroy(&planter.id).await.unwrap();
    // The next sandbox follows them inside itself: no host file shows.
    let reader = b.create(CreateRequest::new(config)).await.unwrap();
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let out = sh(&b, &reader.id, "cat /data/shadow 2>&1; cat /data/up; ls /data/root/home").await;
    assert!(!host_shadow.is_empty() && !out.stdout.contains(host_shadow.lines().next().unwrap()), "{out:?}");
    // The host's file API resolves them inside the sandbox too, never on the host.
    for path in ["/data/shadow", "/data/root/etc/shadow"] {
        match b.read_file(&reader.id, path).await {
            Ok(bytes) => {
                assert!(!String::from_utf8_lossy(&bytes).contains(host_shadow.lines().next().unwrap()), "{path}");
            }
            Err(e) => assert!(!e.to_string().contains(host_shadow.lines().next().unwrap()), "{path}: {e}"),
        }
    }
    b.destroy(&reader.id).await.unwrap();
    b.delete_volume(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_during_writes_holds_a_consistent_prefix() {
    if common::not_root() {
        return;
    }
    let b = common::backend();
    let sb = b.create(CreateRequest::default()).await.unwrap();
    // A writer appends numbered lines, flushing each, while snapshots are taken.
    let writer = "i=0; while [ $i -lt 200000 ]; do echo \"line $i\"; i=$((i+1)); done > /home/user/log";
    b.spawn_background(&sb.id, ExecRequest::shell(writer)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let name = format!("during-{}", sb.id);
    b.snapshot(&sb.id, &name).await.unwrap();
    // The sandbox goes on writing; a fork of the snapshot reads whole lines, in order, from line 0.
    let fork = b.create(CreateRequest { from_snapshot: Some(name.clone()), ..CreateRequest::default() }).await.unwrap();
    // Every line but the last (which the snapshot may have caught half-written) is the next number.
    let check = "awk 'BEGIN{ok=1; bad=0} { if (bad) ok=0; bad = ($0 != \"line \" (NR-1)) } END{print (ok ? \"ordered\" : \"broken\"), NR}' /home/user/log";
    let out = sh(&b, &fork.id, check).await;
    assert!(out.stdout.starts_with("ordered"), "{out:?}");
    assert_eq!(sh(&b, &sb.id, "echo alive").await.stdout, "alive\n");
    b.destroy(&fork.id).await.unwrap();
    b.delete_snapshot(&name).await.unwrap();
    b.destroy(&sb.id).await.unwrap();
}
