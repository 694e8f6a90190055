//! The init of a one-shot process's sandbox, cloned while the backend opens (see [`HostProcess::OneShot`]).
//!
//! A process that creates one sandbox and exits (`agentbox run`) otherwise asks the zygote for the init at the
//! create, and waits for the clone (the namespaces: most of a millisecond) on its critical path. Here the id
//! range is claimed and the clone asked for as soon as the backend has its id ranges; the zygote clones on the
//! other core while the backend finishes opening and the caller reads its configuration. The first create of a
//! new sandbox takes it; a started or forked one wants the range its files are owned by, and clones its own.
//!
//! Nothing is lost when no create takes it: the backend's drop kills the init, then releases the range. After a
//! crash, the init ends by itself (its control socket closes before any setup), and the range, claimed under this
//! process's owner tag, is reaped with the process's other leftovers.

use super::*;

/// A claimed id range that goes back when it is not kept: dropped before [`IdClaim::keep`], it releases the range
/// (after a failed create's cleanup, which runs before it drops).
pub(super) struct IdClaim {
    pub(super) ranges: Option<Arc<agentbox_storage::IdRanges>>,
    pub(super) range: Option<agentbox_storage::IdRange>,
}

impl IdClaim {
    /// The range, now the sandbox's (its destroy releases it).
    pub(super) fn keep(mut self) -> Option<agentbox_storage::IdRange> {
        self.range.take()
    }
}

impl Drop for IdClaim {
    fn drop(&mut self) {
        if let (Some(ranges), Some(range)) = (&self.ranges, self.range.take()) {
            if let Err(e) = ranges.release(range) {
                tracing::warn!(error = %e, "releasing an id range no sandbox kept");
            }
        }
    }
}

/// The clone of an init, asked of the zygote on a thread of its own.
pub(super) type Cloning = std::thread::JoinHandle<std::result::Result<zygote::Init, zygote::SpawnError>>;

/// An init being cloned for a sandbox not yet asked for. Dropped untaken, it ends the init and releases the range.
pub(super) struct SpareInit {
    /// Its user namespace's range (none without user namespaces).
    claim: Option<IdClaim>,
    /// The host's end of its control socket.
    host_end: Option<OwnedFd>,
    cloning: Option<Cloning>,
    /// The capability bounding set its executions keep, dropped to already (see `proto::SpawnInit::bounding`):
    /// that of the default security settings, the sandbox's configuration not being known yet.
    bounding: Option<u64>,
}

impl SpareInit {
    /// Claims a range (when `ids` are in use) and has the zygote clone an init with it, in the background.
    /// `None` when the range or the thread can't be had: the create then does both itself, and reports why.
    pub(super) fn start(ids: Option<&Arc<agentbox_storage::IdRanges>>, owner: &str, root: &Path) -> Option<Self> {
        let claim = match ids {
            Some(ranges) => {
                IdClaim { ranges: Some(ranges.clone()), range: Some(ranges.claim_preferring(None, owner).ok()?) }
            }
            None => IdClaim { ranges: None, range: None },
        };
        let (host_end, agent_end) = sys::socketpair(libc::SOCK_STREAM).ok()?;
        let (root, range) = (root.to_string_lossy().into_owned(), claim.range);
        let security = SandboxConfig::default().security;
        let bounding = proto::kept_capabilities(security.drop_capabilities, security.allow_root_inside);
        let cloning = std::thread::Builder::new()
            .name("agentbox-spare".into())
            .spawn(move || zygote::spawn_init(&root, &agent_end, range, bounding))
            .ok()?;
        Some(Self { claim: Some(claim), host_end: Some(host_end), cloning: Some(cloning), bounding })
    }

    /// Whether a sandbox whose executions keep the capability bounding set `bounding` can take this init.
    pub(super) fn fits(&self, bounding: Option<u64>) -> bool {
        self.bounding == bounding
    }

    /// Hands the init to a create: its range, the host's end of its control socket, and its clone.
    pub(super) fn take(mut self) -> Option<(IdClaim, OwnedFd, Cloning)> {
        Some((self.claim.take()?, self.host_end.take()?, self.cloning.take()?))
    }

    /// Waits for the clone; blocks (call it off the async runtime).
    pub(super) fn cloned(cloning: Cloning) -> std::result::Result<zygote::Init, zygote::SpawnError> {
        cloning.join().unwrap_or_else(|_| Err(zygote::SpawnError::Zygote("cloning the sandbox init panicked".into())))
    }
}

impl Drop for SpareInit {
    /// Ends an init no create took: kills it and waits for its end, then releases its range.
    fn drop(&mut self) {
        drop(self.host_end.take());
        if let Some(Ok(init)) = self.cloning.take().map(Self::cloned) {
            let _ = sys::pidfd_kill(init.pidfd.as_fd(), libc::SIGKILL);
            sys::pidfd_wait(init.pidfd.as_fd(), 5000);
        }
        drop(self.claim.take());
    }
}
