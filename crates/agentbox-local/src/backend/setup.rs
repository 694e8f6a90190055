//! The setup message of a new sandbox: its mounts, its generated `/etc` files (passwd, group, hosts,
//! resolv.conf) and the environment of its executions.

use std::collections::BTreeMap;
use std::path::Path;

use agentbox_config::{SandboxConfig, SeccompProfile};

use super::LocalBackend;
use crate::proto::{BindMount, Quota, Setup};

impl LocalBackend {
    /// The binds of the host's system directories that exist (one `statx` each), and the symlinks among them
    /// (`/bin` -> `usr/bin`), for a root made of the host's. Its `/etc` entries come from a shared template or,
    /// without one, from [`Self::host_etc_binds`].
    fn host_system(&self) -> (Vec<BindMount>, Vec<(String, String)>) {
        let mut binds = Vec::new();
        let mut symlinks = Vec::new();
        for d in &self.inner.config.system_dirs {
            let p = Path::new(d);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(p) {
                        symlinks.push((d.clone(), t.to_string_lossy().into_owned()));
                    }
                }
                Ok(m) if m.is_dir() => binds.push(BindMount { source: d.clone(), target: d.clone(), dir: true }),
                _ => {}
            }
        }
        (binds, symlinks)
    }

    /// The binds of the host's `/etc` entries that exist (one `statx` each), for a host root that has no shared
    /// `/etc` template (a writable root, or a template that could not be made).
    pub(super) fn host_etc_binds(&self) -> Vec<BindMount> {
        let mut binds = Vec::new();
        for e in &self.inner.config.etc_entries {
            let src = format!("/etc/{e}");
            if let Ok(m) = std::fs::metadata(&src) {
                binds.push(BindMount { source: src.clone(), target: src, dir: m.is_dir() });
            }
        }
        binds
    }

    pub(super) fn setup_for(&self, config: &SandboxConfig) -> Setup {
        let run_as = &config.security.run_as;
        let home = run_as.home();
        // The host's system directories and `/etc` entries are bound into a host root only: an image brings its own.
        let (binds, symlinks) =
            if config.image_reference().is_none() { self.host_system() } else { (Vec::new(), Vec::new()) };
        let (u, g, name) = (run_as.uid, run_as.gid, &run_as.name);
        let files = vec![
            ("/etc/passwd".into(), format!("root:x:0:0:root:/root:/usr/sbin/nologin\n{name}:x:{u}:{g}::{home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")),
            ("/etc/group".into(), format!("root:x:0:\ntty:x:5:\n{name}:x:{g}:\nnogroup:x:65534:\n")),
            ("/etc/hostname".into(), format!("{}\n", self.inner.config.hostname)),
            ("/etc/hosts".into(), format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n", self.inner.config.hostname)),
            ("/etc/resolv.conf".into(), crate::net::RESOLV_CONF.into()),
            ("/etc/nsswitch.conf".into(), "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n".into()),
        ];
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), format!("{home}/.local/bin:{home}/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
        env.insert("HOME".into(), home.clone());
        env.insert("USER".into(), name.clone());
        env.insert("LOGNAME".into(), name.clone());
        env.insert("SHELL".into(), "/bin/bash".into());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("TERM".into(), "xterm-256color".into());
        env.insert("TMPDIR".into(), "/tmp".into());
        env.insert("NODE_PATH".into(), format!("{home}/node_modules"));
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.insert("MPLBACKEND".into(), "Agg".into());
        env.extend(config.environment_variables.clone());
        let mb = 1024 * 1024;
        Setup {
            hostname: self.inner.config.hostname.clone(),
            binds,
            symlinks,
            files,
            etc: None,
            cgroups: Vec::new(),
            // With a disk pool the tmpfs holds /tmp alone, sized from the memory it is charged to.
            storage_bytes: if self.inner.pool.is_some() {
                (config.memory_mb / 2).max(16).saturating_mul(mb)
            } else {
                config.disk_gb.saturating_mul(1024 * mb)
            },
            home_source: None,
            storage_inodes: config.storage.max_inodes,
            quotas: config
                .storage
                .quotas
                .iter()
                .map(|q| Quota { path: q.path.clone(), bytes: q.size_mb.saturating_mul(mb) })
                .collect(),
            shm_bytes: config.storage.shm_size_mb.saturating_mul(mb),
            read_only_root: config.security.read_only_root,
            uid: u,
            gid: g,
            home,
            env,
            nofile: config.security.max_open_files,
            fsize: config.security.max_file_size_mb.saturating_mul(mb),
            drop_caps: config.security.drop_capabilities,
            allow_root: config.security.allow_root_inside,
            no_new_privs: config.security.no_new_privileges,
            seccomp: match config.security.seccomp_profile {
                SeccompProfile::Default => self.inner.seccomp_default.clone(),
                SeccompProfile::Strict => self.inner.seccomp_strict.clone(),
            },
            landlock: config.security.landlock,
            exec_cgroups: self.inner.cgroups.exec_tracking().into(),
            passed: Vec::new(),
            image_root: false,
            volumes: config
                .storage
                .volumes
                .iter()
                .map(|v| crate::proto::VolumeTarget { path: v.mount_path.clone(), read_only: v.read_only })
                .collect(),
            user_namespace: self.inner.ids.is_some(),
        }
    }
}
