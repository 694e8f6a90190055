//! The server's budgets for what all tenants share: file descriptors, connection slots, the egress
//! proxies' memory and the log.
//!
//! At start, [`FdBudget::establish`] raises the soft `RLIMIT_NOFILE` to the hard limit, then splits
//! it: `fd_reserve` descriptors are never given to connections (the registry, sandbox control, name
//! lookups), `proxy_fd_percent` of the rest go to the egress proxies of all sandboxes together, and
//! what is left bounds the REST connections. [`Connections`] caps REST connections per client
//! address. See docs/LIMITS.md for every budget and its default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use agentbox_core::budget::{ProxyLimits, log_limiter, proxy_pool};

use crate::config::Limits;

/// Fewest descriptors that must be left for connections beyond the reserve.
const MIN_CONNECTION_FDS: usize = 64;
/// Ceiling of the soft limit when the hard limit is unlimited (the kernel's usual `fs.nr_open`).
const MAX_SOFT_LIMIT: u64 = 1 << 20;

/// Why the file-descriptor budget can't be set up.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The reserve leaves too few descriptors for connections.
    #[error(
        "limits.fd_reserve ({reserve}) leaves {left} of the {limit} file descriptors this process may open for \
         connections, fewer than {MIN_CONNECTION_FDS}; raise the limit (ulimit -n, or LimitNOFILE= in the systemd unit) \
         or lower limits.fd_reserve"
    )]
    TooFewFds {
        /// The configured reserve.
        reserve: usize,
        /// What it leaves.
        left: usize,
        /// The soft limit after raising it.
        limit: u64,
    },
}

/// How the server's file descriptors are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` the process started with.
    pub soft_before: u64,
    /// The soft limit now (raised to the hard limit when allowed).
    pub limit: u64,
    /// The hard limit.
    pub hard: u64,
    /// Descriptors no connection may take.
    pub reserve: usize,
    /// Most REST connections at once.
    pub rest_connections: usize,
    /// Descriptors the egress proxies of all sandboxes may hold together.
    pub proxy_fds: usize,
    /// Descriptors one sandbox's proxy may hold.
    pub proxy_fds_per_sandbox: usize,
}

impl FdBudget {
    /// Splits `limit` descriptors (the soft limit) as `limits` say.
    ///
    /// # Errors
    /// [`BudgetError::TooFewFds`] when the reserve leaves fewer than 64 descriptors for connections.
    pub fn plan(soft_before: u64, limit: u64, hard: u64, limits: &Limits) -> Result<Self, BudgetError> {
        let total = usize::try_from(limit).unwrap_or(usize::MAX);
        let left = total.saturating_sub(limits.fd_reserve);
        if left < MIN_CONNECTION_FDS {
            return Err(BudgetError::TooFewFds { reserve: limits.fd_reserve, left, limit });
        }
        let percent = usize::try_from(limits.proxy_fd_percent.min(100)).unwrap_or(100);
        let proxy_fds = left / 100 * percent + left % 100 * percent / 100;
        Ok(Self {
            soft_before,
            limit,
            hard,
            reserve: limits.fd_reserve,
            rest_connections: limits.max_connections.min(left - proxy_fds).max(1),
            proxy_fds,
            // One sandbox never holds more than half of the proxies' budget, so that others still get in.
            proxy_fds_per_sandbox: limits.max_proxy_fds_per_sandbox.min(proxy_fds / 2).max(1),
        })
    }

    /// Raises the soft descriptor limit to the hard one, splits it, and logs both limits and the split.
    ///
    /// # Errors
    /// [`BudgetError::TooFewFds`] when the limit is too low for the configured reserve.
    pub fn establish(limits: &Limits) -> Result<Self, BudgetError> {
        let (before, now, hard) = raise_nofile();
        let budget = Self::plan(before, now, hard, limits)?;
        tracing::info!(
            soft_before = before,
            soft = now,
            hard,
            reserve = budget.reserve,
            rest_connections = budget.rest_connections,
            proxy_fds = budget.proxy_fds,
            proxy_fds_per_sandbox = budget.proxy_fds_per_sandbox,
            "file descriptor budget"
        );
        Ok(budget)
    }

