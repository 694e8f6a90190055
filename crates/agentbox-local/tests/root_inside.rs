//! Root inside (`security.allow_root_inside`): executions that ask for `root` run as uid 0 of the sandbox's
//! own user namespace, with a container's default capabilities over the sandbox's files and processes and
//! nothing more; the sandbox's user gains nothing from it, and sandboxes that don't allow it refuse.
#![allow(clippy::unwrap_used)]

mod common;

use agentbox_config::{SandboxConfig, SecurityConfig};
use agentbox_core::{Error, ExecOutput, ExecRequest, SandboxBackend};
use common::Sandbox;

/// CAP_CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT,
/// AUDIT_WRITE and SETFCAP, as /proc/self/status prints them.
const ROOT_CAPS_HEX: &str = "00000000a00405fb";

async fn as_root(sb: &Sandbox, line: &str) -> ExecOutput {
    let req = ExecRequest { user: Some("root".into()), ..ExecRequest::shell(line) };
    sb.backend.exec(&sb.id, req).await.unwrap().collect(1 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_is_root_of_the_sandbox_only() {
    if common::not_root() {
        return;
    }
    let config = SandboxConfig {
        security: SecurityConfig { allow_root_inside: true, ..SecurityConfig::default() },
        ..SandboxConfig::default()
    };
    let sb = Sandbox::with(config).await;
    let out = as_root(&sb, "id -u; id -g; echo $HOME; grep CapEff /proc/self/status | cut -f2").await;
    assert_eq!(out.stdout, format!("0\n0\n/root\n{ROOT_CAPS_HEX}\n"), "{out:?}");
    // The sandbox's user is as before: no capability, and no way to root.
    let out = sb.sh("id -u; grep -E 'CapEff|CapPrm' /proc/self/status | cut -f2; python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1").await;
    assert_eq!(
        out.stdout, "1000\n0000000000000000\n0000000000000000\nPermissionError: [Errno 1] Operation not permitted\n",
        "{out:?}"
    );

    // Root changes owners and modes of the sandbox's files, the user's included.
    let out = as_root(
        &sb,
        "echo x > /home/user/f && chown 0:0 /home/user/f && chmod 600 /home/user/f && stat -c '%u %a' /home/user/f",
    )
    .await;
    assert_eq!(out.stdout, "0 600\n", "{out:?}");
    assert_ne!(sb.sh("cat /home/user/f").await.exit_code, 0, "the user read root's 0600 file");
    // On the host, root's files belong to the sandbox's range, not to the host's root.
    let layer = std::fs::read_dir("/var/lib/agentbox/storage/pool/layers")
        .unwrap()
        .flatten()
        .find(|e| e.file_name() == sb.id.as_str());
    if let Some(layer) = layer {
        use std::os::unix::fs::MetadataExt as _;
        let owner = std::fs::metadata(layer.path().join("home/f")).unwrap().uid();
        assert!(owner >= 0x6000_0000, "root inside's file is host uid {owner}");
    }

    // What root inside can't do: reach the init, lower its OOM score, mount, load modules, read host-root files.
    let out = as_root(
        &sb,
        "kill -9 1; sleep 0.2; cat /proc/1/environ >/dev/null 2>&1 && echo read-init; \
         echo -1000 > /proc/self/oom_score_adj 2>/dev/null && echo lowered; \
         mount -t tmpfs t /mnt 2>/dev/null && echo mounted; \
         cat /proc/kcore >/dev/null 2>&1 && echo kcore; \
         ls /root >/dev/null 2>&1 && echo listed-host-root; echo done",
    )
    .await;
    assert_eq!(out.stdout, "done\n", "{out:?}");
    assert_eq!(sb.sh("echo alive").await.stdout, "alive\n");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_does_not_allow_root_refuses_it() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let req = ExecRequest { user: Some("root".into()), ..ExecRequest::shell("id -u") };
    let err = sb.backend.exec(&sb.id, req).await.map(drop).unwrap_err();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("allow_root_inside")), "{err:?}");
    let req = ExecRequest { user: Some("nobody".into()), ..ExecRequest::shell("id -u") };
    let err = sb.backend.exec(&sb.id, req).await.map(drop).unwrap_err();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("nobody")), "{err:?}");
    // The sandbox's own user, named, is the default; and nothing in it has a capability in reserve.
    let req = ExecRequest {
        user: Some("user".into()),
        ..ExecRequest::shell("id -u; grep CapBnd /proc/self/status | cut -f2")
    };
    let out = sb.backend.exec(&sb.id, req).await.unwrap().collect(1 << 16).await;
    assert_eq!(out.stdout, "1000\n0000000000000000\n", "{out:?}");
    sb.destroy().await;
}
