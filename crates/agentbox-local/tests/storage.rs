//! Disk-backed storage: a sandbox's home is a subvolume of the storage pool under a quota of `disk_gb`, so
//! files cost disk, not memory; writes past the quota fail inside the sandbox, which lives on; destroy leaves
//! no layer behind; a sandbox can't make a subvolume outside its quota.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use agentbox_config::SandboxConfig;
use agentbox_core::SandboxBackend;
use common::Sandbox;

fn layers_dir() -> PathBuf {
    PathBuf::from("/var/lib/agentbox/storage/pool/layers")
}

fn layers_of(id: &str) -> Vec<String> {
    std::fs::read_dir(layers_dir())
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n == id).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cost_disk_not_memory_and_stop_at_the_quota() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::with(SandboxConfig { memory_mb: 256, disk_gb: 1, ..SandboxConfig::default() }).await;
    assert!(
        sb.backend.limitations().iter().all(|l| !l.contains("memory-backed")),
        "the storage pool is not in use: {:?}",
        sb.backend.limitations()
    );
    assert_eq!(layers_of(sb.id.as_str()).len(), 1, "no storage layer for {}", sb.id);
    // 700 MiB in a 256 MiB sandbox: on disk, not in memory.
    let out =
        sb.sh("dd if=/dev/zero of=/home/user/f bs=1M count=700 status=none; echo rc=$?; stat -c %s /home/user/f").await;
    assert!(out.stdout.starts_with("rc=0"), "{out:?}");
    // Past the 1 GiB quota: refused, and the sandbox lives on.
    let out = sb.sh("dd if=/dev/zero of=/home/user/g bs=1M count=700 2>&1; echo rc=$?").await;
    assert!(out.stdout.contains("quota exceeded") || out.stdout.contains("No space left"), "{out:?}");
    assert!(out.stdout.contains("rc=1"), "{out:?}");
    assert_eq!(sb.sh("echo alive").await.stdout, "alive\n");
    // Freeing space lets writes succeed again.
    let out = sb.sh("rm /home/user/f /home/user/g && sync && dd if=/dev/zero of=/home/user/h bs=1M count=300 status=none; echo rc=$?").await;
    assert_eq!(out.stdout, "rc=0\n", "{out:?}");
    sb.sh("sync").await;
    let m = sb.backend.metrics(&sb.id).await.unwrap();
    assert!(m.disk_used_gb > 0.25 && m.disk_used_gb < 0.35, "disk_used_gb {}", m.disk_used_gb);
    // The file API writes to the same disk-backed home.
    sb.backend.write_file(&sb.id, "/home/user/api.txt", b"from the host".to_vec()).await.unwrap();
    assert_eq!(sb.sh("cat /home/user/api.txt").await.stdout, "from the host");
    let id = sb.id.clone();
    sb.destroy().await;
    assert!(layers_of(id.as_str()).is_empty(), "destroy left {:?}", layers_of(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_make_a_subvolume_outside_its_quota() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let code = "import fcntl, os\nfd = os.open('/home/user', os.O_RDONLY)\nargs = bytearray(4096)\nargs[8:11] = b'sub'\ntry:\n    fcntl.ioctl(fd, 0x5000940e, args, True)\n    print('created')\nexcept OSError as e:\n    print('refused', e.errno)";
    assert_eq!(sb.py(code).await, "refused 1");
    assert!(!sb.sh("ls /home/user").await.stdout.contains("sub"));
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_forks_of_a_running_sandbox() {
    if common::not_root() {
        return;
    }
    use agentbox_core::{CreateRequest, Error};
    let sb = Sandbox::new().await;
    let name = format!("snap-{}", sb.id);
    sb.sh("echo before > /home/user/note && mkdir -p /home/user/proj && echo code > /home/user/proj/main.py").await;
    let snap = sb.backend.snapshot(&sb.id, &name).await.unwrap();
    assert_eq!(snap.name, name);
    assert!(matches!(sb.backend.snapshot(&sb.id, &name).await, Err(Error::Conflict(_))));
    assert!(matches!(sb.backend.snapshot(&sb.id, "../escape").await, Err(Error::InvalidRequest(_))));
    sb.sh("echo after > /home/user/note").await;
    assert!(sb.backend.list_snapshots().await.unwrap().iter().any(|s| s.name == name));

    // A fork starts from the snapshot and is independent of the original.
    let fork = sb
        .backend
        .create(CreateRequest { from_snapshot: Some(name.clone()), ..CreateRequest::default() })
        .await
        .unwrap();
    let out = sb
        .backend
        .exec(
            &fork.id,
            agentbox_core::ExecRequest::shell(
                "cat /home/user/note /home/user/proj/main.py; echo fork > /home/user/note; id -un",
            ),
        )
        .await
        .unwrap()
        .collect(1 << 16)
        .await;
    assert_eq!(out.stdout, "before\ncode\nuser\n", "{out:?}");
    assert_eq!(sb.sh("cat /home/user/note").await.stdout, "after\n");
    // Deleting the snapshot leaves the fork whole; an unknown snapshot is not found.
    sb.backend.delete_snapshot(&name).await.unwrap();
    let out = sb
        .backend
        .exec(&fork.id, agentbox_core::ExecRequest::shell("cat /home/user/note"))
        .await
        .unwrap()
        .collect(1 << 16)
        .await;
    assert_eq!(out.stdout, "fork\n");
    assert!(matches!(sb.backend.delete_snapshot(&name).await, Err(Error::NotFound(_))));
    let missing =
        sb.backend.create(CreateRequest { from_snapshot: Some(name.clone()), ..CreateRequest::default() }).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    sb.backend.destroy(&fork.id).await.unwrap();
    assert!(layers_of(fork.id.as_str()).is_empty());
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_sandbox_keeps_its_files() {
    use agentbox_core::{CreateOptions, ManagerConfig, RunId, SandboxManager};
    let backend = common::backend();
    let manager =
        SandboxManager::new(backend.clone(), ManagerConfig { max_health_failures: 1, ..ManagerConfig::default() });
    let run = RunId::parse("recovery-keeps-files").unwrap();
    let (first, _) = manager.get_or_create(&run, CreateOptions::default()).await.unwrap();
    manager.write_file(&run, "/home/user/work.txt", b"precious".to_vec()).await.unwrap();
    // The init dies (killed by its pid, which this test's backend started).
    let pid = backend.init_pid(&first.sandbox.id).unwrap();
    // SAFETY: kill sends a signal to a process this test's backend started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let mut recreated = None;
    for _ in 0..50 {
        let s = manager.check_health(&run).await.unwrap();
        if s.sandbox.id != first.sandbox.id {
            recreated = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let recreated = recreated.expect("the sandbox was not recreated");
    assert_eq!(manager.read_file(&run, "/home/user/work.txt").await.unwrap(), b"precious");
    // The recovery snapshot is gone, and so is the old sandbox's layer.
    assert!(!backend.list_snapshots().await.unwrap().iter().any(|s| s.name.contains(first.sandbox.id.as_str())));
    assert!(layers_of(first.sandbox.id.as_str()).is_empty());
    manager.destroy(&run).await.unwrap();
    assert!(layers_of(recreated.sandbox.id.as_str()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_another_process_is_still_creating_is_not_reaped() {
    if common::not_root() {
        return;
    }
    // A layer exists a moment before its owner tag is written; a backend starting meanwhile (another
    // `agentbox run`, say) must leave it alone.
    let config = agentbox_local::LocalConfig::default().storage.unwrap();
    let pool = agentbox_storage::Pool::open(&config).unwrap();
    let name = format!("sb-untagged-{}", std::process::id());
    let owner = agentbox_hostfs::Owner { uid: 1000, gid: 1000 };
    pool.create_layer(&name, agentbox_storage::LayerLimits { bytes: 1 << 30 }, owner).unwrap();
    let reaped = common::backend().reap_orphans();
    assert!(!reaped.contains(&name), "{reaped:?}");
    assert_eq!(layers_of(&name), std::slice::from_ref(&name), "the untagged layer was reaped while being made");
    pool.remove_layer(&name).unwrap();
}

fn stopped_dir() -> PathBuf {
    PathBuf::from("/var/lib/agentbox/storage/pool/stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sandbox_keeps_its_files_across_managers_and_starts_again() {
    if common::not_root() {
        return;
    }
    use agentbox_core::{CreateOptions, Error, ExecRequest, ManagerConfig, RunId, SandboxManager, SandboxState};
    let backend = common::backend();
    let manager = SandboxManager::new(backend.clone(), ManagerConfig::default());
    let run = RunId::parse("stop-keeps-files").unwrap();
    let (first, _) = manager.get_or_create(&run, CreateOptions::default()).await.unwrap();
    manager.write_file(&run, "/home/user/work.txt", b"precious".to_vec()).await.unwrap();
    // Written from inside, and not yet synced: stop must not lose it.
    manager
        .exec_collect(&run, ExecRequest::shell("mkdir -p /home/user/proj && echo code > /home/user/proj/a.py"))
        .await
        .unwrap();
    manager.spawn_background(&run, ExecRequest::shell("sleep 600")).await.unwrap();
    let init = backend.init_pid(&first.sandbox.id).unwrap();

    let stopped = manager.stop_run(&run).await.unwrap();
    assert_eq!(stopped.state, SandboxState::Stopped);
    // Its processes are gone, its layer too; its files are on the stopped shelf.
    // SAFETY: signal 0 probes a pid this test's backend started; it sends nothing.
    assert_eq!(unsafe { libc::kill(init, 0) }, -1, "the init {init} outlived stop");
    assert!(layers_of(first.sandbox.id.as_str()).is_empty());
    let key = stopped.sandbox.id.to_string();
    assert!(stopped_dir().join(&key).is_dir());
    assert!(backend.list_stopped().await.unwrap().iter().any(|s| s.key == key && s.size_bytes > 0));
    // Executions are refused with a reason; stopping again is a no-op; the list shows it stopped.
    let refused = manager.exec(&run, ExecRequest::shell("true")).await.map(drop);
    assert!(matches!(&refused, Err(Error::Conflict(m)) if m.contains("stopped")), "{refused:?}");
    assert_eq!(manager.stop_run(&run).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(manager.list().iter().find(|s| s.run_id == run).unwrap().state, SandboxState::Stopped);
    // Shutting the manager down leaves the stopped run's files in place.
    manager.shutdown().await;
    assert!(stopped_dir().join(&key).is_dir());

    // Another manager (as after a restart) takes the run back from its record and starts it.
    let config = first.config.clone();
    let kept = backend.list_stopped().await.unwrap().into_iter().find(|s| s.key == key).unwrap();
    let manager = SandboxManager::new(backend.clone(), ManagerConfig::default());
    manager.adopt_stopped(&run, kept, config, None).unwrap();
    let started = manager.start_run(&run).await.unwrap();
    assert_eq!(started.state, SandboxState::Running);
    assert_ne!(started.sandbox.id, first.sandbox.id);
    assert!(!stopped_dir().join(&key).exists(), "start left the kept files on the shelf");
    let out = manager
        .exec_collect(&run, ExecRequest::shell("cat /home/user/work.txt /home/user/proj/a.py; stat -c %U /home/user/proj/a.py; pgrep -c sleep; echo more >> /home/user/work.txt"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "preciouscode\nuser\n0\n", "{out:?}");

    // A stopped run asked for again is started; destroying a stopped run deletes its files.
    let stopped = manager.stop_run(&run).await.unwrap();
    let key = stopped.sandbox.id.to_string();
    let (again, created) = manager.get_or_create(&run, CreateOptions::default()).await.unwrap();
    assert!(!created);
    assert_eq!(again.state, SandboxState::Running);
    assert_eq!(manager.read_file(&run, "/home/user/work.txt").await.unwrap(), b"preciousmore\n");
    let stopped = manager.stop_run(&run).await.unwrap();
    let key2 = stopped.sandbox.id.to_string();
    assert_ne!(key, key2);
    manager.destroy(&run).await.unwrap();
    assert!(!stopped_dir().join(&key2).exists(), "destroying a stopped run left its files");
    assert!(manager.get(&run).is_err());
    assert!(layers_of(again.sandbox.id.as_str()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_its_caller_abandons_puts_the_files_back() {
    if common::not_root() {
        return;
    }
    use agentbox_core::{CreateRequest, ExecRequest};
    let sb = Sandbox::new().await;
    sb.sh("echo kept > /home/user/note").await;
    let key = sb.backend.stop(&sb.id).await.unwrap().key;
    // The caller stops waiting at once (as a startup timeout does): the start finishes for nobody, and its
    // sandbox is stopped again under the same key.
    let gone =
        tokio::time::timeout(std::time::Duration::from_micros(1), sb.backend.start(&key, CreateRequest::default()))
            .await;
    assert!(gone.is_err(), "the start was expected to outlast its caller: {gone:?}");
    // While that start holds the files, starting them again finds nothing; once it put them back, it works.
    let mut started = None;
    for _ in 0..200 {
        match sb.backend.start(&key, CreateRequest::default()).await {
            Ok(info) => {
                started = Some(info);
                break;
            }
            Err(agentbox_core::Error::NotFound(_)) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
            Err(e) => panic!("starting {key} again: {e}"),
        }
    }
    let started = started.unwrap_or_else(|| panic!("the abandoned start's files did not come back as {key}"));
    let out =
        sb.backend.exec(&started.id, ExecRequest::shell("cat /home/user/note")).await.unwrap().collect(1 << 16).await;
    assert_eq!(out.stdout, "kept\n");
    // Starting a key that is gone is not found; the started sandbox is an ordinary one.
    assert!(matches!(sb.backend.start(&key, CreateRequest::default()).await, Err(agentbox_core::Error::NotFound(_))));
    sb.backend.destroy(&started.id).await.unwrap();
    assert!(layers_of(started.id.as_str()).is_empty());
    assert!(!stopped_dir().join(&key).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_stopped_at_its_quota_starts_and_forks() {
    if common::not_root() {
        return;
    }
    use agentbox_core::{CreateRequest, ExecRequest};
    let sb = Sandbox::with(SandboxConfig { disk_gb: 1, ..SandboxConfig::default() }).await;
    let out = sb.sh("echo small > /home/user/a; dd if=/dev/zero of=/home/user/fill bs=1M count=1100 2>&1; sync").await;
    assert!(out.stdout.contains("quota exceeded"), "{out:?}");
    let snapshot = format!("full-{}", sb.id);
    sb.backend.snapshot(&sb.id, &snapshot).await.unwrap();
    let key = sb.backend.stop(&sb.id).await.unwrap().key;
    let config = SandboxConfig { disk_gb: 1, ..SandboxConfig::default() };
    let started = sb.backend.start(&key, CreateRequest::new(config.clone())).await.unwrap();
    let fork = sb
        .backend
        .create(CreateRequest { from_snapshot: Some(snapshot.clone()), ..CreateRequest::new(config) })
        .await
        .unwrap();
    for id in [&started.id, &fork.id] {
        let out = sb
            .backend
            .exec(
                id,
                ExecRequest::shell(
                    "cat /home/user/a; rm /home/user/fill && echo freed > /home/user/b && cat /home/user/b",
                ),
            )
            .await
            .unwrap()
            .collect(1 << 16)
            .await;
        assert_eq!(out.stdout, "small\nfreed\n", "{out:?}");
        sb.backend.destroy(id).await.unwrap();
    }
    sb.backend.delete_snapshot(&snapshot).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_owners_files_are_kept_for_their_keeper_while_it_exists() {
    if common::not_root() {
        return;
    }
    use agentbox_core::SandboxBackend;
    let config = agentbox_local::LocalConfig::default().storage.unwrap();
    let pool = agentbox_storage::Pool::open(&config).unwrap();
    let keeper = tempfile::NamedTempFile::new().unwrap();
    let owner = agentbox_hostfs::Owner { uid: 1000, gid: 1000 };
    let kept = format!("sb-crash-kept-{}", std::process::id());
    let lost = format!("sb-crash-lost-{}", std::process::id());
    for (name, labels) in [
        (&kept, vec![("run_id", "crashed-run"), (agentbox_core::KEEPER_LABEL, keeper.path().to_str().unwrap())]),
        (&lost, vec![("run_id", "crashed-run")]),
    ] {
        let layer = pool.create_layer(name, agentbox_storage::LayerLimits { bytes: 1 << 30 }, owner).unwrap();
        std::fs::write(pool.layers_dir().join(name).join("work.txt"), b"precious").unwrap();
        pool.set_labels(&layer, &labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()).unwrap();
        // An owner that is not running: a process that died without destroying its sandbox.
        pool.set_owner_tag(&layer, "o4194304-1").unwrap();
    }
    // A backend reaps when it opens (and this one again, in case another test's backend opened first).
    let backend = common::backend();
    backend.reap_orphans();
    assert!(layers_of(&kept).is_empty() && layers_of(&lost).is_empty());
    let stopped = backend.list_stopped().await.unwrap();
    let entry = stopped.iter().find(|s| s.key == kept).expect("files with a keeper are kept on the stopped shelf");
    assert!(entry.after_crash);
    assert_eq!(entry.metadata["run_id"], "crashed-run");
    assert!(!stopped.iter().any(|s| s.key == lost), "files without a keeper are deleted");
    assert_eq!(std::fs::read(stopped_dir().join(&kept).join("work.txt")).unwrap(), b"precious");

    // Kept while the keeper exists; deleted by the next reaper once it is gone (its data directory deleted).
    backend.reap_orphans();
    assert!(stopped_dir().join(&kept).exists());
    drop(keeper);
    backend.reap_orphans();
    assert!(!stopped_dir().join(&kept).exists(), "files kept for a keeper that is gone are deleted");
}