    /// Hands the proxy and log budgets to the backends (process-wide).
    pub fn apply(&self, limits: &Limits) {
        proxy_pool().configure(ProxyLimits {
            max_fds: self.proxy_fds,
            max_fds_per_sandbox: self.proxy_fds_per_sandbox,
            max_head_bytes: limits.proxy_max_head_bytes,
            header_timeout: limits.proxy_header_timeout,
            copy_buffer_bytes: limits.proxy_copy_buffer_bytes,
        });
        log_limiter().configure(limits.log_lines_per_window, limits.log_window);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit before, the soft limit
/// after and the hard limit. Failures are logged and leave the limit as it was.
fn raise_nofile() -> (u64, u64, u64) {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut current) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the file descriptor limit; assuming 1024");
        return (1024, 1024, 1024);
    }
    let (before, hard) = (current.rlim_cur, current.rlim_max);
    let target = if hard == libc::RLIM_INFINITY { MAX_SOFT_LIMIT } else { hard };
    if before >= target {
        return (before, before, hard);
    }
    let raised = libc::rlimit { rlim_cur: target, rlim_max: hard };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, soft = before, hard, "cannot raise the soft file descriptor limit; keeping it");
        return (before, before, hard);
    }
    (before, target, hard)
}

/// Descriptors this process has open now, or `None` when `/proc/self/fd` can't be read.
#[must_use]
pub fn open_fds() -> Option<usize> {
    // The directory handle itself is one of them.
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1))
}

/// The process's resident memory now and at its peak, in bytes, from `/proc/self/status`.
#[must_use]
pub fn resident_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The REST connections open now, per client address.
#[derive(Debug)]
pub struct Connections {
    /// Most connections at once (the listener stops accepting beyond it).
    pub limit: usize,
    /// Most connections from one address.
    pub per_client: usize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl Connections {
    /// No connections yet.
    #[must_use]
    pub fn new(limit: usize, per_client: usize) -> Self {
        Self {
            limit,
            per_client,
            by_client: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts a connection from `client`, or refuses it when that address holds its share already.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let mut by_client = self.by_client.lock().unwrap_or_else(PoisonError::into_inner);
        let n = by_client.entry(client).or_insert(0);
        if *n >= self.per_client {
            drop(by_client);
            self.refused.fetch_add(1, Ordering::Relaxed);
            if log_limiter().allow("connection over the per-client cap closed", &format!("client {client}")) {
                tracing::info!(%client, cap = self.per_client, "closed a connection: this address holds the most connections one client may");
            }
            return None;
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { connections: self.clone(), client })
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once for being over the per-client cap, since start.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    client: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_client = self.connections.by_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                by_client.remove(&self.client);
            }
        }
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_between_reserve_proxies_and_rest() {
        let limits = Limits::default();
        let b = FdBudget::plan(1024, 1024, 1024, &limits).unwrap();
        assert_eq!((b.reserve, b.proxy_fds, b.rest_connections, b.proxy_fds_per_sandbox), (256, 384, 384, 192));
        let big = FdBudget::plan(1024, 524_288, 524_288, &limits).unwrap();
        assert_eq!((big.rest_connections, big.proxy_fds_per_sandbox), (1024, 1024));
        let err = FdBudget::plan(256, 256, 256, &limits).unwrap_err().to_string();
        assert!(err.contains("limits.fd_reserve") && err.contains("ulimit -n"), "{err}");
    }

    #[test]
    fn one_address_cannot_take_every_connection() {
        let c = Arc::new(Connections::new(10, 2));
        let a = IpAddr::from([127, 0, 0, 1]);
        let held: Vec<_> = (0..2).map(|_| c.admit(a).unwrap()).collect();
        assert!(c.admit(a).is_none());
        let other = c.admit(IpAddr::from([127, 0, 0, 2])).unwrap();
        assert_eq!((c.open(), c.refused()), (3, 1));
        drop(held);
        drop(other);
        assert_eq!(c.open(), 0);
        assert!(c.by_client.lock().unwrap().is_empty());
    }
}
