//! Creating a sandbox: the zygote clones its init while the cgroup and the storage layer are made, then
//! the setup message goes out and the init's ready answer comes back; a create that fails half-way
//! is abandoned, leaving nothing behind.

use super::*;
use agentbox_storage::Shelf;
use spare::IdClaim;

impl LocalBackend {
    /// Starts a sandbox as `request` asks; its layer is a writable snapshot of `from` (a snapshot, for a fork,
    /// or a stopped sandbox's files) when given, or else new and empty.
    ///
    /// With `first`, the execution a caller starts right away (`create_and_exec`): when it needs nothing made
    /// after the init is ready, it goes right behind the setup message, as execution [`FIRST_EXECUTION`], and its
    /// events come on the receiver returned.
    pub(super) async fn spawn_sandbox(
        &self,
        request: &CreateRequest,
        from: Option<(agentbox_storage::Shelf, String)>,
        first: Option<&ExecRequest>,
    ) -> Result<(Arc<LiveSandbox>, Option<tokio::sync::mpsc::Receiver<agentbox_core::ExecEvent>>)> {
        let mut config = &request.config;
        let id = random_id();
        let created_at_ms = now_ms();
        let limits = Limits {
            memory_bytes: config.memory_mb.saturating_mul(1024 * 1024),
            cpus: config.cpu_count,
            pids: u64::from(config.security.max_processes) + 1, // and the init
        };
        // An image root: the image's layers, pulled first if the store lacks them.
        let image = match config.image_reference() {
            Some(reference) => {
                if self.inner.pool.is_none() {
                    return Err(Error::Unsupported(
                        "a sandbox's root comes from an image only with disk-backed storage (see the backend's \
                         limitations)"
                            .into(),
                    ));
                }
                Some(self.resolve_image(reference).await?)
            }
            None => None,
        };
        // The image's `User` is who executions run as, unless the config names a user of its own.
        let with_image_user;
        if let Some(user) = image.as_ref().and_then(|i| i.user.as_ref())
            && config.security.run_as == agentbox_config::RunAs::default()
        {
            let mut c = config.clone();
            c.security.run_as = agentbox_config::RunAs { name: user.name.clone(), uid: user.uid, gid: user.gid };
            // The image's account passes the checks a configured one does (an unprivileged id, a plain name).
            c.validate().map_err(|e| {
                Error::InvalidRequest(format!(
                    "the image's User ({}:{} {:?}) can't be the sandbox's user: {e}; set security.run_as",
                    user.uid, user.gid, user.name
                ))
            })?;
            with_image_user = c;
            config = &with_image_user;
        }
        // The image's working directory is where executions start (the agent falls back to the home when the
        // sandbox's user can't enter it); `/`, the default of images that set none, means the home.
        let working_dir = image
            .as_ref()
            .and_then(|i| i.config.working_dir.clone())
            .filter(|w| w.starts_with('/') && w != "/" && !w.contains('\0'));
        // The first execution's frame, sent behind the setup when it can be: with networking off (no proxy
        // variables, no trust bundle to write first), no input to send, and small enough for the socket's buffer
        // (so that sending it never waits for the init). Else it is started once the sandbox is ready, as usual.
        let first_frame = match first {
            Some(req) if !config.network.enabled && req.stdin.is_none() => {
                let msg = Self::exec_message_for(config, working_dir.as_deref(), req.env.clone(), req, None)?;
                let frame = proto::try_encode_json(Kind::Exec, FIRST_EXECUTION, &msg)
                    .map_err(|e| backend_err("encoding the execution", e))?;
                (frame.len() <= 64 * 1024).then_some(frame)
            }
            _ => None,
        };
        let (first_tx, first_rx) = tokio::sync::mpsc::channel(64);
        let routes: Arc<Mutex<HashMap<u32, Route>>> = Arc::new(Mutex::new(HashMap::new()));
        // What runs when it starts.
        let start = match (&config.start, &image) {
            (agentbox_config::StartProcess::None, _) => None,
            (agentbox_config::StartProcess::Command(argv), _) => Some(argv.clone()),
            (agentbox_config::StartProcess::Image, Some(image)) => {
                let argv: Vec<String> =
                    image.config.entrypoint.iter().chain(&image.config.cmd).flatten().cloned().collect();
                if argv.is_empty() {
                    return Err(Error::InvalidRequest(format!(
                        "start = \"image\", but the image {} has no Entrypoint or Cmd: give start a command",
                        config.image.as_deref().unwrap_or_default()
                    )));
                }
                Some(argv)
            }
            (agentbox_config::StartProcess::Image, None) => {
                return Err(Error::InvalidRequest(
                    "start = \"image\" runs an image's Entrypoint and Cmd: give the sandbox an image".into(),
                ));
            }
        };
        // The volumes it mounts: they must exist, and are held as in use from here on.
        let volume_names: Vec<String> = config.storage.volumes.iter().map(|v| v.name.clone()).collect();
        let volume_dirs: Vec<PathBuf> = if volume_names.is_empty() {
            Vec::new()
        } else {
            let Some(pool) = self.inner.pool.clone() else {
                return Err(Error::Unsupported(
                    "volumes need disk-backed storage, which this backend runs without (see its limitations)".into(),
                ));
            };
            let names = volume_names.clone();
            blocking("looking volumes up", move || {
                names
                    .iter()
                    .map(|n| {
                        pool.volume_data(n).map_err(|_| {
                            Error::NotFound(format!(
                                "volume {n}: create it first (POST /api/volumes, agentbox volume create)"
                            ))
                        })
                    })
                    .collect()
            })
            .await?
        };
        let volumes = self.inner.volumes_in_use.hold(volume_names);
        // A new sandbox takes the init a one-shot process had cloned while the backend opened (see `spare`), when
        // that init dropped the capabilities this sandbox's executions drop.
        let bounding = proto::kept_capabilities(config.security.drop_capabilities, config.security.allow_root_inside);
        let spare = if from.is_none() {
            let mut spare = self.inner.spare.lock_unpoisoned();
            if spare.as_ref().is_some_and(|s| s.fits(bounding)) { spare.take() } else { None }
        } else {
            None
        };
        let (host_end, ids, init_from) = match spare.and_then(spare::SpareInit::take) {
            Some((claim, host_end, cloning)) => (host_end, Some(claim), InitFrom::Spare(cloning)),
            None => {
                let (host_end, agent_end) =
                    sys::socketpair(libc::SOCK_STREAM).map_err(|e| backend_err("creating the control socket", e))?;
                // A host id range of its own for the sandbox's user namespace, claimed first: the clone needs it.
                let ids = match &self.inner.ids {
                    Some(ranges) => {
                        let ranges = ranges.clone();
                        let tag = self.inner.owner.clone();
                        // A sandbox on kept files (started, or forked) gets the range they are owned by when it is
                        // free: then no file changes owner.
                        let pool = self.inner.pool.clone();
                        let source = from.clone();
                        let range = blocking("claiming an id range", move || {
                            let preferred =
                                pool.zip(source).and_then(|(p, (shelf, name))| p.snapshot_id_range(shelf, &name));
                            ranges.claim_preferring(preferred, &tag).map_err(storage_err)
                        })
                        .await?;
                        Some(IdClaim { ranges: self.inner.ids.clone(), range: Some(range) })
                    }
                    None => None,
                };
                (host_end, ids, InitFrom::Zygote(agent_end))
            }
        };
        let range = ids.as_ref().and_then(|c| c.range);
        let host_id = |inside: u32| range.map_or(Some(inside), |r| r.host(inside));
        let owner = match (host_id(config.security.run_as.uid), host_id(config.security.run_as.gid)) {
            (Some(uid), Some(gid)) => Owner { uid, gid },
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "security.run_as: uid {} and gid {} must be below {} (the ids a sandbox's user namespace maps)",
                    config.security.run_as.uid,
                    config.security.run_as.gid,
                    agentbox_storage::RANGE_SIZE
                )));
            }
        };

        // The zygote clones the init (creating its namespaces) while this side makes the cgroups:
        // the init waits for its setup message, before which this side moves it into them.
        let start_init = match init_from {
            InitFrom::Spare(cloning) => tokio::task::spawn_blocking(move || spare::SpareInit::cloned(cloning)),
            InitFrom::Zygote(agent_end) => {
                let root_path = self.inner.root_mountpoint.to_string_lossy().into_owned();
                tokio::task::spawn_blocking(move || zygote::spawn_init(&root_path, &agent_end, range, bounding))
            }
        };
        let inner = self.inner.clone();
        let name = self.cgroup_name(&id);
        // Delegated to the root of the sandbox's user namespace as soon as made, beside the clone and the layer.
        let delegate_to = range.and_then(|r| r.host(0));
        let make_cgroup = tokio::task::spawn_blocking(move || {
            let cgroup = match inner.cgroups.layout() {
                crate::CgroupLayout::None => return Ok(SandboxCgroup::default()),
                _ => inner.cgroups.create(&name, limits)?,
            };
            if let Some(root) = delegate_to
                && let Err(e) = cgroup.delegate(root, root)
            {
                cgroup.remove();
                return Err(std::io::Error::new(e.kind(), format!("delegating the sandbox's cgroups: {e}")));
            }
            Ok(cgroup)
        });
        let shelve_as = match &from {
            Some((Shelf::Stopped, key)) => Some(key.clone()),
            _ => None,
        };
        let mut setup = self.setup_for(config);
        // A new image root's first entries, written by the host into the new layer (see `upper`); a started or
        // forked sandbox's layer holds its own files, which the init rewrites.
        let plan_upper = image
            .as_ref()
            .filter(|_| from.is_none() && self.host_fills_new_uppers())
            .map(|image| self.upper_planner(image, &setup));
        let make_layer = {
            let pool = self.inner.pool.clone();
            // Named by the sandbox id alone (the sandbox sees the name in its mount table); the owner process
            // is a tag on the layer, for the reaper.
            let name = id.clone();
            let tag = self.inner.owner.clone();
            // The labels go with the files, so those kept after a crash still say whose they are.
            let mut labels = request.metadata.clone();
            labels.remove(agentbox_core::KEEPER_LABEL);
            if let Some(keeper) = &self.inner.config.crash_keeper {
                labels.insert(agentbox_core::KEEPER_LABEL.to_owned(), keeper.display().to_string());
            }
            let limits = agentbox_storage::LayerLimits { bytes: config.disk_gb.saturating_mul(1 << 30) };
            // The overlay of an image root is mounted by the namespace's root.
            let overlay_owner = image.is_some().then(|| {
                let root = range.and_then(|r| r.host(0)).unwrap_or(0);
                Owner { uid: root, gid: root }
            });
            async move {
                let Some(pool) = pool else {
                    return match from {
                        Some((shelf, _)) => Err(Error::Unsupported(format!(
                            "sandboxes can start from a {} only with disk-backed storage (see the backend's limitations)",
                            shelf.what()
                        ))),
                        None => Ok((None, None)),
                    };
                };
                let ids = range.unwrap_or(agentbox_storage::IdRange::IDENTITY);
                tokio::task::spawn_blocking(move || {
                    let reshelve = match &from {
                        Some((Shelf::Stopped, key)) => Some(key.clone()),
                        _ => None,
                    };
                    // A new layer has its quota from `create_layer`.
                    let kept_files = from.is_some();
                    let layer = match from {
                        // A stopped sandbox's files are moved back, not copied.
                        Some((Shelf::Stopped, key)) => pool.unshelve_layer(&key, &name, ids)?,
                        Some((shelf, from)) => pool.layer_from_snapshot(shelf, &from, &name, ids)?,
                        None => pool.create_layer(&name, limits, owner)?,
                    };
                    let tagged = pool
                        .set_owner_tag(&layer, &tag)
                        .and_then(|()| pool.set_labels(&layer, &labels))
                        .and_then(|()| pool.set_id_range(&layer, ids))
                        .and_then(|()| overlay_owner.map_or(Ok(()), |o| pool.add_overlay_dirs(&layer, o)))
                        // Last: a layer made from kept files has no quota until its records are written.
                        .and_then(|()| if kept_files { pool.limit_layer(&layer, limits) } else { Ok(()) });
                    if let Err(e) = tagged {
                        // A stopped sandbox's files go back on the shelf; anything else goes.
                        let _ = match &reshelve {
                            Some(key) => pool.shelve_layer(&name, key).map(drop),
                            None => pool.remove_layer(&name),
                        };
                        return Err(e);
                    }
                    // Best effort: the init makes whatever this did not.
                    let seeded = plan_upper.and_then(|plan| plan()).filter(|plan| {
                        plan.write(&layer.upper(), ids)
                            .map_err(|e| tracing::warn!(error = %e, "writing a new upper layer's first entries"))
                            .is_ok()
                    });
                    Ok((Some(layer), seeded))
                })
                .await
                .map_err(|e| backend_err("storage task", e))?
                .map_err(storage_err)
            }
        };
        // The shared /etc template (one bind instead of a mount or copy per /etc entry) is looked up
        // meanwhile. A writable root keeps per-sandbox copies (the template is shared, so it is always
        // read-only).
        let find_etc = async {
            if !config.security.read_only_root || image.is_some() {
                return None;
            }
            if let Some(t) = self.inner.etc.cached(&setup.files) {
                return Some(t);
            }
            let (templates, files) = (self.inner.etc.clone(), setup.files.clone());
            let found = tokio::task::spawn_blocking(move || templates.get(&files))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            found
                .map_err(|e| tracing::warn!(error = %e, "no shared /etc template; copying /etc entries per sandbox"))
                .ok()
        };
        let (cgroup, init, layer, etc) = tokio::join!(make_cgroup, start_init, make_layer, find_etc);
        let layer_ref = |l: &Option<agentbox_storage::Layer>| {
            l.as_ref().and_then(|l| {
                self.inner.pool.clone().map(|pool| LayerRef {
                    pool,
                    name: l.name().to_owned(),
                    shelve_as: shelve_as.clone(),
                })
            })
        };
        let (layer, seeded) = match layer {
            Ok(l) => l,
            Err(e) => {
                abandon(init.ok().and_then(Result::ok), cgroup.ok().and_then(Result::ok), None).await;
                return Err(e);
            }
        };
        let cgroup = cgroup
            .map_err(|e| backend_err("creating the sandbox cgroup", e))
            .and_then(|r| r.map_err(|e| backend_err("creating the sandbox cgroup", e)));
        let init = init.map_err(|e| backend_err("spawning the sandbox init", e)).and_then(|r| {
            r.map_err(|e| {
                let hint = if matches!(e.errno(), Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS)) {
                    "; the host refused to create namespaces: run as root outside a restricted container"
                } else {
                    ""
                };
                Error::backend_with(format!("starting the sandbox failed: {e}{hint}"), e)
            })
        });
        let (cgroup, init) = match (cgroup, init) {
            (Ok(cgroup), Ok(init)) => (cgroup, init),
            (Err(e), init) => {
                abandon(init.ok(), None, layer_ref(&layer)).await;
                return Err(e);
            }
            (Ok(cgroup), Err(e)) => {
                abandon(None, Some(cgroup), layer_ref(&layer)).await;
                return Err(e);
            }
        };
        let init_pid = init.pid;
        let image_root = image.as_ref();
        let layer_ref_dir: Option<PathBuf> = layer.as_ref().map(|l| l.dir().to_path_buf());
        let setup = async {
            setup.cgroups = place_init(&cgroup, init_pid, range)?;
            setup.home_source = layer.as_ref().map(|l| l.home().to_string_lossy().into_owned());
            if let Some(plan) = &seeded {
                setup.files.retain(|(path, _)| !plan.seeded.contains(path));
            }
            match &etc {
                Some(t) => {
                    setup.etc = Some(t.path().to_string_lossy().into_owned());
                    setup.files.clear();
                }
                // A host root without a template binds the host's entries one by one.
                None if config.image_reference().is_none() => setup.binds.extend(self.host_etc_binds()),
                None => {}
            }
            // The directories the init mounts go as descriptors (see `proto::PassedDir`).
            let plain = |role, path| Passed { role, path, idmap: false, read_only: false };
            let mut passed: Vec<Passed> = Vec::new();
            if let Some(l) = &layer {
                passed.push(plain(proto::PassedDir::Home, l.home()));
            }
            if let Some(t) = &etc {
                passed.push(plain(proto::PassedDir::Etc, t.path().to_path_buf()));
            }
            if let Some(image) = image_root {
                if let Some(l) = layer_ref_dir.as_ref() {
                    passed.push(plain(proto::PassedDir::Layer, l.clone()));
                }
                for d in &image.lowers {
                    passed.push(Passed {
                        role: proto::PassedDir::Lower,
                        path: d.clone(),
                        idmap: true,
                        read_only: true,
                    });
                }
                apply_image(&mut setup, &image.config, config);
            }
            for (data, mount) in volume_dirs.iter().zip(&config.storage.volumes) {
                let read_only = mount.read_only;
                passed.push(Passed { role: proto::PassedDir::Volume, path: data.clone(), idmap: true, read_only });
            }
            let fds = passed_mounts(&passed, range.is_some(), init_pid)
                .map_err(|e| backend_err("opening the directories the sandbox mounts", e))?;
            setup.passed = passed.iter().map(|p| p.role).collect();
            let frame = proto::try_encode_json(Kind::Setup, 0, &setup)
                .map_err(|e| backend_err("encoding the sandbox setup", e))?;
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            sys::send_with_fds(host_end.as_fd(), &frame, &borrowed)
                .map_err(|e| backend_err("sending the sandbox setup", e))?;
            drop(fds);
            let mut std_stream = std::os::unix::net::UnixStream::from(host_end);
            if let Some(first) = &first_frame {
                let route = Route::Exec { tx: first_tx, oom_before: cgroup.oom_kills() };
                routes.lock_unpoisoned().insert(FIRST_EXECUTION, route);
                std::io::Write::write_all(&mut std_stream, first)
                    .map_err(|e| backend_err("sending the first execution", e))?;
            }
            let stream = std_stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(std_stream))
                .map_err(|e| backend_err("registering the control socket", e))?;
            let (mut rd, wr) = stream.into_split();
            let handshake = async {
                let f = proto::read_agent_frame(&mut rd)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the sandbox init exited during setup")?;
                if f.kind == Kind::Failure {
                    return Err(proto::decode_failure(&f.payload).message);
                }
                proto::decode_ready(&f.payload).map_err(|e| e.to_string())
            };
            let ready = match tokio::time::timeout(config.startup_timeout, handshake).await {
                Ok(Ok(r)) => r,
                Ok(Err(msg)) => return Err(Error::backend(format!("sandbox setup failed: {msg}"))),
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "sandbox setup took longer than startup_timeout ({:?})",
                        config.startup_timeout
                    )));
                }
            };
            if ready.landlock != "enforced" && config.security.landlock {
                tracing::debug!(status = %ready.landlock, "landlock not enforced");
            }
            let root =
                Root::open(init_pid, &setup.home, owner).map_err(|e| backend_err("opening the sandbox root", e))?;
            // Opened by pid once, and checked against the pidfd: the init was alive, so the pid was its own.
            let netns = NetNs::of(init_pid, init.pidfd.as_fd())
                .map_err(|e| backend_err("opening the sandbox's network namespace", e))?;
            let net = crate::net::Egress::start(&id, netns.clone(), &config.network, self.inner.egress.clone()).await?;
            net.install_ca(&root)?;
            Ok((rd, wr, root, netns, net))
        };
        let (rd, wr, root, netns, net) = match setup.await {
            Ok(parts) => parts,
            Err(e) => {
                abandon(Some(init), Some(cgroup), layer_ref(&layer)).await;
                return Err(e);
            }
        };

        let alive = Arc::new(AtomicBool::new(true));
        let waiting = Arc::new(AtomicBool::new(false));
        let info = SandboxInfo {
            id: SandboxId::new_unchecked(id),
            backend: "local".into(),
            state: SandboxState::Running,
            created_at_ms,
            metadata: request.metadata.clone(),
        };
        let sandbox = Arc::new(LiveSandbox {
            info,
            config: config.clone(),
            pidfd: init.pidfd,
            init_pid,
            netns,
            cgroup,
            writer: tokio::sync::Mutex::new(Some(wr)),
            routes: routes.clone(),
            alive: alive.clone(),
            waiting: waiting.clone(),
            paused: AtomicBool::new(false),
            next_id: AtomicU32::new(if first_frame.is_some() { FIRST_EXECUTION + 1 } else { FIRST_EXECUTION }),
            root,
            layer,
            ids: ids.and_then(IdClaim::keep),
            volumes,
            last_cpu: Mutex::new(None),
            reader: Mutex::new(None),
            forwards: Mutex::new(HashMap::new()),
            net,
            etc,
            working_dir,
            start,
        });
        let cg = sandbox.cgroup.clone();
        let task = tokio::spawn(reader_loop(rd, routes, alive, waiting, cg));
        *sandbox.reader.lock_unpoisoned() = Some(task);
        Ok((sandbox, first_frame.is_some().then_some(first_rx)))
    }
}

