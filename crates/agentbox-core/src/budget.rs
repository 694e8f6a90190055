//! Process-wide budgets that a server sets and the backends obey: connection slots for the egress
//! proxies (counted in file descriptors), the proxies' memory limits, and a limiter for log lines
//! that clients and sandboxes can cause.
//!
//! A server sizes these from its file-descriptor limit at start ([`ProxyPool::configure`],
//! [`LogLimiter::configure`]); a backend used on its own gets the defaults.

use crate::{LockExt, RwLockExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// What the egress proxies of all sandboxes may use together, and each one alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// File descriptors all proxies together may hold: each connection from a sandbox and each
    /// connection to a destination takes one until it closes (a CONNECT tunnel holds both).
    pub max_fds: usize,
    /// File descriptors one sandbox's proxy may hold.
    pub max_fds_per_sandbox: usize,
    /// Largest request head the HTTP proxy reads (it is also the size of its read buffer).
    pub max_head_bytes: usize,
    /// Time a client has to send a request head or the SOCKS5 handshake; also the idle limit
    /// between requests on a kept-alive connection.
    pub header_timeout: Duration,
    /// Size of each of the two buffers of a tunnel.
    pub copy_buffer_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_fds: 2048,
            max_fds_per_sandbox: 512,
            max_head_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            copy_buffer_bytes: 16 << 10,
        }
    }
}

/// Which budget refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The sandbox holds its own share.
    Sandbox,
    /// All proxies together hold the server's budget, or it is tight and this sandbox holds more
    /// than its fair share.
    Server,
}

/// The file descriptors of all egress proxies.
#[derive(Debug)]
pub struct ProxyPool {
    limits: RwLock<ProxyLimits>,
    used: AtomicUsize,
    /// Tenants holding at least one slot.
    active: AtomicUsize,
    refused_sandbox: AtomicU64,
    refused_server: AtomicU64,
}

/// The process's proxy pool.
#[must_use]
pub fn proxy_pool() -> &'static ProxyPool {
    static POOL: OnceLock<ProxyPool> = OnceLock::new();
    POOL.get_or_init(|| ProxyPool {
        limits: RwLock::new(ProxyLimits::default()),
        used: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        refused_sandbox: AtomicU64::new(0),
        refused_server: AtomicU64::new(0),
    })
}

impl ProxyPool {
    /// Replaces the limits; connections already open keep their slots.
    pub fn configure(&self, limits: ProxyLimits) {
        *self.limits.write_unpoisoned() = limits;
    }

    /// The current limits.
    #[must_use]
    pub fn limits(&self) -> ProxyLimits {
        *self.limits.read_unpoisoned()
    }

    /// File descriptors held by all proxies now.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Sandboxes whose proxy holds at least one connection.
    #[must_use]
    pub fn active_sandboxes(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections refused since start, by the budget that refused them.
    #[must_use]
    pub fn refused(&self) -> (u64, u64) {
        (self.refused_sandbox.load(Ordering::Relaxed), self.refused_server.load(Ordering::Relaxed))
    }

    /// A new sandbox's share of the pool.
    #[must_use]
    pub fn tenant(&'static self) -> Arc<Tenant> {
        Arc::new(Tenant { pool: self, used: AtomicUsize::new(0) })
    }
}

/// One sandbox's share of the [`ProxyPool`].
#[derive(Debug)]
pub struct Tenant {
    pool: &'static ProxyPool,
    used: AtomicUsize,
}

impl Tenant {
    /// File descriptors this sandbox's proxy holds now.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes one file descriptor's slot, held until the [`Slot`] drops.
    ///
    /// # Errors
    /// Which budget is used up. When the server's budget is three quarters used, a sandbox holding
    /// its fair share or more is refused, so that the heaviest users are refused first and room is
    /// left for the others: the fair share is the budget divided among the sandboxes holding
    /// connections plus one, the next to come.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Slot, Exhausted> {
        let limits = self.pool.limits();
        let mine = self.used.fetch_add(1, Ordering::AcqRel);
        if mine == 0 {
            self.pool.active.fetch_add(1, Ordering::AcqRel);
        }
        let total = self.pool.used.fetch_add(1, Ordering::AcqRel);
        // Dropping the slot gives back both counts, whatever refuses it below.
        let slot = Slot { tenant: self.clone() };
        if mine >= limits.max_fds_per_sandbox {
            drop(slot);
            self.pool.refused_sandbox.fetch_add(1, Ordering::Relaxed);
            return Err(Exhausted::Sandbox);
        }
        let tight = total >= limits.max_fds - limits.max_fds / 4;
        let fair = limits.max_fds / (self.pool.active.load(Ordering::Acquire) + 1);
        if total >= limits.max_fds || (tight && mine >= fair) {
            drop(slot);
            self.pool.refused_server.fetch_add(1, Ordering::Relaxed);
            return Err(Exhausted::Server);
        }
        Ok(slot)
    }
}

/// One file descriptor's place in the proxy budget; gives it back when dropped.
#[derive(Debug)]
pub struct Slot {
    tenant: Arc<Tenant>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tenant.pool.used.fetch_sub(1, Ordering::AcqRel);
        if self.tenant.used.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tenant.pool.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Most sources the log limiter tracks at once; events from further ones share one entry.
const MAX_LOG_SOURCES: usize = 4096;

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, Clone, Copy)]
struct LogSettings {
    per_window: u32,
    window: Duration,
}

