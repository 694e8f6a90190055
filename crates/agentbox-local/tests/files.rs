//! The file API stays inside the sandbox whatever paths and links it meets.

mod common;

use agentbox_core::{Error, FileKind, SandboxBackend};
use common::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_list_stat_mkdir_rename_remove() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    b.write_file(id, "notes/a.txt", b"hello".to_vec()).await.unwrap();
    assert_eq!(b.read_file(id, "/home/user/notes/a.txt").await.unwrap(), b"hello");
    let out = sb.sh("stat -c '%U %s' ~/notes/a.txt; cat ~/notes/a.txt").await;
    assert_eq!(out.stdout, "user 5\nhello", "files written through the API belong to the user");
    b.mkdir(id, "/tmp/x/y/z").await.unwrap();
    assert_eq!(b.stat(id, "/tmp/x/y").await.unwrap().kind, FileKind::Dir);
    b.rename(id, "/home/user/notes/a.txt", "/home/user/notes/b.txt").await.unwrap();
    let names: Vec<String> = b.list_dir(id, "/home/user/notes").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["b.txt"]);
    let e = b.stat(id, "notes/b.txt").await.unwrap();
    assert_eq!((e.kind, e.size, e.path.as_str()), (FileKind::File, 5, "/home/user/notes/b.txt"));
    b.remove(id, "/home/user/notes").await.unwrap();
    assert!(matches!(b.stat(id, "/home/user/notes").await, Err(Error::NotFound(_))));
    assert!(matches!(b.read_file(id, "/nope").await, Err(Error::NotFound(m)) if m.contains("/nope")));
    assert!(matches!(b.read_file(id, "/home/user").await, Err(Error::InvalidRequest(m)) if m.contains("directory")));
    assert!(
        matches!(b.write_file(id, "/usr/bin/evil", vec![1]).await, Err(Error::PermissionDenied(m)) if m.contains("read-only"))
    );
    assert!(matches!(b.read_file(id, "a\0b").await, Err(Error::InvalidRequest(_))));
    assert!(matches!(b.read_file(id, "").await, Err(Error::InvalidRequest(_))));
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_planted_symlinks_never_reach_the_host() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let (b, id) = (&sb.backend, &sb.id);
    let marker = format!("/tmp/agentbox-host-marker-{}", std::process::id());
    std::fs::write(&marker, "HOST SECRET").unwrap();
    let out = sb
        .sh("ln -s / ~/root && ln -s /etc ~/etc && ln -s ../../../../../.. ~/up && ln -s /tmp ~/t && echo planted")
        .await;
    assert_eq!(out.stdout, "planted\n");
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for path in [
        "../../../../etc/hostname",
        "/home/user/root/etc/hostname",
        "/home/user/etc/hostname",
        "/home/user/up/etc/hostname",
        "%2e%2e/%2e%2e/etc/hostname",
    ] {
        match b.read_file(id, path).await {
            Ok(data) => {
                let s = String::from_utf8_lossy(&data);
                assert_eq!(s, "sandbox\n", "{path} must resolve inside the sandbox");
                if !host_hostname.is_empty() && host_hostname != "sandbox\n" {
                    assert_ne!(s, host_hostname);
                }
            }
            Err(e) => assert!(matches!(e, Error::NotFound(_)), "{path}: {e}"),
        }
    }
    for path in [
        marker.as_str(),
        &format!("/home/user/t/{}", marker.trim_start_matches("/tmp/")),
        &format!("/home/user/root{marker}"),
    ] {
        assert!(matches!(b.read_file(id, path).await, Err(Error::NotFound(_))), "{path} reached a host file");
    }
    // Writing through a planted link to a system path is refused; the host file is untouched.
    sb.sh("ln -s /usr/bin ~/bin").await;
    let e = b.write_file(id, "/home/user/bin/x", b"x".to_vec()).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("read-only")), "{e:?}");
    // The agent's own views are not reachable through the API.
    sb.sh("ln -s /proc/1/environ ~/env; ln -s /.agentbox ~/agent").await;
    let e = b.read_file(id, "/home/user/env").await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(_)), "/proc/1/environ through a link: {e:?}");
    let e = b.read_file(id, "/proc/self/environ").await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(_)), "/proc/self/environ: {e:?}");
    let e = b.write_file(id, "/home/user/agent/cg/cgroup.procs", b"1".to_vec()).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(_)), "the agent's cgroup through a link: {e:?}");
    let e = b.list_dir(id, "/.agentbox/cg").await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(_)), "the agent's cgroup: {e:?}");
    // A link swapped for a directory between calls still resolves inside.
    sb.sh("rm ~/t && mkdir ~/t && echo inner > ~/t/f").await;
    assert_eq!(b.read_file(id, "/home/user/t/f").await.unwrap(), b"inner\n");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "HOST SECRET");
    std::fs::remove_file(&marker).unwrap();
    sb.destroy().await;
}
