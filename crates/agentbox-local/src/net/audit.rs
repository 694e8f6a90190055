//! The egress audit log: one record per connection, and per request on inspected connections.
//!
//! The log is kept in memory with the sandbox, bounded to [`MAX_RECORDS`]: when full, the oldest
//! record goes and `dropped` counts it. Records hold names, addresses, methods and paths as the
//! sandbox sent them (a placeholder, never a secret's value) and secrets by name only.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agentbox_core::LockExt;
use agentbox_core::egress::{EgressDecision, EgressPage, EgressQuery, EgressRecord};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most records kept per sandbox.
pub const MAX_RECORDS: usize = 4096;
/// Most records one page returns.
pub const MAX_PAGE: usize = 1000;
/// Longest path kept in a record, in bytes; longer ones are cut and end in `...`.
const MAX_PATH: usize = 1024;

#[derive(Debug, Default)]
struct State {
    records: VecDeque<EgressRecord>,
    last_seq: u64,
    dropped: u64,
}

/// A sandbox's audit log.
#[derive(Debug, Default)]
pub struct AuditLog {
    state: Mutex<State>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn cut(path: &str) -> String {
    if path.len() <= MAX_PATH {
        return path.to_owned();
    }
    let mut end = MAX_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end])
}

impl AuditLog {
    /// Appends a record, numbering it; the oldest goes when the log is full.
    pub fn push(&self, mut record: EgressRecord) {
        record.path = record.path.as_deref().map(cut);
        let mut s = self.state.lock_unpoisoned();
        s.last_seq += 1;
        record.seq = s.last_seq;
        if s.records.len() >= MAX_RECORDS {
            s.records.pop_front();
            s.dropped += 1;
        }
        s.records.push_back(record);
    }

    /// The records a query selects, oldest first.
    #[must_use]
    pub fn page(&self, query: &EgressQuery) -> EgressPage {
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let host = query.host.as_deref().map(str::to_ascii_lowercase);
        let s = self.state.lock_unpoisoned();
        let mut records = Vec::new();
        let mut more = false;
        for r in s.records.iter().filter(|r| query.after.is_none_or(|a| r.seq > a)) {
            if host.as_deref().is_some_and(|h| r.host.to_ascii_lowercase() != h)
                || query.decision.is_some_and(|d| r.decision != d)
            {
                continue;
            }
            if records.len() == limit {
                more = true;
                break;
            }
            records.push(r.clone());
        }
        let next = if more { records.last().map(|r| r.seq) } else { None };
        EgressPage { records, next, dropped: s.dropped }
    }
}

/// A record under construction: what is known when a connection or request starts.
#[derive(Debug, Clone)]
pub struct Pending {
    started: Instant,
    record: EgressRecord,
}

impl Pending {
    /// Starts a record of `kind` (`connection` or `request`) for `host:port` reached `via`.
    #[must_use]
    pub fn new(kind: &str, via: &str, host: &str, port: u16) -> Self {
        Self {
            started: Instant::now(),
            record: EgressRecord {
                seq: 0,
                time_ms: now_ms(),
                kind: kind.to_owned(),
                via: via.to_owned(),
                host: host.to_owned(),
                port,
                address: None,
                method: None,
                path: None,
                decision: EgressDecision::Allowed,
                rule: None,
                secrets: Vec::new(),
                status: None,
                bytes_in: 0,
                bytes_out: 0,
                duration_ms: 0,
            },
        }
    }

    /// The record, to fill in.
    pub fn record(&mut self) -> &mut EgressRecord {
        &mut self.record
    }

    /// Finishes the record: its duration, and the bytes counted.
    #[must_use]
    pub fn finish(mut self, counts: Option<&Counts>) -> EgressRecord {
        self.record.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(c) = counts {
            self.record.bytes_in = c.bytes_in.load(Ordering::Relaxed);
            self.record.bytes_out = c.bytes_out.load(Ordering::Relaxed);
        }
        self.record
    }
}

/// Bytes through one connection.
#[derive(Debug, Default)]
pub struct Counts {
    /// Read from the destination.
    pub bytes_in: AtomicU64,
    /// Written to the destination.
    pub bytes_out: AtomicU64,
}

/// A stream that counts the bytes through it into [`Counts`].
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S> Counted<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner, counts: Arc::new(Counts::default()) }
    }

    /// The counters, shared.
    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counts.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counts.bytes_out.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_paged() {
        let log = AuditLog::default();
        for i in 0..MAX_RECORDS + 10 {
            let mut p = Pending::new("connection", "socks5", if i % 2 == 0 { "a.test" } else { "b.test" }, 443);
            if i % 3 == 0 {
                p.record().decision = EgressDecision::Refused;
            }
            log.push(p.finish(None));
        }
        let all = log.page(&EgressQuery { limit: Some(MAX_PAGE), ..Default::default() });
        assert_eq!((all.dropped, all.records.len(), all.records[0].seq), (10, MAX_PAGE, 11));
        let next = log.page(&EgressQuery { after: all.next, limit: Some(2), ..Default::default() });
        assert_eq!(
            next.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [all.next.unwrap() + 1, all.next.unwrap() + 2]
        );
        let a = log.page(&EgressQuery { host: Some("A.test".into()), limit: Some(5), ..Default::default() });
        assert!(a.records.iter().all(|r| r.host == "a.test"));
        let refused = log.page(&EgressQuery { decision: Some(EgressDecision::Refused), ..Default::default() });
        assert!(refused.records.iter().all(|r| r.decision == EgressDecision::Refused));
    }
}