/// Rate limit for log lines that a client or a sandbox can cause (refusals, failed connections):
/// per event kind and source, a few lines per window, then one summary line with the count of
/// the lines left out. Counters elsewhere still count every event.
#[derive(Debug)]
pub struct LogLimiter {
    settings: RwLock<LogSettings>,
    windows: Mutex<HashMap<(&'static str, String), Window>>,
    suppressed: AtomicU64,
}

/// The process's log limiter.
#[must_use]
pub fn log_limiter() -> &'static LogLimiter {
    static LIMITER: OnceLock<LogLimiter> = OnceLock::new();
    LIMITER.get_or_init(|| LogLimiter {
        settings: RwLock::new(LogSettings { per_window: 20, window: Duration::from_secs(10) }),
        windows: Mutex::new(HashMap::new()),
        suppressed: AtomicU64::new(0),
    })
}

fn summary(what: &str, source: &str, n: u64, window: Duration) {
    tracing::warn!(
        event = what,
        source,
        suppressed = n,
        "{n} more \"{what}\" lines from {source} were left out of the log in the last {window:?} (rate limit); \
         counters include them"
    );
}

impl LogLimiter {
    /// Allows `per_window` lines per event kind and source in each `window`.
    pub fn configure(&self, per_window: u32, window: Duration) {
        *self.settings.write_unpoisoned() = LogSettings { per_window, window };
    }

    /// Whether to log one event of kind `what` caused by `source` (`sandbox <id>`, `client <ip>`).
    /// When a window ends with lines left out, its summary is logged first.
    pub fn allow(&self, what: &'static str, source: &str) -> bool {
        let settings = *self.settings.read_unpoisoned();
        let now = Instant::now();
        let mut ended = None;
        let allowed = {
            let mut windows = self.windows.lock_unpoisoned();
            let key = if windows.len() >= MAX_LOG_SOURCES && !windows.contains_key(&(what, source.to_owned())) {
                (what, "other sources".to_owned())
            } else {
                (what, source.to_owned())
            };
            let w = windows.entry(key).or_insert(Window { started: now, logged: 0, suppressed: 0 });
            if now.duration_since(w.started) >= settings.window {
                if w.suppressed > 0 {
                    ended = Some(w.suppressed);
                }
                *w = Window { started: now, logged: 0, suppressed: 0 };
            }
            if w.logged < settings.per_window {
                w.logged += 1;
                true
            } else {
                w.suppressed += 1;
                false
            }
        };
        if let Some(n) = ended {
            summary(what, source, n, settings.window);
        }
        if !allowed {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Logs the summary of every window that has ended with lines left out, and forgets sources
    /// that went quiet. Call it now and then (the server does every few seconds).
    pub fn flush(&self) {
        let window = self.settings.read_unpoisoned().window;
        let now = Instant::now();
        let mut ended = Vec::new();
        self.windows.lock_unpoisoned().retain(|(what, source), w| {
            if now.duration_since(w.started) < window {
                return true;
            }
            if w.suppressed > 0 {
                ended.push((*what, source.clone(), w.suppressed));
            }
            false
        });
        for (what, source, n) in ended {
            summary(what, &source, n, window);
        }
    }

    /// Lines left out since start.
    #[must_use]
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_cannot_take_more_than_its_share_and_slots_come_back() {
        let pool: &'static ProxyPool = Box::leak(Box::new(ProxyPool {
            limits: RwLock::new(ProxyLimits { max_fds: 8, max_fds_per_sandbox: 6, ..ProxyLimits::default() }),
            used: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            refused_sandbox: AtomicU64::new(0),
            refused_server: AtomicU64::new(0),
        }));
        let (a, b) = (pool.tenant(), pool.tenant());
        let mut held: Vec<Slot> = (0..6).map(|_| a.try_acquire().unwrap()).collect();
        assert_eq!(a.try_acquire().unwrap_err(), Exhausted::Sandbox);
        // The pool is tight (6 of 8) and `a` holds more than its fair share (8 / 3): `b` still gets in.
        held.push(b.try_acquire().unwrap());
        held.push(b.try_acquire().unwrap());
        assert_eq!(b.try_acquire().unwrap_err(), Exhausted::Server);
        assert_eq!((pool.in_use(), pool.active_sandboxes()), (8, 2));
        drop(held);
        assert_eq!((pool.in_use(), pool.active_sandboxes(), a.in_use(), b.in_use()), (0, 0, 0, 0));
        assert_eq!(pool.refused(), (1, 1));
    }

    #[test]
    fn log_lines_beyond_the_window_budget_are_counted_not_written() {
        let l = LogLimiter {
            settings: RwLock::new(LogSettings { per_window: 3, window: Duration::from_secs(3600) }),
            windows: Mutex::new(HashMap::new()),
            suppressed: AtomicU64::new(0),
        };
        let allowed = (0..10).filter(|_| l.allow("egress refused", "sandbox a")).count();
        assert_eq!(allowed, 3);
        assert!(l.allow("egress refused", "sandbox b"));
        assert_eq!(l.suppressed(), 7);
    }
}