/// The request id of a sandbox's first execution (the next ones count up from it).
pub(super) const FIRST_EXECUTION: u32 = 1;

/// Where a create's init comes from.
enum InitFrom {
    /// The one cloned while the backend opened.
    Spare(spare::Cloning),
    /// A clone asked of the zygote now, serving the agent's end of the control socket.
    Zygote(OwnedFd),
}

/// A directory the init mounts, how the host hands it over.
struct Passed {
    role: proto::PassedDir,
    path: PathBuf,
    /// Idmapped into the sandbox's user namespace (image layers and volumes, whose files are owned by inside ids).
    idmap: bool,
    read_only: bool,
}

/// Detached copies of the directories the init mounts, idmapped into the user namespace of the init `pid`
/// (when it has one: `userns`) and made read-only as each asks.
fn passed_mounts(passed: &[Passed], userns: bool, pid: i32) -> std::io::Result<Vec<OwnedFd>> {
    // A namespace descriptor proper (mount_setattr refuses an O_PATH one).
    let userns = if userns { Some(OwnedFd::from(std::fs::File::open(format!("/proc/{pid}/ns/user"))?)) } else { None };
    let mut fds = Vec::with_capacity(passed.len());
    for p in passed {
        let copy = detached_copy(&p.path)?;
        let idmap = if p.idmap { userns.as_ref().map(AsFd::as_fd) } else { None };
        sys::set_mount_attrs(copy.as_fd(), idmap, p.read_only)
            .map_err(|e| std::io::Error::new(e.kind(), format!("preparing {}: {e}", p.path.display())))?;
        fds.push(copy);
    }
    Ok(fds)
}

