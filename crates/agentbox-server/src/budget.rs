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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agentbox_core::LockExt;
use agentbox_core::budget::{ProxyLimits, log_limiter, proxy_pool};
use tokio::sync::Notify;

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
         connections, fewer than {MIN_CONNECTION_FDS}; raise the limit (ulimit -n, or LimitNOFILE= in the \
         systemd unit) or lower limits.fd_reserve"
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
    /// Most REST connections from one client address: at most half of `rest_connections`.
    pub rest_connections_per_client: usize,
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
        let rest_connections = limits.max_connections.min(left - proxy_fds).max(1);
        Ok(Self {
            soft_before,
            limit,
            hard,
            reserve: limits.fd_reserve,
            rest_connections,
            rest_connections_per_client: limits.max_connections_per_client.min(rest_connections / 2).max(1),
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
            rest_connections_per_client = budget.rest_connections_per_client,
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

/// One open connection, as the budget sees it.
#[derive(Debug)]
struct Open {
    id: u64,
    /// No request head has arrived on it yet: the cheapest connection to close.
    silent: Arc<AtomicBool>,
    close: Arc<Notify>,
}

/// The REST connections open now, per client address.
///
/// An address holding `per_client` connections has further ones closed at once. When `limit`
/// connections are open, a new one gets in only if a silent connection (one that has sent no request
/// yet) of an address holding more connections than the newcomer's can be closed to make room;
/// otherwise it is closed at once.
#[derive(Debug)]
pub struct Connections {
    /// Most connections at once.
    pub limit: usize,
    /// Most connections from one address.
    pub per_client: usize,
    by_client: Mutex<HashMap<IpAddr, Vec<Open>>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    refused: AtomicU64,
    evicted: AtomicU64,
}

impl Connections {
    /// No connections yet.
    #[must_use]
    pub fn new(limit: usize, per_client: usize) -> Self {
        Self {
            limit,
            per_client,
            by_client: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn refuse(&self, client: IpAddr, why: &'static str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if log_limiter().allow("connection closed at accept", &format!("client {client}")) {
            tracing::info!(%client, why, "closed a connection at accept");
        }
    }

    /// Counts a connection from `client`, or refuses it (see [`Connections`]).
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let client = client_key(client);
        let mut by_client = self.by_client.lock_unpoisoned();
        let mine = by_client.get(&client).map_or(0, Vec::len);
        if mine >= self.per_client {
            drop(by_client);
            self.refuse(client, "this address holds the most connections one client may");
            return None;
        }
        if self.open.load(Ordering::Relaxed) >= self.limit {
            // The addresses holding more than the newcomer would, most first; close one's silent connection.
            let mut heavier: Vec<&Vec<Open>> = by_client.values().filter(|c| c.len() > mine + 1).collect();
            heavier.sort_by_key(|c| std::cmp::Reverse(c.len()));
            let victim = heavier.iter().find_map(|c| c.iter().find(|o| o.silent.load(Ordering::Acquire)));
            let Some(victim) = victim else {
                drop(by_client);
                self.refuse(client, "the server's connection budget is used up");
                return None;
            };
            // Chosen once: it is no longer silent for the next newcomer.
            victim.silent.store(false, Ordering::Release);
            victim.close.notify_one();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let silent = Arc::new(AtomicBool::new(true));
        let close = Arc::new(Notify::new());
        by_client.entry(client).or_default().push(Open { id, silent: silent.clone(), close: close.clone() });
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { connections: self.clone(), client, id, silent, close })
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at accept (over the per-client cap, or with the budget used up), since start.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Silent connections closed to make room for another address's, since start.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// The address a connection counts against: an IPv4 address (IPv4-mapped IPv6 ones included), or the
/// /64 network of an IPv6 address, which one host usually holds whole.
#[must_use]
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    client: IpAddr,
    id: u64,
    silent: Arc<AtomicBool>,
    close: Arc<Notify>,
}

impl Admitted {
    /// Marks the connection as used: a request head arrived.
    pub fn spoke(&self) -> Arc<AtomicBool> {
        self.silent.clone()
    }

    /// Completes when the budget wants the connection closed to make room.
    pub async fn closing(&self) {
        self.close.notified().await;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut by_client = self.connections.by_client.lock_unpoisoned();
        if let Some(conns) = by_client.get_mut(&self.client) {
            conns.retain(|o| o.id != self.id);
            if conns.is_empty() {
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
        assert_eq!(b.rest_connections_per_client, 192);
        let big = FdBudget::plan(1024, 524_288, 524_288, &limits).unwrap();
        assert_eq!(
            (big.rest_connections, big.rest_connections_per_client, big.proxy_fds_per_sandbox),
            (1024, 256, 1024)
        );
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

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(client_key("::ffff:10.0.0.1".parse().unwrap()), IpAddr::from([10, 0, 0, 1]));
        let c = Arc::new(Connections::new(10, 1));
        let held = c.admit(a).unwrap();
        assert!(c.admit(b).is_none());
        drop(held);
    }

    #[tokio::test]
    async fn when_full_a_silent_connection_of_the_heaviest_address_makes_room() {
        let c = Arc::new(Connections::new(4, 3));
        let (a, b, d) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 3]));
        let mut held: Vec<_> = (0..3).map(|_| c.admit(a).unwrap()).collect();
        // The first of `a`'s connections has sent a request: it is not silent.
        held[0].spoke().store(false, Ordering::Release);
        held.push(c.admit(b).unwrap());
        // Full: `d` gets in by closing one of `a`'s silent connections, not the one in use.
        let newcomer = c.admit(d).unwrap();
        assert_eq!(c.evicted(), 1);
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), held[1].closing()).await.is_ok());
        held.remove(1);
        // `b` holds one and would hold two: `a` holds two, not more, so nothing is closed for it.
        assert!(c.admit(b).is_none());
        assert_eq!((c.open(), c.refused(), c.evicted()), (4, 1, 1));
        drop(newcomer);
    }
}
