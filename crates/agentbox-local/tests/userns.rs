//! User namespaces: every sandbox maps its ids onto a host id range of its own, so per-user kernel limits are
//! per sandbox, files on the host belong to the sandbox's range, and destroy gives the range back.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;

use agentbox_core::SandboxBackend;
use agentbox_local::LocalConfig;
use agentbox_storage::RANGE_SIZE;
use common::Sandbox;

/// The first host id of a sandbox's range, as its init's uid map says (seen from the host).
fn range_of(sb: &Sandbox) -> u32 {
    let pid = sb.backend.init_pid(&sb.id).unwrap();
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<u32> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 3, "one line, the whole range: {map:?}");
    assert_eq!((fields[0], fields[2]), (0, RANGE_SIZE), "{map:?}");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap(), map, "gids map like uids");
    fields[1]
}

fn claimed(first: u32) -> bool {
    let dir = LocalConfig::default().id_ranges.unwrap().dir;
    dir.join(first.to_string()).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sandbox_has_its_own_host_ids_and_gives_them_back() {
    if common::not_root() {
        return;
    }
    let (a, b) = tokio::join!(Sandbox::new(), Sandbox::new());
    assert!(
        a.backend.limitations().iter().all(|l| !l.contains("user namespaces")),
        "user namespaces are not in use: {:?}",
        a.backend.limitations()
    );
    let (ra, rb) = (range_of(&a), range_of(&b));
    assert_ne!(ra, rb);
    assert!(ra.abs_diff(rb) >= RANGE_SIZE, "ranges overlap: {ra} and {rb}");
    assert!(ra >= RANGE_SIZE && rb >= RANGE_SIZE, "a range reaches the host's own ids: {ra}, {rb}");
    assert!(claimed(ra) && claimed(rb));

    // Inside, the user is still 1000, and root is nobody of the host's.
    let out = a.sh("id -u; id -g; touch /home/user/mine; stat -c %u:%g /home/user/mine").await;
    assert_eq!(out.stdout, "1000\n1000\n1000:1000\n", "{out:?}");
    // On the host, the sandbox's files belong to its range.
    let pid = a.backend.init_pid(&a.id).unwrap();
    let meta = std::fs::metadata(format!("/proc/{pid}/root/home/user/mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (ra + 1000, ra + 1000));
    // The file API writes as the sandbox's user too.
    a.backend.write_file(&a.id, "/home/user/api.txt", b"x".to_vec()).await.unwrap();
    assert_eq!(a.sh("stat -c %u:%g /home/user/api.txt").await.stdout, "1000:1000\n");
    // Every process of the sandbox runs under the range, none as a host uid outside it.
    for pid in a.backend.host_pids(&a.id).unwrap() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("Uid:");
        for uid in uids.split_whitespace().skip(1).map(|u| u.parse::<u32>().unwrap()) {
            assert!((ra..ra + RANGE_SIZE).contains(&uid), "pid {pid} runs as host uid {uid}: {uids}");
        }
    }
    // Nobody inside can take an id outside the map (EINVAL: the namespace has no such id), or any other id
    // (EPERM).
    let out = a
        .py("import os\nfor uid in (70000, 0, 1001):\n    try:\n        os.setuid(uid)\n    except OSError as e:\n        print(e.errno)")
        .await;
    assert_eq!(out.trim(), "22\n1\n1", "setuid is refused");

    a.destroy().await;
    b.destroy().await;
    assert!(!claimed(ra) && !claimed(rb), "destroy left the id ranges claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sandbox_taking_every_inotify_instance_leaves_its_neighbour_its_own() {
    if common::not_root() {
        return;
    }
    let limit: usize =
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").unwrap().trim().parse().unwrap();
    assert!(limit <= 4096, "the test opens up to max_user_instances ({limit}) instances");
    let (hog, neighbour) = tokio::join!(Sandbox::new(), Sandbox::new());
    // The hog opens instances until the kernel refuses one, and keeps them open.
    let hog_code = "import ctypes, os, time\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        fds = []\n\
        while True:\n\
        \x20   fd = libc.inotify_init()\n\
        \x20   if fd < 0:\n\
        \x20       print(len(fds), ctypes.get_errno(), flush=True)\n\
        \x20       break\n\
        \x20   fds.append(fd)\n\
        open('/tmp/ready', 'w').close()\n\
        time.sleep(60)\n";
    hog.backend.write_file(&hog.id, "/tmp/hog.py", hog_code.as_bytes().to_vec()).await.unwrap();
    let out = hog.sh("python3 /tmp/hog.py > /tmp/hog.out 2>&1 & for i in $(seq 100); do [ -e /tmp/ready ] && break; sleep 0.1; done; cat /tmp/hog.out").await;
    let fields: Vec<usize> = out.stdout.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 2, "{out:?}");
    assert_eq!(fields[1], 24, "the hog stops at EMFILE: {out:?}");
    assert!(fields[0] + 8 >= limit, "the hog got {} of {limit} instances: {out:?}", fields[0]);
    // Its neighbour still has all of its own.
    let out = neighbour
        .py("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nfds = [libc.inotify_init() for _ in range(16)]\nprint(min(fds) >= 0)")
        .await;
    assert_eq!(out.trim(), "True", "inotify_init failed next to the hog: {out:?}");
    hog.destroy().await;
    neighbour.destroy().await;
}