/// Makes a setup build an image root: the overlay instead of the host's system, writable, with the image's
/// environment under the sandbox's own (`environment_variables` still win) and the sandbox's identity kept.
fn apply_image(setup: &mut proto::Setup, image: &agentbox_image::RuntimeConfig, config: &SandboxConfig) {
    setup.image_root = true;
    setup.read_only_root = false;
    setup.binds.clear();
    setup.symlinks.clear();
    setup.etc = None;
    for line in &image.env {
        if let Some((key, value)) = line.split_once('=') {
            if !matches!(key, "HOME" | "USER" | "LOGNAME" | "SHELL" | "TMPDIR") {
                setup.env.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    setup.env.extend(config.environment_variables.clone());
}

/// A detached mount of the host directory `path` (`open_tree` with `OPEN_TREE_CLONE`), which the init moves
/// into its own mount namespace.
fn detached_copy(path: &Path) -> std::io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| {
        let e = std::io::Error::from(e);
        std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    })
}

/// Gets a new init ready to be set up: its cgroups (with a user namespace, delegated to its root when made, to
/// join and to make execution cgroups in), and out of the OOM killer's reach (the sandbox's own
/// out-of-memory kills take its executions, whose score is raised, never the init). Returns the cgroup files
/// the init joins itself (the fast way); on cgroup v2 with a user namespace, where a process may only move
/// itself between cgroups whose common ancestor it may write, the host moves it and there are none.
fn place_init(cgroup: &SandboxCgroup, pid: i32, ids: Option<agentbox_storage::IdRange>) -> Result<Vec<String>> {
    let mut joins: Vec<String> = cgroup.join_files().iter().map(|p| p.to_string_lossy().into_owned()).collect();
    // Delegated already (see the create), when the sandbox has a user namespace.
    if ids.and_then(|r| r.host(0)).is_some() && cgroup.is_v2() {
        cgroup.add(pid).map_err(|e| backend_err("moving the init into its cgroups", e))?;
        joins.clear();
    }
    // Lowering a score needs CAP_SYS_RESOURCE, which the host may lack (reported as a limitation).
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000");
    Ok(joins)
}

/// Cleans up after a create that failed half-way, off the async runtime: kills the init (and with
/// it its namespaces) and removes the cgroups, waiting for both.
async fn abandon(init: Option<zygote::Init>, cgroup: Option<SandboxCgroup>, layer: Option<LayerRef>) {
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(init) = init {
            let _ = sys::pidfd_kill(init.pidfd.as_fd(), libc::SIGKILL);
            sys::pidfd_wait(init.pidfd.as_fd(), 5000);
        }
        if let Some(cgroup) = cgroup {
            cgroup.kill_all();
            cgroup.remove();
        }
        if let Some(LayerRef { pool, name, shelve_as }) = layer {
            let done = match shelve_as {
                // A failed start leaves the stopped sandbox's files where they were.
                Some(key) => pool.shelve_layer(&name, &key).map(drop),
                None => pool.remove_layer(&name),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "putting away the storage layer of a failed create");
            }
        }
    })
    .await;
}

/// The layer of a failed create: removed, or put back on the stopped shelf as `shelve_as` when it was a
/// stopped sandbox's files.
struct LayerRef {
    pool: Arc<agentbox_storage::Pool>,
    name: String,
    shelve_as: Option<String>,
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        let t = now_ms().to_le_bytes();
        b.copy_from_slice(&t);
    }
    format!("sb-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}
